//! Progressive delivery with a real controller and simulated agents: canary steps and pauses,
//! the failure threshold with members that enrol afterwards, history and undo, and the
//! activation (maintenance windows, onReboot, activate-now) agents are served.

mod common;

use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const STEPPED: &str = "100%\n    steps: [{clients: 1}, {pause: {}}, {percent: 100}]";

fn versions_of(agents: &[SimAgent]) -> Vec<Option<String>> {
    agents.iter().map(|a| installed(a, "kiosk")).collect()
}

async fn post(admin: &Api, path: &str) -> (StatusCode, Value) {
    admin.request(Method::POST, path, None).await
}

async fn history(admin: &Api, group: &str) -> Value {
    let (status, history) = admin
        .get(&format!(
            "/apis/thinfleet.io/v1/clientgroups/{group}/rollouts"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    history
}

#[tokio::test]
async fn a_canary_step_stops_at_one_member_until_resumed() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    publish(&admin, "kiosk", "1.0.0").await;
    let (status, result) = admin
        .apply(&group_yaml("ward", "{}", &[("kiosk", "^1")], STEPPED), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let mut agents = vec![];
    for (name, labels) in [
        ("ward-1", json!({})),
        ("ward-2", json!({})),
        ("ward-3", json!({"thinfleet.io/canary": "true"})),
        ("ward-4", json!({})),
    ] {
        agents.push(SimAgent::enroll(&controller, name, labels).await);
    }
    // The group's first rollout installs on every member: there is nothing to compare with.
    settle(&mut agents, &[], 20).await;
    assert_eq!(versions_of(&agents), vec![Some("1.0.0".to_string()); 4]);

    publish(&admin, "kiosk", "1.1.0").await;
    // The canary takes the new version, then the rollout waits at the pause.
    settle(&mut agents, &[], 20).await;
    let paused = eventually(Duration::from_secs(20), || async {
        let g = group(&admin, "ward").await;
        (condition(&g, "Progressing")["reason"] == "StepPaused").then_some(g)
    })
    .await;
    settle(&mut agents, &[], 10).await;
    assert_eq!(
        versions_of(&agents),
        ["1.0.0", "1.0.0", "1.1.0", "1.0.0"]
            .map(|v| Some(v.to_string()))
            .to_vec()
    );
    let rollout = &paused["status"]["rollout"];
    assert_eq!(
        (&rollout["revision"], &rollout["step"], &rollout["steps"]),
        (&json!(2), &json!(1), &json!(3)),
        "{rollout}"
    );
    assert!(
        rollout["message"]
            .as_str()
            .unwrap()
            .contains("tcadm rollout resume clientgroup ward"),
        "{rollout}"
    );

    let (status, resumed) = post(&admin, "/apis/thinfleet.io/v1/clientgroups/ward/resume").await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert!(
        resumed["message"].as_str().unwrap().contains("step 2 of 3"),
        "{resumed}"
    );
    // A second resume has no pause to lift.
    let (status, again) = post(&admin, "/apis/thinfleet.io/v1/clientgroups/ward/resume").await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    settle(&mut agents, &[], 20).await;
    assert_eq!(versions_of(&agents), vec![Some("1.1.0".to_string()); 4]);
    let done = eventually(Duration::from_secs(10), || async {
        let g = group(&admin, "ward").await;
        (condition(&g, "Progressing")["reason"] == "Complete").then_some(g)
    })
    .await;
    assert_eq!(done["status"]["rollout"]["updated"], 4, "{done}");
    let history = history(&admin, "ward").await;
    let outcomes: Vec<(Value, Value)> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["revision"].clone(), r["outcome"].clone()))
        .collect();
    assert_eq!(
        outcomes,
        [(json!(2), json!("Complete")), (json!(1), json!("Complete"))]
    );
    assert_eq!(history["items"][0]["versions"], json!({"kiosk": "1.1.0"}));
    controller.stop().await;
}

