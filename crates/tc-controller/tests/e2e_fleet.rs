//! The README's story, end to end, with the real binaries as separate processes: `tc-controller
//! --demo` (which starts three real `tc-agent` processes) watching a copy of the example fleet, and
//! `tcadm` reading the fleet. Enrol and converge; roll a new version out with `maxUnavailable`
//! respected (checked from the event history); roll back when a health check fails; remove a package
//! and prune its release.
//!
//! This is the slowest suite (about a minute). It needs the `tc-agent` and `tcadm` binaries, which
//! `cargo test --workspace` builds before running any test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    fn tcadm(&self, args: &[&str]) -> String {
        let output = Command::new(binary("tcadm"))
            .args(["--server", &self.server, "--token", &self.token])
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "tcadm {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.tcadm(&all)).unwrap()
    }

    /// (client, package) -> (version, state, activeVersion) for every reported package.
    fn reports(&self) -> Vec<(String, String, String, String, Option<String>)> {
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

    fn edit(&self, file: &str, from: &str, to: &str) {
        let path = self.root.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from} not in {file}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }

    fn wait_until(&self, what: &str, limit: Duration, check: impl Fn(&Fleet) -> bool) {
        let deadline = Instant::now() + limit;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}; clients: {:?}",
                self.reports()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn installed(&self, client: &str, package: &str, version: &str) -> bool {
        self.reports()
            .iter()
            .any(|(c, p, v, s, _)| c == client && p == package && v == version && s == "Installed")
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        self.json(&["get", "events"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["object"]["kind"] == kind)
            .cloned()
            .collect()
    }
}

