//! The load history end to end: the real `tc-agent` binary (sampling every second) against a
//! real controller in this process. The history API answers fresh samples of the running agent
//! within its wait; once the agent is stopped it answers the stored history (`fresh: false`);
//! the agent keeps its history across a restart, with the time it was down left empty.
//!
//! Everything talks to 127.0.0.1 only, every wait has a deadline, and the agent is killed when
//! the test ends.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tc_proto::Timestamp;
use tc_testkit::TestController;

/// How long any single expected change may take.
const WAIT: Duration = Duration::from_secs(60);

/// A `tc-agent` child process, killed when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(controller: &TestController, root: &Path) -> Agent {
        let token_file = root.join("bootstrap.token");
        std::fs::write(&token_file, controller.bootstrap_token()).unwrap();
        let log = root.join("agent.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let hash = controller.ca_cert_hash();
        let child = common::agent_command(&controller.url(), hash.as_deref(), &root.join("state"))
            .arg("--bootstrap-token-file")
            .arg(&token_file)
            .args(["--machine-id", "history-machine-0001"])
            .args(["--name", "history-kiosk"])
            .args(["--history-interval-seconds", "1"])
            .stderr(stderr)
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the agent with SIGTERM and waits for it to exit.
    async fn stop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status:?}\n{}", self.log());
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent did not stop on SIGTERM\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client's load history as the API answers it, asking to wait `wait` seconds.
async fn history(controller: &TestController, name: &str, wait: u64) -> Value {
    let response = controller
        .http_client()
        .get(format!(
            "{}/apis/thinfleet.io/v1/clients/{name}/history?wait={wait}",
            controller.url()
        ))
        .bearer_auth(controller.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// Asks for the history until `check` accepts a fresh one; returns it.
async fn fresh_history(
    controller: &TestController,
    name: &str,
    agent: &Agent,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let shown = history(controller, name, 5).await;
        if shown["fresh"] == true && check(shown["samples"].as_array().unwrap()) {
            return shown;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last answer: {shown:#}\nagent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn time_of(sample: &Value) -> Timestamp {
    sample["time"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_history_api_shows_fresh_samples_of_a_running_agent_and_the_stored_ones_after() {
    tc_agent::install_crypto_provider();
    let controller = TestController::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&controller, root.path());
    let credentials = root.path().join("state").join("credentials.json");
    let deadline = tokio::time::Instant::now() + WAIT;
    let name = loop {
        if let Ok(text) = std::fs::read_to_string(&credentials)
            && let Ok(value) = serde_json::from_str::<Value>(&text)
            && let Some(name) = value["clientName"].as_str()
        {
            break name.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent did not enrol\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Fresh samples from the running agent, one a second, within range.
    let shown = fresh_history(&controller, &name, &agent, "three samples", |samples| {
        samples.len() >= 3
    })
    .await;
    assert_eq!(shown["client"], name.as_str());
    assert_eq!(shown["intervalSeconds"], 1);
    let samples = shown["samples"].as_array().unwrap();
    for sample in samples {
        for field in ["cpuPercent", "memoryPercent", "diskPercent"] {
            let value = sample[field].as_u64().unwrap();
            assert!(value <= 100, "{field} {value} in {sample}");
        }
    }
    assert!(
        samples
            .iter()
            .any(|s| s["memoryPercent"].as_u64() > Some(0))
    );
    let times: Vec<Timestamp> = samples.iter().map(time_of).collect();
    assert!(times.windows(2).all(|pair| pair[0] < pair[1]), "{times:?}");
    let collected: Timestamp = shown["collected"].as_str().unwrap().parse().unwrap();
    assert!(
        collected.since(*times.last().unwrap()) < Duration::from_secs(10),
        "the newest sample is recent: {shown}"
    );

    // Stopped: the last history stored, not fresh, the same samples.
    agent.stop().await;
    assert!(root.path().join("state").join("history.bin").exists());
    let before = history(&controller, &name, 0).await;
    let stored = history(&controller, &name, 2).await;
    assert_eq!(stored["fresh"], false, "{stored}");
    assert_eq!(stored["collected"], before["collected"]);
    assert_eq!(stored["samples"], before["samples"]);
    assert!(!stored["samples"].as_array().unwrap().is_empty());
    let last_before_stop = time_of(stored["samples"].as_array().unwrap().last().unwrap());
    let first_before_stop = time_of(&stored["samples"][0]);

    // Down for a while, then started again: the old samples are kept, and the time the agent
    // was down holds none.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = Timestamp::now();
    let agent = Agent::start(&controller, root.path());
    let shown = fresh_history(
        &controller,
        &name,
        &agent,
        "samples after the restart",
        |samples| samples.last().is_some_and(|s| time_of(s) > restarted),
    )
    .await;
    let samples = shown["samples"].as_array().unwrap();
    assert_eq!(time_of(&samples[0]), first_before_stop, "{shown}");
    let after = samples
        .iter()
        .map(time_of)
        .find(|time| *time > last_before_stop)
        .unwrap();
    assert!(
        after.since(last_before_stop) >= Duration::from_secs(3),
        "no samples while the agent was down: {last_before_stop} then {after}"
    );
    drop(agent);
    controller.stop().await;
}
