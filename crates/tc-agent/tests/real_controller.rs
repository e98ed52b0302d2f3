//! The real `tc-agent` binary against a real controller running in this process: an install and
//! an update with hooks, a failing health check rolled back, zips that try to escape the package,
//! a blob corrupted on the controller, a download cut short and resumed, and a removal.
//!
//! The agent runs as a child process with its own state directory; releases are published through
//! the admin API (`PUT /blobs`, then an apply); what happened is read from the client's status on
//! the controller and from the agent's state directory. Everything listens on and talks to
//! 127.0.0.1 only, every wait has a deadline, and the agent process is killed when a test ends.

mod common;

use std::io::{Cursor, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tc_testkit::{TestController, sha256_hex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};

/// The package every test installs.
const PACKAGE: &str = "kiosk";

/// How long any single expected change may take.
const WAIT: Duration = Duration::from_secs(60);

/// The hooks of a regular release: every script is part of the package.
const HOOKS: &str = r#"  hooks:
    postInstall: { command: ["./post-install.sh"], timeoutSeconds: 30 }
    healthCheck: { command: ["./health.sh"], timeoutSeconds: 30 }
    preRemove: { command: ["./pre-remove.sh"], timeoutSeconds: 30 }
"#;

/// One entry of a test zip.
#[derive(Clone, Copy)]
enum Entry<'a> {
    /// A file with its content and unix mode.
    File(&'a str, &'a [u8], u32),
    /// A symbolic link and its target.
    Link(&'a str, &'a str),
}

/// Builds a zip in memory, keeping entry names exactly as given (hostile ones included).
fn build_zip(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for entry in entries {
        match entry {
            Entry::File(name, content, mode) => {
                let options = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated)
                    .last_modified_time(zip::DateTime::default())
                    .unix_permissions(*mode);
                writer.start_file(*name, options).unwrap();
                writer.write_all(content).unwrap();
            }
            Entry::Link(name, target) => {
                let options = zip::write::SimpleFileOptions::default()
                    .last_modified_time(zip::DateTime::default());
                writer.add_symlink(*name, *target, options).unwrap();
            }
        }
    }
    let zip = writer.finish().unwrap().into_inner();
    // The fixture is only meaningful if the names reached the archive unchanged.
    let mut archive = zip::ZipArchive::new(Cursor::new(zip.clone())).unwrap();
    let names: Vec<Vec<u8>> = (0..archive.len())
        .map(|index| archive.by_index_raw(index).unwrap().name_raw().to_vec())
        .collect();
    let expected: Vec<Vec<u8>> = entries
        .iter()
        .map(|entry| match entry {
            Entry::File(name, ..) | Entry::Link(name, _) => name.as_bytes().to_vec(),
        })
        .collect();
    assert_eq!(names, expected, "the zip library changed an entry name");
    zip
}

