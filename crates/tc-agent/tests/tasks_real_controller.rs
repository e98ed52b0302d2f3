//! Remote operations end to end: real `tc-agent` binaries against a real controller in this
//! process. An exec task on a selector with each client's exit code and output, and a client
//! whose `allowedTasks` refuses it; an agent killed in the middle of a command that reports
//! `Interrupted` after its restart and never runs it again; a reboot through a harmless
//! configured command that succeeds once the agent is back on a new boot; Wake-on-LAN, where
//! the controller has an online neighbour send the magic packet for a sleeping client, received
//! by a UDP socket of the test on loopback.
//!
//! Everything listens on and talks to 127.0.0.1 only; every wait has a deadline; agents are
//! killed when a test ends.

mod common;

use common::real::{Admin, RealAgent as Agent, WAIT};

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tc_testkit::TestController;

impl Admin {
    async fn create_task(&self, name: &str, spec: Value) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/apis/thinfleet.io/v1/tasks",
                Some(json!({ "apiVersion": "thinfleet.io/v1", "kind": "Task",
                    "metadata": { "name": name }, "spec": spec })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    async fn results(&self, task: &str) -> Vec<Value> {
        let (status, list) = self
            .call(
                reqwest::Method::GET,
                &format!("/apis/thinfleet.io/v1/tasks/{task}/results"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until client `client`'s result in `task` is final; returns it.
    async fn final_result(&self, task: &str, client: &str, agents: &[&Agent]) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let results = self.results(task).await;
            if let Some(result) = results.iter().find(|r| r["client"] == client)
                && !matches!(result["state"].as_str(), Some("Pending" | "Running"))
            {
                return result.clone();
            }
            if tokio::time::Instant::now() > deadline {
                let logs: Vec<String> = agents.iter().map(|a| a.log_tail()).collect();
                panic!(
                    "no final result of {client} in {task}: {results:?}\n{}",
                    logs.join("\n----\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_task_on_a_selector_reports_each_client_and_allowed_tasks_refuses() {
    let controller = TestController::start().await;
    let admin = Admin::new(&controller);
    let root = tempfile::tempdir().unwrap();
    let marker_dir = root.path().join("ran");
    std::fs::create_dir(&marker_dir).unwrap();
    let fine = Agent::start(&controller, root.path(), "room101-a", &["room=101"], "").await;
    let broken = Agent::start(&controller, root.path(), "room101-b", &["room=101"], "").await;
    let kiosk = Agent::start(
        &controller,
        root.path(),
        "room101-kiosk",
        &["room=101"],
        "allowedTasks: [reboot, shutdown, wake, collectLogs]\n",
    )
    .await;
    let elsewhere = Agent::start(&controller, root.path(), "room102-a", &["room=102"], "").await;
    // One command for all: each agent's directory decides (the command's working directory is
    // the agent's `STATE/tasks/`): it fails where a `fail` file sits beside the state directory.
    let script = format!(
        "touch {dir}/ran-$(basename $(dirname $(dirname $(pwd)))); \
         if [ -e ../../fail ]; then echo broken >&2; exit 3; fi; echo fine",
        dir = marker_dir.display()
    );
    std::fs::write(broken.state.parent().unwrap().join("fail"), "").unwrap();
    admin
        .create_task(
            "room-check",
            json!({ "targets": { "selector": { "matchLabels": { "room": "101" } } },
                    "action": "exec",
                    "exec": { "command": ["/bin/sh", "-c", script], "timeoutSeconds": 30 } }),
        )
        .await;
    let agents = [&fine, &broken, &kiosk, &elsewhere];
    let ok = admin.final_result("room-check", &fine.name, &agents).await;
    assert_eq!(
        (
            ok["state"].as_str(),
            ok["exitCode"].as_i64(),
            ok["stdout"].as_str()
        ),
        (Some("Succeeded"), Some(0), Some("fine")),
        "{ok}"
    );
    let failed = admin
        .final_result("room-check", &broken.name, &agents)
        .await;
    assert_eq!(
        (
            failed["state"].as_str(),
            failed["exitCode"].as_i64(),
            failed["stderr"].as_str()
        ),
        (Some("Failed"), Some(3), Some("broken")),
        "{failed}"
    );
    let refused = admin.final_result("room-check", &kiosk.name, &agents).await;
    assert_eq!(refused["state"], "Failed", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or("")
            .contains("allowedTasks"),
        "{refused}"
    );
    // The refusing client never ran it; room 102 was no target.
    let mut ran: Vec<String> = std::fs::read_dir(&marker_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    ran.sort();
    assert_eq!(ran, vec!["ran-room101-a", "ran-room101-b"]);
    let results = admin.results("room-check").await;
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(
        !results
            .iter()
            .any(|r| r["client"] == elsewhere.name.as_str())
    );
    let (_, task) = admin
        .call(
            reqwest::Method::GET,
            "/apis/thinfleet.io/v1/tasks/room-check",
            None,
        )
        .await;
    let run = &task["status"]["runs"][0];
    assert_eq!(
        (
            run["targets"].as_u64(),
            run["succeeded"].as_u64(),
            run["failed"].as_u64()
        ),
        (Some(3), Some(1), Some(2)),
        "{task}"
    );
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_task_reports_interrupted_after_its_restart_and_never_reruns_it() {
    let controller = TestController::start().await;
    let admin = Admin::new(&controller);
    let root = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&controller, root.path(), "crash-1", &[], "").await;
    let runs = root.path().join("runs.log");
    admin
        .create_task(
            "slow-job",
            json!({ "targets": { "clients": [agent.name] }, "action": "exec",
                    "exec": { "command": ["/bin/sh", "-c",
                        format!("echo started >> {}; sleep 30", runs.display())],
                        "timeoutSeconds": 120 } }),
        )
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while lines(&runs) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.kill();
    agent.spawn(&controller, &[]);
    let result = admin.final_result("slow-job", &agent.name, &[&agent]).await;
    assert_eq!(result["state"], "Interrupted", "{result}");
    // Offered again after the restart (no report had said it started, or it had): never run
    // twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        lines(&runs),
        1,
        "the command ran again:\n{}",
        agent.log_tail()
    );
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_succeeds_once_the_agent_is_back_on_a_new_boot() {
    let controller = TestController::start().await;
    let admin = Admin::new(&controller);
    let root = tempfile::tempdir().unwrap();
    let boot_id = root.path().join("boot_id");
    std::fs::write(&boot_id, "boot-1\n").unwrap();
    let reboots = root.path().join("reboots.log");
    // The "reboot": a new boot id, as the kernel would have after a restart; the test restarts
    // the agent.
    let script = root.path().join("reboot.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho reboot >> {}\necho boot-2 > {}\n",
            reboots.display(),
            boot_id.display()
        ),
    )
    .unwrap();
    let config = format!(
        "rebootCommand: [/bin/sh, {}]\nshutdownCommand: [/bin/false]\nbootIdFile: {}\n",
        script.display(),
        boot_id.display()
    );
    let mut agent = Agent::start(&controller, root.path(), "reboot-1", &[], &config).await;
    admin
        .create_task(
            "restart-kiosk",
            json!({ "targets": { "clients": [agent.name] }, "action": "reboot" }),
        )
        .await;
    // Reported running ("rebooting") and not yet succeeded: the machine has not come back.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let results = admin.results("restart-kiosk").await;
        if results.iter().any(|r| r["state"] == "Running") && lines(&reboots) == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{results:?}\n{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.kill();
    agent.spawn(&controller, &[]);
    let result = admin
        .final_result("restart-kiosk", &agent.name, &[&agent])
        .await;
    assert_eq!(result["state"], "Succeeded", "{result}");
    assert_eq!(lines(&reboots), 1, "rebooted twice");
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_has_an_online_neighbour_send_the_magic_packet_for_a_sleeping_client() {
    let controller = TestController::start().await;
    let admin = Admin::new(&controller);
    let root = tempfile::tempdir().unwrap();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    // The neighbour sends to loopback instead of the segment's broadcast address.
    let config = format!("wakeOnLan:\n  port: {port}\n  address: 127.0.0.1\n");
    // The sleeper's heartbeats are due 5 s apart: it is soon offline once it stops.
    let (status, body) = admin
        .call(
            reqwest::Method::POST,
            "/apis/thinfleet.io/v1/apply",
            Some(json!({ "files": [{ "name": "floor.yaml", "content":
                "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: { name: floor-3 }\nspec:\n  selector: { matchLabels: { sleepy: \"yes\" } }\n  agent: { heartbeatSeconds: 5 }\n" }] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let neighbour = Agent::start(&controller, root.path(), "floor-a", &["floor=3"], &config).await;
    // Its inventory says on which networks it is.
    let deadline = tokio::time::Instant::now() + WAIT;
    let network = loop {
        let (_, client) = admin
            .call(
                reqwest::Method::GET,
                &format!("/apis/thinfleet.io/v1/clients/{}", neighbour.name),
                None,
            )
            .await;
        let found = client["status"]["inventory"]["networkInterfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|i| i["addresses"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_owned))
            .find(|a| {
                let Some((ip, prefix)) = a.split_once('/') else {
                    return false;
                };
                let (Ok(ip), Ok(prefix)) = (ip.parse::<std::net::Ipv4Addr>(), prefix.parse::<u8>())
                else {
                    return false;
                };
                !ip.is_loopback() && (8..=30).contains(&prefix)
            });
        if let Some(found) = found {
            break found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "this machine reports no IPv4 network besides loopback, which the test needs: {client}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The sleeping client: enrolled with an inventory on the same network, then gone quiet.
    let (ip, prefix) = network.split_once('/').unwrap();
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let host = u32::from(ip) ^ 1;
    let sleeper_address = format!("{}/{prefix}", std::net::Ipv4Addr::from(host));
    let identity = tc_testkit::protocol::TestIdentity::new("sleeper");
    let (status, enrolled) = admin
        .call(
            reqwest::Method::POST,
            "/agent/v1/enroll",
            Some(identity.enroll_body(
                controller.bootstrap_token(),
                "sleeper-id",
                "sleeper",
                json!({ "floor": "3", "sleepy": "yes" }),
            )),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{enrolled}");
    let sleeper = enrolled["clientName"].as_str().unwrap().to_owned();
    let session = enrolled["session"]["token"].as_str().unwrap().to_owned();
    let heartbeat = controller
        .http_client()
        .post(format!("{}/agent/v1/heartbeat", controller.url()))
        .bearer_auth(&session)
        .json(&json!({ "protocolVersion": 2, "observedRevision": 0, "packages": [],
            "inventoryHash": "sleeper",
            "inventory": { "hostname": "sleeper", "networkInterfaces": [
                { "name": "eth0", "mac": "AA:BB:CC:00:11:22", "addresses": [sleeper_address] } ] } }))
        .send()
        .await
        .unwrap();
    assert_eq!(heartbeat.status(), StatusCode::OK);
    // Gone quiet: offline once it missed its heartbeats.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, client) = admin
            .call(
                reqwest::Method::GET,
                &format!("/apis/thinfleet.io/v1/clients/{sleeper}"),
                None,
            )
            .await;
        if client["status"]["phase"] == "Offline" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{client}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    admin
        .create_task(
            "wake-floor",
            json!({ "targets": { "selector": { "matchLabels": { "floor": "3" } } }, "action": "wake" }),
        )
        .await;
    let mut packet = [0u8; 256];
    let Ok(received) = tokio::time::timeout(WAIT, socket.recv_from(&mut packet)).await else {
        panic!(
            "no magic packet arrived: {:?}\n{}",
            admin.results("wake-floor").await,
            neighbour.log_tail()
        );
    };
    let (size, _) = received.unwrap();
    let mac = [0xaa, 0xbb, 0xcc, 0x00, 0x11, 0x22];
    let mut expected = vec![0xff; 6];
    for _ in 0..16 {
        expected.extend_from_slice(&mac);
    }
    assert_eq!(&packet[..size], expected.as_slice());
    let woken = admin
        .final_result("wake-floor", &sleeper, &[&neighbour])
        .await;
    assert_eq!(woken["state"], "Succeeded", "{woken}");
    assert_eq!(woken["by"], neighbour.name.as_str(), "{woken}");
    // The neighbour itself was online: nothing to send for it.
    let awake = admin
        .final_result("wake-floor", &neighbour.name, &[&neighbour])
        .await;
    assert_eq!(
        (awake["state"].as_str(), awake["message"].as_str()),
        (Some("Succeeded"), Some("already online"))
    );
    controller.stop().await;
}
