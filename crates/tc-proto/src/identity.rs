//! Key-bound client identity: the encodings and the canonical messages an agent signs.
//!
//! An agent makes an Ed25519 key pair at its first start and never sends the private key. It
//! proves that it holds the key twice:
//!
//! * at enrolment, by signing [`enrollment_message`], which binds its machine id and public key to
//!   the bootstrap token it enrols with (so a captured signature cannot be used with another
//!   token, and a token holder cannot enrol another machine's key);
//! * at the start of every session, by signing [`session_message`] over a fresh challenge the
//!   controller issued (so a captured signature is worthless once the challenge expired).
//!
//! The signing and verifying are done with `ring` by the agent and the controller; this module
//! only defines the bytes, so both sides (and the fleet simulator) agree on them. Every message
//! starts with a domain string, so a signature made for one purpose is never valid for another.

/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_BYTES: usize = 32;

/// Length of an Ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;

/// First line of an enrolment message.
pub const ENROLLMENT_DOMAIN: &str = "thinfleet-enroll-v1";

/// First line of a session message.
pub const SESSION_DOMAIN: &str = "thinfleet-session-v1";

/// The message an agent signs to enrol: the domain, its machine id, its public key (base64url)
/// and the lowercase hex SHA-256 of the bootstrap token, one per line.
///
/// Machine ids cannot contain a line break ([`crate::limits::is_valid_machine_id`]), and the
/// other parts are base64url and hex, so the message is unambiguous.
pub fn enrollment_message(
    machine_id: &str,
    public_key: &str,
    bootstrap_token_sha256: &str,
) -> Vec<u8> {
    format!("{ENROLLMENT_DOMAIN}\n{machine_id}\n{public_key}\n{bootstrap_token_sha256}")
        .into_bytes()
}

/// The message an agent signs to open a session: the domain, its client name and the challenge
/// the controller gave it, one per line.
pub fn session_message(client_name: &str, challenge: &str) -> Vec<u8> {
    format!("{SESSION_DOMAIN}\n{client_name}\n{challenge}").into_bytes()
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64url without padding (RFC 4648 §5), as keys, signatures and tokens travel.
pub fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let symbols = chunk.len() + 1;
        for i in 0..symbols {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes base64url without padding; `None` for anything else (padding, other alphabets,
/// a length no encoding has, or bits left over).
pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let produced = chunk.len() - 1;
        // Bits beyond the last whole byte must be zero, so that every byte string has exactly
        // one encoding.
        let unused = 24 - 8 * produced;
        if chunk.len() < 4 && n & ((1 << unused) - 1) != 0 {
            return None;
        }
        for i in 0..produced {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// Decodes a base64url public key of exactly [`PUBLIC_KEY_BYTES`].
pub fn decode_public_key(text: &str) -> Option<[u8; PUBLIC_KEY_BYTES]> {
    base64url_decode(text)?.try_into().ok()
}

/// Decodes a base64url signature of exactly [`SIGNATURE_BYTES`].
pub fn decode_signature(text: &str) -> Option<[u8; SIGNATURE_BYTES]> {
    base64url_decode(text)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc_4648_vectors_without_padding() {
        let vectors = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64url_encode(plain.as_bytes()), encoded);
            assert_eq!(base64url_decode(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64url_encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url_decode("-_8").unwrap(), [0xfb, 0xff]);
    }

    #[test]
    fn base64url_round_trips_every_length_and_refuses_other_forms() {
        for length in 0..70 {
            let bytes: Vec<u8> = (0..length).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base64url_decode(&base64url_encode(&bytes)).unwrap(), bytes);
        }
        for bad in ["Zg==", "Z", "Zh", "+/8", "Zm9v\n", "Zm 9"] {
            assert_eq!(base64url_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn keys_and_signatures_must_have_their_exact_length() {
        let key = base64url_encode(&[7; 32]);
        assert_eq!(decode_public_key(&key), Some([7; 32]));
        assert_eq!(decode_public_key(&base64url_encode(&[7; 31])), None);
        assert_eq!(decode_signature(&base64url_encode(&[1; 64])), Some([1; 64]));
        assert_eq!(decode_signature(&key), None);
    }

    #[test]
    fn messages_are_domain_separated_and_bind_every_part() {
        let enrol = enrollment_message("m-1", "KEY", "abc");
        assert_eq!(enrol, b"thinfleet-enroll-v1\nm-1\nKEY\nabc");
        assert_ne!(enrol, enrollment_message("m-2", "KEY", "abc"));
        assert_ne!(enrol, enrollment_message("m-1", "KEY", "abd"));
        let session = session_message("kiosk-1", "CHALLENGE");
        assert_eq!(session, b"thinfleet-session-v1\nkiosk-1\nCHALLENGE");
        assert_ne!(session, enrollment_message("kiosk-1", "CHALLENGE", ""));
    }
}
