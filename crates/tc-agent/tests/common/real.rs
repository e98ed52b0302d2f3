//! Real `tc-agent` processes against a controller in the test process, and that controller's
//! admin API: shared by the end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tc_testkit::TestController;

/// How long any single expected change may take.
pub const WAIT: Duration = Duration::from_secs(60);

/// What an agent needs to join a controller: its URL, a bootstrap token and the CA's
/// fingerprint (`None` over plain HTTP). A [`TestController`] gives its own; a controller run as a
/// separate process (another release's, in `compat.rs`) is described by hand.
pub struct Join {
    pub url: String,
    pub bootstrap_token: String,
    pub ca_cert_hash: Option<String>,
}

impl From<&TestController> for Join {
    fn from(controller: &TestController) -> Join {
        Join {
            url: controller.url(),
            bootstrap_token: controller.bootstrap_token().to_owned(),
            ca_cert_hash: controller.ca_cert_hash(),
        }
    }
}

/// A `tc-agent` child process with its own state directory; killed when dropped.
pub struct RealAgent {
    /// The agent binary: this build's, or another release's.
    pub binary: PathBuf,
    pub child: Option<Child>,
    pub state: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
    pub machine: String,
    pub name: String,
    /// A fault point the next [`RealAgent::spawn`] aborts at (`TC_AGENT_FAULT`).
    pub fault: Option<String>,
}

impl RealAgent {
    /// Starts an agent enrolling as `machine` with `labels` and the YAML `config`.
    pub async fn start(
        controller: impl Into<Join>,
        root: &Path,
        machine: &str,
        labels: &[&str],
        config: &str,
    ) -> RealAgent {
        let binary = Path::new(env!("CARGO_BIN_EXE_tc-agent"));
        Self::start_binary(binary, controller, root, machine, labels, config).await
    }

    /// [`RealAgent::start`] with the agent binary `binary`.
    pub async fn start_binary(
        binary: &Path,
        controller: impl Into<Join>,
        root: &Path,
        machine: &str,
        labels: &[&str],
        config: &str,
    ) -> RealAgent {
        let dir = root.join(machine);
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config).unwrap();
        let mut agent = RealAgent {
            binary: binary.to_path_buf(),
            child: None,
            state: dir.join("state"),
            log: dir.join("agent.log"),
            config: config_path,
            machine: machine.to_owned(),
            name: String::new(),
            fault: None,
        };
        agent.spawn(controller, labels);
        let credentials = agent.state.join("credentials.json");
        let deadline = tokio::time::Instant::now() + WAIT;
        agent.name = loop {
            if let Ok(text) = std::fs::read_to_string(&credentials)
                && let Ok(value) = serde_json::from_str::<Value>(&text)
                && let Some(name) = value["clientName"].as_str()
            {
                break name.to_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{machine} did not enrol:\n{}",
                agent.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        agent
    }

    pub fn spawn(&mut self, controller: impl Into<Join>, labels: &[&str]) {
        let join = controller.into();
        let token_file = self.state.with_file_name("bootstrap.token");
        std::fs::write(&token_file, &join.bootstrap_token).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = super::agent_command_for(
            &self.binary,
            &join.url,
            join.ca_cert_hash.as_deref(),
            &self.state,
        );
        command
            .arg("--config")
            .arg(&self.config)
            .arg("--bootstrap-token-file")
            .arg(&token_file)
            .args(["--machine-id", &format!("{}-machine-id", self.machine)])
            .args(["--name", &self.machine])
            .stderr(log);
        for label in labels {
            command.args(["--label", label]);
        }
        if let Some(fault) = &self.fault {
            command.env("TC_AGENT_FAULT", fault);
        }
        self.child = Some(command.spawn().unwrap());
    }

    /// Kills the process (as a power loss would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut start = text.len().saturating_sub(6000);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_owned()
    }
}

impl Drop for RealAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The admin API of a test controller.
pub struct Admin {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Admin {
    pub fn new(controller: &TestController) -> Admin {
        tc_agent::install_crypto_provider();
        Admin {
            http: controller.http_client(),
            base: controller.url(),
            token: controller.admin_token().to_owned(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Applies manifests (YAML) through the API; asserts it was accepted.
    pub async fn apply(&self, yaml: &str) {
        let response = self
            .http
            .post(format!("{}/apis/thinfleet.io/v1/apply", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/yaml")
            .body(yaml.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{yaml}\n{body}");
    }

    /// Uploads `zip` and publishes it as release `version` of `package`.
    pub async fn publish(&self, package: &str, version: &str, zip: &[u8]) {
        let sha = self.upload(zip).await;
        self.apply(&format!(
            "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata:\n  name: {package}-{version}\nspec:\n  package: {package}\n  version: {version}\n  artifact:\n    sha256: {sha}\n"
        ))
        .await;
    }

    /// Uploads a blob; returns its sha256.
    pub async fn upload(&self, zip: &[u8]) -> String {
        let response = self
            .http
            .put(format!("{}/blobs", self.base))
            .bearer_auth(&self.token)
            .body(zip.to_vec())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        body["sha256"].as_str().unwrap().to_owned()
    }
}