#[tokio::test]
async fn a_timed_pause_ends_by_itself() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    publish(&admin, "kiosk", "1.0.0").await;
    let yaml = group_yaml(
        "lobby",
        "{}",
        &[("kiosk", "^1")],
        "100%\n    steps: [{clients: 1}, {pause: {duration: 2s}}, {percent: 100}]",
    );
    assert_eq!(admin.apply(&yaml, "").await.0, StatusCode::OK);
    let mut agents = vec![];
    for name in ["lobby-1", "lobby-2", "lobby-3"] {
        agents.push(SimAgent::enroll(&controller, name, json!({})).await);
    }
    settle(&mut agents, &[], 20).await;
    publish(&admin, "kiosk", "1.1.0").await;
    // Without anyone resuming, every member has the new version once the pause ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        settle(&mut agents, &[], 3).await;
        if versions_of(&agents) == vec![Some("1.1.0".to_string()); 3] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pause never ended: {:?}, {}",
            versions_of(&agents),
            group(&admin, "lobby").await["status"]
        );
    }
    let events = admin
        .get("/apis/thinfleet.io/v1/events?kind=ClientGroup&name=lobby")
        .await
        .1;
    assert!(
        events.to_string().contains("StepReached"),
        "the steps are in the events: {events}"
    );
    controller.stop().await;
}

#[tokio::test]
async fn past_the_failure_threshold_no_member_gets_the_release_not_even_a_new_one() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    publish(&admin, "kiosk", "1.0.0").await;
    let yaml = |req: &str| {
        group_yaml(
            "ward",
            "{}",
            &[("kiosk", req)],
            "1\n    failureThreshold: 1",
        )
    };
    assert_eq!(admin.apply(&yaml("^1"), "").await.0, StatusCode::OK);
    let mut agents = vec![];
    for name in ["bed-1", "bed-2", "bed-3"] {
        agents.push(SimAgent::enroll(&controller, name, json!({})).await);
    }
    settle(&mut agents, &[], 20).await;
    publish(&admin, "kiosk", "1.1.0").await;
    // bed-1 fails (tolerated: one failure, and it holds no room under maxUnavailable 1), so
    // bed-2 gets it and fails too: past the threshold, bed-3 keeps 1.0.0.
    settle(&mut agents, &[("kiosk", "1.1.0")], 30).await;
    let g = eventually(Duration::from_secs(10), || async {
        let g = group(&admin, "ward").await;
        (condition(&g, "Progressing")["reason"] == "FailureThresholdExceeded").then_some(g)
    })
    .await;
    let failed: Vec<bool> = agents
        .iter()
        .map(|a| a.packages.iter().any(|p| p["state"] == "Failed"))
        .collect();
    assert_eq!(failed, [true, true, false], "{}", g["status"]);
    assert_eq!(versions_of(&agents)[2].as_deref(), Some("1.0.0"));
    // A member that enrols now does not get the failing release.
    let mut late = vec![SimAgent::enroll(&controller, "bed-4", json!({})).await];
    settle(&mut late, &[], 10).await;
    let desired = late[0].heartbeat().await;
    assert!(
        !desired.to_string().contains("1.1.0"),
        "the failing release reached a new member: {desired}"
    );
    let history = history(&admin, "ward").await;
    assert_eq!(history["items"][0]["outcome"], "Failed", "{history}");
    controller.stop().await;
}

