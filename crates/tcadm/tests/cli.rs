//! The real `tcadm` binary against a real controller on `127.0.0.1:0`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tc_proto::{
    EnrollResponse, HeartbeatRequest, HeartbeatResponse, Inventory, NetworkInterface,
    PROTOCOL_VERSION, PackageReport, PackageState, Timestamp,
};
use tc_testkit::{PackageFile, TestController, build_zip, sha256_hex};

/// A controller on a loopback port, the runtime it runs on, and a scratch directory that is the
/// working directory of every `tcadm` run.
struct Fleet {
    // Fields drop in order: the controller stops before its runtime goes away.
    controller: TestController,
    _runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

/// What one run of `tcadm` did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts success and returns standard output.
    #[track_caller]
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "tcadm failed: {self:#?}");
        &self.stdout
    }

    /// Asserts the exit code and that standard error is exactly one `error:` line; returns it.
    #[track_caller]
    fn fails(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        assert!(
            self.stderr.starts_with("error: ") && self.stderr.lines().count() == 1,
            "stderr is not one error line: {self:#?}"
        );
        self.stderr.trim_end()
    }

    /// Asserts the exit code and that standard error ends with its only `error:` line, after
    /// progress or upload notes; returns that line.
    #[track_caller]
    fn fails_after_notes(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        let errors = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .count();
        let last = self.stderr.lines().last().unwrap_or("");
        assert!(
            errors == 1 && last.starts_with("error: "),
            "stderr does not end with one error line: {self:#?}"
        );
        last
    }
}

/// A simulated agent: its client name and token.
struct Agent {
    name: String,
    token: String,
}

const GROUPS: &str = "\
apiVersion: thinfleet.io/v1
kind: ClientGroup
metadata:
  name: front-desk
  labels:
    tier: gold
spec:
  selector:
    matchLabels:
      site: berlin
  packages:
    - name: kiosk
      version: \"^1.0\"
---
apiVersion: thinfleet.io/v1
kind: ClientGroup
metadata:
  name: back-office
spec:
  selector:
    matchLabels:
      site: nowhere
";

impl Fleet {
    fn start() -> Fleet {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let controller = runtime.block_on(TestController::start());
        Fleet {
            controller,
            _runtime: runtime,
            dir: tempfile::tempdir().expect("scratch directory"),
        }
    }

    /// A fleet whose controller also applies the manifests in `watched` (as `dir:<path>`).
    fn start_watching(watched: &std::path::Path) -> Fleet {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let watched = watched.to_path_buf();
        let controller = runtime.block_on(TestController::start_with(move |config| {
            config.manifests_dir = Some(watched)
        }));
        Fleet {
            controller,
            _runtime: runtime,
            dir: tempfile::tempdir().expect("scratch directory"),
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, content: impl AsRef<[u8]>) {
        let path = self.path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// A `tcadm` command with the controller in its environment and nothing else.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tcadm"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("TCADM_SERVER", self.controller.url())
            .env("TCADM_TOKEN", self.controller.admin_token())
            .env(
                "TCADM_CA_CERT_HASH",
                self.controller.ca_cert_hash().expect("an HTTPS controller"),
            );
        command
    }

    fn run(&self, command: &mut Command, stdin: &str) -> Run {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcadm runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    fn tcadm(&self, args: &[&str]) -> Run {
        self.run(&mut self.command(args), "")
    }

    fn tcadm_stdin(&self, args: &[&str], stdin: &str) -> Run {
        self.run(&mut self.command(args), stdin)
    }

    fn http(&self) -> reqwest::blocking::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = self
            .controller
            .tls_client_config(&[b"http/1.1"])
            .expect("an HTTPS controller");
        reqwest::blocking::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .build()
            .unwrap()
    }

    fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &impl serde::Serialize,
    ) -> T {
        let mut request = self
            .http()
            .post(format!("{}{path}", self.controller.url()))
            .header("content-type", "application/json")
            .body(serde_json::to_string(body).unwrap());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().expect("controller answers");
        let status = response.status();
        let text = response.text().unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Enrols a simulated agent with `labels` and sends one heartbeat with an inventory.
    fn enroll(&self, machine: &str, labels: &[(&str, &str)], bootstrap: &str) -> Agent {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        let identity = tc_testkit::protocol::TestIdentity::new(machine);
        let response: EnrollResponse = self.post(
            "/agent/v1/enroll",
            None,
            &identity.enroll_body(bootstrap, machine, machine, Value::Object(labels)),
        );
        let agent = Agent {
            name: response.client_name,
            token: response.session.expect("a session for a new client").token,
        };
        self.heartbeat(&agent, 0, vec![]);
        agent
    }

    fn heartbeat(
        &self,
        agent: &Agent,
        observed_revision: u64,
        packages: Vec<PackageReport>,
    ) -> HeartbeatResponse {
        let inventory = Inventory {
            hostname: agent.name.clone(),
            os_name: "Debian GNU/Linux".into(),
            os_version: "12".into(),
            arch: "x86_64".into(),
            network_interfaces: vec![NetworkInterface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                addresses: vec!["192.0.2.10/24".into()],
            }],
            agent_version: "0.1.0".into(),
            ..Default::default()
        };
        self.post(
            "/agent/v1/heartbeat",
            Some(&agent.token),
            &HeartbeatRequest {
                protocol_version: PROTOCOL_VERSION,
                observed_revision,
                packages,
                inventory_hash: tc_proto::inventory_hash(&inventory),
                inventory: Some(inventory),
                load: Default::default(),
                decommissioned: false,
            },
        )
    }

    /// `get ... -o json` parsed.
    fn get_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(self.tcadm(&all).ok()).expect("valid JSON")
    }
}

/// Polls `check` every 100 ms until it returns `Some`, for at most 30 seconds.
#[track_caller]
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Table lines split into cells on whitespace, with ages (`0s`, `12s`, `3m`) replaced by `<age>`,
/// so the comparison does not depend on the clock.
fn cells(table: &str) -> Vec<Vec<String>> {
    let is_age = |cell: &str| {
        let digits = cell.trim_end_matches(['s', 'm', 'h', 'd']);
        !digits.is_empty()
            && digits.len() < cell.len()
            && digits.bytes().all(|b| b.is_ascii_digit())
    };
    table
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|cell| {
                    if is_age(cell) {
                        "<age>".into()
                    } else {
                        cell.to_string()
                    }
                })
                .collect()
        })
        .collect()
}

