//! `tc-bench`: benchmarks of the thinfleet controller and agent.
//!
//! Every scenario prints a table; with `--json` the last line of the output is one JSON object
//! with the same figures. The controller under test always runs in a separate process (this
//! binary, `tc-bench serve-controller`), so that its memory and CPU are its own.

/// The controller binary's allocator, so that `serve-controller` measures what ships (the
/// simulator and the bare endpoint use it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod process;
mod report;
mod scenarios;
mod servers;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Benchmarks of the thinfleet controller and agent; see BENCHMARKS.md.
#[derive(Debug, Parser)]
#[command(name = "tc-bench", version)]
struct Cli {
    /// Also print the figures as one JSON object on the last line.
    #[arg(long, global = true)]
    json: bool,
    /// Keep the controller's state in PostgreSQL (a server this run starts, durable: fsync on)
    /// instead of the embedded redb store.
    #[arg(long, global = true)]
    postgres: bool,
    /// With --postgres: run this many controller replicas on the database; `push` and `fleet`
    /// spread their agents over all of them (the first leads, the others follow).
    #[arg(long, global = true, default_value_t = 1, value_name = "N")]
    replicas: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Heartbeat throughput and latency of the real controller against a bare axum endpoint.
    Heartbeat(HeartbeatArgs),
    /// A large fleet heartbeating on schedule: rate, latency, errors, controller memory.
    Fleet(FleetArgs),
    /// Agents waiting on the long-poll: time from an apply until every one has the new revision.
    Push(PushArgs),
    /// Agents installing a new release: time until all report it, beside the bandwidth bound.
    Converge(ConvergeArgs),
    /// A stepped rollout of a new release over a group of agents: per step, its time beside
    /// the bandwidth bound of the members it admits.
    Rollout(RolloutArgs),
    /// One exec task to agents waiting on the long-poll: time until every one has its order and
    /// every result is recorded, losses, memory and disk per result.
    Tasks(TasksArgs),
    /// The real tc-agent: binary size, idle memory and idle CPU.
    Agent(AgentArgs),
    /// The web console's overview and clients pages on a large fleet: latency against a baseline.
    Console(ConsoleArgs),
    /// Runs the real controller until standard input closes (used by the scenarios).
    #[command(hide = true)]
    ServeController(servers::ControllerArgs),
    /// Runs the bare heartbeat endpoint until standard input closes (used by the scenarios).
    #[command(hide = true)]
    ServeBare(servers::BareArgs),
    /// Seeds a data directory with a simulated fleet (used by the scenarios).
    #[command(hide = true)]
    Seed(servers::SeedArgs),
}

/// Options of `tc-bench heartbeat`.
#[derive(Clone, Debug, Args)]
pub struct HeartbeatArgs {
    /// Enrolled clients whose heartbeats are replayed.
    #[arg(long, default_value_t = 10_000)]
    pub clients: u64,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds measured per server.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Do not pin the server and the load generator to separate CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Fleet seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Both servers behind the controller's rustls configuration and certificate (HTTPS,
    /// keep-alive); plain HTTP otherwise.
    #[arg(long)]
    pub tls: bool,
}

/// Options of `tc-bench fleet`.
#[derive(Clone, Debug, Args)]
pub struct FleetArgs {
    /// Simulated clients.
    #[arg(long, default_value_t = 1_000_000)]
    pub clients: u64,
    /// Mean heartbeat interval in seconds (each one jittered by ±10 %).
    #[arg(long, default_value_t = 60.0)]
    pub interval: f64,
    /// Seconds measured after the warm-up.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Seconds of load before measuring [default: a quarter of the interval, at most 15].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Keep-alive connections carrying heartbeats.
    #[arg(long, default_value_t = 128)]
    pub connections: usize,
    /// Share of the agents also waiting on the long-poll (0.0..=1.0).
    #[arg(long, default_value_t = 0.0)]
    pub long_poll_share: f64,
    /// Long-poll transport.
    #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
    pub transport: TransportArg,
    /// First contact: the clients are freshly enrolled (`Pending`, no inventory), so every agent's
    /// first heartbeat carries its full inventory and is written through to the store.
    #[arg(long)]
    pub first_contact: bool,
    /// Additional agents enrolled over HTTP (one by one, as real agents do) to measure the
    /// enrolment rate; they do not heartbeat.
    #[arg(long, default_value_t = 500)]
    pub enroll_http: u64,
    /// Fleet seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// The controller serves HTTPS (as it does by default) and every agent connection is TLS;
    /// plain HTTP otherwise.
    #[arg(long)]
    pub tls: bool,
}

/// Options of `tc-bench push`.
#[derive(Clone, Debug, Args)]
pub struct PushArgs {
    /// Agents waiting on the long-poll.
    #[arg(long, default_value_t = 50_000)]
    pub waiting: u64,
    /// Long-poll transport.
    #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
    pub transport: TransportArg,
    /// Heartbeat interval in seconds (long, so that the long-poll delivers the change).
    #[arg(long, default_value_t = 300.0)]
    pub interval: f64,
    /// Seconds to let the controller take in every long-poll before each apply.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Applies to time, one after another, each assigning a newer release.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Longest wait for every agent to be notified, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Fleet seed.
    #[arg(long, default_value_t = 11)]
    pub seed: u64,
}

