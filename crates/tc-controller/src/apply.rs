//! The one apply path. The API's `POST .../apply` and the watched directory both come here, so they
//! validate, plan and write the same way.
//!
//! An API apply is atomic: one bad document or one refused object and nothing is written. The
//! watched directory's apply is authoritative (see [`tc_reconcile::PlanOptions::authoritative`]):
//! it takes back the objects its files define, and a conflict of one object skips that object only.
//!
//! A prune of a release still assigned to clients is deferred: the release is marked with a
//! `PrunePending` condition and deleted by [`run_pending_prunes`] once no client is assigned it,
//! whoever applied the prune. Applying the release again cancels it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;
use serde::Serialize;
use tc_api::meta::{find_condition, set_condition};
use tc_api::{
    ArtifactStatus, Condition, ConditionStatus, Event, EventType, Kind, Object, ObjectRef,
    PackageReleaseStatus, SourcedObject, Timestamp,
};
use tc_reconcile::plan::{
    Action, PlanError, PlanOptions, SkipReason, Skipped, plan, reconcile_disabled,
};
use tc_store::{Write, WriteOutcome};
use tokio::sync::watch;

use crate::Controller;
use crate::blobs::BlobStore;
use crate::error::{ApiError, Cause};

/// The condition type of a release whose prune waits until no client is assigned it.
pub const PRUNE_PENDING: &str = "PrunePending";

/// A manifest file to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    /// Its name, used in errors (and, for the watched directory, its path).
    pub name: String,
    /// Its text.
    pub content: String,
}

/// Where artifact paths may be read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactPaths {
    /// Only blobs already uploaded (API requests): `path` needs `sha256` of a stored blob. A dry run
    /// accepts a `sha256` that is not uploaded yet (and says so), so `tcadm diff` uploads nothing.
    UploadedOnly,
    /// Paths relative to each manifest file on the controller's disk (the watched directory).
    RelativeToManifest,
}

/// An apply request.
#[derive(Clone, Debug)]
pub struct ApplyRequest {
    /// The manifests.
    pub files: Vec<ManifestFile>,
    /// Who applies (`tcadm`, `dir:/srv/manifests`).
    pub manager: String,
    /// Validate and report only.
    pub dry_run: bool,
    /// Take over objects of other managers.
    pub force: bool,
    /// Delete this manager's objects that are absent.
    pub prune: bool,
    /// How artifact paths are treated.
    pub artifact_paths: ArtifactPaths,
    /// The apply of a source of truth (the watched directory); see
    /// [`tc_reconcile::PlanOptions::authoritative`].
    pub authoritative: bool,
    /// Digests of artifact files and package directories imported before, so that re-applying an
    /// unchanged directory at every resync does not read and pack every package again.
    pub artifact_cache: Option<Arc<ArtifactCache>>,
}

/// What happened to one object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AppliedItem {
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// `created`, `configured`, `unchanged`, `pruned`.
    pub action: &'static str,
    /// The object as stored (or as it would be, in a dry run).
    pub object: Object,
    /// The object before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existing: Option<Object>,
    /// The manifest file that defines it (absent for pruned objects).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// A prune that waits until no client is assigned the release.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingPrune {
    /// Always `PackageRelease`.
    pub kind: Kind,
    /// The release.
    pub name: String,
    /// Clients assigned it now.
    pub clients: usize,
    /// The release as stored.
    pub object: Object,
}

/// An object an authoritative apply left alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedItem {
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// `ReconcileDisabled` or `Conflict`.
    pub reason: &'static str,
    /// A sentence for people.
    pub message: String,
    /// Where the object is defined (absent for a stored object no file defines any more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Line of its document, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// Column of its document, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// For `ReconcileDisabled`: the annotation is in the file (not only on the stored object).
    #[serde(skip)]
    pub disabled_in_file: bool,
}

/// The result of an apply.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    /// Always `ApplyResult`.
    pub kind: &'static str,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// One item per object.
    pub items: Vec<AppliedItem>,
    /// Prunes that wait until no client is assigned the release any more, one sentence each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<String>,
    /// The same prunes, with the releases.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending_prunes: Vec<PendingPrune>,
    /// Objects an authoritative apply left alone (never for API applies, which refuse instead).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedItem>,
    /// What the caller should know: an object the watched directory takes back, an artifact a dry
    /// run found not uploaded yet.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Artifact digests by path, valid while the path's fingerprint (sizes, times, inodes and names
