//! The thinfleet controller: stores desired and observed state, serves the admin API, the agent
//! protocol and the blobs, applies the watched manifest directory and runs the reconcile loop.
//!
//! Tests and embedders start it with [`serve`] on a listener of their own (`127.0.0.1:0`).

pub mod admission;
pub mod agent;
pub mod api;
pub mod apply;
pub mod audit;
pub mod blobs;
pub mod bootstrap;
pub mod credentials;
pub mod datadir;
pub mod demo;
pub mod enroll;
pub mod error;
pub mod fleet;
pub mod follower;
pub mod history;
pub mod leader;
pub mod metrics;
pub mod migrate;
pub mod openapi;
pub mod persist;
pub mod pki;
pub mod progressive;
pub mod ratelimit;
pub mod reconcile;
pub mod rollout;
pub mod server;
pub mod session;
pub mod store;
pub mod tasks;
pub mod tls;
pub mod tokens;
pub mod ui;
pub mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, patch, post, put};
use tc_api::{Event, Timestamp};
use tc_store::{RedbStore, Store};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::admission::Blocks;
use crate::blobs::BlobStore;
use crate::bootstrap::BootstrapTokens;
use crate::fleet::{Fleet, Persister};
use crate::metrics::Metrics;
use crate::ratelimit::{EnrollLimiter, RateLimit};
use crate::server::ConnectionMetrics;
use crate::session::SessionKey;
use crate::watch::Sources;

pub use crate::tls::TlsMode;

/// Controller settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the database, the blobs and the token files live.
    pub data_dir: PathBuf,
    /// The watched manifest directory, if any.
    pub manifests_dir: Option<PathBuf>,
    /// Serve blobs without authentication (for a CDN in front).
    pub public_blobs: bool,
    /// Periodic reconcile and directory re-read.
    pub resync_interval: Duration,
    /// How long a reconcile trigger waits for more triggers to coalesce.
    pub reconcile_debounce: Duration,
    /// How often liveness-only heartbeat changes are written.
    pub liveness_flush_interval: Duration,
    /// Longest long-poll.
    pub long_poll_max: Duration,
    /// How long file events settle before the directory is applied.
    pub watch_debounce: Duration,
    /// Largest blob accepted.
    pub max_blob_bytes: u64,
    /// Largest apply request body.
    pub max_apply_bytes: usize,
    /// Missed heartbeats after which a client is Offline.
    pub offline_after_missed: u32,
    /// How long after a task run's deadline (and an `exec`'s timeout) the controller waits for
    /// the results of the targets that started before it counts them expired (10 minutes).
    pub task_result_grace: Duration,
    /// Longest wait for the connection when an `artifact.url` is fetched.
    pub artifact_connect_timeout: Duration,
    /// Longest fetch of an `artifact.url`, from the request to the last byte.
    pub artifact_fetch_timeout: Duration,
    /// HTTPS with the generated PKI (the default), with the admin's files, or plain HTTP.
    pub tls: TlsMode,
    /// How often the admin's certificate files are checked for changes.
    pub tls_reload_interval: Duration,
    /// Longest TLS handshake (10 s).
    pub handshake_timeout: Duration,
    /// Longest wait for a connection's first bytes and for each HTTP/1 request head; also ends
    /// HTTP/1 keep-alive connections idle for that long (30 s, hyper's own default).
    pub header_read_timeout: Duration,
    /// A connection with no traffic either way for this long is closed (90 s: longer than the
    /// longest long-poll, 60 s, so a waiting long-poll is never cut).
    pub idle_timeout: Duration,
    /// Largest request head: HTTP/1 read buffer and HTTP/2 header list (16 KiB, as Node.js;
    /// an agent's requests have heads of a few hundred bytes).
    pub max_header_bytes: usize,
    /// Connections served at once; more are closed at once (50,000: one long-poll connection
    /// per agent for a fleet of that size talking straight to the controller; bigger fleets
    /// raise it or multiplex through an HTTP/2 proxy).
    pub max_connections: usize,
    /// How long a session token is accepted.
    pub session_lifetime: Duration,
    /// How long a session challenge may be answered.
    pub challenge_lifetime: Duration,
    /// Every new client waits as `Pending` until an admin approves it.
    pub require_approval: bool,
    /// Apply refuses a `PackageRelease` without `spec.artifact.signature` (422).
    pub require_signed: bool,
    /// Enrolment requests accepted from all sources together.
    pub enroll_rate: RateLimit,
    /// Enrolment requests accepted from one source address.
    pub enroll_rate_per_source: RateLimit,
    /// When a pending agent is told to ask again.
    pub pending_retry_after: Duration,
    /// Events about one client recorded from what its agent reports (package changes, coming
    /// back online); the excess is dropped and counted.
    pub client_event_rate: RateLimit,
    /// How long the audit trail is kept (by count and age).
    pub audit_retention: tc_store::AuditRetention,
    /// Where the state is kept (redb in the data directory unless a PostgreSQL database is
    /// named).
    pub store: store::StoreLocation,
    /// How long a web console session lasts after sign-in (12 h).
    pub console_session_lifetime: Duration,
    /// A one-time sign-in code for the web console (the link `--demo` prints), valid for
    /// [`ui::CODE_LIFETIME`] from the start; `serve_with` makes one in demo mode.
    pub console_sign_in_code: Option<String>,
    /// This replica's name in the leader lease (a PostgreSQL store), the host's name unless set;
    /// a random part is added at every start.
    pub replica_name: Option<String>,
    /// The URL the other replicas reach this one at (a PostgreSQL store): followers forward to
    /// the leader there. By default the address it listens on, unless that is 0.0.0.0 or ::.
    pub advertise_url: Option<String>,
}

