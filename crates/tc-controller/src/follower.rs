//! Followers: the replicas of a PostgreSQL store that do not hold the leader lease serve too.
//!
//! One replica leads (see [`crate::leader`]): it alone runs the reconcile pass, the task loop,
//! the watched directory, and it alone writes. Every other replica is a follower, and serves on
//! its own address:
//!
//! * **long-polls** (`GET /agent/v1/desired`): the agent's connection waits on the follower,
//!   which wakes it when the client's desired revision moves or an order or a load history is
//!   wanted of it, as the change feed says; the answer itself is then asked of the leader, so that
//!   every agent is answered exactly what the leader serves (packages, activation windows, task
//!   orders), whichever replica it waits on;
//! * **blobs**, to agents (by their session) and to anyone when blobs are public, straight from
//!   the database;
//! * `/healthz`, `/readyz` (ready once its fleet is loaded and a leader is known) and `/metrics`
//!   (its own counters);
//! * **everything else** (the admin API, the console, enrolments, sessions, heartbeats, task
//!   reports, load histories) is forwarded to the leader as it came, streamed both ways, with the
//!   address it came from vouched for by the key the replicas share, so that the leader's
//!   per-source limits and audit trail see the real source.
//!
//! **The change feed.** Every transaction of the leader that writes a client, an object or a
//! setting also records a change (`changes`, in the same transaction) and notifies
//! `thinfleet_changes`. A follower listens on a connection of its own, and reads the changes after
//! the last one it applied: when notified, and every second in any case. A lost notification
//! connection is opened again, and meanwhile the once-a-second read goes on, so a follower never
//! stalls; one that fell behind what the leader keeps (changes are kept 10 minutes) loads every
//! client again. Clients named by a change are read again from the database.
//!
//! **Answers in batches.** The long-polls a follower answers at about the same time (a change to
//! the whole fleet wakes them all) are asked of the leader together: one request
//! (`POST /internal/v1/desired`, authenticated with the key the replicas share) names up to
//! [`MAX_BATCH`] clients, and the leader answers each one's long-poll as it would its own, one JSON
//! answer a line. Should that fail, each long-poll is forwarded on its own.
//!
//! **Taking over.** A follower tries to take the lease every second. When it does, it stops
//! following (its long-polls end, the agents poll again at once) and opens as the leader.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tc_api::{Client, Timestamp};
use tc_store::{PgStore, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::blobs::BlobStore;
use crate::error::ApiError;
use crate::fleet::{ClientSlot, Fleet};
use crate::session::SessionKey;
use crate::{Config, ServeError, TlsMode, leader, tokens};

/// The header carrying the address a follower forwards a request for.
pub const FORWARDED_FOR: &str = "x-thinfleet-forwarded-for";
/// The header carrying the shared key's tag of [`FORWARDED_FOR`].
pub const FORWARDED_TAG: &str = "x-thinfleet-forwarded-tag";
/// The purpose the tag of a forwarded address is made for.
const FORWARDED_PURPOSE: &str = "forwarded-for";

/// The purpose of the tag a follower authenticates its batches with.
const BATCH_PURPOSE: &str = "replica-long-polls";
/// The most long-polls asked of the leader in one batch.
pub const MAX_BATCH: usize = 2_000;
/// How long a follower gathers woken long-polls before it asks the leader for their answers.
const GATHER: Duration = Duration::from_millis(2);

/// How often a follower reads the change feed when no notification came, and tries the lease.
const POLL: Duration = Duration::from_secs(1);
/// Changes read at a time.
const PAGE: usize = 10_000;
/// How long the leader keeps changes: a follower further behind loads every client again.
pub const CHANGES_KEPT: Duration = Duration::from_secs(600);

/// A follower's state.
pub struct Follower {
    config: Config,
    store: Arc<PgStore>,
    /// The clients, as the database has them: their uids and credential generations (sessions)
    /// and desired revisions (long-polls).
    fleet: Arc<Fleet>,
    session_key: SessionKey,
    blobs: BlobStore,
    /// Forwards requests to the leader.
    http: reqwest::Client,
    /// Where the leader serves, as its lease row says.
    leader: RwLock<Option<String>>,
    /// The sequence number of the last change applied.
    applied: AtomicU64,
    /// Set once the fleet is loaded.
    synced: AtomicBool,
    /// Long-polls whose answers are to be asked of the leader; `None` once the follower stops
    /// (a long-poll woken then is answered 503 at once, so that stopping never waits for it).
    batch: std::sync::Mutex<Option<Vec<Pending>>>,
    /// Wakes the batch sender.
    batch_ready: tokio::sync::Notify,
    counters: Counters,
}

/// A woken long-poll waiting for the leader's answer.
struct Pending {
    client: Arc<str>,
    after: u64,
    wait_millis: u64,
    /// The agent's request, forwarded as it is should the batch fail.
    request: Request,
    peer: SocketAddr,
    reply: tokio::sync::oneshot::Sender<Response>,
}

#[derive(Default)]
struct Counters {
    changes: AtomicU64,
    resyncs: AtomicU64,
    forwarded: AtomicU64,
    forward_failures: AtomicU64,
    batches: AtomicU64,
    long_polls: AtomicU64,
    feed_errors: AtomicU64,
}

/// How [`follow_until_leading`] ended.
pub enum Ended {
    /// This replica holds the lease now: it opens as the leader.
    Leading,
    /// Asked to stop.
    Stopped,
}

/// This replica's own address for the others, from `--advertise-url`, else from the address it
/// listens on (none when that is unspecified: 0.0.0.0 or ::).
pub fn advertised_url(config: &Config, addr: SocketAddr) -> Option<String> {
    if let Some(url) = &config.advertise_url {
        return Some(url.trim_end_matches('/').to_string());
    }
    if addr.ip().is_unspecified() {
        return None;
    }
    let scheme = if matches!(config.tls, TlsMode::Disabled) {
        "http"
    } else {
        "https"
    };
    Some(format!("{scheme}://{addr}"))
}

/// A client for the leader: trusting the replicas' shared CA (or the chain of `--tls-cert`).
fn leader_client(config: &Config) -> Result<reqwest::Client, ServeError> {
    let builder = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(30));
    let trusted = match &config.tls {
        TlsMode::Disabled => None,
        TlsMode::Generated { .. } => Some(config.data_dir.join("pki/ca.crt")),
        TlsMode::Files { cert, .. } => Some(cert.clone()),
    };
    let builder = match trusted {
        None => builder,
        Some(path) => {
            let certificates = tc_trust::read_pem_certificates(&path)
                .map_err(|e| ServeError::Replica(format!("{}: {e}", path.display())))?;
            let tls = tc_trust::client_config(
                &tc_trust::Trust::CaCertificates(certificates),
                &[tc_trust::ALPN_HTTP1],
                None,
            )
            .map_err(|e| ServeError::Replica(format!("{}: {e}", path.display())))?;
            builder.use_preconfigured_tls(tls)
        }
    };
    builder
        .build()
        .map_err(|e| ServeError::Server(std::io::Error::other(e)))
}