fn rows(lines: &[&str]) -> Vec<Vec<String>> {
    lines
        .iter()
        .map(|line| line.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn test_zip(content: &str) -> Vec<u8> {
    build_zip(&[PackageFile {
        path: "README",
        content: content.as_bytes(),
        mode: 0o644,
    }])
}

#[test]
fn apply_reports_created_unchanged_configured_and_pruned() {
    let fleet = Fleet::start();
    fleet.write("fleet/groups.yaml", GROUPS);
    assert_eq!(
        fleet.tcadm(&["apply", "-f", "fleet"]).ok(),
        "clientgroup/front-desk created\nclientgroup/back-office created\n"
    );
    assert_eq!(
        fleet.tcadm(&["apply", "-f", "fleet"]).ok(),
        "clientgroup/front-desk unchanged\nclientgroup/back-office unchanged\n"
    );
    fleet.write(
        "fleet/groups.yaml",
        GROUPS.replace(
            "      site: nowhere\n",
            "      site: nowhere\n  priority: 5\n",
        ),
    );
    assert_eq!(
        fleet.tcadm(&["apply", "-f", "fleet/groups.yaml"]).ok(),
        "clientgroup/front-desk unchanged\nclientgroup/back-office configured\n"
    );
    let front_desk_only = &GROUPS[..GROUPS.find("---").unwrap()];
    fleet.write("fleet/groups.yaml", front_desk_only);
    assert_eq!(
        fleet
            .tcadm(&["apply", "-f", "fleet", "--prune", "--dry-run"])
            .ok(),
        "clientgroup/front-desk unchanged (dry run)\nclientgroup/back-office pruned (dry run)\n"
    );
    assert_eq!(
        fleet.tcadm(&["get", "cg", "-o", "name"]).ok(),
        "clientgroup/back-office\nclientgroup/front-desk\n"
    );
    assert_eq!(
        fleet.tcadm(&["apply", "-f", "fleet", "--prune"]).ok(),
        "clientgroup/front-desk unchanged\nclientgroup/back-office pruned\n"
    );
    assert_eq!(
        fleet.tcadm(&["get", "cg", "-o", "name"]).ok(),
        "clientgroup/front-desk\n"
    );
}

#[test]
fn dry_run_writes_nothing() {
    let fleet = Fleet::start();
    assert_eq!(
        fleet
            .tcadm_stdin(&["apply", "-f", "-", "--dry-run"], GROUPS)
            .ok(),
        "clientgroup/front-desk created (dry run)\nclientgroup/back-office created (dry run)\n"
    );
    let run = fleet.tcadm(&["get", "clientgroups"]);
    assert_eq!(run.ok(), "");
    assert_eq!(run.stderr, "No resources found.\n");
}

#[test]
fn directories_take_manifest_extensions_and_recurse_with_r() {
    let fleet = Fleet::start();
    let (front, back) = GROUPS.split_once("---\n").unwrap();
    fleet.write("fleet/front.yml", front);
    fleet.write("fleet/nested/back.yaml", back);
    fleet.write("fleet/notes.txt", "not a manifest");
    assert_eq!(
        fleet.tcadm(&["apply", "-f", "fleet"]).ok(),
        "clientgroup/front-desk created\n"
    );
    assert_eq!(
        fleet.tcadm(&["apply", "-f", "fleet", "-R"]).ok(),
        "clientgroup/front-desk unchanged\nclientgroup/back-office created\n"
    );
}

#[test]
fn diff_exits_0_without_changes_1_with_changes_and_2_for_bad_manifests() {
    let fleet = Fleet::start();
    fleet.write("groups.yaml", GROUPS);
    let created = fleet.tcadm(&["diff", "-f", "groups.yaml"]);
    assert_eq!(created.code, 1, "{created:#?}");
    assert!(created.stdout.starts_with(
        "--- clientgroup/front-desk (live)\n+++ clientgroup/front-desk (applied)\n@@ "
    ));
    assert!(
        created
            .stdout
            .contains("--- clientgroup/back-office (live)\n")
    );

    fleet.tcadm(&["apply", "-f", "groups.yaml"]).ok();
    assert_eq!(fleet.tcadm(&["diff", "-f", "groups.yaml"]).ok(), "");

    fleet.write("groups.yaml", GROUPS.replace("site: berlin", "site: paris"));
    let changed = fleet.tcadm(&["diff", "-f", "groups.yaml"]);
    assert_eq!(changed.code, 1, "{changed:#?}");
    let lines: Vec<&str> = changed.stdout.lines().collect();
    assert_eq!(lines[0], "--- clientgroup/front-desk (live)");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('-') && l.ends_with("site: berlin")),
        "{changed:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('+') && l.ends_with("site: paris")),
        "{changed:#?}"
    );
    assert!(!changed.stdout.contains("back-office"), "{changed:#?}");
    // The diff changed nothing.
    assert_eq!(
        fleet.get_json(&["cg", "front-desk"])["spec"]["selector"]["matchLabels"]["site"],
        "berlin"
    );

    fleet.write(
        "groups.yaml",
        GROUPS.replace("  packages:", "  colour: red\n  packages:"),
    );
    let error = fleet
        .tcadm(&["diff", "-f", "groups.yaml"])
        .fails(2)
        .to_string();
    assert!(
        error.starts_with("error: groups.yaml:11:3: spec.colour: unknown field `colour`"),
        "{error}"
    );
}

