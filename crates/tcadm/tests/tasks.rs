//! `tcadm run|reboot|logs`, `get tasks` and `describe task|client`: the real binary against a
//! real controller on `127.0.0.1:0`, with simulated agents that take the orders from their
//! heartbeat answers and report on them as the real agent does.

mod common;

use common::agents::{Background, SimAgent};
use common::{Fleet, Run};
use serde_json::{Value, json};

impl Fleet {
    fn tcadm(&self, args: &[&str]) -> Run {
        Run::of(&mut self.command(args))
    }

    fn tcadm_as(&self, token: &str, args: &[&str]) -> Run {
        Run::of(&mut self.command_as(token, args))
    }

    /// `get task NAME -o json`, parsed.
    fn task(&self, name: &str) -> Value {
        serde_json::from_str(self.tcadm(&["get", "task", name, "-o", "json"]).ok()).unwrap()
    }

    /// The names of the tasks.
    fn task_names(&self) -> String {
        self.tcadm(&["get", "tasks", "-o", "name"]).ok().to_string()
    }
}

/// A fleet with room 101 (two clients) and room 102 (one).
fn room_fleet() -> (Fleet, Vec<SimAgent>, SimAgent) {
    let fleet = Fleet::start();
    let room = ["r101-a", "r101-b"]
        .iter()
        .map(|machine| SimAgent::enroll(&fleet, machine, json!({ "room": "101" })))
        .collect();
    let other = SimAgent::enroll(&fleet, "r102-a", json!({ "room": "102" }));
    (fleet, room, other)
}

#[test]
fn run_streams_each_clients_result_and_exits_1_when_one_failed() {
    let (fleet, room, other) = room_fleet();
    let mut tcadm = Background::start(&mut fleet.command(&[
        "run",
        "-l",
        "room=101",
        "--name",
        "kiosk-check",
        "--timeout",
        "30s",
        "--",
        "sh",
        "-c",
        "pgrep kiosk",
    ]));
    assert_eq!(
        tcadm.line_containing("created"),
        "task/kiosk-check created (2 targets)"
    );
    let order = room[0].next_order();
    assert_eq!(order["action"]["type"], "exec");
    assert_eq!(
        order["action"]["command"],
        json!(["sh", "-c", "pgrep kiosk"])
    );
    assert_eq!(order["action"]["timeoutSeconds"], 30);
    assert!(other.orders().is_empty(), "room 102 is not a target");
    room[0].report(&order, json!({ "state": "Running" }));
    room[0].report(
        &order,
        json!({ "state": "Succeeded", "exitCode": 0, "stdout": "4242\n" }),
    );
    // The first result is printed while the other client has not reported yet.
    let line = tcadm.line_containing("r101-a");
    assert_eq!(line, "r101-a  Succeeded    exit 0");
    assert_eq!(tcadm.line_containing("4242"), "      4242");
    let order = room[1].next_order();
    room[1].report(
        &order,
        json!({ "state": "Failed", "exitCode": 1, "stderr": "no kiosk running\n",
                "message": "exited 1" }),
    );
    let run = tcadm.finish();
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stdout.contains(
            "r101-b  Failed       exit 1  (exited 1)\n    stderr:\n      no kiosk running\n"
        ),
        "{run:#?}"
    );
    assert!(
        run.stdout
            .ends_with("1 succeeded, 1 failed, 0 expired, 0 interrupted\n"),
        "{run:#?}"
    );
    assert_eq!(
        run.stderr,
        "error: task/kiosk-check: 1 of 2 clients did not succeed\n"
    );

    // The table counts the run; describe lists each client and the failure's output.
    let table = fleet.tcadm(&["get", "tasks"]);
    let row = table
        .ok()
        .lines()
        .find(|line| line.starts_with("kiosk-check"))
        .unwrap_or_else(|| panic!("{table:#?}"))
        .to_string();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..7],
        ["kiosk-check", "exec", "-l", "room=101", "1/2", "0", "1"],
        "{row}"
    );
    let wide = fleet.tcadm(&["get", "task", "kiosk-check", "-o", "wide"]);
    assert!(wide.ok().contains("SCHEDULE"), "{wide:#?}");
    assert!(wide.ok().contains("<none>"), "{wide:#?}");
    let task = fleet.task("kiosk-check");
    assert_eq!(task["status"]["runs"][0]["succeeded"], 1, "{task}");
    assert_eq!(task["status"]["runs"][0]["failed"], 1, "{task}");
    let text = fleet.tcadm(&["describe", "task", "kiosk-check"]);
    let text = text.ok();
    assert!(
        text.contains("2 targets: 0 pending, 0 running, 1 succeeded, 1 failed"),
        "{text}"
    );
    assert!(text.contains("Results of run "), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["r101-a", "Succeeded", "0", "-"]),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["r101-b", "Failed", "1", "exited", "1"]),
        "{text}"
    );
    assert!(
        text.contains("Output of failures:\n  r101-b:\n    stderr:\n      no kiosk running\n"),
        "{text}"
    );
    // The client's own view.
    let text = fleet.tcadm(&["describe", "client", "r101-b"]);
    let tasks = text
        .ok()
        .split("Tasks:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("{text:#?}"))
        .to_string();
    let row: Vec<&str> = tasks.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[0], "kiosk-check", "{tasks}");
    assert_eq!(
        row[row.len() - 4..],
        ["Failed", "1", "exited", "1"],
        "{tasks}"
    );
}

