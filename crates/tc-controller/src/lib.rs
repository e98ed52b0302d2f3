//! The thinfleet controller: stores desired and observed state, serves the admin API, the agent
//! protocol and the blobs, applies the watched manifest directory and runs the reconcile loop.
//!
//! Tests and embedders start it with [`serve`] on a listener of their own (`127.0.0.1:0`).

pub mod agent;
pub mod api;
pub mod apply;
pub mod blobs;
pub mod datadir;
pub mod demo;
pub mod error;
pub mod fleet;
pub mod metrics;
pub mod openapi;
pub mod reconcile;
pub mod rollout;
pub mod tokens;
pub mod watch;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post, put};
use tc_api::{Event, Timestamp};
use tc_store::{RedbStore, Store};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::blobs::BlobStore;
use crate::error::ApiError;
use crate::fleet::{Fleet, Persister};
use crate::metrics::Metrics;
use crate::watch::Sources;

/// Settings key of the bootstrap token hashes (a JSON array).
const BOOTSTRAP_TOKENS: &str = "bootstrapTokenHashes";

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
    /// Longest wait for the connection when an `artifact.url` is fetched.
    pub artifact_connect_timeout: Duration,
    /// Longest fetch of an `artifact.url`, from the request to the last byte.
    pub artifact_fetch_timeout: Duration,
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
            artifact_connect_timeout: Duration::from_secs(10),
            artifact_fetch_timeout: Duration::from_secs(600),
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
    /// SHA-256 of the admin token.
    pub admin_token_hash: String,
    /// Metrics.
    pub metrics: Metrics,
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
    /// Serializes applies and deletes of objects, so that a plan is written against what it read.
    pub apply_lock: tokio::sync::Mutex<()>,
    /// Serializes enrolments, so that one machine id never becomes two clients.
    pub enroll_lock: tokio::sync::Mutex<()>,
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
    bootstrap_hashes: Mutex<BTreeSet<String>>,
}

/// Token files written at first start.
#[derive(Clone, Debug)]
pub struct TokenFiles {
    /// The admin token.
    pub admin_token: String,
    /// The first bootstrap token.
    pub bootstrap_token: String,
    /// `data/admin.token`.
    pub admin_path: PathBuf,
    /// `data/bootstrap.token`.
    pub bootstrap_path: PathBuf,
}

impl Controller {
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

    /// True when `token` is a valid bootstrap token.
    pub fn is_bootstrap_token(&self, token: &str) -> bool {
        !token.is_empty()
            && self
                .bootstrap_hashes
                .lock()
                .expect("bootstrap lock")
                .contains(&tokens::hash(token))
    }

    /// Adds a bootstrap token hash, durably.
    pub async fn add_bootstrap_token(&self, hash: &str) -> Result<(), ApiError> {
        let value = {
            let mut hashes = self.bootstrap_hashes.lock().expect("bootstrap lock");
            hashes.insert(hash.to_string());
            serde_json::to_string(&*hashes).expect("hashes serialize")
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.put_setting(BOOTSTRAP_TOKENS, Some(&value)))
            .await??;
        Ok(())
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
            post(api::create_bootstrap_token),
        )
        .route(
            "/apis/thinfleet.io/v1/clients/{name}",
            patch(api::patch_client)
                .get(api::get_client)
                .delete(api::delete_client),
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
            "/blobs",
            put(api::put_blob).layer(DefaultBodyLimit::disable()),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            controller.clone(),
            api::require_admin,
        ));
    let max_apply = controller.config.max_apply_bytes;
    Router::new()
        .merge(admin)
        .route(
            "/blobs/sha256/{hex}",
            get(api::get_blob).head(api::get_blob),
        )
        .route("/agent/v1/enroll", post(agent::enroll))
        .route("/agent/v1/heartbeat", post(agent::heartbeat))
        .route("/agent/v1/desired", get(agent::desired))
        .route(
            "/agent/v1/releases/{package}/{version}",
            get(agent::release),
        )
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
        .with_state(controller)
}