impl Config {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            manifests_dir: None,
            public_blobs: false,
            resync_interval: Duration::from_secs(30),
            reconcile_debounce: Duration::from_millis(20),
            liveness_flush_interval: Duration::from_secs(5),
            long_poll_max: Duration::from_secs(60),
            watch_debounce: watch::DEFAULT_DEBOUNCE,
            max_blob_bytes: 4 << 30,
            max_apply_bytes: 32 << 20,
            offline_after_missed: 3,
            task_result_grace: Duration::from_secs(600),
            artifact_connect_timeout: Duration::from_secs(10),
            artifact_fetch_timeout: Duration::from_secs(600),
            tls: TlsMode::Generated {
                extra_names: vec![],
            },
            tls_reload_interval: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_header_bytes: 16 * 1024,
            max_connections: 50_000,
            session_lifetime: Duration::from_secs(3600),
            challenge_lifetime: Duration::from_secs(60),
            require_approval: false,
            require_signed: false,
            enroll_rate: RateLimit::new(50.0, 500),
            enroll_rate_per_source: RateLimit::new(5.0, 100),
            pending_retry_after: Duration::from_secs(30),
            client_event_rate: RateLimit::new(1.0 / 6.0, 100),
            audit_retention: tc_store::AuditRetention::default(),
            store: store::StoreLocation::Redb,
            console_session_lifetime: Duration::from_secs(12 * 3600),
            console_sign_in_code: None,
            replica_name: None,
            advertise_url: None,
        }
    }

    /// The connection limits of the accept loop.
    pub fn limits(&self) -> server::Limits {
        server::Limits {
            handshake_timeout: self.handshake_timeout,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_header_bytes: self.max_header_bytes,
            max_connections: self.max_connections,
        }
    }
}

/// What went wrong starting or running the controller.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory or a token file.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store.
    #[error("store: {0}")]
    Store(#[from] tc_store::StoreError),
    /// The HTTP server.
    #[error("server: {0}")]
    Server(std::io::Error),
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// This replica cannot serve with the others of its database (see [`leader`]).
    #[error("{0}")]
    Replica(String),
    /// Another replica took the leader lease over: this one stopped serving.
    #[error("stopped: {0}")]
    LeaseLost(String),
    /// Asked to stop while waiting for the lease.
    #[error("stopped while waiting for the leader lease")]
    Stopped,
    /// Another replica took the lease first (this one follows again).
    #[error("replica {0} leads")]
    NotLeading(String),
}

