//! The real `tcadm` binary against a real controller watching a manifest directory: diffs without
//! side effects, deferred prunes said and shown, sources listed and described, warnings when the
//! directory takes an object back, and rollouts that wait for the directory's pending sync.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tc_testkit::{PackageFile, TestController, build_zip, sha256_hex};

/// A controller (watching `root/fleet` when asked), its runtime, and a scratch directory `root`
/// that is the working directory of every `tcadm` run.
struct Setup {
    // Fields drop in order: the controller stops before its runtime goes away.
    controller: TestController,
    _runtime: tokio::runtime::Runtime,
    root: tempfile::TempDir,
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "tcadm failed: {self:#?}");
        &self.stdout
    }
}

const ALPHA: &str = "\
apiVersion: thinfleet.io/v1
kind: ClientGroup
metadata:
  name: alpha
spec:
  selector: {}
";

impl Setup {
    /// `files` are written under `fleet/` before the controller starts; with `watch`, the
    /// controller watches that directory with a debounce of `debounce`.
    fn start(files: &[(&str, &[u8])], watch: bool, debounce: Duration) -> Setup {
        let root = tempfile::tempdir().expect("scratch directory");
        let dir = root.path().join("fleet");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content) in files {
            write(&dir, name, content);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let controller = runtime.block_on(TestController::start_with(|config| {
            if watch {
                config.manifests_dir = Some(dir);
                config.watch_debounce = debounce;
            }
        }));
        Setup {
            controller,
            _runtime: runtime,
            root,
        }
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join("fleet")
    }

    fn tcadm(&self, args: &[&str]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_tcadm"))
            .args(args)
            .current_dir(self.root.path())
            .env_clear()
            .env("TCADM_SERVER", self.controller.url())
            .env("TCADM_TOKEN", self.controller.admin_token())
            .env("TCADM_CA_FILE", self.ca_file())
            .output()
            .expect("tcadm runs");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(self.tcadm(&all).ok()).expect("valid JSON")
    }

    /// The controller's CA certificate, written as a PEM file for `--certificate-authority`.
    fn ca_file(&self) -> PathBuf {
        let path = self.root.path().join("ca.crt");
        if !path.exists() {
            std::fs::write(
                &path,
                self.controller.ca_pem().expect("an HTTPS controller"),
            )
            .unwrap();
        }
        path
    }

    fn http(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = self
            .controller
            .tls_client_config(&[b"http/1.1"])
            .expect("an HTTPS controller");
        reqwest::blocking::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .build()
            .unwrap()
            .request(method, format!("{}{path}", self.controller.url()))
            .bearer_auth(self.controller.admin_token())
    }

    fn blob_stored(&self, sha256: &str) -> bool {
        self.http(reqwest::Method::HEAD, &format!("/blobs/sha256/{sha256}"))
            .send()
            .unwrap()
            .status()
            .is_success()
    }

    fn enroll(&self, machine: &str) {
        let response = self
            .http(reqwest::Method::POST, "/agent/v1/enroll")
            .header("content-type", "application/json")
            .body(
                tc_testkit::protocol::TestIdentity::new(machine)
                    .enroll_body(
                        self.controller.bootstrap_token(),
                        machine,
                        machine,
                        json!({}),
                    )
                    .to_string(),
            )
            .send()
            .unwrap();
        assert!(response.status().is_success(), "{:?}", response.text());
    }
}

fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

#[track_caller]
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn zip(content: &str) -> Vec<u8> {
    build_zip(&[PackageFile {
        path: "README",
        content: content.as_bytes(),
        mode: 0o644,
    }])
}

fn release(name_version: &str, path: &str) -> String {
    let (package, version) = name_version.rsplit_once('-').unwrap();
    format!(
        "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata:\n  name: {name_version}\nspec:\n  package: {package}\n  version: {version}\n  artifact:\n    path: {path}\n---\n"
    )
}

fn group(name: &str, packages: &[(&str, &str)]) -> String {
    let packages: String = packages
        .iter()
        .map(|(n, v)| format!("    - {{ name: {n}, version: \"{v}\" }}\n"))
        .collect();
    format!(
        "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: {name}\nspec:\n  selector: {{}}\n  packages:\n{packages}---\n"
    )
}

