//! The agent protocol (`/agent/v1`): heartbeats and the desired-state long-poll (enrolment and
//! sessions are in [`crate::enroll`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tc_api::{ClientPhase, Event, EventType, Kind, ObjectRef, PackageState, Timestamp};
use tc_proto::{HeartbeatRequest, PackageReport, ReleaseInfo};
use tc_store::ClientStatusEntry;

use crate::Controller;
pub use crate::enroll::{AuthenticatedClient, authenticate_client};
use crate::error::ApiError;
use crate::fleet::{Admission, ClientSlot, DesiredView, Labels};
use crate::ratelimit::EventVerdict;

/// `GET /agent/v1/releases/{package}/{version}`: the release of a package version this client
/// reports running (its digest and hooks), for an agent that lost its journal and must run
/// `preRemove` before it removes that version. 404 when the client reports no such package version
/// or no release defines it.
pub async fn release(
    State(controller): State<Arc<Controller>>,
    AuthenticatedClient(slot): AuthenticatedClient,
    Path((package, version)): Path<(String, String)>,
) -> Result<Json<ReleaseInfo>, ApiError> {
    let reported = slot
        .state
        .lock()
        .expect("client lock")
        .status
        .packages
        .iter()
        .any(|report| {
            report.name == package
                && (report.active_version.as_deref() == Some(version.as_str())
                    || report.version == version)
        });
    if !reported {
        return Err(ApiError::not_found(format!(
            "client/{} reports no package {package} at version {version}",
            slot.name
        )));
    }
    let store = controller.store.clone();
    let releases = tokio::task::spawn_blocking(move || store.list(Kind::PackageRelease)).await??;
    releases
        .into_iter()
        .find_map(|object| match object {
            tc_api::Object::PackageRelease(release)
                if release.spec.package == package && release.spec.version == version =>
            {
                Some(ReleaseInfo {
                    sha256: release
                        .status
                        .and_then(|status| status.artifact)
                        .map(|artifact| artifact.sha256)
                        .or(release.spec.artifact.sha256)
                        .unwrap_or_default(),
                    name: release.spec.package,
                    version: release.spec.version,
                    hooks: release.spec.hooks,
                })
            }
            _ => None,
        })
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no release of package {package} at version {version}"
            ))
        })
}

/// The body of a heartbeat answer: [`tc_proto::HeartbeatResponse`] serialized from the client's
/// shared desired state, without copying it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HeartbeatAnswer<'a> {
    desired: DesiredView<'a>,
    next_heartbeat_millis: u64,
    send_inventory: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tasks: Vec<crate::tasks::SharedOrder>,
}

/// The body of a long-poll answer: [`tc_proto::DesiredResponse`] without copying the state.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DesiredAnswer<'a> {
    desired: DesiredView<'a>,
    changed: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    send_history: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tasks: Vec<crate::tasks::SharedOrder>,
}

/// A JSON response from a value that borrows (axum's `Json` needs an owned one).
fn json_response(value: &impl Serialize) -> Response {
    match json_bytes(value) {
        Ok(body) => json_body(body),
        Err(error) => ApiError::internal(error).into_response(),
    }
}

/// `value` as JSON.
fn json_bytes(value: &impl Serialize) -> serde_json::Result<Vec<u8>> {
    // Room for a typical answer, so that writing it does not grow the buffer step by step.
    let mut body = Vec::with_capacity(1024);
    serde_json::to_writer(&mut body, value)?;
    Ok(body)
}

