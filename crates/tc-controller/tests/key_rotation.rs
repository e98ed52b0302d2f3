//! Replacing the controller's keys without locking agents out, with the real binaries. The CA:
//! `tc-controller ca prepare` makes the next CA while the controller serves, new join material
//! carries both fingerprints, an agent pinning both keeps working across `tc-controller ca rotate`
//! and a restart, and an agent still pinning only the old CA is refused (and says why). The
//! session key: agents open new sessions with their key alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::demo::binary;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// A child process killed when dropped.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Stops it with SIGTERM, as systemd does, and waits for it.
    fn stop(mut self) {
        let sent = Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

struct Setup {
    root: PathBuf,
    data: PathBuf,
    port: u16,
    _temp: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let temp = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Setup {
            root: temp.path().to_path_buf(),
            data: temp.path().join("data"),
            port,
            _temp: temp,
        }
    }

    fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Starts the controller and waits until it answers over HTTPS with its current CA.
    fn controller(&self, name: &str) -> Process {
        let log = self.root.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_tc-controller"))
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--no-manifests")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let process = Process { child, log };
        let deadline = Instant::now() + WAIT;
        while !self.tcadm(&["get", "clients"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the controller did not start:\n{}",
                process.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        process
    }

    fn ca_command(&self, step: &str) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tc-controller"))
            .arg("--data-dir")
            .arg(&self.data)
            .args(["ca", step])
            .output()
            .unwrap()
    }

    /// `tcadm` verifying the controller with the CA file it has now.
    fn tcadm(&self, args: &[&str]) -> Output {
        Command::new(binary("tcadm"))
            .current_dir(&self.root)
            // No config file or context of the machine running the tests applies.
            .env("XDG_CONFIG_HOME", &self.root)
            .env_remove("TCADM_CONFIG")
            .env_remove("TCADM_CONTEXT")
            .env_remove("TCADM_TOKEN_FILE")
            .args(["--server", &self.server()])
            .arg("--certificate-authority")
            .arg(self.data.join("pki/ca.crt"))
            .arg("--token")
            .arg(std::fs::read_to_string(self.data.join("admin.token")).unwrap_or_default())
            .args(args)
            .output()
            .unwrap()
    }

    fn agent(&self, name: &str, pins: &str) -> Process {
        self.agent_with_token(name, pins, &self.data.join("bootstrap.token"))
    }

    fn agent_with_token(&self, name: &str, pins: &str, token: &Path) -> Process {
        let log = self.root.join(format!("{name}.log"));
        let child = Command::new(binary("tc-agent"))
            .args(["--server", &self.server(), "--ca-cert-hash", pins])
            .arg("--bootstrap-token-file")
            .arg(token)
            .arg("--state-dir")
            .arg(self.root.join(name))
            .args(["--machine-id", &format!("machine-{name}"), "--name", name])
            .env("TC_AGENT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Process { child, log }
    }

    /// The client's last heartbeat, as the API shows it.
    fn last_heartbeat(&self, name: &str) -> Option<String> {
        let output = self.tcadm(&["get", "client", name, "-o", "json"]);
        if !output.status.success() {
            return None;
        }
        let client: Value = serde_json::from_slice(&output.stdout).ok()?;
        client["status"]["lastHeartbeat"]
            .as_str()
            .map(str::to_string)
    }

    fn wait(&self, what: &str, agents: &[&Process], mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what}:\n{}",
                agents
                    .iter()
                    .map(|agent| agent.log())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn ca_hash(path: &Path) -> String {
    let certificates = tc_trust::read_pem_certificates(path).unwrap();
    tc_trust::CaCertHash::of_certificate(&certificates[0])
        .unwrap()
        .to_string()
}

#[test]
fn agents_pinning_both_cas_keep_working_across_a_ca_rotation() {
    let setup = Setup::new();
    let controller = setup.controller("controller-1");
    let old = ca_hash(&setup.data.join("pki/ca.crt"));
    // Heartbeats every 5 s, so that the test sees them after the switch.
    let group = setup.root.join("group.yaml");
    std::fs::write(
        &group,
        "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: { name: all }\n\
         spec: { selector: {}, packages: [], agent: { heartbeatSeconds: 5 } }\n",
    )
    .unwrap();
    let applied = setup.tcadm(&["apply", "-f", group.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", text(&applied));

    // Step 1, while the controller serves: the next CA, and join material with both.
    let prepared = setup.ca_command("prepare");
    assert!(prepared.status.success(), "{}", text(&prepared));
    let new = ca_hash(&setup.data.join("pki/next-ca.crt"));
    assert_ne!(new, old);
    let both = format!("{old},{new}");
    assert!(text(&prepared).contains(&both), "{}", text(&prepared));
    let token = setup.tcadm(&["token", "create", "--name", "rotation", "-o", "json"]);
    assert!(token.status.success(), "{}", text(&token));
    let created: Value = serde_json::from_slice(&token.stdout).unwrap();
    assert_eq!(created["join"]["caCertHash"], both.as_str());

    let updated = setup.agent("updated", &both);
    let stale = setup.agent("stale", &old);
    for name in ["updated", "stale"] {
        setup.wait(&format!("{name} heartbeats"), &[&updated, &stale], || {
            setup.last_heartbeat(name).is_some()
        });
    }

    // Step 2 is refused while the controller runs, then done with it stopped.
    let refused = setup.ca_command("rotate");
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("stop the controller"),
        "{}",
        text(&refused)
    );
    controller.stop();
    let rotated = setup.ca_command("rotate");
    assert!(rotated.status.success(), "{}", text(&rotated));
    assert_eq!(ca_hash(&setup.data.join("pki/ca.crt")), new);
    assert_eq!(ca_hash(&setup.data.join("pki/previous-ca.crt")), old);

    let _controller = setup.controller("controller-2");
    let (updated_before, stale_before) = (
        setup.last_heartbeat("updated"),
        setup.last_heartbeat("stale"),
    );
    // The agent pinning both goes on heartbeating with the new CA.
    setup.wait(
        "the updated agent heartbeats through the new CA",
        &[&updated],
        || {
            let now = setup.last_heartbeat("updated");
            now.is_some() && now != updated_before
        },
    );
    // The one pinning only the old CA is refused at the handshake, and says so.
    setup.wait("the stale agent reports the mismatch", &[&stale], || {
        stale
            .log()
            .contains("does not match the pinned fingerprint")
    });
    assert!(stale.log().contains(&new), "{}", stale.log());
    assert_eq!(setup.last_heartbeat("stale"), stale_before);
}

/// Replacing the session key (`data/session.key`) invalidates every session; agents open new
/// ones by signing a challenge with their key, without the bootstrap token (deleted here).
#[test]
fn a_new_session_key_costs_agents_only_a_signed_challenge() {
    let setup = Setup::new();
    let controller = setup.controller("controller-1");
    let group = setup.root.join("group.yaml");
    std::fs::write(
        &group,
        "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: { name: all }\n\
         spec: { selector: {}, packages: [], agent: { heartbeatSeconds: 5 } }\n",
    )
    .unwrap();
    let applied = setup.tcadm(&["apply", "-f", group.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", text(&applied));
    let pin = ca_hash(&setup.data.join("pki/ca.crt"));
    let token = setup.root.join("kiosk.token");
    std::fs::copy(setup.data.join("bootstrap.token"), &token).unwrap();
    let agent = setup.agent_with_token("kiosk", &pin, &token);
    setup.wait("the agent heartbeats", &[&agent], || {
        setup.last_heartbeat("kiosk").is_some()
    });
    std::fs::remove_file(&token).unwrap();

    controller.stop();
    let key = setup.data.join("session.key");
    let old_key = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let _controller = setup.controller("controller-2");
    assert_ne!(std::fs::read(&key).unwrap(), old_key, "a new session key");
    let before = setup.last_heartbeat("kiosk");
    setup.wait("the agent heartbeats on a new session", &[&agent], || {
        let now = setup.last_heartbeat("kiosk");
        now.is_some() && now != before
    });
    assert!(
        agent.log().contains("the controller refused the session"),
        "{}",
        agent.log()
    );
    let clients = setup.tcadm(&["get", "clients", "-o", "json"]);
    let list: Value = serde_json::from_slice(&clients.stdout).unwrap();
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "the same client"
    );
}
