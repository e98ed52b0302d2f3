//! Verification of package signatures against the keys the agent trusts.
//!
//! Admins sign package zips offline with minisign keys; the release carries the signature and
//! the controller passes it on. An agent configured with trusted public keys installs a package
//! only when its signature verifies with one of them, checked after the sha256 and before the zip
//! is extracted, so that whoever controls the controller cannot make it run code of its own.
//! Without trusted keys nothing is checked (signing is opt-in per agent).

use std::fmt;
use std::io::Read;
use std::path::Path;

use minisign_verify::{Error as MinisignError, PublicKey, Signature};

/// One trusted minisign public key.
#[derive(Clone)]
pub struct TrustedKey {
    /// The base64 text it was configured with (`RW...`).
    text: String,
    key: PublicKey,
}

impl TrustedKey {
    /// Parses a minisign public key: the base64 line (`RW...`) of a `.pub` file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let key = PublicKey::from_base64(text)
            .map_err(|error| format!("`{text}` is not a minisign public key: {error}"))?;
        Ok(TrustedKey {
            text: text.to_owned(),
            key,
        })
    }

    /// The base64 text of the key.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TrustedKey").field(&self.text).finish()
    }
}

impl PartialEq for TrustedKey {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for TrustedKey {}

/// Checks that the zip at `zip` is signed by `signature` (a `.minisig` text) with one of `keys`.
/// The error is the reason reported for the refused package.
pub fn verify_zip(keys: &[TrustedKey], signature: Option<&str>, zip: &Path) -> Result<(), String> {
    let Some(text) = signature else {
        return Err("the release is not signed and this agent accepts only signed packages".into());
    };
    let signature = Signature::decode(text)
        .map_err(|error| format!("the release's signature is not a minisign signature: {error}"))?;
    let mut trusted = None;
    for key in keys {
        match key.key.verify_stream(&signature) {
            Ok(verifier) => {
                trusted = Some(verifier);
                break;
            }
            Err(MinisignError::UnexpectedKeyId) => {}
            Err(error) => return Err(format!("the release's signature is not usable: {error}")),
        }
    }
    let Some(mut verifier) = trusted else {
        return Err("the release is signed by a key this agent does not trust".into());
    };
    let mut file = std::fs::File::open(zip)
        .map_err(|error| format!("cannot read the downloaded zip: {error}"))?;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|error| format!("cannot read the downloaded zip: {error}"))?;
        if read == 0 {
            break;
        }
        verifier.update(&buffer[..read]);
    }
    verifier.finalize().map_err(|_| {
        "the signature does not match the zip (changed after it was signed?)".to_owned()
    })
}