#[test]
fn run_exits_0_when_every_client_succeeded_and_jsonl_is_one_result_a_line() {
    let (fleet, room, _) = room_fleet();
    let tcadm = Background::start(&mut fleet.command(&[
        "run", "--client", "r101-a", "--client", "r101-b", "-o", "jsonl", "--", "true",
    ]));
    for agent in &room {
        let order = agent.next_order();
        agent.report(&order, json!({ "state": "Succeeded", "exitCode": 0 }));
    }
    let run = tcadm.finish();
    assert_eq!(run.code, 0, "{run:#?}");
    let results: Vec<Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let mut clients: Vec<&str> = results
        .iter()
        .map(|r| r["client"].as_str().unwrap())
        .collect();
    clients.sort();
    assert_eq!(clients, ["r101-a", "r101-b"], "{run:#?}");
    assert!(
        results
            .iter()
            .all(|r| r["state"] == "Succeeded" && r["exitCode"] == 0)
    );
    assert!(run.stderr.contains("created (2 targets)"), "{run:#?}");
    assert!(
        run.stderr
            .contains("2 succeeded, 0 failed, 0 expired, 0 interrupted"),
        "{run:#?}"
    );
}

#[test]
fn detach_creates_the_task_and_prints_only_its_name() {
    let (fleet, room, other) = room_fleet();
    let run = fleet.tcadm(&[
        "run",
        "--client",
        "r101-b",
        "--detach",
        "--working-dir",
        "/srv",
        "--max-concurrent",
        "50%",
        "--deadline",
        "90s",
        "--",
        "df",
        "-h",
    ]);
    let name = run.ok().trim().to_string();
    assert_eq!(run.stdout, format!("{name}\n"));
    // run-<yyyymmdd>-<hhmmss>-<4 hex>
    let parts: Vec<&str> = name.split('-').collect();
    assert_eq!(parts.len(), 4, "{name}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len(), parts[3].len()),
        ("run", 8, 6, 4),
        "{name}"
    );
    let task = fleet.task(&name);
    assert_eq!(
        task["spec"],
        json!({ "targets": { "clients": ["r101-b"] }, "action": "exec",
                "exec": { "command": ["df", "-h"], "timeoutSeconds": 60, "workingDir": "/srv" },
                "maxConcurrent": "50%", "deadlineSeconds": 90,
                // Deleted a week after its run finished.
                "ttlSecondsAfterFinished": 604_800 })
    );
    let order = room[1].next_order();
    assert_eq!(order["task"], name.as_str());
    assert!(room[0].orders().is_empty() && other.orders().is_empty());
}