async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, tc_store::StoreError> + Send + 'static,
) -> Result<T, ServeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ServeError::Server(std::io::Error::other(format!("{what}: {e}"))))?
        .map_err(ServeError::Store)
}

/// Serves as a follower on `listener` while another replica leads, until this replica takes the
/// lease (as `holder`, recording `url`) or `shutdown` completes. Returns at once when the lease
/// is free.
pub async fn follow_until_leading(
    listener: &TcpListener,
    config: &Config,
    holder: &str,
    url: Option<String>,
    shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> Result<Ended, ServeError> {
    let tc_store_location = match &config.store {
        crate::store::StoreLocation::Postgres(settings) => settings.clone(),
        crate::store::StoreLocation::Redb => return Ok(Ended::Leading),
    };
    let store =
        Arc::new(blocking("open the store", move || PgStore::open(&tc_store_location)).await?);
    crate::store::log_encryption(&store);
    let try_lease = {
        let (store, holder, url) = (store.clone(), holder.to_string(), url.clone());
        move || {
            let (store, holder, url) = (store.clone(), holder.clone(), url.clone());
            blocking("take the leader lease", move || {
                store.acquire_lease_serving(&holder, url.as_deref(), leader::LEASE_TTL)
            })
        }
    };
    loop {
        match try_lease().await {
            Ok(tc_store::LeaseState::Held { .. }) => return Ok(Ended::Leading),
            Ok(tc_store::LeaseState::HeldBy { holder: leader, .. }) => {
                tracing::info!(replica = %holder, %leader,
                    "another replica leads: this one follows and serves");
                break;
            }
            Err(error) => tracing::warn!(replica = %holder, %error,
                "cannot reach the database to take the leader lease; trying again"),
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = &mut *shutdown => return Ok(Ended::Stopped),
        }
    }
    // The files the replicas share are checked before anything is served (or generated: the
    // TLS set-up below would make a CA of its own where the shared one is missing).
    let admin_path = config.data_dir.join("admin.token");
    crate::datadir::create_dir(&config.data_dir).map_err(|source| ServeError::Io {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let (admin_token, _) =
        tokens::load_or_create(&admin_path).map_err(|source| ServeError::Io {
            path: admin_path.display().to_string(),
            source,
        })?;
    let files = leader::shared_files(config, &admin_token)?;
    let checked = store.clone();
    tokio::task::spawn_blocking(move || leader::check_shared_files(&*checked, &files))
        .await
        .map_err(|e| ServeError::Server(std::io::Error::other(e)))??;
    let session_key =
        SessionKey::load_or_create(&config.data_dir).map_err(|source| ServeError::Io {
            path: config
                .data_dir
                .join(crate::session::SESSION_KEY_FILE)
                .display()
                .to_string(),
            source,
        })?;
    let server_tls = crate::setup_tls(config).await?;
    let blobs = BlobStore::open_postgres(&config.data_dir, config.max_blob_bytes, store.clone())
        .map_err(|source| ServeError::Io {
            path: config.data_dir.display().to_string(),
            source,
        })?;
    let follower = Arc::new(Follower {
        config: config.clone(),
        store: store.clone(),
        fleet: Arc::new(Fleet::default()),
        session_key,
        blobs,
        http: leader_client(config)?,
        leader: RwLock::new(None),
        applied: AtomicU64::new(0),
        synced: AtomicBool::new(false),
        batch: std::sync::Mutex::new(Some(Vec::new())),
        batch_ready: tokio::sync::Notify::new(),
        counters: Counters::default(),
    });
    let (stop, stopping) = watch::channel(false);
    let feed = tokio::spawn(follow_changes(follower.clone(), stopping.clone()));
    let batches = tokio::spawn(send_batches(follower.clone(), stopping.clone()));
    let (led_tx, mut led_rx) = tokio::sync::oneshot::channel::<()>();
    let lease = tokio::spawn({
        let follower = follower.clone();
        let mut stopping = stopping.clone();
        async move {
            loop {
                match try_lease().await {
                    Ok(tc_store::LeaseState::Held { .. }) => {
                        let _ = led_tx.send(());
                        return;
                    }
                    Ok(tc_store::LeaseState::HeldBy { .. }) => {
                        let store = follower.store.clone();
                        if let Ok(Ok(leader)) =
                            tokio::task::spawn_blocking(move || store.leader()).await
                        {
                            *follower.leader.write().expect("leader lock") =
                                leader.and_then(|(_, url)| url);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot reach the database to take the leader lease")
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    _ = stopping.changed() => return,
                }
            }
        }
    });
    let app = router(follower.clone());
    let mut limits = config.limits();
    limits.idle_timeout = limits
        .idle_timeout
        .max(config.long_poll_max + Duration::from_secs(5));
    let led = Arc::new(AtomicBool::new(false));
    crate::server::run(
        listener,
        app,
        server_tls.as_ref().map(|tls| tls.config.clone()),
        limits,
        Arc::new(crate::server::ConnectionMetrics::default()),
        {
            let (led, fleet) = (led.clone(), follower.fleet.clone());
            async move {
                tokio::select! {
                    () = shutdown => {}
                    Ok(()) = &mut led_rx => {
                        tracing::info!("took the leader lease: this replica stops following and leads");
                        led.store(true, Ordering::SeqCst);
                    }
                }
                let _ = stop.send(true);
                fleet.close();
            }
        },
    )
    .await;
    let _ = feed.await;
    let _ = batches.await;
    let _ = lease.await;
    Ok(if led.load(Ordering::SeqCst) {
        Ended::Leading
    } else {
        Ended::Stopped
    })
}

/// A follower's routes.
fn router(follower: Arc<Follower>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/agent/v1/desired", get(desired))
        .route("/blobs/sha256/{hex}", get(blob).head(blob))
        .fallback(forward_any)
        .layer(axum::middleware::from_fn(crate::error::json_errors))
        .with_state(follower)
}

async fn readyz(State(follower): State<Arc<Follower>>) -> Response {
    if !follower.synced.load(Ordering::SeqCst) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "following: loading the fleet",
        )
        .into_response();
    }
    if follower.leader_url().is_none() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "following: no leader address known (the leader needs --advertise-url)",
        )
        .into_response();
    }
    "ok".into_response()
}

async fn metrics(State(follower): State<Arc<Follower>>) -> Response {
    let c = &follower.counters;
    let lines = [
        ("thinfleet_replica_leading", "gauge", 0),
        (
            "thinfleet_follower_clients",
            "gauge",
            follower.fleet.len() as u64,
        ),
        (
            "thinfleet_follower_changes_applied_total",
            "counter",
            c.changes.load(Ordering::Relaxed),
        ),
        (
            "thinfleet_follower_last_change",
            "gauge",
            follower.applied.load(Ordering::Relaxed),
        ),
        (
            "thinfleet_follower_resyncs_total",
            "counter",
            c.resyncs.load(Ordering::Relaxed),
        ),
        (
            "thinfleet_follower_feed_errors_total",
            "counter",
            c.feed_errors.load(Ordering::Relaxed),
        ),
        (
            "thinfleet_follower_forwarded_total",
            "counter",
            c.forwarded.load(Ordering::Relaxed),
        ),
        (
            "thinfleet_follower_forward_failures_total",
            "counter",
            c.forward_failures.load(Ordering::Relaxed),
        ),
        (
            "thinfleet_follower_batches_total",
            "counter",
            c.batches.load(Ordering::Relaxed),
        ),
        (
            "thinfleet_follower_long_polls_total",
            "counter",
            c.long_polls.load(Ordering::Relaxed),
        ),
    ];
    let mut text = String::new();
    for (name, kind, value) in lines {
        text.push_str(&format!("# TYPE {name} {kind}\n{name} {value}\n"));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

impl Follower {
    fn leader_url(&self) -> Option<String> {
        self.leader.read().expect("leader lock").clone()
    }

    /// The client an agent's session names, when this follower knows it and the session is
    /// good; anything else is for the leader to decide.
    fn local_client(&self, headers: &HeaderMap) -> Option<Arc<ClientSlot>> {
        let token = tokens::bearer(headers)?;
        let claims = self.session_key.verify(token, Timestamp::now()).ok()?;
        let slot = self.fleet.by_uid(claims.uid)?;
        (slot.generation() == claims.generation && !slot.is_removed()).then_some(slot)
    }
}

/// The query of a long-poll.
fn long_poll_query(query: Option<&str>) -> (u64, Option<u64>) {
    let (mut after, mut timeout) = (0, None);
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("afterRevision", value)) => after = value.parse().unwrap_or(0),
            Some(("timeoutSeconds", value)) => timeout = value.parse().ok(),
            _ => {}
        }
    }
    (after, timeout)
}

