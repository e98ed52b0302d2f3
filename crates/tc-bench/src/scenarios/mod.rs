//! The scenarios, and what they share: a seeded data directory, a controller process, the choice
//! of long-poll transport.

pub mod agent;
pub mod console;
pub mod converge;
pub mod fleet;
pub mod heartbeat;
pub mod push;
pub mod rollout;
pub mod tasks;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tc_testkit::sim::Transport;

use crate::TransportArg;
use crate::admin::Admin;
use crate::process::{self, Server};

/// HTTP/2 long-polls per connection: under the server's limit of 200 concurrent streams.
pub const H2_STREAMS_PER_CONNECTION: usize = 190;

/// A throwaway directory for one run: the controller's data directory and the logs. With
/// `TC_BENCH_KEEP` set it is kept (and its path printed) for a look at the controller's log.
pub struct Workspace {
    dir: tempfile::TempDir,
    /// The PostgreSQL server and database of the run (`--postgres`).
    postgres: Option<(tc_testkit::postgres::TestPostgres, String)>,
}

static POSTGRES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
static REPLICAS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// How many controller replicas the scenarios run (`tc-bench --postgres --replicas N`).
pub fn use_replicas(replicas: usize) {
    let _ = REPLICAS.set(replicas.max(1));
}

fn replicas() -> usize {
    REPLICAS.get().copied().unwrap_or(1)
}

/// Whether the scenarios keep the controller's state in PostgreSQL (`tc-bench --postgres`).
pub fn use_postgres(postgres: bool) {
    let _ = POSTGRES.set(postgres);
}

impl Workspace {
    /// A new directory under the system's temporary directory.
    pub fn new() -> Result<Workspace, String> {
        let keep = std::env::var_os("TC_BENCH_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("tc-bench-")
            .disable_cleanup(keep)
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        if keep {
            eprintln!("keeping {}", dir.path().display());
        }
        let postgres = if POSTGRES.get().copied().unwrap_or(false) {
            let server = tc_testkit::postgres::TestPostgres::try_start_durable()
                .map_err(|e| format!("PostgreSQL: {e}"))?;
            let url = server.create_database();
            Some((server, url))
        } else {
            None
        };
        Ok(Workspace { dir, postgres })
    }

    /// The store's arguments for `serve-controller` and `seed`: `--store URL` with
    /// `--postgres`, none for the embedded store.
    pub fn store_args(&self) -> Vec<String> {
        match &self.postgres {
            Some((_, url)) => vec!["--store".into(), url.clone()],
            None => vec![],
        }
    }

    /// `redb` or `postgresql`, for the reports.
    pub fn store_name(&self) -> &'static str {
        if self.postgres.is_some() {
            "postgresql"
        } else {
            "redb"
        }
    }

    /// The controller's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A path inside the workspace.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Seeds `clients` simulated clients into the workspace's store in a separate process (through
/// the store's batch enrolment); returns how long it took.
pub async fn seed(workspace: &Workspace, clients: u64, seed: u64) -> Result<Duration, String> {
    seed_as(workspace, clients, seed, false).await
}

/// [`seed`], with `pending` as freshly enrolled clients that have reported nothing yet.
pub async fn seed_as(
    workspace: &Workspace,
    clients: u64,
    seed: u64,
    pending: bool,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut args = vec![
        "seed".to_string(),
        "--data-dir".into(),
        workspace.data_dir().display().to_string(),
        "--clients".into(),
        clients.to_string(),
        "--seed".into(),
        seed.to_string(),
    ];
    if pending {
        args.push("--pending".into());
    }
    args.extend(workspace.store_args());
    let output = process::run_to_end(&args, Duration::from_secs(3 * 3600)).await?;
    if !output.starts_with("SEEDED ") {
        return Err(format!("unexpected output of tc-bench seed: {output}"));
    }
    Ok(started.elapsed())
}

/// The session key of the workspace's controller, to mint the sessions of a seeded fleet (as
/// the seeding process writes the fleet into its store).
pub fn session_key(workspace: &Workspace) -> Result<tc_controller::session::SessionKey, String> {
    tc_testkit::sim::session_key(&workspace.data_dir()).map_err(|e| e.to_string())
}

/// A running controller process with its admin client.
pub struct RunningController {
    /// The process.
    pub server: Server,
    /// Admin calls.
    pub admin: Admin,
    /// How long it took from start to ready (opening the store, loading the fleet).
    pub startup: Duration,
    /// The bootstrap token.
    pub bootstrap_token: String,
    /// TLS to it (when started with `tls`).
    pub tls: Option<tc_testkit::sim::Tls>,
    /// The other replicas (`--replicas`), following `server`, which leads.
    pub followers: Vec<Server>,
}

impl RunningController {
    /// Where every replica listens, the leader first: the agents of `push` and `fleet` are
    /// spread over them.
    pub fn addrs(&self) -> Vec<std::net::SocketAddr> {
        std::iter::once(self.server.addr)
            .chain(self.followers.iter().map(|f| f.addr))
            .collect()
    }