#[test]
fn bad_manifests_name_file_line_and_column_and_apply_nothing() {
    let fleet = Fleet::start();
    let (front, back) = GROUPS.split_once("---\n").unwrap();
    fleet.write("fleet/a-good.yaml", front);
    fleet.write(
        "fleet/b-bad.yaml",
        back.replace("spec:\n", "spec:\n  priority: high\n"),
    );
    let error = fleet.tcadm(&["apply", "-f", "fleet"]).fails(2).to_string();
    assert!(
        error.starts_with("error: fleet/b-bad.yaml:6:3: spec.priority: "),
        "{error}"
    );
    fleet.write("fleet/b-bad.yaml", "apiVersion: thinfleet.io/v1\nkind: [\n");
    let error = fleet.tcadm(&["apply", "-f", "fleet"]).fails(2).to_string();
    assert!(
        error.starts_with("error: fleet/b-bad.yaml:3:1: YAML syntax error"),
        "{error}"
    );
    assert_eq!(fleet.tcadm(&["get", "cg", "-o", "name"]).ok(), "");

    let error = fleet
        .tcadm_stdin(
            &["apply", "-f", "-"],
            "apiVersion: thinfleet.io/v1\nkind: Pod\n",
        )
        .fails(2)
        .to_string();
    assert!(
        error.starts_with("error: -:2:1: kind: unknown kind `Pod`"),
        "{error}"
    );

    let error = fleet
        .tcadm(&["apply", "-f", "missing.yaml"])
        .fails(2)
        .to_string();
    assert!(
        error.starts_with("error: cannot read missing.yaml: "),
        "{error}"
    );

    fleet.write("empty/.keep.yaml", "# nothing here\n");
    let error = fleet.tcadm(&["apply", "-f", "empty"]).fails(2).to_string();
    assert_eq!(error, "error: no objects found in empty");
}

#[test]
fn refused_tokens_and_unreachable_servers_are_exit_3_with_one_line() {
    let fleet = Fleet::start();
    let error = fleet
        .run(
            fleet
                .command(&["get", "clients"])
                .env("TCADM_TOKEN", "wrong"),
            "",
        )
        .fails(3)
        .to_string();
    assert!(
        error.starts_with(&format!(
            "error: the controller at {} refused the token",
            fleet.controller.url()
        )),
        "{error}"
    );
    assert!(error.ends_with("check --token or TCADM_TOKEN"), "{error}");

    let error = fleet
        .run(
            fleet.command(&["get", "clients"]).env_remove("TCADM_TOKEN"),
            "",
        )
        .fails(3)
        .to_string();
    assert!(error.contains("no token given"), "{error}");

    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let server = format!("http://127.0.0.1:{port}");
    let error = fleet
        .run(
            fleet.command(&["get", "cg"]).args(["--server", &server]),
            "",
        )
        .fails(3)
        .to_string();
    assert!(
        error.starts_with(&format!("error: cannot reach the controller at {server}: ")),
        "{error}"
    );
}

#[test]
fn json_output_parses_back() {
    let fleet = Fleet::start();
    fleet.tcadm_stdin(&["apply", "-f", "-"], GROUPS).ok();
    let list = fleet.get_json(&["clientgroups"]);
    assert_eq!(list["apiVersion"], "thinfleet.io/v1");
    assert_eq!(list["kind"], "ClientGroupList");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["back-office", "front-desk"]);
    let group: tc_api::ClientGroup =
        serde_json::from_value(fleet.get_json(&["cg", "front-desk"])).unwrap();
    assert_eq!(group.metadata.labels["tier"], "gold");
    assert_eq!(group.spec.packages[0].version, "^1.0");
}

#[test]
fn yaml_output_applies_back_unchanged() {
    let fleet = Fleet::start();
    fleet.tcadm_stdin(&["apply", "-f", "-"], GROUPS).ok();
    // Wait for a status, so the round trip carries one.
    eventually("a group status", || {
        fleet.get_json(&["cg", "front-desk"])["status"]["observedGeneration"]
            .as_u64()
            .filter(|g| *g > 0)
    });
    let one = fleet.tcadm(&["get", "cg", "front-desk", "-o", "yaml"]);
    assert!(
        one.ok()
            .starts_with("apiVersion: thinfleet.io/v1\nkind: ClientGroup\n"),
        "{one:#?}"
    );
    assert_eq!(
        fleet.tcadm_stdin(&["apply", "-f", "-"], &one.stdout).ok(),
        "clientgroup/front-desk unchanged\n"
    );
    let all = fleet.tcadm(&["get", "cg", "-o", "yaml"]);
    assert!(all.ok().contains("kind: ClientGroupList\n"), "{all:#?}");
    assert_eq!(
        fleet.tcadm_stdin(&["apply", "-f", "-"], &all.stdout).ok(),
        "clientgroup/back-office unchanged\nclientgroup/front-desk unchanged\n"
    );
}

#[test]
fn every_manifest_error_is_printed_on_its_own_line() {
    let fleet = Fleet::start();
    let (front, back) = GROUPS.split_once("---\n").unwrap();
    fleet.write(
        "fleet/a.yaml",
        front
            .replace("name: front-desk", "name: Front-Desk")
            .replace("  packages:", "  colour: red\n  packages:"),
    );
    fleet.write(
        "fleet/b.yaml",
        back.replace("spec:\n", "spec:\n  priority: high\n  paused: 3\n"),
    );
    let run = fleet.tcadm(&["apply", "-f", "fleet"]);
    assert_eq!(run.code, 2, "{run:#?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    let expected = [
        "error: fleet/a.yaml:4:3: metadata.name: `Front-Desk` is not a valid name",
        "error: fleet/a.yaml:11:3: spec.colour: unknown field `colour`",
        "error: fleet/b.yaml:6:3: spec.priority: invalid type",
        "error: fleet/b.yaml:7:3: spec.paused: invalid type",
    ];
    assert_eq!(lines.len(), expected.len(), "{run:#?}");
    for (line, start) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(start),
            "`{line}` does not start with `{start}`"
        );
    }
    assert_eq!(fleet.tcadm(&["get", "cg", "-o", "name"]).ok(), "");
}