/// of everything below it) stays the same.
#[derive(Debug, Default)]
pub struct ArtifactCache {
    entries: Mutex<HashMap<PathBuf, (u64, ArtifactStatus)>>,
}

impl ArtifactCache {
    fn get(&self, path: &Path, fingerprint: u64) -> Option<ArtifactStatus> {
        let entries = self.entries.lock().expect("artifact cache lock");
        entries
            .get(path)
            .filter(|(known, _)| *known == fingerprint)
            .map(|(_, status)| status.clone())
    }

    fn insert(&self, path: PathBuf, fingerprint: u64, status: ArtifactStatus) {
        self.entries
            .lock()
            .expect("artifact cache lock")
            .insert(path, (fingerprint, status));
    }
}

/// A fingerprint of a file or of a directory tree: names, types, sizes, modes, inodes and
/// modification and change times. Any write changes the change time, so a digest cached under a
/// fingerprint stays valid while the fingerprint does.
fn fingerprint(path: &Path) -> std::io::Result<u64> {
    use std::hash::{Hash, Hasher};
    fn visit(path: &Path, hasher: &mut std::hash::DefaultHasher) -> std::io::Result<()> {
        let metadata = std::fs::metadata(path)?;
        metadata.len().hash(hasher);
        metadata.is_dir().hash(hasher);
        metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .hash(hasher);
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            (
                metadata.ino(),
                metadata.mode(),
                metadata.ctime(),
                metadata.ctime_nsec(),
            )
                .hash(hasher);
        }
        if metadata.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
                .map(|entry| entry.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            entries.sort();
            for entry in entries {
                entry.file_name().hash(hasher);
                visit(&entry, hasher)?;
            }
        }
        Ok(())
    }
    let mut hasher = std::hash::DefaultHasher::new();
    visit(path, &mut hasher)?;
    Ok(hasher.finish())
}

/// Artifacts resolved for an apply.
#[derive(Default)]
struct Resolved {
    /// Release name -> artifact in the blob store.
    artifacts: BTreeMap<String, ArtifactStatus>,
    /// Release name -> incoming sha256, also where the blob is not stored yet (dry run).
    digests: BTreeMap<String, String>,
    /// Artifacts a dry run accepted without their blob.
    warnings: Vec<String>,
}

/// What to write for one planned item, so outcomes can be matched back to items.
enum Role {
    /// The object write of item `n`.
    Object(usize),
    /// The status write of item `n`.
    Status(usize),
    /// The status write marking a pending prune.
    PendingPrune(usize),
    /// A directory object written back after the API pruned it.
    Restore,
}

impl Controller {
    /// Applies manifests: decode, import artifacts, plan, write in one transaction, record events.
    pub async fn apply(self: &Arc<Self>, request: ApplyRequest) -> Result<ApplyResult, ApiError> {
        let started = Instant::now();
        let result = self.apply_inner(&request).await;
        let label = match (&result, request.dry_run) {
            (Err(_), _) => "error",
            (Ok(_), true) => "dry_run",
            (Ok(_), false) => "ok",
        };
        self.metrics.apply(label, started.elapsed().as_secs_f64());
        result
    }

