//! The watched manifest directory: the source of truth for the objects its files define.
//!
//! Every sync — at start, after file changes (debounced), after an API write to one of its objects,
//! and every resync interval — applies the whole directory through the one apply path, as manager
//! `dir:<path>`, *authoritatively*: objects changed or taken over through the API are put back (a
//! Normal `DriftCorrected` event on the object says what and from which file), a conflict of one
//! object skips that object only, objects marked `thinfleet.io/reconcile: disabled` are left alone,
//! and objects whose files disappeared are pruned. A directory that becomes empty, or any file that
//! fails to parse, applies nothing and prunes nothing: the last good state stays.
//!
//! The watcher reacts to changes only (create, modify, remove, rename; never to opening or reading
//! a file, which the controller's own reads would cause). A failing directory is retried with
//! exponential backoff from the debounce up to the resync interval; an error is logged and recorded
//! once, again when it changes, and a Normal event says when it clears.
//!
//! The source's status (`GET /apis/thinfleet.io/v1/sources[/NAME]`) names it by the directory's base
//! name; its events are recorded for `ManifestSource/NAME`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde::Serialize;
use tc_api::{Event, EventType, Kind, Object, ObjectRef, Timestamp};
use tc_store::Write;
use tokio::sync::{Notify, watch};

use crate::Controller;
use crate::apply::{
    ApplyRequest, ApplyResult, ArtifactCache, ArtifactPaths, ManifestFile, SkippedItem,
};
use crate::error::Cause;

/// The event subject kind of a source.
pub const SOURCE_EVENT_KIND: &str = "ManifestSource";

/// How long to wait for more file events before applying.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(300);

/// One object a source's files define.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceObject {
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// The file that defines it.
    pub file: String,
}

/// A prune of the source that waits until no client is assigned the release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourcePendingPrune {
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// Clients assigned it at the last sync.
    pub clients: usize,
}

/// The state of one watched directory, served on `/apis/thinfleet.io/v1/sources`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The source's name: the directory's base name.
    pub name: String,
    /// The directory.
    pub path: String,
    /// The manager its objects are applied as.
    pub manager: String,
    /// The revision last applied: the git commit checked out when the directory is in a git
    /// checkout, otherwise `sha256:` over the files' names and contents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The git ref checked out (`refs/heads/main`), if any.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// When it was last applied successfully.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_applied_time: Option<Timestamp>,
    /// The revision of the last attempt (differs from `revision` while the directory fails).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,
    /// When it was last read and applied, successfully or not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<Timestamp>,
    /// True while changes (of its files, or API writes to its objects) wait for a sync.
    pub sync_pending: bool,
    /// Objects applied by the last successful sync.
    pub objects: Vec<SourceObject>,
    /// Objects left alone because they are marked `thinfleet.io/reconcile: disabled`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedItem>,
    /// Objects not applied because of a conflict of their own (a changed release, a second release
    /// of one version); every other object applies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<SkippedItem>,
    /// Releases whose prune waits until no client is assigned them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending_prunes: Vec<SourcePendingPrune>,
    /// Objects put back since the controller started (re-created, content or manager restored).
    pub drift_corrections: u64,
    /// The current error, if the directory's content is not applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where the error points.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Cause>,
    /// Failed attempts in a row.
    #[serde(skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// When a failing directory is tried again (sooner if its files change).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_retry_time: Option<Timestamp>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

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
    changes: AtomicU64,
    /// The value of `changes` read before the last completed sync read the directory.
    synced: AtomicU64,
    /// Counted apart from the status, as API deletes restore objects between syncs.
    drift_corrections: AtomicU64,
    /// Wakes the sync loop.
    wake: Notify,
    state: Mutex<SourceState>,
    /// Digests of the package directories and zips its releases name.
    artifacts: Arc<ArtifactCache>,
}

#[derive(Clone, Default)]
struct SourceState {
    status: SourceStatus,
    /// What the files defined at the last sync that applied them.
    defined: BTreeMap<(Kind, String), Defined>,
}

