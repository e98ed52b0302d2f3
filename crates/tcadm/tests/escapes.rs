//! Terminal escapes from clients are shown, never obeyed: inventory strings and a
//! package message carrying a window title (OSC 0), a screen clear, a clipboard write (OSC 52),
//! a C1 control and a carriage return go through a real controller and reach every kind of
//! `tcadm` output; the bytes printed hold no control character but newline, while `-o json` and
//! `-o yaml` give the strings back exactly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tc_proto::{
    EnrollResponse, HeartbeatRequest, Inventory, PROTOCOL_VERSION, PackageReport, PackageState,
    Timestamp,
};
use tc_testkit::TestController;
use tc_testkit::protocol::TestIdentity;

/// A title, a screen clear, a clipboard write, CSI as one C1 character, DEL, a carriage return.
const HOSTILE: &str =
    "evil\x1b]0;pwned\x07\x1b[2J\x1b]52;c;ZWNobyBvd25lZA==\x1b\\\u{9b}31m\x7f\rtail";

/// How `HOSTILE` reads once escaped (the start, enough to recognise it).
const SHOWN: &str = "evil\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{1b}]52;c;";

struct Fleet {
    controller: TestController,
    _runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    token: String,
}

impl Fleet {
    /// A controller with one client whose agent reported hostile strings.
    fn start() -> Fleet {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let controller = runtime.block_on(TestController::start());
        let mut fleet = Fleet {
            controller,
            _runtime: runtime,
            dir: tempfile::tempdir().unwrap(),
            token: String::new(),
        };
        // Host names with control characters are refused at enrolment and in heartbeats (see
        // `tc_proto::limits`); every other string an agent reports reaches tcadm as sent.
        let identity = TestIdentity::new("machine-1");
        let refused = fleet.send(
            "/agent/v1/enroll",
            None,
            &with_hostname(
                identity.enroll_body(
                    fleet.controller.bootstrap_token(),
                    "machine-1",
                    "kiosk-1",
                    Value::Object(Default::default()),
                ),
                HOSTILE,
            ),
        );
        assert_eq!(refused.0, 400, "{}", refused.1);
        let enrolled: EnrollResponse = fleet.post(
            "/agent/v1/enroll",
            None,
            &identity.enroll_body(
                fleet.controller.bootstrap_token(),
                "machine-1",
                "kiosk-1",
                Value::Object(Default::default()),
            ),
        );
        assert_eq!(enrolled.client_name, "kiosk-1");
        fleet.token = enrolled.session.expect("a first session").token;
        fleet.heartbeat(HOSTILE);
        fleet
    }