/// `GET /agent/v1/desired` on a follower: waits here, then asks the leader for the answer.
async fn desired(
    State(follower): State<Arc<Follower>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let Some(slot) = follower.local_client(request.headers()) else {
        return forward(&follower, peer, request).await;
    };
    follower.counters.long_polls.fetch_add(1, Ordering::Relaxed);
    let (after, timeout) = long_poll_query(request.uri().query());
    let limit = follower.config.long_poll_max;
    let wait = timeout.map_or(limit, |s| Duration::from_secs(s).min(limit));
    let started = Instant::now();
    let wanted = || slot.task_offered() || slot.is_removed();
    if slot.revision.get() <= after && !wanted() {
        let closing = follower.fleet.closing();
        let waiting = slot.revision.wait_newer_or(after, closing, wanted);
        let _ = tokio::time::timeout(wait, waiting).await;
    }
    slot.take_task_offer();
    // A newer revision is committed: the leader answers once it serves it (at once, or within
    // what is left of the wait). Otherwise it answers at once with what it serves.
    let wait_millis = if slot.revision.get() > after {
        (wait.saturating_sub(started.elapsed()).as_millis() as u64).max(1000)
    } else {
        0
    };
    // Forwarded on its own should the batch fail: with the wait the leader is to do.
    let path = format!(
        "/agent/v1/desired?afterRevision={after}&timeoutSeconds={}",
        wait_millis.div_ceil(1000)
    );
    if let Ok(uri) = path.parse() {
        *request.uri_mut() = uri;
    }
    let stopping = || {
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this replica stops following (it leads next, or shuts down): poll again",
        )
        .with_reason("LeaderUnavailable")
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    };
    let (reply, answered) = tokio::sync::oneshot::channel();
    match follower.batch.lock().expect("batch lock").as_mut() {
        Some(queue) => queue.push(Pending {
            client: slot.name.clone(),
            after,
            wait_millis,
            request,
            peer,
            reply,
        }),
        None => return stopping(),
    }
    follower.batch_ready.notify_one();
    answered.await.unwrap_or_else(|_| stopping())
}