    async fn apply_inner(
        self: &Arc<Self>,
        request: &ApplyRequest,
    ) -> Result<ApplyResult, ApiError> {
        let mut decoded: Vec<SourcedObject> = vec![];
        let mut causes = vec![];
        for file in &request.files {
            match tc_api::decode_objects(&file.name, &file.content) {
                Ok(objects) => decoded.extend(objects),
                Err(error) => causes.push(Cause::from(&error)),
            }
        }
        if !causes.is_empty() {
            let message = causes
                .iter()
                .map(|c| {
                    format!(
                        "{}:{}:{}: {}{}",
                        c.file.as_deref().unwrap_or("-"),
                        c.line.unwrap_or(0),
                        c.column.unwrap_or(0),
                        c.field
                            .as_deref()
                            .map(|f| format!("{f}: "))
                            .unwrap_or_default(),
                        c.message
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            return Err(ApiError::bad_request(message).with_causes(causes));
        }
        for sourced in &mut decoded {
            sourced.object.clear_status();
        }

        let _guard = self.apply_lock.lock().await;
        let now = Timestamp::now();
        let resolved = self.resolve_artifacts(&decoded, request).await?;
        let artifacts = &resolved.artifacts;
        let incoming: Vec<Object> = decoded.iter().map(|s| s.object.clone()).collect();
        let store = self.store.clone();
        let existing = tokio::task::spawn_blocking(move || -> tc_store::Result<Vec<Object>> {
            let mut all = store.list(Kind::ClientGroup)?;
            all.extend(store.list(Kind::PackageRelease)?);
            Ok(all)
        })
        .await??;
        let options = PlanOptions {
            prune: request.prune,
            force: request.force,
            authoritative: request.authoritative,
        };
        let mut planned = plan(
            &existing,
            &incoming,
            &request.manager,
            &options,
            &resolved.digests,
        )
        .map_err(|errors| plan_error(&errors, &decoded))?;
        let skipped: Vec<SkippedItem> = planned
            .skipped
            .iter()
            .map(|s| skipped_item(s, &decoded))
            .collect();
        // A release still assigned to clients is not pruned yet: the rest of the apply (typically
        // the group change that stops assigning it) goes ahead, and the prune waits.
        let mut pending_prunes = vec![];
        planned.items.retain(|item| {
            let Object::PackageRelease(release) = &item.object else {
                return true;
            };
            if item.action != Action::Prune {
                return true;
            }
            match self.release_users(&release.spec.package, &release.spec.version) {
                Some(clients) => {
                    pending_prunes.push(PendingPrune {
                        kind: Kind::PackageRelease,
                        name: release.metadata.name.clone(),
                        clients,
                        object: item.object.clone(),
                    });
                    false
                }
                None => true,
            }
        });
        let deferred: Vec<String> = pending_prunes
            .iter()
            .map(|p| {
                format!(
                    "packagerelease/{} is still assigned to {} client(s); it is pruned once none runs it",
                    p.name, p.clients
                )
            })
            .collect();
        let mut warnings = resolved.warnings.clone();
        // Objects the watched directory defines, touched by an API apply: the directory takes them
        // back (a prune is undone in the same transaction, so their clients lose nothing).
        let mut wake = vec![];
        let mut restores = vec![];
        if !request.authoritative {
            for item in &planned.items {
                if item.action == Action::Unchanged {
                    continue;
                }
                let Some(defining) = self
                    .sources
                    .defining(item.object.kind(), item.object.name())
                else {
                    continue;
                };
                let reference = item.object.reference();
                if item.action == Action::Prune {
                    if item.existing.as_ref().is_some_and(reconcile_disabled) {
                        continue;
                    }
                    if let Some(restore) = defining.restore.clone() {
                        warnings.push(defining.restored_warning(&reference));
                        restores.push((defining, restore));
                        continue;
                    }
                } else if reconcile_disabled(&item.object) {
                    warnings.push(defining.left_alone_warning(&reference));
                    continue;
                }
                warnings.push(defining.takeover_warning(&reference, self.config.watch_debounce));
                wake.push(defining);
            }
        }

        if request.dry_run {
            let items = planned
                .items
                .into_iter()
                .map(|item| {
                    let mut object = item.object;
                    if item.action != Action::Prune {
                        object.meta_mut().managed_by = Some(request.manager.clone());
                    }
                    AppliedItem {
                        kind: object.kind(),
                        name: object.name().to_string(),
                        action: item.action.past_tense(),
                        file: file_of(&decoded, &object, item.action),
                        object,
                        existing: item.existing,
                    }
                })
                .collect();
            return Ok(ApplyResult {
                kind: "ApplyResult",
                dry_run: true,
                items,
                deferred,
                pending_prunes,
                skipped,
                warnings,
            });
        }

        let mut writes = vec![];
        let mut roles = vec![];
        for (index, item) in planned.items.iter().enumerate() {
            match item.action {
                Action::Prune => {
                    writes.push(Write::Delete {
                        kind: item.object.kind(),
                        name: item.object.name().to_string(),
                        // Applies hold the apply lock; only status writes of the reconcile loop
                        // can have touched the object since it was planned, and they must not fail
                        // a prune.
                        precondition: None,
                    });
                    roles.push(Role::Object(index));
                }
                Action::Create | Action::Configure | Action::Unchanged => {
                    // An unchanged object needs no write, unless its resourceVersion is a
                    // precondition to check.
                    if item.action != Action::Unchanged
                        || item.object.meta().resource_version.is_some()
                    {
                        writes.push(Write::Apply {
                            object: item.object.clone(),
                            manager: request.manager.clone(),
                        });
                        roles.push(Role::Object(index));
                    }
                    if let Some(object) = applied_release_status(item, artifacts, now) {
                        writes.push(Write::Status { object });
                        roles.push(Role::Status(index));
                    }
                }
            }
        }
        let mut newly_pending = vec![];
        for (index, pending) in pending_prunes.iter().enumerate() {
            if let Some(object) = pending_prune_status(&pending.object, &request.manager, now) {
                writes.push(Write::Status { object });
                roles.push(Role::PendingPrune(index));
                newly_pending.push(index);
            }
        }
        for (defining, restore) in &restores {
            let restoring = defining.restore_writes(restore);
            roles.extend(restoring.iter().map(|_| Role::Restore));
            writes.extend(restoring);
        }
        let outcomes = if writes.is_empty() {
            vec![]
        } else {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.write(writes, now)).await??
        };
        let mut stored: Vec<Option<Object>> = vec![None; planned.items.len()];
        for (role, outcome) in roles.iter().zip(outcomes) {
            let object = match outcome {
                WriteOutcome::Created(o)
                | WriteOutcome::Configured(o)
                | WriteOutcome::Unchanged(o)
                | WriteOutcome::Deleted(o) => o,
                WriteOutcome::Missing => continue,
            };
            match role {
                Role::Object(index) | Role::Status(index) => stored[*index] = Some(object),
                Role::PendingPrune(index) => pending_prunes[*index].object = object,
                Role::Restore => {}
            }
        }
        let mut items = vec![];
        let mut events = vec![];
        for (item, stored) in planned.items.into_iter().zip(stored) {
            let stored = stored
                .or_else(|| item.existing.clone())
                .unwrap_or_else(|| item.object.clone());
            if item.action != Action::Unchanged {
                events.push(Event::new(
                    now,
                    ObjectRef::new(item.object.kind(), item.object.name()),
                    EventType::Normal,
                    match item.action {
                        Action::Create => "Created",
                        Action::Configure => "Configured",
                        Action::Prune => "Pruned",
                        Action::Unchanged => "Unchanged",
                    },
                    format!("{} by {}", item.action.past_tense(), request.manager),
                ));
            }
            items.push(AppliedItem {
                kind: stored.kind(),
                name: stored.name().to_string(),
                action: item.action.past_tense(),
                file: file_of(&decoded, &stored, item.action),
                object: stored,
                existing: item.existing,
            });
        }
        for index in newly_pending {
            let pending = &pending_prunes[index];
            events.push(Event::new(
                now,
                ObjectRef::new(pending.kind, &pending.name),
                EventType::Normal,
                "PrunePending",
                format!(
                    "{} prunes it once no client is assigned it ({} are now)",
                    request.manager, pending.clients
                ),
            ));
        }
        for (defining, restore) in &restores {
            events.push(defining.restoration_event(restore, "pruned through the API", now));
        }
        drop(_guard);
        self.record(events).await;
        self.reconcile_wake.notify_one();
        for defining in wake {
            defining.source.request_sync();
        }
        Ok(ApplyResult {
            kind: "ApplyResult",
            dry_run: false,
            items,
            deferred,
            pending_prunes,
            skipped,
            warnings,
        })
    }

    /// Imports (or, in a dry run, only checks) the artifact of every release.
    async fn resolve_artifacts(
        &self,
        decoded: &[SourcedObject],
        request: &ApplyRequest,
    ) -> Result<Resolved, ApiError> {
        let mut resolved = Resolved::default();
        for sourced in decoded {
            let Object::PackageRelease(release) = &sourced.object else {
                continue;
            };
            let artifact = &release.spec.artifact;
            let name = &release.metadata.name;
            let fail = |message: String| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("{}: packagerelease/{name}: {message}", sourced.file),
                )
                .with_causes(vec![Cause {
                    file: Some(sourced.file.clone()),
                    line: Some(sourced.position.line),
                    column: Some(sourced.position.column),
                    field: Some("spec.artifact".into()),
                    message,
                }])
            };
            let declared = artifact.sha256.as_deref();
            // A blob already in the store satisfies any source.
            if let Some(sha) = declared
                && let Some(size) = self.blobs.stat(sha).await
            {
                resolved.insert(name, sha.to_string(), size);
                continue;
            }
            let info = match (&artifact.path, &artifact.url, &request.artifact_paths) {
                (Some(path), _, ArtifactPaths::RelativeToManifest) => {
                    let full = resolve_relative(&sourced.file, path);
                    let print = match &request.artifact_cache {
                        Some(_) => {
                            let path = full.clone();
                            tokio::task::spawn_blocking(move || fingerprint(&path).ok()).await?
                        }
                        None => None,
                    };
                    if let Some(status) =
                        self.cached_artifact(request, &full, print, declared).await
                    {
                        resolved.insert(name, status.sha256, status.size);
                        continue;
                    }
                    let info = if full.is_dir() {
                        // A package source directory: packed reproducibly, so its sha256 is stable.
                        let dir = full.clone();
                        let bytes = tokio::task::spawn_blocking(move || tc_pack::pack_dir(&dir))
                            .await?
                            .map_err(|e| fail(format!("packing {}: {e}", full.display())))?;
                        self.blobs.put_bytes(bytes, declared, request.dry_run).await
                    } else if request.dry_run {
                        BlobStore::digest_file(&full).await
                    } else {
                        self.blobs.put_file(&full, declared).await
                    }
                    .map_err(|e| fail(format!("artifact {}: {e}", full.display())))?;
                    if let (Some(cache), Some(print), false) =
                        (&request.artifact_cache, print, request.dry_run)
                    {
                        cache.insert(
                            full,
                            print,
                            ArtifactStatus {
                                sha256: info.sha256.clone(),
                                size: info.size,
                            },
                        );
                    }
                    info
                }
                (Some(_), _, ArtifactPaths::UploadedOnly)
                    if request.dry_run && declared.is_some() =>
                {
                    // `tcadm diff` and `apply --dry-run` hash local zips without uploading them.
                    let sha = declared.unwrap_or_default();
                    resolved.digests.insert(name.clone(), sha.to_string());
                    resolved.warnings.push(format!(
                        "packagerelease/{name}: blob sha256:{sha} is not on the controller yet; \
                         applying uploads it first"
                    ));
                    continue;
                }
                (Some(path), _, ArtifactPaths::UploadedOnly) => {
                    return Err(fail(format!(
                        "artifact.path `{path}` is not on the controller: upload the zip first (`tcadm apply` does this, \
                         or `tcadm push FILE`) and give its sha256"
                    )));
                }
                (None, Some(url), _) => {
                    if request.dry_run {
                        continue;
                    }
                    self.fetch_url(url, declared)
                        .await
                        .map_err(|e| fail(format!("fetching {url}: {e}")))?
                }
                (None, None, _) => {
                    return Err(fail(format!(
                        "blob sha256:{} is not in the blob store; upload it with `tcadm push` or PUT /blobs",
                        declared.unwrap_or("?")
                    )));
                }
            };
            resolved.insert(name, info.sha256, info.size);
        }
        Ok(resolved)
    }

