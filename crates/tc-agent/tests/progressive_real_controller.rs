//! Progressive delivery end to end: real `tc-agent` binaries against a real controller in this
//! process. An update staged outside a maintenance window is activated only once the window
//! opens, also with the controller stopped by then; activate-now overrides `onReboot`; a canary
//! step holds the update at one member until the rollout is resumed; a release failing past the
//! group's threshold reaches no further member, not even one that enrols afterwards.
//!
//! Everything listens on and talks to 127.0.0.1 only; every wait has a deadline; agents are
//! killed when a test ends.

mod common;

use std::path::Path;
use std::time::Duration;

use common::real::{Admin, RealAgent, WAIT};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tc_testkit::TestController;

const PACKAGE: &str = "ward-kiosk";

/// The version the agent in `state` runs (`current` of the package), if any.
fn running(state: &Path) -> Option<String> {
    std::fs::read_link(state.join("packages").join(PACKAGE).join("current"))
        .ok()
        .map(|target| target.to_string_lossy().into_owned())
}

async fn publish(admin: &Admin, version: &str) {
    admin
        .publish(PACKAGE, version, &common::package_zip(version))
        .await;
}

async fn group(admin: &Admin, name: &str, rollout: &str) {
    admin
        .apply(&format!(
            "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: {name}\nspec:\n  selector: {{ matchLabels: {{ ward: {name} }} }}\n  packages:\n    - {{ name: {PACKAGE}, version: \"^1\" }}\n  rollout:\n    maxUnavailable: 100%\n{rollout}"
        ))
        .await;
}