/// Sends the woken long-polls to the leader in batches, until `stop`.
async fn send_batches(follower: Arc<Follower>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = follower.batch_ready.notified() => {}
            _ = stop.changed() => {
                // Whatever waits is answered by its own forward; nothing waits from now on.
                let left = follower.batch.lock().expect("batch lock").take().unwrap_or_default();
                for pending in left {
                    let follower = follower.clone();
                    tokio::spawn(async move { forward_one(&follower, pending).await });
                }
                return;
            }
        }
        tokio::time::sleep(GATHER).await;
        loop {
            let taken: Vec<Pending> = match follower.batch.lock().expect("batch lock").as_mut() {
                Some(queue) => {
                    let n = queue.len().min(MAX_BATCH);
                    queue.drain(..n).collect()
                }
                None => Vec::new(),
            };
            if taken.is_empty() {
                break;
            }
            tokio::spawn(send_batch(follower.clone(), taken));
        }
    }
}

async fn forward_one(follower: &Follower, pending: Pending) {
    let response = forward(follower, pending.peer, pending.request).await;
    let _ = pending.reply.send(response);
}

/// The bearer token a follower asks the leader for long-poll answers with: a tag of the key the
/// replicas share.
pub fn replica_token(session_key: &SessionKey) -> String {
    session_key.vouch(BATCH_PURPOSE, "")
}

