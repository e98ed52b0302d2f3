//! The processes the scenarios start: the real controller, the bare endpoint, and the seeder.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use tc_proto::{DesiredState, HeartbeatRequest, HeartbeatResponse};
use tc_store::RedbStore;
use tc_testkit::sim::{SeedOptions, seed_store};
use tokio::io::AsyncReadExt;

/// Options of `tc-bench serve-controller`.
#[derive(Clone, Debug, clap::Args)]
pub struct ControllerArgs {
    /// Data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Pin the process to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Seconds between periodic reconcile passes.
    #[arg(long, default_value_t = 30)]
    pub resync_seconds: u64,
    /// Serve HTTPS with the PKI of the data directory (made at first start), as a real
    /// controller does by default; plain HTTP otherwise, so the figures compare with earlier runs.
    #[arg(long)]
    pub tls: bool,
    /// A PostgreSQL database instead of the embedded store.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}

/// Options of `tc-bench serve-bare`.
#[derive(Clone, Debug, clap::Args)]
pub struct BareArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Pin the process to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Serve HTTPS with the controller's PKI in this data directory: the same certificate and
    /// the same rustls configuration as the controller, behind the controller's accept loop.
    #[arg(long, value_name = "DIR")]
    pub tls_data_dir: Option<PathBuf>,
}

/// Options of `tc-bench seed`.
#[derive(Clone, Debug, clap::Args)]
pub struct SeedArgs {
    /// Data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Clients to create.
    #[arg(long)]
    pub clients: u64,
    /// Fleet seed.
    #[arg(long)]
    pub seed: u64,
    /// Clients per transaction.
    #[arg(long, default_value_t = 10_000)]
    pub batch: usize,
    /// Create them freshly enrolled (no inventory, `Pending`) instead of as a running fleet.
    #[arg(long)]
    pub pending: bool,
    /// A PostgreSQL database instead of the embedded store.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}

fn pin(cpu: Option<usize>) -> Result<(), String> {
    if let Some(cpu) = cpu
        && !crate::process::pin_current_thread(cpu)
    {
        return Err(format!("cannot pin to CPU {cpu}"));
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    // Like the controller's own binary: one worker per CPU this process may use.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Logs of the controller go to standard error (the scenario's log file), `warn` and up unless
/// `RUST_LOG` says otherwise.
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Completes when standard input reaches its end (the parent closed it or exited).
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0u8; 64];
    loop {
        match stdin.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// `tc-bench serve-controller`: `tc_controller::serve` on a durable data directory.
pub fn serve_controller(args: ControllerArgs) -> Result<(), String> {
    pin(args.cpu)?;
    init_logging();
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let mut config = tc_controller::Config::new(&args.data_dir);
        config.resync_interval = Duration::from_secs(args.resync_seconds.max(1));
        if !args.tls {
            config.tls = tc_controller::TlsMode::Disabled;
        }
        if let Some(url) = &args.store {
            config.store =
                tc_controller::store::StoreLocation::Postgres(tc_store::PgSettings::new(url));
        }
        // The simulated fleets hold more connections than the default cap (one long-poll per
        // waiting agent, plus the heartbeat pool); the cap is not what is measured.
        config.max_connections = 10_000_000;
        // The simulator enrols from one address as fast as the controller answers: the rate of
        // enrolments is what `fleet --enroll-http` measures.
        let unlimited = tc_controller::ratelimit::RateLimit::new(1e9, u32::MAX);
        config.enroll_rate = unlimited;
        config.enroll_rate_per_source = unlimited;
        println!("LISTENING {addr}");
        tc_controller::serve(listener, config, stdin_closed())
            .await
            .map_err(|e| format!("controller: {e}"))
    })
}

/// What the bare endpoint remembers per client: the last revision it reported and when.
type Seen = Arc<Mutex<HashMap<String, (u64, Instant)>>>;

/// The bare heartbeat endpoint: parses the heartbeat and records it in a map, nothing else.
async fn bare_heartbeat(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(request): Json<HeartbeatRequest>,
) -> Json<HeartbeatResponse> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    seen.lock()
        .expect("map lock")
        .insert(token, (request.observed_revision, Instant::now()));
    Json(HeartbeatResponse {
        desired: DesiredState::default(),
        next_heartbeat_millis: 60_000,
        send_inventory: false,
        tasks: Vec::new(),
    })
}

/// `tc-bench serve-bare`.
pub fn serve_bare(args: BareArgs) -> Result<(), String> {
    pin(args.cpu)?;
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let seen: Seen = Arc::default();
        let app = axum::Router::new()
            .route("/agent/v1/heartbeat", post(bare_heartbeat))
            .with_state(seen);
        let Some(data_dir) = args.tls_data_dir else {
            println!("LISTENING {addr}");
            return axum::serve(listener, app)
                .with_graceful_shutdown(stdin_closed())
                .await
                .map_err(|e| format!("bare server: {e}"));
        };
        // Over TLS, axum::serve has no place for rustls: the bare endpoint is served by the
        // controller's own accept loop with the controller's configuration and certificate.
        tc_controller::install_crypto_provider();
        let tls = tc_controller::tls::ServerTls::setup(
            &tc_controller::TlsMode::Generated {
                extra_names: vec![],
            },
            &data_dir,
            None,
        )
        .map_err(|e| format!("TLS: {e}"))?
        .expect("TLS is enabled");
        let mut limits = tc_controller::Config::new(&data_dir).limits();
        limits.max_connections = 10_000_000;
        let mut registry = tc_controller::metrics::Metrics::default();
        let counters = tc_controller::server::ConnectionMetrics::register(&mut registry);
        println!("LISTENING {addr}");
        tc_controller::server::run(
            &listener,
            app,
            Some(tls.config.clone()),
            limits,
            counters,
            stdin_closed(),
        )
        .await;
        Ok(())
    })
}

/// `tc-bench seed`: creates the token files, the session key and a simulated fleet in the data
/// directory through the store's batch enrolment; prints `SEEDED <count> <seconds>`.
pub fn seed(args: SeedArgs) -> Result<(), String> {
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("{}: {e}", args.data_dir.display()))?;
    for file in ["admin.token", "bootstrap.token"] {
        tc_controller::tokens::load_or_create(&args.data_dir.join(file))
            .map_err(|e| format!("{file}: {e}"))?;
    }
    tc_testkit::sim::session_key(&args.data_dir).map_err(|e| e.to_string())?;
    let store: Box<dyn tc_store::Store> = match &args.store {
        Some(url) => Box::new(tc_store::PgStore::connect(url).map_err(|e| e.to_string())?),
        None => Box::new(
            RedbStore::open(&args.data_dir.join("thinfleet.redb")).map_err(|e| e.to_string())?,
        ),
    };
    let started = Instant::now();
    let created = seed_store(
        &*store,
        &SeedOptions {
            seed: args.seed,
            count: args.clients,
            batch: args.batch,
            inventory_reported: !args.pending,
            now: tc_proto::Timestamp::now(),
        },
    )
    .map_err(|e| e.to_string())?;
    println!("SEEDED {created} {:.3}", started.elapsed().as_secs_f64());
    Ok(())
}