#[test]
fn a_fleet_converges_rolls_out_rolls_back_and_prunes() {
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
    let mut controller = Controller { child };
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

    // 1. Three agents enrol and converge on the example fleet.
    fleet.wait_until(
        "three clients run everything they should",
        Duration::from_secs(60),
        |f| {
            f.installed("demo-kiosk-1", "kiosk-browser", "1.4.2")
                && f.installed("demo-kiosk-2", "kiosk-browser", "1.4.2")
                && f.installed("demo-office-1", "kiosk-browser", "1.4.2")
                && f.installed("demo-kiosk-1", "wallpaper", "1.0.0")
                && ["demo-kiosk-1", "demo-kiosk-2", "demo-office-1"]
                    .iter()
                    .all(|c| f.installed(c, "vpn-profile", "2.0.1"))
        },
    );
    let table = fleet.tcadm(&["get", "clients"]);
    assert_eq!(
        table.lines().filter(|l| l.contains(" Online ")).count(),
        3,
        "{table}"
    );

    // 2. Roll 1.5.0 out to front-desk (maxUnavailable 50% of 2 members = 1 at a time).
    fleet.edit(
        "manifests/groups.yaml",
        "{ name: kiosk-browser, version: \"~1.4\" }",
        "{ name: kiosk-browser, version: \"^1.5\" }",
    );
    fleet.wait_until("front-desk runs 1.5.0", Duration::from_secs(60), |f| {
        f.installed("demo-kiosk-1", "kiosk-browser", "1.5.0")
            && f.installed("demo-kiosk-2", "kiosk-browser", "1.5.0")
    });
    assert!(
        fleet.installed("demo-office-1", "kiosk-browser", "1.4.2"),
        "back-office must keep ~1.4"
    );
    // From the history: never two front-desk members between "assigned 1.5.0" and "installed 1.5.0".
    let mut changing = std::collections::BTreeSet::new();
    let mut most = 0;
    for event in fleet.events("Client") {
        let (client, message) = (
            event["object"]["name"].as_str().unwrap(),
            event["message"].as_str().unwrap(),
        );
        if !client.starts_with("demo-kiosk") {
            continue;
        }
        if event["reason"] == "Assigned" && message.contains("kiosk-browser 1.4.2 -> 1.5.0") {
            changing.insert(client.to_string());
        }
        if event["reason"] == "Installed" && message.contains("kiosk-browser 1.5.0") {
            changing.remove(client);
        }
        most = most.max(changing.len());
    }
    assert_eq!(most, 1, "front-desk had {most} members updating at once");
    let rollout = fleet.tcadm(&["rollout", "status", "clientgroup", "front-desk"]);
    assert!(rollout.contains("successfully rolled out"), "{rollout}");

    // 3. 1.6.0 fails its health check: the first member rolls back to 1.5.0 and reports Failed; the
    // rollout stops there, so the second member keeps 1.5.0.
    let broken = root.join("examples/packages/kiosk-browser-1.6.0");
    copy_dir(&root.join("examples/packages/kiosk-browser-1.5.0"), &broken);
    std::fs::write(broken.join("VERSION"), "1.6.0\n").unwrap();
    std::fs::write(
        broken.join("health.sh"),
        "#!/bin/sh\necho 'kiosk-browser 1.6.0 crashed at start-up' >&2\nexit 1\n",
    )
    .unwrap();
    let release = std::fs::read_to_string(root.join("manifests/releases.yaml")).unwrap();
    let start = release.find("apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata:\n  name: kiosk-browser-1.5.0").unwrap();
    let end = start + release[start..].find("---").unwrap();
    let new_release = release[start..end].replace("1.5.0", "1.6.0");
    std::fs::write(
        root.join("manifests/releases.yaml"),
        format!("{release}---\n{new_release}"),
    )
    .unwrap();
    fleet.edit(
        "manifests/groups.yaml",
        "{ name: kiosk-browser, version: \"^1.5\" }",
        "{ name: kiosk-browser, version: \"^1.6\" }",
    );
    fleet.wait_until(
        "one front-desk member reports 1.6.0 failed",
        Duration::from_secs(60),
        |f| {
            f.reports().iter().any(|(c, p, v, s, _)| {
                c.starts_with("demo-kiosk") && p == "kiosk-browser" && v == "1.6.0" && s == "Failed"
            })
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let reports = fleet.reports();
    let kiosk: Vec<_> = reports
        .iter()
        .filter(|(c, p, ..)| c.starts_with("demo-kiosk") && p == "kiosk-browser")
        .collect();
    let failed: Vec<_> = kiosk
        .iter()
        .filter(|(_, _, _, s, _)| s == "Failed")
        .collect();
    assert_eq!(failed.len(), 1, "{kiosk:?}");
    assert_eq!(
        failed[0].4.as_deref(),
        Some("1.5.0"),
        "the failed member must run 1.5.0 again: {kiosk:?}"
    );
    let other = kiosk.iter().find(|(c, ..)| *c != failed[0].0).unwrap();
    assert_eq!(
        (other.2.as_str(), other.3.as_str()),
        ("1.5.0", "Installed"),
        "{kiosk:?}"
    );
    let group = fleet.json(&["get", "clientgroups", "front-desk"]);
    let degraded = group["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("MembersFailed")),
        "{group}"
    );
    let history = fleet.events("Client");
    let failure = history
        .iter()
        .find(|e| e["reason"] == "InstallFailed")
        .unwrap();
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("crashed at start-up"),
        "{failure}"
    );

    // Pinning the good version again clears the failure.
    fleet.edit(
        "manifests/groups.yaml",
        "{ name: kiosk-browser, version: \"^1.6\" }",
        "{ name: kiosk-browser, version: \"=1.5.0\" }",
    );
    fleet.wait_until(
        "front-desk is back on 1.5.0",
        Duration::from_secs(60),
        |f| {
            f.installed("demo-kiosk-1", "kiosk-browser", "1.5.0")
                && f.installed("demo-kiosk-2", "kiosk-browser", "1.5.0")
        },
    );

    // 4. Drop the wallpaper from front-desk and its release from the repo: the agents remove it and
    // the release is pruned once nothing uses it.
    fleet.edit(
        "manifests/groups.yaml",
        "    - { name: wallpaper, version: \"^1\" }\n",
        "",
    );
    let release = std::fs::read_to_string(root.join("manifests/releases.yaml")).unwrap();
    let start = release.find("---\napiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata:\n  name: wallpaper-1.0.0").unwrap();
    let end = start
        + 4
        + release[start + 4..]
            .find("---")
            .map_or(release.len() - start - 4, |i| i);
    std::fs::write(
        root.join("manifests/releases.yaml"),
        format!("{}{}", &release[..start], &release[end..]),
    )
    .unwrap();
    fleet.wait_until(
        "no client reports the wallpaper",
        Duration::from_secs(60),
        |f| !f.reports().iter().any(|(_, p, ..)| p == "wallpaper"),
    );
    fleet.wait_until(
        "the wallpaper release is pruned",
        Duration::from_secs(30),
        |f| {
            !f.tcadm(&["get", "packagereleases", "-o", "name"])
                .contains("wallpaper")
        },
    );

    // Ctrl-C stops the controller and its agents.
    let status = Command::new("kill")
        .args(["-INT", &controller.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = controller.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    }
}