#[test]
fn usage_errors_exit_2_and_create_nothing() {
    let fleet = Fleet::start();
    for (args, expected) in [
        (&["run", "-l", "room=101"][..], "no command"),
        (&["run", "--", "uptime"][..], "no targets"),
        (&["run", "-l", "room in (", "--", "uptime"][..], "room in ("),
        (&["reboot"][..], "no targets"),
        (&["wake", "cg", "floor-2"][..], "client NAME"),
        (&["logs", "cg", "floor-2"][..], "tcadm logs client NAME"),
    ] {
        let run = fleet.tcadm(args);
        assert_eq!(run.code, 2, "{args:?}: {run:#?}");
        assert!(run.stderr.contains(expected), "{args:?}: {run:#?}");
    }
    // Clap's own refusals are usage errors too.
    let run = fleet.tcadm(&["run", "-l", "a=b", "--group", "g", "--", "true"]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert_eq!(fleet.task_names(), "");
}

#[test]
fn a_viewer_is_refused_and_nothing_is_created() {
    let (fleet, _room, _) = room_fleet();
    let token = fleet
        .tcadm(&["credential", "create", "desk", "--role", "viewer"])
        .ok()
        .trim()
        .to_string();
    let run = fleet.tcadm_as(&token, &["run", "-l", "room=101", "--", "uptime"]);
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(
        run.stderr.contains(
            "credential \"desk\" (role viewer) may not POST /apis/thinfleet.io/v1/tasks: \
             needs role operator"
        ),
        "{run:#?}"
    );
    assert_eq!(run.stdout, "");
    let run = fleet.tcadm_as(&token, &["reboot", "client", "r101-a", "--detach"]);
    assert_eq!(run.code, 3, "{run:#?}");
    assert_eq!(fleet.task_names(), "");
    // An operator may.
    let token = fleet
        .tcadm(&["credential", "create", "lead", "--role", "operator"])
        .ok()
        .trim()
        .to_string();
    let run = fleet.tcadm_as(
        &token,
        &[
            "reboot", "client", "r101-a", "--detach", "--name", "reboot-a",
        ],
    );
    assert_eq!(run.ok(), "reboot-a\n");
    // The audit trail names who created it; an operator may delete it.
    let audit = fleet.tcadm(&["get", "audit", "--for", "task/reboot-a"]);
    assert!(audit.ok().lines().any(|l| l.contains("lead")), "{audit:#?}");
    let run = fleet.tcadm_as(&token, &["delete", "task", "reboot-a"]);
    assert_eq!(run.ok(), "task/reboot-a deleted\n");
    assert_eq!(fleet.task_names(), "");
}

#[test]
fn reboot_client_creates_a_reboot_task_for_exactly_that_client() {
    let (fleet, room, other) = room_fleet();
    let run = fleet.tcadm(&[
        "reboot", "client", "r101-a", "--name", "reboot-a", "--detach",
    ]);
    assert_eq!(run.ok(), "reboot-a\n");
    let task = fleet.task("reboot-a");
    assert_eq!(task["spec"]["action"], "reboot");
    assert_eq!(task["spec"]["targets"], json!({ "clients": ["r101-a"] }));
    assert!(task["spec"].get("exec").is_none(), "{task}");
    let order = room[0].next_order();
    assert_eq!(order["action"]["type"], "reboot");
    assert!(room[1].orders().is_empty() && other.orders().is_empty());

    // Followed: the line comes when the client is back (the agent reports the reboot done).
    let tcadm = Background::start(
        &mut fleet.command(&["reboot", "client", "r101-b", "--name", "reboot-b"]),
    );
    let order = room[1].next_order();
    assert_eq!(order["task"], "reboot-b");
    room[1].report(&order, json!({ "state": "Running" }));
    room[1].report(
        &order,
        json!({ "state": "Succeeded", "message": "back on a new boot" }),
    );
    let run = tcadm.finish();
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(
        run.stdout,
        "task/reboot-b created (1 target)\nr101-b  Succeeded    (back on a new boot)\n\
         1 succeeded, 0 failed, 0 expired, 0 interrupted\n"
    );
}

#[test]
fn logs_client_prints_the_logs_the_agent_sent() {
    let (fleet, room, _) = room_fleet();
    let tcadm = Background::start(&mut fleet.command(&["logs", "client", "r101-a"]));
    let order = room[0].next_order();
    assert_eq!(order["action"]["type"], "collectLogs");
    let logs = "agent: started\njournal: kiosk.service failed\n";
    room[0].report(&order, json!({ "state": "Succeeded", "logs": logs }));
    let run = tcadm.finish();
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(run.stdout, logs);
    assert!(run.stderr.contains("to send its logs"), "{run:#?}");
    assert!(room[1].orders().is_empty());
}

#[test]
fn logs_of_a_client_that_never_answers_fail_when_it_expires() {
    let (fleet, _room, _) = room_fleet();
    let run =
        Background::start(&mut fleet.command(&["logs", "client", "r102-a", "--timeout", "1s"]))
            .finish();
    assert_eq!(run.code, 1, "{run:#?}");
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains("error: client/r102-a: Expired"),
        "{run:#?}"
    );
}

/// An inventory with one network interface.
fn on_segment(name: &str, mac: &str, address: &str) -> Value {
    json!({ "hostname": name, "networkInterfaces": [
        { "name": "eth0", "mac": mac, "addresses": [address] } ] })
}