#[tokio::test]
async fn undo_returns_to_the_last_completed_rollout_until_the_spec_changes() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    publish(&admin, "kiosk", "1.0.0").await;
    let yaml = |req: &str| group_yaml("desk", "{}", &[("kiosk", req)], "100%");
    assert_eq!(admin.apply(&yaml(">=1"), "").await.0, StatusCode::OK);
    let mut agents = vec![
        SimAgent::enroll(&controller, "desk-1", json!({})).await,
        SimAgent::enroll(&controller, "desk-2", json!({})).await,
    ];
    settle(&mut agents, &[], 20).await;
    // Nothing completed before the current rollout: nothing to undo.
    let (status, refused) = post(&admin, "/apis/thinfleet.io/v1/clientgroups/desk/undo").await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    publish(&admin, "kiosk", "2.0.0").await;
    settle(&mut agents, &[], 20).await;
    assert_eq!(versions_of(&agents), vec![Some("2.0.0".to_string()); 2]);

    let (status, undone) = post(&admin, "/apis/thinfleet.io/v1/clientgroups/desk/undo").await;
    assert_eq!(status, StatusCode::OK, "{undone}");
    assert_eq!(undone["versions"], json!({"kiosk": "1.0.0"}));
    settle(&mut agents, &[], 20).await;
    assert_eq!(versions_of(&agents), vec![Some("1.0.0".to_string()); 2]);
    let g = group(&admin, "desk").await;
    assert_eq!(
        g["status"]["rollout"]["undoneTo"],
        json!({"kiosk": "1.0.0"}),
        "{g}"
    );
    let history = history(&admin, "desk").await;
    let outcomes: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes[1..], ["Undone", "Complete"], "{history}");
    assert_eq!(history["items"][0]["revision"], 3);

    // The undo holds until the group's spec changes.
    assert_eq!(admin.apply(&yaml(">=2"), "").await.0, StatusCode::OK);
    settle(&mut agents, &[], 20).await;
    assert_eq!(versions_of(&agents), vec![Some("2.0.0".to_string()); 2]);
    controller.stop().await;
}

