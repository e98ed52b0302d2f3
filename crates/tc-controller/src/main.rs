//! `tc-controller`: the thinfleet controller binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tc_controller::{Config, TlsMode, serve_with};

/// mimalloc rather than the system allocator: the controller allocates and frees a task, a request
/// and a response per long-poll on one thread and often frees them on another, which glibc's
/// allocator serves at about 1.5 times the CPU (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The thinfleet controller: desired state, observed state, the API, the blobs and the agents'
/// endpoint.
#[derive(Debug, Parser)]
#[command(name = "tc-controller", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on (IPv4 or IPv6, e.g. `[::]:7130`).
    #[arg(long, default_value = "127.0.0.1:7130", env = "TC_CONTROLLER_LISTEN")]
    listen: SocketAddr,
    /// Data directory: the database, the blobs and the token files.
    #[arg(
        long,
        default_value = "./data",
        env = "TC_CONTROLLER_DATA_DIR",
        global = true
    )]
    data_dir: PathBuf,
    /// Watched manifest directory, applied at start and on every change.
    #[arg(long, default_value = "./manifests", env = "TC_CONTROLLER_MANIFESTS")]
    manifests: PathBuf,
    /// Do not watch a manifest directory.
    #[arg(long)]
    no_manifests: bool,
    /// Serve blobs without authentication (for a CDN or cache in front).
    #[arg(long)]
    public_blobs: bool,
    /// Seconds between periodic reconcile passes and directory re-reads.
    #[arg(long, default_value_t = 30)]
    resync_seconds: u64,
    /// Serve plain HTTP (HTTP/1.1 and h2c) instead of HTTPS: behind a TLS-terminating proxy, or
    /// on loopback.
    #[arg(long, env = "TC_CONTROLLER_INSECURE_HTTP", conflicts_with_all = ["tls_cert", "tls_key", "tls_san"])]
    insecure_http: bool,
    /// PEM certificate chain to serve (server certificate first, up to the CA agents pin)
    /// instead of the generated one in <data-dir>/pki; reloaded when the file changes.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        env = "TC_CONTROLLER_TLS_CERT"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        env = "TC_CONTROLLER_TLS_KEY"
    )]
    tls_key: Option<PathBuf>,
    /// Another host name or IP address for the generated server certificate (repeatable).
    #[arg(long = "tls-san", value_name = "NAME|IP", conflicts_with = "tls_cert")]
    tls_san: Vec<String>,
    /// Connections served at once; further ones are closed at once.
    #[arg(long, default_value_t = Config::new(".").max_connections, value_name = "N")]
    max_connections: usize,
    /// Every new client waits as Pending until `tcadm approve` (whatever its bootstrap token).
    #[arg(long, env = "TC_CONTROLLER_REQUIRE_APPROVAL")]
    require_approval: bool,
    /// Apply refuses every PackageRelease without a signature (`spec.artifact.signature`, or a
    /// `ZIP.minisig` beside a zip in the watched directory).
    #[arg(long, env = "TC_CONTROLLER_REQUIRE_SIGNED")]
    require_signed: bool,
    /// The audit trail keeps at most this many entries (the oldest go first).
    #[arg(long, value_name = "N", env = "TC_CONTROLLER_AUDIT_MAX_ENTRIES",
        default_value_t = tc_store::AuditRetention::default().max_entries)]
    audit_max_entries: u64,
    /// The audit trail drops entries older than this many days.
    #[arg(long, value_name = "DAYS", env = "TC_CONTROLLER_AUDIT_MAX_AGE_DAYS",
        default_value_t = tc_store::AuditRetention::default().max_age.as_secs() / 86_400)]
    audit_max_age_days: u64,
    /// How long a web console session lasts after sign-in, in hours.
    #[arg(
        long,
        value_name = "HOURS",
        env = "TC_CONTROLLER_CONSOLE_SESSION_HOURS",
        default_value_t = 12
    )]
    console_session_hours: u64,
    /// Where the state is kept: `redb` (<data-dir>/thinfleet.redb) or a PostgreSQL database
    /// (`postgres://user@host:5432/thinfleet`; its schema is created and migrated at start). The
    /// data directory still holds the blobs, the token files and the PKI.
    #[arg(
        long,
        default_value = "redb",
        env = "TC_CONTROLLER_STORE",
        hide_env_values = true,
        global = true
    )]
    store: String,
    /// File whose first line is the PostgreSQL password (else TC_CONTROLLER_STORE_PASSWORD, else
    /// the URL's); also the password of `migrate --to`.
    #[arg(
        long,
        value_name = "FILE",
        env = "TC_CONTROLLER_STORE_PASSWORD_FILE",
        global = true
    )]
    store_password_file: Option<PathBuf>,
    /// PEM file of the CA certificates that signed the PostgreSQL server's certificate: every
    /// connection then uses TLS and verifies the server (its chain, and the URL's host name);
    /// without it, connections are in plain text. Also for `migrate --to`.
    #[arg(
        long,
        value_name = "FILE",
        env = "TC_CONTROLLER_STORE_CA_FILE",
        global = true
    )]
    store_ca_file: Option<PathBuf>,
    /// This replica's name in the leader lease of a PostgreSQL store (the host name by default;
    /// on Kubernetes, the pod's name).
    #[arg(long, value_name = "NAME", env = "TC_CONTROLLER_REPLICA_NAME")]
    replica_name: Option<String>,
    /// With a PostgreSQL store: the URL the other replicas reach this one at (the followers
    /// forward to the leader there), e.g. https://10.0.3.7:8443; by default the address it
    /// listens on, unless that is 0.0.0.0 or ::. Its host is added to the generated certificate.
    #[arg(long, value_name = "URL", env = "TC_CONTROLLER_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Also start three real tc-agent processes (throwaway state, different labels) and print the
    /// fleet's events: a fleet converging on one machine.
    #[arg(long)]
    demo: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    match &args.command {
        Some(Command::Ca(command)) => return ca_command(command, &args),
        Some(Command::Migrate { from, to }) => {
            return migrate_command(
                from,
                to,
                args.store_password_file.as_deref(),
                args.store_ca_file.as_deref(),
            );
        }
        None => {}
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("error: cannot listen on {}: {error}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let mut config = Config::new(&args.data_dir);
        config.store = match tc_controller::store::StoreLocation::parse(
            &args.store,
            args.store_password_file.as_deref(),
            std::env::var(tc_controller::store::PASSWORD_ENV).ok(),
            args.store_ca_file.as_deref(),
        ) {
            Ok(store) => store,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        };
        config.replica_name = args.replica_name.clone();
        config.advertise_url = args.advertise_url.clone();
        config.manifests_dir = (!args.no_manifests).then(|| args.manifests.clone());
        config.public_blobs = args.public_blobs;
        config.resync_interval = std::time::Duration::from_secs(args.resync_seconds.max(1));
        config.max_connections = args.max_connections.max(1);
        config.tls = match (args.insecure_http, args.tls_cert, args.tls_key) {
            (true, _, _) => TlsMode::Disabled,
            (false, Some(cert), Some(key)) => TlsMode::Files { cert, key },
            _ => TlsMode::Generated {
                extra_names: args.tls_san.clone(),
            },
        };
        config.require_approval = args.require_approval;
        config.require_signed = args.require_signed;
        config.audit_retention = tc_store::AuditRetention {
            max_entries: args.audit_max_entries.max(1),
            max_age: std::time::Duration::from_secs(
                args.audit_max_age_days.max(1).saturating_mul(86_400),
            ),
        };
        config.console_session_lifetime =
            std::time::Duration::from_secs(args.console_session_hours.max(1).saturating_mul(3600));
        tracing::info!(listen = %args.listen, data_dir = %args.data_dir.display(), "tc-controller starting");
        match serve_with(listener, config, shutdown_signal(), args.demo).await {
            Ok(()) => {
                tracing::info!("tc-controller stopped");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Commands other than serving.
#[derive(Debug, Subcommand)]
enum Command {
    /// Replace the controller's generated CA without locking agents out.
    #[command(subcommand)]
    Ca(CaCommand),
    /// With the controller stopped: copy its state from the embedded store (DIR/thinfleet.redb)
    /// into an empty PostgreSQL database, as it is (agents keep their clients, keys and
    /// sessions). Then start the controller with the same --data-dir and --store URL: the data
    /// directory keeps the blobs, the PKI and the token files.
    Migrate {
        /// The controller's data directory.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The PostgreSQL database (`postgres://user@host:5432/thinfleet`); its password from
        /// --store-password-file, else TC_CONTROLLER_STORE_PASSWORD, else the URL.
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

/// The two steps of replacing the CA.
#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Make the next CA (<data-dir>/pki/next-ca.crt) and print its fingerprint; agents then
    /// pin both (`caCertHash: OLD,NEW`; new tokens' join material has both). Safe while the
    /// controller runs.
    Prepare,
    /// With the controller stopped: make the next CA the CA (the old one is kept as
    /// previous-ca.crt); the server certificate is issued by it at the next start.
    Rotate,
}

/// Runs `migrate`.
fn migrate_command(
    from: &Path,
    to: &str,
    password_file: Option<&Path>,
    ca_file: Option<&Path>,
) -> ExitCode {
    let location = tc_controller::store::StoreLocation::parse(
        to,
        password_file,
        std::env::var(tc_controller::store::PASSWORD_ENV).ok(),
        ca_file,
    );
    let settings = match location {
        Ok(tc_controller::store::StoreLocation::Postgres(settings)) => settings,
        Ok(tc_controller::store::StoreLocation::Redb) => {
            eprintln!("error: --to: expected a PostgreSQL URL (postgres://user@host:5432/db)");
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("error: {}", error.to_string().replace("--store:", "--to:"));
            return ExitCode::FAILURE;
        }
    };
    match tc_controller::migrate::migrate(from, &settings) {
        Ok(migrated) => {
            println!(
                "copied {} into PostgreSQL:",
                from.join(tc_controller::migrate::REDB_FILE).display()
            );
            print!("{}", migrated.store);
            let (blobs, bytes) = migrated.blobs;
            println!("{:<17} {blobs} ({bytes} bytes)", "blobs");
            println!(
                "start the controller with --data-dir {} --store <the same URL>; the PKI and the \
                 token files stay in the data directory",
                from.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a `ca` command.
fn ca_command(command: &CaCommand, args: &Args) -> ExitCode {
    let data_dir = &args.data_dir;
    let pki = data_dir.join("pki");
    let result = match command {
        CaCommand::Prepare => {
            tc_controller::pki::prepare_next_ca(&pki, tc_controller::pki::unix_now()).map(|next| {
                let current = tc_controller::pki::ca_hash(&pki)
                    .map(|hash| hash.to_string())
                    .unwrap_or_else(|| "(none yet)".into());
                println!("next CA: {} ({next})", pki.join("next-ca.crt").display());
                println!("give agents both fingerprints: caCertHash: {current},{next}");
                println!("then stop the controller and run `tc-controller ca rotate`");
            })
        }
        CaCommand::Rotate => {
            // A running controller would go on serving the old certificate while the files say
            // otherwise. One on PostgreSQL holds the data directory's lock (held here until the
            // rotation is done); one on redb holds its database file.
            let lock_path = data_dir.join("controller.lock");
            let _lock = match tc_controller::datadir::lock(data_dir) {
                Ok(lock) => Some(lock),
                // No data directory: rotate_ca says what is missing.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    eprintln!(
                        "error: {}: {error}; stop the controller before rotating its CA",
                        lock_path.display()
                    );
                    return ExitCode::FAILURE;
                }
                Err(error) => {
                    eprintln!("error: {}: {error}", lock_path.display());
                    return ExitCode::FAILURE;
                }
            };
            let db = data_dir.join("thinfleet.redb");
            if args.store == "redb"
                && db.exists()
                && let Err(error) = tc_store::RedbStore::open(&db)
            {
                eprintln!(
                    "error: {}: {error}; stop the controller before rotating its CA",
                    db.display()
                );
                return ExitCode::FAILURE;
            }
            tc_controller::pki::rotate_ca(&pki).map(|(old, new)| {
                println!("the CA is now {new} (was {old}, kept as previous-ca.crt)");
                println!("start the controller: it issues its server certificate with the new CA");
                println!("once every agent runs, pin only the new one: caCertHash: {new}");
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}