    /// The artifact imported before from `path`, if the path is unchanged since and its blob is
    /// still stored.
    async fn cached_artifact(
        &self,
        request: &ApplyRequest,
        path: &Path,
        print: Option<u64>,
        declared: Option<&str>,
    ) -> Option<ArtifactStatus> {
        let status = request.artifact_cache.as_ref()?.get(path, print?)?;
        if declared.is_some_and(|d| d != status.sha256) {
            return None;
        }
        self.blobs.stat(&status.sha256).await?;
        Some(status)
    }

    async fn fetch_url(
        &self,
        url: &str,
        expected: Option<&str>,
    ) -> Result<crate::blobs::BlobInfo, String> {
        let response = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let stream = response.bytes_stream();
        self.blobs
            .put_stream(stream, expected)
            .await
            .map_err(|e| e.to_string())
    }

    /// How many clients are assigned this package version, if any.
    pub fn release_users(&self, package: &str, version: &str) -> Option<usize> {
        let count = self
            .fleet
            .slots()
            .into_iter()
            .filter(|slot| {
                let state = slot.state.lock().expect("client lock");
                state
                    .status
                    .desired
                    .iter()
                    .any(|p| p.name == package && p.version == version)
            })
            .count();
        (count > 0).then_some(count)
    }

    /// Deletes every release whose prune is pending and that no client is assigned any more.
    /// Returns the names pruned.
    pub async fn prune_pending_releases(&self) -> Result<Vec<String>, ApiError> {
        let _guard = self.apply_lock.lock().await;
        let store = self.store.clone();
        let releases =
            tokio::task::spawn_blocking(move || store.list(Kind::PackageRelease)).await??;
        let mut writes = vec![];
        let mut events = vec![];
        let now = Timestamp::now();
        for object in releases {
            let Object::PackageRelease(release) = &object else {
                continue;
            };
            let pending = release
                .status
                .as_ref()
                .and_then(|s| find_condition(&s.conditions, PRUNE_PENDING))
                .is_some_and(|c| c.status == ConditionStatus::True);
            if !pending
                || self
                    .release_users(&release.spec.package, &release.spec.version)
                    .is_some()
            {
                continue;
            }
            let manager = release.metadata.managed_by.clone().unwrap_or_default();
            writes.push(Write::Delete {
                kind: Kind::PackageRelease,
                name: release.metadata.name.clone(),
                precondition: None,
            });
            events.push(Event::new(
                now,
                ObjectRef::new(Kind::PackageRelease, &release.metadata.name),
                EventType::Normal,
                "Pruned",
                format!("pruned by {manager} once no client was assigned it any more"),
            ));
        }
        if writes.is_empty() {
            return Ok(vec![]);
        }
        let store = self.store.clone();
        let outcomes = tokio::task::spawn_blocking(move || store.write(writes, now)).await??;
        drop(_guard);
        let pruned = outcomes
            .into_iter()
            .filter_map(|outcome| match outcome {
                WriteOutcome::Deleted(object) => Some(object.name().to_string()),
                _ => None,
            })
            .collect();
        self.record(events).await;
        self.reconcile_wake.notify_one();
        Ok(pruned)
    }
}