/// One entry of a batch: a client's long-poll after `after_revision`, waiting at most
/// `wait_millis` for a newer revision.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchEntry {
    client: String,
    after_revision: u64,
    wait_millis: u64,
}

/// Asks the leader for the answers of `batch`'s long-polls in one request; each one it cannot
/// answer so (or all, when the request fails) is forwarded on its own.
async fn send_batch(follower: Arc<Follower>, batch: Vec<Pending>) {
    follower.counters.batches.fetch_add(1, Ordering::Relaxed);
    let Some(base) = follower.leader_url() else {
        for pending in batch {
            forward_one(&follower, pending).await;
        }
        return;
    };
    let entries: Vec<BatchEntry> = batch
        .iter()
        .map(|pending| BatchEntry {
            client: pending.client.to_string(),
            after_revision: pending.after,
            wait_millis: pending.wait_millis,
        })
        .collect();
    let answered = async {
        let response = follower
            .http
            .post(format!("{base}/internal/v1/desired"))
            .bearer_auth(replica_token(&follower.session_key))
            .header(header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&entries).ok()?)
            .send()
            .await
            .ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        response.bytes().await.ok()
    }
    .await;
    let lines: Vec<&[u8]> = match &answered {
        Some(body) => body
            .split(|&byte| byte == b'\n')
            .filter(|line| !line.is_empty())
            .collect(),
        None => Vec::new(),
    };
    let complete = lines.len() == batch.len();
    for (index, pending) in batch.into_iter().enumerate() {
        match lines
            .get(index)
            .filter(|line| complete && **line != b"null")
        {
            Some(line) => {
                let response = (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    line.to_vec(),
                )
                    .into_response();
                let _ = pending.reply.send(response);
            }
            None => {
                let follower = follower.clone();
                tokio::spawn(async move { forward_one(&follower, pending).await });
            }
        }
    }
}

