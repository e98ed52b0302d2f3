//! The one apply path. The API's `POST .../apply` and the watched directory both come here, so they
//! validate, plan and write the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use serde::Serialize;
use tc_api::meta::set_condition;
use tc_api::{
    ArtifactStatus, Condition, ConditionStatus, Event, EventType, Kind, Object, ObjectRef,
    PackageReleaseStatus, SourcedObject, Timestamp,
};
use tc_reconcile::plan::{Action, PlanError, PlanOptions, plan};
use tc_store::{Write, WriteOutcome};

use crate::Controller;
use crate::blobs::BlobStore;
use crate::error::{ApiError, Cause};

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
    /// Only blobs already uploaded (API requests): `path` needs `sha256` of a stored blob.
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
    /// Prunes that wait until no client is assigned the release any more.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<String>,
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
        // Every error of every file, in file order, up to the decoder's cap for the request.
        let mut decoded: Vec<SourcedObject> = vec![];
        let mut errors = tc_api::DecodeErrors::new();
        let limits = tc_api::Limits::default();
        for file in &request.files {
            decoded.extend(tc_api::decode::decode_objects_into(
                &file.name,
                &file.content,
                &limits,
                &mut errors,
            ));
        }
        if !errors.is_empty() {
            let mut causes: Vec<Cause> = errors.errors().iter().map(Cause::from).collect();
            if let Some(summary) = errors.summary() {
                causes.push(Cause {
                    file: None,
                    line: None,
                    column: None,
                    field: None,
                    message: summary,
                });
            }
            return Err(ApiError::bad_request(errors.to_string()).with_causes(causes));
        }
        for sourced in &mut decoded {
            sourced.object.clear_status();
        }

        let _guard = self.apply_lock.lock().await;
        let now = Timestamp::now();
        let artifacts = self.resolve_artifacts(&decoded, request).await?;
        let incoming: Vec<Object> = decoded.iter().map(|s| s.object.clone()).collect();
        let store = self.store.clone();
        let existing = tokio::task::spawn_blocking(move || -> tc_store::Result<Vec<Object>> {
            let mut all = store.list(Kind::ClientGroup)?;
            all.extend(store.list(Kind::PackageRelease)?);
            Ok(all)
        })
        .await??;
        let digests: BTreeMap<String, String> = artifacts
            .iter()
            .map(|(name, a)| (name.clone(), a.sha256.clone()))
            .collect();
        let options = PlanOptions {
            prune: request.prune,
            force: request.force,
        };
        let mut planned = plan(&existing, &incoming, &request.manager, &options, &digests)
            .map_err(|errors| plan_error(&errors, &decoded))?;
        // A release still assigned to clients is not pruned yet: the rest of the apply (typically
        // the group change that stops assigning it) goes ahead, and the prune is retried later.
        let mut deferred = vec![];
        planned.items.retain(|item| {
            let Object::PackageRelease(release) = &item.object else { return true };
            if item.action != Action::Prune {
                return true;
            }
            match self.release_users(&release.spec.package, &release.spec.version) {
                Some(users) => {
                    deferred.push(format!(
                        "packagerelease/{} is still assigned to {users} client(s); it is pruned once none runs it",
                        release.metadata.name
                    ));
                    false
                }
                None => true,
            }
        });

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
            });
        }

        let mut writes = vec![];
        for item in &planned.items {
            match item.action {
                Action::Prune => writes.push(Write::Delete {
                    kind: item.object.kind(),
                    name: item.object.name().to_string(),
                    // Applies hold the apply lock; only status writes of the reconcile loop can
                    // have touched the object since it was planned, and they must not fail a prune.
                    precondition: None,
                }),
                Action::Create | Action::Configure | Action::Unchanged => {
                    writes.push(Write::Apply {
                        object: item.object.clone(),
                        manager: request.manager.clone(),
                    });
                    if let Object::PackageRelease(release) = &item.object
                        && let Some(artifact) = artifacts.get(&release.metadata.name)
                    {
                        let mut with_status = release.clone();
                        let previous = item.existing.as_ref().and_then(|o| match o {
                            Object::PackageRelease(r) => r.status.clone(),
                            _ => None,
                        });
                        let mut status = previous.unwrap_or_default();
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
                        with_status.status = Some(PackageReleaseStatus { ..status });
                        writes.push(Write::Status {
                            object: Object::PackageRelease(with_status),
                        });
                    }
                }
            }
        }
        let store = self.store.clone();
        let outcomes = tokio::task::spawn_blocking(move || store.write(writes, now)).await??;
        let mut items = vec![];
        let mut events = vec![];
        let mut outcome_iter = outcomes.into_iter();
        for item in planned.items {
            let outcome = outcome_iter.next();
            let is_release_with_status = matches!(&item.object, Object::PackageRelease(r) if artifacts.contains_key(&r.metadata.name))
                && item.action != Action::Prune;
            let mut stored = match outcome {
                Some(
                    WriteOutcome::Created(o)
                    | WriteOutcome::Configured(o)
                    | WriteOutcome::Unchanged(o)
                    | WriteOutcome::Deleted(o),
                ) => o,
                _ => item.object.clone(),
            };
            if is_release_with_status {
                // The status write that followed.
                if let Some(
                    WriteOutcome::Created(o)
                    | WriteOutcome::Configured(o)
                    | WriteOutcome::Unchanged(o),
                ) = outcome_iter.next()
                {
                    stored = o;
                }
            }
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
                object: stored,
                existing: item.existing,
            });
        }
        drop(_guard);
        self.record(events).await;
        self.reconcile_wake.notify_one();
        Ok(ApplyResult {
            kind: "ApplyResult",
            dry_run: false,
            items,
            deferred,
        })
    }

    /// Imports (or, in a dry run, only checks) the artifact of every release; returns release name
    /// -> artifact.
    async fn resolve_artifacts(
        &self,
        decoded: &[SourcedObject],
        request: &ApplyRequest,
    ) -> Result<BTreeMap<String, ArtifactStatus>, ApiError> {
        let mut artifacts = BTreeMap::new();
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
                artifacts.insert(
                    name.clone(),
                    ArtifactStatus {
                        sha256: sha.to_string(),
                        size,
                    },
                );
                continue;
            }
            let info = match (&artifact.path, &artifact.url, &request.artifact_paths) {
                (Some(path), _, ArtifactPaths::RelativeToManifest) => {
                    let full = resolve_relative(&sourced.file, path);
                    if full.is_dir() {
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
                    .map_err(|e| fail(format!("artifact {}: {e}", full.display())))?
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
            artifacts.insert(
                name.clone(),
                ArtifactStatus {
                    sha256: info.sha256,
                    size: info.size,
                },
            );
        }
        Ok(artifacts)
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
            let name = match error {
                PlanError::Duplicate { name, .. }
                | PlanError::ManagerConflict { name, .. }
                | PlanError::ImmutableRelease { name, .. }
                | PlanError::DuplicateRelease { name, .. } => name,
            };
            let source = decoded.iter().find(|s| s.object.name() == name);
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
