//! The audit trail: who changed what, from where, when, and whether it was allowed.
//!
//! Every write to the admin API is recorded, refused ones (403) included, with the authenticated
//! identity; so are the changes the watched directory applies. Entries live in a history of
//! their own, which agents' events cannot evict.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::credential::Role;
use crate::meta::Timestamp;

/// How a recorded request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AuditOutcome {
    /// It was carried out (2xx).
    Succeeded,
    /// The identity's role does not allow it (403).
    Denied,
    /// It was allowed but failed (any other 4xx or 5xx): invalid input, a conflict, a missing
    /// object. Nothing changed.
    Failed,
}

impl AuditOutcome {
    /// The outcome of an HTTP status.
    pub fn of_status(code: u16) -> AuditOutcome {
        match code {
            200..=299 => AuditOutcome::Succeeded,
            403 => AuditOutcome::Denied,
            _ => AuditOutcome::Failed,
        }
    }
}

impl fmt::Display for AuditOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuditOutcome::Succeeded => "Succeeded",
            AuditOutcome::Denied => "Denied",
            AuditOutcome::Failed => "Failed",
        })
    }
}

/// One object a recorded request named or changed, and what happened to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditObject {
    /// `ClientGroup`, `PackageRelease`, `Client`, `Credential`, `BootstrapToken`,
    /// `BlockedMachine`, `Blob`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// What changed (`created`, `configured`, `unchanged`, `deleted`, `labels: +room=12`), when
    /// the request got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
}

impl AuditObject {
    /// An object without a recorded change.
    pub fn new(kind: impl Into<String>, name: impl Into<String>) -> AuditObject {
        AuditObject {
            kind: kind.into(),
            name: name.into(),
            change: None,
        }
    }

    /// The same object with what changed.
    pub fn changed(mut self, change: impl Into<String>) -> AuditObject {
        self.change = Some(change.into());
        self
    }
}

/// One recorded write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Sequence number, increasing; assigned by the store.
    #[serde(default)]
    pub seq: u64,
    /// When the request was answered.
    pub time: Timestamp,
    /// Who: the credential's name (`admin` for the break-glass token), or the watched
    /// directory's manager (`dir:/srv/manifests`).
    pub user: String,
    /// The credential's role (none for the watched directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The break-glass token of `data/admin.token` was used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// Where from: the TCP peer address of the request (`192.0.2.7:51234`), or `controller` for
    /// the watched directory.
    pub source: String,
    /// What was asked: `apply`, `delete`, `label`, `approve`, `deny`, `decommission`, `allow`,
    /// `retry`, `pause`, `resume`, `createBootstrapToken`, `revokeBootstrapToken`, `createCredential`,
    /// `rotateCredential`, `revokeCredential`, `uploadBlob`, `sync` (the watched directory).
    pub action: String,
    /// The request line (`POST /apis/thinfleet.io/v1/apply?prune=true`); the directory for a
    /// sync.
    pub request: String,
    /// The objects it named or changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<AuditObject>,
    /// The HTTP status answered (200 for a sync).
    pub code: u16,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// The error message for a refused or failed request; a summary for some others (a dry run,
    /// a sync's revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl AuditEntry {
    /// Whether it names an object of `kind` (case-insensitive, as `clientgroup`) called `name`;
    /// either may be omitted.
    pub fn concerns(&self, kind: Option<&str>, name: Option<&str>) -> bool {
        (kind.is_none() && name.is_none())
            || self.objects.iter().any(|object| {
                kind.is_none_or(|kind| object.kind.eq_ignore_ascii_case(kind))
                    && name.is_none_or(|name| object.name == name)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_objects_by_kind_and_name() {
        let entry = AuditEntry {
            seq: 1,
            time: Timestamp::from_unix_millis(0),
            user: "alice".into(),
            role: Some(Role::Admin),
            break_glass: false,
            source: "127.0.0.1:1".into(),
            action: "apply".into(),
            request: "POST /apis/thinfleet.io/v1/apply".into(),
            objects: vec![
                AuditObject::new("ClientGroup", "kiosk").changed("created"),
                AuditObject::new("PackageRelease", "browser-1.0.0"),
            ],
            code: 200,
            outcome: AuditOutcome::Succeeded,
            message: None,
        };
        assert!(entry.concerns(None, None));
        assert!(entry.concerns(Some("clientgroup"), Some("kiosk")));
        assert!(entry.concerns(None, Some("browser-1.0.0")));
        assert!(!entry.concerns(Some("ClientGroup"), Some("browser-1.0.0")));
        assert!(!entry.concerns(Some("Client"), None));
        let text = serde_json::to_string(&entry).unwrap();
        assert!(!text.contains("breakGlass"), "{text}");
        assert_eq!(serde_json::from_str::<AuditEntry>(&text).unwrap(), entry);
        assert_eq!(AuditOutcome::of_status(403), AuditOutcome::Denied);
        assert_eq!(AuditOutcome::of_status(204), AuditOutcome::Succeeded);
        assert_eq!(AuditOutcome::of_status(409), AuditOutcome::Failed);
    }
}