/// `POST /internal/v1/desired` on the leader: the answers of a follower's long-polls, one JSON
/// answer a line in the order asked (`null` for a client it does not know). Only a replica (the
/// shared key) may ask.
pub async fn answer_batch(
    State(controller): State<Arc<crate::Controller>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let vouched = tokens::bearer(&headers)
        .is_some_and(|token| controller.session_key.vouches(BATCH_PURPOSE, "", token));
    if !vouched {
        return ApiError::unauthorized(
            "only a replica of this controller may ask for long-poll answers",
        )
        .into_response();
    }
    let entries: Vec<BatchEntry> = match serde_json::from_slice(&body) {
        Ok(entries) => entries,
        Err(error) => {
            return ApiError::bad_request(format!("a batch of long-polls: {error}"))
                .into_response();
        }
    };
    if entries.len() > MAX_BATCH {
        return ApiError::bad_request(format!("at most {MAX_BATCH} long-polls a batch"))
            .into_response();
    }
    let limit = controller.config.long_poll_max;
    let mut answers: Vec<Option<Vec<u8>>> = vec![None; entries.len()];
    let mut waits = tokio::task::JoinSet::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let Some(slot) = controller.fleet.get(&entry.client) else {
            continue;
        };
        let after = entry.after_revision;
        let wanted = || slot.history_wanted() || slot.task_offered();
        if slot.revision.get() > after || wanted() || entry.wait_millis == 0 {
            answers[index] = crate::agent::desired_answer(&controller, &slot, after).ok();
            continue;
        }
        let controller = controller.clone();
        let wait = Duration::from_millis(entry.wait_millis).min(limit);
        waits.spawn(async move {
            let closing = controller.fleet.closing();
            let wanted = || slot.history_wanted() || slot.task_offered();
            let _ = tokio::time::timeout(wait, slot.revision.wait_newer_or(after, closing, wanted))
                .await;
            (
                index,
                crate::agent::desired_answer(&controller, &slot, after).ok(),
            )
        });
    }
    while let Some(done) = waits.join_next().await {
        if let Ok((index, answer)) = done {
            answers[index] = answer;
        }
    }
    let mut text = Vec::with_capacity(answers.len() * 512);
    for answer in answers {
        match answer {
            Some(answer) => text.extend_from_slice(&answer),
            None => text.extend_from_slice(b"null"),
        }
        text.push(b'\n');
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        text,
    )
        .into_response()
}

/// `GET`/`HEAD /blobs/sha256/{hex}` on a follower: served from the database to agents (and to
/// anyone with public blobs); other readers (admins, the console) are the leader's to check.
async fn blob(
    State(follower): State<Arc<Follower>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(hex): Path<String>,
    request: Request,
) -> Response {
    if follower.config.public_blobs || follower.local_client(request.headers()).is_some() {
        let (method, headers) = (request.method().clone(), request.headers().clone());
        return match crate::api::answer_blob(&follower.blobs, &hex, &method, &headers, |_| {}).await
        {
            Ok(response) => response,
            Err(error) => error.into_response(),
        };
    }
    forward(&follower, peer, request).await
}

async fn forward_any(
    State(follower): State<Arc<Follower>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    forward(&follower, peer, request).await
}

/// Headers that belong to one connection, not to the request or response (RFC 9110 §7.6.1).
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    ) || name.as_str() == FORWARDED_FOR
        || name.as_str() == FORWARDED_TAG
}

/// Forwards `request` to the leader as it came and streams its answer back; 503 (with
/// `Retry-After`) when no leader is known or it cannot be reached.
async fn forward(follower: &Follower, peer: SocketAddr, request: Request) -> Response {
    let unavailable = |message: String| {
        let mut response = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
            .with_reason("LeaderUnavailable")
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        response
    };
    let Some(base) = follower.leader_url() else {
        return unavailable(
            "this replica follows and knows no address of the leader yet (the leader needs \
             --advertise-url)"
                .into(),
        );
    };
    let (parts, body) = request.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let mut outgoing = follower
        .http
        .request(parts.method.clone(), format!("{base}{target}"));
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            outgoing = outgoing.header(name, value);
        }
    }
    let source = peer.to_string();
    outgoing = outgoing.header(FORWARDED_FOR, &source).header(
        FORWARDED_TAG,
        follower.session_key.vouch(FORWARDED_PURPOSE, &source),
    );
    let has_body = parts.headers.contains_key(header::CONTENT_LENGTH)
        || parts.headers.contains_key(header::TRANSFER_ENCODING);
    if has_body {
        outgoing = outgoing.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    follower.counters.forwarded.fetch_add(1, Ordering::Relaxed);
    match outgoing.send().await {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                if !hop_by_hop(name) {
                    response = response.header(name, value);
                }
            }
            response
                .body(Body::from_stream(answer.bytes_stream()))
                .unwrap_or_else(|error| {
                    ApiError::internal(format!("forwarded answer: {error}")).into_response()
                })
        }
        Err(error) => {
            follower
                .counters
                .forward_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(leader = %base, %error, "cannot forward a request to the leader");
            unavailable(format!("the leader ({base}) cannot be reached: {error}"))
        }
    }
}

