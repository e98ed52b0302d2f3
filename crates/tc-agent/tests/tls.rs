//! The real `tc-agent` binary and an HTTPS controller: the CA fingerprint from the join material
//! is checked at the first contact (a wrong one is refused, nothing is enrolled), the CA it
//! matched is stored in the state directory and trusted from then on, and an https server
//! without a way to verify it is a configuration error.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tc_testkit::TestController;

/// Longest wait for anything the agent or the controller should do.
const WAIT: Duration = Duration::from_secs(30);

/// A `tc-agent` child process, killed when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(controller: &TestController, root: &Path, ca_cert_hash: &str) -> Agent {
        let token = root.join("bootstrap.token");
        std::fs::write(&token, controller.bootstrap_token()).unwrap();
        let log = root.join(format!(
            "agent-{}.log",
            std::fs::read_dir(root).unwrap().count()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_tc-agent"))
            .args(["--server", &controller.url()])
            .args(["--ca-cert-hash", ca_cert_hash])
            .arg("--bootstrap-token-file")
            .arg(&token)
            .arg("--state-dir")
            .arg(root.join("state"))
            .args(["--machine-id", "tls-machine-1", "--name", "tls-kiosk"])
            .env_remove("TC_AGENT_FAULT")
            .env_remove("RUST_LOG")
            .env("TC_AGENT_LOG", "info")
            .env("TC_AGENT_RETRY_MILLIS", "100")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the agent never logged {text:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn clients(controller: &TestController) -> Vec<Value> {
    let response = controller
        .http_client()
        .get(format!("{}/apis/thinfleet.io/v1/clients", controller.url()))
        .bearer_auth(controller.admin_token())
        .send()
        .await
        .unwrap();
    let list: Value = response.json().await.unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_contact_with_the_wrong_fingerprint_is_refused() {
    let controller = TestController::start().await;
    let root = tempfile::tempdir().unwrap();
    let wrong = format!("sha256:{}", "5a".repeat(32));
    let agent = Agent::start(&controller, root.path(), &wrong);
    agent
        .wait_for_log("does not match the pinned fingerprint")
        .await;
    let log = agent.log();
    assert!(log.contains(&wrong), "{log}");
    assert!(
        log.contains(&controller.ca_cert_hash().unwrap()),
        "the error names the fingerprint presented: {log}"
    );
    // Still refused on the retries, and nothing was enrolled or pinned.
    let deadline = Instant::now() + WAIT;
    while agent
        .log()
        .matches("does not match the pinned fingerprint")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "no retry:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(clients(&controller).await.is_empty());
    let state = root.path().join("state");
    assert!(!state.join("ca.crt").exists());
    assert!(!state.join("credentials.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pinned_ca_is_stored_at_the_first_contact_and_trusted_from_then_on() {
    let controller = TestController::start().await;
    let hash = controller.ca_cert_hash().unwrap();
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let first = Agent::start(&controller, root.path(), &hash);
    let deadline = Instant::now() + WAIT;
    while !state.join("credentials.json").exists() {
        assert!(Instant::now() < deadline, "not enrolled:\n{}", first.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.wait_for_log("pinned the controller's CA").await;
    let stored = state.join("ca.crt");
    assert_eq!(
        std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let certificates = tc_trust::read_pem_certificates(&stored).unwrap();
    assert_eq!(
        tc_trust::CaCertHash::of_certificate(&certificates[0])
            .unwrap()
            .to_string(),
        hash
    );
    assert_eq!(
        certificates[0].as_ref(),
        tc_trust::parse_pem_certificates(controller.ca_pem().unwrap().as_bytes()).unwrap()[0]
            .as_ref()
    );
    let heartbeat = |clients: Vec<Value>| clients[0]["status"]["lastHeartbeat"].clone();
    let before = loop {
        let listed = clients(&controller).await;
        if listed.len() == 1 && !heartbeat(listed.clone()).is_null() {
            break heartbeat(listed);
        }
        assert!(Instant::now() < deadline, "no heartbeat arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(first);

    // The next start trusts the stored certificate: no new pinning, and heartbeats go on.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = Agent::start(&controller, root.path(), &hash);
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = clients(&controller).await;
        if heartbeat(listed) != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat after the restart:\n{}",
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !second.log().contains("pinned the controller's CA"),
        "{}",
        second.log()
    );
}

#[test]
fn an_https_server_without_a_ca_is_a_configuration_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_tc-agent"))
        .args(["--server", "https://controller.example:7130"])
        .args(["--bootstrap-token", "t", "--state-dir", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--ca-cert-hash") && stderr.contains("--ca-file"),
        "{stderr}"
    );
}
