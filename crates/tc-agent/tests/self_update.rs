//! The agent updates itself through the fleet: real `tc-agent` binaries against a real controller
//! in this process, with `thinfleet-agent` releases assigned by a group like any package.
//!
//! * a release holding a working agent is installed beside the running binary, checks in, and the
//!   agent restarts into it (same process, new executable) and keeps converging; a restart of
//!   the original binary launches the installed one;
//! * a release whose binary exits at start, and one whose binary starts but never checks in, are
//!   rolled back to the binary that ran, reported `Failed` with the reason, and not tried again
//!   (neither in later passes nor after a restart);
//! * a release whose binary checks in but then dies at every start is given up after three
//!   launches: the binary that was started runs and reports the release `Failed`;
//! * a crash (`abort()`, as abrupt as `kill -9`) at every step of a self-update recovers to an
//!   agent running the new release.
//!
//! Everything listens on and talks to 127.0.0.1 only; every wait has a deadline; agents are
//! killed when a test ends.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::real::{Admin, RealAgent, WAIT};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tc_testkit::TestController;

const AGENT_PACKAGE: &str = "thinfleet-agent";

/// A zip holding `binary` as `tc-agent` (stored: the test binary is large and compresses slowly).
fn agent_zip(binary: &[u8]) -> Vec<u8> {
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(binary.len() > u32::MAX as usize / 2)
        .unix_permissions(0o755);
    writer.start_file("tc-agent", options).unwrap();
    writer.write_all(binary).unwrap();
    writer.finish().unwrap().into_inner()
}

/// The agent binary of this build.
fn this_agent() -> Vec<u8> {
    std::fs::read(env!("CARGO_BIN_EXE_tc-agent")).unwrap()
}

/// Publishes `thinfleet-agent` `version` holding `binary`.
async fn publish_agent(admin: &Admin, version: &str, binary: &[u8]) {
    admin
        .publish(AGENT_PACKAGE, version, &agent_zip(binary))
        .await;
}

/// Publishes the ordinary package `kiosk` `version`.
async fn publish_kiosk(admin: &Admin, version: &str) {
    admin
        .publish("kiosk", version, &common::package_zip(version))
        .await;
}

/// A group assigning `packages` (YAML flow items) to the clients labelled `fleet=<name>`.
async fn group(admin: &Admin, name: &str, packages: &[&str]) {
    let items: String = packages
        .iter()
        .map(|item| format!("    - {item}\n"))
        .collect();
    admin
        .apply(&format!(
            "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: {name}\nspec:\n  selector: {{ matchLabels: {{ fleet: {name} }} }}\n  packages:\n{items}  rollout:\n    maxUnavailable: 100%\n"
        ))
        .await;
}

fn config(check_in_seconds: u32) -> String {
    format!("selfUpdateCheckInSeconds: {check_in_seconds}\n")
}

/// The executable the agent process runs now.
fn executable(agent: &RealAgent) -> PathBuf {
    let pid = agent.child.as_ref().expect("the agent runs").id();
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default()
}

/// Where a `thinfleet-agent` release's binary is installed for `agent`.
fn installed_binary(agent: &RealAgent, version: &str) -> PathBuf {
    std::fs::canonicalize(&agent.state)
        .unwrap()
        .join("packages")
        .join(AGENT_PACKAGE)
        .join(version)
        .join("tc-agent")
}

fn original_binary() -> PathBuf {
    std::fs::canonicalize(env!("CARGO_BIN_EXE_tc-agent")).unwrap()
}