/// On the leader: a request a follower forwarded comes from the address the follower vouches
/// for (with the key the replicas share); the headers are dropped from anything else.
pub async fn trust_forwarded(
    State(controller): State<Arc<crate::Controller>>,
    mut request: Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers_mut();
    let source = headers
        .remove(FORWARDED_FOR)
        .and_then(|value| value.to_str().ok().map(str::to_string));
    let tag = headers
        .remove(FORWARDED_TAG)
        .and_then(|value| value.to_str().ok().map(str::to_string));
    if let (Some(source), Some(tag)) = (source, tag)
        && controller
            .session_key
            .vouches(FORWARDED_PURPOSE, &source, &tag)
        && let Ok(address) = source.parse::<SocketAddr>()
    {
        request.extensions_mut().insert(ConnectInfo(address));
    }
    next.run(request).await
}

/// Brings `client` into the follower's fleet and wakes its long-polls when its desired revision
/// moved (or it was replaced by another client of the same name).
fn apply_client(fleet: &Fleet, client: &Client) {
    let old = fleet.get(&client.metadata.name);
    let slot = fleet.insert(client);
    if let Some(old) = old
        && !Arc::ptr_eq(&old, &slot)
    {
        old.revision.wake();
    }
    if client.status.desired_revision > slot.revision.get() {
        slot.revision.send_replace(client.status.desired_revision);
    }
}

fn remove_client(fleet: &Fleet, name: &str) {
    if let Some(slot) = fleet.get(name) {
        fleet.remove(name);
        slot.revision.wake();
    }
}

/// Loads every client again (at start, and when the changes after the last one applied are no
/// longer kept); returns the change it is current with.
fn resync(follower: &Follower) -> tc_store::Result<u64> {
    let latest = follower.store.latest_change()?;
    let mut seen = HashSet::new();
    follower.store.scan_clients(&mut |client| {
        apply_client(&follower.fleet, &client);
        seen.insert(client.metadata.name);
    })?;
    for slot in follower.fleet.slots() {
        if !seen.contains(&*slot.name) {
            remove_client(&follower.fleet, &slot.name);
        }
    }
    follower.counters.resyncs.fetch_add(1, Ordering::Relaxed);
    Ok(latest)
}