#[tokio::test]
async fn members_are_served_their_windows_and_activate_now_overrides_them() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    publish(&admin, "kiosk", "1.0.0").await;
    let windowed = group_yaml(
        "night",
        "{ matchLabels: { shift: night } }",
        &[("kiosk", "^1")],
        "1\n    maintenanceWindows: [{schedule: \"0 22 * * *\", duration: 6h, timeZone: Europe/Berlin}]",
    );
    let reboot = group_yaml(
        "firmware",
        "{ matchLabels: { shift: day } }",
        &[("kiosk", "^1")],
        "1\n    activation: onReboot",
    );
    let plain = group_yaml("plain", "{ matchLabels: { shift: none } }", &[], "1");
    let (status, result) = admin.apply(&format!("{windowed}{reboot}{plain}"), "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let mut night = SimAgent::enroll(&controller, "n-1", json!({"shift": "night"})).await;
    let mut day = SimAgent::enroll(&controller, "d-1", json!({"shift": "day"})).await;
    let desired = night
        .wait_for(|d| d["activation"]["windowed"] == true)
        .await;
    let before = desired["revision"].as_u64().unwrap();
    let windows = desired["activation"]["windows"].as_array().unwrap();
    assert!(
        windows.len() >= 13,
        "two weeks of nightly windows: {desired}"
    );
    // 22:00 in Berlin is 21:00 or 20:00 UTC, and each lasts six hours.
    for window in windows {
        let start: tc_api::Timestamp = window["start"].as_str().unwrap().parse().unwrap();
        let end: tc_api::Timestamp = window["end"].as_str().unwrap().parse().unwrap();
        assert!(window["start"].as_str().unwrap().contains("T2"), "{window}");
        assert!(
            end.since(start) <= Duration::from_secs(6 * 3600),
            "{window}"
        );
    }
    let desired = day.wait_for(|d| d["activation"]["onReboot"] == true).await;
    assert!(desired["activation"]["now"].is_null(), "{desired}");

    let (status, refused) = post(
        &admin,
        "/apis/thinfleet.io/v1/clientgroups/plain/activate-now",
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let (status, answer) = post(
        &admin,
        "/apis/thinfleet.io/v1/clientgroups/night/activate-now",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let desired = night.wait_for(|d| d["activation"]["now"] == true).await;
    assert!(
        desired["revision"].as_u64().unwrap() > before,
        "a new revision carries the override to a waiting agent: {desired}"
    );
    let g = group(&admin, "night").await;
    assert!(
        g["status"]["rollout"]["activateNow"]["by"].is_string(),
        "{g}"
    );
    controller.stop().await;
}

#[tokio::test]
async fn a_bad_rollout_spec_is_refused_with_where_and_what_and_changes_nothing() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    for (rollout, field, says) in [
        (
            "1\n    maintenanceWindows: [{schedule: \"0 25 * * *\", duration: 6h}]",
            "spec.rollout.maintenanceWindows[0].schedule",
            "hour",
        ),
        (
            "1\n    maintenanceWindows: [{schedule: \"0 22 * * *\", duration: 6h, timeZone: Mars/Olympus}]",
            "spec.rollout.maintenanceWindows[0].timeZone",
            "Mars/Olympus",
        ),
        (
            "1\n    maintenanceWindows: [{schedule: \"0 22 * * *\", duration: soon}]",
            "spec.rollout.maintenanceWindows[0].duration",
            "soon",
        ),
        (
            "1\n    steps: [{percent: 50}, {percent: 10}]",
            "spec.rollout.steps[1].percent",
            "less than",
        ),
        (
            "1\n    steps: [{clients: 1, percent: 5}]",
            "spec.rollout.steps[0]",
            "exactly one",
        ),
        (
            "1\n    activation: onReboot\n    maintenanceWindows: [{schedule: \"0 22 * * *\", duration: 1h}]",
            "spec.rollout.activation",
            "cannot be combined",
        ),
    ] {
        let yaml = group_yaml("bad", "{}", &[], rollout);
        let (status, refused) = admin.apply(&yaml, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{rollout}: {refused}");
        let text = refused.to_string();
        assert!(text.contains(field), "{rollout}: no {field} in {refused}");
        assert!(text.contains(says), "{rollout}: no {says} in {refused}");
        let (status, _) = admin.get("/apis/thinfleet.io/v1/clientgroups/bad").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{rollout} created the group");
    }
    controller.stop().await;
}

/// The README's YAML code block that contains `marker`.
fn readme_example(marker: &str) -> &'static str {
    let readme = include_str!("../../../README.md");
    let at = readme.find(marker).expect("the README's example");
    let start = readme[..at].rfind("```yaml").expect("its code block") + "```yaml".len();
    let end = at + readme[at..].find("```").expect("its end");
    &readme[start..end]
}

/// The README's hospital-ward group is a valid manifest and means what the README says.
#[tokio::test]
async fn the_readme_ward_example_applies() {
    let example = readme_example("name: ward-3b");
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let (status, result) = admin.apply(example, "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let g = group(&admin, "ward-3b").await;
    let rollout = &g["spec"]["rollout"];
    assert_eq!(rollout["steps"].as_array().unwrap().len(), 5, "{rollout}");
    assert_eq!(rollout["failureThreshold"], 2, "{rollout}");
    assert_eq!(
        rollout["maintenanceWindows"][0]["timeZone"], "Europe/Berlin",
        "{rollout}"
    );
    controller.stop().await;
}

/// The README's agent-update group is a valid manifest: the canary step, then a pause.
#[tokio::test]
async fn the_readme_agent_update_example_applies() {
    let example = readme_example("name: agents\n");
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let (status, result) = admin.apply(example, "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let g = group(&admin, "agents").await;
    assert_eq!(g["spec"]["packages"][0]["name"], "thinfleet-agent", "{g}");
    let expression = &g["spec"]["selector"]["matchExpressions"][0];
    assert_eq!(expression["operator"], "Ge", "{g}");
    let rollout = &g["spec"]["rollout"];
    assert_eq!(rollout["steps"][0]["clients"], 1, "{rollout}");
    assert!(rollout["steps"][1]["pause"].is_object(), "{rollout}");
    assert_eq!(rollout["failureThreshold"], 1, "{rollout}");
    controller.stop().await;
}