/// The client as the controller shows it.
async fn client(admin: &Admin, name: &str) -> Value {
    let (status, body) = admin
        .call(
            Method::GET,
            &format!("/apis/thinfleet.io/v1/clients/{name}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The report of `package` the controller has from `agent`.
async fn report(admin: &Admin, agent: &RealAgent, package: &str) -> Option<Value> {
    client(admin, &agent.name).await["status"]["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == package).cloned())
}

/// Waits until the controller has `package` at `version` in `state` from `agent` and the agent
/// process runs `binary`; returns the report.
async fn wait_for(
    admin: &Admin,
    agent: &RealAgent,
    package: &str,
    version: &str,
    state: &str,
    binary: &Path,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let report = report(admin, agent, package).await;
        let running = executable(agent);
        if let Some(report) = &report
            && report["version"] == version
            && report["state"] == state
            && running == binary
        {
            return report.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} did not report {package} {version} {state} running {}: report {report:?}, \
             running {}\n{}",
            agent.machine,
            binary.display(),
            running.display(),
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many times the agent started a new binary to check in (its log says so each time).
fn check_ins_started(agent: &RealAgent) -> usize {
    std::fs::read_to_string(&agent.log)
        .unwrap_or_default()
        .matches("starting the new agent to check in")
        .count()
}

/// Waits until the process ended by itself (an injected abort); panics after [`WAIT`].
async fn wait_exit(agent: &mut RealAgent) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let child = agent.child.as_mut().expect("the agent runs");
    loop {
        if child.try_wait().unwrap().is_some() {
            agent.child = None;
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent did not stop at its fault:\n{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_updates_itself_to_a_new_release_and_keeps_working() {
    let controller = TestController::start().await;
    let admin = Admin::new(&controller);
    let root = tempfile::tempdir().unwrap();
    publish_agent(&admin, "0.3.0", &this_agent()).await;
    publish_kiosk(&admin, "1.0.0").await;
    let mut agent = RealAgent::start(
        &controller,
        root.path(),
        "kiosk-1",
        &["fleet=a"],
        &config(30),
    )
    .await;
    let before = agent.child.as_ref().unwrap().id();
    assert_eq!(executable(&agent), original_binary());
    group(
        &admin,
        "a",
        &[&format!("{{ name: {AGENT_PACKAGE}, version: \"0.3.0\" }}")],
    )
    .await;

    // Installed beside the original, checked in, and the same process now runs the new binary.
    let new = installed_binary(&agent, "0.3.0");
    wait_for(&admin, &agent, AGENT_PACKAGE, "0.3.0", "Installed", &new).await;
    assert_eq!(
        agent.child.as_ref().unwrap().id(),
        before,
        "restarted in place"
    );
    assert!(original_binary().is_file(), "the original binary is kept");
    assert_eq!(check_ins_started(&agent), 1);
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(log.contains("the new agent checked in"), "{log}");

    // The new agent converges: a package assigned now is installed by it.
    group(
        &admin,
        "a",
        &[
            &format!("{{ name: {AGENT_PACKAGE}, version: \"0.3.0\" }}"),
            "{ name: kiosk, version: \"1.0.0\" }",
        ],
    )
    .await;
    wait_for(&admin, &agent, "kiosk", "1.0.0", "Installed", &new).await;
    wait_for(&admin, &agent, AGENT_PACKAGE, "0.3.0", "Installed", &new).await;

    // A restart of the original binary (what systemd starts) launches the installed one.
    agent.kill();
    agent.spawn(&controller, &["fleet=a"]);
    wait_for(&admin, &agent, AGENT_PACKAGE, "0.3.0", "Installed", &new).await;
    let seen = client(&admin, &agent.name).await["status"]["lastHeartbeat"].clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    while client(&admin, &agent.name).await["status"]["lastHeartbeat"] == seen {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no heartbeat after the restart:\n{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(executable(&agent), new);
    assert_eq!(check_ins_started(&agent), 1, "nothing was installed again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_agent_that_exits_at_start_is_rolled_back_reported_and_not_retried() {
    let controller = TestController::start().await;
    let admin = Admin::new(&controller);
    let root = tempfile::tempdir().unwrap();
    publish_agent(&admin, "0.3.0", &this_agent()).await;
    publish_agent(
        &admin,
        "0.4.0",
        b"#!/bin/sh\necho 'cannot start: missing library' >&2\nexit 3\n",
    )
    .await;
    publish_kiosk(&admin, "1.0.0").await;
    let mut agent = RealAgent::start(
        &controller,
        root.path(),
        "kiosk-2",
        &["fleet=b"],
        &config(30),
    )
    .await;
    group(
        &admin,
        "b",
        &[&format!("{{ name: {AGENT_PACKAGE}, version: \"0.3.0\" }}")],
    )
    .await;
    let working = installed_binary(&agent, "0.3.0");
    wait_for(
        &admin,
        &agent,
        AGENT_PACKAGE,
        "0.3.0",
        "Installed",
        &working,
    )
    .await;

    // 0.4.0 exits at start: rolled back to 0.3.0, which keeps running, and reported.
    group(
        &admin,
        "b",
        &[&format!("{{ name: {AGENT_PACKAGE}, version: \"0.4.0\" }}")],
    )
    .await;
    let failed = wait_for(&admin, &agent, AGENT_PACKAGE, "0.4.0", "Failed", &working).await;
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("exited (exit code 3) without checking in")
            && message.contains("rolled back to 0.3.0"),
        "{failed}"
    );
    assert_eq!(failed["activeVersion"], "0.3.0", "{failed}");
    assert_eq!(check_ins_started(&agent), 2);
    assert!(
        !installed_binary(&agent, "0.4.0").exists(),
        "the failed release's files are removed"
    );

    // Not retried: a later pass (a package assigned after) and a restart leave it failed.
    group(
        &admin,
        "b",
        &[
            &format!("{{ name: {AGENT_PACKAGE}, version: \"0.4.0\" }}"),
            "{ name: kiosk, version: \"1.0.0\" }",
        ],
    )
    .await;
    wait_for(&admin, &agent, "kiosk", "1.0.0", "Installed", &working).await;
    agent.kill();
    agent.spawn(&controller, &["fleet=b"]);
    wait_for(&admin, &agent, "kiosk", "1.0.0", "Installed", &working).await;
    wait_for(&admin, &agent, AGENT_PACKAGE, "0.4.0", "Failed", &working).await;
    assert_eq!(check_ins_started(&agent), 2, "{}", agent.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_agent_that_never_checks_in_is_stopped_rolled_back_and_not_retried() {
    let controller = TestController::start().await;
    let admin = Admin::new(&controller);
    let root = tempfile::tempdir().unwrap();
    let marker = root.path().join("hung-agent-ran");
    let hung = format!(
        "#!/bin/sh\necho started >> {}\nexec sleep 600\n",
        marker.display()
    );
    publish_agent(&admin, "0.3.0", hung.as_bytes()).await;
    publish_kiosk(&admin, "1.0.0").await;
    let agent = RealAgent::start(
        &controller,
        root.path(),
        "kiosk-3",
        &["fleet=c"],
        &config(5),
    )
    .await;
    group(
        &admin,
        "c",
        &[
            &format!("{{ name: {AGENT_PACKAGE}, version: \"0.3.0\" }}"),
            "{ name: kiosk, version: \"1.0.0\" }",
        ],
    )
    .await;
    let original = original_binary();
    let failed = wait_for(&admin, &agent, AGENT_PACKAGE, "0.3.0", "Failed", &original).await;
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("did not check in with the controller within 5 s")
            && message.contains("no version is active"),
        "{failed}"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "started\n");
    // The other package of the pass is installed by the original agent, and nothing retries.
    wait_for(&admin, &agent, "kiosk", "1.0.0", "Installed", &original).await;
    assert_eq!(check_ins_started(&agent), 1, "{}", agent.log_tail());
    assert!(
        !agent
            .state
            .join("packages")
            .join(AGENT_PACKAGE)
            .join("0.3.0")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_step_of_a_self_update_recovers_to_a_working_agent() {
    const POINTS: [&str; 7] = [
        "after-download",
        "after-extract",
        "after-move",
        "after-activate",
        "during-hook",
        "before-commit",
        "before-restart",
    ];
    let controller = TestController::start().await;
    let admin = Admin::new(&controller);
    let root = tempfile::tempdir().unwrap();
    publish_agent(&admin, "0.3.0", &this_agent()).await;
    let mut agents = Vec::new();
    for point in POINTS {
        let mut agent =
            RealAgent::start(&controller, root.path(), point, &["fleet=d"], &config(30)).await;
        agent.kill();
        agent.fault = Some(point.to_owned());
        agents.push(agent);
    }
    group(
        &admin,
        "d",
        &[&format!("{{ name: {AGENT_PACKAGE}, version: \"0.3.0\" }}")],
    )
    .await;
    for agent in &mut agents {
        agent.spawn(&controller, &["fleet=d"]);
    }
    for agent in &mut agents {
        wait_exit(agent).await;
        let log = std::fs::read_to_string(&agent.log).unwrap();
        let point = agent.fault.take().unwrap();
        assert!(
            log.contains("TC_AGENT_FAULT is set: aborting")
                && log.contains(&format!("point={point}")),
            "{point}: {log}"
        );
        // Restarted as systemd would: the original binary, without the fault.
        agent.spawn(&controller, &["fleet=d"]);
    }
    for agent in &agents {
        let new = installed_binary(agent, "0.3.0");
        wait_for(&admin, agent, AGENT_PACKAGE, "0.3.0", "Installed", &new).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_agent_that_checks_in_but_dies_at_every_start_is_given_up_after_three_launches() {
    let controller = TestController::start().await;
    let admin = Admin::new(&controller);
    let root = tempfile::tempdir().unwrap();
    let launches = root.path().join("launches");
    // Checks in (as the real agent), then stops at every normal start.
    let fragile = format!(
        "#!/bin/sh\nif [ -n \"$TC_AGENT_CHECK_IN\" ]; then exec {} \"$@\"; fi\necho launched >> {}\necho 'crashed at start' >&2\nexit 1\n",
        original_binary().display(),
        launches.display()
    );
    publish_agent(&admin, "0.3.0", fragile.as_bytes()).await;
    let mut agent = RealAgent::start(
        &controller,
        root.path(),
        "kiosk-5",
        &["fleet=e"],
        &config(30),
    )
    .await;
    group(
        &admin,
        "e",
        &[&format!("{{ name: {AGENT_PACKAGE}, version: \"0.3.0\" }}")],
    )
    .await;

    // Restarted whenever it stops, as systemd's Restart= does.
    let original = original_binary();
    let deadline = tokio::time::Instant::now() + WAIT;
    let failed = loop {
        if agent.child.as_mut().unwrap().try_wait().unwrap().is_some() {
            agent.spawn(&controller, &["fleet=e"]);
        }
        if let Some(report) = report(&admin, &agent, AGENT_PACKAGE).await
            && report["state"] == "Failed"
            && executable(&agent) == original
        {
            break report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not given up:\n{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("stopped before checking in at each of 3 starts")
            && message.contains("no version is active"),
        "{failed}"
    );
    assert_eq!(
        std::fs::read_to_string(&launches).unwrap(),
        "launched\n".repeat(3)
    );
    assert_eq!(check_ins_started(&agent), 1, "not installed again");
    // The original binary keeps running and reporting.
    wait_for(&admin, &agent, AGENT_PACKAGE, "0.3.0", "Failed", &original).await;
    assert!(agent.child.as_mut().unwrap().try_wait().unwrap().is_none());
}
