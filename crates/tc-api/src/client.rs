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
                .filter(|(k, _)| !is_system_label(k))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        labels.extend(
            self.spec
                .admin_labels
                .iter()
                .filter(|(k, _)| !is_system_label(k))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        self.metadata.labels = labels;
    }
}

/// The label of the agent's reported version (`inventory.agentVersion`), for finding outdated
/// agents (`thinfleet.io/agent-version<0.3.0`): the one key the ordering operators of selectors
/// take.
pub const AGENT_VERSION_LABEL: &str = "thinfleet.io/agent-version";

/// True for the labels only the controller sets (from the inventory): neither an agent's nor an
/// admin's labels can set or hide them.
pub fn is_system_label(key: &str) -> bool {
    key == AGENT_VERSION_LABEL
}

/// Reports every system label in `labels` (admin or imposed labels being set) under `path`.
pub fn refuse_system_labels(
    labels: &BTreeMap<String, String>,
    path: &str,
    errors: &mut crate::validate::Errors,
) {
    for key in labels.keys().filter(|key| is_system_label(key)) {
        errors.push(
            format!("{path}.{key}"),
            format!(
                "`{key}` is set by the controller from the version the agent reports; \
                 it cannot be set or removed"
            ),
        );
    }
}

/// The value of [`AGENT_VERSION_LABEL`] for a reported version: the version without its build
/// metadata (which does not count in semver precedence and has a `+`, no label character), or,
/// when that is no valid label value, the text made one as other automatic labels are.
pub fn agent_version_label_value(version: &str) -> String {
    let release = version.split_once('+').map_or(version, |(head, _)| head);
    if crate::validate::is_label_name_part(release) {
        release.to_string()
    } else {
        sanitize_label_value(version)
    }
}

/// Keys of the labels derived from a client's inventory.
pub const AUTOMATIC_LABEL_KEYS: [&str; 4] = [
    "thinfleet.io/hostname",
    "thinfleet.io/os",
    "thinfleet.io/arch",
    AGENT_VERSION_LABEL,
];

/// The labels derived from an inventory: host name, OS, architecture and agent version, as
/// valid label values (empty ones left out).
pub fn automatic_labels(inventory: &Inventory) -> BTreeMap<String, String> {
    let values = [
        sanitize_label_value(&inventory.hostname),
        sanitize_label_value(&inventory.os_name),
        sanitize_label_value(&inventory.arch),
        agent_version_label_value(&inventory.agent_version),
    ];
    AUTOMATIC_LABEL_KEYS
        .iter()
        .zip(values)
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| (key.to_string(), value))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_version_label_is_the_reported_version_without_build_metadata() {
        let labels = |version: &str| {
            automatic_labels(&Inventory {
                agent_version: version.into(),
                ..Default::default()
            })
        };
        assert_eq!(labels("0.2.0")[AGENT_VERSION_LABEL], "0.2.0");
        assert_eq!(labels("0.3.0-rc.1")[AGENT_VERSION_LABEL], "0.3.0-rc.1");
        assert_eq!(labels("0.3.0+git.abc")[AGENT_VERSION_LABEL], "0.3.0");
        assert_eq!(labels("dev build")[AGENT_VERSION_LABEL], "dev_build");
        assert!(!labels("").contains_key(AGENT_VERSION_LABEL));
    }

    #[test]
    fn neither_agent_nor_admin_labels_set_or_hide_the_agent_version() {
        let mut client = Client::new(
            "kiosk-1",
            ClientSpec {
                agent_labels: [(AGENT_VERSION_LABEL.into(), "9.9.9".into())].into(),
                admin_labels: [(AGENT_VERSION_LABEL.into(), "8.8.8".into())].into(),
                ..Default::default()
            },
        );
        assert!(!client.metadata.labels.contains_key(AGENT_VERSION_LABEL));
        client.status.inventory = Some(Inventory {
            agent_version: "0.1.0".into(),
            ..Default::default()
        });
        client.refresh_labels();
        assert_eq!(client.metadata.labels[AGENT_VERSION_LABEL], "0.1.0");

        let mut errors = crate::validate::Errors::default();
        refuse_system_labels(&client.spec.admin_labels, "metadata.labels", &mut errors);
        let text = errors.to_string();
        assert!(
            text.contains("metadata.labels.thinfleet.io/agent-version")
                && text.contains("cannot be set"),
            "{text}"
        );
    }
}