#[test]
fn releases_printed_by_get_apply_back_unchanged_wherever_their_zip_was() {
    let fleet = Fleet::start();
    let zip = test_zip("kiosk 1.0.0");
    fleet.write("zips/kiosk-1.0.0.zip", &zip);
    fleet.write(
        "fleet/releases.yaml",
        "\
apiVersion: thinfleet.io/v1
kind: PackageRelease
metadata:
  name: kiosk-1.0.0
spec:
  package: kiosk
  version: 1.0.0
  artifact:
    path: ../zips/kiosk-1.0.0.zip
",
    );
    fleet.write("fleet/groups.yaml", GROUPS);
    fleet.tcadm(&["apply", "-f", "fleet"]).ok();
    let before = fleet.get_json(&["pr", "kiosk-1.0.0"]);
    // Applied back from a directory where `../zips/kiosk-1.0.0.zip` does not exist.
    std::fs::create_dir_all(fleet.path("elsewhere")).unwrap();
    let apply_elsewhere = |args: &[&str], stdin: &str| {
        fleet.run(
            fleet.command(args).current_dir(fleet.path("elsewhere")),
            stdin,
        )
    };
    for args in [
        &["get", "pr", "kiosk-1.0.0", "-o", "yaml"][..],
        &["get", "pr", "kiosk-1.0.0", "-o", "json"],
        &["get", "pr", "-o", "yaml"],
        &["get", "pr", "-o", "json"],
    ] {
        let printed = fleet.tcadm(args);
        let applied = apply_elsewhere(&["apply", "-f", "-"], printed.ok());
        assert_eq!(
            applied.ok(),
            "packagerelease/kiosk-1.0.0 unchanged\n",
            "{args:?}"
        );
        assert_eq!(applied.stderr, "", "nothing uploaded: {applied:#?}");
    }
    for args in [
        &["get", "cg", "front-desk", "-o", "json"][..],
        &["get", "cg", "-o", "json"],
    ] {
        let printed = fleet.tcadm(args);
        let applied = apply_elsewhere(&["apply", "-f", "-"], printed.ok());
        assert!(
            applied
                .ok()
                .lines()
                .all(|line| line.ends_with(" unchanged")),
            "{args:?}: {applied:#?}"
        );
    }
    let after = fleet.get_json(&["pr", "kiosk-1.0.0"]);
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    assert_eq!(after["spec"], before["spec"]);
}

#[test]
fn releases_of_the_watched_directory_print_and_apply_back_with_their_recorded_digest() {
    let watched = tempfile::tempdir().unwrap();
    let zip = test_zip("kiosk 2.0.0");
    let sha = sha256_hex(&zip);
    std::fs::create_dir_all(watched.path().join("packages")).unwrap();
    std::fs::create_dir_all(watched.path().join("releases")).unwrap();
    std::fs::write(watched.path().join("packages/kiosk-2.0.0.zip"), &zip).unwrap();
    std::fs::write(
        watched.path().join("releases/kiosk.yaml"),
        "\
apiVersion: thinfleet.io/v1
kind: PackageRelease
metadata:
  name: kiosk-2.0.0
spec:
  package: kiosk
  version: 2.0.0
  artifact:
    path: ../packages/kiosk-2.0.0.zip
",
    )
    .unwrap();
    let fleet = Fleet::start_watching(watched.path());
    // Applied back from a directory where `../packages/kiosk-2.0.0.zip` does not exist.
    std::fs::create_dir_all(fleet.path("elsewhere")).unwrap();
    let apply_elsewhere = |args: &[&str], stdin: &str| {
        fleet.run(
            fleet.command(args).current_dir(fleet.path("elsewhere")),
            stdin,
        )
    };
    let printed = eventually("the watched release", || {
        let run = fleet.tcadm(&["get", "pr", "kiosk-2.0.0", "-o", "yaml"]);
        (run.code == 0 && run.stdout.contains(&sha)).then_some(run.stdout)
    });
    assert!(
        !printed.contains(&format!("sha256: {sha}\n    path")),
        "{printed}"
    );
    // The release belongs to the directory: applying it back is refused for that reason, not
    // because its zip is not here.
    let refused = apply_elsewhere(&["apply", "-f", "-"], &printed);
    let error = refused.fails(3);
    assert!(error.contains("is managed by `dir:"), "{error}");
    // Forced, it applies with the digest the controller recorded (the zip is not needed here);
    // the directory, which defines it, takes it back, and says so.
    let forced = apply_elsewhere(&["apply", "-f", "-", "--force"], &printed);
    assert_eq!(forced.ok(), "packagerelease/kiosk-2.0.0 configured\n");
    assert!(forced.stderr.contains("watched directory"), "{forced:#?}");
    let release = eventually("the directory to take the release back", || {
        let release = fleet.get_json(&["pr", "kiosk-2.0.0"]);
        release["metadata"]["managedBy"]
            .as_str()
            .is_some_and(|m| m.starts_with("dir:"))
            .then_some(release)
    });
    assert_eq!(
        release["spec"]["artifact"]["path"],
        "../packages/kiosk-2.0.0.zip"
    );
    assert_eq!(release["status"]["artifact"]["sha256"], sha.as_str());
}

#[test]
fn errors_in_a_list_document_name_the_line_of_the_item() {
    let fleet = Fleet::start();
    fleet.tcadm_stdin(&["apply", "-f", "-"], GROUPS).ok();
    let list = fleet.tcadm(&["get", "cg", "-o", "yaml"]).ok().to_string();
    // The second item (front-desk) gets a bad priority.
    let at = list.rfind("priority: 0").expect("priorities are printed");
    let bad = format!("{}priority: high{}", &list[..at], &list[at + 11..]);
    let line = list[..at].matches('\n').count() + 1;
    let column = at - list[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    let error = fleet
        .tcadm_stdin(&["apply", "-f", "-"], &bad)
        .fails(2)
        .to_string();
    assert!(
        error.starts_with(&format!(
            "error: -:{line}:{column}: items[1].spec.priority: invalid type"
        )),
        "{error}"
    );
}

#[test]
fn a_closed_standard_output_ends_every_command_quietly() {
    let fleet = Fleet::start();
    let groups: String = (0..300)
        .map(|i| {
            format!(
                "---\napiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: {{ name: group-{i:03} }}\nspec: {{ selector: {{ matchLabels: {{ site: s{i} }} }} }}\n"
            )
        })
        .collect();
    fleet.write("groups.yaml", &groups);
    fleet.tcadm(&["apply", "-f", "groups.yaml"]).ok();
    for args in [
        &["completion", "zsh"][..],
        &["completion", "bash"],
        &["completion", "fish"],
        &["get", "cg"],
        &["get", "cg", "-o", "yaml"],
        &["version"],
        &["describe", "cg", "group-001"],
        &["apply", "-f", "groups.yaml"],
    ] {
        // A pipe whose reading end is closed before tcadm starts: its first write fails.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = fleet
            .command(args)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            (output.status.code(), stderr.as_ref()),
            (Some(0), ""),
            "tcadm {args:?}"
        );
    }
}