    /// CPU seconds the followers used so far.
    pub fn followers_cpu_seconds(&self) -> f64 {
        self.followers.iter().map(|f| f.figures().cpu_seconds).sum()
    }

    /// The resident memory of the largest follower now (0 without followers).
    pub fn largest_follower_rss_bytes(&self) -> u64 {
        self.followers
            .iter()
            .map(|f| f.figures().rss_bytes)
            .max()
            .unwrap_or(0)
    }

    /// Stops the followers, then the leader.
    pub async fn stop(self) -> Result<(), String> {
        for follower in self.followers {
            follower.stop().await?;
        }
        self.server.stop().await
    }
}

/// Starts `tc-bench serve-controller` on the data directory (optionally pinned to a CPU) and
/// waits until it is ready.
pub async fn start_controller(
    workspace: &Workspace,
    cpu: Option<usize>,
) -> Result<RunningController, String> {
    start_controller_with(workspace, cpu, false).await
}

/// [`start_controller`], serving HTTPS with the PKI of the data directory when `tls` is set.
pub async fn start_controller_with(
    workspace: &Workspace,
    cpu: Option<usize>,
    tls: bool,
) -> Result<RunningController, String> {
    let data_dir = workspace.data_dir();
    let mut args = vec![
        "serve-controller".to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ];
    if tls {
        args.push("--tls".into());
    }
    args.extend(workspace.store_args());
    if let Some(cpu) = cpu {
        args.extend(["--cpu".into(), cpu.to_string()]);
    }
    // Extra controller settings for experiments, e.g. `--resync-seconds 3600`.
    if let Ok(extra) = std::env::var("TC_BENCH_CONTROLLER_ARGS") {
        args.extend(extra.split_whitespace().map(str::to_string));
    }
    let started = Instant::now();
    let server = Server::start(
        &args,
        &workspace.path("controller.log"),
        Duration::from_secs(60),
    )
    .await?;
    let tls = if tls {
        // The controller makes its CA while it opens the data directory, after it listens.
        let ca = data_dir.join("pki/ca.crt");
        let deadline = Instant::now() + Duration::from_secs(3600);
        while !ca.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(client_tls(&data_dir, server.addr)?)
    } else {
        None
    };
    process::wait_ready(server.addr, tls.as_ref(), Duration::from_secs(3600)).await?;
    let startup = started.elapsed();
    let read = |file: &str| {
        std::fs::read_to_string(data_dir.join(file))
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("{file}: {e}"))
    };
    let admin = Admin::new(server.addr, &read("admin.token")?, tls.clone());
    // The followers: each with a data directory of its own holding the shared files.
    let mut followers = Vec::new();
    for index in 2..=replicas() {
        let dir = workspace.path(&format!("data-{index}"));
        std::fs::create_dir_all(dir.join("pki")).map_err(|e| format!("{}: {e}", dir.display()))?;
        for file in [
            "session.key",
            "admin.token",
            "bootstrap.token",
            "pki/ca.crt",
            "pki/ca.key",
        ] {
            let from = data_dir.join(file);
            if from.exists() {
                std::fs::copy(&from, dir.join(file)).map_err(|e| format!("{file}: {e}"))?;
            }
        }
        let mut follower_args = args.clone();
        follower_args[2] = dir.display().to_string();
        let follower = Server::start(
            &follower_args,
            &workspace.path(&format!("controller-{index}.log")),
            Duration::from_secs(60),
        )
        .await?;
        let follower_tls = if tls.is_some() {
            Some(client_tls(&data_dir, follower.addr)?)
        } else {
            None
        };
        process::wait_ready(
            follower.addr,
            follower_tls.as_ref(),
            Duration::from_secs(3600),
        )
        .await?;
        followers.push(follower);
    }
    Ok(RunningController {
        server,
        admin,
        startup,
        bootstrap_token: read("bootstrap.token")?,
        tls,
        followers,
    })
}