/// The shared state of a running controller.
pub struct Controller {
    /// Settings.
    pub config: Config,
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Blobs.
    pub blobs: BlobStore,
    /// Clients in memory.
    pub fleet: Arc<Fleet>,
    /// Client writes (group commit).
    pub persister: Persister,
    /// Metrics.
    pub metrics: Metrics,
    /// Counters of the accept loop (registered with `metrics`).
    pub connections: Arc<ConnectionMetrics>,
    /// The certificate served and its CA; `None` with plain HTTP.
    pub tls: Option<Arc<tls::ServerTls>>,
    /// Wakes the reconcile loop.
    pub reconcile_wake: Notify,
    /// Wakes the reconcile loop for what agents reported (new package states, a new inventory,
    /// an enrolment): such passes are spaced by at least the duration of the last pass, so that
    /// a large fleet reporting at once (first contact, a restart) cannot keep a core busy with
    /// back-to-back passes.
    pub clients_changed: Notify,
    /// Served package lists of the reconcile loop, kept between passes.
    pub served_cache: Mutex<reconcile::ServedCache>,
    /// Retries of failed releases asked for by admins, carried out by the next reconcile pass.
    pub retries: Mutex<Vec<reconcile::RetryRequest>>,
    /// The groups' rollout records and the activations their members are served.
    pub rollouts: progressive::Rollouts,
    /// Requests waiting for a client's load history.
    pub history_waiters: history::HistoryWaiters,
    /// Remote operations: tasks, their runs and the orders open for agents.
    pub tasks: tasks::Tasks,
    /// Serializes applies and deletes of objects, so that a plan is written against what it read.
    pub apply_lock: tokio::sync::Mutex<()>,
    /// Serializes enrolments, approvals, denials, decommissions, client deletions and token
    /// changes, so that one key never becomes two clients and a token's uses are counted right.
    pub enroll_lock: tokio::sync::Mutex<()>,
    /// The key of session tokens and challenges.
    pub session_key: SessionKey,
    /// The leader lease this replica holds (a PostgreSQL store).
    pub leadership: Option<leader::Leadership>,
    /// Renews the lease from the moment it is taken (loading a large fleet outlasts the lease):
    /// [`serve_with`] takes it over to learn of the lease's loss.
    pub lease_keeper: Mutex<Option<leader::Keeper>>,
    /// Bootstrap tokens.
    pub bootstrap: BootstrapTokens,
    /// Named admin credentials (and the break-glass token).
    pub credentials: credentials::Credentials,
    /// The web console's sessions and one-time sign-in codes.
    pub console: ui::Console,
    /// Machine identities kept from enrolling.
    pub blocks: Blocks,
    /// Enrolment rate limits.
    pub enroll_limiter: EnrollLimiter,
    /// Watched directories.
    pub sources: Sources,
    /// Set once the watched directory was applied (or there is none).
    pub ready: AtomicBool,
    /// Fetches `artifact.url`s (outside the apply lock, with the configured timeouts).
    pub http: reqwest::Client,
    /// Flips to true at shutdown (background tasks stop; long-polls end through
    /// [`fleet::Fleet::close`]).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// When this controller started: no client is marked Offline for heartbeats it could not
    /// send while the controller was down or starting (a grace period of the offline timeout).
    pub started_at: Timestamp,
    /// The data directory's lock, when the store does not hold one (see [`datadir::lock`]).
    _data_dir_lock: Option<std::fs::File>,
}

/// Token files written at first start.
#[derive(Clone, Debug)]
pub struct TokenFiles {
    /// The admin token.
    pub admin_token: String,
    /// The token `data/bootstrap.token` holds (`default`), if it holds one.
    pub bootstrap_token: Option<String>,
    /// `data/admin.token`.
    pub admin_path: PathBuf,
    /// `data/bootstrap.token`.
    pub bootstrap_path: PathBuf,
}

impl Controller {
    /// The fingerprint of the CA agents and `tcadm` pin (`sha256:<hex>`, kubeadm's format), for
    /// the join material; `None` when serving plain HTTP.
    pub fn ca_cert_hash(&self) -> Option<String> {
        self.tls
            .as_ref()
            .map(|tls| tls.resolver.ca_hash().to_string())
    }

    /// The fingerprints the join material gives agents to pin: the CA's, and while a
    /// replacement is prepared (`tc-controller ca prepare`) the next CA's too, comma-separated.
    pub fn join_ca_cert_hash(&self) -> Option<String> {
        let current = self.ca_cert_hash()?;
        let next = match self.config.tls {
            TlsMode::Generated { .. } => pki::next_ca_hash(&self.config.data_dir.join("pki")),
            _ => None,
        };
        Some(match next {
            Some(next) => format!("{current},{next}"),
            None => current,
        })
    }

