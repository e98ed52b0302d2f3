//! Compatibility with the previous release (one minor version back) in both directions, with
//! real binaries. The previous release's `tc-agent` and `tc-controller` are built from its
//! commit, pinned with its tag in `tests/compat/previous-release`; then
//! * its agent runs against this build's controller (in this process, as in the other
//!   real-agent tests), and
//! * this build's agent runs against its controller (a separate process, driven through the
//!   flags and admin API that release has),
//!
//! and each time the agent enrols (bootstrap token, CA fingerprint), heartbeats (the client is
//! `Online` with the agent's own version in its inventory), installs the version a ClientGroup
//! assigns and then its update (reported `Installed` at the new version) and runs an exec task.
//!
//! Building the previous release: `git archive` of the pinned commit into
//! `target/compat/<tag>/src` (skipped when its stamp names that commit), then `cargo build
//! --locked -p tc-agent -p tc-controller` there, without debug information, with its own target
//! directory `target/compat/<tag>/target`: the running `cargo test` holds the workspace's, and
//! the previous release's binaries must not replace this build's. Only the two binaries are
//! built (no tests, no dev-dependencies). Measured on 2 cores shared with other builds: 3 min 8 s
//! cold (the dependencies included; 2 min 11 s of CPU), 0.3 s when cargo finds it up to date. The build is done once
//! per test process (a `OnceLock`) and once at a time across processes (a file lock).
//!
//! The repository's history must hold the pinned commit: a shallow clone or a missing commit
//! fails with what to fetch, it is never skipped. Everything listens on and talks to 127.0.0.1
//! only; every wait has a deadline; agents and the previous controller are killed when a test
//! ends.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::real::{Admin, Join, RealAgent, WAIT};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tc_testkit::TestController;

const PACKAGE: &str = "compat-kiosk";

/// The pinned previous release: its tag and commit.
struct Pin {
    tag: String,
    commit: String,
}

/// The previous release's binaries, built.
struct PreviousRelease {
    /// Its version (the tag without the `v`).
    version: String,
    agent: PathBuf,
    controller: PathBuf,
}

/// The repository's root (the workspace).
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The workspace's target directory (`CARGO_TARGET_TMPDIR` is its `tmp/`).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
        .to_path_buf()
}

/// Reads `tests/compat/previous-release`: `tag NAME` and `commit HEX` lines, `#` comments.
fn pin() -> Pin {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat/previous-release");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let (mut tag, mut commit) = (None, None);
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(' ') {
            Some(("tag", value)) => tag = Some(value.trim().to_owned()),
            Some(("commit", value)) => commit = Some(value.trim().to_owned()),
            _ => panic!(
                "{}:{}: expected `tag NAME` or `commit HEX`, found {line:?}",
                path.display(),
                number + 1
            ),
        }
    }
    let tag = tag.unwrap_or_else(|| panic!("{}: no `tag` line", path.display()));
    let commit = commit.unwrap_or_else(|| panic!("{}: no `commit` line", path.display()));
    assert!(
        commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "{}: the commit must be a full id (40 hex digits), found {commit:?}",
        path.display()
    );
    assert!(
        tag.starts_with('v'),
        "{}: the tag must be a release tag `vX.Y.Z`, found {tag:?}",
        path.display()
    );
    Pin { tag, commit }
}

fn git(args: &[&str]) -> Output {
    Command::new("git")
        .arg("-C")
        .arg(repository())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run `git {}` (git builds the previous release): {error}",
                args.join(" ")
            )
        })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

