//! GitOps end to end, with the real binaries as separate processes: `tc-controller --demo` (three
//! real `tc-agent` processes) watching a copy of the example fleet, and `tcadm`. Objects the
//! directory defines are deleted, forced, edited and taken out of and back into the directory's
//! hands through the API; the directory puts back what its files define, and the fleet's packages
//! are never removed on the way.
//!
//! It needs the `tc-agent` and `tcadm` binaries, which `cargo test --workspace` builds before
//! running any test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Controller {
    child: Child,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary(name: &str) -> PathBuf {
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

fn copy_dir(from: &Path, to: &Path) {
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

struct Fleet {
    root: PathBuf,
    server: String,
    token: String,
}

impl Fleet {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(binary("tcadm"))
            .current_dir(&self.root)
            // The field manager is the admin's login name.
            .env("USER", "alice")
            .args(["--server", &self.server, "--token", &self.token])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs tcadm, which must succeed; returns (stdout, stderr).
    fn tcadm(&self, args: &[&str]) -> (String, String) {
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

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.tcadm(&all).0).unwrap()
    }

    fn installed(&self, client: &str, package: &str, version: &str) -> bool {
        let clients = self.json(&["get", "clients"]);
        clients["items"].as_array().unwrap().iter().any(|c| {
            c["metadata"]["name"] == client
                && c["status"]["packages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| {
                        p["name"] == package && p["version"] == version && p["state"] == "Installed"
                    })
        })
    }

    fn events_after(&self, seq: u64) -> Vec<Value> {
        self.json(&["get", "events"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["seq"].as_u64().unwrap() > seq)
            .cloned()
            .collect()
    }

    fn last_seq(&self) -> u64 {
        self.json(&["get", "events"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["seq"].as_u64())
            .max()
            .unwrap_or(0)
    }

    fn back_office(&self) -> Value {
        self.json(&["get", "cg", "back-office"])
    }

    fn wait_until(&self, what: &str, limit: Duration, check: impl Fn(&Fleet) -> bool) {
        let deadline = Instant::now() + limit;
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

const BACK_OFFICE: &str = "\
apiVersion: thinfleet.io/v1
kind: ClientGroup
metadata:
  name: back-office
  labels: { owner: ops }
spec:
  selector:
    matchExpressions:
      - { key: role, operator: In, values: [back-office] }
  packages:
    - { name: kiosk-browser, version: \"~1.4\" }
  rollout:
    maxUnavailable: 3
";

fn managed_by_directory(group: &Value) -> bool {
    group["metadata"]["managedBy"]
        .as_str()
        .is_some_and(|m| m.starts_with("dir:"))
}

#[test]
fn the_directory_restores_deleted_forced_and_released_objects_and_no_package_is_removed() {
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
    let _controller = Controller { child };
    let token_path = root.join("data/admin.token");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&token_path).map_or(true, |t| t.trim().is_empty()) {
        assert!(
            Instant::now() < deadline,
            "the controller wrote no admin token"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let fleet = Fleet {
        root: root.clone(),
        server: format!("http://127.0.0.1:{port}"),
        token: std::fs::read_to_string(&token_path)
            .unwrap()
            .trim()
            .to_string(),
    };

    // The fleet converges on the example manifests.
    fleet.wait_until(
        "the fleet runs the example manifests",
        Duration::from_secs(60),
        |f| {
            f.installed("demo-office-1", "kiosk-browser", "1.4.2")
                && f.installed("demo-kiosk-1", "kiosk-browser", "1.4.2")
                && f.installed("demo-kiosk-2", "kiosk-browser", "1.4.2")
                && ["demo-kiosk-1", "demo-kiosk-2", "demo-office-1"]
                    .iter()
                    .all(|c| f.installed(c, "vpn-profile", "2.0.1"))
        },
    );
    let converged = fleet.last_seq();

    // 1. Delete: put back in the same transaction, with an event naming the file.
    let (out, err) = fleet.tcadm(&["delete", "cg", "back-office"]);
    assert_eq!(out, "clientgroup/back-office deleted\n");
    assert!(
        err.contains("groups.yaml of the watched directory `manifests`, which restored it at once"),
        "{err}"
    );
    assert!(managed_by_directory(&fleet.back_office()));
    let (events, _) = fleet.tcadm(&["get", "events", "--for", "clientgroup/back-office"]);
    assert!(
        events.contains("DriftCorrected") && events.contains("groups.yaml"),
        "{events}"
    );

    // 2. Force: taken back within the debounce, the other files still applying.
    std::fs::write(root.join("back-office.yaml"), BACK_OFFICE).unwrap();
    let (out, err) = fleet.tcadm(&["apply", "-f", "back-office.yaml", "--force"]);
    assert_eq!(out, "clientgroup/back-office configured\n");
    assert!(err.contains("which takes it back"), "{err}");
    fleet.wait_until(
        "the directory takes back-office back",
        Duration::from_secs(10),
        |f| {
            let group = f.back_office();
            managed_by_directory(&group) && group["metadata"]["labels"].is_null()
        },
    );

    // 3. Edit: the file changes; a rollout status after it waits for the change to be applied
    // and observed before it reports success.
    let groups = root.join("manifests/groups.yaml");
    let text = std::fs::read_to_string(&groups).unwrap();
    let edited = text.replacen(
        "      - { key: role, operator: In, values: [back-office] }\n  packages:\n    - { name: kiosk-browser, version: \"~1.4\" }\n  rollout:\n    maxUnavailable: 1",
        "      - { key: role, operator: In, values: [back-office] }\n  packages:\n    - { name: kiosk-browser, version: \"~1.4\" }\n  rollout:\n    maxUnavailable: 2",
        1,
    );
    assert_ne!(edited, text, "back-office not found in groups.yaml");
    std::fs::write(&groups, edited).unwrap();
    let (out, _) = fleet.tcadm(&[
        "rollout",
        "status",
        "cg",
        "back-office",
        "--watch",
        "--timeout",
        "30s",
    ]);
    assert!(out.ends_with("successfully rolled out\n"), "{out}");
    let group = fleet.back_office();
    assert_eq!(group["spec"]["rollout"]["maxUnavailable"], 2, "{group}");
    assert_eq!(
        group["status"]["observedGeneration"], group["metadata"]["generation"],
        "{group}"
    );

    // 4. Release: marked `thinfleet.io/reconcile: disabled`, the group stays as the API wrote it.
    let released = BACK_OFFICE.replace(
        "  labels: { owner: ops }\n",
        "  labels: { owner: ops }\n  annotations: { thinfleet.io/reconcile: disabled }\n",
    );
    std::fs::write(root.join("back-office.yaml"), &released).unwrap();
    let (_, err) = fleet.tcadm(&["apply", "-f", "back-office.yaml", "--force"]);
    assert!(err.contains("which leaves it alone"), "{err}");
    fleet.wait_until(
        "the source lists back-office as skipped",
        Duration::from_secs(10),
        |f| {
            let source = f.json(&["get", "sources", "manifests"]);
            source["skipped"]
                .as_array()
                .is_some_and(|s| s.iter().any(|o| o["name"] == "back-office"))
        },
    );
    let group = fleet.back_office();
    assert_eq!(group["metadata"]["managedBy"], "tcadm:alice", "{group}");
    assert_eq!(group["spec"]["rollout"]["maxUnavailable"], 3, "{group}");

    // 5. Reclaim: without the mark, the directory takes it back.
    std::fs::write(root.join("back-office.yaml"), BACK_OFFICE).unwrap();
    fleet.tcadm(&["apply", "-f", "back-office.yaml", "--force"]);
    fleet.wait_until(
        "the directory reclaims back-office",
        Duration::from_secs(10),
        |f| {
            let group = f.back_office();
            managed_by_directory(&group)
                && group["metadata"]["labels"].is_null()
                && group["spec"]["rollout"]["maxUnavailable"] == 2
        },
    );
    let source = fleet.json(&["get", "sources", "manifests"]);
    assert!(source["error"].is_null(), "{source}");
    assert!(source["driftCorrections"].as_u64() >= Some(3), "{source}");

    // No package was removed, nor assigned away, on the way.
    let history = fleet.events_after(converged);
    let client_changes: Vec<&Value> = history
        .iter()
        .filter(|e| {
            e["object"]["kind"] == "Client"
                && (e["reason"] == "Removed" || e["reason"] == "Assigned")
        })
        .collect();
    assert!(client_changes.is_empty(), "{client_changes:?}");
    assert!(
        ["demo-kiosk-1", "demo-kiosk-2", "demo-office-1"]
            .iter()
            .all(|c| fleet.installed(c, "kiosk-browser", "1.4.2")),
        "a client lost kiosk-browser"
    );
}
