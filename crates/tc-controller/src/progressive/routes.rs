//! The admin routes of progressive delivery: a group's rollout history, undo, activate-now, and
//! the resume of a pause step (through `.../resume`, see [`crate::rollout::steer`]).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde_json::{Value, json};
use tc_api::rollout::{RolloutHistory, Step};
use tc_api::{ClientGroup, Event, EventType, Kind, Object, ObjectRef, RolloutPause, Timestamp};
use tc_reconcile::progressive::{GroupRollouts, UndoPin};

use crate::Controller;
use crate::audit::Note;
use crate::credentials::Identity;
use crate::error::ApiError;

/// Runs `change` on the record of group `name` (loaded if no pass has yet), under the records'
/// lock, and saves it when `change` returns `Ok((true, _))`. 404 for an unknown group.
async fn with_record<T>(
    controller: &Arc<Controller>,
    name: &str,
    change: impl FnOnce(&ClientGroup, &mut GroupRollouts) -> Result<(bool, T), ApiError>,
) -> Result<T, ApiError> {
    let store = controller.store.clone();
    let lookup = name.to_string();
    let group =
        tokio::task::spawn_blocking(move || store.get(Kind::ClientGroup, &lookup)).await??;
    let Some(Object::ClientGroup(group)) = group else {
        return Err(ApiError::not_found(format!("clientgroup/{name} not found")));
    };
    let mut guard = controller.rollouts.records.lock().await;
    if guard.is_none() {
        let store = controller.store.clone();
        *guard = Some(tokio::task::spawn_blocking(move || super::load(&*store)).await??);
    }
    let records = guard.as_mut().expect("loaded above");
    let mut record = records.get(name).cloned().unwrap_or_default();
    let (save, answer) = change(&group, &mut record)?;
    if save {
        let store = controller.store.clone();
        let key = name.to_string();
        let saved = record.clone();
        tokio::task::spawn_blocking(move || super::save(&*store, &key, Some(&saved))).await??;
        records.insert(name.to_string(), record);
        controller.reconcile_wake.notify_one();
    }
    Ok(answer)
}

/// `GET /apis/thinfleet.io/v1/clientgroups/{name}/rollouts`: the group's rollouts, the current
/// one first (at most 21).
pub async fn history(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
) -> Result<Json<RolloutHistory>, ApiError> {
    let items = with_record(&controller, &name, |_, record| {
        Ok((false, record.records()))
    })
    .await?;
    Ok(Json(RolloutHistory { group: name, items }))
}

/// `POST /apis/thinfleet.io/v1/clientgroups/{name}/undo`: holds the group at the versions of its
/// last completed rollout before the current one, until its spec changes. The return is a new
/// rollout, within the group's budget and steps. 409 when there is no such rollout.
pub async fn undo(
    State(controller): State<Arc<Controller>>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<(Extension<Note>, Json<Value>), ApiError> {
    let now = Timestamp::now();
    let versions = with_record(&controller, &name, |group, record| {
        let Some(target) = record.undo_target() else {
            return Err(ApiError::conflict(format!(
                "clientgroup/{name} has no completed rollout before the current one to return to \
                 (see `tcadm rollout history clientgroup {name}`)"
            )));
        };
        let versions = target.versions.clone();
        record.undo = Some(UndoPin {
            versions: versions.clone(),
            generation: group.metadata.generation.unwrap_or(0),
            by: RolloutPause {
                by: identity.name.clone(),
                time: now,
            },
        });
        Ok((true, versions))
    })
    .await?;
    let message = format!(
        "rollout undone by {}: back to {} until the group's spec changes",
        identity.name,
        super::versions_text(&versions)
    );
    record_event(&controller, &name, "RolloutUndone", &message, now).await;
    Ok((
        Extension(Note::object("ClientGroup", &name, "undone")),
        Json(json!({
            "kind": "RolloutUndoResult",
            "group": name,
            "versions": versions,
            "message": message,
        })),
    ))
}

/// `POST /apis/thinfleet.io/v1/clientgroups/{name}/activate-now`: members activate the current
/// rollout's staged changes at once, whatever their maintenance windows or reboots (within the
/// budget and steps). Holds for this rollout only. 409 for a group that activates at once anyway.
pub async fn activate_now(
    State(controller): State<Arc<Controller>>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<(Extension<Note>, Json<Value>), ApiError> {
    let now = Timestamp::now();
    let revision = with_record(&controller, &name, |group, record| {
        let rollout = &group.spec.rollout;
        if rollout.maintenance_windows.is_empty()
            && rollout.activation == tc_api::rollout::ActivationPolicy::Immediate
        {
            return Err(ApiError::conflict(format!(
                "clientgroup/{name} has no maintenance windows and activates at once: nothing \
                 waits for activation"
            )));
        }
        let Some(current) = record.current.as_mut() else {
            return Err(ApiError::conflict(format!(
                "clientgroup/{name} has no rollout yet; try again in a moment"
            )));
        };
        current.activate_now = Some(RolloutPause {
            by: identity.name.clone(),
            time: now,
        });
        Ok((true, current.revision))
    })
    .await?;
    let message = format!(
        "activation of rollout {revision} asked for now by {}: members activate their staged \
         changes at once, within the budget and steps",
        identity.name
    );
    record_event(&controller, &name, "ActivateNow", &message, now).await;
    Ok((
        Extension(Note::object("ClientGroup", &name, "activate-now")),
        Json(json!({
            "kind": "ActivateNowResult",
            "group": name,
            "revision": revision,
            "message": message,
        })),
    ))
}

/// Lets the rollout of group `name` go past the pause step without a duration it waits at.
/// Returns the message, or None when it waits at no such step.
pub async fn resume_step(
    controller: &Arc<Controller>,
    name: &str,
    by: &str,
) -> Result<Option<String>, ApiError> {
    let now = Timestamp::now();
    let resumed = with_record(controller, name, |group, record| {
        let Some(current) = record.current.as_mut() else {
            return Ok((false, None));
        };
        let steps = super::steps_of(group, current);
        let waiting = current.finished.is_none()
            && steps.get(current.step) == Some(&Step::Pause(None))
            && current.resumed != Some(current.step);
        if !waiting {
            return Ok((false, None));
        }
        current.resumed = Some(current.step);
        Ok((true, Some((current.revision, current.step, steps.len()))))
    })
    .await?;
    let Some((revision, step, steps)) = resumed else {
        return Ok(None);
    };
    let message = format!(
        "rollout {revision} resumed by {by} at step {} of {steps}",
        step + 1
    );
    record_event(controller, name, "Resumed", &message, now).await;
    Ok(Some(message))
}

async fn record_event(
    controller: &Arc<Controller>,
    name: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    controller
        .record(vec![Event::new(
            now,
            ObjectRef::new(Kind::ClientGroup, name),
            EventType::Normal,
            reason,
            message.to_string(),
        )])
        .await;
}
