//! The real `tc-agent` binary's identity against a real controller in this process: recovering
//! from a corrupt credentials file or key, cloned images, sessions that expire, and
//! decommissioning. Everything listens on 127.0.0.1, every wait has a deadline, and agent
//! processes are killed when a test ends.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tc_testkit::{Config, PackageFile, TestController, build_zip, sha256_hex};

/// How long any single expected change may take.
const WAIT: Duration = Duration::from_secs(60);

/// A `tc-agent` child process, killed when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
    state: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, once the process ended by itself.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn credentials(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.state.join("credentials.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A controller (with a group that selects every client) and a scratch directory.
struct Setup {
    controller: TestController,
    http: reqwest::Client,
    root: tempfile::TempDir,
    token_file: PathBuf,
}

impl Setup {
    async fn start(adjust: impl FnOnce(&mut Config)) -> Setup {
        tc_agent::install_crypto_provider();
        let controller = TestController::start_with(|config| {
            config.pending_retry_after = Duration::from_secs(1);
            adjust(config);
        })
        .await;
        let root = tempfile::tempdir().unwrap();
        let token_file = root.path().join("bootstrap.token");
        std::fs::write(&token_file, controller.bootstrap_token()).unwrap();
        let setup = Setup {
            http: controller.http_client(),
            controller,
            root,
            token_file,
        };
        setup.apply(&group(None)).await;
        setup
    }

    /// Starts an agent with state directory `root/<state>` and machine id `machine`.
    fn agent(&self, state: &str, machine: &str) -> Agent {
        let state = self.root.path().join(state);
        let log = self.root.path().join(format!(
            "{}.log",
            state.file_name().unwrap().to_string_lossy()
        ));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let hash = self.controller.ca_cert_hash();
        let child = common::agent_command(&self.controller.url(), hash.as_deref(), &state)
            .arg("--bootstrap-token-file")
            .arg(&self.token_file)
            .args(["--machine-id", machine])
            .args(["--name", "kiosk"])
            .args(["--label", "role=e2e"])
            .stderr(stderr)
            .spawn()
            .unwrap();
        Agent { child, log, state }
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.controller.url()))
            .bearer_auth(self.controller.admin_token());
        if let Some(body) = body {
            request = request
                .header("content-type", "application/yaml")
                .body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn apply(&self, yaml: &str) {
        let (status, body) = self
            .request(
                reqwest::Method::POST,
                "/apis/thinfleet.io/v1/apply",
                Some(yaml.to_string()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    async fn client(&self, name: &str) -> Option<Value> {
        let (status, body) = self
            .request(
                reqwest::Method::GET,
                &format!("/apis/thinfleet.io/v1/clients/{name}"),
                None,
            )
            .await;
        (status == StatusCode::OK).then_some(body)
    }

    async fn clients(&self) -> Vec<Value> {
        let (_, list) = self
            .request(reqwest::Method::GET, "/apis/thinfleet.io/v1/clients", None)
            .await;
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `check` gives a value; the agents' logs go with a timeout.
    async fn until<T, F, Fut>(&self, what: &str, agents: &[&Agent], mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if tokio::time::Instant::now() >= deadline {
                let logs: Vec<String> = agents.iter().map(|a| a.log()).collect();
                panic!(
                    "timed out waiting for {what}\nclients: {:#}\nagent logs:\n{}",
                    Value::Array(self.clients().await),
                    logs.join("\n----\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the agent's client is Online; returns its name.
    async fn online(&self, agent: &Agent) -> String {
        self.until("the agent to be online", &[agent], || async {
            let name = agent.credentials()?["clientName"].as_str()?.to_string();
            let client = self.client(&name).await?;
            (client["status"]["phase"] == "Online").then_some(name)
        })
        .await
    }
}

/// The group every test agent is in, with `package` (name, version) or nothing.
fn group(package: Option<(&str, &str)>) -> String {
    let packages = match package {
        Some((name, version)) => format!("\n    - {{ name: {name}, version: \"={version}\" }}"),
        None => " []".to_string(),
    };
    format!(
        "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: e2e\nspec:\n  selector: {{ matchLabels: {{ role: e2e }} }}\n  agent: {{ heartbeatSeconds: 5 }}\n  packages:{packages}\n"
    )
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Reproduction: "a corrupt credentials.json stops it for good (restart loop) instead of
/// enrolling again". The agent sets the file aside and enrols again with its key: the same
/// client.
#[tokio::test]
async fn a_corrupt_credentials_file_makes_the_agent_enrol_again_as_the_same_client() {
    let setup = Setup::start(|_| {}).await;
    let mut agent = setup.agent("state", "machine-creds");
    let name = setup.online(&agent).await;
    agent.kill();
    std::fs::write(
        agent.state.join("credentials.json"),
        b"{\"server\": \"trunc",
    )
    .unwrap();
    let mut agent = setup.agent("state", "machine-creds");
    let again = setup
        .until("the agent to enrol again", &[&agent], || async {
            agent.credentials()?["clientName"]
                .as_str()
                .map(str::to_string)
        })
        .await;
    assert_eq!(again, name, "the same key is the same client");
    assert!(
        agent.exited().is_none(),
        "the agent keeps running:\n{}",
        agent.log()
    );
    assert!(exists(&agent.state.join("credentials.json.corrupt")));
    assert_eq!(setup.clients().await.len(), 1);
    setup.online(&agent).await;
}

/// Reproduction: "Two agents sharing /etc/machine-id (cloned images) flap between each other
/// forever". The second waits as a pending client (reported as a cloned image) while the first
/// keeps working, until an admin approves it as a client of its own.
#[tokio::test]
async fn agents_of_a_cloned_image_do_not_flap_and_the_clone_waits_for_an_admin() {
    let setup = Setup::start(|_| {}).await;
    let first = setup.agent("first", "cloned-machine-id");
    let first_name = setup.online(&first).await;
    let enrolled_at = first.credentials().unwrap()["enrolledAt"].clone();
    let clone = setup.agent("clone", "cloned-machine-id");
    let pending = setup
        .until(
            "the clone to wait as a pending client",
            &[&first, &clone],
            || async {
                setup.clients().await.into_iter().find(|c| {
                    c["status"]["phase"] == "Pending"
                        && c["spec"]["pending"]["reason"] == "DuplicateMachineId"
                })
            },
        )
        .await;
    let pending_name = pending["metadata"]["name"].as_str().unwrap().to_string();
    // The first keeps heartbeating with its own session for a while: no flapping.
    let seen = setup.client(&first_name).await.unwrap()["status"]["lastHeartbeat"].clone();
    setup
        .until(
            "two more heartbeats of the first agent",
            &[&first, &clone],
            || async {
                let client = setup.client(&first_name).await?;
                (client["status"]["lastHeartbeat"].as_str()? > seen.as_str()?
                    && client["status"]["phase"] == "Online")
                    .then_some(())
            },
        )
        .await;
    assert_eq!(
        first.credentials().unwrap()["enrolledAt"],
        enrolled_at,
        "the first never enrolled again"
    );
    assert_eq!(setup.clients().await.len(), 2);
    assert!(clone.credentials().is_none(), "the clone has no client yet");
    let status = Command::new(env!("CARGO_BIN_EXE_tc-agent"))
        .args(["status", "--state-dir"])
        .arg(&clone.state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("DuplicateMachineId"), "{text}");

    let (status, body) = setup
        .request(
            reqwest::Method::POST,
            &format!("/apis/thinfleet.io/v1/clients/{pending_name}/approve"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let clone_name = setup.online(&clone).await;
    assert_eq!(clone_name, pending_name);
    assert_eq!(
        setup.client(&first_name).await.unwrap()["status"]["phase"],
        "Online"
    );
}

/// An unusable key is replaced by a new one; the controller shows the machine as a pending
/// duplicate, which an admin approves as the replacement of the old client.
#[tokio::test]
async fn a_corrupt_key_makes_a_new_key_that_an_admin_approves_as_the_replacement() {
    let setup = Setup::start(|_| {}).await;
    let mut agent = setup.agent("state", "machine-key");
    let name = setup.online(&agent).await;
    agent.kill();
    std::fs::write(agent.state.join("identity.key"), b"not a key").unwrap();
    let agent = setup.agent("state", "machine-key");
    let pending = setup
        .until(
            "the new key to wait as a pending duplicate",
            &[&agent],
            || async {
                setup
                    .clients()
                    .await
                    .into_iter()
                    .find(|c| c["status"]["phase"] == "Pending")
            },
        )
        .await;
    assert!(exists(&agent.state.join("identity.key.corrupt")));
    let pending_name = pending["metadata"]["name"].as_str().unwrap();
    assert_eq!(pending["spec"]["pending"]["enrolledAs"][0], name.as_str());
    let (status, body) = setup
        .request(
            reqwest::Method::POST,
            &format!("/apis/thinfleet.io/v1/clients/{pending_name}/approve"),
            Some(format!("{{\"replace\": \"{name}\"}}")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        setup.online(&agent).await,
        name,
        "the agent is the old client again"
    );
    assert_eq!(setup.clients().await.len(), 1);
}

/// Sessions that expire are renewed with the key alone: the agent goes on after its bootstrap
/// token was revoked and its file deleted.
#[tokio::test]
async fn sessions_are_renewed_without_the_bootstrap_token() {
    let setup = Setup::start(|config| config.session_lifetime = Duration::from_secs(2)).await;
    let agent = setup.agent("state", "machine-session");
    let name = setup.online(&agent).await;
    let (status, _) = setup
        .request(
            reqwest::Method::DELETE,
            "/apis/thinfleet.io/v1/bootstraptokens/default",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    std::fs::remove_file(&setup.token_file).unwrap();
    let first = agent.credentials().unwrap()["session"]["token"].clone();
    let seen = setup.client(&name).await.unwrap()["status"]["lastHeartbeat"].clone();
    // Heartbeats every 5 s, sessions of 2 s: every heartbeat needs a new session.
    setup
        .until("heartbeats on renewed sessions", &[&agent], || async {
            let client = setup.client(&name).await?;
            let renewed = agent.credentials()?["session"]["token"] != first;
            (renewed
                && client["status"]["lastHeartbeat"].as_str()? > seen.as_str()?
                && client["status"]["phase"] == "Online")
                .then_some(())
        })
        .await;
    assert!(!agent.log().contains("enrolling again"), "{}", agent.log());
}

/// `decommission`: the agent runs `preRemove`, removes every package thinfleet installed, reports
/// it, deletes its identity and stops for good (exit 0); the controller deletes the client and
/// refuses its machine id; started again, the agent says so and exits 0.
#[tokio::test]
async fn decommissioning_removes_every_package_and_stops_the_agent_for_good() {
    let setup = Setup::start(|_| {}).await;
    let markers = setup.root.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    let pre_remove = format!(
        "#!/bin/sh\necho \"preRemove $TC_PACKAGE_VERSION\" >> '{}/pre-remove.log'\n",
        markers.display()
    );
    let zip = build_zip(&[
        PackageFile {
            path: "VERSION",
            content: b"1.0.0\n",
            mode: 0o644,
        },
        PackageFile {
            path: "pre-remove.sh",
            content: pre_remove.as_bytes(),
            mode: 0o755,
        },
    ]);
    let sha = sha256_hex(&zip);
    let response = setup
        .http
        .put(format!("{}/blobs", setup.controller.url()))
        .bearer_auth(setup.controller.admin_token())
        .body(zip)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    setup
        .apply(&format!(
            "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata:\n  name: kiosk-1.0.0\nspec:\n  package: kiosk\n  version: 1.0.0\n  artifact:\n    sha256: {sha}\n  hooks:\n    preRemove: {{ command: [\"./pre-remove.sh\"] }}\n"
        ))
        .await;
    setup.apply(&group(Some(("kiosk", "1.0.0")))).await;
    let mut agent = setup.agent("state", "machine-leaving");
    let name = setup.online(&agent).await;
    setup
        .until("the package to be installed", &[&agent], || async {
            let client = setup.client(&name).await?;
            (client["status"]["packages"][0]["state"] == "Installed").then_some(())
        })
        .await;

    let (status, body) = setup
        .request(
            reqwest::Method::POST,
            &format!("/apis/thinfleet.io/v1/clients/{name}/decommission"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let exit = setup
        .until("the agent to stop", &[], || {
            let exited = agent.exited();
            async move { exited }
        })
        .await;
    assert!(exit.success(), "exit {exit}:\n{}", agent.log());
    let log = std::fs::read_to_string(markers.join("pre-remove.log")).unwrap();
    assert_eq!(log, "preRemove 1.0.0\n");
    assert!(!exists(&agent.state.join("packages/kiosk")));
    assert!(exists(&agent.state.join("decommissioned")));
    assert!(!exists(&agent.state.join("identity.key")));
    assert!(!exists(&agent.state.join("credentials.json")));
    assert!(setup.client(&name).await.is_none(), "the client is deleted");
    let (_, blocked) = setup
        .request(
            reqwest::Method::GET,
            "/apis/thinfleet.io/v1/blockedmachines",
            None,
        )
        .await;
    assert_eq!(
        blocked["items"][0]["machineId"], "machine-leaving",
        "{blocked}"
    );
    assert_eq!(blocked["items"][0]["reason"], "Decommissioned");

    // Started again it says so and exits 0, without enrolling.
    let output = Command::new(env!("CARGO_BIN_EXE_tc-agent"))
        .args(["--ca-cert-hash", &setup.controller.ca_cert_hash().unwrap()])
        .arg("--server")
        .arg(setup.controller.url())
        .arg("--bootstrap-token-file")
        .arg(&setup.token_file)
        .arg("--state-dir")
        .arg(&agent.state)
        .args(["--machine-id", "machine-leaving"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("was decommissioned"), "{stderr}");
    assert!(setup.clients().await.is_empty());
    // A new key with that machine id is refused too (the machine is decommissioned).
    let mut fresh = setup.agent("fresh", "machine-leaving");
    setup
        .until("the refusal to be recorded", &[&fresh], || async {
            let text = std::fs::read_to_string(fresh.state.join("connection.json")).ok()?;
            text.contains("decommissioned").then_some(())
        })
        .await;
    assert!(
        fresh.exited().is_none(),
        "a refused agent keeps asking, rarely"
    );
    assert!(setup.clients().await.is_empty());
}