impl Resolved {
    fn insert(&mut self, name: &str, sha256: String, size: u64) {
        self.digests.insert(name.to_string(), sha256.clone());
        self.artifacts
            .insert(name.to_string(), ArtifactStatus { sha256, size });
    }
}

/// Carries out pending prunes every resync interval until shutdown: a release whose prune was
/// deferred (by the watched directory or an API apply with `prune`) is deleted once no client is
/// assigned it.
pub async fn run_pending_prunes(controller: Arc<Controller>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(controller.config.resync_interval) => {}
            _ = shutdown.changed() => return,
        }
        match controller.prune_pending_releases().await {
            Ok(pruned) if !pruned.is_empty() => {
                tracing::info!(releases = ?pruned, "pending prunes carried out");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error.message, "pending prunes failed"),
        }
    }
}

/// The status write of an applied release: its artifact and `Ready`, and no pending prune (applying
/// a release again cancels its prune). `None` when the stored status is already that.
fn applied_release_status(
    item: &tc_reconcile::PlanItem,
    artifacts: &BTreeMap<String, ArtifactStatus>,
    now: Timestamp,
) -> Option<Object> {
    let Object::PackageRelease(release) = &item.object else {
        return None;
    };
    let artifact = artifacts.get(&release.metadata.name)?;
    let previous = item.existing.as_ref().and_then(|o| match o {
        Object::PackageRelease(r) => r.status.clone(),
        Object::ClientGroup(_) => None,
    });
    let mut status = previous.clone().unwrap_or_default();
    status.artifact = Some(artifact.clone());
    set_condition(
        &mut status.conditions,
        Condition {
            type_: "Ready".into(),
            status: ConditionStatus::True,
            reason: "ArtifactStored".into(),
            message: format!(
                "sha256:{} ({} bytes) is in the blob store",
                artifact.sha256, artifact.size
            ),
            last_transition_time: now,
            observed_generation: None,
        },
    );
    status.conditions.retain(|c| c.type_ != PRUNE_PENDING);
    if previous.as_ref() == Some(&status) {
        return None;
    }
    let mut with_status = release.clone();
    with_status.status = Some(PackageReleaseStatus { ..status });
    Some(Object::PackageRelease(with_status))
}

