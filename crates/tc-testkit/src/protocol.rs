//! The agent protocol spoken by hand, for tests: a key pair and the signed enrolment and session
//! requests made with it.

use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use tc_proto::PROTOCOL_VERSION;
use tc_proto::identity::{base64url_encode, enrollment_message, session_message};

/// An agent's key pair, derived from a label (the same label gives the same key, as a machine
/// that keeps its state directory keeps its key).
pub struct TestIdentity {
    key: Ed25519KeyPair,
    public_key: String,
}

impl std::fmt::Debug for TestIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestIdentity")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl TestIdentity {
    /// The key pair of `label`.
    pub fn new(label: &str) -> TestIdentity {
        let digest = ring::digest::digest(&ring::digest::SHA256, label.as_bytes());
        let key = Ed25519KeyPair::from_seed_unchecked(digest.as_ref()).expect("32-byte seed");
        let public_key = base64url_encode(key.public_key().as_ref());
        TestIdentity { key, public_key }
    }

    /// The public key, base64url.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// A signature of `message`, base64url.
    pub fn sign(&self, message: &[u8]) -> String {
        base64url_encode(self.key.sign(message).as_ref())
    }

    /// A signed enrolment request (JSON) with this key.
    pub fn enroll_body(
        &self,
        bootstrap_token: &str,
        machine_id: &str,
        name: &str,
        labels: Value,
    ) -> Value {
        let token_hash = tc_controller::tokens::hash(bootstrap_token);
        let message = enrollment_message(machine_id, &self.public_key, &token_hash);
        json!({
            "protocolVersion": PROTOCOL_VERSION,
            "bootstrapToken": bootstrap_token,
            "machineId": machine_id,
            "name": name,
            "hostname": name,
            "labels": labels,
            "publicKey": self.public_key,
            "signature": self.sign(&message),
        })
    }

    /// The second step of opening a session (JSON): the challenge, signed.
    pub fn session_body(&self, client_name: &str, challenge: &str) -> Value {
        json!({
            "protocolVersion": PROTOCOL_VERSION,
            "clientName": client_name,
            "challenge": challenge,
            "signature": self.sign(&session_message(client_name, challenge)),
        })
    }
}
