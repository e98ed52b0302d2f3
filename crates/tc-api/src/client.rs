//! The `Client` kind: one enrolled thin client, its spec, status and labels.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tc_proto::{Inventory, Load, PackageReport, PendingReason, Timestamp};

use crate::meta::{API_VERSION, Condition, ObjectMeta};

/// One enrolled thin client. Created by enrolment, never by manifests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    /// Always `thinfleet.io/v1`.
    pub api_version: String,
    /// Always `Client`.
    pub kind: String,
    /// `labels` is the merge of automatic, agent and admin labels (admin wins).
    pub metadata: ObjectMeta,
    /// Identity and label sources.
    pub spec: ClientSpec,
    /// What the client reported and what it was assigned.
    #[serde(default)]
    pub status: ClientStatus,
}

/// Identity and label sources of a client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientSpec {
    /// The machine identity the agent enrolled with. Not a credential: several clients may
    /// share one (cloned images an admin approved as clients of their own).
    pub machine_id: String,
    /// The client's Ed25519 public key (base64url): its identity. The agent proves it holds the
    /// private key, which never leaves the client, at every session. Empty for a client enrolled
    /// before identities existed whose agent has not claimed one yet.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub public_key: String,
    /// Raised whenever the client's key is replaced (`tcadm approve --replace`): sessions of an
    /// older generation stop working at once.
    #[serde(default, skip_serializing_if = "crate::meta::is_zero")]
    pub credential_generation: u32,
    /// The bootstrap token the client enrolled with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_token: Option<String>,
    /// Set while the client waits for an admin (phase `Pending`): no group selects it and it
    /// gets no session until `tcadm approve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingEnrollment>,
    /// An admin asked to decommission the client (`tcadm decommission`): its agent removes what
    /// thinfleet installed and stops; the controller then deletes the client and blocks its
    /// machine id and key.
    #[serde(default, skip_serializing_if = "crate::meta::is_false")]
    pub decommission: bool,
    /// Labels from the agent's own configuration.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agent_labels: BTreeMap<String, String>,
    /// Labels set by admins (`tcadm label client`, and those a bootstrap token imposes at
    /// enrolment); they override agent labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub admin_labels: BTreeMap<String, String>,
}

/// Why a client waits for an admin, and since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingEnrollment {
    /// `ApprovalRequired` or `DuplicateMachineId`.
    pub reason: PendingReason,
    /// The reason for a person.
    pub message: String,
    /// The clients already enrolled with this machine id (`DuplicateMachineId`): candidates for
    /// `tcadm approve client NAME --replace OLD`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enrolled_as: Vec<String>,
    /// When the enrolment was asked for.
    pub since: Timestamp,
}

/// Where a client stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ClientPhase {
    /// Waiting for an admin's approval (`spec.pending`).
    Pending,
    /// Enrolled, no heartbeat yet.
    #[default]
    Enrolled,
    /// Heartbeating.
    Online,
    /// Missed three heartbeats.
    Offline,
    /// Told to decommission; its agent is removing what thinfleet installed.
    Decommissioning,
}

impl fmt::Display for ClientPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientPhase::Pending => "Pending",
            ClientPhase::Enrolled => "Enrolled",
            ClientPhase::Online => "Online",
            ClientPhase::Offline => "Offline",
            ClientPhase::Decommissioning => "Decommissioning",
        })
    }
}

/// One package a client was assigned.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct AssignedPackage {
    /// Package name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// Which attempt at this version: raised when an admin retries a failed release
    /// (`tcadm rollout retry`). An agent does not install a release again after it failed unless
    /// this (or the release) changes.
    #[serde(default, skip_serializing_if = "crate::meta::is_zero")]
    pub attempt: u32,
}

/// Observed state of a client.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientStatus {
    /// Pending, Enrolled, Online, Offline or Decommissioning.
    #[serde(default)]
    pub phase: ClientPhase,
    /// Last heartbeat received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Timestamp>,
    /// Hardware and software inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
    /// Hash of `inventory` as the agent computed it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub inventory_hash: String,
    /// Latest load figures.
    #[serde(default)]
    pub load: Load,
    /// Packages as the agent reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<PackageReport>,
    /// The desired revision those reports were made for.
    #[serde(default)]
    pub observed_revision: u64,
    /// What the client is assigned to run now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub desired: Vec<AssignedPackage>,
    /// Increases whenever `desired` changes.
    #[serde(default)]
    pub desired_revision: u64,
    /// `Ready`, `Converged`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The groups that select the client (computed when one client is read, not stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Per package, which group and requirement decide its version and why it is or is not
    /// assigned yet (computed when one client is read, not stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<PackageDecision>,
}

/// Why a client runs, or is to run, a version of a package.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageDecision {
    /// The package.
    pub package: String,
    /// The version the client should run, if any (none: to be removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<String>,
    /// The version it is assigned now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned: Option<String>,
    /// The group whose requirement decides the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// That requirement (`^1.4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirement: Option<String>,
    /// Why, in a sentence: the deciding group and the ones it overrides, a conflict, or what an
    /// assignment still waits for.
    pub reason: String,
}

impl Client {
    /// A freshly enrolled client.
    pub fn new(name: &str, spec: ClientSpec) -> Self {
        let mut client = Client {
            api_version: API_VERSION.into(),
            kind: "Client".into(),
            metadata: ObjectMeta::named(name),
            spec,
            status: ClientStatus::default(),
        };
        client.refresh_labels();
        client
    }

    /// Recomputes `metadata.labels` from automatic, agent and admin labels (later ones win).
    pub fn refresh_labels(&mut self) {
        let mut labels = self
            .status
            .inventory
            .as_ref()
            .map(automatic_labels)
            .unwrap_or_default();
        labels.extend(
            self.spec
                .agent_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        labels.extend(
            self.spec
                .admin_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        self.metadata.labels = labels;
    }
}

/// Keys of the labels derived from a client's inventory.
pub const AUTOMATIC_LABEL_KEYS: [&str; 3] = [
    "thinfleet.io/hostname",
    "thinfleet.io/os",
    "thinfleet.io/arch",
];

/// The labels derived from an inventory: host name, OS and architecture, as valid label values
/// (empty ones left out).
pub fn automatic_labels(inventory: &Inventory) -> BTreeMap<String, String> {
    let values = [&inventory.hostname, &inventory.os_name, &inventory.arch];
    AUTOMATIC_LABEL_KEYS
        .iter()
        .zip(values)
        .filter_map(|(key, value)| {
            let value = sanitize_label_value(value);
            (!value.is_empty()).then(|| (key.to_string(), value))
        })
        .collect()
}

/// Turns free text (an OS name such as `Debian GNU/Linux`) into a valid label value.
pub fn sanitize_label_value(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}
