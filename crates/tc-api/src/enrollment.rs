//! Enrolment policy as the controller serves it and `tcadm` reads it: bootstrap tokens (never
//! their secret, apart from the one answer that creates it) and the machines kept from enrolling.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::{Timestamp, is_false};

/// A bootstrap token: it lets a new machine ask to join the fleet. The controller stores only the
/// SHA-256 of its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapToken {
    /// Its name (a DNS label); `default` for the token written to `data/bootstrap.token`.
    pub name: String,
    /// When it was created.
    pub creation_timestamp: Timestamp,
    /// After this, enrolments with it are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
    /// How many clients it may enrol (re-enrolments of a known key do not count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
    /// How many clients it enrolled (pending ones included).
    #[serde(default)]
    pub uses: u32,
    /// Labels it imposes: set as admin labels of every client it enrols, so they win over the
    /// labels the agent declares (a token handed to one site can only enrol that site's clients).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Clients it enrols wait as `Pending` until an admin approves them.
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_approval: bool,
}

/// Body of `POST /apis/thinfleet.io/v1/bootstraptokens` (every field optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapTokenRequest {
    /// The token's name [default: `token-` and the first characters of the secret's hash].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Lifetime in seconds [default: no expiry].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// How many clients it may enrol [default: unlimited].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
    /// Labels it imposes on the clients it enrols.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its clients wait for an admin's approval.
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_approval: bool,
}

/// What an agent needs to join: where the controller is, the bootstrap token and how to trust
/// the controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinMaterial {
    /// The controller's URL as the request reached it.
    pub server: String,
    /// The bootstrap token's secret.
    pub token: String,
    /// The SHA-256 fingerprint of the controller's CA, when the controller has one; while the
    /// CA is being replaced, the current and the next one, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_hash: Option<String>,
}

/// Answer to creating a bootstrap token: the only time its secret is shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapTokenCreated {
    /// The secret.
    pub token: String,
    /// The token as listed.
    pub bootstrap_token: BootstrapToken,
    /// Everything an agent needs to join with it.
    pub join: JoinMaterial,
}

/// Why an identity is kept from enrolling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum BlockReason {
    /// The client was decommissioned.
    Decommissioned,
    /// An admin denied its enrolment.
    Denied,
    /// An admin deleted the client: its credential (key) is revoked.
    Deleted,
}

/// A machine identity kept from enrolling until an admin allows it again
/// (`tcadm allow machine ID`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockedMachine {
    /// The machine id.
    pub machine_id: String,
    /// The key that is refused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub public_key: String,
    /// Whether every key with this machine id is refused (decommissioned or denied machines),
    /// or only `publicKey` (a denied duplicate of a machine id another client holds).
    #[serde(default)]
    pub whole_machine: bool,
    /// Why.
    pub reason: BlockReason,
    /// The client it was.
    pub client: String,
    /// Since when.
    pub since: Timestamp,
}

impl BlockedMachine {
    /// True when an enrolment with this machine id and key is refused by this block.
    pub fn refuses(&self, machine_id: &str, public_key: &str) -> bool {
        (!self.public_key.is_empty() && self.public_key == public_key)
            || (self.whole_machine && self.machine_id == machine_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_refuses_its_key_and_its_machine_when_whole() {
        let mut block = BlockedMachine {
            machine_id: "m".into(),
            public_key: "K".into(),
            whole_machine: false,
            reason: BlockReason::Denied,
            client: "kiosk-2".into(),
            since: Timestamp::EPOCH,
        };
        assert!(block.refuses("other", "K"));
        assert!(
            !block.refuses("m", "L"),
            "another key of a shared machine id"
        );
        block.whole_machine = true;
        assert!(block.refuses("m", "L"));
        assert!(!block.refuses("n", "L"));
    }

    #[test]
    fn token_requests_refuse_unknown_fields() {
        let request: BootstrapTokenRequest =
            serde_json::from_str(r#"{"name":"berlin","ttlSeconds":60,"labels":{"site":"berlin"}}"#)
                .unwrap();
        assert_eq!(request.name.as_deref(), Some("berlin"));
        assert!(serde_json::from_str::<BootstrapTokenRequest>(r#"{"ttl":60}"#).is_err());
    }
}