/// Applies the changes after the last one applied.
fn catch_up(follower: &Follower) -> tc_store::Result<()> {
    loop {
        let after = follower.applied.load(Ordering::SeqCst);
        let page = follower.store.changes_after(after, PAGE)?;
        if !page.complete {
            tracing::warn!(
                after,
                "the changes this follower has not applied are no longer kept: loading every client again"
            );
            let latest = resync(follower)?;
            follower.applied.store(latest, Ordering::SeqCst);
            continue;
        }
        let Some(last) = page.changes.last().map(|change| change.seq) else {
            return Ok(());
        };
        let mut clients = BTreeSet::new();
        // A status change needs only the desired revision, and nothing else of the client
        // travels (a push to a whole fleet is a status change of every client): the change
        // carries it; for one recorded without it, the database reads it out of the status.
        let mut revisions: BTreeMap<String, u64> = BTreeMap::new();
        let mut unknown = BTreeSet::new();
        let mut wakes = Vec::new();
        for change in &page.changes {
            match (change.kind.as_str(), change.revision) {
                ("client", _) => {
                    clients.insert(change.name.clone());
                }
                ("status", Some(revision)) => {
                    let latest = revisions.entry(change.name.clone()).or_default();
                    *latest = (*latest).max(revision);
                }
                ("status", None) => {
                    unknown.insert(change.name.clone());
                }
                ("wake", _) => wakes.push(change.name.clone()),
                _ => {}
            }
        }
        let unknown: Vec<String> = unknown
            .into_iter()
            .filter(|name| !clients.contains(name))
            .collect();
        revisions.extend(follower.store.desired_revisions(&unknown)?);
        // A client read whole below needs no revision of its own.
        revisions.retain(|name, _| !clients.contains(name));
        for (name, revision) in revisions {
            match follower.fleet.get(&name) {
                Some(slot) => {
                    if revision > slot.revision.get() {
                        slot.revision.send_replace(revision);
                    }
                }
                // Not known here yet: read whole.
                None => {
                    clients.insert(name);
                }
            }
        }
        let names: Vec<String> = clients.into_iter().collect();
        let found = follower.store.clients_named(&names)?;
        let present: HashSet<&str> = found.iter().map(|c| c.metadata.name.as_str()).collect();
        for name in names.iter().filter(|name| !present.contains(name.as_str())) {
            remove_client(&follower.fleet, name);
        }
        for client in &found {
            apply_client(&follower.fleet, client);
        }
        for name in wakes {
            if let Some(slot) = follower.fleet.get(&name) {
                slot.offer_task();
            }
        }
        follower
            .counters
            .changes
            .fetch_add(page.changes.len() as u64, Ordering::Relaxed);
        follower.applied.store(last, Ordering::SeqCst);
        if page.changes.len() < PAGE {
            return Ok(());
        }
    }
}

/// Follows the change feed until `stop`.
async fn follow_changes(follower: Arc<Follower>, stop: watch::Receiver<bool>) {
    let mut listener: Option<tc_store::ChangeListener> = None;
    while !*stop.borrow() {
        let worker = follower.clone();
        let mut held = listener.take();
        let outcome = tokio::task::spawn_blocking(move || {
            if held.is_none() {
                held = worker.store.listen().ok();
            }
            let result = if worker.synced.load(Ordering::SeqCst) {
                catch_up(&worker)
            } else {
                resync(&worker).map(|latest| {
                    worker.applied.store(latest, Ordering::SeqCst);
                    worker.synced.store(true, Ordering::SeqCst);
                    tracing::info!(clients = worker.fleet.len(), "following: fleet loaded");
                })
            };
            // Woken by the next commit, or in a second anyway.
            let waited = match held.as_mut() {
                Some(listening) => listening.wait(POLL).map(|_| ()),
                None => {
                    std::thread::sleep(POLL);
                    Ok(())
                }
            };
            if waited.is_err() {
                held = None;
            }
            (held, result, waited)
        })
        .await;
        match outcome {
            Ok((held, result, waited)) => {
                listener = held;
                for error in [result.err(), waited.err()].into_iter().flatten() {
                    follower
                        .counters
                        .feed_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "following the change feed: trying again");
                }
            }
            Err(error) => {
                tracing::error!(%error, "following the change feed");
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_poll_queries_parse() {
        assert_eq!(long_poll_query(None), (0, None));
        assert_eq!(
            long_poll_query(Some("afterRevision=7&timeoutSeconds=30")),
            (7, Some(30))
        );
        assert_eq!(long_poll_query(Some("afterRevision=x")), (0, None));
    }

    #[test]
    fn forwarding_headers_and_connection_headers_are_not_passed_on() {
        for name in ["connection", "host", FORWARDED_FOR, FORWARDED_TAG] {
            assert!(hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["authorization", "cookie", "content-type", "range"] {
            assert!(!hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn only_the_shared_key_vouches_for_a_forwarded_address() {
        let key = SessionKey::from_secret(b"shared");
        let tag = key.vouch(FORWARDED_PURPOSE, "192.0.2.7:4000");
        assert!(key.vouches(FORWARDED_PURPOSE, "192.0.2.7:4000", &tag));
        assert!(!key.vouches(FORWARDED_PURPOSE, "192.0.2.8:4000", &tag));
        assert!(!key.vouches("other", "192.0.2.7:4000", &tag));
        assert!(!SessionKey::from_secret(b"other").vouches(
            FORWARDED_PURPOSE,
            "192.0.2.7:4000",
            &tag
        ));
        assert!(!key.vouches(FORWARDED_PURPOSE, "192.0.2.7:4000", "zz"));
    }
}