/// A response carrying `body`, JSON already.
fn json_body(body: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// `POST /agent/v1/heartbeat`.
///
/// This is the hot path of a large fleet: a heartbeat that only proves liveness takes the
/// client's lock once, copies nothing of the client, and queues it for the next liveness flush.
pub async fn heartbeat(
    State(controller): State<Arc<Controller>>,
    AuthenticatedClient(slot): AuthenticatedClient,
    Json(request): Json<HeartbeatRequest>,
) -> Result<Response, ApiError> {
    tc_proto::limits::check_heartbeat(&request)?;
    let now = Timestamp::now();
    let decommissioned = request.decommissioned;
    let mut events = vec![];
    let (persist, wake, served, next_heartbeat_millis, send_inventory, finished) = {
        let mut guard = slot.state.lock().expect("client lock");
        let state = &mut *guard;
        let name = &*slot.name;
        let status = &mut state.status;
        let mut changed = false;
        let mut wake = false;
        // A decommissioning client keeps showing that phase.
        if state.admission == Admission::Active && status.phase != ClientPhase::Online {
            if status.phase == ClientPhase::Offline {
                events.push(Event::new(
                    now,
                    ObjectRef::new(Kind::Client, name),
                    EventType::Normal,
                    "Online",
                    "heartbeats resumed",
                ));
            }
            status.phase = ClientPhase::Online;
            changed = true;
            wake = true;
        }
        status.last_heartbeat = Some(now);
        status.load = request.load;
        if status.packages != request.packages
            || status.observed_revision != request.observed_revision
        {
            package_events(name, &status.packages, &request.packages, now, &mut events);
            status.packages = request.packages;
            status.observed_revision = request.observed_revision;
            changed = true;
            wake = true;
        }
        let mut send_inventory = false;
        let mut new_inventory = None;
        if let Some(inventory) = request.inventory {
            let hash = if request.inventory_hash.is_empty() {
                tc_proto::inventory_hash(&inventory)
            } else {
                request.inventory_hash
            };
            // Inventories are recorded with their hash: the same hash is the same inventory.
            if hash != status.inventory_hash {
                let automatic = Labels::new(
                    &tc_api::resources::automatic_labels(&inventory),
                    &controller.fleet.interner,
                );
                if automatic != state.labels.automatic {
                    state.labels.automatic = automatic;
                    wake = true;
                }
                status.inventory_hash = hash;
                new_inventory = Some(inventory);
                changed = true;
            }
        } else if request.inventory_hash != status.inventory_hash
            || status.inventory_hash.is_empty()
        {
            send_inventory = true;
        }
        let jitter = 0.9 + 0.2 * jitter_fraction(name, now);
        let next = Duration::from_secs_f64(f64::from(state.heartbeat_seconds) * jitter);
        if !events.is_empty() {
            events = within_budget(&controller, name, &mut state.events, events, now);
        }
        let finished = decommissioned && state.admission == Admission::Decommissioning;
        (
            changed.then(|| {
                let mut status = status.to_status(new_inventory);
                // Liveness goes with the next liveness flush, as for any heartbeat: a status
                // record written now need not touch the liveness table too.
                status.last_heartbeat = None;
                ClientStatusEntry {
                    name: name.to_string(),
                    status,
                }
            }),
            wake,
            state.served.clone(),
            next.as_millis() as u64,
            send_inventory,
            finished,
        )
    };
    controller.fleet.mark_dirty(&slot);
    match persist {
        // The status and the events about it share the transactions of concurrent heartbeats.
        Some(entry) => controller
            .persister
            .write_statuses(vec![entry], events)
            .await
            .map_err(ApiError::internal)?,
        None => {
            if !events.is_empty() {
                let _ = controller.persister.write_statuses(vec![], events).await;
            }
        }
    }
    if finished {
        crate::admission::finish_decommission(&controller, &slot).await?;
    }
    if wake {
        controller.clients_changed.notify_one();
    }
    controller.metrics.heartbeats.inc();
    Ok(json_response(&HeartbeatAnswer {
        desired: served.view(),
        next_heartbeat_millis,
        send_inventory,
        tasks: controller.tasks.orders_for(&slot.name),
    }))
}

/// The events about one client that its event budget lets through: the excess is dropped and
/// counted, and one event says when dropping starts and how many were dropped when it ends, so
/// that no client can push the rest of the fleet's history out of the event ring.
fn within_budget(
    controller: &Controller,
    name: &str,
    budget: &mut crate::ratelimit::EventBudget,
    events: Vec<Event>,
    now: Timestamp,
) -> Vec<Event> {
    let limit = controller.config.client_event_rate;
    let mut kept = Vec::with_capacity(events.len());
    for event in events {
        match budget.next(&limit, now) {
            EventVerdict::Record => kept.push(event),
            EventVerdict::RecordAfterDropped(dropped) => {
                kept.push(Event::new(
                    now,
                    ObjectRef::new(Kind::Client, name),
                    EventType::Normal,
                    "EventsResumed",
                    format!("{dropped} event(s) about this client were dropped"),
                ));
                kept.push(event);
            }
            EventVerdict::Drop { first } => {
                controller.metrics.client_events_dropped.inc();
                if first {
                    kept.push(Event::new(
                        now,
                        ObjectRef::new(Kind::Client, name),
                        EventType::Warning,
                        "EventsSuppressed",
                        format!(
                            "this client causes more than {} events at once or {:.1} per                              minute; further ones are dropped (and counted in                              thinfleet_client_events_dropped_total) until it calms down",
                            limit.burst,
                            limit.per_second * 60.0
                        ),
                    ));
                }
            }
        }
    }
    kept
}

/// A fraction in [0, 1) that differs between clients and heartbeats, without a random source.
fn jitter_fraction(name: &str, now: Timestamp) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ now.unix_millis();
    for byte in name.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer spreads every input bit over the whole word.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// Events for package state transitions: the client's update history.
fn package_events(
    name: &str,
    before: &[PackageReport],
    after: &[PackageReport],
    now: Timestamp,
    events: &mut Vec<Event>,
) {
    let object = || ObjectRef::new(Kind::Client, name);
    for report in after {
        let previous = before.iter().find(|p| p.name == report.name);
        if previous.is_some_and(|p| p.state == report.state && p.version == report.version) {
            continue;
        }
        let (type_, reason, message) = match report.state {
            PackageState::Installed => (
                EventType::Normal,
                "Installed",
                format!("{} {} installed", report.name, report.version),
            ),
            PackageState::Failed => (
                EventType::Warning,
                "InstallFailed",
                format!(
                    "{} {} failed: {}",
                    report.name,
                    report.version,
                    report.message.clone().unwrap_or_default()
                ),
            ),
            PackageState::Installing | PackageState::Removing => continue,
        };
        events.push(Event::new(now, object(), type_, reason, message));
    }
    for report in before {
        if !after.iter().any(|p| p.name == report.name) {
            events.push(Event::new(
                now,
                object(),
                EventType::Normal,
                "Removed",
                format!("{} {} removed", report.name, report.version),
            ));
        }
    }
}

/// Query of the long-poll.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredQuery {
    /// Answer when the revision is newer than this.
    #[serde(default)]
    after_revision: u64,
    /// How long to wait at most (capped by the controller).
    timeout_seconds: Option<u64>,
}