#[test]
fn wake_shows_the_neighbour_that_sent_the_packet_or_why_none_could() {
    let fleet = Fleet::start();
    std::fs::write(
        fleet.dir.path().join("fast.yaml"),
        "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: { name: fast }\n\
         spec:\n  selector: {}\n  agent: { heartbeatSeconds: 5 }\n",
    )
    .unwrap();
    fleet.tcadm(&["apply", "-f", "fast.yaml"]).ok();
    let mut sleeper = SimAgent::enroll_silent(&fleet, "pc-sleeper", json!({ "floor": "2" }));
    sleeper.inventory = on_segment("pc-sleeper", "aa:bb:cc:00:00:01", "192.0.2.11/24");
    sleeper.orders();
    let mut neighbour = SimAgent::enroll_silent(&fleet, "pc-awake", json!({ "floor": "3" }));
    neighbour.inventory = on_segment("pc-awake", "aa:bb:cc:00:00:02", "192.0.2.12/24");
    // Never came online: nothing is known of its network.
    SimAgent::enroll_silent(&fleet, "pc-unknown", json!({ "floor": "2" }));
    // The sleeper misses its heartbeats (3 of 5 s) while its neighbour keeps sending them.
    let limit = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        neighbour.orders();
        let client: Value = serde_json::from_str(
            fleet
                .tcadm(&["get", "client", "pc-sleeper", "-o", "json"])
                .ok(),
        )
        .unwrap();
        if client["status"]["phase"] == "Offline" {
            break;
        }
        assert!(
            std::time::Instant::now() < limit,
            "pc-sleeper never went offline: {client}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let tcadm =
        Background::start(&mut fleet.command(&["wake", "-l", "floor=2", "--name", "morning"]));
    let order = neighbour.next_order();
    assert_eq!(order["action"]["type"], "wake");
    assert_eq!(order["action"]["target"], "pc-sleeper");
    assert_eq!(order["action"]["mac"], "aa:bb:cc:00:00:01");
    neighbour.report(&order, json!({ "state": "Succeeded" }));
    let run = tcadm.finish();
    assert_eq!(run.code, 1, "{run:#?}");
    // The target nobody can wake failed at once, the other when its neighbour reported
    // (printed in the order they finished, or by name when one poll found both).
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{run:#?}");
    assert_eq!(lines[0], "task/morning created (2 targets)");
    let mut results = lines[1..3].to_vec();
    results.sort();
    assert_eq!(
        results,
        [
            "pc-sleeper  Succeeded    by pc-awake",
            "pc-unknown  Failed       (its inventory has no hardware address to wake)",
        ],
        "{run:#?}"
    );
    assert_eq!(lines[3], "1 succeeded, 1 failed, 0 expired, 0 interrupted");
}

#[test]
fn the_scheduled_tasks_of_the_readme_apply_and_show_their_schedule() {
    let fleet = Fleet::start();
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("## Remote operations\n")
        .nth(1)
        .expect("the README has a Remote operations section");
    let manifest = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a YAML example");
    std::fs::write(fleet.dir.path().join("floor.yaml"), manifest).unwrap();
    let run = fleet.tcadm(&["apply", "-f", "floor.yaml"]);
    assert!(run.ok().contains("task/floor-2-wake"), "{run:#?}");
    let table = fleet.tcadm(&["get", "tasks", "-o", "wide"]);
    let text = table.ok();
    assert!(
        text.lines().any(|l| l.starts_with("floor-2-wake")
            && l.contains("wake")
            && l.contains("0 7 * * 1-5 Europe/Berlin")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("floor-2-shutdown")
            && l.contains("shutdown")
            && l.contains("0 20 * * * Europe/Berlin")),
        "{text}"
    );
    let text = fleet.tcadm(&["describe", "task", "floor-2-shutdown"]);
    assert!(text.ok().contains("Concurrency:  25%"), "{text:#?}");
}

#[test]
fn output_json_is_one_document_of_every_result_at_the_end() {
    let (fleet, room, _) = room_fleet();
    let tcadm = Background::start(&mut fleet.command(&[
        "shutdown", "client", "r101-a", "r101-b", "--name", "evening", "-o", "json",
    ]));
    for agent in &room {
        let order = agent.next_order();
        assert_eq!(order["action"]["type"], "shutdown");
        agent.report(
            &order,
            json!({ "state": "Interrupted", "message": "agent stopped" }),
        );
    }
    let run = tcadm.finish();
    assert_eq!(run.code, 1, "{run:#?}");
    let document: Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    assert_eq!(document["kind"], "TaskResultList");
    assert_eq!(document["task"], "evening");
    let states: Vec<(&str, &str)> = document["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["client"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [("r101-a", "Interrupted"), ("r101-b", "Interrupted")]
    );
    assert!(
        run.stderr
            .contains("0 succeeded, 0 failed, 0 expired, 2 interrupted"),
        "{run:#?}"
    );
    assert!(
        run.stderr
            .contains("error: task/evening: 2 of 2 clients did not succeed"),
        "{run:#?}"
    );
}