#[test]
fn each_credential_is_a_field_manager_of_its_own() {
    let fleet = Fleet::start();
    let (front, back) = GROUPS.split_once("---\n").unwrap();
    fleet.write("alice.yaml", front);
    fleet.write("bob.yaml", back);
    let credential = |name: &str| {
        fleet
            .tcadm(&["credential", "create", name, "--role", "admin"])
            .ok()
            .trim()
            .to_string()
    };
    let (alice, bob) = (credential("alice"), credential("bob"));
    let as_credential =
        |token: &str, args: &[&str]| fleet.run(fleet.command(args).env("TCADM_TOKEN", token), "");
    assert_eq!(
        as_credential(&alice, &["apply", "-f", "alice.yaml", "--prune"]).ok(),
        "clientgroup/front-desk created\n"
    );
    // Bob's apply with --prune leaves Alice's group alone.
    assert_eq!(
        as_credential(&bob, &["apply", "-f", "bob.yaml", "--prune"]).ok(),
        "clientgroup/back-office created\n"
    );
    assert_eq!(
        fleet.tcadm(&["get", "cg", "-o", "name"]).ok(),
        "clientgroup/back-office\nclientgroup/front-desk\n"
    );
    let group = fleet.get_json(&["cg", "front-desk"]);
    assert_eq!(group["metadata"]["managedBy"], "credential:alice");
    assert_eq!(
        fleet.get_json(&["cg", "back-office"])["metadata"]["managedBy"],
        "credential:bob"
    );
    // Each may prune their own objects, and only those.
    fleet.write(
        "alice.yaml",
        front.replace("name: front-desk", "name: reception"),
    );
    assert_eq!(
        as_credential(&alice, &["apply", "-f", "alice.yaml", "--prune"]).ok(),
        "clientgroup/reception created\nclientgroup/front-desk pruned\n"
    );
    assert_eq!(
        fleet.tcadm(&["get", "cg", "-o", "name"]).ok(),
        "clientgroup/back-office\nclientgroup/reception\n"
    );
    // Bob cannot change Alice's group without taking it over.
    let error = as_credential(&bob, &["apply", "-f", "alice.yaml"])
        .fails(3)
        .to_string();
    assert!(
        error.contains("is managed by `credential:alice`"),
        "{error}"
    );
    // The break-glass token's applies are managed by `admin`; --field-manager names another.
    fleet.write(
        "carol.yaml",
        front.replace("name: front-desk", "name: carol"),
    );
    fleet.tcadm(&["apply", "-f", "carol.yaml"]).ok();
    assert_eq!(
        fleet.get_json(&["cg", "carol"])["metadata"]["managedBy"],
        "admin"
    );
    fleet.write("dave.yaml", front.replace("name: front-desk", "name: dave"));
    fleet
        .tcadm(&["apply", "-f", "dave.yaml", "--field-manager", "ci"])
        .ok();
    assert_eq!(
        fleet.get_json(&["cg", "dave"])["metadata"]["managedBy"],
        "ci"
    );
}

#[test]
fn selectors_filter_groups_and_tables_are_aligned() {
    let fleet = Fleet::start();
    fleet.tcadm_stdin(&["apply", "-f", "-"], GROUPS).ok();
    assert_eq!(
        fleet
            .tcadm(&["get", "cg", "-l", "tier=gold", "-o", "name"])
            .ok(),
        "clientgroup/front-desk\n"
    );
    assert_eq!(
        fleet
            .tcadm(&["get", "cg", "-l", "!tier", "-o", "name"])
            .ok(),
        "clientgroup/back-office\n"
    );
    let table = fleet.tcadm(&["get", "cg"]);
    assert_eq!(
        cells(table.ok()),
        rows(&[
            "NAME MEMBERS UP-TO-DATE READY FAILED OFFLINE PACKAGES AGE",
            "back-office 0 0 0 0 0 <none> <age>",
            "front-desk 0 0 0 0 0 kiosk@^1.0(unresolved) <age>",
        ])
    );
    let header = table.stdout.lines().next().unwrap();
    assert!(
        header.starts_with("NAME          MEMBERS   UP-TO-DATE   READY"),
        "{header}"
    );

    let error = fleet
        .tcadm(&["get", "cg", "-l", "tier in (gold"])
        .fails(2)
        .to_string();
    assert!(error.contains("invalid selector"), "{error}");
    assert_eq!(fleet.tcadm(&["get", "pods"]).code, 2);
}

#[test]
fn label_then_select_clients() {
    let fleet = Fleet::start();
    let bootstrap = fleet.controller.bootstrap_token().to_string();
    let berlin = fleet.enroll("kiosk-a", &[("site", "berlin")], &bootstrap);
    let paris = fleet.enroll("kiosk-b", &[("site", "paris")], &bootstrap);

    assert_eq!(
        fleet
            .tcadm(&["label", "client", &berlin.name, "rack=7", "floor=2"])
            .ok(),
        format!("client/{} labeled\n", berlin.name)
    );
    assert_eq!(
        fleet
            .tcadm(&["get", "clients", "-l", "rack=7", "-o", "name"])
            .ok(),
        format!("client/{}\n", berlin.name)
    );
    let table = fleet.tcadm(&["get", "clients", "-l", "site in (berlin,paris)"]);
    assert_eq!(
        cells(table.ok()),
        rows(&[
            "NAME PHASE LAST SEEN IP LABELS",
            &format!(
                "{} Online <age> 192.0.2.10 floor=2,rack=7,site=berlin",
                berlin.name
            ),
            &format!("{} Online <age> 192.0.2.10 site=paris", paris.name),
        ])
    );
    let wide = fleet.tcadm(&["get", "client", &paris.name, "-o", "wide"]);
    assert!(
        wide.ok()
            .contains("Debian GNU/Linux 12   x86_64   0.1.0   <none>"),
        "{wide:#?}"
    );

    fleet
        .tcadm(&["label", "client", &berlin.name, "rack-"])
        .ok();
    assert_eq!(
        fleet
            .tcadm(&["get", "clients", "-l", "rack=7", "-o", "name"])
            .ok(),
        ""
    );
    assert_eq!(
        fleet
            .tcadm(&["get", "clients", "-l", "floor=2", "-o", "name"])
            .ok(),
        format!("client/{}\n", berlin.name)
    );

    assert_eq!(
        fleet
            .tcadm(&["label", "client", &berlin.name, "Bad Key=1"])
            .code,
        2
    );
    assert_eq!(fleet.tcadm(&["label", "cg", "front-desk", "a=b"]).code, 2);
    let error = fleet
        .tcadm(&["label", "client", "nope", "a=b"])
        .fails(3)
        .to_string();
    assert!(error.contains("not found"), "{error}");

    let described = fleet.tcadm(&["describe", "client", &berlin.name]);
    for expected in [
        "Name:",
        "Phase:",
        "Online",
        "Inventory:",
        "192.0.2.10/24",
        "Events:",
    ] {
        assert!(
            described.ok().contains(expected),
            "{expected}: {described:#?}"
        );
    }
}

