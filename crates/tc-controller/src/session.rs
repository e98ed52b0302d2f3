//! Sessions and challenges: stateless tokens MACed with the controller's session key.
//!
//! A session token names a client's uid, the generation of its credential and an expiry, with an
//! HMAC-SHA256 over them keyed by `<data>/session.key`. Checking one on the heartbeat path is one
//! HMAC and one lookup by uid; nothing is stored per session, and sessions survive restarts (the
//! key stays). A session stops working when it expires, when its client is deleted (the uid is
//! gone) and when the client's key is replaced (the generation moved).
//!
//! A challenge is built the same way (the uid, an expiry and a random nonce), so the controller
//! keeps no state between the two steps of opening a session either: it issues a challenge, the
//! agent signs it with its key, and the controller checks its own MAC, the expiry and the
//! signature.
//!
//! ```text
//! session:   0x01 | uid (16) | generation (4) | expires, unix ms (8) | HMAC (32)   base64url
//! challenge: 0x02 | uid (16) | expires, unix ms (8) | nonce (16)     | HMAC (32)   base64url
//! ```

use std::path::Path;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tc_api::Timestamp;
use tc_proto::identity::{base64url_decode, base64url_encode};

/// The file of the session key in the data directory.
pub const SESSION_KEY_FILE: &str = "session.key";

const SESSION_KIND: u8 = 1;
const CHALLENGE_KIND: u8 = 2;
const MAC_BYTES: usize = 32;
const SESSION_BYTES: usize = 1 + 16 + 4 + 8 + MAC_BYTES;
const CHALLENGE_BYTES: usize = 1 + 16 + 8 + 16 + MAC_BYTES;

/// Why a session token or challenge is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Not something this controller issued (another format, or a MAC that does not match: made
    /// with another key, or altered).
    #[error("not a token this controller issued")]
    Invalid,
    /// Issued by this controller, but expired.
    #[error("expired at {0}")]
    Expired(Timestamp),
    /// A challenge issued for another client.
    #[error("issued for another client")]
    OtherClient,
}

/// What a valid session token says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionClaims {
    /// The client's uid.
    pub uid: u128,
    /// The generation of the client's credential when the session was opened.
    pub generation: u32,
    /// When the session ends.
    pub expires: Timestamp,
}

/// The controller's session key.
pub struct SessionKey {
    key: hmac::Key,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(...)")
    }
}

impl SessionKey {
    /// A key from secret bytes.
    pub fn from_secret(secret: &[u8]) -> SessionKey {
        SessionKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// Reads `<data_dir>/session.key`, or creates it with a new random secret (mode 0600). A key
    /// file readable by others is narrowed to 0600 (with a warning).
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<SessionKey> {
        let path = data_dir.join(SESSION_KEY_FILE);
        let (secret, created) = crate::tokens::load_or_create(&path)?;
        if created {
            tracing::info!(path = %path.display(), "created the session key (mode 0600)");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"),
                    "the session key was readable by others; setting mode 0600");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
        }
        Ok(Self::from_secret(secret.as_bytes()))
    }

    /// A tag vouching for `text` between replicas that share this key: the address of the
    /// agent or admin a follower forwards a request for (see [`crate::follower`]). Hex.
    pub fn vouch(&self, purpose: &str, text: &str) -> String {
        crate::tokens::hex(hmac::sign(&self.key, &vouched(purpose, text)).as_ref())
    }