    /// Wakes the long-polls of these clients on the other replicas (a task order or a load
    /// history wanted of them): a `wake` change in the feed the followers read. Nothing with
    /// one replica.
    pub fn announce_wakes(&self, names: Vec<String>) {
        let Some(leadership) = &self.leadership else {
            return;
        };
        if names.is_empty() {
            return;
        }
        let store = leadership.store().clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = store.announce("wake", &names) {
                tracing::warn!(%error, "cannot wake the clients' long-polls on the other replicas");
            }
        });
    }

    /// Stores events; failures are logged (events never fail a request).
    pub async fn record(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.append_events(events)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "recording events failed"),
            Err(error) => tracing::error!(%error, "recording events failed"),
        }
    }
}

/// The HTTP routes.
pub fn router(controller: Arc<Controller>) -> Router {
    let admin = Router::new()
        .route("/apis/thinfleet.io/v1/apply", post(api::apply))
        .route("/apis/thinfleet.io/v1/events", get(api::events))
        .route("/apis/thinfleet.io/v1/sources", get(api::sources))
        .route("/apis/thinfleet.io/v1/sources/{name}", get(api::source))
        .route(
            "/apis/thinfleet.io/v1/bootstraptokens",
            post(bootstrap::create).get(bootstrap::list),
        )
        .route(
            "/apis/thinfleet.io/v1/bootstraptokens/{name}",
            delete(bootstrap::revoke),
        )
        .route(
            "/apis/thinfleet.io/v1/blockedmachines",
            get(admission::list_blocked),
        )
        .route(
            "/apis/thinfleet.io/v1/blockedmachines/{machine_id}",
            delete(admission::allow),
        )
        .route(
            "/apis/thinfleet.io/v1/clients/{name}/approve",
            post(admission::approve),
        )
        .route(
            "/apis/thinfleet.io/v1/clients/{name}/deny",
            post(admission::deny),
        )
        .route(
            "/apis/thinfleet.io/v1/clients/{name}/decommission",
            post(admission::decommission),
        )
        .route(
            "/apis/thinfleet.io/v1/clients/{name}/history",
            get(history::get),
        )
        .route(
            "/apis/thinfleet.io/v1/clients/{name}",
            patch(api::patch_client)
                .get(api::get_client)
                .delete(api::delete_client),
        )
        .route(
            "/apis/thinfleet.io/v1/tasks",
            post(tasks::api::create).get(tasks::api::list),
        )
        .route(
            "/apis/thinfleet.io/v1/tasks/{name}",
            delete(tasks::api::delete).get(tasks::api::get),
        )
        .route(
            "/apis/thinfleet.io/v1/tasks/{name}/results",
            get(tasks::api::results),
        )
        .route(
            "/apis/thinfleet.io/v1/tasks/{name}/results/{client}/logs",
            get(tasks::api::logs),
        )
        .route(
            "/apis/thinfleet.io/v1/clients/{name}/tasks",
            get(tasks::api::client_tasks),
        )
        .route("/apis/thinfleet.io/v1/{plural}", get(api::list))
        .route(
            "/apis/thinfleet.io/v1/{plural}/{name}",
            get(api::get).delete(api::delete),
        )
        .route(
            "/apis/thinfleet.io/v1/clientgroups/{name}/retry",
            post(rollout::retry),
        )
        .route(
            "/apis/thinfleet.io/v1/clientgroups/{name}/pause",
            post(rollout::pause),
        )
        .route(
            "/apis/thinfleet.io/v1/clientgroups/{name}/resume",
            post(rollout::resume),
        )
        .route(
            "/apis/thinfleet.io/v1/clientgroups/{name}/undo",
            post(progressive::routes::undo),
        )
        .route(
            "/apis/thinfleet.io/v1/clientgroups/{name}/activate-now",
            post(progressive::routes::activate_now),
        )
        .route(
            "/apis/thinfleet.io/v1/clientgroups/{name}/rollouts",
            get(progressive::routes::history),
        )
        .route(
            "/apis/thinfleet.io/v1/credentials",
            post(credentials::create).get(credentials::list),
        )
        .route(
            "/apis/thinfleet.io/v1/credentials/{name}",
            delete(credentials::revoke),
        )
        .route(
            "/apis/thinfleet.io/v1/credentials/{name}/rotate",
            post(credentials::rotate),
        )
        .route(
            "/blobs",
            put(api::put_blob).layer(DefaultBodyLimit::disable()),
        )
        .route("/apis/thinfleet.io/v1/audit", get(audit::list))
        .route_layer(axum::middleware::from_fn_with_state(
            controller.clone(),
            credentials::authorize,
        ))
        // Outside `authorize`, so that what it refuses is recorded too.
        .route_layer(axum::middleware::from_fn_with_state(
            controller.clone(),
            audit::record,
        ));
    let max_apply = controller.config.max_apply_bytes;
    // Agent requests are small; a body beyond the limit is refused before it is read in full.
    let agent_routes = Router::new()
        .route("/agent/v1/enroll", post(enroll::enroll))
        .route("/agent/v1/session", post(enroll::session))
        .route("/agent/v1/heartbeat", post(agent::heartbeat))
        .route("/agent/v1/desired", get(agent::desired))
        .route("/agent/v1/tasks/report", post(tasks::report))
        .route(
            "/agent/v1/history",
            post(history::upload).layer(DefaultBodyLimit::max(
                tc_proto::history::MAX_HISTORY_BODY_BYTES,
            )),
        )
        .route(
            "/agent/v1/releases/{package}/{version}",
            get(agent::release),
        )
        .layer(DefaultBodyLimit::max(
            tc_proto::limits::MAX_AGENT_BODY_BYTES,
        ));
    Router::new()
        .merge(admin)
        .merge(ui::router())
        .route(
            "/blobs/sha256/{hex}",
            get(api::get_blob).head(api::get_blob),
        )
        .merge(agent_routes)
        .route("/internal/v1/desired", post(follower::answer_batch))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/version", get(api::version))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(openapi::document()) }),
        )
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(max_apply))
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            controller.clone(),
            follower::trust_forwarded,
        ))
        .with_state(controller)
}

