//! The agent protocol (`/agent/v1`): enrolment, heartbeats and the desired-state long-poll.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tc_api::{
    Client, ClientPhase, ClientSpec, Event, EventType, Kind, ObjectRef, PackageState, Timestamp,
};
use tc_proto::{EnrollRequest, EnrollResponse, HeartbeatRequest, PackageReport, ReleaseInfo};
use tc_store::ClientStatusEntry;

use crate::error::ApiError;
use crate::fleet::{ClientSlot, DesiredView, Labels, token_digest};
use crate::{Controller, tokens};

/// Longest accepted machine id, name or label map, so that a hostile agent cannot grow the store.
const MAX_FIELD: usize = 253;

/// Authenticates an agent request; 401 without or with an unknown token, 403 for the admin token.
pub fn authenticate_client(
    controller: &Controller,
    headers: &HeaderMap,
) -> Result<Arc<ClientSlot>, ApiError> {
    let token = tokens::bearer(headers)
        .ok_or_else(|| ApiError::unauthorized("missing bearer token: enrol the agent first"))?;
    if let Some(slot) = controller.fleet.by_token_digest(&token_digest(token)) {
        return Ok(slot);
    }
    if tokens::hash(token) == controller.admin_token_hash {
        return Err(ApiError::forbidden(
            "the admin token cannot be used on agent routes",
        ));
    }
    Err(ApiError::unauthorized(
        "unknown client token: the client was deleted or re-enrolled; enrol again",
    ))
}

/// The client an agent request authenticates as: an extractor that reads the bearer token in
/// place (the `HeaderMap` extractor would copy every header of every agent request).
pub struct AuthenticatedClient(pub Arc<ClientSlot>);

impl FromRequestParts<Arc<Controller>> for AuthenticatedClient {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        controller: &Arc<Controller>,
    ) -> Result<Self, Self::Rejection> {
        authenticate_client(controller, &parts.headers).map(AuthenticatedClient)
    }
}

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

/// `POST /agent/v1/enroll`.
pub async fn enroll(
    State(controller): State<Arc<Controller>>,
    Json(request): Json<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    if !controller.is_bootstrap_token(&request.bootstrap_token) {
        return Err(ApiError::unauthorized("invalid bootstrap token"));
    }
    let machine_id = request.machine_id.trim().to_string();
    if machine_id.is_empty() || machine_id.len() > MAX_FIELD {
        return Err(ApiError::bad_request(
            "machineId must be 1 to 253 characters",
        ));
    }
    let mut errors = tc_api::validate::Errors::default();
    tc_api::validate::validate_labels(&request.labels, "labels", &mut errors);
    if let Err(errors) = errors.into_result() {
        return Err(ApiError::bad_request(format!(
            "invalid agent labels: {errors}"
        )));
    }
    let token = tokens::generate();
    let token_hash = tokens::hash(&token);
    let now = Timestamp::now();
    let _guard = controller.enroll_lock.lock().await;
    let store = controller.store.clone();
    let lookup_id = machine_id.clone();
    let existing =
        tokio::task::spawn_blocking(move || store.client_by_machine_id(&lookup_id)).await??;
    let client = match existing {
        Some(mut client) => {
            let store = controller.store.clone();
            let (name, hash) = (client.metadata.name.clone(), token_hash.clone());
            tokio::task::spawn_blocking(move || store.set_client_token(&name, &hash)).await??;
            // The live labels and status (newer than the stored ones), the stored inventory.
            if let Some(slot) = controller.fleet.get(&client.metadata.name) {
                client = slot.state.lock().expect("client lock").overlay(client);
            }
            client.spec.agent_labels = request.labels.clone();
            client.refresh_labels();
            controller
                .persister
                .write_objects(vec![client.clone()])
                .await
                .map_err(ApiError::internal)?;
            controller.fleet.insert(&client, Some(token_hash));
            client
        }
        None => {
            let base = client_name(&request.name, &request.hostname);
            let mut name = base.clone();
            let mut suffix = 2;
            while controller.fleet.get(&name).is_some() {
                let tail = format!("-{suffix}");
                name = format!(
                    "{}{tail}",
                    &base[..base.len().min(63 - tail.len())].trim_end_matches('-')
                );
                suffix += 1;
            }
            let client = Client::new(
                &name,
                ClientSpec {
                    machine_id,
                    agent_labels: request.labels.clone(),
                    admin_labels: BTreeMap::new(),
                },
            );
            let store = controller.store.clone();
            let hash = token_hash.clone();
            let client =
                tokio::task::spawn_blocking(move || store.create_client(client, &hash, now))
                    .await??;
            controller.fleet.insert(&client, Some(token_hash));
            client
        }
    };
    drop(_guard);
    let enrolled = Event::new(
        now,
        ObjectRef::new(Kind::Client, &client.metadata.name),
        EventType::Normal,
        "Enrolled",
        format!("agent on {} enrolled", request.hostname),
    );
    // Concurrent enrolments record their events in one transaction.
    if let Err(error) = controller
        .persister
        .write_statuses(vec![], vec![enrolled])
        .await
    {
        tracing::error!(%error, "recording an enrolment event failed");
    }
    controller.metrics.enrolments.inc();
    controller.clients_changed.notify_one();
    let heartbeat_seconds = controller
        .fleet
        .get(&client.metadata.name)
        .map(|s| s.state.lock().expect("client lock").heartbeat_seconds)
        .unwrap_or(tc_api::resources::DEFAULT_HEARTBEAT_SECONDS);
    Ok(Json(EnrollResponse {
        client_name: client.metadata.name,
        client_token: token,
        heartbeat_seconds,
    }))
}

