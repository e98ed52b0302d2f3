//! Rollouts as admins see and steer them: retrying the releases that failed on a group's
//! members, pausing and resuming a group's rollout, and why a client runs what it runs.
//!
//! A pause asked for through the API is the controller's, not the manifest's: it is kept as a
//! setting (`rolloutPause/{group}`: who and when), so neither an apply nor the watched
//! directory's sync undoes it, and an operator (who may not apply) can stop a bad rollout. Each
//! reconcile pass treats a paused group as `spec.paused` (it assigns nothing new; members
//! already changing finish) and its status names who paused it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{Value, json};
use tc_api::{
    Client, ClientGroup, Event, EventType, Kind, Object, ObjectRef, RolloutPause, Timestamp,
};
use tc_reconcile::ReleaseCatalog;
use tc_store::Store;

use crate::Controller;
use crate::audit::Note;
use crate::credentials::Identity;
use crate::error::ApiError;
use crate::reconcile::RetryRequest;

/// `POST /apis/thinfleet.io/v1/clientgroups/{name}/retry`: every member of the group whose
/// install of one of the group's packages failed tries that release once more (its agent does not
/// retry a failed release on its own). Answers, once that is committed, which packages of which
/// clients were retried.
pub async fn retry(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = controller.store.clone();
    let lookup = name.clone();
    tokio::task::spawn_blocking(move || store.get(Kind::ClientGroup, &lookup))
        .await??
        .ok_or_else(|| ApiError::not_found(format!("clientgroup/{name} not found")))?;
    let (done, answer) = tokio::sync::oneshot::channel();
    controller
        .retries
        .lock()
        .expect("retries lock")
        .push(RetryRequest {
            group: name.clone(),
            done,
        });
    controller.reconcile_wake.notify_one();
    let retried = answer.await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the reconcile pass that was to carry out the retry failed; try again",
        )
    })?;
    let message = if retried.is_empty() {
        "retry asked for: no member reports a failed package of this group".to_string()
    } else {
        let mut releases: Vec<String> = retried
            .iter()
            .map(|r| format!("{} {}", r.package, r.version))
            .collect();
        releases.sort();
        releases.dedup();
        format!(
            "retry of {} asked for on {} member(s)",
            releases.join(", "),
            retried
                .iter()
                .map(|r| r.client.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        )
    };
    controller
        .record(vec![Event::new(
            Timestamp::now(),
            ObjectRef::new(Kind::ClientGroup, &name),
            EventType::Normal,
            "RetryRequested",
            message.clone(),
        )])
        .await;
    Ok(Json(json!({
        "kind": "RetryResult",
        "group": name,
        "message": message,
        "retried": retried,
    })))
}

impl Controller {
    /// `client` with the groups that select it and, per package, why it runs (or is to run) its
    /// version, from the current groups and releases.
    pub async fn explained(&self, mut client: Client) -> Result<Client, ApiError> {
        // Pending and decommissioning clients are members of no group: nothing to explain.
        if client.spec.pending.is_some() || client.spec.decommission {
            return Ok(client);
        }
        let store = self.store.clone();
        let (groups, releases) = tokio::task::spawn_blocking(move || -> tc_store::Result<_> {
            Ok((
                store.list(Kind::ClientGroup)?,
                store.list(Kind::PackageRelease)?,
            ))
        })
        .await??;
        let groups: Vec<ClientGroup> = groups
            .into_iter()
            .filter_map(|object| match object {
                Object::ClientGroup(group) => Some(group),
                _ => None,
            })
            .filter(|group| group.spec.selector.matches(&client.metadata.labels))
            .collect();
        let mut groups = groups;
        let store = self.store.clone();
        let pauses = tokio::task::spawn_blocking(move || load_pauses(&*store)).await??;
        overlay_pauses(&mut groups, &pauses);
        let releases: Vec<tc_api::PackageRelease> = releases
            .into_iter()
            .filter_map(|object| match object {
                Object::PackageRelease(release) => Some(release),
                _ => None,
            })
            .collect();
        let catalog = ReleaseCatalog::new(&releases);
        let assigned = client
            .status
            .desired
            .iter()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect();
        let selecting: Vec<&ClientGroup> = groups.iter().collect();
        client.status.decisions = tc_reconcile::explain(&selecting, &catalog, &assigned);
        client.status.groups = groups.iter().map(|g| g.metadata.name.clone()).collect();
        Ok(client)
    }
}

/// Settings key prefix of pauses asked for through the API.
pub const PAUSE_SETTING: &str = "rolloutPause/";

/// The groups paused through the API, by name. Blocking.
pub fn load_pauses(store: &dyn Store) -> tc_store::Result<BTreeMap<String, RolloutPause>> {
    let mut pauses = BTreeMap::new();
    for (key, value) in store.list_settings(PAUSE_SETTING)? {
        let pause: RolloutPause =
            serde_json::from_str(&value).map_err(|error| tc_store::StoreError::Corrupt {
                key: key.clone(),
                message: error.to_string(),
            })?;
        pauses.insert(key[PAUSE_SETTING.len()..].to_string(), pause);
    }
    Ok(pauses)
}