/// `GET /agent/v1/desired?afterRevision=N`.
pub async fn desired(
    State(controller): State<Arc<Controller>>,
    AuthenticatedClient(slot): AuthenticatedClient,
    Query(query): Query<DesiredQuery>,
) -> Result<Response, ApiError> {
    let limit = controller.config.long_poll_max;
    let wait = query
        .timeout_seconds
        .map_or(limit, |s| Duration::from_secs(s).min(limit));
    let after = query.after_revision;
    let wanted = || slot.history_wanted() || slot.task_offered();
    if slot.revision.get() <= after && !wanted() {
        let closing = controller.fleet.closing();
        let waiting = slot.revision.wait_newer_or(after, closing, wanted);
        let _ = tokio::time::timeout(wait, waiting).await;
    }
    desired_answer(&controller, &slot, after)
        .map(json_body)
        .map_err(ApiError::internal)
}

/// The JSON answer of a long-poll after `after` for `slot`, as it stands now (also what the
/// leader answers a follower for the agents waiting there: [`crate::follower`]).
pub fn desired_answer(
    controller: &Controller,
    slot: &ClientSlot,
    after: u64,
) -> serde_json::Result<Vec<u8>> {
    let served = slot.state.lock().expect("client lock").served.clone();
    json_bytes(&DesiredAnswer {
        changed: served.revision > after,
        desired: served.view(),
        // Asked once; an agent that predates load histories just polls again.
        send_history: slot.take_history_request(),
        // Every open order, until the agent reports it started.
        tasks: {
            slot.take_task_offer();
            controller.tasks.orders_for(&slot.name)
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_answers_serialize_like_the_protocol_types() {
        let activation = tc_proto::activation::Activation {
            windows: vec![tc_proto::activation::Window {
                start: Timestamp::from_unix_millis(1_000),
                end: Timestamp::from_unix_millis(2_000),
            }],
            windowed: true,
            on_reboot: false,
            now: true,
        };
        let desired = tc_proto::DesiredState {
            activation: activation.clone(),
            revision: 7,
            packages: vec![tc_proto::DesiredPackage {
                name: "kiosk".into(),
                version: "1.0.0".into(),
                sha256: "ab".into(),
                size: 3,
                url: "/blobs/sha256/ab".into(),
                hooks: Default::default(),
                attempt: 0,
                signature: None,
            }],
            decommission: false,
        };
        let served = crate::fleet::Served {
            revision: desired.revision,
            packages: Arc::from(desired.packages.clone()),
            decommission: false,
            activation: Some(Arc::new(activation)),
        };
        let heartbeat = serde_json::to_value(HeartbeatAnswer {
            desired: served.view(),
            next_heartbeat_millis: 1234,
            send_inventory: true,
            tasks: Vec::new(),
        })
        .unwrap();
        let expected = serde_json::to_value(tc_proto::HeartbeatResponse {
            desired: desired.clone(),
            next_heartbeat_millis: 1234,
            send_inventory: true,
            tasks: Vec::new(),
        })
        .unwrap();
        assert_eq!(heartbeat, expected);
        for send_history in [false, true] {
            let long_poll = serde_json::to_value(DesiredAnswer {
                desired: served.view(),
                changed: true,
                send_history,
                tasks: Vec::new(),
            })
            .unwrap();
            let expected = serde_json::to_value(tc_proto::DesiredResponse {
                desired: desired.clone(),
                changed: true,
                send_history,
                tasks: Vec::new(),
            })
            .unwrap();
            assert_eq!(long_poll, expected);
        }
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let values: Vec<f64> = (0..100)
            .map(|i| jitter_fraction("c", Timestamp::from_unix_millis(i)))
            .collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        assert!(values.iter().any(|v| *v < 0.5) && values.iter().any(|v| *v >= 0.5));
    }
}
