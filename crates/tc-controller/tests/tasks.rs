//! Remote operations on the controller's side: runs, orders in heartbeats and long-polls,
//! concurrency, deadlines, reports, results, roles and the audit trail. Simulated agents speak
//! the real protocol to a real controller (the real agent is in `tc-agent`'s and the end-to-end
//! tests).

mod common;

use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn exec_task(name: &str, targets: Value, extra: Value) -> Value {
    let mut task = json!({
        "apiVersion": "thinfleet.io/v1", "kind": "Task",
        "metadata": { "name": name },
        "spec": { "targets": targets, "action": "exec",
                  "exec": { "command": ["sh", "-c", "echo hi"], "timeoutSeconds": 30 } },
    });
    if let (Some(spec), Some(extra)) = (task["spec"].as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            spec.insert(key.clone(), value.clone());
        }
    }
    task
}

async fn create(api: &Api, task: Value) -> (StatusCode, Value) {
    api.request(Method::POST, "/apis/thinfleet.io/v1/tasks", Some(task))
        .await
}

/// The orders in a heartbeat answer.
async fn orders(agent: &SimAgent) -> Vec<Value> {
    let body = json!({ "protocolVersion": 2, "observedRevision": agent.revision, "packages": [],
        "inventoryHash": "h1", "inventory": { "hostname": agent.name } });
    let (status, answer) = agent.api.heartbeat(body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["tasks"].as_array().cloned().unwrap_or_default()
}

async fn report(agent: &SimAgent, reports: Value) -> (StatusCode, Value) {
    agent
        .api
        .request(
            Method::POST,
            "/agent/v1/tasks/report",
            Some(json!({ "reports": reports })),
        )
        .await
}

async fn get_task(api: &Api, name: &str) -> Value {
    let (status, task) = api
        .get(&format!("/apis/thinfleet.io/v1/tasks/{name}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    task
}

async fn results(api: &Api, name: &str) -> Vec<Value> {
    let (status, list) = api
        .get(&format!("/apis/thinfleet.io/v1/tasks/{name}/results"))
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["items"].as_array().cloned().unwrap()
}

/// Waits until the task's newest run satisfies `check`.
async fn wait_run(api: &Api, name: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(10), || async {
        let task = get_task(api, name).await;
        let run = task["status"]["runs"][0].clone();
        (!run.is_null() && check(&run)).then_some(run)
    })
    .await
}

#[tokio::test]
async fn an_exec_task_reaches_the_selected_clients_and_records_each_result() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let mut room = vec![];
    for machine in ["r101-a", "r101-b"] {
        room.push(SimAgent::enroll(&controller, machine, json!({ "room": "101" })).await);
    }
    let other = SimAgent::enroll(&controller, "r102-a", json!({ "room": "102" })).await;
    let operator = Api::with_token(&controller, &credential(&admin, "lead", "operator").await);
    let viewer = Api::with_token(&controller, &credential(&admin, "desk", "viewer").await);

    // A viewer may not run anything; nothing is created.
    let task = exec_task(
        "restart-kiosk",
        json!({ "selector": { "matchLabels": { "room": "101" } } }),
        json!({}),
    );
    let (status, body) = create(&viewer, task.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = admin.get("/apis/thinfleet.io/v1/tasks/restart-kiosk").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A client waiting in a long-poll is answered with the order at once.
    let waiting = {
        let api = Api::with_token(&controller, &room[0].api.token);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let (status, answer) = api
                .get("/agent/v1/desired?afterRevision=999999&timeoutSeconds=30")
                .await;
            (status, answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, created) = create(&operator, task.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, answer, waited) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(
        waited < Duration::from_secs(10),
        "the long-poll was not answered by the order"
    );
    let order = &answer["tasks"][0];
    assert_eq!(order["task"], "restart-kiosk");
    assert_eq!(order["action"]["type"], "exec");
    assert_eq!(order["action"]["command"], json!(["sh", "-c", "echo hi"]));
    let id = order["id"].as_str().unwrap().to_string();

    // Both members of room 101 have it; room 102 does not.
    for agent in &room {
        let orders = orders(agent).await;
        assert_eq!(orders.len(), 1, "{orders:?}");
        assert_eq!(orders[0]["id"], id.as_str());
    }
    assert!(orders(&other).await.is_empty());
    let run = wait_run(&operator, "restart-kiosk", |run| run["targets"] == 2).await;
    assert_eq!(run["pending"], 2, "{run}");

    // Started: no longer offered. Finished: exit codes and output tails recorded.
    let (status, body) = report(&room[0], json!([{ "id": id, "state": "Running" }])).await;
    assert_eq!(
        (status, body["accepted"].clone()),
        (StatusCode::OK, json!(1))
    );
    assert!(orders(&room[0]).await.is_empty());
    report(
        &room[0],
        json!([{ "id": id, "state": "Succeeded", "exitCode": 0, "stdout": "hi\n" }]),
    )
    .await;
    report(&room[1], json!([{ "id": id, "state": "Failed", "exitCode": 3, "stderr": "no kiosk\n", "message": "exited 3" }])).await;
    // Said again (an agent resending after a lost answer): nothing moves.
    let (_, again) = report(
        &room[1],
        json!([{ "id": id, "state": "Succeeded", "exitCode": 0 }]),
    )
    .await;
    assert_eq!(again["accepted"], 0);
    // A client cannot report on an order it was not given.
    let (_, foreign) = report(&other, json!([{ "id": id, "state": "Succeeded" }])).await;
    assert_eq!(foreign["accepted"], 0);

    let run = wait_run(&operator, "restart-kiosk", |run| {
        run["completedAt"].is_string()
    })
    .await;
    assert_eq!(
        (
            run["succeeded"].clone(),
            run["failed"].clone(),
            run["pending"].clone()
        ),
        (json!(1), json!(1), json!(0)),
        "{run}"
    );
    let results = results(&viewer, "restart-kiosk").await;
    let by_client: Vec<(String, String, Value, String)> = results
        .iter()
        .map(|r| {
            (
                r["client"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
                r["exitCode"].clone(),
                format!(
                    "{}{}",
                    r["stdout"].as_str().unwrap_or(""),
                    r["stderr"].as_str().unwrap_or("")
                ),
            )
        })
        .collect();
    assert_eq!(
        by_client,
        vec![
            (
                room[0].name.clone(),
                "Succeeded".into(),
                json!(0),
                "hi\n".into()
            ),
            (
                room[1].name.clone(),
                "Failed".into(),
                json!(3),
                "no kiosk\n".into()
            ),
        ]
    );
    // The client's own history lists it.
    let (status, mine) = viewer
        .get(&format!(
            "/apis/thinfleet.io/v1/clients/{}/tasks",
            room[1].name
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    assert_eq!(mine["items"][0]["task"], "restart-kiosk");
    assert_eq!(mine["items"][0]["state"], "Failed");

    // The audit trail has the creation with its author, and the viewer's refusal.
    let (_, audit) = admin
        .get("/apis/thinfleet.io/v1/audit?kind=Task&name=restart-kiosk")
        .await;
    let entries: Vec<(String, String, String)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["user"].as_str().unwrap_or_default().to_string(),
                e["action"].as_str().unwrap_or_default().to_string(),
                e["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        entries.contains(&("lead".into(), "create".into(), "Succeeded".into())),
        "{audit}"
    );
    // The refusal names no object (the handler never read the body), but its author.
    let (_, refused) = admin.get("/apis/thinfleet.io/v1/audit?by=desk").await;
    assert_eq!(refused["items"][0]["action"], "create", "{refused}");
    assert_eq!(refused["items"][0]["outcome"], "Denied", "{refused}");
    controller.stop().await;
}

#[tokio::test]
async fn max_concurrent_offers_the_next_client_only_when_one_finishes() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let mut agents = vec![];
    for index in 0..5 {
        agents.push(
            SimAgent::enroll(
                &controller,
                &format!("floor-{index}"),
                json!({ "floor": "2" }),
            )
            .await,
        );
    }
    let (status, body) = create(
        &admin,
        exec_task(
            "inventory-scan",
            json!({ "selector": { "matchLabels": { "floor": "2" } } }),
            json!({ "maxConcurrent": 2 }),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let offered = |agents: &[SimAgent]| {
        let agents: Vec<(String, Api)> = agents
            .iter()
            .map(|a| (a.name.clone(), Api::with_token(&controller, &a.api.token)))
            .collect();
        async move {
            let mut names = vec![];
            for (name, api) in &agents {
                let body = json!({ "protocolVersion": 2, "observedRevision": 0, "packages": [], "inventoryHash": "h1" });
                let (_, answer) = api.heartbeat(body).await;
                if let Some(order) = answer["tasks"].as_array().and_then(|t| t.first()) {
                    names.push((name.clone(), order["id"].as_str().unwrap().to_string()));
                }
            }
            names
        }
    };
    let first = eventually(Duration::from_secs(10), || async {
        let now = offered(&agents).await;
        (now.len() == 2).then_some(now)
    })
    .await;
    // Started ones still count against the limit.
    for (name, id) in &first {
        let agent = agents.iter().find(|a| &a.name == name).unwrap();
        report(agent, json!([{ "id": id, "state": "Running" }])).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        offered(&agents).await.is_empty(),
        "a third client was offered the order while two ran"
    );
    // One finishes: exactly one more is offered.
    let (name, id) = &first[0];
    let agent = agents.iter().find(|a| &a.name == name).unwrap();
    report(
        agent,
        json!([{ "id": id, "state": "Succeeded", "exitCode": 0 }]),
    )
    .await;
    let next = eventually(Duration::from_secs(10), || async {
        let now = offered(&agents).await;
        (!now.is_empty()).then_some(now)
    })
    .await;
    assert_eq!(next.len(), 1, "{next:?}");
    assert!(!first.iter().any(|(n, _)| *n == next[0].0));
    let run = wait_run(&admin, "inventory-scan", |_| true).await;
    assert_eq!(
        (
            run["running"].clone(),
            run["succeeded"].clone(),
            run["pending"].clone()
        ),
        (json!(1), json!(1), json!(3)),
        "{run}"
    );
    controller.stop().await;
}

#[tokio::test]
async fn clients_that_never_start_expire_at_the_deadline_and_unknown_names_are_reported() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let online = SimAgent::enroll(&controller, "online-1", json!({})).await;
    let offline = SimAgent::enroll(&controller, "offline-1", json!({})).await;
    let (status, body) = create(
        &admin,
        exec_task(
            "nightly",
            json!({ "clients": [online.name, offline.name, "no-such-client"] }),
            json!({ "deadlineSeconds": 2 }),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let order = eventually(Duration::from_secs(10), || async {
        orders(&online).await.into_iter().next()
    })
    .await;
    assert!(
        order["notAfter"].is_string() || order["notAfter"].is_number(),
        "{order}"
    );
    report(
        &online,
        json!([{ "id": order["id"], "state": "Succeeded", "exitCode": 0 }]),
    )
    .await;
    let run = wait_run(&admin, "nightly", |run| run["completedAt"].is_string()).await;
    assert_eq!(
        (
            run["targets"].clone(),
            run["succeeded"].clone(),
            run["expired"].clone()
        ),
        (json!(2), json!(1), json!(1)),
        "{run}"
    );
    let expired = results(&admin, "nightly").await;
    let offline_result = expired
        .iter()
        .find(|r| r["client"] == offline.name.as_str())
        .unwrap();
    assert_eq!(offline_result["state"], "Expired");
    assert!(
        offline_result["message"]
            .as_str()
            .unwrap()
            .contains("deadline"),
        "{offline_result}"
    );
    // The run's start names the client that does not exist.
    let (_, events) = admin
        .get("/apis/thinfleet.io/v1/events?kind=Task&name=nightly")
        .await;
    let text = events.to_string();
    assert!(
        text.contains("RunStarted") && text.contains("no-such-client"),
        "{text}"
    );
    assert!(text.contains("RunCompleted"), "{text}");
    controller.stop().await;
}

#[tokio::test]
async fn a_task_without_a_schedule_cannot_change_and_bad_ones_are_refused_with_their_field() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let task = exec_task("once", json!({ "selector": {} }), json!({}));
    let (status, _) = create(&admin, task.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = create(&admin, task.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let mut changed = task.clone();
    changed["spec"]["exec"]["command"] = json!(["reboot"]);
    let (status, body) = admin
        .apply(&serde_json::to_string(&changed).unwrap(), "")
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body.to_string().contains("task/once cannot change"),
        "{body}"
    );

    let mut bad = exec_task("bad", json!({}), json!({ "maxConcurrent": "0%" }));
    bad["spec"]["exec"]["timeoutSeconds"] = json!(0);
    let (status, body) = create(&admin, bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let text = body.to_string();
    for field in [
        "spec.targets",
        "spec.maxConcurrent",
        "spec.exec.timeoutSeconds",
    ] {
        assert!(text.contains(field), "{field} missing from {text}");
    }
    let (status, _) = admin.get("/apis/thinfleet.io/v1/tasks/bad").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = create(
        &admin,
        json!({ "apiVersion": "thinfleet.io/v1", "kind": "Task", "metadata": { "name": "cron" },
                "spec": { "targets": { "selector": {} }, "action": "reboot",
                          "schedule": { "cron": "0 7 * * 1-5", "timeZone": "Europe/Berlin" } } }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let scheduled = eventually(Duration::from_secs(10), || async {
        let task = get_task(&admin, "cron").await;
        task["status"]["nextRunTime"].is_string().then_some(task)
    })
    .await;
    assert!(
        scheduled["status"]["runs"].as_array().unwrap().is_empty(),
        "{scheduled}"
    );
    controller.stop().await;
}

#[tokio::test]
async fn results_and_open_orders_survive_a_controller_restart() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let a = SimAgent::enroll(&controller, "keep-a", json!({ "site": "x" })).await;
    SimAgent::enroll(&controller, "keep-b", json!({ "site": "x" })).await;
    let (status, _) = create(
        &admin,
        exec_task(
            "survive",
            json!({ "selector": { "matchLabels": { "site": "x" } } }),
            json!({}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let order = eventually(Duration::from_secs(10), || async {
        orders(&a).await.into_iter().next()
    })
    .await;
    report(
        &a,
        json!([{ "id": order["id"], "state": "Succeeded", "exitCode": 0, "stdout": "done" }]),
    )
    .await;
    let (dir, keep) = controller.stop_keep_data().await;
    let controller = TestController::start_in(&dir, |_| {}).await;
    let admin = Api::admin(&controller);
    // b's order is offered again (its session is renewed as an agent would).
    let b = SimAgent::enroll(&controller, "keep-b", json!({ "site": "x" })).await;
    let again = eventually(Duration::from_secs(10), || async {
        orders(&b).await.into_iter().next()
    })
    .await;
    assert_eq!(again["id"], order["id"]);
    let results = results(&admin, "survive").await;
    let a_result = results
        .iter()
        .find(|r| r["client"] == a.name.as_str())
        .unwrap();
    assert_eq!(
        (a_result["state"].clone(), a_result["stdout"].clone()),
        (json!("Succeeded"), json!("done"))
    );
    // Deleting the task withdraws its orders.
    let (status, body) = admin
        .request(Method::DELETE, "/apis/thinfleet.io/v1/tasks/survive", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually(Duration::from_secs(10), || async {
        orders(&b).await.is_empty().then_some(())
    })
    .await;
    controller.stop().await;
    drop(keep);
}

#[tokio::test]
async fn a_finished_task_goes_after_its_ttl() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let agent = SimAgent::enroll(&controller, "ttl-1", json!({})).await;
    let (status, body) = create(
        &admin,
        exec_task(
            "short-lived",
            json!({ "clients": [agent.name] }),
            json!({ "ttlSecondsAfterFinished": 1 }),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // A scheduled task cannot have one.
    let (status, body) = create(
        &admin,
        exec_task(
            "cron-ttl",
            json!({ "selector": {} }),
            json!({ "ttlSecondsAfterFinished": 1, "schedule": { "cron": "0 7 * * *" } }),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.to_string().contains("spec.ttlSecondsAfterFinished"),
        "{body}"
    );
    let order = eventually(Duration::from_secs(10), || async {
        orders(&agent).await.into_iter().next()
    })
    .await;
    // Not before it finished.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _) = admin.get("/apis/thinfleet.io/v1/tasks/short-lived").await;
    assert_eq!(status, StatusCode::OK, "deleted before its run finished");
    report(
        &agent,
        json!([{ "id": order["id"], "state": "Succeeded", "exitCode": 0 }]),
    )
    .await;
    eventually(Duration::from_secs(10), || async {
        let (status, _) = admin.get("/apis/thinfleet.io/v1/tasks/short-lived").await;
        (status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let (_, events) = admin
        .get("/apis/thinfleet.io/v1/events?kind=Task&name=short-lived")
        .await;
    assert!(events.to_string().contains("Deleted"), "{events}");
    controller.stop().await;
}

#[tokio::test]
async fn tasks_in_the_watched_directory_run_and_a_scheduled_one_can_change_there() {
    let manifests = tempfile::tempdir().unwrap();
    let dir = manifests.path().join("fleet");
    std::fs::create_dir_all(&dir).unwrap();
    let once = "apiVersion: thinfleet.io/v1\nkind: Task\nmetadata:\n  name: morning-check\nspec:\n  targets:\n    selector: { matchLabels: { floor: \"3\" } }\n  action: exec\n  exec: { command: [\"/usr/bin/true\"], timeoutSeconds: 20 }\n";
    let scheduled = |hour: u32| {
        format!(
            "apiVersion: thinfleet.io/v1\nkind: Task\nmetadata:\n  name: wake-floor-3\nspec:\n  targets:\n    selector: {{ matchLabels: {{ floor: \"3\" }} }}\n  action: wake\n  schedule: {{ cron: \"0 {hour} * * 1-5\", timeZone: Europe/Berlin }}\n"
        )
    };
    std::fs::write(dir.join("once.yaml"), once).unwrap();
    std::fs::write(dir.join("wake.yaml"), scheduled(7)).unwrap();
    let watched = dir.clone();
    // The agent enrols first: the directory is applied at start.
    let controller = TestController::start_with(move |config| {
        config.manifests_dir = Some(watched);
    })
    .await;
    let admin = Api::admin(&controller);
    let agent = SimAgent::enroll(&controller, "floor3-a", json!({ "floor": "3" })).await;
    // The one-off task started when the directory was applied, before the agent enrolled: no
    // target. Recreated under a new name, it reaches the agent.
    let run = wait_run(&admin, "morning-check", |run| {
        run["completedAt"].is_string()
    })
    .await;
    assert_eq!(run["targets"], 0, "{run}");
    std::fs::write(
        dir.join("once.yaml"),
        once.replace("morning-check", "morning-check-2"),
    )
    .unwrap();
    let order = eventually(Duration::from_secs(20), || async {
        orders(&agent).await.into_iter().next()
    })
    .await;
    assert_eq!(order["task"], "morning-check-2");
    let task = get_task(&admin, "morning-check-2").await;
    assert!(
        task["metadata"]["managedBy"]
            .as_str()
            .unwrap()
            .starts_with("dir:"),
        "{task}"
    );
    // The scheduled one waits for 07:00 Berlin on a weekday; its time can change in git.
    let first = eventually(Duration::from_secs(10), || async {
        let task = get_task(&admin, "wake-floor-3").await;
        task["status"]["nextRunTime"].as_str().map(str::to_string)
    })
    .await;
    std::fs::write(dir.join("wake.yaml"), scheduled(8)).unwrap();
    let second = eventually(Duration::from_secs(20), || async {
        let task = get_task(&admin, "wake-floor-3").await;
        let next = task["status"]["nextRunTime"].as_str().map(str::to_string)?;
        (next != first).then_some(next)
    })
    .await;
    let (first, second): (tc_api::Timestamp, tc_api::Timestamp) = (
        serde_json::from_value(json!(first)).unwrap(),
        serde_json::from_value(json!(second)).unwrap(),
    );
    // 07:00 became 08:00: an hour later on the same day, or (between 07:00 and 08:00) today's
    // 08:00 before the next 07:00.
    let hours = (second.unix_millis().abs_diff(first.unix_millis()) % (24 * 3_600_000)) / 3_600_000;
    assert!(hours == 1 || hours == 23, "{first} → {second}");
    controller.stop().await;
}

#[tokio::test]
async fn with_max_concurrent_online_clients_take_their_turns_before_offline_ones() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    // `a-offline` sorts first but never heartbeats (enrolled, not online).
    let _offline = SimAgent::enroll(&controller, "a-offline", json!({ "row": "1" })).await;
    let mut online = SimAgent::enroll(&controller, "b-online", json!({ "row": "1" })).await;
    online.heartbeat().await;
    let (status, body) = create(
        &admin,
        exec_task(
            "one-at-a-time",
            json!({ "selector": { "matchLabels": { "row": "1" } } }),
            json!({ "maxConcurrent": 1 }),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let order = eventually(Duration::from_secs(10), || async {
        orders(&online).await.into_iter().next()
    })
    .await;
    assert_eq!(order["task"], "one-at-a-time");
    controller.stop().await;
}

#[tokio::test]
async fn a_target_that_started_and_never_reported_expires_and_a_late_result_still_counts() {
    let controller = TestController::start_with(|config| {
        config.task_result_grace = Duration::from_millis(500);
    })
    .await;
    let admin = Api::admin(&controller);
    let agent = SimAgent::enroll(&controller, "gone-1", json!({})).await;
    let (status, body) = create(
        &admin,
        exec_task(
            "vanishing",
            json!({ "clients": [agent.name] }),
            json!({ "deadlineSeconds": 1, "exec": { "command": ["true"], "timeoutSeconds": 1 } }),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let order = eventually(Duration::from_secs(10), || async {
        orders(&agent).await.into_iter().next()
    })
    .await;
    // It starts, then its agent is gone: the run completes anyway, after the deadline, the
    // command's timeout and the grace.
    report(&agent, json!([{ "id": order["id"], "state": "Running" }])).await;
    let run = eventually(Duration::from_secs(20), || async {
        let task = get_task(&admin, "vanishing").await;
        let run = task["status"]["runs"][0].clone();
        run["completedAt"].is_string().then_some(run)
    })
    .await;
    assert_eq!(
        (run["expired"].clone(), run["running"].clone()),
        (json!(1), json!(0)),
        "{run}"
    );
    let result = results(&admin, "vanishing").await.remove(0);
    assert!(
        result["message"]
            .as_str()
            .unwrap()
            .contains("no result came"),
        "{result}"
    );
    // A late `Running` changes nothing; a late result is taken.
    let (_, late) = report(&agent, json!([{ "id": order["id"], "state": "Running" }])).await;
    assert_eq!(late["accepted"], 0, "{late}");
    let (_, late) = report(
        &agent,
        json!([{ "id": order["id"], "state": "Succeeded", "exitCode": 0 }]),
    )
    .await;
    assert_eq!(late["accepted"], 1, "{late}");
    let result = results(&admin, "vanishing").await.remove(0);
    assert_eq!(result["state"], "Succeeded", "{result}");
    controller.stop().await;
}
