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

mod files;
mod source;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tc_api::{
    Cause, Event, EventType, Kind, Object, ObjectRef, SkippedObject, SourceObject,
    SourcePendingPrune, Timestamp,
};
use tokio::sync::watch;

pub use files::{collect_files, git_head, revision};
pub use source::{Defining, Source, Sources, manager_for, source_name};

use crate::Controller;
use crate::apply::{ApplyRequest, ApplyResult, ArtifactPaths, ManifestFile};
use source::{Defined, SourceState};

/// The event subject kind of a source.
pub const SOURCE_EVENT_KIND: &str = "ManifestSource";

/// How long to wait for more file events before applying.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(300);

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
    debounce.saturating_mul(factor).min(resync)
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
    .await
    .map_err(|error| error.to_string())
    .and_then(|read| read.map_err(|error| error.to_string()));
    let (outcome, revision) = match read {
        Ok((files, revision)) => (
            apply_files(controller, source, &files).await,
            Some(revision),
        ),
        Err(error) => (
            Err((
                format!("cannot read {}: {error}", source.path.display()),
                vec![],
            )),
            None,
        ),
    };
    if let Ok(result) = &outcome {
        let shown = revision.as_ref().map(|(revision, _)| revision.as_str());
        controller
            .audit_sync(
                &source.manager,
                &source.path.display().to_string(),
                shown,
                result,
            )
            .await;
    }
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
            status.next_retry_time = Some(now.plus(delay));
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

    let drift = drift_events(source, &state.defined, result, now);
    source
        .drift_corrections
        .fetch_add(drift.len() as u64, Ordering::SeqCst);
    events.extend(drift);
    let (conflicts, skipped): (Vec<SkippedObject>, Vec<SkippedObject>) = result
        .skipped
        .iter()
        .map(|s| s.object.clone())
        .partition(|s| s.reason == "Conflict");
    events.extend(conflict_events(
        source,
        &state.status.conflicts,
        &conflicts,
        now,
    ));

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
        let Some(file) = skip.object.file.clone() else {
            continue;
        };
        let key = (skip.object.kind, skip.object.name.clone());
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
            clients: p.clients as u64,
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

/// Normal `DriftCorrected` events for the objects a sync put back: those the directory defined
/// before that had to be re-created, and those another manager had taken over.
fn drift_events(
    source: &Source,
    defined_before: &BTreeMap<(Kind, String), Defined>,
    result: &ApplyResult,
    now: Timestamp,
) -> Vec<Event> {
    let mut events = vec![];
    for item in &result.items {
        let key = (item.kind, item.name.clone());
        let restored = match (item.action, &item.existing) {
            ("created", None) if defined_before.contains_key(&key) => {
                vec!["re-created".to_string()]
            }
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
        if restored.is_empty() {
            continue;
        }
        let file = item.file.as_deref().unwrap_or_default();
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
    events
}

/// A Warning on each object in conflict, once: again only when its conflict changes.
fn conflict_events(
    source: &Source,
    before: &[SkippedObject],
    conflicts: &[SkippedObject],
    now: Timestamp,
) -> Vec<Event> {
    for old in before {
        if !conflicts
            .iter()
            .any(|c| c.kind == old.kind && c.name == old.name)
        {
            tracing::info!(source = %source.name, object = %format!("{}/{}", old.kind, old.name), "conflict resolved");
        }
    }
    let mut events = vec![];
    for conflict in conflicts {
        let known = before.iter().any(|old| {
            old.kind == conflict.kind
                && old.name == conflict.name
                && old.message == conflict.message
        });
        if known {
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
    events
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
}
