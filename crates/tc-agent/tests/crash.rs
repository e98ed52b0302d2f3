//! The real `tc-agent` binary against the fake controller, restarted along the way.
//!
//! Crash tests: the agent is made to abort (`TC_AGENT_FAULT`) at each point of an update, then
//! restarted without the fault, and must converge with `current` pointing at a complete version.
//! A failed release: its hooks run once, however many heartbeats, long-polls and restarts
//! follow, until an admin's retry. These are the slow tests of the crate (a few seconds each).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{
    BOOTSTRAP_TOKEN, FakeController, assert_active_complete, assert_complete, current_version,
    failing_release_hooks, package_zip, read_log, shell_hook, wait_for, wait_for_failed_rounds,
};
use tc_agent::state::StateDir;
use tc_proto::Hooks;

const WAIT: Duration = Duration::from_secs(60);
const SIGABRT: i32 = 6;

/// A `tc-agent` process with its log file.
struct AgentProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

impl AgentProcess {
    fn start(fake: &FakeController, work: &Path, fault: Option<&str>) -> Self {
        Self::start_with(fake, work, fault, None)
    }

    /// Starts the agent; `retry_millis` sets `TC_AGENT_RETRY_MILLIS`.
    fn start_with(
        fake: &FakeController,
        work: &Path,
        fault: Option<&str>,
        retry_millis: Option<u64>,
    ) -> Self {
        let token_file = work.join("bootstrap.token");
        std::fs::write(&token_file, format!("{BOOTSTRAP_TOKEN}\n")).unwrap();
        let runs = std::fs::read_dir(work)
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|entry| entry.file_name().to_string_lossy().starts_with("agent-"))
            })
            .count();
        let log = work.join(format!("agent-{runs}.log"));
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tc-agent"));
        command
            .arg("--server")
            .arg(fake.url())
            .arg("--bootstrap-token-file")
            .arg(&token_file)
            .arg("--state-dir")
            .arg(work.join("state"))
            .args(["--name", "crash-test", "--machine-id", "crash-test-machine"])
            .args(["--label", "purpose=crash-test"])
            // A core file, if the system writes one, lands in the temporary directory.
            .current_dir(work)
            .env_remove("TC_AGENT_FAULT")
            .env_remove("TC_AGENT_RETRY_MILLIS")
            .env("TC_AGENT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true);
        if let Some(point) = fault {
            command.env("TC_AGENT_FAULT", point);
        }
        if let Some(millis) = retry_millis {
            command.env("TC_AGENT_RETRY_MILLIS", millis.to_string());
        }
        AgentProcess {
            child: command.spawn().expect("the tc-agent binary starts"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Installs 1.0.0, updates to 2.0.0 with the agent aborting at `point`, restarts it and waits for
/// 2.0.0 to be reported installed.
async fn update_survives_abort_at(point: &str) {
    let fake = FakeController::start();
    fake.state().blobs_need_token = true;
    let work = tempfile::tempdir().unwrap();
    let dir = StateDir::new(work.path().join("state"));
    let hooks = Hooks {
        post_install: Some(shell_hook("sleep 0.2; echo configured", 30)),
        health_check: Some(shell_hook("./health.sh", 30)),
        ..Hooks::default()
    };

    let v1 = fake.package("kiosk", "1.0.0", package_zip("1.0.0"), hooks.clone());
    let first = fake.set_desired(vec![v1]);
    let agent = AgentProcess::start(&fake, work.path(), None);
    wait_for(
        WAIT,
        || fake.reports_installed("kiosk", "1.0.0", first),
        || agent.log(),
    )
    .await;
    agent.kill().await;
    assert_active_complete(&dir, "kiosk", "1.0.0");

    let v2 = fake.package("kiosk", "2.0.0", package_zip("2.0.0"), hooks);
    let second = fake.set_desired(vec![v2]);
    let mut agent = AgentProcess::start(&fake, work.path(), Some(point));
    let status = tokio::time::timeout(WAIT, agent.child.wait())
        .await
        .unwrap_or_else(|_| panic!("{point}: the agent did not abort\n{}", agent.log()))
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "{point}: {status:?}\n{}",
        agent.log()
    );
    assert!(agent.log().contains("aborting"), "{}", agent.log());
    let active = current_version(&dir, "kiosk").expect("a version stays active");
    assert!(
        active == "1.0.0" || active == "2.0.0",
        "{point}: current -> {active}"
    );
    assert_complete(&dir, "kiosk", &active);

    let agent = AgentProcess::start(&fake, work.path(), None);
    wait_for(
        WAIT,
        || fake.reports_installed("kiosk", "2.0.0", second),
        || agent.log(),
    )
    .await;
    assert_active_complete(&dir, "kiosk", "2.0.0");
    assert_complete(&dir, "kiosk", "1.0.0");
    agent.kill().await;
    assert_eq!(fake.state().enrolments.len(), 1, "enrolled once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_after_download_recovers() {
    update_survives_abort_at("after-download").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_after_extract_recovers() {
    update_survives_abort_at("after-extract").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_after_activate_recovers() {
    update_survives_abort_at("after-activate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_during_hook_recovers() {
    update_survives_abort_at("during-hook").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_before_commit_recovers() {
    update_survives_abort_at("before-commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fault_point_is_refused_at_start() {
    let fake = FakeController::start();
    let work = tempfile::tempdir().unwrap();
    let mut agent = AgentProcess::start(&fake, work.path(), Some("whenever"));
    let status = tokio::time::timeout(WAIT, agent.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(
        agent.log().contains("unknown fault point `whenever`"),
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_release_runs_post_install_once_across_rounds_and_restarts() {
    let fake = FakeController::start();
    fake.state().blobs_need_token = true;
    let work = tempfile::tempdir().unwrap();
    let dir = StateDir::new(work.path().join("state"));
    let log = work.path().join("post-install.log");
    // Whatever the agent retries, it retries after 100 ms: several times between two heartbeats
    // (the binary sends one a second at most).
    let start = || AgentProcess::start_with(&fake, work.path(), None, Some(100));

    let v1 = fake.package("kiosk", "1.0.0", package_zip("1.0.0"), Hooks::default());
    let first = fake.set_desired(vec![v1]);
    let agent = start();
    wait_for(
        WAIT,
        || fake.reports_installed("kiosk", "1.0.0", first),
        || agent.log(),
    )
    .await;

    let broken = fake.package(
        "kiosk",
        "2.0.0",
        package_zip("2.0.0"),
        failing_release_hooks(&log),
    );
    let revision = fake.set_desired(vec![broken.clone()]);
    wait_for_failed_rounds(&fake, 3, "2.0.0", revision).await;
    let revision = fake.set_desired(vec![broken.clone()]);
    wait_for_failed_rounds(&fake, 2, "2.0.0", revision).await;
    agent.kill().await;
    let agent = start();
    wait_for_failed_rounds(&fake, 3, "2.0.0", revision).await;
    assert_eq!(read_log(&log), ["postInstall 2.0.0"], "{}", agent.log());
    assert_active_complete(&dir, "kiosk", "1.0.0");

    // An admin's retry: the release is installed again at once (and fails once more).
    let revision = fake.set_desired(vec![tc_proto::DesiredPackage {
        attempt: 1,
        ..broken
    }]);
    wait_for(WAIT, || read_log(&log).len() == 2, || agent.log()).await;
    wait_for_failed_rounds(&fake, 3, "2.0.0", revision).await;
    assert_eq!(
        read_log(&log),
        ["postInstall 2.0.0", "postInstall 2.0.0"],
        "{}",
        agent.log()
    );
    assert_active_complete(&dir, "kiosk", "1.0.0");
    agent.kill().await;
}