/// TLS for the load generator: HTTP/1.1, trusting the CA in `<data_dir>/pki/ca.crt` (made by
/// whichever server started first on that data directory), checked against `addr`'s IP.
pub fn client_tls(
    data_dir: &std::path::Path,
    addr: std::net::SocketAddr,
) -> Result<tc_testkit::sim::Tls, String> {
    tc_controller::install_crypto_provider();
    let ca =
        tc_trust::Trust::from_pem_file(&data_dir.join("pki/ca.crt")).map_err(|e| e.to_string())?;
    let config =
        tc_trust::client_config(&ca, &[tc_trust::ALPN_HTTP1], None).map_err(|e| e.to_string())?;
    Ok(tc_testkit::sim::Tls::new(std::sync::Arc::new(config), addr))
}

/// The long-poll transport for `waiting` agents: HTTP/1.1 when each agent's connection fits under
/// the open-files limit of both processes (with `other` descriptors for everything else).
pub fn choose_transport(
    wanted: TransportArg,
    waiting: u64,
    other: u64,
) -> Result<Transport, String> {
    let limit = process::raise_open_files().soft;
    let fits = waiting + other + 256 <= limit;
    let h2 = Transport::Http2 {
        streams_per_connection: H2_STREAMS_PER_CONNECTION,
    };
    match wanted {
        TransportArg::Http1 if !fits => Err(format!(
            "{waiting} HTTP/1.1 long-polls need {waiting} open connections in this process and in \
             the controller, more than the open-files limit of {limit} allows; use --transport h2"
        )),
        TransportArg::Http1 => Ok(Transport::Http1),
        TransportArg::H2 => Ok(h2),
        TransportArg::Auto if fits => Ok(Transport::Http1),
        TransportArg::Auto => Ok(h2),
    }
}

/// How a transport reads in a report.
pub fn describe_transport(transport: Transport, waiting: u64) -> String {
    match transport {
        Transport::Http1 => format!("HTTP/1.1, {waiting} connections"),
        Transport::Http2 {
            streams_per_connection,
        } => format!(
            "h2c, {} connections of up to {streams_per_connection} streams",
            waiting.div_ceil(streams_per_connection as u64)
        ),
    }
}

/// Runs `work` on a new thread with its own single-threaded runtime, pinned to `cpu` if given,
/// so that a load generator neither shares the server's CPU nor the caller's runtime.
pub async fn on_own_thread<F, Fut, T>(cpu: Option<usize>, work: F) -> Result<T, String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("load-generator".into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                process::pin_current_thread(cpu);
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime");
            let _ = done.send(runtime.block_on(work()));
        })
        .map_err(|e| format!("cannot start the load generator thread: {e}"))?;
    result
        .await
        .map_err(|_| "the load generator thread panicked".to_string())
}

/// Reconcile passes so far and the seconds they took, from the controller's metrics.
pub async fn reconcile_figures(admin: &crate::admin::Admin) -> Result<(f64, f64), String> {
    let metrics = admin.metrics().await?;
    let find = |name: &str| {
        metrics
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, v)| *v)
    };
    Ok((
        find("thinfleet_reconcile_duration_seconds_count"),
        find("thinfleet_reconcile_duration_seconds_sum"),
    ))
}

/// Mebibytes.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Seconds as a `Duration` (negative and non-finite values become zero).
pub fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or_default()
}

/// A quantile of durations, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

/// A seeded fleet of simulated agents (`clients`, `seed`, `downloads` at once) that wait on the
/// long-poll over `transport` and install what they are assigned, started against `addr`, as
/// `converge` and `rollout` run them. Returns the fleet (its agents' tokens) and the running sim.
pub(crate) fn start_installing_fleet(
    workspace: &Workspace,
    addr: std::net::SocketAddr,
    (clients, seed, downloads): (u64, u64, usize),
    heartbeat_seconds: u64,
    transport: tc_testkit::sim::Transport,
) -> Result<(tc_testkit::sim::SimFleet, tc_testkit::sim::RunningSim), String> {
    let fleet = tc_testkit::sim::SimFleet::seeded(seed, clients, true, &session_key(workspace)?);
    let mut config =
        tc_testkit::sim::SimConfig::new(addr, std::time::Duration::from_secs(heartbeat_seconds));
    config.connections = 32;
    config.long_poll_share = 1.0;
    config.long_poll_transport = transport;
    config.install = true;
    config.downloads = downloads;
    config.request_timeout = std::time::Duration::from_secs(120);
    config.seed = seed;
    let sim = fleet.start(config);
    Ok((fleet, sim))
}