/// Checks the repository holds the pinned commit, and that the tag, where it exists, names it.
fn check_history(pin: &Pin) {
    let shallow = git(&["rev-parse", "--is-shallow-repository"]);
    assert!(
        shallow.status.success(),
        "{} is not a git repository ({}): the compatibility test builds the previous release \
         {} from the repository's history; run it in a clone",
        repository().display(),
        text(&shallow.stderr),
        pin.tag
    );
    assert!(
        text(&shallow.stdout) != "true",
        "the repository is a shallow clone: the compatibility test builds the previous release \
         {} (commit {}) from its history; fetch it (`git fetch --unshallow`, or clone without \
         `--depth`)",
        pin.tag,
        pin.commit
    );
    let object = format!("{}^{{commit}}", pin.commit);
    let present = git(&["cat-file", "-e", &object]);
    assert!(
        present.status.success(),
        "the repository lacks commit {} of the previous release {} (pinned in \
         crates/tc-agent/tests/compat/previous-release): fetch it (`git fetch origin tag {}`, or a \
         full clone)",
        pin.commit,
        pin.tag,
        pin.tag
    );
    let tag = git(&[
        "rev-parse",
        "-q",
        "--verify",
        &format!("refs/tags/{}^{{commit}}", pin.tag),
    ]);
    if tag.status.success() {
        assert_eq!(
            text(&tag.stdout),
            pin.commit,
            "tag {} does not point to the commit crates/tc-agent/tests/compat/previous-release \
             pins: correct the pin",
            pin.tag
        );
    }
}

/// Extracts the pinned commit's tree into `src` unless its stamp says it already holds it.
fn extract(pin: &Pin, base: &Path, src: &Path) {
    let stamp = base.join("src.stamp");
    if std::fs::read_to_string(&stamp).is_ok_and(|text| text.trim() == pin.commit)
        && src.join("Cargo.toml").is_file()
    {
        return;
    }
    let _ = std::fs::remove_file(&stamp);
    if src.exists() {
        std::fs::remove_dir_all(src)
            .unwrap_or_else(|error| panic!("cannot remove {}: {error}", src.display()));
    }
    std::fs::create_dir_all(src).unwrap();
    let archive = base.join("src.tar");
    let output = git(&[
        "archive",
        "--format=tar",
        "-o",
        archive.to_str().expect("a UTF-8 target directory"),
        &pin.commit,
    ]);
    assert!(
        output.status.success(),
        "git archive {}: {}",
        pin.commit,
        text(&output.stderr)
    );
    let output = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(src)
        .output()
        .unwrap_or_else(|error| panic!("cannot run tar: {error}"));
    assert!(
        output.status.success(),
        "tar -xf {}: {}",
        archive.display(),
        text(&output.stderr)
    );
    std::fs::remove_file(&archive).unwrap();
    std::fs::write(&stamp, format!("{}\n", pin.commit)).unwrap();
}

/// Whether the nested build must not inherit `key` from the environment `cargo test` runs tests
/// in: what cargo sets for the test itself (package, manifest, binaries), and what would change
/// where or how the previous release is built (target, flags, profiles).
fn not_inherited(key: &str) -> bool {
    const PREFIXES: [&str; 8] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_BIN_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "CARGO_PROFILE_",
        "CARGO_TARGET_",
        "CARGO_BUILD_",
    ];
    const KEYS: [&str; 9] = [
        "CARGO_CRATE_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        "CARGO_MAKEFLAGS",
        "CARGO_RUSTC_CURRENT_DIR",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "OUT_DIR",
    ];
    key != "CARGO_BUILD_JOBS"
        && (PREFIXES.iter().any(|prefix| key.starts_with(prefix)) || KEYS.contains(&key))
}

/// Builds the previous release's agent and controller (see the module's documentation).
fn build(pin: &Pin) -> PreviousRelease {
    check_history(pin);
    let base = target_dir().join("compat").join(&pin.tag);
    std::fs::create_dir_all(&base).unwrap();
    // One build at a time across test processes; released when the file is closed.
    let lock = File::create(base.join("build.lock")).unwrap();
    lock.lock().unwrap();
    let src = base.join("src");
    extract(pin, &base, &src);
    let target = base.join("target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    for (key, _) in std::env::vars() {
        if not_inherited(&key) {
            command.env_remove(key);
        }
    }
    let started = Instant::now();
    let output = command
        .current_dir(&src)
        .args(["build", "--locked", "-p", "tc-agent", "-p", "tc-controller"])
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_INCREMENTAL", "0")
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env("CARGO_TERM_COLOR", "never")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run cargo: {error}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "building the previous release {} in {} failed:\n{}",
        pin.tag,
        src.display(),
        tail(&stderr)
    );
    eprintln!(
        "previous release {} built (or found up to date) in {:.1?}",
        pin.tag,
        started.elapsed()
    );
    drop(lock);
    let release = PreviousRelease {
        version: pin.tag.trim_start_matches('v').to_owned(),
        agent: target.join("debug/tc-agent"),
        controller: target.join("debug/tc-controller"),
    };
    for (binary, name) in [
        (&release.agent, "tc-agent"),
        (&release.controller, "tc-controller"),
    ] {
        let output = Command::new(binary)
            .arg("--version")
            .output()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", binary.display()));
        assert_eq!(
            text(&output.stdout),
            format!("{name} {}", release.version),
            "{} is not the previous release's {name}",
            binary.display()
        );
    }
    assert_ne!(
        release.version,
        env!("CARGO_PKG_VERSION"),
        "the pinned release is this build's version: move the workspace's version or the pin"
    );
    release
}