#[derive(Clone, Debug)]
struct Defined {
    file: String,
    /// Marked `thinfleet.io/reconcile: disabled` in the file.
    disabled: bool,
    /// The object as the directory last wrote it (with its status), to put it back at once when
    /// the API deletes it.
    object: Option<Object>,
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

/// Reads every `*.yaml`, `*.yml` and `*.json` below `dir` (hidden entries skipped), sorted by path.
pub fn collect_files(dir: &Path) -> std::io::Result<Vec<ManifestFile>> {
    let mut paths = vec![];
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let file_type = std::fs::metadata(&path)?.file_type();
            if file_type.is_dir() {
                pending.push(path);
            } else if file_type.is_file()
                && path
                    .extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            {
                paths.push(path);
            }
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let content = std::fs::read_to_string(&path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            Ok(ManifestFile {
                name: path.display().to_string(),
                content,
            })
        })
        .collect()
}

/// The revision of a directory's content: the git commit checked out (with its ref) when the
/// directory is inside a git checkout, otherwise `sha256:` over the files' relative names and
/// contents.
pub fn revision(dir: &Path, files: &[ManifestFile]) -> (String, Option<String>) {
    if let Some((commit, reference)) = git_head(dir) {
        return (commit, reference);
    }
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for file in files {
        let name = Path::new(&file.name)
            .strip_prefix(dir)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| file.name.clone());
        context.update(name.as_bytes());
        context.update(&[0]);
        context.update(&(file.content.len() as u64).to_le_bytes());
        context.update(file.content.as_bytes());
    }
    let hex: String = context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (format!("sha256:{hex}"), None)
}

/// The commit checked out in the git repository that contains `dir`, and its ref (`None` for a
/// detached HEAD), read from `.git/HEAD` and the ref file or `packed-refs`. Worktrees and
/// submodules (a `.git` file naming the git directory) are followed.
pub fn git_head(dir: &Path) -> Option<(String, Option<String>)> {
    let dotgit = dir
        .ancestors()
        .map(|d| d.join(".git"))
        .find(|p| p.exists())?;
    let git_dir = if dotgit.is_file() {
        let text = std::fs::read_to_string(&dotgit).ok()?;
        let target = Path::new(text.trim().strip_prefix("gitdir:")?.trim());
        dotgit.parent()?.join(target)
    } else {
        dotgit
    };
    let common = match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(text) => git_dir.join(text.trim()),
        Err(_) => git_dir.clone(),
    };
    let is_commit = |text: &str| {
        (text.len() == 40 || text.len() == 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref:").map(str::trim) else {
        return is_commit(head).then(|| (head.to_string(), None));
    };
    if !reference.starts_with("refs/") || reference.split('/').any(|part| part == "..") {
        return None;
    }
    for base in [&git_dir, &common] {
        if let Ok(text) = std::fs::read_to_string(base.join(reference))
            && is_commit(text.trim())
        {
            return Some((text.trim().to_string(), Some(reference.to_string())));
        }
    }
    let packed = std::fs::read_to_string(common.join("packed-refs")).ok()?;
    packed.lines().find_map(|line| {
        let (commit, name) = line.split_once(' ')?;
        (name.trim() == reference && is_commit(commit))
            .then(|| (commit.to_string(), Some(reference.to_string())))
    })
}

/// True for file events that can change what the directory defines: creations, modifications,
/// removals and renames (and a file closed after writing). Opening, reading and closing a file
/// without writing are not changes — the controller's own reads cause them. Events only inside a
/// `.git` directory are git's bookkeeping; the working tree's own events carry the news.
pub fn is_change(event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
    let relevant = match event.kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        // Unknown kinds, and rescans after lost events: read the directory again to be sure.
        EventKind::Any | EventKind::Other => true,
    };
    let only_git = !event.paths.is_empty()
        && event
            .paths
            .iter()
            .all(|path| path.components().any(|c| c.as_os_str() == ".git"));
    relevant && !only_git
}

/// How long a directory that failed `failures` times in a row waits before the next attempt: the
/// debounce, doubling with each failure, at most the resync interval.
pub fn retry_delay(failures: u32, debounce: Duration, resync: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(20);
    debounce
        .saturating_mul(factor)
        .min(resync)
        .max(debounce.min(resync))
}