/// A zip holding one `zeros.bin` of `mebibytes` MiB of zeros, compressed while it is written so
/// the uncompressed data never sits in memory.
fn zip_bomb(mebibytes: usize) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    writer
        .start_file(
            "VERSION",
            zip::write::SimpleFileOptions::default().last_modified_time(zip::DateTime::default()),
        )
        .unwrap();
    writer.write_all(b"bomb\n").unwrap();
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default())
        .unix_permissions(0o644);
    writer.start_file("zeros.bin", options).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..mebibytes {
        writer.write_all(&zeros).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// How the health check of a test release behaves.
#[derive(Clone, Copy)]
enum Health {
    /// Passes (and logs).
    Healthy,
    /// Fails with a message.
    Failing,
    /// Fails with a message until `markers/fixed` exists, then passes (and logs).
    FailingUntilFixed,
}

/// The files of a regular release of `version`. The hooks append a line to logs in `markers`:
/// `postInstall` also records where `current` points while it runs; `healthCheck` behaves as
/// `health` says.
fn release_zip(version: &str, markers: &Path, health: Health, extra: &[Entry<'_>]) -> Vec<u8> {
    let markers = markers.display();
    let post_install = format!(
        "#!/bin/sh\necho \"postInstall $TC_PACKAGE_VERSION previous=${{TC_PREVIOUS_VERSION:-none}} current=$(readlink \"$TC_PACKAGE_DIR/../current\")\" >> '{markers}/post-install.log'\n"
    );
    let passes =
        format!("echo \"healthCheck $TC_PACKAGE_VERSION\" >> '{markers}/health-check.log'\n");
    let fails = "echo 'kiosk: display :0 is not responding' >&2\nexit 1\n";
    let health = match health {
        Health::Healthy => format!("#!/bin/sh\n{passes}"),
        Health::Failing => format!("#!/bin/sh\n{fails}"),
        Health::FailingUntilFixed => {
            format!("#!/bin/sh\nif [ ! -e '{markers}/fixed' ]; then\n{fails}fi\n{passes}")
        }
    };
    let pre_remove = format!(
        "#!/bin/sh\necho \"preRemove $TC_PACKAGE_VERSION\" >> '{markers}/pre-remove.log'\n"
    );
    let version_file = format!("{version}\n");
    let app = format!("#!/bin/sh\necho kiosk {version}\n");
    let mut entries = vec![
        Entry::File("VERSION", version_file.as_bytes(), 0o644),
        Entry::File("bin/app", app.as_bytes(), 0o755),
        Entry::File("post-install.sh", post_install.as_bytes(), 0o755),
        Entry::File("health.sh", health.as_bytes(), 0o755),
        Entry::File("pre-remove.sh", pre_remove.as_bytes(), 0o755),
    ];
    entries.extend_from_slice(extra);
    build_zip(&entries)
}

/// Deterministic bytes that do not compress (xorshift).
fn incompressible(length: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut bytes = Vec::with_capacity(length + 8);
    while bytes.len() < length {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(length);
    bytes
}

/// The lines of a marker log (none when the file does not exist).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Sorted names in a directory (none when it does not exist).
fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Every path under `root` (relative, sorted), with its size for files and its target for links.
fn tree(root: &Path) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        // Entries that vanish while the tree is walked are skipped.
        for entry in entries.flatten() {
            let path = entry.path();
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            let Ok(metadata) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if metadata.file_type().is_symlink() {
                let Ok(target) = std::fs::read_link(&path) else {
                    continue;
                };
                out.push((relative, format!("-> {}", target.display())));
            } else if metadata.is_dir() {
                out.push((relative, "dir".to_owned()));
                walk(root, &path, out);
            } else {
                out.push((relative, format!("{} bytes", metadata.len())));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// A `tc-agent` child process. Dropping it kills the process.
struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    /// The end of what the agent logged, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text
            .char_indices()
            .rev()
            .nth(6000)
            .map_or(0, |(index, _)| index);
        text[start..].to_owned()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A controller, one agent enrolled with it, and the admin API.
///
/// Fields drop in order: the agent is killed before the controller stops, and the temporary
/// directory goes last.
struct Setup {
    agent: Option<AgentProcess>,
    controller: TestController,
    http: reqwest::Client,
    client_name: String,
    /// `root/state`: the agent's state directory.
    state: PathBuf,
    /// `root/markers`: where the hooks write.
    markers: PathBuf,
    /// `root/outside`: an empty directory that hostile zips aim at.
    outside: PathBuf,
    root: tempfile::TempDir,
}

impl Setup {
    /// Starts a controller (HTTPS) and a group selecting the agent (with no packages yet).
    async fn start() -> Setup {
        Setup::start_on(TestController::start().await).await
    }

    /// [`Setup::start`] with a plain-HTTP controller (for a proxy that reads the requests).
    async fn start_insecure() -> Setup {
        Setup::start_on(TestController::start_insecure().await).await
    }

    async fn start_on(controller: TestController) -> Setup {
        tc_agent::install_crypto_provider();
        let http = controller.http_client();
        let root = tempfile::tempdir().unwrap();
        let markers = root.path().join("markers");
        let outside = root.path().join("outside");
        std::fs::create_dir(&markers).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let setup = Setup {
            agent: None,
            controller,
            http,
            client_name: String::new(),
            state: root.path().join("state"),
            markers,
            outside,
            root,
        };
        setup.assign(None).await;
        setup
    }

    /// Starts the agent against `server` (the controller, or a proxy in front of it) and waits
    /// until the controller knows the client.
    async fn start_agent(&mut self, server: &str) {
        let token_file = self.root.path().join("bootstrap.token");
        std::fs::write(&token_file, self.controller.bootstrap_token()).unwrap();
        let log = self.root.path().join("agent.log");
        let stderr = std::fs::File::create(&log).unwrap();
        let hash = self.controller.ca_cert_hash();
        let child = common::agent_command(server, hash.as_deref(), &self.state)
            .arg("--bootstrap-token-file")
            .arg(&token_file)
            .args(["--machine-id", "e2e-machine-0001"])
            .args(["--name", "e2e-kiosk"])
            .args(["--label", "role=e2e"])
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.agent = Some(AgentProcess { child, log });
        let credentials = self.state.join("credentials.json");
        let deadline = tokio::time::Instant::now() + WAIT;
        let name = loop {
            if let Ok(text) = std::fs::read_to_string(&credentials)
                && let Ok(value) = serde_json::from_str::<Value>(&text)
                && let Some(name) = value["clientName"].as_str()
            {
                break name.to_owned();
            }
            self.check_deadline(deadline, "the agent to enrol", &Value::Null);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.client_name = name;
    }

    fn check_deadline(&self, deadline: tokio::time::Instant, what: &str, last: &Value) {
        if tokio::time::Instant::now() < deadline {
            return;
        }
        let log = self
            .agent
            .as_ref()
            .map(AgentProcess::log_tail)
            .unwrap_or_default();
        panic!("timed out waiting for {what}\nlast client status: {last:#}\nagent log:\n{log}");
    }

    /// Uploads a zip with `PUT /blobs`; returns its sha256.
    async fn upload(&self, zip: &[u8]) -> String {
        let response = self
            .http
            .put(format!("{}/blobs", self.controller.url()))
            .bearer_auth(self.controller.admin_token())
            .body(zip.to_vec())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        let sha = sha256_hex(zip);
        assert_eq!(body["sha256"], sha.as_str(), "{body}");
        assert_eq!(body["size"], zip.len() as u64, "{body}");
        sha
    }

    /// Applies manifests through the API.
    async fn apply(&self, yaml: &str) {
        let response = self
            .http
            .post(format!(
                "{}/apis/thinfleet.io/v1/apply",
                self.controller.url()
            ))
            .bearer_auth(self.controller.admin_token())
            .header("content-type", "application/yaml")
            .body(yaml.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{yaml}\n{body:#}");
    }

    /// Uploads `zip` and publishes it as `kiosk` `version` (with the regular hooks when `hooks`);
    /// returns the sha256.
    async fn publish(&self, version: &str, zip: &[u8], hooks: bool) -> String {
        let sha = self.upload(zip).await;
        let hooks = if hooks { HOOKS } else { "" };
        self.apply(&format!(
            "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata:\n  name: {PACKAGE}-{version}\nspec:\n  package: {PACKAGE}\n  version: {version}\n  artifact:\n    sha256: {sha}\n{hooks}"
        ))
        .await;
        sha
    }

    /// Makes the agent's group list exactly `version` of the package, or nothing.
    async fn assign(&self, version: Option<&str>) {
        let packages = match version {
            Some(version) => format!("\n    - {{ name: {PACKAGE}, version: \"={version}\" }}"),
            None => " []".to_owned(),
        };
        self.apply(&format!(
            "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: e2e\nspec:\n  selector: {{ matchLabels: {{ role: e2e }} }}\n  packages:{packages}\n  rollout:\n    maxUnavailable: 1\n"
        ))
        .await;
    }

    /// The client object, when the controller has it.
    async fn client(&self) -> Option<Value> {
        let response = self
            .http
            .get(format!(
                "{}/apis/thinfleet.io/v1/clients/{}",
                self.controller.url(),
                self.client_name
            ))
            .bearer_auth(self.controller.admin_token())
            .send()
            .await
            .unwrap();
        if response.status() != StatusCode::OK {
            return None;
        }
        Some(response.json().await.unwrap())
    }

    /// Polls the client until the report of the package satisfies `check` (given `None` when the
    /// client reports no such package); returns that report.
    async fn wait_for_report(&self, what: &str, check: impl Fn(Option<&Value>) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let client = self.client().await.unwrap_or(Value::Null);
            if client.is_object() {
                let report = client["status"]["packages"]
                    .as_array()
                    .and_then(|packages| packages.iter().find(|p| p["name"] == PACKAGE));
                if check(report) {
                    return report.cloned().unwrap_or(Value::Null);
                }
            }
            self.check_deadline(deadline, what, &client["status"]);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the package is reported `state` for `version`; returns the report.
    async fn wait_for_state(&self, version: &str, state: &str) -> Value {
        self.wait_for_report(&format!("{PACKAGE} {version} to be {state}"), |report| {
            report.is_some_and(|r| r["version"] == version && r["state"] == state)
        })
        .await
    }

    /// Assigns `version` and waits until it is installed and active.
    async fn install(&self, version: &str) -> Value {
        self.assign(Some(version)).await;
        let report = self.wait_for_state(version, "Installed").await;
        assert_eq!(report["activeVersion"], version, "{report}");
        assert_eq!(self.current().as_deref(), Some(version));
        report
    }

    /// Publishes a regular release of `version` and installs it.
    async fn publish_and_install(&self, version: &str) {
        let zip = release_zip(version, &self.markers, Health::Healthy, &[]);
        self.publish(version, &zip, true).await;
        self.install(version).await;
    }

    /// `packages/kiosk` in the state directory.
    fn package_dir(&self) -> PathBuf {
        self.state.join("packages").join(PACKAGE)
    }

    /// Where `packages/kiosk/current` points.
    fn current(&self) -> Option<String> {
        std::fs::read_link(self.package_dir().join("current"))
            .ok()
            .map(|target| target.display().to_string())
    }

    /// A file of the active version, read through `current`.
    fn read_current(&self, file: &str) -> String {
        std::fs::read_to_string(self.package_dir().join("current").join(file)).unwrap()
    }

    /// Asserts that version `version` is active and its files are intact.
    fn assert_active_and_intact(&self, version: &str) {
        assert_eq!(self.current().as_deref(), Some(version));
        assert_eq!(self.read_current("VERSION"), format!("{version}\n"));
        assert_eq!(
            self.read_current("bin/app"),
            format!("#!/bin/sh\necho kiosk {version}\n")
        );
        let mode = std::fs::metadata(self.package_dir().join(version).join("bin/app"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    /// Asserts that the staging area holds nothing.
    fn assert_staging_empty(&self) {
        let staging = self.state.join("staging");
        assert!(list(&staging).is_empty(), "{:?}", tree(&staging));
    }
}

/// A path as an entry name that climbs far enough to reach it from wherever the package is
/// extracted: `../../…/<path without its leading slash>`.
fn climbing_to(path: &Path) -> String {
    let absolute = path.display().to_string();
    format!("{}{}", "../".repeat(32), absolute.trim_start_matches('/'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_then_updates_running_hooks_and_keeping_one_previous_version() {
    let mut setup = Setup::start().await;
    setup.start_agent(&setup.controller.url()).await;
    let post_install = setup.markers.join("post-install.log");
    let health_check = setup.markers.join("health-check.log");

    setup.publish_and_install("1.0.0").await;
    setup.assert_active_and_intact("1.0.0");
    assert_eq!(list(&setup.package_dir()), ["1.0.0", "current"]);
    assert_eq!(
        lines(&post_install),
        ["postInstall 1.0.0 previous=none current=1.0.0"]
    );
    assert_eq!(lines(&health_check), ["healthCheck 1.0.0"]);

    setup.publish_and_install("1.1.0").await;
    setup.assert_active_and_intact("1.1.0");
    assert_eq!(
        list(&setup.package_dir()),
        ["1.0.0", "1.1.0", "current"],
        "exactly one previous version is kept"
    );
    assert_eq!(
        std::fs::read_to_string(setup.package_dir().join("1.0.0/VERSION")).unwrap(),
        "1.0.0\n",
        "the previous version is kept intact for a rollback"
    );
    assert_eq!(
        lines(&post_install),
        [
            "postInstall 1.0.0 previous=none current=1.0.0",
            "postInstall 1.1.0 previous=1.0.0 current=1.1.0",
        ]
    );
    assert_eq!(
        lines(&health_check),
        ["healthCheck 1.0.0", "healthCheck 1.1.0"]
    );
    assert!(lines(&setup.markers.join("pre-remove.log")).is_empty());
    setup.assert_staging_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_is_reported_with_its_output_and_rolled_back() {
    let mut setup = Setup::start().await;
    setup.start_agent(&setup.controller.url()).await;
    setup.publish_and_install("1.0.0").await;
    setup.publish_and_install("1.1.0").await;

    let broken = release_zip("1.2.0", &setup.markers, Health::Failing, &[]);
    setup.publish("1.2.0", &broken, true).await;
    setup.assign(Some("1.2.0")).await;
    let report = setup.wait_for_state("1.2.0", "Failed").await;
    let message = report["message"].as_str().unwrap_or_default();
    assert!(message.contains("healthCheck"), "{report}");
    assert!(
        message.contains("kiosk: display :0 is not responding"),
        "the hook's output is in the message: {report}"
    );
    assert_eq!(report["activeVersion"], "1.1.0", "{report}");
    setup.assert_active_and_intact("1.1.0");
    assert_eq!(list(&setup.package_dir()), ["1.0.0", "1.1.0", "current"]);
    assert_eq!(
        lines(&setup.markers.join("health-check.log")),
        ["healthCheck 1.0.0", "healthCheck 1.1.0"]
    );
    setup.assert_staging_empty();
}

/// The issue's reproduction: the agent activated a release whose health check failed again and
/// again, running its `postInstall` (which restarts a kiosk's session) each time, until an admin
/// acted. Now it is tried once; `tcadm rollout retry` (the API behind it) tries it once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_release_runs_once_until_an_admin_retries_it() {
    let mut setup = Setup::start().await;
    setup.start_agent(&setup.controller.url()).await;
    setup.publish_and_install("1.0.0").await;

    let zip = release_zip("1.1.0", &setup.markers, Health::FailingUntilFixed, &[]);
    setup.publish("1.1.0", &zip, true).await;
    setup.assign(Some("1.1.0")).await;
    let report = setup.wait_for_state("1.1.0", "Failed").await;
    assert_eq!(report["activeVersion"], "1.0.0", "{report}");
    // The agent retries failed downloads every 100 ms here (`TC_AGENT_RETRY_MILLIS`): in two
    // seconds a release it retried would have run its hooks many times.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let post_installs = || lines(&setup.markers.join("post-install.log"));
    assert_eq!(post_installs().len(), 2, "{:?}", post_installs());
    assert_eq!(
        setup.wait_for_state("1.1.0", "Failed").await["activeVersion"],
        "1.0.0"
    );

    std::fs::write(setup.markers.join("fixed"), "").unwrap();
    let response = setup
        .http
        .post(format!(
            "{}/apis/thinfleet.io/v1/clientgroups/e2e/retry",
            setup.controller.url()
        ))
        .bearer_auth(setup.controller.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let retried: Value = response.json().await.unwrap();
    assert_eq!(retried["retried"][0]["client"], setup.client_name.as_str());
    let report = setup.wait_for_state("1.1.0", "Installed").await;
    assert_eq!(report["activeVersion"], "1.1.0", "{report}");
    setup.assert_active_and_intact("1.1.0");
    let runs = post_installs();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(runs[1].starts_with("postInstall 1.1.0") && runs[2].starts_with("postInstall 1.1.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zips_that_try_to_escape_are_refused_and_nothing_lands_outside_the_state_directory() {
    let mut setup = Setup::start().await;
    setup.start_agent(&setup.controller.url()).await;
    setup.publish_and_install("1.1.0").await;

    let outside = setup.outside.clone();
    let root = setup.root.path().to_path_buf();
    let dotdot_target = outside.join("dotdot.txt");
    let dotdot = climbing_to(&dotdot_target);
    let absolute_target = outside.join("absolute.txt");
    let absolute = absolute_target.display().to_string();
    let link_target = climbing_to(&outside);
    let before = tree(&root)
        .into_iter()
        .filter(|(path, _)| !path.starts_with("state") && path != "agent.log")
        .collect::<Vec<_>>();

    struct Hostile<'a> {
        version: &'a str,
        zip: Vec<u8>,
        /// What the report's message must say.
        reasons: &'a [&'a str],
        /// Paths the archive aimed at, which must not exist.
        aimed_at: Vec<PathBuf>,
    }
    let hostile = [
        Hostile {
            version: "1.3.0",
            zip: build_zip(&[
                Entry::File("VERSION", b"1.3.0\n", 0o644),
                Entry::File(&dotdot, b"escaped through ..\n", 0o644),
            ]),
            reasons: &["contains `..`", "dotdot.txt"],
            aimed_at: vec![dotdot_target.clone()],
        },
        Hostile {
            version: "1.4.0",
            zip: build_zip(&[
                Entry::File("VERSION", b"1.4.0\n", 0o644),
                Entry::File(&absolute, b"escaped through an absolute path\n", 0o644),
            ]),
            reasons: &["is an absolute path", "absolute.txt"],
            aimed_at: vec![absolute_target.clone()],
        },
        Hostile {
            version: "1.5.0",
            zip: build_zip(&[
                Entry::File("VERSION", b"1.5.0\n", 0o644),
                Entry::Link("escape", &link_target),
            ]),
            reasons: &["`escape`", "symbolic link", "points outside the package"],
            aimed_at: vec![
                setup.package_dir().join("1.5.0/escape"),
                setup.state.join("staging").join(PACKAGE).join("escape"),
            ],
        },
        Hostile {
            version: "1.6.0",
            zip: zip_bomb(200),
            reasons: &["zeros.bin", "compression ratio"],
            aimed_at: vec![
                setup.package_dir().join("1.6.0/zeros.bin"),
                setup.state.join("staging").join(PACKAGE).join("zeros.bin"),
            ],
        },
    ];
    let bomb_size = hostile[3].zip.len();
    assert!(
        bomb_size < 1 << 20,
        "200 MiB of zeros compress to {bomb_size} bytes"
    );

    for case in &hostile {
        setup.publish(case.version, &case.zip, false).await;
        setup.assign(Some(case.version)).await;
        let report = setup.wait_for_state(case.version, "Failed").await;
        let message = report["message"].as_str().unwrap_or_default();
        for reason in case.reasons {
            assert!(
                message.contains(reason),
                "{}: the message must name the problem ({reason}): {report}",
                case.version
            );
        }
        assert_eq!(report["activeVersion"], "1.1.0", "{report}");
        setup.assert_active_and_intact("1.1.0");
        assert_eq!(list(&setup.package_dir()), ["1.1.0", "current"]);
        setup.assert_staging_empty();
        for path in &case.aimed_at {
            assert!(
                std::fs::symlink_metadata(path).is_err(),
                "{}: {} was written",
                case.version,
                path.display()
            );
        }
        let after: Vec<_> = tree(&root)
            .into_iter()
            .filter(|(path, _)| !path.starts_with("state") && path != "agent.log")
            .collect();
        assert_eq!(
            after, before,
            "{}: something was written outside",
            case.version
        );
        assert!(list(&outside).is_empty(), "{:?}", tree(&outside));
        // Only `current` is a link, and nothing big was extracted anywhere.
        let state = tree(&setup.state);
        let links: Vec<_> = state
            .iter()
            .filter(|(_, what)| what.starts_with("->"))
            .collect();
        assert_eq!(
            links,
            [&("packages/kiosk/current".to_owned(), "-> 1.1.0".to_owned())],
            "{}",
            case.version
        );
        for (path, what) in &state {
            if let Some(size) = what.strip_suffix(" bytes") {
                assert!(
                    size.parse::<u64>().unwrap() < 4 << 20,
                    "{}: {path} has {what}",
                    case.version
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_corrupted_on_the_controller_is_refused_by_its_digest() {
    let mut setup = Setup::start().await;
    setup.start_agent(&setup.controller.url()).await;
    setup.publish_and_install("1.1.0").await;

    let zip = release_zip(
        "1.7.0",
        &setup.markers,
        Health::Healthy,
        &[Entry::File(
            "only-in-1.7.0.txt",
            b"must never appear\n",
            0o644,
        )],
    );
    let sha = setup.publish("1.7.0", &zip, true).await;
    let blob = setup.controller.data_dir().join("blobs/sha256").join(&sha);
    let stored = std::fs::read(&blob).unwrap();
    assert_eq!(stored, zip, "the blob is stored as uploaded");
    let corrupted: Vec<u8> = stored.iter().map(|byte| byte ^ 0x5a).collect();
    assert_eq!(corrupted.len(), zip.len());
    std::fs::write(&blob, &corrupted).unwrap();

    setup.assign(Some("1.7.0")).await;
    let report = setup.wait_for_state("1.7.0", "Failed").await;
    let message = report["message"].as_str().unwrap_or_default();
    assert!(message.contains("sha256"), "{report}");
    assert!(
        message.contains(&sha),
        "the message names the expected digest: {report}"
    );
    assert_eq!(report["activeVersion"], "1.1.0", "{report}");
    setup.assert_active_and_intact("1.1.0");
    assert_eq!(list(&setup.package_dir()), ["1.1.0", "current"]);
    setup.assert_staging_empty();
    let state = tree(&setup.state);
    assert!(
        !state
            .iter()
            .any(|(path, _)| path.ends_with("only-in-1.7.0.txt")),
        "nothing of the corrupted zip was extracted: {state:?}"
    );
    assert!(
        !setup
            .state
            .join("downloads")
            .join(format!("{sha}.zip"))
            .exists(),
        "an unverified download must not get its final name"
    );
    assert_eq!(
        lines(&setup.markers.join("post-install.log")),
        ["postInstall 1.1.0 previous=none current=1.1.0"]
    );
}

/// A blob request seen by the proxy.
#[derive(Clone, Debug)]
struct BlobRequest {
    /// Its `Range` header.
    range: Option<String>,
    /// Body bytes forwarded before the connection was closed, when the answer was cut.
    cut_after: Option<usize>,
}

/// A TCP proxy on 127.0.0.1 in front of the controller. It forwards every request untouched
/// (one request per connection: it adds `Connection: close` both ways so that requests are seen
/// one by one), except the answer to the first `GET /blobs/...`, which it cuts after
/// `cut_after` body bytes by closing the connection.
struct CuttingProxy {
    addr: SocketAddr,
    blobs: Arc<Mutex<Vec<BlobRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    async fn start(upstream: SocketAddr, cut_after: usize) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blobs = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&blobs);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                connections.spawn(async move {
                    let _ = forward_exchange(stream, upstream, &seen, cut_after).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        CuttingProxy { addr, blobs, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn blob_requests(&self) -> Vec<BlobRequest> {
        self.blobs.lock().unwrap().clone()
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards one request and its answer between `client` and a new connection to `upstream`.
async fn forward_exchange(
    client: TcpStream,
    upstream: SocketAddr,
    blobs: &Mutex<Vec<BlobRequest>>,
    cut_after: usize,
) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let Some((head, rest)) = read_head(&mut client_read).await? else {
        return Ok(());
    };
    let request = String::from_utf8_lossy(&head).into_owned();
    let cut = if request.starts_with("GET /blobs/") {
        let mut blobs = blobs.lock().unwrap();
        let first = blobs.is_empty();
        blobs.push(BlobRequest {
            range: header(&request, "range"),
            cut_after: first.then_some(cut_after),
        });
        first
    } else {
        false
    };
    server_write
        .write_all(close_after_this(&request).as_bytes())
        .await?;
    server_write.write_all(&rest).await?;
    let upload = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let result = async {
        let Some((head, rest)) = read_head(&mut server_read).await? else {
            return Ok(());
        };
        let response = String::from_utf8_lossy(&head).into_owned();
        client_write
            .write_all(close_after_this(&response).as_bytes())
            .await?;
        if cut {
            let mut remaining = cut_after;
            let first = rest.len().min(remaining);
            client_write.write_all(&rest[..first]).await?;
            remaining -= first;
            let mut buffer = vec![0u8; 64 * 1024];
            while remaining > 0 {
                let want = remaining.min(buffer.len());
                let read = server_read.read(&mut buffer[..want]).await?;
                if read == 0 {
                    break;
                }
                client_write.write_all(&buffer[..read]).await?;
                remaining -= read;
            }
            client_write.flush().await?;
            // Dropping the halves closes the connection mid-body.
            return Ok(());
        }
        client_write.write_all(&rest).await?;
        tokio::io::copy(&mut server_read, &mut client_write).await?;
        client_write.shutdown().await
    }
    .await;
    upload.abort();
    result
}

/// Reads up to the end of an HTTP head; returns the head and whatever was read after it, or
/// `None` when the connection closed first.
async fn read_head(stream: &mut OwnedReadHalf) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            let rest = buffer.split_off(end + 4);
            return Ok(Some((buffer, rest)));
        }
        if buffer.len() > 64 * 1024 {
            return Err(std::io::Error::other("HTTP head too long"));
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// The value of a header in an HTTP head.
fn header(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// The head with `Connection: close` instead of any connection header.
fn close_after_this(head: &str) -> String {
    let mut lines: Vec<&str> = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|line| {
            let lower = line.to_ascii_lowercase();
            !lower.starts_with("connection:") && !lower.starts_with("keep-alive:")
        })
        .collect();
    lines.push("Connection: close");
    format!("{}\r\n\r\n", lines.join("\r\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_short_resumes_with_a_range_request() {
    let mut setup = Setup::start_insecure().await;
    let payload = incompressible(4 << 20);
    let zip = release_zip(
        "2.0.0",
        &setup.markers,
        Health::Healthy,
        &[Entry::File("data/payload.bin", &payload, 0o644)],
    );
    assert!(zip.len() > 4 << 20, "the package is not compressible");
    let half = zip.len() / 2;
    let proxy = CuttingProxy::start(setup.controller.addr(), half).await;
    setup.start_agent(&proxy.url()).await;
    setup.publish("2.0.0", &zip, true).await;

    setup.install("2.0.0").await;
    setup.assert_active_and_intact("2.0.0");
    let installed = std::fs::read(setup.package_dir().join("current/data/payload.bin")).unwrap();
    assert!(installed == payload, "the installed payload differs");

    let requests = proxy.blob_requests();
    assert!(requests.len() >= 2, "{requests:?}");
    assert_eq!(requests[0].range, None, "{requests:?}");
    assert_eq!(requests[0].cut_after, Some(half), "{requests:?}");
    let range = requests[1]
        .range
        .as_deref()
        .unwrap_or_else(|| panic!("the second blob request resumes with a Range: {requests:?}"));
    let start: usize = range
        .strip_prefix("bytes=")
        .and_then(|rest| rest.strip_suffix('-'))
        .and_then(|start| start.parse().ok())
        .unwrap_or_else(|| panic!("unexpected Range `{range}`"));
    assert!(
        start > 0 && start <= half,
        "the download resumes from what it received, not from the start: {requests:?}"
    );
    setup.assert_staging_empty();
    assert!(
        list(&setup.state.join("downloads")).is_empty(),
        "{:?}",
        tree(&setup.state.join("downloads"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_package_runs_pre_remove_and_deletes_it() {
    let mut setup = Setup::start().await;
    setup.start_agent(&setup.controller.url()).await;
    setup.publish_and_install("1.0.0").await;
    setup.publish_and_install("1.1.0").await;
    assert!(lines(&setup.markers.join("pre-remove.log")).is_empty());

    setup.assign(None).await;
    setup
        .wait_for_report("the client to report no kiosk package", |report| {
            report.is_none()
        })
        .await;
    assert_eq!(
        lines(&setup.markers.join("pre-remove.log")),
        ["preRemove 1.1.0"],
        "preRemove runs once, in the active version"
    );
    assert!(
        std::fs::symlink_metadata(setup.package_dir()).is_err(),
        "{:?}",
        tree(&setup.package_dir())
    );
    assert!(list(&setup.state.join("packages")).is_empty());
    let client = setup.client().await.unwrap();
    assert!(
        client["status"]["desired"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{client:#}"
    );
}