#[test]
fn push_then_apply_then_get_the_release() {
    let fleet = Fleet::start();
    let zip = test_zip("kiosk 1.2.0");
    let sha = sha256_hex(&zip);
    fleet.write("dist/kiosk-1.2.0.zip", &zip);
    let pushed = fleet.tcadm(&["push", "dist/kiosk-1.2.0.zip"]);
    let yaml = pushed.ok().to_string();
    assert!(
        yaml.starts_with(&format!(
            "# kiosk-1.2.0.zip: uploaded, sha256 {sha}, {} bytes.\n",
            zip.len()
        )),
        "{pushed:#?}"
    );
    assert!(yaml.contains("kind: PackageRelease\n"), "{yaml}");
    assert!(yaml.contains(&sha), "{yaml}");
    assert_eq!(
        fleet.tcadm_stdin(&["apply", "-f", "-"], &yaml).ok(),
        "packagerelease/kiosk-1.2.0 created\n"
    );
    let table = eventually("the release to be ready", || {
        let run = fleet.tcadm(&["get", "pr"]);
        run.ok().contains(" True ").then_some(run.stdout)
    });
    assert_eq!(
        cells(&table),
        rows(&[
            "NAME PACKAGE VERSION READY SIZE AGE",
            &format!("kiosk-1.2.0 kiosk 1.2.0 True {}B <age>", zip.len()),
        ])
    );
    let release = fleet.get_json(&["pr", "kiosk-1.2.0"]);
    assert_eq!(release["status"]["artifact"]["sha256"], sha.as_str());
    assert_eq!(release["status"]["artifact"]["size"], zip.len());

    let again = fleet.tcadm(&["push", "dist/kiosk-1.2.0.zip"]);
    assert!(
        again.ok().contains("already on the controller"),
        "{again:#?}"
    );
    let described = fleet.tcadm(&["describe", "pr", "kiosk-1.2.0"]);
    assert!(
        described.ok().contains(&format!("SHA256:  {sha}")),
        "{described:#?}"
    );

    fleet.write("dist/tool.zip", &zip);
    assert_eq!(fleet.tcadm(&["push", "dist/tool.zip"]).code, 2);
    assert!(
        fleet
            .tcadm(&[
                "push",
                "dist/tool.zip",
                "--package",
                "tool",
                "--version",
                "0.1.0"
            ])
            .ok()
            .contains("name: tool-0.1.0\n")
    );
}

#[test]
fn apply_uploads_local_zips_and_maps_server_errors_to_the_file() {
    let fleet = Fleet::start();
    let zip = test_zip("kiosk 1.0.0");
    let sha = sha256_hex(&zip);
    fleet.write("zips/kiosk-1.0.0.zip", &zip);
    let manifest = "\
apiVersion: thinfleet.io/v1
kind: PackageRelease
metadata:
  name: kiosk-1.0.0
spec:
  package: kiosk
  version: 1.0.0
  artifact:
    path: ../zips/kiosk-1.0.0.zip
";
    fleet.write("fleet/releases.yaml", manifest);
    let first = fleet.tcadm(&["apply", "-f", "fleet"]);
    assert_eq!(first.ok(), "packagerelease/kiosk-1.0.0 created\n");
    assert!(first.stderr.contains("uploaded"), "{first:#?}");
    let release = fleet.get_json(&["pr", "kiosk-1.0.0"]);
    assert_eq!(
        release["spec"]["artifact"]["path"],
        "../zips/kiosk-1.0.0.zip"
    );
    assert_eq!(release["spec"]["artifact"]["sha256"], sha.as_str());
    assert_eq!(release["status"]["artifact"]["size"], zip.len());

    let second = fleet.tcadm(&["apply", "-f", "fleet"]);
    assert_eq!(second.ok(), "packagerelease/kiosk-1.0.0 unchanged\n");
    assert_eq!(second.stderr, "");

    // Other bytes under the same version: the server refuses, and the position it reports is
    // one of the file's own lines.
    fleet.write("zips/kiosk-1.0.0.zip", test_zip("something else"));
    let error = fleet
        .tcadm(&["apply", "-f", "fleet"])
        .fails_after_notes(3)
        .to_string();
    assert!(error.contains("publish a new version"), "{error}");
    if let Some(rest) = error.strip_prefix("error: fleet/releases.yaml:") {
        let line: usize = rest.split(':').next().unwrap().parse().unwrap();
        assert!(line <= manifest.lines().count(), "{error}");
    }
}

#[test]
fn delete_by_name_and_by_file() {
    let fleet = Fleet::start();
    fleet.write("groups.yaml", GROUPS);
    fleet.tcadm(&["apply", "-f", "groups.yaml"]).ok();
    assert_eq!(
        fleet.tcadm(&["delete", "cg", "back-office"]).ok(),
        "clientgroup/back-office deleted\n"
    );
    let error = fleet
        .tcadm(&["delete", "cg", "back-office"])
        .fails(3)
        .to_string();
    assert!(error.contains("not found"), "{error}");
    assert_eq!(
        fleet
            .tcadm(&["delete", "cg", "back-office", "--ignore-not-found"])
            .ok(),
        ""
    );
    assert_eq!(
        fleet
            .tcadm(&["delete", "-f", "groups.yaml", "--ignore-not-found"])
            .ok(),
        "clientgroup/front-desk deleted\n"
    );
    assert_eq!(fleet.tcadm(&["get", "cg", "-o", "name"]).ok(), "");
}

#[test]
fn another_managers_objects_are_refused_unless_forced() {
    let fleet = Fleet::start();
    fleet.write("groups.yaml", GROUPS);
    fleet.tcadm(&["apply", "-f", "groups.yaml"]).ok();
    let error = fleet
        .tcadm(&["apply", "-f", "groups.yaml", "--field-manager", "ci"])
        .fails(3)
        .to_string();
    assert!(error.contains("front-desk"), "{error}");
    assert_eq!(
        fleet
            .tcadm(&[
                "apply",
                "-f",
                "groups.yaml",
                "--field-manager",
                "ci",
                "--force"
            ])
            .ok(),
        "clientgroup/front-desk configured\nclientgroup/back-office configured\n"
    );
}