/// A valid client name from what the agent asked for.
fn client_name(requested: &str, hostname: &str) -> String {
    let source = if requested.trim().is_empty() {
        hostname
    } else {
        requested
    };
    let mut name: String = source
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    name = name
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if name.is_empty() {
        "client".to_string()
    } else {
        name
    }
}

/// The body of a heartbeat answer: [`tc_proto::HeartbeatResponse`] serialized from the client's
/// shared desired state, without copying it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HeartbeatAnswer<'a> {
    desired: DesiredView<'a>,
    next_heartbeat_millis: u64,
    send_inventory: bool,
}

/// The body of a long-poll answer: [`tc_proto::DesiredResponse`] without copying the state.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DesiredAnswer<'a> {
    desired: DesiredView<'a>,
    changed: bool,
}

/// A JSON response from a value that borrows (axum's `Json` needs an owned one).
fn json_response(value: &impl Serialize) -> Response {
    // Room for a typical answer, so that writing it does not grow the buffer step by step.
    let mut body = Vec::with_capacity(1024);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(error) => ApiError::internal(error).into_response(),
    }
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
    if request.packages.len() > 1024 {
        return Err(ApiError::bad_request("too many packages in one report"));
    }
    let now = Timestamp::now();
    let mut events = vec![];
    let (persist, wake, served, next_heartbeat_millis, send_inventory) = {
        let mut guard = slot.state.lock().expect("client lock");
        let state = &mut *guard;
        let name = &*slot.name;
        let status = &mut state.status;
        let mut changed = false;
        let mut wake = false;
        if status.phase != ClientPhase::Online {
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
    if wake {
        controller.clients_changed.notify_one();
    }
    controller.metrics.heartbeats.inc();
    Ok(json_response(&HeartbeatAnswer {
        desired: served.view(),
        next_heartbeat_millis,
        send_inventory,
    }))
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
    if slot.revision.get() <= after {
        let closing = controller.fleet.closing();
        let _ = tokio::time::timeout(wait, slot.revision.wait_newer(after, closing)).await;
    }
    let served = slot.state.lock().expect("client lock").served.clone();
    Ok(json_response(&DesiredAnswer {
        changed: served.revision > after,
        desired: served.view(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_names_are_sanitized() {
        assert_eq!(
            client_name("", "Kiosk_01.example.com"),
            "kiosk-01.example.com"
        );
        assert_eq!(client_name("Front Desk", "h"), "front-desk");
        assert_eq!(client_name("--", ""), "client");
        assert_eq!(client_name(&"a".repeat(100), "").len(), 63);
    }

    #[test]
    fn borrowed_answers_serialize_like_the_protocol_types() {
        let desired = tc_proto::DesiredState {
            revision: 7,
            packages: vec![tc_proto::DesiredPackage {
                name: "kiosk".into(),
                version: "1.0.0".into(),
                sha256: "ab".into(),
                size: 3,
                url: "/blobs/sha256/ab".into(),
                hooks: Default::default(),
                attempt: 0,
            }],
        };
        let served = crate::fleet::Served {
            revision: desired.revision,
            packages: Arc::from(desired.packages.clone()),
        };
        let heartbeat = serde_json::to_value(HeartbeatAnswer {
            desired: served.view(),
            next_heartbeat_millis: 1234,
            send_inventory: true,
        })
        .unwrap();
        let expected = serde_json::to_value(tc_proto::HeartbeatResponse {
            desired: desired.clone(),
            next_heartbeat_millis: 1234,
            send_inventory: true,
        })
        .unwrap();
        assert_eq!(heartbeat, expected);
        let long_poll = serde_json::to_value(DesiredAnswer {
            desired: served.view(),
            changed: true,
        })
        .unwrap();
        let expected = serde_json::to_value(tc_proto::DesiredResponse {
            desired: desired.clone(),
            changed: true,
        })
        .unwrap();
        assert_eq!(long_poll, expected);
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