/// The status write marking a release's prune as pending. `None` when it is marked already.
fn pending_prune_status(object: &Object, manager: &str, now: Timestamp) -> Option<Object> {
    let Object::PackageRelease(release) = object else {
        return None;
    };
    let mut release = release.clone();
    let mut status = release.status.clone().unwrap_or_default();
    let changed = set_condition(
        &mut status.conditions,
        Condition {
            type_: PRUNE_PENDING.into(),
            status: ConditionStatus::True,
            reason: "ReleaseInUse".into(),
            message: format!(
                "`{manager}` prunes it once no client is assigned it any more; applying it again \
                 cancels the prune"
            ),
            last_transition_time: now,
            observed_generation: None,
        },
    );
    if !changed {
        return None;
    }
    release.status = Some(status);
    Some(Object::PackageRelease(release))
}

/// `path` relative to the directory of `manifest` (absolute paths stay as they are).
fn resolve_relative(manifest: &str, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    Path::new(manifest)
        .parent()
        .unwrap_or(Path::new("."))
        .join(path)
}

/// Where an object is defined among the decoded manifests.
fn source_of<'a>(
    decoded: &'a [SourcedObject],
    kind: Kind,
    name: &str,
) -> Option<&'a SourcedObject> {
    decoded
        .iter()
        .find(|s| s.object.kind() == kind && s.object.name() == name)
}

