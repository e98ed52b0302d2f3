//! The watched manifest directory: applied at start and whenever its files change, through the
//! same apply path as the API, as manager `dir:<path>`, pruning what disappeared.
//!
//! A directory that becomes empty, or any file that fails to parse, never prunes anything: the
//! last good state stays, and the error is reported as a Warning event and on `/sources`. The
//! directory is also re-read every resync interval, so a change that produced no file-system event
//! (a GitOps tool swapping a symlink, a network file system) is picked up too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde::Serialize;
use tc_api::{Event, EventType, ObjectRef, Timestamp};
use tokio::sync::watch;

use crate::Controller;
use crate::apply::{ApplyRequest, ArtifactPaths, ManifestFile};
use crate::error::Cause;

/// The state of one watched directory, served on `/apis/thinfleet.io/v1/sources`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The directory.
    pub path: String,
    /// The manager its objects are applied as.
    pub manager: String,
    /// When it was last applied successfully.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_applied_time: Option<Timestamp>,
    /// Objects in the last successful apply.
    pub objects: usize,
    /// The current error, if the directory's content is not applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where the error points.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Cause>,
}

/// The manager name for a directory.
pub fn manager_for(dir: &Path) -> String {
    format!("dir:{}", dir.display())
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

/// Watches `dir` until shutdown.
pub async fn run(controller: Arc<Controller>, dir: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let (sender, mut changes) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        let _ = sender.send(());
    })
    .and_then(|mut watcher| {
        watcher
            .watch(&dir, RecursiveMode::Recursive)
            .map(|()| watcher)
    });
    let _watcher = match watcher {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot watch the manifest directory; re-reading it every resync interval only");
            None
        }
    };
    let mut last_content: Option<Vec<ManifestFile>> = None;
    let mut last_failed = false;
    loop {
        let files = collect_files(&dir);
        let unchanged = matches!((&files, &last_content), (Ok(files), Some(last)) if files == last);
        if !unchanged || last_failed {
            // A failure, or prunes deferred until no client runs a release any more, is retried at
            // the next resync even without a change.
            last_failed = !sync(
                &controller,
                &dir,
                files.as_ref().map_err(ToString::to_string),
            )
            .await;
            last_content = files.ok();
        }
        controller
            .ready
            .store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::select! {
            Some(()) = changes.recv() => {
                // Debounce: wait for the burst of events of one checkout to settle.
                while let Ok(Some(())) = tokio::time::timeout(controller.config.watch_debounce, changes.recv()).await {}
            }
            _ = tokio::time::sleep(controller.config.resync_interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Applies the directory once; returns whether it succeeded.
async fn sync(
    controller: &Arc<Controller>,
    dir: &Path,
    files: Result<&Vec<ManifestFile>, String>,
) -> bool {
    let manager = manager_for(dir);
    let outcome = match files {
        Err(error) => Err((format!("cannot read {}: {error}", dir.display()), vec![])),
        Ok(files) => {
            let documents: usize = files
                .iter()
                .map(|f| {
                    tc_api::decode::parse_documents(&f.name, &f.content, &Default::default())
                        .map_or(1, |d| d.len())
                })
                .sum();
            if documents == 0 {
                Err((
                    format!(
                        "no manifests found in {}; keeping the last applied state",
                        dir.display()
                    ),
                    vec![],
                ))
            } else {
                let request = ApplyRequest {
                    files: files.clone(),
                    manager: manager.clone(),
                    dry_run: false,
                    force: false,
                    prune: true,
                    artifact_paths: ArtifactPaths::RelativeToManifest,
                };
                controller
                    .apply(request)
                    .await
                    .map_err(|e| (e.message, e.causes))
            }
        }
    };
    let now = Timestamp::now();
    let key = dir.display().to_string();
    // The new status is shown only once its event is recorded, so whoever sees it finds the event.
    let (event, status) = {
        let sources = controller.sources.lock().expect("sources lock");
        let mut status = sources.get(&key).cloned().unwrap_or_else(|| SourceStatus {
            path: key.clone(),
            manager: manager.clone(),
            ..Default::default()
        });
        let event = match &outcome {
            Ok(result) => {
                let changed = result
                    .items
                    .iter()
                    .filter(|i| i.action != "unchanged")
                    .count();
                tracing::info!(dir = %dir.display(), objects = result.items.len(), changed, "manifest directory applied");
                status.last_applied_time = Some(now);
                status.objects = result.items.iter().filter(|i| i.action != "pruned").count();
                let recovered = status.error.take().is_some();
                status.causes.clear();
                recovered.then(|| {
                    Event::new(
                        now,
                        ObjectRef {
                            kind: "ManifestSource".into(),
                            name: status.path.clone(),
                        },
                        EventType::Normal,
                        "Applied",
                        "the manifest directory applies cleanly again",
                    )
                })
            }
            Err((message, causes)) => {
                tracing::warn!(dir = %dir.display(), error = %message, "manifest directory not applied; the last good state stays");
                let repeated = status.error.as_deref() == Some(message.as_str());
                status.error = Some(message.clone());
                status.causes = causes.clone();
                (!repeated).then(|| {
                    Event::new(
                        now,
                        ObjectRef {
                            kind: "ManifestSource".into(),
                            name: status.path.clone(),
                        },
                        EventType::Warning,
                        "ApplyFailed",
                        message.clone(),
                    )
                })
            }
        };
        (event, status)
    };
    if let Some(event) = event {
        controller.record(vec![event]).await;
    }
    controller
        .sources
        .lock()
        .expect("sources lock")
        .insert(key, status);
    matches!(&outcome, Ok(result) if result.deferred.is_empty())
}

/// How long to wait for more file events before applying.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(300);
