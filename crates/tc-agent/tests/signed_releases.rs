//! Signed releases with the real agent binary against a real controller over HTTPS: an agent
//! that trusts minisign keys installs a release only when its zip is signed by one of them, and
//! refuses every other one before extracting anything, reporting it `Failed` while the version
//! it runs keeps running. Keys are rotated by trusting the old and the new key for a while.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tc_testkit::{PackageFile, TestController, build_zip, sha256_hex};

/// How long any single expected change may take.
const WAIT: Duration = Duration::from_secs(60);

/// A minisign key pair made in the test.
struct Key {
    secret: minisign::SecretKey,
    public: String,
}

impl Key {
    fn new() -> Key {
        let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        Key {
            public: pair.pk.to_base64(),
            secret: pair.sk,
        }
    }

    /// The `.minisig` text of `zip`.
    fn sign(&self, zip: &[u8]) -> String {
        minisign::sign(
            None,
            &self.secret,
            zip,
            Some("timestamp:0\tfile:p.zip"),
            None,
        )
        .unwrap()
        .into_string()
    }
}

/// A package zip whose `VERSION` file says `version`.
fn zip_of(version: &str, filler: &str) -> Vec<u8> {
    build_zip(&[PackageFile {
        path: "VERSION",
        content: format!("{version}\n{filler}").as_bytes(),
        mode: 0o644,
    }])
}

