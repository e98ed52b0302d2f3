//! A watched directory's shared state: its status as served ([`tc_api::SourceStatus`]), what its
//! files define (for API writes that the directory takes back), and the counters that say whether a
//! sync is pending.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tc_api::{Event, EventType, Kind, Object, ObjectRef, SourceStatus, Timestamp};
use tc_store::Write;
use tokio::sync::Notify;

use crate::apply::ArtifactCache;

/// The watched directories (one per controller today).
#[derive(Default)]
pub struct Sources {
    list: Mutex<Vec<Arc<Source>>>,
}

impl Sources {
    /// Adds a source.
    pub fn register(&self, source: Arc<Source>) {
        self.list.lock().expect("sources lock").push(source);
    }

    /// Every source, in registration order.
    pub fn all(&self) -> Vec<Arc<Source>> {
        self.list.lock().expect("sources lock").clone()
    }

    /// The source called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Source>> {
        self.all().into_iter().find(|s| s.name == name)
    }

    /// The source whose files define `kind/name` and which keeps it in its hands (not marked
    /// `thinfleet.io/reconcile: disabled` in the file), as of its last sync.
    pub fn defining(&self, kind: Kind, name: &str) -> Option<Defining> {
        self.all().into_iter().find_map(|source| {
            let defined = {
                let state = source.state.lock().expect("source lock");
                state.defined.get(&(kind, name.to_string())).cloned()
            }?;
            (!defined.disabled).then(|| Defining {
                source: source.clone(),
                file: defined.file,
                restore: defined.object,
            })
        })
    }
}

/// A watched directory.
pub struct Source {
    /// Its name: the directory's base name.
    pub name: String,
    /// The directory (canonical).
    pub path: PathBuf,
    /// `dir:<path>`.
    pub manager: String,
    /// Bumped by every file change and every API write to one of its objects; a sync is pending
    /// while it is ahead of `synced`.
    pub(super) changes: AtomicU64,
    /// The value of `changes` read before the last completed sync read the directory.
    pub(super) synced: AtomicU64,
    /// Counted apart from the status, as API deletes restore objects between syncs.
    pub(super) drift_corrections: AtomicU64,
    /// Wakes the sync loop.
    pub(super) wake: Notify,
    pub(super) state: Mutex<SourceState>,
    /// Digests of the package directories and zips its releases name.
    pub(super) artifacts: Arc<ArtifactCache>,
}

/// What only the sync loop writes.
#[derive(Clone, Default)]
pub(super) struct SourceState {
    /// The status as served (`syncPending` and `driftCorrections` are filled in when read).
    pub(super) status: SourceStatus,
    /// What the files defined at the last sync that applied them.
    pub(super) defined: BTreeMap<(Kind, String), Defined>,
}

/// An object the files define.
#[derive(Clone, Debug)]
pub(super) struct Defined {
    /// The file.
    pub(super) file: String,
    /// Marked `thinfleet.io/reconcile: disabled` in the file.
    pub(super) disabled: bool,
    /// The object as the directory last wrote it (with its status), to put it back at once when
    /// the API deletes it.
    pub(super) object: Option<Object>,
}

/// A source that defines an object (see [`Sources::defining`]).
#[derive(Clone)]
pub struct Defining {
    /// The source.
    pub source: Arc<Source>,
    /// The file that defines the object.
    pub file: String,
    /// The object as the directory last wrote it.
    pub restore: Option<Object>,
}

impl Defining {
    /// The warning of an API write that the directory will undo.
    pub fn takeover_warning(&self, reference: &str, debounce: Duration) -> String {
        format!(
            "{reference} is defined in {} of the watched directory `{}`, which takes it back at its \
             next sync (in about {} ms); change it in the file, or take it out of the directory's hands \
             by removing it from the file or annotating it `thinfleet.io/reconcile: disabled` (in the \
             file, or in what you apply with --force)",
            self.file,
            self.source.name,
            debounce.as_millis()
        )
    }

    /// The warning of an API delete or prune that the directory undid at once.
    pub fn restored_warning(&self, reference: &str) -> String {
        format!(
            "{reference} is defined in {} of the watched directory `{}`, which restored it at once so \
             its clients lose nothing; to delete it, remove it from the file",
            self.file, self.source.name
        )
    }

    /// The note of an API apply that marks a directory object as not reconciled.
    pub fn left_alone_warning(&self, reference: &str) -> String {
        format!(
            "{reference} is defined in {} of the watched directory `{}`, which leaves it alone while it \
             is annotated `thinfleet.io/reconcile: disabled`",
            self.file, self.source.name
        )
    }

    /// The writes that put the object back as the directory last wrote it, after a delete in the
    /// same transaction.
    pub fn restore_writes(&self, object: &Object) -> Vec<Write> {
        let mut applied = object.clone();
        applied.meta_mut().clear_server_fields();
        let mut writes = vec![Write::Apply {
            object: applied,
            manager: self.source.manager.clone(),
        }];
        if matches!(object, Object::PackageRelease(r) if r.status.is_some()) {
            writes.push(Write::Status {
                object: object.clone(),
            });
        }
        writes
    }

    /// The event of a restoration; counts it on the source.
    pub fn restoration_event(&self, object: &Object, why: &str, now: Timestamp) -> Event {
        self.source.drift_corrections.fetch_add(1, Ordering::SeqCst);
        Event::new(
            now,
            ObjectRef::new(object.kind(), object.name()),
            EventType::Normal,
            "DriftCorrected",
            format!(
                "re-created from {} by the watched directory `{}` ({why})",
                self.file, self.source.name
            ),
        )
    }
}

impl Source {
    /// A source for `dir` (canonicalized when possible).
    pub fn new(dir: &Path) -> Source {
        let path = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let name = source_name(&path);
        let manager = manager_for(&path);
        Source {
            state: Mutex::new(SourceState {
                status: SourceStatus {
                    name: name.clone(),
                    path: path.display().to_string(),
                    manager: manager.clone(),
                    ..Default::default()
                },
                defined: BTreeMap::new(),
            }),
            name,
            path,
            manager,
            changes: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            drift_corrections: AtomicU64::new(0),
            wake: Notify::new(),
            artifacts: Arc::default(),
        }
    }

    /// Asks for a sync soon (after the debounce): its files changed, or an API write touched one of
    /// its objects. The source reports a pending sync until one has run.
    pub fn request_sync(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The status as served.
    pub fn status(&self) -> SourceStatus {
        let mut status = self.state.lock().expect("source lock").status.clone();
        status.sync_pending =
            self.changes.load(Ordering::SeqCst) != self.synced.load(Ordering::SeqCst);
        status.drift_corrections = self.drift_corrections.load(Ordering::SeqCst);
        status
    }
}

/// The manager name for a directory.
pub fn manager_for(dir: &Path) -> String {
    format!("dir:{}", dir.display())
}

/// A source's name: the directory's base name, lower case, other characters than letters, digits,
/// `-` and `.` replaced by `-` (`manifests` for `/srv/fleet/manifests`).
pub fn source_name(dir: &Path) -> String {
    let base = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches(['-', '.']).to_string();
    if name.is_empty() {
        "manifests".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_names_are_the_directory_base_name() {
        assert_eq!(source_name(Path::new("/srv/fleet/manifests")), "manifests");
        assert_eq!(source_name(Path::new("/srv/Fleet Repo")), "fleet-repo");
        assert_eq!(source_name(Path::new("/")), "manifests");
    }
}
