//! Simulated agents that speak the real protocol to the test controller: they enrol, take task
//! orders from heartbeat answers and report on them with `POST /agent/v1/tasks/report`; and a
//! `tcadm` child process whose standard output is read line by line while it runs.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tc_testkit::protocol::TestIdentity;

use super::{Fleet, Run};

/// A simulated agent: its client name and session token.
pub struct SimAgent {
    pub name: String,
    /// The inventory its heartbeats carry.
    pub inventory: Value,
    token: String,
    base: String,
    http: reqwest::blocking::Client,
}

impl SimAgent {
    /// Enrols the machine `machine` (also its client name) with `labels` and heartbeats once.
    pub fn enroll(fleet: &Fleet, machine: &str, labels: Value) -> SimAgent {
        let agent = SimAgent::enroll_silent(fleet, machine, labels);
        agent.orders();
        agent
    }

    /// Enrols without a heartbeat: the client never came online and has no inventory.
    pub fn enroll_silent(fleet: &Fleet, machine: &str, labels: Value) -> SimAgent {
        let identity = TestIdentity::new(machine);
        let mut agent = SimAgent {
            name: String::new(),
            inventory: json!({ "hostname": machine }),
            token: String::new(),
            base: fleet.controller.url(),
            http: fleet.https_client(),
        };
        let enrolled = agent.post(
            "/agent/v1/enroll",
            identity.enroll_body(fleet.controller.bootstrap_token(), machine, machine, labels),
        );
        agent.name = enrolled["clientName"].as_str().unwrap().to_string();
        agent.token = enrolled["session"]["token"]
            .as_str()
            .expect("a session for a new client")
            .to_string();
        agent
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30))
            .header("content-type", "application/json")
            .body(body.to_string());
        if !self.token.is_empty() {
            request = request.bearer_auth(&self.token);
        }
        let response = request.send().expect("the controller answers");
        let status = response.status();
        let text = response.text().unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Heartbeats; answers the task orders of the answer.
    pub fn orders(&self) -> Vec<Value> {
        let answer = self.post(
            "/agent/v1/heartbeat",
            json!({ "protocolVersion": 2, "observedRevision": 0, "packages": [],
                    "inventoryHash": format!("h{}", self.inventory.to_string().len()),
                    "inventory": self.inventory }),
        );
        answer["tasks"].as_array().cloned().unwrap_or_default()
    }

    /// Heartbeats until an order arrives (at most 20 s); answers the first.
    pub fn next_order(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(order) = self.orders().into_iter().next() {
                return order;
            }
            assert!(
                Instant::now() < deadline,
                "{} got no task order within 20 s",
                self.name
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Reports on an order: `report` is the report without its id.
    pub fn report(&self, order: &Value, mut report: Value) -> Value {
        report["id"] = order["id"].clone();
        self.post("/agent/v1/tasks/report", json!({ "reports": [report] }))
    }
}

/// A `tcadm` process running in the background, its standard output read line by line.
pub struct Background {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: JoinHandle<String>,
}

impl Background {
    /// Starts `command` with standard input closed.
    pub fn start(command: &mut Command) -> Background {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcadm starts");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Background {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Waits (at most 20 s) for a line of standard output containing `text`; answers it.
    pub fn line_containing(&mut self, text: &str) -> String {
        if let Some(line) = self.seen.iter().find(|line| line.contains(text)) {
            return line.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing `{text}` within 20 s; printed so far: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Waits (at most 30 s) for the process to end; answers what it did.
    pub fn finish(mut self) -> Run {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("tcadm did not end within 30 s; printed: {:#?}", self.seen);
            }
            thread::sleep(Duration::from_millis(50));
        };
        // The reader ends at the end of the output.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.seen.push(line);
        }
        let mut stdout = self.seen.join("\n");
        if !stdout.is_empty() {
            stdout.push('\n');
        }
        Run {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr: self.stderr.join().unwrap(),
        }
    }
}
