//! A journal rebuilt after it was corrupted (or lost) knows which versions are installed but not
//! their hooks. The real agent binary against a real controller in this process: the hooks are
//! restored from the desired state, or learnt from the controller's release before a removal, so
//! `preRemove` still runs; while nobody can tell them, the package is not removed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tc_testkit::{PackageFile, TestController, build_zip, sha256_hex};

/// How long any single expected change may take.
const WAIT: Duration = Duration::from_secs(60);

/// A controller, the agent's state directory and where its `preRemove` writes.
struct Setup {
    agent: Option<Child>,
    controller: TestController,
    http: reqwest::Client,
    client_name: String,
    state: PathBuf,
    markers: PathBuf,
    log: PathBuf,
    sha256: String,
    _root: tempfile::TempDir,
}

impl Setup {
    /// A controller with `kiosk` 1.0.0 (whose `preRemove` logs to `markers/pre-remove.log`)
    /// assigned to the agent, and the agent running it.
    async fn installed() -> Setup {
        tc_agent::install_crypto_provider();
        let root = tempfile::tempdir().unwrap();
        let markers = root.path().join("markers");
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
        let controller = TestController::start().await;
        let mut setup = Setup {
            agent: None,
            http: controller.http_client(),
            controller,
            client_name: String::new(),
            state: root.path().join("state"),
            markers,
            log: root.path().join("agent.log"),
            sha256: sha256_hex(&zip),
            _root: root,
        };
        let response = setup
            .admin(reqwest::Method::PUT, "/blobs")
            .body(zip)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        setup.publish_release().await;
        setup.assign(true).await;
        setup.start_agent().await;
        setup
            .wait_for_report("kiosk 1.0.0 installed", |report| {
                report.is_some_and(|r| r["state"] == "Installed" && r["version"] == "1.0.0")
            })
            .await;
        setup
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

    async fn publish_release(&self) {
        self.apply(format!(
            "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata:\n  name: kiosk-1.0.0\n\
             spec:\n  package: kiosk\n  version: 1.0.0\n  artifact:\n    sha256: {}\n  hooks:\n    \
             preRemove: {{ command: [\"./pre-remove.sh\"], timeoutSeconds: 30 }}\n",
            self.sha256
        ))
        .await;
    }

    /// Deletes the release, once the reconcile loop no longer assigns it (409 until then).
    async fn delete_release(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let response = self
                .admin(
                    reqwest::Method::DELETE,
                    "/apis/thinfleet.io/v1/packagereleases/kiosk-1.0.0",
                )
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            if status == StatusCode::OK {
                return;
            }
            assert_eq!(status, StatusCode::CONFLICT, "{body:#}");
            self.check_deadline(deadline, "the release to be unassigned", &body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Makes the agent's group ask for `kiosk` 1.0.0, or for nothing.
    async fn assign(&self, kiosk: bool) {
        let packages = if kiosk {
            "\n    - { name: kiosk, version: \"=1.0.0\" }"
        } else {
            " []"
        };
        self.apply(format!(
            "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: e2e\nspec:\n  \
             selector: {{ matchLabels: {{ role: e2e }} }}\n  packages:{packages}\n"
        ))
        .await;
    }

    async fn start_agent(&mut self) {
        let token_file = self.state.with_file_name("bootstrap.token");
        std::fs::write(&token_file, self.controller.bootstrap_token()).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let hash = self.controller.ca_cert_hash();
        let child = common::agent_command(&self.controller.url(), hash.as_deref(), &self.state)
            .arg("--bootstrap-token-file")
            .arg(&token_file)
            .args(["--machine-id", "rebuilt-journal-0001"])
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

    /// Stops the agent and replaces its journal with garbage, as a torn disk would leave it.
    fn corrupt_journal(&mut self) {
        self.stop_agent();
        std::fs::write(self.state.join("state.json"), "{\"format\": 1, \"pack").unwrap();
    }

    fn check_deadline(&self, deadline: tokio::time::Instant, what: &str, last: &Value) {
        if tokio::time::Instant::now() < deadline {
            return;
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        panic!("timed out waiting for {what}\nlast client status: {last:#}\nagent log:\n{log}");
    }

    /// Polls the client until its report of `kiosk` satisfies `check` (`None`: no report).
    async fn wait_for_report(&self, what: &str, check: impl Fn(Option<&Value>) -> bool) -> Value {
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
            if check(report) {
                return report.cloned().unwrap_or(Value::Null);
            }
            self.check_deadline(deadline, what, &client["status"]);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pre_remove_runs(&self) -> Vec<String> {
        std::fs::read_to_string(self.markers.join("pre-remove.log"))
            .map(|text| text.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn installed_on_disk(&self) -> bool {
        Path::new(&self.state.join("packages/kiosk/1.0.0")).is_dir()
    }

    /// The active version of `kiosk` as `state.json` records it (null while the file holds no
    /// journal, e.g. before the agent rebuilt it).
    fn journal_active(&self) -> Value {
        let text = std::fs::read_to_string(self.state.join("state.json")).unwrap_or_default();
        let journal: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        journal["packages"]["kiosk"]["active"].clone()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop_agent();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_journal_takes_the_hooks_from_the_desired_state_and_pre_remove_runs() {
    let mut setup = Setup::installed().await;
    setup.corrupt_journal();
    setup.start_agent().await;
    // The controller still asks for 1.0.0: its hooks come with the desired state.
    let deadline = tokio::time::Instant::now() + WAIT;
    while setup.journal_active()["hooks"]["preRemove"].is_null() {
        setup.check_deadline(
            deadline,
            "the hooks in the journal",
            &setup.journal_active(),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(setup.journal_active()["sha256"], setup.sha256.as_str());
    assert!(setup.journal_active().get("hooksUnknown").is_none());

    setup.assign(false).await;
    setup
        .wait_for_report("kiosk to be removed", |report| report.is_none())
        .await;
    assert_eq!(setup.pre_remove_runs(), vec!["preRemove 1.0.0"]);
    assert!(!setup.installed_on_disk());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_journal_learns_the_hooks_from_the_release_before_removing() {
    let mut setup = Setup::installed().await;
    setup.corrupt_journal();
    // While the agent is down, its group stops asking for the package: the desired state it gets
    // after the rebuild does not name it, so only the release can tell its hooks.
    setup.assign(false).await;
    setup.start_agent().await;
    setup
        .wait_for_report("kiosk to be removed", |report| report.is_none())
        .await;
    assert_eq!(setup.pre_remove_runs(), vec!["preRemove 1.0.0"]);
    assert!(!setup.installed_on_disk());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_whose_hooks_nobody_can_tell_is_not_removed_until_its_release_is_back() {
    let mut setup = Setup::installed().await;
    setup.corrupt_journal();
    setup.assign(false).await;
    setup.delete_release().await;
    setup.start_agent().await;
    let report = setup
        .wait_for_report("kiosk to wait for its hooks", |report| {
            report.is_some_and(|r| r["state"] == "Failed")
        })
        .await;
    let message = report["message"].as_str().unwrap();
    assert!(
        message.contains("hooks are unknown since the journal was rebuilt")
            && message.contains("no release of kiosk 1.0.0"),
        "{report}"
    );
    assert_eq!(report["activeVersion"], "1.0.0", "{report}");
    assert!(setup.installed_on_disk());
    assert!(setup.pre_remove_runs().is_empty());

    // The release applied again tells the hooks: the retry runs preRemove, then removes.
    setup.publish_release().await;
    setup
        .wait_for_report("kiosk to be removed", |report| report.is_none())
        .await;
    assert_eq!(setup.pre_remove_runs(), vec!["preRemove 1.0.0"]);
    assert!(!setup.installed_on_disk());
}