fn file_of(decoded: &[SourcedObject], object: &Object, action: Action) -> Option<String> {
    if action == Action::Prune {
        return None;
    }
    source_of(decoded, object.kind(), object.name()).map(|s| s.file.clone())
}

fn skipped_item(skipped: &Skipped, decoded: &[SourcedObject]) -> SkippedItem {
    let reference = format!(
        "{}/{}",
        skipped.kind.as_str().to_ascii_lowercase(),
        skipped.name
    );
    let disabled_in_file = matches!(
        skipped.reason,
        SkipReason::ReconcileDisabled {
            in_source: true,
            ..
        }
    );
    let (reason, message) = match &skipped.reason {
        SkipReason::ReconcileDisabled { in_source, would } => (
            "ReconcileDisabled",
            format!(
                "{reference} is annotated `thinfleet.io/reconcile: disabled` {}; it is left alone \
                 (not {})",
                if *in_source {
                    "in its file"
                } else {
                    "on the stored object"
                },
                would.past_tense()
            ),
        ),
        SkipReason::Conflict(error) => ("Conflict", error.to_string()),
    };
    let source = source_of(decoded, skipped.kind, &skipped.name);
    SkippedItem {
        kind: skipped.kind,
        name: skipped.name.clone(),
        reason,
        message,
        file: source.map(|s| s.file.clone()),
        line: source.map(|s| s.position.line),
        column: source.map(|s| s.position.column),
        disabled_in_file,
    }
}

fn plan_error(errors: &[PlanError], decoded: &[SourcedObject]) -> ApiError {
    let code = if errors.iter().any(|e| {
        matches!(
            e,
            PlanError::ManagerConflict { .. } | PlanError::ImmutableRelease { .. }
        )
    }) {
        StatusCode::CONFLICT
    } else {
        StatusCode::BAD_REQUEST
    };
    let causes = errors
        .iter()
        .map(|error| {
            let (kind, name) = match error {
                PlanError::Duplicate { kind, name }
                | PlanError::ManagerConflict { kind, name, .. } => (*kind, name),
                PlanError::ImmutableRelease { name, .. }
                | PlanError::DuplicateRelease { name, .. } => (Kind::PackageRelease, name),
            };
            let source = source_of(decoded, kind, name);
            Cause {
                file: source.map(|s| s.file.clone()),
                line: source.map(|s| s.position.line),
                column: source.map(|s| s.position.column),
                field: None,
                message: error.to_string(),
            }
        })
        .collect();
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    ApiError::new(code, message).with_causes(causes)
}