/// The bug: `tcadm diff` uploaded local zips to the controller (and `apply --dry-run` did too).
#[test]
fn diff_and_dry_runs_upload_nothing() {
    let setup = Setup::start(&[], false, Duration::ZERO);
    let kiosk = zip("kiosk 1.0.0");
    let sha = sha256_hex(&kiosk);
    write(&setup.dir(), "kiosk-1.0.0.zip", &kiosk);
    write(
        &setup.dir(),
        "releases.yaml",
        release("kiosk-1.0.0", "kiosk-1.0.0.zip"),
    );
    let diff = setup.tcadm(&["diff", "-f", "fleet"]);
    assert_eq!(diff.code, 1, "{diff:#?}");
    assert!(
        diff.stdout
            .contains("+++ packagerelease/kiosk-1.0.0 (applied)")
            && diff.stdout.contains(&format!("+    sha256: {sha}")),
        "{diff:#?}"
    );
    assert!(!setup.blob_stored(&sha), "diff uploaded the zip");
    let dry = setup.tcadm(&["apply", "-f", "fleet", "--dry-run"]);
    assert_eq!(dry.ok(), "packagerelease/kiosk-1.0.0 created (dry run)\n");
    assert!(!dry.stderr.contains("uploaded"), "{dry:#?}");
    assert!(!setup.blob_stored(&sha), "apply --dry-run uploaded the zip");
    assert_eq!(setup.tcadm(&["get", "pr", "-o", "name"]).ok(), "");
    // A real apply uploads it.
    setup.tcadm(&["apply", "-f", "fleet"]).ok();
    assert!(setup.blob_stored(&sha));
    assert_eq!(setup.tcadm(&["diff", "-f", "fleet"]).ok(), "");
}

/// The bug: a prune deferred because a client still ran the release was a note on standard error,
/// `diff --prune` did not show it, nothing showed it pending afterwards, and an API apply never
/// carried it out.
#[test]
fn deferred_prunes_are_diffed_said_described_and_carried_out() {
    let setup = Setup::start(&[], false, Duration::ZERO);
    write(&setup.dir(), "kiosk-1.0.0.zip", zip("kiosk 1.0.0"));
    write(
        &setup.dir(),
        "fleet.yaml",
        format!(
            "{}{}",
            release("kiosk-1.0.0", "kiosk-1.0.0.zip"),
            group("all", &[("kiosk", "=1.0.0")])
        ),
    );
    setup.tcadm(&["apply", "-f", "fleet"]).ok();
    setup.enroll("kiosk-a");
    eventually("kiosk 1.0.0 to be assigned", || {
        let client = setup.json(&["get", "clients", "kiosk-a"]);
        (client["status"]["desired"][0]["version"] == "1.0.0").then_some(())
    });
    // One commit drops the package from the group and deletes its release.
    write(&setup.dir(), "fleet.yaml", group("all", &[]));
    let diff = setup.tcadm(&["diff", "-f", "fleet", "--prune"]);
    assert_eq!(diff.code, 1, "{diff:#?}");
    assert!(
        diff.stdout.contains(
            "--- packagerelease/kiosk-1.0.0 (live)\n+++ packagerelease/kiosk-1.0.0 (applied)"
        ) && diff.stdout.contains("-  package: kiosk\n"),
        "{diff:#?}"
    );
    assert!(
        diff.stderr.contains("still assigned to 1 client(s)"),
        "{diff:#?}"
    );
    let applied = setup.tcadm(&["apply", "-f", "fleet", "--prune"]);
    assert_eq!(
        applied.ok(),
        "clientgroup/all configured\n\
         packagerelease/kiosk-1.0.0 prune deferred: still assigned to 1 client(s), pruned once none runs it\n"
    );
    let described = setup.tcadm(&["describe", "pr", "kiosk-1.0.0"]);
    assert!(
        described.ok().contains("PrunePending") && described.ok().contains("ReleaseInUse"),
        "{described:#?}"
    );
    eventually("the pending prune to be carried out", || {
        setup
            .tcadm(&["get", "pr", "-o", "name"])
            .ok()
            .is_empty()
            .then_some(())
    });
}

#[test]
fn sources_are_listed_described_and_their_events_followed() {
    let setup = Setup::start(
        &[("alpha.yaml", ALPHA.as_bytes())],
        true,
        Duration::from_millis(100),
    );
    let table = setup.tcadm(&["get", "sources"]);
    let lines: Vec<Vec<&str>> = table
        .ok()
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "NAME",
            "STATUS",
            "REVISION",
            "OBJECTS",
            "SKIPPED",
            "CONFLICTS",
            "DRIFT",
            "APPLIED"
        ]
    );
    assert_eq!(&lines[1][..2], ["fleet", "Synced"], "{table:#?}");
    assert!(lines[1][2].starts_with("sha256:"), "{table:#?}");
    assert_eq!(&lines[1][3..7], ["1", "0", "0", "0"], "{table:#?}");
    let one = setup.json(&["get", "sources", "fleet"]);
    assert_eq!(one["objects"][0]["name"], "alpha", "{one}");

    let described = setup.tcadm(&["describe", "source", "fleet"]);
    for expected in [
        "Name:",
        "fleet",
        "Status:",
        "Synced",
        "clientgroup/alpha",
        "alpha.yaml",
        "Events:",
    ] {
        assert!(
            described.ok().contains(expected),
            "{expected}: {described:#?}"
        );
    }
    let events = setup.tcadm(&["get", "events", "--for", "source/fleet"]);
    assert!(
        events.ok().contains("Synced") && events.ok().contains("clientgroup/alpha created"),
        "{events:#?}"
    );
    // A broken file: the table says so, and describe says where.
    write(
        &setup.dir(),
        "alpha.yaml",
        ALPHA.replace("selector: {}", "selector: {}\n  paused: sometimes"),
    );
    eventually("the source to fail", || {
        let table = setup.tcadm(&["get", "sources"]);
        table.ok().contains("Failed").then_some(())
    });
    let described = setup.tcadm(&["describe", "source", "fleet"]);
    assert!(
        described.ok().contains("alpha.yaml:7:3: spec.paused"),
        "{described:#?}"
    );
}