/// Opens the data directory: store, blobs, token files, fleet. Background tasks are not started.
/// With a PostgreSQL store, waits for the leader lease first (see [`leader`]).
pub async fn open(
    config: Config,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(Arc<Controller>, TokenFiles), ServeError> {
    let holder = leader::holder_name(config.replica_name.as_deref());
    open_as(config, shutdown, false, holder).await
}

/// [`open`] as `holder` in the leader lease; with `give_way`, [`ServeError::NotLeading`] when
/// another replica holds it.
async fn open_as(
    config: Config,
    shutdown: tokio::sync::watch::Receiver<bool>,
    give_way: bool,
    holder: String,
) -> Result<(Arc<Controller>, TokenFiles), ServeError> {
    let io = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| ServeError::Io { path, source }
    };
    datadir::create_dir(&config.data_dir).map_err(io(&config.data_dir))?;
    let admin_path = config.data_dir.join("admin.token");
    let bootstrap_path = config.data_dir.join("bootstrap.token");
    let (admin_token, admin_created) =
        tokens::load_or_create(&admin_path).map_err(io(&admin_path))?;
    if admin_created {
        tracing::info!(admin = %admin_path.display(), "created the admin token file (mode 0600)");
    }
    let session_key = SessionKey::load_or_create(&config.data_dir)
        .map_err(io(&config.data_dir.join(session::SESSION_KEY_FILE)))?;
    // One controller per data directory (the blob store's clean-up below relies on it): redb
    // locks its file; a PostgreSQL database is not the directory's, so the directory gets a lock
    // of its own.
    let mut data_dir_lock = None;
    let mut leadership = None;
    let mut keeper = None::<leader::Keeper>;
    let mut pg_store = None;
    let store: Arc<dyn Store> = match config.store.clone() {
        store::StoreLocation::Redb => {
            let db_path = config.data_dir.join("thinfleet.redb");
            // redb creates a database in an empty file: made here first, it never has the
            // default mode.
            datadir::create_private_file(&db_path).map_err(io(&db_path))?;
            Arc::new(
                tokio::task::spawn_blocking(move || RedbStore::open(&db_path))
                    .await
                    .map_err(|e| ServeError::Server(std::io::Error::other(e)))??,
            )
        }
        store::StoreLocation::Postgres(settings) => {
            let lock_path = config.data_dir.join("controller.lock");
            data_dir_lock = Some(datadir::lock(&config.data_dir).map_err(io(&lock_path))?);
            let opened = Arc::new(
                tokio::task::spawn_blocking(move || tc_store::PgStore::open(&settings))
                    .await
                    .map_err(|e| ServeError::Server(std::io::Error::other(e)))??,
            );
            store::log_encryption(&opened);
            // Nothing is read before this replica leads: it starts from what the previous
            // leader committed.
            let url = config.advertise_url.clone();
            let Some(lease) =
                leader::wait(opened.clone(), holder, url, give_way, shutdown.clone()).await?
            else {
                return Err(ServeError::Stopped);
            };
            keeper = Some(leader::Keeper::start(lease.clone(), shutdown.clone()));
            leadership = Some(lease);
            pg_store = Some(Arc::clone(&opened));
            opened
        }
    };
    let server_tls = setup_tls(&config).await?;
    if let Some(lease) = &leadership {
        let files = leader::shared_files(&config, &admin_token)?;
        let checked = store.clone();
        let outcome =
            tokio::task::spawn_blocking(move || leader::check_shared_files(&*checked, &files))
                .await
                .map_err(|e| ServeError::Server(std::io::Error::other(e)))?;
        if let Err(error) = outcome {
            // Refused: another replica may lead at once.
            drop(keeper.take());
            lease.release().await;
            return Err(error);
        }
    }
    // The store is open (its lock held): no other controller uses this data directory, so the
    // temporary files of uploads a crash interrupted can go. With PostgreSQL the blobs are in
    // the database, shared by every controller on it.
    let blobs = match pg_store {
        Some(pg) => BlobStore::open_postgres(&config.data_dir, config.max_blob_bytes, pg),
        None => BlobStore::open(&config.data_dir, config.max_blob_bytes),
    }
    .map_err(io(&config.data_dir))?;
    if let Err(error) = datadir::tighten_and_log(&config.data_dir) {
        tracing::warn!(dir = %config.data_dir.display(), %error,
            "cannot take group and other permissions away from the data directory");
    }
    let loader = store.clone();
    let fleet = tokio::task::spawn_blocking(move || Fleet::load(&*loader))
        .await
        .map_err(|e| ServeError::Server(std::io::Error::other(e)))??;
    let now = Timestamp::now();
    let (bootstrap, opened) = BootstrapTokens::open(&*store, &bootstrap_path, now)?;
    if leadership.is_some() {
        // A bootstrap token file made just now is recorded for the other replicas.
        let files = leader::shared_files(&config, &admin_token)?;
        leader::check_shared_files(&*store, &files)?;
    }
    if opened.created_file {
        tracing::info!(bootstrap = %bootstrap_path.display(), "created the bootstrap token `default` (mode 0600)");
    }
    for name in &opened.revoked {
        tracing::warn!(bootstrap = %bootstrap_path.display(), token = %name,
            "the bootstrap token file no longer holds this token: revoked");
    }
    let bootstrap_token = std::fs::read_to_string(&bootstrap_path)
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty());
    let blocks = Blocks::open(&*store)?;
    let credentials = credentials::Credentials::open(&*store, tokens::hash(&admin_token))?;
    let mut metrics = Metrics::default();
    let connections = ConnectionMetrics::register(&mut metrics);
    let persister = Persister::start(store.clone(), metrics.client_write_batches.clone())
        .map_err(ServeError::Server)?;
    install_crypto_provider();
    let http = reqwest::Client::builder()
        .connect_timeout(config.artifact_connect_timeout)
        .timeout(config.artifact_fetch_timeout)
        .build()
        .map_err(|e| ServeError::Server(std::io::Error::other(e)))?;
    let config_limits = (config.enroll_rate, config.enroll_rate_per_source);
    let controller = Arc::new(Controller {
        ready: AtomicBool::new(config.manifests_dir.is_none()),
        config,
        store: store.clone(),
        blobs,
        fleet: Arc::new(fleet),
        persister,
        metrics,
        connections,
        tls: server_tls,
        reconcile_wake: Notify::new(),
        clients_changed: Notify::new(),
        served_cache: Mutex::new(Default::default()),
        retries: Mutex::new(vec![]),
        rollouts: Default::default(),
        history_waiters: Default::default(),
        tasks: tasks::Tasks::new(store.clone()),
        apply_lock: tokio::sync::Mutex::new(()),
        enroll_lock: tokio::sync::Mutex::new(()),
        session_key,
        leadership,
        lease_keeper: Mutex::new(keeper),
        bootstrap,
        credentials,
        console: ui::Console::default(),
        blocks,
        enroll_limiter: EnrollLimiter::new(config_limits.0, config_limits.1, Timestamp::now()),
        sources: Sources::default(),
        http,
        shutdown,
        started_at: Timestamp::now(),
        _data_dir_lock: data_dir_lock,
    });
    if let Some(code) = &controller.config.console_sign_in_code {
        controller.console.add_code(code, Timestamp::now());
    }
    reconcile::initial_desired(&controller, &*store)?;
    Ok((
        controller,
        TokenFiles {
            admin_token,
            bootstrap_token,
            admin_path,
            bootstrap_path,
        },
    ))
}