    /// Posts `body` as JSON; the status and the text of the answer.
    fn send(&self, path: &str, token: Option<&str>, body: &impl serde::Serialize) -> (u16, String) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = self
            .controller
            .tls_client_config(&[b"http/1.1"])
            .expect("an HTTPS controller");
        let client = reqwest::blocking::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .build()
            .unwrap();
        let mut request = client
            .post(format!("{}{path}", self.controller.url()))
            .header("content-type", "application/json")
            .body(serde_json::to_string(body).unwrap());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        (status, response.text().unwrap())
    }

    fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &impl serde::Serialize,
    ) -> T {
        let (status, text) = self.send(path, token, body);
        assert!((200..300).contains(&status), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// A heartbeat whose inventory strings and package message are `text`.
    fn heartbeat(&self, text: &str) {
        let inventory = Inventory {
            hostname: "kiosk-1".into(),
            os_name: text.into(),
            os_version: "12".into(),
            cpu_model: text.into(),
            arch: "x86_64".into(),
            agent_version: "0.1.0".into(),
            ..Default::default()
        };
        let _: Value = self.post(
            "/agent/v1/heartbeat",
            Some(&self.token),
            &HeartbeatRequest {
                protocol_version: PROTOCOL_VERSION,
                observed_revision: 0,
                packages: vec![PackageReport {
                    staged: None,
                    name: "kiosk".into(),
                    version: "1.0.0".into(),
                    state: PackageState::Failed,
                    active_version: None,
                    message: Some(format!("healthCheck failed:\n{text}")),
                    since: Timestamp::now(),
                }],
                inventory_hash: tc_proto::inventory_hash(&inventory),
                inventory: Some(inventory),
                load: Default::default(),
                decommissioned: false,
            },
        );
    }

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

    /// Runs tcadm; returns its exit code, standard output and standard error.
    fn tcadm(&self, args: &[&str]) -> (i32, String, String) {
        let output = self.command(args).stdin(Stdio::null()).output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    }
}

/// An enrolment request with another host name.
fn with_hostname(mut body: Value, hostname: &str) -> Value {
    body["hostname"] = Value::from(hostname);
    body
}

/// Fails when `text` holds a control character a terminal would obey (newline aside).
#[track_caller]
fn assert_inert(what: &str, text: &str) {
    let controls: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(
        controls.is_empty(),
        "{what}: {controls:?} printed raw in:\n{text}"
    );
}

#[test]
fn tables_describe_events_and_relayed_errors_show_escapes_instead_of_obeying_them() {
    let fleet = Fleet::start();
    for args in [
        &["get", "clients"][..],
        &["get", "clients", "-o", "wide"],
        &["describe", "client", "kiosk-1"],
        &["get", "events", "--for", "client/kiosk-1"],
    ] {
        let (code, stdout, stderr) = fleet.tcadm(args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert_inert(&format!("{args:?}"), &stdout);
        assert_inert(&format!("{args:?} (stderr)"), &stderr);
        if args.len() > 2 {
            assert!(stdout.contains(SHOWN), "{args:?}:\n{stdout}");
        }
    }
    // The wide table stays aligned: every row starts its columns where the header does.
    let (_, table, _) = fleet.tcadm(&["get", "clients", "-o", "wide"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "one row per client:\n{table}");
    let os = lines[0].find("OS").unwrap();
    assert!(lines[1][os..].starts_with("evil\\u{1b}"), "{table}");

    // An error the controller relays, with what it was asked for in its message (a name
    // without `\\`, which a URL would turn into `/`).
    let ghost = "ghost\x1b]0;pwned\x07\x1b[2J\u{9b}31m";
    let (code, stdout, stderr) = fleet.tcadm(&["describe", "client", ghost]);
    assert_ne!(code, 0);
    assert_inert("the relayed error", &stderr);
    assert_inert("the relayed error (stdout)", &stdout);
    assert!(
        stderr.contains("client/ghost\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{9b}31m not found"),
        "{stderr}"
    );

    // Machine-readable output is exact: its encoders escape what needs escaping.
    for format in ["json", "yaml"] {
        let (code, stdout, stderr) = fleet.tcadm(&["get", "client", "kiosk-1", "-o", format]);
        assert_eq!(code, 0, "{stderr}");
        assert_inert(format, &stdout);
        let client: Value = if format == "json" {
            serde_json::from_str(&stdout).unwrap()
        } else {
            tc_api::decode::parse_documents("out.yaml", &stdout, &Default::default()).unwrap()[0]
                .value
                .clone()
        };
        assert_eq!(client["status"]["inventory"]["osName"], HOSTILE, "{format}");
        assert_eq!(
            client["status"]["packages"][0]["message"],
            format!("healthCheck failed:\n{HOSTILE}"),
            "{format}"
        );
    }
}

#[test]
fn watch_output_shows_escapes_instead_of_obeying_them() {
    let fleet = Fleet::start();
    let mut child = fleet
        .command(&["get", "clients", "-o", "wide", "--watch"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let next = |seen: &mut Vec<String>| {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a line of watch output");
        seen.push(line.clone());
        line
    };
    // The table, then a row printed when the row changes.
    while !next(&mut seen).starts_with("kiosk-1") {}
    fleet.heartbeat(&format!("{HOSTILE} again"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = next(&mut seen);
        if line.contains("again") {
            break;
        }
        assert!(Instant::now() < deadline, "no changed row: {seen:#?}");
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = seen.join("\n");
    assert_inert("watch output", &text);
    assert!(text.contains(SHOWN), "{text}");
}