/// Waits until `check` holds for what the agents run.
async fn wait_running(agents: &[&RealAgent], check: impl Fn(&[Option<String>]) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let versions: Vec<Option<String>> = agents.iter().map(|a| running(&a.state)).collect();
        if check(&versions) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agents run {versions:?}:\n{}",
            agents.iter().map(|a| a.log_tail()).collect::<String>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn group_status(admin: &Admin, name: &str) -> Value {
    let (status, group) = admin
        .call(
            Method::GET,
            &format!("/apis/thinfleet.io/v1/clientgroups/{name}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{group}");
    group["status"].clone()
}

/// Waits until the group's status satisfies `check`; returns it.
async fn wait_status(admin: &Admin, name: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = group_status(admin, name).await;
        if check(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group {name}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_update_staged_outside_its_window_is_activated_when_the_window_opens_with_the_controller_gone()
 {
    let controller = TestController::start().await;
    let admin = Admin::new(&controller);
    let root = tempfile::tempdir().unwrap();
    publish(&admin, "1.0.0").await;
    // A daily window opening at the next whole minute at least 20 s away (UTC), for an hour.
    let now = tc_proto::Timestamp::now().unix_millis() / 1000;
    let mut opens = (now / 60 + 1) * 60;
    if opens - now < 20 {
        opens += 60;
    }
    let (hour, minute) = ((opens / 3600) % 24, (opens / 60) % 60);
    group(
        &admin,
        "night",
        &format!(
            "    maintenanceWindows: [{{ schedule: \"{minute} {hour} * * *\", duration: 1h, timeZone: UTC }}]\n"
        ),
    )
    .await;
    let agent = RealAgent::start(&controller, root.path(), "bed-1", &["ward=night"], "").await;
    // A first install is not held back.
    wait_running(&[&agent], |v| v[0].as_deref() == Some("1.0.0")).await;

    publish(&admin, "1.1.0").await;
    let status = wait_status(&admin, "night", |s| s["rollout"]["staged"] == 1).await;
    let activates: tc_proto::Timestamp = status["rollout"]["activatesAt"]
        .as_str()
        .unwrap_or_else(|| panic!("no activation time: {status:#}"))
        .parse()
        .unwrap();
    assert_eq!(activates.unix_millis() / 1000, opens, "{status:#}");
    assert_eq!(running(&agent.state).as_deref(), Some("1.0.0"));
    // The controller is gone before the window opens; the agent activates on its own.
    let (_data, _keep) = controller.stop_keep_data().await;
    assert!(
        tc_proto::Timestamp::now().unix_millis() / 1000 < opens,
        "the controller must stop before the window opens"
    );
    // Up to the window (which may be more than a minute away), it keeps the old version; from
    // its opening, it has the new one within the usual wait.
    let until_open = (opens * 1000).saturating_sub(tc_proto::Timestamp::now().unix_millis());
    tokio::time::sleep(Duration::from_millis(until_open.saturating_sub(1000))).await;
    assert_eq!(running(&agent.state).as_deref(), Some("1.0.0"));
    wait_running(&[&agent], |v| v[0].as_deref() == Some("1.1.0")).await;
    assert!(
        tc_proto::Timestamp::now().unix_millis() / 1000 >= opens,
        "activated before its window"
    );
}

#[tokio::test]
async fn activate_now_overrides_on_reboot() {
    let controller = TestController::start().await;
    let admin = Admin::new(&controller);
    let root = tempfile::tempdir().unwrap();
    publish(&admin, "1.0.0").await;
    group(&admin, "firmware", "    activation: onReboot\n").await;
    let agent = RealAgent::start(&controller, root.path(), "thin-1", &["ward=firmware"], "").await;
    wait_running(&[&agent], |v| v[0].as_deref() == Some("1.0.0")).await;
    publish(&admin, "1.1.0").await;
    wait_status(&admin, "firmware", |s| s["rollout"]["staged"] == 1).await;
    // Staged, it waits for the next boot.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(running(&agent.state).as_deref(), Some("1.0.0"));
    let (status, answer) = admin
        .call(
            Method::POST,
            "/apis/thinfleet.io/v1/clientgroups/firmware/activate-now",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    wait_running(&[&agent], |v| v[0].as_deref() == Some("1.1.0")).await;
    wait_status(&admin, "firmware", |s| {
        s["rollout"]["updated"] == 1 && s["rollout"]["staged"].is_null()
    })
    .await;
    controller.stop().await;
}

#[tokio::test]
async fn a_canary_step_holds_the_update_at_one_member_until_resumed() {
    let controller = TestController::start().await;
    let admin = Admin::new(&controller);
    let root = tempfile::tempdir().unwrap();
    publish(&admin, "1.0.0").await;
    group(
        &admin,
        "icu",
        "    steps: [{clients: 1}, {pause: {}}, {percent: 100}]\n",
    )
    .await;
    let canary = RealAgent::start(
        &controller,
        root.path(),
        "icu-1",
        &["ward=icu", "thinfleet.io/canary=true"],
        "",
    )
    .await;
    let other = RealAgent::start(&controller, root.path(), "icu-2", &["ward=icu"], "").await;
    wait_running(&[&canary, &other], |v| {
        v.iter().all(|v| v.as_deref() == Some("1.0.0"))
    })
    .await;
    publish(&admin, "1.1.0").await;
    wait_status(&admin, "icu", |s| {
        s["rollout"]["revision"] == 2 && s["rollout"]["step"] == 1
    })
    .await;
    wait_running(&[&canary], |v| v[0].as_deref() == Some("1.1.0")).await;
    // Paused at the step: the other member keeps the old version.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(running(&other.state).as_deref(), Some("1.0.0"));
    let (status, answer) = admin
        .call(
            Method::POST,
            "/apis/thinfleet.io/v1/clientgroups/icu/resume",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    wait_running(&[&other], |v| v[0].as_deref() == Some("1.1.0")).await;
    controller.stop().await;
}

#[tokio::test]
async fn past_the_failure_threshold_the_release_reaches_no_further_member_not_even_a_new_one() {
    let controller = TestController::start().await;
    let admin = Admin::new(&controller);
    let root = tempfile::tempdir().unwrap();
    publish(&admin, "1.0.0").await;
    admin
        .apply(&format!(
            "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: ward\nspec:\n  selector: {{ matchLabels: {{ ward: ward }} }}\n  packages:\n    - {{ name: {PACKAGE}, version: \"^1\" }}\n  rollout:\n    maxUnavailable: 1\n    failureThreshold: 1\n"
        ))
        .await;
    let mut agents = vec![];
    for machine in ["bed-1", "bed-2", "bed-3"] {
        agents.push(RealAgent::start(&controller, root.path(), machine, &["ward=ward"], "").await);
    }
    let all: Vec<&RealAgent> = agents.iter().collect();
    wait_running(&all, |v| v.iter().all(|v| v.as_deref() == Some("1.0.0"))).await;
    // 1.1.0 fails its health check on every client that installs it (and rolls back).
    let sha = admin.upload(&common::package_zip("1.1.0")).await;
    admin
        .apply(&format!(
            "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata:\n  name: {PACKAGE}-1.1.0\nspec:\n  package: {PACKAGE}\n  version: 1.1.0\n  artifact:\n    sha256: {sha}\n  hooks:\n    healthCheck: {{ command: [/bin/sh, -c, \"exit 1\"] }}\n"
        ))
        .await;
    // One failure is tolerated (and holds no room under maxUnavailable 1), so a second member
    // tries it; the second failure is past the threshold: the third keeps 1.0.0 untouched.
    let status = wait_status(&admin, "ward", |s| {
        s["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Progressing" && c["reason"] == "FailureThresholdExceeded")
    })
    .await;
    assert_eq!(status["failed"], 2, "{status:#}");
    wait_running(&all, |v| v.iter().all(|v| v.as_deref() == Some("1.0.0"))).await;
    // A member that enrols now does not get the failing release.
    let late = RealAgent::start(&controller, root.path(), "bed-4", &["ward=ward"], "").await;
    wait_status(&admin, "ward", |s| s["desired"] == 4).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(running(&late.state), None, "{}", late.log_tail());
    let status = group_status(&admin, "ward").await;
    assert_eq!(status["failed"], 2, "{status:#}");
    assert_eq!(
        status["rollout"]["failed"], 2,
        "the rollout counts its failed members: {status:#}"
    );
    controller.stop().await;
}