/// Publishes kiosk 1.0.0 and the groups, enrols one member of front-desk, and returns it with the
/// desired revision it was assigned.
fn fleet_with_one_member() -> (Fleet, Agent, u64) {
    let fleet = Fleet::start();
    fleet.write("dist/kiosk-1.0.0.zip", test_zip("kiosk"));
    let release = fleet
        .tcadm(&["push", "dist/kiosk-1.0.0.zip"])
        .ok()
        .to_string();
    fleet.tcadm_stdin(&["apply", "-f", "-"], &release).ok();
    fleet.tcadm_stdin(&["apply", "-f", "-"], GROUPS).ok();
    let bootstrap = fleet.controller.bootstrap_token().to_string();
    let agent = fleet.enroll("kiosk-a", &[("site", "berlin")], &bootstrap);
    let revision = eventually("kiosk 1.0.0 to be assigned", || {
        let response = fleet.heartbeat(&agent, 0, vec![]);
        response
            .desired
            .packages
            .iter()
            .any(|p| p.name == "kiosk" && p.version == "1.0.0")
            .then_some(response.desired.revision)
    });
    (fleet, agent, revision)
}

fn report(state: PackageState) -> Vec<PackageReport> {
    vec![PackageReport {
        staged: None,
        name: "kiosk".into(),
        version: "1.0.0".into(),
        state,
        active_version: (state == PackageState::Installed).then(|| "1.0.0".into()),
        message: (state == PackageState::Failed).then(|| "health check exited 1".into()),
        since: Timestamp::now(),
    }]
}

#[test]
fn wait_and_rollout_status_follow_a_successful_rollout() {
    let (fleet, agent, revision) = fleet_with_one_member();
    let status = fleet.tcadm(&["rollout", "status", "cg", "front-desk"]);
    assert!(
        status
            .ok()
            .starts_with("Waiting for clientgroup \"front-desk\" rollout to finish: "),
        "{status:#?}"
    );
    fleet.heartbeat(&agent, revision, report(PackageState::Installed));
    let waited = fleet.tcadm_stdin(&["apply", "-f", "-", "--wait", "--timeout", "30s"], GROUPS);
    assert_eq!(
        waited.ok(),
        "clientgroup/front-desk unchanged\nclientgroup/back-office unchanged\n\
         clientgroup/back-office rolled out\nclientgroup/front-desk rolled out\n"
    );
    let watched = fleet.tcadm(&[
        "rollout",
        "status",
        "clientgroup",
        "front-desk",
        "--watch",
        "--timeout",
        "30s",
    ]);
    assert_eq!(
        watched.ok(),
        "clientgroup \"front-desk\" successfully rolled out\n"
    );
    let table = fleet.tcadm(&["get", "cg", "front-desk"]);
    assert_eq!(
        cells(table.ok())[1],
        rows(&["front-desk 1 1 1 0 0 kiosk@1.0.0 <age>"])[0]
    );
    let described = fleet.tcadm(&["describe", "cg", "front-desk"]);
    for expected in [
        "Selector:",
        "site=berlin",
        "kiosk@1.0.0(Installed)",
        &agent.name,
    ] {
        assert!(
            described.ok().contains(expected),
            "{expected}: {described:#?}"
        );
    }
    let client = fleet.tcadm(&["get", "clients", "-o", "wide"]);
    assert!(
        client.ok().contains("kiosk@1.0.0(Installed)"),
        "{client:#?}"
    );
}

#[test]
fn a_failed_member_fails_wait_and_rollout_status() {
    let (fleet, agent, revision) = fleet_with_one_member();
    fleet.heartbeat(&agent, revision, report(PackageState::Failed));
    let waited = fleet.tcadm_stdin(&["apply", "-f", "-", "--wait", "--timeout", "30s"], GROUPS);
    let error = waited.fails_after_notes(1).to_string();
    assert!(
        error.starts_with("error: clientgroup/front-desk rollout failed: "),
        "{error}"
    );
    let error = fleet
        .tcadm(&[
            "rollout",
            "status",
            "cg",
            "front-desk",
            "-w",
            "--timeout",
            "30s",
        ])
        .fails(1)
        .to_string();
    assert!(
        error.starts_with("error: clientgroup/front-desk rollout failed: "),
        "{error}"
    );
    let events = fleet.tcadm(&["get", "events", "--for", &format!("client/{}", agent.name)]);
    assert!(events.ok().starts_with("LAST SEEN"), "{events:#?}");
}

#[test]
fn wait_times_out_with_exit_1() {
    let (fleet, _agent, _revision) = fleet_with_one_member();
    let error = fleet
        .tcadm_stdin(&["apply", "-f", "-", "--wait", "--timeout", "1s"], GROUPS)
        .fails_after_notes(1)
        .to_string();
    assert!(
        error.starts_with("error: timed out after 1s waiting for clientgroup/front-desk"),
        "{error}"
    );
}

/// The reproduction: a rollout that made no progress kept `rollout status --watch` and
/// `apply --wait` waiting until they timed out, without saying for whom. Past
/// `progressDeadlineSeconds` they end with exit 1 and the members the rollout waits for.
#[test]
fn a_rollout_past_its_progress_deadline_ends_watch_and_wait_with_the_reason() {
    let (fleet, agent, _revision) = fleet_with_one_member();
    // The member was assigned kiosk 1.0.0 and never reports it installed.
    let slow = GROUPS.replacen(
        "      version: \"^1.0\"\n",
        "      version: \"^1.0\"\n  rollout:\n    progressDeadlineSeconds: 1\n",
        1,
    );
    assert_ne!(slow, GROUPS);
    let waited = fleet.tcadm_stdin(&["apply", "-f", "-", "--wait", "--timeout", "30s"], &slow);
    let error = waited.fails_after_notes(1);
    assert!(
        error.starts_with("error: clientgroup/front-desk rollout stalled: no progress since"),
        "{error}"
    );
    assert!(
        error.contains(&format!(
            "waiting for {} (installing kiosk 1.0.0)",
            agent.name
        )),
        "{error}"
    );
    let watched = fleet.tcadm(&[
        "rollout",
        "status",
        "cg",
        "front-desk",
        "--watch",
        "--timeout",
        "30s",
    ]);
    assert!(
        watched
            .fails_after_notes(1)
            .contains("rollout stalled: no progress since"),
        "{watched:#?}"
    );
}