/// Options of `tc-bench tasks`.
#[derive(Clone, Debug, Args)]
pub struct TasksArgs {
    /// Agents waiting on the long-poll, all targets of the task.
    #[arg(long, default_value_t = 50_000)]
    pub waiting: u64,
    /// Long-poll transport.
    #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
    pub transport: TransportArg,
    /// Heartbeat interval in seconds (long, so that the long-poll delivers the order).
    #[arg(long, default_value_t = 300.0)]
    pub interval: f64,
    /// Seconds to let the controller take in every long-poll before the task.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Longest wait for every result, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Fleet seed.
    #[arg(long, default_value_t = 11)]
    pub seed: u64,
}

/// Options of `tc-bench converge`.
#[derive(Clone, Debug, Args)]
pub struct ConvergeArgs {
    /// Simulated clients.
    #[arg(long, default_value_t = 10_000)]
    pub clients: u64,
    /// Size of the new release, in MiB (fractions allowed).
    #[arg(long, default_value_t = 1.0)]
    pub package_mib: f64,
    /// Concurrent blob downloads of the simulated fleet (and of the throughput measurement).
    #[arg(long, default_value_t = 64)]
    pub downloads: usize,
    /// Long-poll transport.
    #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
    pub transport: TransportArg,
    /// Longest wait for convergence, in seconds.
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
    /// Fleet seed.
    #[arg(long, default_value_t = 13)]
    pub seed: u64,
}

/// Options of `tc-bench rollout`.
#[derive(Clone, Debug, Args)]
pub struct RolloutArgs {
    /// Simulated clients, all members of the group.
    #[arg(long, default_value_t = 10_000)]
    pub clients: u64,
    /// Size of the new release, in MiB (fractions allowed).
    #[arg(long, default_value_t = 1.0)]
    pub package_mib: f64,
    /// The rollout's steps, comma-separated: `N` members in all, `N%` of the members in all,
    /// `pause:DURATION`.
    #[arg(long, default_value = "1,10%,50%,100%")]
    pub steps: String,
    /// Concurrent blob downloads of the simulated fleet (and of the throughput measurement).
    #[arg(long, default_value_t = 64)]
    pub downloads: usize,
    /// Long-poll transport.
    #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
    pub transport: TransportArg,
    /// Longest wait for each rollout (the first, then the stepped one), in seconds.
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
    /// Fleet seed.
    #[arg(long, default_value_t = 17)]
    pub seed: u64,
}

/// Options of `tc-bench console`.
#[derive(Clone, Debug, Args)]
pub struct ConsoleArgs {
    /// Seeded clients.
    #[arg(long, default_value_t = 1_000_000)]
    pub clients: u64,
    /// Rounds; each asks for every page once.
    #[arg(long, default_value_t = 40)]
    pub rounds: u64,
    /// Fleet seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Options of `tc-bench agent`.
#[derive(Clone, Debug, Args)]
pub struct AgentArgs {
    /// Seconds the agent idles (enrolled, heartbeating, long-polling) while measured.
    #[arg(long, default_value_t = 60.0)]
    pub idle: f64,
    /// Seconds after enrolment before measuring.
    #[arg(long, default_value_t = 5.0)]
    pub warmup: f64,
    /// The agent binary [default: `tc-agent` next to this executable].
    #[arg(long)]
    pub agent_binary: Option<PathBuf>,
    /// Fall back to the debug build (`target/debug/tc-agent`) when there is no release build
    /// next to this executable (for CI smoke runs; its figures are not the release figures).
    #[arg(long)]
    pub allow_debug_agent: bool,
    /// The controller serves plain HTTP (`--insecure-http`); by default it serves HTTPS and the
    /// agent pins its CA, as agents are installed.
    #[arg(long)]
    pub insecure_http: bool,
}

/// How long-polls travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportArg {
    /// HTTP/1.1 (one connection per waiting agent) when the file-descriptor limits allow it,
    /// else h2c.
    Auto,
    /// One HTTP/1.1 connection per waiting agent.
    Http1,
    /// HTTP/2 without TLS, 190 waiting agents per connection.
    H2,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.replicas == 0 || (cli.replicas > 1 && !cli.postgres) {
        eprintln!("tc-bench: --replicas above 1 needs --postgres (replicas share a database)");
        std::process::exit(2);
    }
    scenarios::use_postgres(cli.postgres);
    scenarios::use_replicas(cli.replicas);
    let result = match cli.command {
        Command::ServeController(args) => servers::serve_controller(args),
        Command::ServeBare(args) => servers::serve_bare(args),
        Command::Seed(args) => servers::seed(args),
        Command::Heartbeat(args) => run(cli.json, scenarios::heartbeat::run(args)),
        Command::Fleet(args) => run(cli.json, scenarios::fleet::run(args)),
        Command::Push(args) => run(cli.json, scenarios::push::run(args)),
        Command::Converge(args) => run(cli.json, scenarios::converge::run(args)),
        Command::Rollout(args) => run(cli.json, scenarios::rollout::run(args)),
        Command::Tasks(args) => run(cli.json, scenarios::tasks::run(args)),
        Command::Agent(args) => run(cli.json, scenarios::agent::run(args)),
        Command::Console(args) => run(cli.json, scenarios::console::run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tc-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a scenario on a multi-threaded runtime and prints its report.
fn run(
    json: bool,
    scenario: impl std::future::Future<Output = Result<report::Report, String>>,
) -> Result<(), String> {
    let limits = process::raise_open_files();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let mut report = runtime.block_on(scenario)?;
    report.machine(limits);
    report.print(json);
    Ok(())
}
