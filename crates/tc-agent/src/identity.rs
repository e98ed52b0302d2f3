//! The agent's identity: an Ed25519 key pair made at its first start and kept in
//! `<state-dir>/identity.key` (PKCS#8, mode 0600). The private key never leaves the machine; the
//! agent proves it holds it when it enrols and whenever it opens a session.
//!
//! A key file that cannot be used (damaged, truncated, another key type) is moved aside and a new
//! key is made: the agent then enrols as a new key, and the controller reports the machine id as
//! enrolled under another key (a pending client an admin approves as the replacement of the old
//! one). The agent never stops over its key.

use std::fs;
use std::io;

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use tc_proto::identity::{base64url_encode, enrollment_message, session_message};

use crate::state::{StateDir, StateError, write_atomic};

/// An agent's key pair.
pub struct Identity {
    key: Ed25519KeyPair,
    public_key: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &self.public_key)
            .field("private_key", &"...")
            .finish()
    }
}

/// How [`Identity::load_or_create`] came by the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Read from `identity.key`.
    Loaded,
    /// Made now: there was no key.
    Created,
    /// Made now: the key file was unusable and was moved aside (the reason).
    Replaced(String),
}

impl Identity {
    /// Reads `identity.key`, or makes a new key (when there is none, or it is unusable: then the
    /// old file is kept as `identity.key.corrupt`).
    pub fn load_or_create(dir: &StateDir) -> Result<(Identity, KeyOrigin), StateError> {
        let path = dir.identity_key();
        let origin = match fs::read(&path) {
            Ok(bytes) => match Ed25519KeyPair::from_pkcs8(&bytes) {
                Ok(key) => return Ok((Self::from_key(key), KeyOrigin::Loaded)),
                Err(error) => {
                    let aside = path.with_extension("key.corrupt");
                    fs::rename(&path, &aside).map_err(StateError::io(&path))?;
                    KeyOrigin::Replaced(format!(
                        "{} is not an Ed25519 PKCS#8 key ({error}); kept as {}",
                        path.display(),
                        aside.display()
                    ))
                }
            },
            Err(error) if error.kind() == io::ErrorKind::NotFound => KeyOrigin::Created,
            Err(error) => return Err(StateError::io(&path)(error)),
        };
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| {
            StateError::io(&path)(io::Error::other("the system random source failed"))
        })?;
        write_atomic(&path, document.as_ref(), 0o600)?;
        let key = Ed25519KeyPair::from_pkcs8(document.as_ref())
            .expect("a freshly generated key document parses");
        Ok((Self::from_key(key), origin))
    }

    fn from_key(key: Ed25519KeyPair) -> Identity {
        let public_key = base64url_encode(key.public_key().as_ref());
        Identity { key, public_key }
    }

    /// The public key, base64url, as enrolment sends it.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The signature of an enrolment with `bootstrap_token`.
    pub fn sign_enrollment(&self, machine_id: &str, bootstrap_token: &str) -> String {
        let token_hash = crate::download::sha256_hex(bootstrap_token.as_bytes());
        let message = enrollment_message(machine_id, &self.public_key, &token_hash);
        base64url_encode(self.key.sign(&message).as_ref())
    }

    /// The signature of a session challenge.
    pub fn sign_challenge(&self, client_name: &str, challenge: &str) -> String {
        let message = session_message(client_name, challenge);
        base64url_encode(self.key.sign(&message).as_ref())
    }

    /// Deletes the key file (decommissioning: the machine's identity ends with it).
    pub fn delete(dir: &StateDir) -> Result<(), StateError> {
        let path = dir.identity_key();
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(StateError::io(&path)(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_made_once_with_mode_0600_and_kept() {
        let temp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(temp.path());
        let (first, origin) = Identity::load_or_create(&dir).unwrap();
        assert_eq!(origin, KeyOrigin::Created);
        let mode = fs::metadata(dir.identity_key())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, origin) = Identity::load_or_create(&dir).unwrap();
        assert_eq!(origin, KeyOrigin::Loaded);
        assert_eq!(first.public_key(), again.public_key());
        assert_eq!(first.public_key().len(), 43);
        assert!(!format!("{first:?}").contains("private_key: ["));
    }

    #[test]
    fn an_unusable_key_is_moved_aside_and_replaced() {
        let temp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(temp.path());
        let (first, _) = Identity::load_or_create(&dir).unwrap();
        fs::write(dir.identity_key(), b"garbage").unwrap();
        let (second, origin) = Identity::load_or_create(&dir).unwrap();
        assert!(matches!(origin, KeyOrigin::Replaced(_)), "{origin:?}");
        assert_ne!(first.public_key(), second.public_key());
        assert_eq!(
            fs::read(dir.identity_key().with_extension("key.corrupt")).unwrap(),
            b"garbage"
        );
    }

    #[test]
    fn signatures_verify_with_the_public_key() {
        let temp = tempfile::tempdir().unwrap();
        let (identity, _) = Identity::load_or_create(&StateDir::new(temp.path())).unwrap();
        let public = tc_proto::identity::decode_public_key(identity.public_key()).unwrap();
        let signature = identity.sign_enrollment("m-1", "bootstrap");
        let message = enrollment_message(
            "m-1",
            identity.public_key(),
            &crate::download::sha256_hex(b"bootstrap"),
        );
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
            .verify(
                &message,
                &tc_proto::identity::decode_signature(&signature).unwrap(),
            )
            .unwrap();
    }
}