/// The certificate `config` serves (made from the CA at first start); `None` with plain HTTP.
pub(crate) async fn setup_tls(config: &Config) -> Result<Option<Arc<tls::ServerTls>>, ServeError> {
    let (mode, data_dir) = (config.tls.clone(), config.data_dir.clone());
    Ok(
        tokio::task::spawn_blocking(move || tls::ServerTls::setup(&mode, &data_dir, None))
            .await
            .map_err(|e| ServeError::Server(std::io::Error::other(e)))??
            .map(Arc::new),
    )
}

/// Installs the process-wide TLS crypto provider (ring). Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs the controller on `listener` until `shutdown` completes, then stops cleanly: long-polls end,
/// pending client writes are flushed.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with(listener, config, shutdown, false).await
}

/// [`serve`], optionally in demo mode (three real agents started next to the controller, events
/// printed as they happen).
pub async fn serve_with(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    demo_mode: bool,
) -> Result<(), ServeError> {
    install_crypto_provider();
    let addr = listener.local_addr().map_err(ServeError::Server)?;
    let mut config = config;
    if let TlsMode::Generated { extra_names } = &mut config.tls
        && !addr.ip().is_unspecified()
    {
        extra_names.push(addr.ip().to_string());
    }
    if demo_mode && config.console_sign_in_code.is_none() {
        config.console_sign_in_code = Some(tokens::generate());
    }
    config.advertise_url = follower::advertised_url(&config, addr);
    if let (TlsMode::Generated { extra_names }, Some(url)) =
        (&mut config.tls, &config.advertise_url)
        && let Some(host) = reqwest::Url::parse(url).ok().and_then(|url| {
            url.host_str()
                .map(|h| h.trim_matches(['[', ']']).to_string())
        })
        && !extra_names.contains(&host)
    {
        // The followers reach the leader by this name.
        extra_names.push(host);
    }
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut shutdown = Box::pin(shutdown);
    let holder = leader::holder_name(config.replica_name.as_deref());
    let (controller, token_files) = loop {
        // A follower (a PostgreSQL store whose lease another replica holds) until the lease is
        // ours, or asked to stop.
        let url = config.advertise_url.clone();
        match follower::follow_until_leading(&listener, &config, &holder, url, &mut shutdown)
            .await?
        {
            follower::Ended::Leading => {}
            follower::Ended::Stopped => return Ok(()),
        }
        let opened = tokio::select! {
            opened = open_as(config.clone(), stopping.clone(), true, holder.clone()) => opened,
            () = &mut shutdown => return Ok(()),
        };
        match opened {
            Err(ServeError::Stopped) => return Ok(()),
            // Its lease ran out while it stopped following, and another replica took it.
            Err(ServeError::NotLeading(leader)) => {
                tracing::warn!(replica = %holder, %leader,
                    "another replica took the leader lease first: following again");
            }
            other => break other?,
        }
    };
    let lease_keeper = controller
        .lease_keeper
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let (lease_keeper, mut lease_lost_rx) = match lease_keeper {
        Some(keeper) => {
            let (task, lost) = keeper.into_parts();
            (Some(task), lost)
        }
        // Never resolves with a reason: nothing is leased.
        None => (None, tokio::sync::oneshot::channel::<String>().1),
    };
    let lost = Arc::new(Mutex::new(None::<String>));
    announce(&controller, addr);
    let demo_agents = if demo_mode {
        let server_error = |e: String| ServeError::Server(std::io::Error::other(e));
        let agent = demo::agent_binary().map_err(server_error)?;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let scheme = if controller.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let server = format!("{scheme}://{host}:{}", addr.port());
        println!(
            "thinfleet demo: controller on {server}; admin token in {}",
            token_files.admin_path.display()
        );
        println!(
            "thinfleet demo: try `tcadm get clients`; then edit manifests/groups.yaml and watch \
             `tcadm rollout status clientgroup front-desk --watch`"
        );
        let code = controller
            .config
            .console_sign_in_code
            .clone()
            .unwrap_or_default();
        println!(
            "thinfleet demo: web console (this link signs in once, within {} minutes): \
             {server}/ui/signin/code?code={code}",
            ui::CODE_LIFETIME.as_secs() / 60
        );
        Some(
            demo::start_agents(
                &agent,
                &server,
                &token_files.bootstrap_path,
                controller.ca_cert_hash().as_deref(),
            )
            .map_err(server_error)?,
        )
    } else {
        None
    };
    let mut tasks = vec![
        tokio::spawn(reconcile::run(controller.clone(), stopping.clone())),
        tokio::spawn(fleet::flush_liveness(
            controller.fleet.clone(),
            controller.persister.clone(),
            controller.config.liveness_flush_interval,
            stopping.clone(),
        )),
        tokio::spawn(apply::run_pending_prunes(
            controller.clone(),
            stopping.clone(),
        )),
        tokio::spawn(audit::run_retention(controller.clone(), stopping.clone())),
        tokio::spawn(tasks::run_loop(controller.clone())),
    ];
    if let Some(leadership) = &controller.leadership {
        tasks.push(tokio::spawn(prune_changes(
            leadership.store().clone(),
            stopping.clone(),
        )));
    }
    if demo_agents.is_some() {
        tasks.push(tokio::spawn(demo::print_events(
            controller.clone(),
            stopping.clone(),
        )));
    }
    if let Some(dir) = controller.config.manifests_dir.clone() {
        if let Err(error) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), %error, "cannot create the manifest directory");
        }
        tasks.push(tokio::spawn(watch::run(
            controller.clone(),
            dir,
            stopping.clone(),
        )));
    }
    if let Some(tls) = controller.tls.clone() {
        tasks.push(tokio::spawn(tls::maintain(
            tls,
            controller.config.tls_reload_interval,
            stopping.clone(),
        )));
    }
    let app = router(controller.clone());
    let closing = controller.clone();
    // The accept loop gives handlers the peer's address (the enrolment rate limit per source).
    server::run(
        &listener,
        app,
        controller.tls.as_ref().map(|tls| tls.config.clone()),
        controller.config.limits(),
        controller.connections.clone(),
        {
            let lost = lost.clone();
            async move {
                tokio::select! {
                    () = &mut shutdown => {}
                    Ok(reason) = &mut lease_lost_rx => {
                        tracing::error!(%reason, "this replica no longer leads: it stops serving");
                        *lost.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some(reason);
                    }
                }
                let _ = stop.send(true);
                closing.fleet.close();
            }
        },
    )
    .await;
    if let Some(agents) = demo_agents {
        agents.stop().await;
    }
    for task in tasks {
        let _ = task.await;
    }
    if let Some(keeper) = lease_keeper {
        let _ = keeper.await;
    }
    let lost = lost
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    match (lost, &controller.leadership) {
        (Some(reason), _) => Err(ServeError::LeaseLost(reason)),
        (None, Some(leadership)) => {
            leadership.release().await;
            Ok(())
        }
        (None, None) => Ok(()),
    }
}

