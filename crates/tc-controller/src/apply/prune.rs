//! Prunes that wait: a release still assigned to clients is not deleted by an apply that prunes
//! it; it is marked `PrunePending` (durably, on its status) and deleted once no client is assigned
//! it, whoever applied the prune. Applying the release again cancels the prune.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use tc_api::meta::{find_condition, set_condition};
use tc_api::{
    ArtifactStatus, Condition, ConditionStatus, Event, EventType, Kind, Object, ObjectRef,
    PackageReleaseStatus, Timestamp,
};
use tc_reconcile::plan::{Action, PlanItem};
use tc_store::{Write, WriteOutcome};
use tokio::sync::watch;

use crate::Controller;
use crate::error::ApiError;

/// The condition type of a release whose prune waits until no client is assigned it.
pub const PRUNE_PENDING: &str = "PrunePending";

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

impl Controller {
    /// Takes out of `items` the prunes of releases still assigned to clients: the rest of the
    /// apply (typically the group change that stops assigning them) goes ahead, and these prunes
    /// wait.
    pub(super) fn defer_prunes(&self, items: &mut Vec<PlanItem>) -> Vec<PendingPrune> {
        let mut pending = vec![];
        items.retain(|item| {
            let Object::PackageRelease(release) = &item.object else {
                return true;
            };
            if item.action != Action::Prune {
                return true;
            }
            match self.release_users(&release.spec.package, &release.spec.version) {
                Some(clients) => {
                    pending.push(PendingPrune {
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
        pending
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
        self.tasks.objects_changed();
        Ok(pruned)
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
pub(super) fn applied_release_status(
    item: &PlanItem,
    artifacts: &BTreeMap<String, ArtifactStatus>,
    now: Timestamp,
) -> Option<Object> {
    let Object::PackageRelease(release) = &item.object else {
        return None;
    };
    let artifact = artifacts.get(&release.metadata.name)?;
    let previous = item.existing.as_ref().and_then(|o| match o {
        Object::PackageRelease(r) => r.status.clone(),
        _ => None,
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
pub(super) fn pending_prune_status(
    object: &Object,
    manager: &str,
    now: Timestamp,
) -> Option<Object> {
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