struct Setup {
    agent: Option<Child>,
    controller: TestController,
    http: reqwest::Client,
    client_name: String,
    state: PathBuf,
    config: PathBuf,
    log: PathBuf,
    _root: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Setup {
        tc_agent::install_crypto_provider();
        let root = tempfile::tempdir().unwrap();
        let controller = TestController::start().await;
        Setup {
            agent: None,
            http: controller.http_client(),
            controller,
            client_name: String::new(),
            state: root.path().join("state"),
            config: root.path().join("agent.yaml"),
            log: root.path().join("agent.log"),
            _root: root,
        }
    }

    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.controller.url()))
            .bearer_auth(self.controller.admin_token())
    }

    async fn apply(&self, yaml: String) {
        let response = self
            .admin(reqwest::Method::POST, "/apis/thinfleet.io/v1/apply")
            .header("content-type", "application/yaml")
            .body(yaml)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body:#}");
    }

    /// Uploads `zip` and publishes it as `kiosk` `version` with `signature`.
    async fn publish(&self, version: &str, zip: &[u8], signature: Option<&str>) {
        let response = self
            .admin(reqwest::Method::PUT, "/blobs")
            .body(zip.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let signature = signature
            .map(|text| {
                let lines: String = text.lines().map(|l| format!("      {l}\n")).collect();
                format!("    signature: |\n{lines}")
            })
            .unwrap_or_default();
        self.apply(format!(
            "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata:\n  name: kiosk-{version}\n\
             spec:\n  package: kiosk\n  version: {version}\n  artifact:\n    sha256: {}\n{signature}",
            sha256_hex(zip)
        ))
        .await;
    }

    /// Makes the agent's group ask for exactly `version` of `kiosk`.
    async fn assign(&self, version: &str) {
        self.apply(format!(
            "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: e2e\nspec:\n  \
             selector: {{ matchLabels: {{ role: e2e }} }}\n  packages:\n    \
             - {{ name: kiosk, version: \"={version}\" }}\n"
        ))
        .await;
    }

    /// Starts the agent trusting `keys` (in its configuration file).
    async fn start_agent(&mut self, keys: &[&str]) {
        let list: String = keys.iter().map(|k| format!("  - {k}\n")).collect();
        std::fs::write(&self.config, format!("trustedKeys:\n{list}")).unwrap();
        let token_file = self.state.with_file_name("bootstrap.token");
        std::fs::write(&token_file, self.controller.bootstrap_token()).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let hash = self.controller.ca_cert_hash();
        let child = common::agent_command(&self.controller.url(), hash.as_deref(), &self.state)
            .arg("--config")
            .arg(&self.config)
            .arg("--bootstrap-token-file")
            .arg(&token_file)
            .args(["--machine-id", "signed-releases-0001"])
            .args(["--label", "role=e2e"])
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
        let credentials = self.state.join("credentials.json");
        let deadline = tokio::time::Instant::now() + WAIT;
        self.client_name = loop {
            if let Ok(text) = std::fs::read_to_string(&credentials)
                && let Ok(value) = serde_json::from_str::<Value>(&text)
                && let Some(name) = value["clientName"].as_str()
            {
                break name.to_owned();
            }
            self.check_deadline(deadline, "the agent to enrol", &Value::Null);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
    }

    fn stop_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn check_deadline(&self, deadline: tokio::time::Instant, what: &str, last: &Value) {
        if tokio::time::Instant::now() < deadline {
            return;
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        panic!("timed out waiting for {what}\nlast client status: {last:#}\nagent log:\n{log}");
    }

    /// Polls the client until its report of `kiosk` satisfies `check`.
    async fn wait_for_report(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let response = self
                .admin(
                    reqwest::Method::GET,
                    &format!("/apis/thinfleet.io/v1/clients/{}", self.client_name),
                )
                .send()
                .await
                .unwrap();
            let client: Value = response.json().await.unwrap_or(Value::Null);
            let report = client["status"]["packages"]
                .as_array()
                .and_then(|packages| packages.iter().find(|p| p["name"] == "kiosk"));
            if let Some(report) = report
                && check(report)
            {
                return report.clone();
            }
            self.check_deadline(deadline, what, &client["status"]);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_installed(&self, version: &str) {
        self.wait_for_report(&format!("kiosk {version} installed"), |r| {
            r["state"] == "Installed" && r["version"] == version
        })
        .await;
        assert_eq!(self.running_version(), format!("{version}\n"));
    }

    /// Waits for `version` to be reported failed; checks that it was refused with `reason`
    /// before extraction, is recorded as a failure of the package (not retried), and that
    /// `running` still runs.
    async fn assert_refused(&self, version: &str, reason: &str, running: &str) {
        let report = self
            .wait_for_report(&format!("kiosk {version} refused"), |r| {
                r["state"] == "Failed" && r["version"] == version
            })
            .await;
        let message = report["message"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "{report:#}");
        assert_eq!(report["activeVersion"], running, "{report:#}");
        assert_eq!(self.running_version(), format!("{running}\n"));
        assert!(
            !self.package_dir().join(version).exists(),
            "{version} was extracted"
        );
        let journal: Value =
            serde_json::from_str(&std::fs::read_to_string(self.state.join("state.json")).unwrap())
                .unwrap();
        let failure = &journal["packages"]["kiosk"]["failure"];
        assert_eq!(failure["version"], version, "{journal:#}");
        assert_eq!(failure["cause"], "package", "{journal:#}");
    }

    fn package_dir(&self) -> PathBuf {
        self.state.join("packages/kiosk")
    }

    /// The `VERSION` file of the active version.
    fn running_version(&self) -> String {
        std::fs::read_to_string(self.package_dir().join("current/VERSION")).unwrap_or_default()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop_agent();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_trusted_key_installs_only_releases_signed_with_it() {
    let trusted = Key::new();
    let stranger = Key::new();
    let mut setup = Setup::new().await;

    let v1 = zip_of("1.0.0", "");
    setup.publish("1.0.0", &v1, Some(&trusted.sign(&v1))).await;
    setup.assign("1.0.0").await;
    setup.start_agent(&[&trusted.public]).await;
    setup.wait_installed("1.0.0").await;

    // Unsigned.
    setup.publish("2.0.0", &zip_of("2.0.0", ""), None).await;
    setup.assign("2.0.0").await;
    setup
        .assert_refused("2.0.0", "the release is not signed", "1.0.0")
        .await;

    // Signed, but by a key the agent does not trust.
    let v3 = zip_of("3.0.0", "");
    setup.publish("3.0.0", &v3, Some(&stranger.sign(&v3))).await;
    setup.assign("3.0.0").await;
    setup
        .assert_refused(
            "3.0.0",
            "signed by a key this agent does not trust",
            "1.0.0",
        )
        .await;

    // A zip changed after it was signed: the release names the sha256 of the zip it serves, with
    // the signature of the zip as it was signed.
    let signed = zip_of("4.0.0", "as signed");
    let changed = zip_of("4.0.0", "changed afterwards");
    setup
        .publish("4.0.0", &changed, Some(&trusted.sign(&signed)))
        .await;
    setup.assign("4.0.0").await;
    setup
        .assert_refused("4.0.0", "the signature does not match the zip", "1.0.0")
        .await;

    // A correctly signed release still installs after the refusals.
    let v5 = zip_of("5.0.0", "");
    setup.publish("5.0.0", &v5, Some(&trusted.sign(&v5))).await;
    setup.assign("5.0.0").await;
    setup.wait_installed("5.0.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_rotated_by_trusting_both_then_only_the_new_one() {
    let old = Key::new();
    let new = Key::new();
    let mut setup = Setup::new().await;

    let v1 = zip_of("1.0.0", "");
    setup.publish("1.0.0", &v1, Some(&old.sign(&v1))).await;
    setup.assign("1.0.0").await;
    setup.start_agent(&[&old.public, &new.public]).await;
    setup.wait_installed("1.0.0").await;

    let v2 = zip_of("2.0.0", "");
    setup.publish("2.0.0", &v2, Some(&new.sign(&v2))).await;
    setup.assign("2.0.0").await;
    setup.wait_installed("2.0.0").await;

    // The old key is retired from the agent's configuration.
    setup.stop_agent();
    setup.start_agent(&[&new.public]).await;
    let v3 = zip_of("3.0.0", "");
    setup.publish("3.0.0", &v3, Some(&old.sign(&v3))).await;
    setup.assign("3.0.0").await;
    setup
        .assert_refused(
            "3.0.0",
            "signed by a key this agent does not trust",
            "2.0.0",
        )
        .await;
}

/// Debian's `minisign`; the interoperability test needs it (`.ci/run` installs it).
fn minisign_binary() -> &'static str {
    let found = Command::new("minisign")
        .arg("-v")
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        found,
        "the `minisign` binary is missing: install it (apt-get install minisign) to run this test"
    );
    "minisign"
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_signed_by_the_minisign_tool_installs() {
    let minisign = minisign_binary();
    let keys = tempfile::tempdir().unwrap();
    let dir = keys.path();
    run(Command::new(minisign)
        .args(["-G", "-W", "-p"])
        .arg(dir.join("admin.pub"))
        .arg("-s")
        .arg(dir.join("admin.key")));
    let zip = zip_of("1.0.0", "");
    let zip_path: &Path = &dir.join("kiosk.zip");
    std::fs::write(zip_path, &zip).unwrap();
    run(Command::new(minisign)
        .arg("-S")
        .arg("-s")
        .arg(dir.join("admin.key"))
        .arg("-m")
        .arg(zip_path));
    let signature = std::fs::read_to_string(dir.join("kiosk.zip.minisig")).unwrap();
    let public = std::fs::read_to_string(dir.join("admin.pub")).unwrap();
    let public = public.lines().nth(1).unwrap().to_owned();

    let mut setup = Setup::new().await;
    setup.publish("1.0.0", &zip, Some(&signature)).await;
    setup.assign("1.0.0").await;
    setup.start_agent(&[&public]).await;
    setup.wait_installed("1.0.0").await;
}