/// Deletes the changes of the feed older than the followers need, every minute.
async fn prune_changes(
    store: Arc<tc_store::PgStore>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stopping.changed() => return,
        }
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.prune_changes(follower::CHANGES_KEPT)).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot prune the change feed"),
            Err(error) => tracing::warn!(%error, "cannot prune the change feed"),
        }
    }
}

/// Says how the controller serves: the CA fingerprint agents and `tcadm` pin, or a warning for
/// plain HTTP on an address other hosts can reach.
fn announce(controller: &Controller, addr: std::net::SocketAddr) {
    match controller.ca_cert_hash() {
        Some(hash) => {
            let ca = match &controller.config.tls {
                TlsMode::Files { cert, .. } => cert.display().to_string(),
                _ => controller
                    .config
                    .data_dir
                    .join("pki/ca.crt")
                    .display()
                    .to_string(),
            };
            tracing::info!(%addr, ca_cert_hash = %hash, ca = %ca, "serving HTTPS");
            println!("thinfleet: serving HTTPS on {addr}; CA {ca}, fingerprint {hash}");
            println!("thinfleet: agents join with --ca-cert-hash {hash}");
        }
        None if addr.ip().is_loopback() => {
            tracing::info!(%addr, "serving plain HTTP on loopback (--insecure-http)");
        }
        None => tracing::warn!(
            %addr,
            "serving plain HTTP (--insecure-http) on an address other machines can reach: tokens and \
             packages travel unencrypted; use it only behind a TLS-terminating proxy"
        ),
    }
}