/// Marks the groups paused through the API as paused (`spec.paused`) for a pass or an
/// explanation; nothing is written.
pub fn overlay_pauses(groups: &mut [ClientGroup], pauses: &BTreeMap<String, RolloutPause>) {
    for group in groups {
        if pauses.contains_key(&group.metadata.name) {
            group.spec.paused = true;
        }
    }
}

/// Deletes a group's pause (the group is deleted). Blocking.
pub fn forget_pause(store: &dyn Store, group: &str) -> tc_store::Result<()> {
    store.put_setting(&format!("{PAUSE_SETTING}{group}"), None)
}

/// `POST /apis/thinfleet.io/v1/clientgroups/{name}/pause`: no member gets a new version from the
/// group until it is resumed (members already changing finish). 409 when it is already paused.
pub async fn pause(
    State(controller): State<Arc<Controller>>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<(Extension<Note>, Json<Value>), ApiError> {
    steer(&controller, &identity, &name, true).await
}

/// `POST /apis/thinfleet.io/v1/clientgroups/{name}/resume`: lifts a pause asked for through the
/// API. 409 when there is none (a group paused by its manifest is resumed there).
pub async fn resume(
    State(controller): State<Arc<Controller>>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<(Extension<Note>, Json<Value>), ApiError> {
    steer(&controller, &identity, &name, false).await
}

/// Pauses (`pause`) or resumes a group's rollout as `identity`; the pass that follows at once
/// applies it.
pub async fn steer(
    controller: &Arc<Controller>,
    identity: &Identity,
    name: &str,
    pause: bool,
) -> Result<(Extension<Note>, Json<Value>), ApiError> {
    // Under the apply lock: a group deleted meanwhile cannot leave a pause behind.
    let _guard = controller.apply_lock.lock().await;
    let store = controller.store.clone();
    let lookup = name.to_string();
    let (group, current) = tokio::task::spawn_blocking(move || -> tc_store::Result<_> {
        let group = store.get(Kind::ClientGroup, &lookup)?;
        Ok((group, load_pauses(&*store)?.remove(&lookup)))
    })
    .await??;
    let Some(Object::ClientGroup(group)) = group else {
        return Err(ApiError::not_found(format!("clientgroup/{name} not found")));
    };
    let now = Timestamp::now();
    let key = format!("{PAUSE_SETTING}{name}");
    let (value, reason, message) = match (pause, &current) {
        (true, Some(current)) => {
            return Err(ApiError::conflict(format!(
                "clientgroup/{name} is already paused (by {} at {})",
                current.by, current.time
            )));
        }
        (false, None) if group.spec.paused => {
            return Err(ApiError::conflict(format!(
                "clientgroup/{name} is paused by its manifest (spec.paused: true); change the \
                 manifest to resume it"
            )));
        }
        (false, None) => {
            // A rollout waiting at a pause step without a duration goes on.
            if let Some(message) =
                crate::progressive::routes::resume_step(controller, name, &identity.name).await?
            {
                return Ok((
                    Extension(Note::object("ClientGroup", name, "resumed")),
                    Json(json!({
                        "kind": "RolloutPauseResult",
                        "group": name,
                        "paused": false,
                        "message": message,
                    })),
                ));
            }
            return Err(ApiError::conflict(format!(
                "clientgroup/{name} is not paused and waits at no pause step"
            )));
        }
        (true, None) => {
            let record = RolloutPause {
                by: identity.name.clone(),
                time: now,
            };
            (
                Some(serde_json::to_string(&record).expect("pauses serialize")),
                "Paused",
                format!(
                    "rollout paused by {}: no member gets a new version until `tcadm rollout \
                     resume clientgroup {name}`",
                    identity.name
                ),
            )
        }
        (false, Some(current)) => (
            None,
            "Resumed",
            format!(
                "rollout resumed by {} (paused by {} at {})",
                identity.name, current.by, current.time
            ),
        ),
    };
    let store = controller.store.clone();
    tokio::task::spawn_blocking(move || store.put_setting(&key, value.as_deref())).await??;
    controller
        .record(vec![Event::new(
            now,
            ObjectRef::new(Kind::ClientGroup, name),
            EventType::Normal,
            reason,
            message.clone(),
        )])
        .await;
    controller.reconcile_wake.notify_one();
    let change = if pause { "paused" } else { "resumed" };
    Ok((
        Extension(Note::object("ClientGroup", name, change)),
        Json(json!({
            "kind": "RolloutPauseResult",
            "group": name,
            "paused": pause,
            "message": message,
        })),
    ))
}
