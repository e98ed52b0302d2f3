//! Demo mode (`tc-controller --demo`): the controller plus three real `tc-agent` processes with
//! throwaway state directories and different labels, so a new user sees a fleet enrol, converge and
//! roll changes out within a minute. The fleet's events are printed as they happen. Stopping the
//! controller stops the agents and removes their state.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tc_store::EventFilter;
use tokio::process::{Child, Command};

use crate::Controller;

/// The demo agents: name and labels.
pub const AGENTS: [(&str, &[(&str, &str)]); 3] = [
    (
        "demo-kiosk-1",
        &[("role", "front-desk"), ("site", "berlin")],
    ),
    ("demo-kiosk-2", &[("role", "front-desk"), ("site", "paris")]),
    (
        "demo-office-1",
        &[("role", "back-office"), ("site", "berlin")],
    ),
];

/// Running demo agents; dropping this kills them and removes their state.
pub struct DemoAgents {
    children: Vec<Child>,
    _state: tempfile::TempDir,
}

impl DemoAgents {
    /// Stops the agents.
    pub async fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.kill().await;
        }
    }
}

/// The `tc-agent` binary next to this executable.
pub fn agent_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
    let candidate = exe.with_file_name(format!("tc-agent{}", std::env::consts::EXE_SUFFIX));
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(format!(
            "{} not found; the demo runs the real agent: build both with `cargo build --release` first",
            candidate.display()
        ))
    }
}

/// Starts the three demo agents against `server`, pinning the CA `ca_cert_hash` (HTTPS).
pub fn start_agents(
    agent: &Path,
    server: &str,
    bootstrap_token_file: &Path,
    ca_cert_hash: Option<&str>,
) -> Result<DemoAgents, String> {
    let state = tempfile::Builder::new()
        .prefix("thinfleet-demo-")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;
    let mut children = vec![];
    for (name, labels) in AGENTS {
        let dir = state.path().join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log = std::fs::File::create(dir.with_extension("log"))
            .map_err(|e| format!("agent log: {e}"))?;
        let mut command = Command::new(agent);
        command
            .arg("--server")
            .arg(server)
            .arg("--bootstrap-token-file")
            .arg(bootstrap_token_file)
            .arg("--state-dir")
            .arg(&dir)
            .args(["--name", name, "--machine-id", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(hash) = ca_cert_hash {
            command.arg("--ca-cert-hash").arg(hash);
        }
        for (key, value) in labels {
            command.arg("--label").arg(format!("{key}={value}"));
        }
        children.push(
            command
                .spawn()
                .map_err(|e| format!("starting {}: {e}", agent.display()))?,
        );
    }
    tracing::info!(state = %state.path().display(), "demo agents started (their logs are next to their state directories)");
    Ok(DemoAgents {
        children,
        _state: state,
    })
}

/// Prints every new event, one line each, until shutdown.
pub async fn print_events(
    controller: Arc<Controller>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut after = 0u64;
    loop {
        let store = controller.store.clone();
        let filter = EventFilter {
            after_seq: Some(after),
            ..Default::default()
        };
        if let Ok(Ok(events)) =
            tokio::task::spawn_blocking(move || store.list_events(&filter)).await
        {
            for event in events {
                after = after.max(event.seq);
                println!(
                    "{}  {:<7}  {:<28} {:<14} {}",
                    event.time,
                    event.type_,
                    format!(
                        "{}/{}",
                        event.object.kind.to_ascii_lowercase(),
                        event.object.name
                    ),
                    event.reason,
                    event.message
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return,
        }
    }
}