#[test]
fn rollout_retry_tries_a_failed_release_again_and_describe_says_why() {
    let (fleet, agent, revision) = fleet_with_one_member();
    fleet.heartbeat(&agent, revision, report(PackageState::Failed));
    let status = eventually("the failure to be counted", || {
        let run = fleet.tcadm(&["rollout", "status", "cg", "front-desk"]);
        (run.code == 1).then_some(run)
    });
    assert_eq!(
        status.fails(1),
        "error: clientgroup/front-desk rollout failed: 1 of 1 members failed to install kiosk 1.0.0"
    );
    let described = fleet.tcadm(&["describe", "client", &agent.name]);
    for expected in [
        "Groups:  front-desk",
        "DECIDED BY",
        "front-desk (^1.0)",
        "group front-desk (`^1.0`, priority 0) resolves it to 1.0.0",
    ] {
        assert!(
            described.ok().contains(expected),
            "{expected}: {described:#?}"
        );
    }

    let retried = fleet.tcadm(&["rollout", "retry", "clientgroup", "front-desk"]);
    assert_eq!(
        retried.ok(),
        format!(
            "clientgroup/front-desk: retry of kiosk 1.0.0 asked for on 1 member(s)\n  client/{} kiosk 1.0.0\n",
            agent.name
        )
    );
    let response = fleet.heartbeat(&agent, revision, report(PackageState::Failed));
    assert!(response.desired.revision > revision);
    assert_eq!(response.desired.packages[0].attempt, 1);
    let again = fleet.tcadm(&["rollout", "retry", "cg", "front-desk"]);
    assert_eq!(
        again.ok(),
        "clientgroup/front-desk: retry asked for: no member reports a failed package of this group\n"
    );
    assert!(
        fleet
            .tcadm(&["rollout", "retry", "cg", "nope"])
            .fails(3)
            .contains("clientgroup/nope not found")
    );
}

/// A running `tcadm ... -w` whose output lines arrive on a channel.
struct Watcher {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Watcher {
    fn start(fleet: &Fleet, args: &[&str]) -> Watcher {
        let mut child = fleet
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if sender.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        Watcher { child, lines }
    }

    /// The next line, within 30 seconds.
    #[track_caller]
    fn next(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a line from the watch")
    }

    /// Skips lines until one satisfies `wanted` (other rows may change meanwhile), within 30
    /// seconds.
    #[track_caller]
    fn until(&self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).expect("the awaited line");
            if wanted(&line) {
                return line;
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_prints_rows_that_change() {
    let fleet = Fleet::start();
    fleet.tcadm_stdin(&["apply", "-f", "-"], GROUPS).ok();
    let names = Watcher::start(&fleet, &["get", "cg", "-w", "-o", "name"]);
    let table = Watcher::start(&fleet, &["get", "cg", "--watch"]);
    assert_eq!(names.next(), "clientgroup/back-office");
    assert_eq!(names.next(), "clientgroup/front-desk");
    assert!(table.next().starts_with("NAME "));
    assert!(table.next().starts_with("back-office "));
    assert!(table.next().starts_with("front-desk "));

    let changed = GROUPS.replace(
        "      site: nowhere\n",
        "      site: nowhere\n  packages:\n    - {name: vpn, version: \"2.0.1\"}\n",
    );
    fleet.tcadm_stdin(&["apply", "-f", "-"], &changed).ok();
    names.until(|line| line == "clientgroup/back-office");
    let row = table.until(|line| line.starts_with("back-office "));
    assert!(row.contains("vpn@2.0.1(unresolved)"), "{row}");
}

#[test]
fn version_token_and_completion() {
    let fleet = Fleet::start();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        fleet.tcadm(&["version"]).ok(),
        format!("Client Version: {version}\nServer Version: {version}\n")
    );
    let token = fleet.tcadm(&["token", "create"]).ok().trim().to_string();
    assert!(!token.is_empty());
    let agent = fleet.enroll("kiosk-t", &[], &token);
    assert!(!agent.name.is_empty());

    let completion = fleet.tcadm(&["completion", "bash"]);
    assert!(completion.ok().contains("_tcadm"), "{completion:#?}");

    let help = fleet.tcadm(&["--help"]);
    assert!(help.ok().contains("Exit codes:"), "{help:#?}");
    assert_eq!(fleet.tcadm(&["apply"]).code, 2);
}

#[test]
fn without_server_or_token_the_default_address_is_used() {
    let fleet = Fleet::start();
    std::fs::create_dir_all(fleet.path("data")).unwrap();
    std::fs::write(fleet.path("data/admin.token"), "not-the-token\n").unwrap();
    // With no server and no token, tcadm talks to the default address (with the local token);
    // whatever listens there, or nothing, the error names that address.
    let run = fleet.run(
        fleet
            .command(&["get", "cg"])
            .env_remove("TCADM_SERVER")
            .env_remove("TCADM_TOKEN"),
        "",
    );
    let error = run.fails(3).to_string();
    assert!(error.contains("https://127.0.0.1:7130"), "{error}");
}

#[test]
fn the_example_fleet_applies_with_directories_packed_like_the_controller_packs_them() {
    let fleet = Fleet::start();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let manifests = repo.join("manifests");
    let first = fleet.tcadm(&["apply", "-f", manifests.to_str().unwrap()]);
    let out = first.ok();
    assert_eq!(
        out.lines().filter(|l| l.ends_with(" created")).count(),
        7,
        "{out}"
    );
    assert!(first.stderr.contains("uploaded"), "{first:#?}");
    let release = fleet.get_json(&["pr", "kiosk-browser-1.4.2"]);
    let packed = tc_pack::pack_dir(&repo.join("examples/packages/kiosk-browser-1.4.2")).unwrap();
    assert_eq!(
        release["status"]["artifact"]["sha256"],
        sha256_hex(&packed).as_str()
    );
    assert_eq!(release["status"]["artifact"]["size"], packed.len());
    let again = fleet.tcadm(&["apply", "-f", manifests.to_str().unwrap()]);
    assert_eq!(
        again
            .ok()
            .lines()
            .filter(|l| l.ends_with(" unchanged"))
            .count(),
        7
    );
}
