//! The status of a watched manifest directory (a "source"), as `GET /apis/thinfleet.io/v1/sources`
//! serves it. The controller writes it; `tcadm` reads it. Every field but `name` has a default when
//! read, so a status from a controller that leaves a field out still reads.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::{Cause, Timestamp, is_zero};
use crate::resources::Kind;

/// One watched directory's status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The source's name: the directory's base name.
    pub name: String,
    /// The directory on the controller.
    #[serde(default)]
    pub path: String,
    /// The manager its objects are applied as (`dir:<path>`).
    #[serde(default)]
    pub manager: String,
    /// The revision last applied: the git commit checked out when the directory is in a git
    /// checkout, otherwise `sha256:` over the files' names and contents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The git ref checked out (`refs/heads/main`), if any.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// When it was last applied successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_time: Option<Timestamp>,
    /// The revision of the last attempt (differs from `revision` while the directory fails).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,
    /// When it was last read and applied, successfully or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<Timestamp>,
    /// True while changes (of its files, or API writes to its objects) wait for a sync.
    #[serde(default)]
    pub sync_pending: bool,
    /// Objects applied by the last successful sync.
    #[serde(default)]
    pub objects: Vec<SourceObject>,
    /// Objects left alone because they are marked `thinfleet.io/reconcile: disabled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedObject>,
    /// Objects not applied because of a conflict of their own (a changed release, a second release
    /// of one version); every other object applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<SkippedObject>,
    /// Releases whose prune waits until no client is assigned them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_prunes: Vec<SourcePendingPrune>,
    /// Objects put back since the controller started (re-created, content or manager restored).
    #[serde(default)]
    pub drift_corrections: u64,
    /// The current error, if the directory's content is not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where the error points.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Cause>,
    /// Failed attempts in a row.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// When a failing directory is tried again (sooner if its files change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_time: Option<Timestamp>,
}

/// One object a source's files define.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceObject {
    /// `ClientGroup` or `PackageRelease`.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// The file that defines it.
    #[serde(default)]
    pub file: String,
}

/// An object a source of truth left alone, and why: marked `thinfleet.io/reconcile: disabled`,
/// or in a conflict of its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkippedObject {
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// `ReconcileDisabled` or `Conflict`.
    #[serde(default)]
    pub reason: String,
    /// A sentence for people.
    #[serde(default)]
    pub message: String,
    /// Where the object is defined (absent for a stored object no file defines any more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Line of its document, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// Column of its document, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

/// A prune of the source that waits until no client is assigned the release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourcePendingPrune {
    /// Always `PackageRelease`.
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// Clients assigned it at the last sync.
    #[serde(default)]
    pub clients: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names on the wire, and what is left out when empty.
    #[test]
    fn a_status_round_trips_with_its_wire_names() {
        let status = SourceStatus {
            name: "manifests".into(),
            path: "/srv/manifests".into(),
            manager: "dir:/srv/manifests".into(),
            git_ref: Some("refs/heads/main".into()),
            objects: vec![SourceObject {
                kind: Kind::ClientGroup,
                name: "front-desk".into(),
                file: "/srv/manifests/groups.yaml".into(),
            }],
            pending_prunes: vec![SourcePendingPrune {
                kind: Kind::PackageRelease,
                name: "kiosk-1.0.0".into(),
                clients: 2,
            }],
            causes: vec![Cause {
                file: Some("b.yaml".into()),
                line: Some(6),
                column: Some(3),
                field: Some("spec.paused".into()),
                message: "invalid".into(),
            }],
            failures: 1,
            ..Default::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "manifests", "path": "/srv/manifests", "manager": "dir:/srv/manifests",
                "ref": "refs/heads/main", "syncPending": false,
                "objects": [{ "kind": "ClientGroup", "name": "front-desk", "file": "/srv/manifests/groups.yaml" }],
                "pendingPrunes": [{ "kind": "PackageRelease", "name": "kiosk-1.0.0", "clients": 2 }],
                "driftCorrections": 0,
                "causes": [{ "file": "b.yaml", "line": 6, "column": 3, "field": "spec.paused", "message": "invalid" }],
                "failures": 1
            })
        );
        assert_eq!(
            serde_json::from_value::<SourceStatus>(json).unwrap(),
            status
        );
        let minimal: SourceStatus =
            serde_json::from_value(serde_json::json!({ "name": "manifests" })).unwrap();
        assert_eq!(minimal.name, "manifests");
    }
}