    /// Whether `tag` is [`SessionKey::vouch`]'s for `purpose` and `text` (compared in constant
    /// time).
    pub fn vouches(&self, purpose: &str, text: &str, tag: &str) -> bool {
        let Some(tag) = (0..tag.len())
            .step_by(2)
            .map(|i| {
                tag.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
        else {
            return false;
        };
        hmac::verify(&self.key, &vouched(purpose, text), &tag).is_ok()
    }

    /// A session token for a client.
    pub fn mint(&self, uid: u128, generation: u32, expires: Timestamp) -> String {
        let mut bytes = Vec::with_capacity(SESSION_BYTES);
        bytes.push(SESSION_KIND);
        bytes.extend_from_slice(&uid.to_be_bytes());
        bytes.extend_from_slice(&generation.to_be_bytes());
        bytes.extend_from_slice(&expires.unix_millis().to_be_bytes());
        let tag = hmac::sign(&self.key, &bytes);
        bytes.extend_from_slice(tag.as_ref());
        base64url_encode(&bytes)
    }

    /// Checks a session token: issued by this controller and not expired at `now`.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<SessionClaims, SessionError> {
        // Checked before decoding, so that nothing large is decoded.
        if token.len() != (SESSION_BYTES * 4).div_ceil(3) {
            return Err(SessionError::Invalid);
        }
        let bytes = base64url_decode(token).ok_or(SessionError::Invalid)?;
        if bytes.len() != SESSION_BYTES || bytes[0] != SESSION_KIND {
            return Err(SessionError::Invalid);
        }
        let (body, tag) = bytes.split_at(SESSION_BYTES - MAC_BYTES);
        hmac::verify(&self.key, body, tag).map_err(|_| SessionError::Invalid)?;
        let uid = u128::from_be_bytes(body[1..17].try_into().expect("16 bytes"));
        let generation = u32::from_be_bytes(body[17..21].try_into().expect("4 bytes"));
        let expires = Timestamp::from_unix_millis(u64::from_be_bytes(
            body[21..29].try_into().expect("8 bytes"),
        ));
        if now >= expires {
            return Err(SessionError::Expired(expires));
        }
        Ok(SessionClaims {
            uid,
            generation,
            expires,
        })
    }

    /// A challenge for a client, valid until `expires`.
    pub fn challenge(&self, uid: u128, expires: Timestamp) -> String {
        let mut nonce = [0u8; 16];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system random source works");
        let mut bytes = Vec::with_capacity(CHALLENGE_BYTES);
        bytes.push(CHALLENGE_KIND);
        bytes.extend_from_slice(&uid.to_be_bytes());
        bytes.extend_from_slice(&expires.unix_millis().to_be_bytes());
        bytes.extend_from_slice(&nonce);
        let tag = hmac::sign(&self.key, &bytes);
        bytes.extend_from_slice(tag.as_ref());
        base64url_encode(&bytes)
    }

    /// Checks that `challenge` was issued by this controller for the client `uid` and has not
    /// expired at `now`.
    pub fn check_challenge(
        &self,
        challenge: &str,
        uid: u128,
        now: Timestamp,
    ) -> Result<(), SessionError> {
        if challenge.len() > 2 * CHALLENGE_BYTES {
            return Err(SessionError::Invalid);
        }
        let bytes = base64url_decode(challenge).ok_or(SessionError::Invalid)?;
        if bytes.len() != CHALLENGE_BYTES || bytes[0] != CHALLENGE_KIND {
            return Err(SessionError::Invalid);
        }
        let (body, tag) = bytes.split_at(CHALLENGE_BYTES - MAC_BYTES);
        hmac::verify(&self.key, body, tag).map_err(|_| SessionError::Invalid)?;
        if u128::from_be_bytes(body[1..17].try_into().expect("16 bytes")) != uid {
            return Err(SessionError::OtherClient);
        }
        let expires = Timestamp::from_unix_millis(u64::from_be_bytes(
            body[17..25].try_into().expect("8 bytes"),
        ));
        if now >= expires {
            return Err(SessionError::Expired(expires));
        }
        Ok(())
    }
}

/// The 128 bits of a uid as the store writes them (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hex).
pub fn parse_uid(uid: &str) -> Option<u128> {
    let hex: String = uid.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || uid.len() != 36 {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok()
}

/// The uid text of 128 bits (the inverse of [`parse_uid`]).
pub fn format_uid(uid: u128) -> String {
    let hex = format!("{uid:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Verifies an Ed25519 signature of `message` by the base64url `public_key`.
pub fn verify_signature(
    public_key: &str,
    message: &[u8],
    signature: &str,
) -> Result<(), SignatureError> {
    let key =
        tc_proto::identity::decode_public_key(public_key).ok_or(SignatureError::MalformedKey)?;
    let signature =
        tc_proto::identity::decode_signature(signature).ok_or(SignatureError::Malformed)?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(message, &signature)
        .map_err(|_| SignatureError::Mismatch)
}

/// Why a signature is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The public key is not 32 bytes of base64url.
    #[error("publicKey must be an Ed25519 public key: 32 bytes, base64url without padding")]
    MalformedKey,
    /// The signature is not 64 bytes of base64url.
    #[error("signature must be an Ed25519 signature: 64 bytes, base64url without padding")]
    Malformed,
    /// The signature was not made with the key's private key over this message.
    #[error("the signature does not match the public key: the agent does not hold that key")]
    Mismatch,
}

/// What [`SessionKey::vouch`] signs: the purpose, a zero byte, the text.
fn vouched(purpose: &str, text: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(purpose.len() + 1 + text.len());
    bytes.extend_from_slice(purpose.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key() -> SessionKey {
        SessionKey::from_secret(b"a test secret of some length....")
    }

    #[test]
    fn sessions_round_trip_and_expire() {
        let key = key();
        let expires = Timestamp::from_unix_millis(10_000);
        let token = key.mint(42, 3, expires);
        assert_eq!(
            key.verify(&token, Timestamp::from_unix_millis(9_999)),
            Ok(SessionClaims {
                uid: 42,
                generation: 3,
                expires
            })
        );
        assert_eq!(
            key.verify(&token, expires),
            Err(SessionError::Expired(expires))
        );
    }

    #[test]
    fn forged_or_foreign_sessions_are_invalid() {
        let key = key();
        let now = Timestamp::from_unix_millis(1);
        let expires = Timestamp::from_unix_millis(10_000);
        let token = key.mint(42, 3, expires);
        // Another controller's key.
        let other = SessionKey::from_secret(b"another secret");
        assert_eq!(other.verify(&token, now), Err(SessionError::Invalid));
        // Every single altered byte is refused.
        let bytes = base64url_decode(&token).unwrap();
        for at in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[at] ^= 1;
            assert_eq!(
                key.verify(&base64url_encode(&altered), now),
                Err(SessionError::Invalid),
                "byte {at}"
            );
        }
        // A challenge is not a session, nor anything else.
        let challenge = key.challenge(42, expires);
        assert_eq!(key.verify(&challenge, now), Err(SessionError::Invalid));
        for garbage in ["", "x", "admin-token", &"A".repeat(82)] {
            assert_eq!(key.verify(garbage, now), Err(SessionError::Invalid));
        }
    }

    #[test]
    fn challenges_are_fresh_bound_to_their_client_and_expire() {
        let key = key();
        let now = Timestamp::from_unix_millis(1);
        let expires = Timestamp::from_unix_millis(5_000);
        let first = key.challenge(7, expires);
        assert_ne!(first, key.challenge(7, expires), "each has its own nonce");
        assert_eq!(key.check_challenge(&first, 7, now), Ok(()));
        assert_eq!(
            key.check_challenge(&first, 8, now),
            Err(SessionError::OtherClient)
        );
        assert_eq!(
            key.check_challenge(&first, 7, expires),
            Err(SessionError::Expired(expires))
        );
        let session = key.mint(7, 0, expires);
        assert_eq!(
            key.check_challenge(&session, 7, now),
            Err(SessionError::Invalid)
        );
        assert_eq!(
            SessionKey::from_secret(b"other").check_challenge(&first, 7, now),
            Err(SessionError::Invalid)
        );
    }

    #[test]
    fn the_session_key_file_is_made_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let first = SessionKey::load_or_create(dir.path()).unwrap();
        let token = first.mint(1, 0, Timestamp::from_unix_millis(u64::MAX));
        let again = SessionKey::load_or_create(dir.path()).unwrap();
        assert!(again.verify(&token, Timestamp::EPOCH).is_ok(), "same key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(SESSION_KEY_FILE);
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            SessionKey::load_or_create(dir.path()).unwrap();
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn uids_parse_and_format() {
        let text = "0193a0b1-c2d3-e4f5-0617-28394a5b6c7d";
        let uid = parse_uid(text).unwrap();
        assert_eq!(format_uid(uid), text);
        assert_eq!(parse_uid("not-a-uid"), None);
        assert_eq!(parse_uid(&text.replace('-', "")), None);
    }

    #[test]
    fn signatures_verify_only_with_the_key_and_the_message() {
        let pair = Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap();
        let public = base64url_encode(pair.public_key().as_ref());
        let signature = base64url_encode(pair.sign(b"message").as_ref());
        assert_eq!(verify_signature(&public, b"message", &signature), Ok(()));
        assert_eq!(
            verify_signature(&public, b"other", &signature),
            Err(SignatureError::Mismatch)
        );
        let other = Ed25519KeyPair::from_seed_unchecked(&[8; 32]).unwrap();
        let other_public = base64url_encode(other.public_key().as_ref());
        assert_eq!(
            verify_signature(&other_public, b"message", &signature),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature("short", b"message", &signature),
            Err(SignatureError::MalformedKey)
        );
        assert_eq!(
            verify_signature(&public, b"message", "bad"),
            Err(SignatureError::Malformed)
        );
    }
}