#[test]
fn deleting_or_forcing_a_directory_object_says_the_directory_takes_it_back() {
    let setup = Setup::start(
        &[("alpha.yaml", ALPHA.as_bytes())],
        true,
        Duration::from_millis(100),
    );
    let deleted = setup.tcadm(&["delete", "cg", "alpha"]);
    assert_eq!(deleted.ok(), "clientgroup/alpha deleted\n");
    assert!(
        deleted
            .stderr
            .starts_with("warning: clientgroup/alpha is defined in ")
            && deleted.stderr.contains("which restored it at once"),
        "{deleted:#?}"
    );
    assert_eq!(
        setup.tcadm(&["get", "cg", "-o", "name"]).ok(),
        "clientgroup/alpha\n"
    );

    write(
        setup.root.path(),
        "alpha.yaml",
        ALPHA.replace("{}", "{ matchLabels: { a: b } }"),
    );
    let refused = setup.tcadm(&["apply", "-f", "alpha.yaml"]);
    assert_eq!(refused.code, 3, "{refused:#?}");
    assert!(
        refused.stderr.contains("thinfleet.io/reconcile: disabled"),
        "{refused:#?}"
    );
    let forced = setup.tcadm(&["apply", "-f", "alpha.yaml", "--force"]);
    assert_eq!(forced.ok(), "clientgroup/alpha configured\n");
    assert!(
        forced
            .stderr
            .starts_with("warning: clientgroup/alpha is defined in ")
            && forced.stderr.contains("which takes it back"),
        "{forced:#?}"
    );
    eventually("the directory to take alpha back", || {
        let alpha = setup.json(&["get", "cg", "alpha"]);
        alpha["spec"]["selector"]["matchLabels"]
            .is_null()
            .then_some(())
    });
}

/// The bug: `tcadm rollout status` right after a change in the watched directory reported the
/// previous state as rolled out.
#[test]
fn rollout_status_waits_for_the_directorys_pending_sync() {
    let setup = Setup::start(
        &[("alpha.yaml", ALPHA.as_bytes())],
        true,
        // Long enough to look at the pending sync; the test waits for conditions, not for time.
        Duration::from_secs(3),
    );
    // The first apply of the directory is reconciled in the background: wait for it (a loaded
    // machine may not have written the group's status yet).
    eventually("alpha to be rolled out", || {
        let done = setup.tcadm(&["rollout", "status", "cg", "alpha"]);
        done.ok().contains("successfully rolled out").then_some(())
    });
    write(
        &setup.dir(),
        "alpha.yaml",
        ALPHA.replace("{}", "{ matchLabels: { a: b } }"),
    );
    eventually("the change to be seen", || {
        setup.json(&["get", "sources", "fleet"])["syncPending"]
            .as_bool()
            .filter(|p| *p)
    });
    let waiting = setup.tcadm(&["rollout", "status", "cg", "alpha"]);
    assert_eq!(
        waiting.ok(),
        "Waiting for clientgroup \"alpha\" rollout to finish: waiting for the watched directory `fleet` to apply its changes\n"
    );
    let watched = setup.tcadm(&[
        "rollout",
        "status",
        "cg",
        "alpha",
        "--watch",
        "--timeout",
        "30s",
    ]);
    assert!(
        watched.ok().starts_with(
            "Waiting for clientgroup \"alpha\" rollout to finish: waiting for the watched directory"
        ) && watched
            .ok()
            .ends_with("clientgroup \"alpha\" successfully rolled out\n"),
        "{watched:#?}"
    );
    let alpha = setup.json(&["get", "cg", "alpha"]);
    assert_eq!(alpha["spec"]["selector"]["matchLabels"]["a"], "b");
}