/// The previous release, built once per test process.
fn previous_release() -> &'static PreviousRelease {
    static RELEASE: OnceLock<PreviousRelease> = OnceLock::new();
    RELEASE.get_or_init(|| build(&pin()))
}

fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(8000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The previous release's controller as a separate process on `127.0.0.1:0`, HTTPS with the CA
/// it makes, no watched directory; killed when dropped.
struct PreviousController {
    child: Child,
    log: PathBuf,
    data: PathBuf,
    url: String,
    ca_cert_hash: String,
}

impl PreviousController {
    async fn start(binary: &Path, dir: &Path) -> PreviousController {
        std::fs::create_dir_all(dir).unwrap();
        let data = dir.join("data");
        let log = dir.join("controller.log");
        let child = Command::new(binary)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--no-manifests",
                "--resync-seconds",
                "2",
            ])
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(File::options().append(true).open(&log).unwrap())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let mut controller = PreviousController {
            child,
            log,
            data,
            url: String::new(),
            ca_cert_hash: String::new(),
        };
        // It announces its address and CA fingerprint on standard output once it listens.
        const ANNOUNCE: &str = "thinfleet: serving HTTPS on ";
        let deadline = tokio::time::Instant::now() + WAIT;
        let (addr, hash) = loop {
            let log = std::fs::read_to_string(&controller.log).unwrap_or_default();
            if let Some(line) = log.lines().find(|line| line.starts_with(ANNOUNCE))
                && let Some((addr, rest)) = line[ANNOUNCE.len()..].split_once(';')
                && let Some((_, hash)) = rest.split_once("fingerprint ")
            {
                break (addr.to_owned(), hash.trim().to_owned());
            }
            if let Ok(Some(status)) = controller.child.try_wait() {
                panic!("the previous controller exited ({status}):\n{}", tail(&log));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the previous controller did not announce where it serves:\n{}",
                tail(&log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        controller.url = format!("https://{addr}");
        controller.ca_cert_hash = hash;
        controller
    }

    fn token(&self, file: &str) -> String {
        let path = self.data.join(file);
        let token = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
        token.trim().to_owned()
    }

    fn join(&self) -> Join {
        Join {
            url: self.url.clone(),
            bootstrap_token: self.token("bootstrap.token"),
            ca_cert_hash: Some(self.ca_cert_hash.clone()),
        }
    }

    /// Its admin API, trusting exactly its CA; waits until `/readyz` answers 200.
    async fn admin(&self) -> Admin {
        tc_agent::install_crypto_provider();
        let ca = tc_trust::read_pem_certificates(&self.data.join("pki/ca.crt")).unwrap();
        let tls = tc_trust::client_config(
            &tc_trust::Trust::CaCertificates(ca),
            &[tc_trust::ALPN_HTTP1],
            None,
        )
        .unwrap();
        let http = reqwest::Client::builder()
            .no_proxy()
            .use_preconfigured_tls(tls)
            .timeout(WAIT)
            .build()
            .unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(response) = http.get(format!("{}/readyz", self.url)).send().await
                && response.status() == StatusCode::OK
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the previous controller did not become ready:\n{}",
                tail(&std::fs::read_to_string(&self.log).unwrap_or_default())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Admin {
            http,
            base: self.url.clone(),
            token: self.token("admin.token"),
        }
    }
}

impl Drop for PreviousController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Uploads the package zip of `version` and publishes it as a release.
async fn publish(admin: &Admin, version: &str) {
    admin
        .publish(PACKAGE, version, &common::package_zip(version))
        .await;
}

/// Waits until the agent's client satisfies `check`; returns it. `what` names the expectation.
async fn wait_client(
    admin: &Admin,
    agent: &RealAgent,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/apis/thinfleet.io/v1/clients/{}", agent.name);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, client) = admin.call(Method::GET, &path, None).await;
        if status == StatusCode::OK && check(&client) {
            return client;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never {what}: {status} {client:#}\nagent log:\n{}",
            agent.name,
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `client` reports the package installed at `version`.
fn installed(client: &Value, version: &str) -> bool {
    client["status"]["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["name"] == PACKAGE && p["version"] == version && p["state"] == "Installed")
}

/// The version the agent runs (`current` of the package), if any.
fn running(agent: &RealAgent) -> Option<String> {
    std::fs::read_link(agent.state.join("packages").join(PACKAGE).join("current"))
        .ok()
        .map(|target| target.to_string_lossy().into_owned())
}

/// What both directions check, once the agent has enrolled: heartbeats with its inventory,
/// a package installed and updated through a ClientGroup, an exec task.
async fn converse(admin: &Admin, agent: &RealAgent, agent_version: &str) {
    let client = wait_client(
        admin,
        agent,
        &format!("was Online with agent version {agent_version} in its inventory"),
        |c| {
            c["status"]["phase"] == "Online"
                && c["status"]["inventory"]["agentVersion"] == agent_version
        },
    )
    .await;
    assert!(
        client["status"]["lastHeartbeat"].is_string(),
        "no heartbeat time: {client:#}"
    );

    publish(admin, "1.0.0").await;
    admin
        .apply(&format!(
            "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: compat\nspec:\n  selector: {{ matchLabels: {{ compat: \"yes\" }} }}\n  packages:\n    - {{ name: {PACKAGE}, version: \"^1\" }}\n"
        ))
        .await;
    wait_client(admin, agent, "reported 1.0.0 Installed", |c| {
        installed(c, "1.0.0")
    })
    .await;
    assert_eq!(running(agent).as_deref(), Some("1.0.0"));

    publish(admin, "1.1.0").await;
    wait_client(admin, agent, "reported the update 1.1.0 Installed", |c| {
        installed(c, "1.1.0")
    })
    .await;
    assert_eq!(running(agent).as_deref(), Some("1.1.0"));

    let (status, body) = admin
        .call(
            Method::POST,
            "/apis/thinfleet.io/v1/tasks",
            Some(json!({ "apiVersion": "thinfleet.io/v1", "kind": "Task",
                "metadata": { "name": "compat-exec" },
                "spec": { "targets": { "clients": [agent.name] },
                          "action": "exec",
                          "exec": { "command": ["/bin/sh", "-c", "echo compatible; exit 7"],
                                    "timeoutSeconds": 30 } } })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let result = loop {
        let (status, list) = admin
            .call(
                Method::GET,
                "/apis/thinfleet.io/v1/tasks/compat-exec/results",
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        if let Some(result) = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["client"] == agent.name.as_str())
            && !matches!(result["state"].as_str(), Some("Pending" | "Running"))
        {
            break result.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no final result of the exec task: {list:#}\nagent log:\n{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (
            result["state"].as_str(),
            result["exitCode"].as_i64(),
            result["stdout"].as_str()
        ),
        (Some("Failed"), Some(7), Some("compatible")),
        "{result:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_agent_works_with_this_controller() {
    let previous = previous_release();
    let controller = TestController::start().await;
    let admin = Admin::new(&controller);
    let root = tempfile::tempdir().unwrap();
    let agent = RealAgent::start_binary(
        &previous.agent,
        &controller,
        root.path(),
        "compat-previous-agent",
        &["compat=yes"],
        "",
    )
    .await;
    converse(&admin, &agent, &previous.version).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_agent_works_with_the_previous_release_controller() {
    let previous = previous_release();
    let root = tempfile::tempdir().unwrap();
    let controller =
        PreviousController::start(&previous.controller, &root.path().join("controller")).await;
    let admin = controller.admin().await;
    let agent = RealAgent::start(
        controller.join(),
        root.path(),
        "compat-this-agent",
        &["compat=yes"],
        "",
    )
    .await;
    converse(&admin, &agent, env!("CARGO_PKG_VERSION")).await;
}
