//! `tc-agent`: the thinfleet agent binary.

use std::process::ExitCode;

use clap::Parser;
use tc_agent::client::{self, RunOptions};
use tc_agent::config::{Cli, Command, Settings, StatusSettings};
use tc_agent::fault::Faults;
use tc_agent::selfupdate;
use tc_agent::state::StateDir;
use tc_proto::Timestamp;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

fn main() -> ExitCode {
    let command = Cli::parse().into_command();
    init_logging();
    match command {
        Command::Status(settings) => status(&settings),
        Command::Run(settings) => run(&settings),
    }
}

/// Logs go to stderr, and the recent lines to a ring in memory that `collectLogs` sends;
/// `TC_AGENT_LOG` (or `RUST_LOG`) takes `info`, `debug`, or per-target directives such as
/// `tc_agent=debug,info`.
fn init_logging() {
    let directives = std::env::var("TC_AGENT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_default();
    let filter = directives
        .parse::<Targets>()
        .ok()
        .filter(|_| !directives.is_empty())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(tc_agent::tasks::logs::RingWriter::default)
                .with_ansi(false),
        )
        .with(filter)
        .init();
}

fn status(settings: &StatusSettings) -> ExitCode {
    let state_dir = match settings.state_dir() {
        Ok(dir) => dir,
        Err(error) => return fail(2, &error),
    };
    match tc_agent::status::render(&StateDir::new(state_dir), Timestamp::now()) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => fail(1, &error),
    }
}

fn run(settings: &Settings) -> ExitCode {
    let config = match settings.resolve(&tc_agent::inventory::hostname()) {
        Ok(config) => config,
        Err(error) => return fail(2, &error),
    };
    let faults = match Faults::from_env() {
        Ok(faults) => faults,
        Err(error) => return fail(2, &error),
    };
    let retry = match tc_agent::fault::retry_from_env() {
        Ok(retry) => retry,
        Err(error) => return fail(2, &error),
    };
    tc_agent::install_crypto_provider();
    let dir = StateDir::new(&config.state_dir);
    if let Some(nonce) = std::env::var_os(selfupdate::CHECK_IN_ENV) {
        return check_in(RunOptions::new(config), &nonce);
    }
    // The binary a `thinfleet-agent` release installed runs instead of this one, if there is one.
    let mut self_update = selfupdate::SelfUpdate::from_process(config.self_update_check_in);
    match selfupdate::launch(&dir) {
        selfupdate::Launched::Nothing => {}
        selfupdate::Launched::Failed(error) => {
            tracing::error!(%error, "cannot start the agent installed by {}; running this binary", selfupdate::PACKAGE);
        }
        selfupdate::Launched::GaveUp { version } => {
            tracing::error!(%version, launches = selfupdate::MAX_LAUNCHES,
                "the agent installed by {} stopped before checking in at every start; running this binary and giving that release up",
                selfupdate::PACKAGE);
            self_update.give_up = Some(version);
        }
    }
    let mark_path = dir.decommissioned();
    let mut options = RunOptions::new(config);
    options.engine.self_update = Some(self_update);
    options.engine.faults = faults;
    if let Some(retry) = retry {
        options.engine.retry = retry;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(1, &error),
    };
    match runtime.block_on(client::run(options, shutdown_signal())) {
        Ok(client::RunOutcome::Stopped | client::RunOutcome::CheckedIn) => ExitCode::SUCCESS,
        Ok(client::RunOutcome::Restart) => {
            drop(runtime);
            fail(1, &selfupdate::restart(&dir))
        }
        Ok(client::RunOutcome::Decommissioned(mark)) => {
            eprintln!(
                "tc-agent: this machine was decommissioned as client {} by {} at {}: every \
                 package thinfleet installed was removed and its identity deleted, so the agent \
                 does not run. To enrol it again, an admin runs `tcadm allow machine ID` and \
                 the file {} is removed.",
                mark.client_name,
                if mark.server.is_empty() {
                    "the controller"
                } else {
                    &mark.server
                },
                mark.at,
                mark_path.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => fail(1, &error),
    }
}

/// Check-in mode: one accepted heartbeat, announced on standard output, within the configured
/// self-update deadline (the agent that started this binary stops it then anyway).
fn check_in(options: RunOptions, nonce: &std::ffi::OsStr) -> ExitCode {
    let deadline = options.config.self_update_check_in;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(1, &error),
    };
    match runtime
        .block_on(async { tokio::time::timeout(deadline, client::check_in(options)).await })
    {
        Ok(Ok(())) => {
            println!("{}", selfupdate::checked_in_line(nonce));
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => fail(1, &error),
        Err(_) => fail(1, &"no heartbeat was accepted within the check-in deadline"),
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn fail(code: u8, error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("tc-agent: {error}");
    ExitCode::from(code)
}