/// Watches `dir` until shutdown.
pub async fn run(controller: Arc<Controller>, dir: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let source = Arc::new(Source::new(&dir));
    controller.sources.register(source.clone());
    let notified = source.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Errors (a queue overflow) may hide changes: read the directory again.
        if event.as_ref().map_or(true, is_change) {
            notified.request_sync();
        }
    })
    .and_then(|mut watcher| {
        watcher
            .watch(&source.path, RecursiveMode::Recursive)
            .map(|()| watcher)
    });
    let _watcher = match watcher {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(dir = %source.path.display(), %error, "cannot watch the manifest directory; re-reading it every resync interval only");
            None
        }
    };
    let debounce = controller.config.watch_debounce;
    let resync = controller.config.resync_interval;
    loop {
        let wait = sync(&controller, &source).await.unwrap_or(resync);
        controller
            .ready
            .store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::select! {
            () = source.wake.notified() => {
                // Debounce: wait for the burst of events of one checkout to settle.
                while tokio::time::timeout(debounce, source.wake.notified()).await.is_ok() {}
            }
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// What one sync did.
type Outcome = Result<ApplyResult, (String, Vec<Cause>)>;

/// Reads and applies the directory once. Returns the delay before a retry when it failed.
async fn sync(controller: &Arc<Controller>, source: &Arc<Source>) -> Option<Duration> {
    let seen = source.changes.load(Ordering::SeqCst);
    let dir = source.path.clone();
    let read = tokio::task::spawn_blocking(move || {
        collect_files(&dir).map(|files| {
            let revision = revision(&dir, &files);
            (files, revision)
        })
    })
    .await;
    let (outcome, revision) = match read {
        Ok(Ok((files, revision))) => (
            apply_files(controller, source, &files).await,
            Some(revision),
        ),
        Ok(Err(error)) => (
            Err((
                format!("cannot read {}: {error}", source.path.display()),
                vec![],
            )),
            None,
        ),
        Err(error) => (
            Err((
                format!("cannot read {}: {error}", source.path.display()),
                vec![],
            )),
            None,
        ),
    };
    let now = Timestamp::now();
    // Only this loop writes the state; the new state is served once its events are recorded, so
    // whoever sees it finds the events.
    let mut state = source.state.lock().expect("source lock").clone();
    let (events, retry) = update_state(controller, source, &mut state, &outcome, revision, now);
    controller.record(events).await;
    *source.state.lock().expect("source lock") = state;
    source.synced.store(seen, Ordering::SeqCst);
    retry
}

async fn apply_files(
    controller: &Arc<Controller>,
    source: &Source,
    files: &[ManifestFile],
) -> Outcome {
    let documents: usize = files
        .iter()
        .map(|f| {
            tc_api::decode::parse_documents(&f.name, &f.content, &Default::default())
                .map_or(1, |d| d.len())
        })
        .sum();
    if documents == 0 {
        return Err((
            format!(
                "no manifests found in {}; keeping the last applied state",
                source.path.display()
            ),
            vec![],
        ));
    }
    let request = ApplyRequest {
        files: files.to_vec(),
        manager: source.manager.clone(),
        dry_run: false,
        force: false,
        prune: true,
        artifact_paths: ArtifactPaths::RelativeToManifest,
        authoritative: true,
        artifact_cache: Some(source.artifacts.clone()),
    };
    controller
        .apply(request)
        .await
        .map_err(|e| (e.message, e.causes))
}

/// Updates the source's state from a sync's outcome; returns the events to record and, for a
/// failure, the delay before the next attempt.
fn update_state(
    controller: &Controller,
    source: &Source,
    state: &mut SourceState,
    outcome: &Outcome,
    revision: Option<(String, Option<String>)>,
    now: Timestamp,
) -> (Vec<Event>, Option<Duration>) {
    let source_ref = ObjectRef {
        kind: SOURCE_EVENT_KIND.into(),
        name: source.name.clone(),
    };
    let mut events = vec![];
    let status = &mut state.status;
    status.last_attempt_time = Some(now);
    status.last_attempted_revision = revision.as_ref().map(|r| r.0.clone());
    let result = match outcome {
        Err((message, causes)) => {
            status.failures = status.failures.saturating_add(1);
            let delay = retry_delay(
                status.failures,
                controller.config.watch_debounce,
                controller.config.resync_interval,
            );
            status.next_retry_time = Some(Timestamp::from_unix_millis(
                now.unix_millis() + delay.as_millis() as u64,
            ));
            if status.error.as_deref() != Some(message.as_str()) {
                tracing::warn!(source = %source.name, dir = %source.path.display(), error = %message, "manifest directory not applied; the last good state stays (retried with backoff)");
                events.push(Event::new(
                    now,
                    source_ref,
                    EventType::Warning,
                    "ApplyFailed",
                    message.clone(),
                ));
            }
            status.error = Some(message.clone());
            status.causes = causes.clone();
            return (events, Some(delay));
        }
        Ok(result) => result,
    };
    if status.error.take().is_some() {
        tracing::info!(source = %source.name, "manifest directory applies cleanly again");
        events.push(Event::new(
            now,
            source_ref.clone(),
            EventType::Normal,
            "Applied",
            "the manifest directory applies cleanly again",
        ));
    }
    status.causes.clear();
    status.failures = 0;
    status.next_retry_time = None;
    status.last_applied_time = Some(now);
    if let Some((commit, reference)) = revision {
        status.revision = Some(commit);
        status.git_ref = reference;
    }

    // Drift: objects the directory defined before that had to be re-created, or that another
    // manager had taken over.
    let mut corrections = 0;
    for item in &result.items {
        let key = (item.kind, item.name.clone());
        let file = item.file.clone().unwrap_or_default();
        let restored = match (item.action, &item.existing) {
            ("created", None) if state.defined.contains_key(&key) => vec!["re-created".to_string()],
            ("configured", Some(existing)) => match existing.meta().managed_by.as_deref() {
                Some(other) if other != source.manager => {
                    let mut parts = changed_parts(existing, &item.object);
                    parts.push(format!("manager taken back from `{other}`"));
                    parts
                }
                _ => vec![],
            },
            _ => vec![],
        };
        if !restored.is_empty() {
            corrections += 1;
            let message = format!("restored from {file}: {}", restored.join(", "));
            tracing::info!(source = %source.name, object = %item.object.reference(), %message, "drift corrected");
            events.push(Event::new(
                now,
                ObjectRef::new(item.kind, &item.name),
                EventType::Normal,
                "DriftCorrected",
                message,
            ));
        }
    }
    source
        .drift_corrections
        .fetch_add(corrections, Ordering::SeqCst);

    // Conflicts: a Warning on the object once, again when it changes.
    let previous: BTreeSet<(Kind, String, String)> = status
        .conflicts
        .iter()
        .map(|c| (c.kind, c.name.clone(), c.message.clone()))
        .collect();
    let (conflicts, skipped): (Vec<SkippedItem>, Vec<SkippedItem>) = result
        .skipped
        .iter()
        .cloned()
        .partition(|s| s.reason == "Conflict");
    for conflict in &conflicts {
        if previous.contains(&(
            conflict.kind,
            conflict.name.clone(),
            conflict.message.clone(),
        )) {
            continue;
        }
        let place = format!(
            "{}:{}:{}",
            conflict.file.as_deref().unwrap_or("-"),
            conflict.line.unwrap_or(0),
            conflict.column.unwrap_or(0)
        );
        tracing::warn!(source = %source.name, object = %format!("{}/{}", conflict.kind, conflict.name), at = %place, error = %conflict.message, "object not applied; the directory's other objects are");
        events.push(Event::new(
            now,
            ObjectRef::new(conflict.kind, &conflict.name),
            EventType::Warning,
            "SyncConflict",
            format!(
                "{place}: {}; the watched directory `{}` applies its other objects",
                conflict.message, source.name
            ),
        ));
    }

    // What the files define now, for the next sync and for API writes.
    let mut defined = BTreeMap::new();
    for item in result.items.iter().filter(|i| i.action != "pruned") {
        defined.insert(
            (item.kind, item.name.clone()),
            Defined {
                file: item.file.clone().unwrap_or_default(),
                disabled: false,
                object: Some(item.object.clone()),
            },
        );
    }
    for skip in &result.skipped {
        let Some(file) = skip.file.clone() else {
            continue;
        };
        let key = (skip.kind, skip.name.clone());
        let previous = state.defined.get(&key).and_then(|d| d.object.clone());
        defined.insert(
            key,
            Defined {
                file,
                disabled: skip.disabled_in_file,
                object: previous,
            },
        );
    }
    state.defined = defined;
    let status = &mut state.status;
    status.objects = result
        .items
        .iter()
        .filter(|i| i.action != "pruned")
        .map(|i| SourceObject {
            kind: i.kind,
            name: i.name.clone(),
            file: i.file.clone().unwrap_or_default(),
        })
        .collect();
    status.skipped = skipped;
    status.conflicts = conflicts;
    status.pending_prunes = result
        .pending_prunes
        .iter()
        .map(|p| SourcePendingPrune {
            kind: p.kind,
            name: p.name.clone(),
            clients: p.clients,
        })
        .collect();

    let changed: Vec<String> = result
        .items
        .iter()
        .filter(|i| i.action != "unchanged")
        .map(|i| format!("{} {}", i.object.reference(), i.action))
        .collect();
    if changed.is_empty() {
        tracing::debug!(source = %source.name, objects = result.items.len(), "manifest directory in sync");
    } else {
        tracing::info!(source = %source.name, objects = result.items.len(), changed = changed.len(), "manifest directory applied");
        const LISTED: usize = 10;
        let mut message = format!(
            "applied {}: {}",
            status.revision.as_deref().unwrap_or("?"),
            changed[..changed.len().min(LISTED)].join(", ")
        );
        if changed.len() > LISTED {
            message.push_str(&format!(" and {} more", changed.len() - LISTED));
        }
        events.push(Event::new(
            now,
            source_ref,
            EventType::Normal,
            "Synced",
            message,
        ));
    }
    (events, None)
}

/// Which of spec, labels and annotations differ between two versions of an object.
fn changed_parts(before: &Object, after: &Object) -> Vec<String> {
    let mut parts = vec![];
    if before.spec_json() != after.spec_json() {
        parts.push("spec".to_string());
    }
    if before.meta().labels != after.meta().labels {
        parts.push("labels".to_string());
    }
    if before.meta().annotations != after.meta().annotations {
        parts.push("annotations".to_string());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::EventKind;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind,
        RenameMode,
    };

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    /// The bug: the watcher woke on the controller's own reads of the directory (open and
    /// close-nowrite events), so it re-applied about three times a second forever.
    #[test]
    fn reading_the_directory_is_not_a_change() {
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Close(AccessMode::Any)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
        ] {
            assert!(!is_change(&event(kind, "/m/a.yaml")), "{kind:?}");
        }
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Permissions)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ] {
            assert!(is_change(&event(kind, "/m/a.yaml")), "{kind:?}");
        }
        let git = event(EventKind::Create(CreateKind::File), "/m/.git/objects/ab/cd");
        assert!(!is_change(&git));
    }

    #[test]
    fn retries_back_off_from_the_debounce_to_the_resync_interval() {
        let ms = Duration::from_millis;
        let delays: Vec<Duration> = (1..=8)
            .map(|failures| retry_delay(failures, ms(300), ms(30_000)))
            .collect();
        assert_eq!(
            delays,
            [300, 600, 1200, 2400, 4800, 9600, 19_200, 30_000].map(ms)
        );
        assert_eq!(retry_delay(u32::MAX, ms(300), ms(30_000)), ms(30_000));
        // A resync interval shorter than the debounce caps everything.
        assert_eq!(retry_delay(1, ms(300), ms(100)), ms(100));
    }

    #[test]
    fn source_names_are_the_directory_base_name() {
        assert_eq!(source_name(Path::new("/srv/fleet/manifests")), "manifests");
        assert_eq!(source_name(Path::new("/srv/Fleet Repo")), "fleet-repo");
        assert_eq!(source_name(Path::new("/")), "manifests");
    }

    #[test]
    fn the_revision_is_the_checked_out_commit_or_a_content_digest() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("repo/manifests");
        std::fs::create_dir_all(&dir).unwrap();
        let files = vec![ManifestFile {
            name: dir.join("a.yaml").display().to_string(),
            content: "x: 1\n".into(),
        }];
        let (digest, reference) = revision(&dir, &files);
        assert!(
            digest.starts_with("sha256:") && reference.is_none(),
            "{digest}"
        );
        let renamed = vec![ManifestFile {
            name: dir.join("b.yaml").display().to_string(),
            content: "x: 1\n".into(),
        }];
        assert_ne!(revision(&dir, &renamed).0, digest, "names count");

        let git = root.path().join("repo/.git");
        std::fs::create_dir_all(git.join("refs/heads")).unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(
            git.join("packed-refs"),
            format!("# pack-refs with: peeled\n{commit} refs/heads/main\n"),
        )
        .unwrap();
        assert_eq!(
            revision(&dir, &files),
            (commit.to_string(), Some("refs/heads/main".to_string()))
        );
        let newer = "fedcba9876543210fedcba9876543210fedcba98";
        std::fs::write(git.join("refs/heads/main"), format!("{newer}\n")).unwrap();
        assert_eq!(revision(&dir, &files).0, newer, "loose refs win");
        std::fs::write(git.join("HEAD"), format!("{commit}\n")).unwrap();
        assert_eq!(revision(&dir, &files), (commit.to_string(), None));
    }
}
