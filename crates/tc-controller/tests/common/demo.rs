//! The harness of the end-to-end suites: the real `tc-controller --demo` (which starts three real
//! `tc-agent` processes) as a separate process, watching a temporary copy of the example fleet
//! (`manifests/` and `examples/`), and the real `tcadm` run against it.
//!
//! It needs the `tc-agent` and `tcadm` binaries, which `cargo test --workspace` builds before
//! running any test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How often a wait checks its condition again.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The demo controller's process, killed when dropped, so a failing test leaves no controller
/// running.
pub struct Controller {
    /// The `tc-controller --demo` process.
    pub child: Child,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A binary of the workspace built next to `tc-controller`.
pub fn binary(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_tc-controller"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: run the suite with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A running demo fleet and the way to speak to it with `tcadm`.
pub struct Fleet {
    /// The controller's working directory: `manifests/` (watched), `examples/` and `data/`.
    pub root: PathBuf,
    /// The controller's base URL.
    pub server: String,
    /// The admin token the controller wrote at its first start.
    pub token: String,
    /// Dropped before `_temp`, so the controller is gone before its directory is removed.
    pub controller: Controller,
    _temp: tempfile::TempDir,
}

impl Fleet {
    /// Copies the example fleet into a temporary directory, starts `tc-controller --demo` there
    /// (resync every 2 s) and waits until it has written its admin token.
    pub fn start() -> Fleet {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().to_path_buf();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        copy_dir(&repo.join("manifests"), &root.join("manifests"));
        copy_dir(&repo.join("examples"), &root.join("examples"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_tc-controller"))
            .current_dir(&root)
            .args([
                "--demo",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--resync-seconds",
                "2",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let controller = Controller { child };
        let token_path = root.join("data/admin.token");
        let ca_path = root.join("data/pki/ca.crt");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_to_string(&token_path).map_or(true, |t| t.trim().is_empty())
            || !ca_path.exists()
        {
            assert!(
                Instant::now() < deadline,
                "the controller wrote no admin token or no CA"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Fleet {
            // HTTPS, as by default; tcadm, run in the fleet's directory, trusts data/pki/ca.crt.
            server: format!("https://127.0.0.1:{port}"),
            token: std::fs::read_to_string(&token_path)
                .unwrap()
                .trim()
                .to_string(),
            root,
            controller,
            _temp: temp,
        }
    }

    /// Runs `tcadm` in the fleet's directory with the break-glass token (its applies are managed
    /// by `admin`).
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(binary("tcadm"))
            .current_dir(&self.root)
            // No config file or context of the machine running the tests applies.
            .env("XDG_CONFIG_HOME", &self.root)
            .env_remove("TCADM_CONFIG")
            .env_remove("TCADM_CONTEXT")
            .env_remove("TCADM_TOKEN_FILE")
            .args(["--server", &self.server, "--token", &self.token])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `tcadm`, which must succeed; returns (stdout, stderr).
    pub fn tcadm_with_stderr(&self, args: &[&str]) -> (String, String) {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "tcadm {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        (
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    }

    /// Runs `tcadm`, which must succeed; returns its stdout.
    pub fn tcadm(&self, args: &[&str]) -> String {
        self.tcadm_with_stderr(args).0
    }

    /// `tcadm ARGS -o json`.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.tcadm(&all)).unwrap()
    }

    /// (client, package, version, state, activeVersion) for every reported package.
    pub fn reports(&self) -> Vec<(String, String, String, String, Option<String>)> {
        let clients = self.json(&["get", "clients"]);
        let mut rows = vec![];
        for client in clients["items"].as_array().unwrap() {
            for package in client["status"]["packages"]
                .as_array()
                .into_iter()
                .flatten()
            {
                rows.push((
                    client["metadata"]["name"].as_str().unwrap().to_string(),
                    package["name"].as_str().unwrap().to_string(),
                    package["version"].as_str().unwrap().to_string(),
                    package["state"].as_str().unwrap().to_string(),
                    package["activeVersion"].as_str().map(String::from),
                ));
            }
        }
        rows
    }

    /// Whether `client` reports `package` `Installed` at `version`.
    pub fn installed(&self, client: &str, package: &str, version: &str) -> bool {
        self.reports()
            .iter()
            .any(|(c, p, v, s, _)| c == client && p == package && v == version && s == "Installed")
    }

    /// Replaces the first `from` in a file of the fleet's directory, which must contain it.
    pub fn edit(&self, file: &str, from: &str, to: &str) {
        let path = self.root.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from} not in {file}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }

    /// Waits until `check` holds, at most `limit`; the failure names `what` and shows what the
    /// clients report.
    pub fn wait_until(&self, what: &str, limit: Duration, check: impl Fn(&Fleet) -> bool) {
        let deadline = Instant::now() + limit;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}; clients: {:?}",
                self.reports()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Every event, oldest first.
    pub fn events(&self) -> Vec<Value> {
        self.json(&["get", "events"])["items"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The events of objects of `kind`.
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["object"]["kind"] == kind)
            .collect()
    }

    /// The events recorded after sequence number `seq`.
    pub fn events_after(&self, seq: u64) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["seq"].as_u64().unwrap() > seq)
            .collect()
    }

    /// The sequence number of the last event (0 without any).
    pub fn last_seq(&self) -> u64 {
        self.events()
            .iter()
            .filter_map(|e| e["seq"].as_u64())
            .max()
            .unwrap_or(0)
    }
}