/// Opens the data directory: store, blobs, token files, fleet. Background tasks are not started.
pub async fn open(
    config: Config,
    shutdown: tokio::sync::watch::Receiver<bool>,
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
    let (bootstrap_token, bootstrap_created) =
        tokens::load_or_create(&bootstrap_path).map_err(io(&bootstrap_path))?;
    if admin_created || bootstrap_created {
        tracing::info!(admin = %admin_path.display(), bootstrap = %bootstrap_path.display(), "created token files (mode 0600)");
    }
    let db_path = config.data_dir.join("thinfleet.redb");
    // redb creates a database in an empty file: made here first, it never has the default mode.
    datadir::create_private_file(&db_path).map_err(io(&db_path))?;
    let store: Arc<dyn Store> = Arc::new(
        tokio::task::spawn_blocking(move || RedbStore::open(&db_path))
            .await
            .map_err(|e| ServeError::Server(std::io::Error::other(e)))??,
    );
    // The store is open (its lock held): no other controller uses this data directory, so the
    // temporary files of uploads a crash interrupted can go.
    let blobs =
        BlobStore::open(&config.data_dir, config.max_blob_bytes).map_err(io(&config.data_dir))?;
    if let Err(error) = datadir::tighten_and_log(&config.data_dir) {
        tracing::warn!(dir = %config.data_dir.display(), %error,
            "cannot take group and other permissions away from the data directory");
    }
    let loader = store.clone();
    let fleet = tokio::task::spawn_blocking(move || -> tc_store::Result<Fleet> {
        let tokens: std::collections::HashMap<String, String> =
            loader.client_token_hashes()?.into_iter().collect();
        Fleet::load(&*loader, |name| tokens.get(name).cloned())
    })
    .await
    .map_err(|e| ServeError::Server(std::io::Error::other(e)))??;
    let mut hashes: BTreeSet<String> = store
        .get_setting(BOOTSTRAP_TOKENS)?
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    if hashes.insert(tokens::hash(&bootstrap_token)) {
        store.put_setting(
            BOOTSTRAP_TOKENS,
            Some(&serde_json::to_string(&hashes).expect("hashes serialize")),
        )?;
    }
    let metrics = Metrics::default();
    let persister = Persister::start(store.clone(), metrics.client_write_batches.clone());
    install_crypto_provider();
    let http = reqwest::Client::builder()
        .connect_timeout(config.artifact_connect_timeout)
        .timeout(config.artifact_fetch_timeout)
        .build()
        .map_err(|e| ServeError::Server(std::io::Error::other(e)))?;
    let controller = Arc::new(Controller {
        admin_token_hash: tokens::hash(&admin_token),
        ready: AtomicBool::new(config.manifests_dir.is_none()),
        config,
        store: store.clone(),
        blobs,
        fleet: Arc::new(fleet),
        persister,
        metrics,
        reconcile_wake: Notify::new(),
        clients_changed: Notify::new(),
        served_cache: Mutex::new(Default::default()),
        retries: Mutex::new(vec![]),
        apply_lock: tokio::sync::Mutex::new(()),
        enroll_lock: tokio::sync::Mutex::new(()),
        sources: Sources::default(),
        http,
        shutdown,
        started_at: Timestamp::now(),
        bootstrap_hashes: Mutex::new(hashes),
    });
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
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let (controller, token_files) = open(config, stopping.clone()).await?;
    let demo_agents = if demo_mode {
        let server_error = |e: String| ServeError::Server(std::io::Error::other(e));
        let agent = demo::agent_binary().map_err(server_error)?;
        let addr = listener.local_addr().map_err(ServeError::Server)?;
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
        let server = format!("http://{host}:{}", addr.port());
        println!(
            "thinfleet demo: controller on {server}; admin token in {}",
            token_files.admin_path.display()
        );
        println!(
            "thinfleet demo: try `tcadm get clients`; then edit manifests/groups.yaml and watch \
             `tcadm rollout status clientgroup front-desk --watch`"
        );
        Some(
            demo::start_agents(&agent, &server, &token_files.bootstrap_path)
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
    ];
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
    let app = router(controller.clone());
    let closing = controller.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop.send(true);
        closing.fleet.close();
    });
    let result = server.await.map_err(ServeError::Server);
    if let Some(agents) = demo_agents {
        agents.stop().await;
    }
    for task in tasks {
        let _ = task.await;
    }
    result
}
