//! Clients' load histories, fetched on demand.
//!
//! Nothing travels with heartbeats. When someone looks at a client
//! ([`Controller::client_history`], behind `GET /apis/thinfleet.io/v1/clients/{name}/history`
//! and the console), the controller marks the client's slot (one byte) and wakes that
//! client's long-poll only ([`crate::fleet::ClientSlot::request_history`]); the long-poll
//! answers with `sendHistory`, and the agent sends its history with one
//! `POST /agent/v1/history` ([`upload`]), which is checked, stored (one write: the last
//! history per client, so an offline client still shows its last one) and handed to the
//! requests waiting for it. A request waits at most [`MAX_WAIT_SECONDS`]; without an answer in
//! time, or for a client that is not online, it answers what is stored, with `fresh: false`.
//!
//! Waiting requests are kept in a map that is empty when no one is looking, so the fleet pays
//! nothing per client for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use tc_api::{ClientHistory, ClientPhase, Timestamp};
use tc_proto::history::HistoryUpload;
use tc_store::{StoreError, StoredHistory};
use tokio::sync::oneshot;

use crate::Controller;
use crate::enroll::AuthenticatedClient;
use crate::error::ApiError;

/// How long a request waits for a fresh history unless told otherwise, in seconds.
pub const DEFAULT_WAIT_SECONDS: u64 = 2;

/// The longest wait a request may ask for, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 10;

/// Where one waiting request gets the upload it waits for.
type Waiter = oneshot::Sender<Arc<StoredHistory>>;

/// Requests waiting for a client's upload, by client name. Empty unless someone is looking.
#[derive(Debug, Default)]
pub struct HistoryWaiters(Mutex<HashMap<Arc<str>, Vec<Waiter>>>);

impl HistoryWaiters {
    /// Waits for the next upload of `client`.
    fn register(&self, client: &Arc<str>) -> oneshot::Receiver<Arc<StoredHistory>> {
        let (sender, receiver) = oneshot::channel();
        self.0
            .lock()
            .expect("history waiters lock")
            .entry(client.clone())
            .or_default()
            .push(sender);
        receiver
    }

    /// Hands an upload of `client` to everyone waiting for it.
    fn deliver(&self, client: &str, history: &Arc<StoredHistory>) {
        let waiting = self
            .0
            .lock()
            .expect("history waiters lock")
            .remove(client)
            .unwrap_or_default();
        for sender in waiting {
            let _ = sender.send(history.clone());
        }
    }

    /// Drops the waits of `client` that gave up.
    fn forget_abandoned(&self, client: &str) {
        let mut waiters = self.0.lock().expect("history waiters lock");
        if let Some(senders) = waiters.get_mut(client) {
            senders.retain(|sender| !sender.is_closed());
            if senders.is_empty() {
                waiters.remove(client);
            }
        }
    }

    /// How many clients someone waits for.
    pub fn len(&self) -> usize {
        self.0.lock().expect("history waiters lock").len()
    }

    /// True when no one waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Controller {
    /// The load history of client `name`: for an online client, a fresh one from its agent if it
    /// answers within `wait`; otherwise (or with a zero wait, which still asks, for the next
    /// look) the last one stored. 404 for an unknown client.
    pub async fn client_history(
        &self,
        name: &str,
        wait: Duration,
    ) -> Result<ClientHistory, ApiError> {
        let slot = self
            .fleet
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("client/{name} not found")))?;
        let online = slot.state.lock().expect("client lock").status.phase == ClientPhase::Online;
        if online && wait.is_zero() {
            slot.request_history();
            self.announce_wakes(vec![name.to_string()]);
        } else if online {
            // Registered before asking, so that an answer cannot come before the wait.
            let arrived = self.history_waiters.register(&slot.name);
            slot.request_history();
            self.announce_wakes(vec![name.to_string()]);
            if let Ok(Ok(stored)) = tokio::time::timeout(wait, arrived).await {
                return Ok(ClientHistory::new(
                    name,
                    Some((stored.collected, &stored.history)),
                    true,
                    Timestamp::now(),
                ));
            }
            self.history_waiters.forget_abandoned(&slot.name);
        }
        let store = self.store.clone();
        let key = name.to_owned();
        let stored = tokio::task::spawn_blocking(move || store.get_history(&key)).await??;
        Ok(ClientHistory::new(
            name,
            stored
                .as_ref()
                .map(|stored| (stored.collected, &stored.history)),
            false,
            Timestamp::now(),
        ))
    }
}

