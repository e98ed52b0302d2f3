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

mod artifacts;
mod prune;

use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use serde::Serialize;
use tc_api::{
    Cause, Event, EventType, Kind, Object, ObjectRef, SkippedObject, SourcedObject, Timestamp,
};
use tc_reconcile::plan::{
    Action, PlanError, PlanItem, PlanOptions, SkipReason, Skipped, plan, reconcile_disabled,
};
use tc_store::{Write, WriteOutcome};

pub use artifacts::ArtifactCache;
pub use prune::{PRUNE_PENDING, PendingPrune, run_pending_prunes};

use crate::Controller;
use crate::error::ApiError;
use crate::watch::Defining;
use prune::{applied_release_status, pending_prune_status};

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
    /// Who applies (`credential:ci`, `admin`, `dir:/srv/manifests`).
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

/// An object an authoritative apply left alone: what is served (and shown in the watched
/// directory's status), and what the directory's sync needs to know besides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedItem {
    /// The object, why it was left alone, and where it is defined.
    #[serde(flatten)]
    pub object: SkippedObject,
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

/// What an API apply does to objects the watched directory defines: it warns, wakes the
/// directory's sync (which takes them back), and writes back at once those it prunes, so their
/// clients never see them missing.
#[derive(Default)]
struct DirectoryEffects {
    warnings: Vec<String>,
    wake: Vec<Defining>,
    restores: Vec<(Defining, Object)>,
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
        let mut decoded = decode(&request.files)?;
        artifacts::attach_signatures(&mut decoded, request)?;
        if self.config.require_signed {
            artifacts::check_signed(&decoded)?;
        }
        // Fetched before the lock is taken: a slow `artifact.url` must not hold up every other
        // apply and the directory's sync while it downloads.
        let fetched = self.fetch_url_artifacts(&decoded, request).await?;
        let _guard = self.apply_lock.lock().await;
        let now = Timestamp::now();
        let resolved = self.resolve_artifacts(&decoded, request, fetched).await?;
        let incoming: Vec<Object> = decoded.iter().map(|s| s.object.clone()).collect();
        let store = self.store.clone();
        let existing = tokio::task::spawn_blocking(move || -> tc_store::Result<Vec<Object>> {
            let mut all = store.list(Kind::ClientGroup)?;
            all.extend(store.list(Kind::PackageRelease)?);
            all.extend(store.list(Kind::Task)?);
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
        let mut pending_prunes = self.defer_prunes(&mut planned.items);
        let effects = if request.authoritative {
            DirectoryEffects::default()
        } else {
            self.directory_effects(&planned.items)
        };
        let mut result = ApplyResult {
            kind: "ApplyResult",
            dry_run: request.dry_run,
            items: vec![],
            deferred: pending_prunes
                .iter()
                .map(|p| {
                    format!(
                        "packagerelease/{} is still assigned to {} client(s); it is pruned once none runs it",
                        p.name, p.clients
                    )
                })
                .collect(),
            pending_prunes: vec![],
            skipped: planned
                .skipped
                .iter()
                .map(|s| skipped_item(s, &decoded))
                .collect(),
            warnings: [resolved.warnings.clone(), effects.warnings.clone()].concat(),
        };
        if request.dry_run {
            result.items = planned
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
            result.pending_prunes = pending_prunes;
            return Ok(result);
        }

        // One transaction: the planned writes, the statuses of applied releases, the pending
        // prunes, and the directory objects put back.
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
                    if let Some(object) = applied_release_status(item, &resolved.artifacts, now) {
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
        for (defining, restore) in &effects.restores {
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

        let mut events = vec![];
        for (item, stored) in planned.items.into_iter().zip(stored) {
            let stored = stored
                .or_else(|| item.existing.clone())
                .unwrap_or_else(|| item.object.clone());
            if let Some(reason) = event_reason(item.action) {
                events.push(Event::new(
                    now,
                    ObjectRef::new(item.object.kind(), item.object.name()),
                    EventType::Normal,
                    reason,
                    format!("{} by {}", item.action.past_tense(), request.manager),
                ));
            }
            result.items.push(AppliedItem {
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
        for (defining, restore) in &effects.restores {
            events.push(defining.restoration_event(restore, "pruned through the API", now));
        }
        result.pending_prunes = pending_prunes;
        drop(_guard);
        self.record(events).await;
        self.reconcile_wake.notify_one();
        self.tasks.objects_changed();
        for defining in effects.wake {
            defining.source.request_sync();
        }
        Ok(result)
    }

    /// What an API apply's plan does to objects a watched directory defines (and keeps in its
    /// hands).
    fn directory_effects(&self, items: &[PlanItem]) -> DirectoryEffects {
        let mut effects = DirectoryEffects::default();
        for item in items {
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
                    effects.warnings.push(defining.restored_warning(&reference));
                    effects.restores.push((defining, restore));
                    continue;
                }
            } else if reconcile_disabled(&item.object) {
                effects
                    .warnings
                    .push(defining.left_alone_warning(&reference));
                continue;
            }
            effects
                .warnings
                .push(defining.takeover_warning(&reference, self.config.watch_debounce));
            effects.wake.push(defining);
        }
        effects
    }
}

/// The event reason of an applied item (none for unchanged objects).
fn event_reason(action: Action) -> Option<&'static str> {
    match action {
        Action::Create => Some("Created"),
        Action::Configure => Some("Configured"),
        Action::Prune => Some("Pruned"),
        Action::Unchanged => None,
    }
}

/// Decodes every file (without the status, which only the controller writes); any error fails
/// the whole apply, naming file, line, column and field.
pub(crate) fn decode(files: &[ManifestFile]) -> Result<Vec<SourcedObject>, ApiError> {
    let mut decoded: Vec<SourcedObject> = vec![];
    // Every error of every file, in file order, up to the decoder's cap for the request.
    let mut errors = tc_api::DecodeErrors::new();
    let limits = tc_api::Limits::default();
    for file in files {
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
    // Maintenance windows are cron schedules in a time zone: checked here, where the schedule
    // code is, so that a window that could never open is refused rather than never opening.
    let mut causes: Vec<Cause> = vec![];
    for sourced in &decoded {
        if let Object::ClientGroup(group) = &sourced.object {
            for (field, message) in
                tc_reconcile::progressive::window_errors(&group.spec.rollout.maintenance_windows)
            {
                causes.push(Cause {
                    file: Some(sourced.file.clone()),
                    line: Some(sourced.position.line),
                    column: Some(sourced.position.column),
                    field: Some(field.clone()),
                    message: format!("clientgroup/{}: {field}: {message}", group.metadata.name),
                });
            }
        }
    }
    if !causes.is_empty() {
        let text: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.file.as_deref().unwrap_or(""), c.message))
            .collect();
        return Err(ApiError::bad_request(text.join("; ")).with_causes(causes));
    }
    for sourced in &mut decoded {
        sourced.object.clear_status();
    }
    Ok(decoded)
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
        object: SkippedObject {
            kind: skipped.kind,
            name: skipped.name.clone(),
            reason: reason.to_string(),
            message,
            file: source.map(|s| s.file.clone()),
            line: source.map(|s| s.position.line),
            column: source.map(|s| s.position.column),
        },
        disabled_in_file,
    }
}

fn plan_error(errors: &[PlanError], decoded: &[SourcedObject]) -> ApiError {
    let code = if errors.iter().any(|e| {
        matches!(
            e,
            PlanError::ManagerConflict { .. }
                | PlanError::ImmutableRelease { .. }
                | PlanError::ImmutableTask { .. }
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
                PlanError::ImmutableTask { name } => (Kind::Task, name),
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