/// Query of `GET .../clients/{name}/history`.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    /// Seconds to wait for a fresh history from an online client (0..=10, default 2).
    wait: Option<u64>,
}

/// `GET /apis/thinfleet.io/v1/clients/{name}/history`.
pub async fn get(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<ClientHistory>, ApiError> {
    let wait = query.wait.unwrap_or(DEFAULT_WAIT_SECONDS);
    if wait > MAX_WAIT_SECONDS {
        return Err(ApiError::bad_request(format!(
            "wait={wait}: a request waits at most {MAX_WAIT_SECONDS} seconds for a fresh history"
        )));
    }
    controller
        .client_history(&name, Duration::from_secs(wait))
        .await
        .map(Json)
}

/// `POST /agent/v1/history`: the load history the controller asked this client for. Refused,
/// with nothing stored: a history of another client (403), one that breaks the limits (400, or
/// 413 for too many samples), and one nobody asked for (409).
pub async fn upload(
    State(controller): State<Arc<Controller>>,
    AuthenticatedClient(slot): AuthenticatedClient,
    Json(upload): Json<HistoryUpload>,
) -> Result<Json<Value>, ApiError> {
    if upload.client_name != *slot.name {
        return Err(ApiError::forbidden(format!(
            "this session is client/{}; a load history of client/{} is not accepted",
            slot.name, upload.client_name
        )));
    }
    let now = Timestamp::now();
    let history = tc_proto::history::check_upload(&upload, &slot.name, now)?;
    if !slot.take_history_upload() {
        return Err(ApiError::conflict(format!(
            "no load history was asked of client/{}; it is sent when the long-poll answer says \
             sendHistory",
            slot.name
        )));
    }
    let count = history.samples.len();
    let stored = Arc::new(StoredHistory {
        collected: now,
        history,
    });
    let store = controller.store.clone();
    let name = slot.name.clone();
    let record = stored.clone();
    match tokio::task::spawn_blocking(move || store.put_history(&name, &record)).await? {
        Ok(()) => {}
        Err(StoreError::NotFound { .. }) => {
            return Err(ApiError::not_found(format!(
                "client/{} was deleted",
                slot.name
            )));
        }
        Err(error) => return Err(error.into()),
    }
    controller.history_waiters.deliver(&slot.name, &stored);
    Ok(Json(json!({ "samples": count })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Arc<StoredHistory> {
        Arc::new(StoredHistory {
            collected: Timestamp::EPOCH,
            history: tc_proto::history::LoadHistory {
                interval_seconds: 60,
                end: Timestamp::EPOCH,
                samples: vec![],
            },
        })
    }

    #[test]
    fn waits_are_handed_the_upload_and_abandoned_ones_are_dropped() {
        let waiters = HistoryWaiters::default();
        let a: Arc<str> = Arc::from("a");
        let mut first = waiters.register(&a);
        let second = waiters.register(&a);
        drop(second);
        waiters.forget_abandoned("a");
        assert_eq!(waiters.len(), 1, "the live wait stays");
        waiters.deliver("a", &stored());
        assert!(first.try_recv().is_ok());
        assert!(waiters.is_empty());
        let third = waiters.register(&a);
        drop(third);
        waiters.forget_abandoned("a");
        assert!(
            waiters.is_empty(),
            "nothing is kept for a client no one looks at"
        );
    }
}
