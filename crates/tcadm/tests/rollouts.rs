//! `tcadm rollout history|undo|activate-now|status|resume` for progressive delivery, run as the
//! real binary against a real controller on `127.0.0.1:0` with simulated members that install
//! whatever they are given.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use tc_proto::{
    EnrollResponse, HeartbeatRequest, HeartbeatResponse, Inventory, PROTOCOL_VERSION,
    PackageReport, PackageState, Timestamp,
};
use tc_testkit::{PackageFile, build_zip};

use common::{Fleet, Run};

/// A simulated member: enrolled, it heartbeats and reports every package it is given installed.
struct Member {
    name: String,
    token: String,
}

impl Member {
    fn enroll(fleet: &Fleet, machine: &str, site: &str) -> Member {
        let identity = tc_testkit::protocol::TestIdentity::new(machine);
        let body = identity.enroll_body(
            fleet.controller.bootstrap_token(),
            machine,
            machine,
            serde_json::json!({ "site": site }),
        );
        let enrolled: EnrollResponse = post(fleet, "/agent/v1/enroll", None, &body);
        Member {
            name: enrolled.client_name,
            token: enrolled.session.expect("a session for a new client").token,
        }
    }

    /// One heartbeat that reports the packages of `given` (the last answer) installed; answers
    /// what the member is given now.
    fn heartbeat(&self, fleet: &Fleet, given: Option<&HeartbeatResponse>) -> HeartbeatResponse {
        self.heartbeat_as(fleet, given, PackageState::Installed)
    }

    /// One heartbeat that reports the packages of `given` in `state` (`Installed`, `Failed`).
    fn heartbeat_as(
        &self,
        fleet: &Fleet,
        given: Option<&HeartbeatResponse>,
        state: PackageState,
    ) -> HeartbeatResponse {
        let installed = state == PackageState::Installed;
        let packages = given
            .into_iter()
            .flat_map(|g| &g.desired.packages)
            .map(|p| PackageReport {
                name: p.name.clone(),
                version: p.version.clone(),
                state,
                active_version: installed.then(|| p.version.clone()),
                message: (!installed).then(|| "health check exited 1".into()),
                since: Timestamp::now(),
                staged: None,
            })
            .collect();
        let inventory = Inventory {
            hostname: self.name.clone(),
            os_name: "Debian GNU/Linux".into(),
            os_version: "12".into(),
            arch: "x86_64".into(),
            agent_version: "0.1.0".into(),
            ..Default::default()
        };
        post(
            fleet,
            "/agent/v1/heartbeat",
            Some(&self.token),
            &HeartbeatRequest {
                protocol_version: PROTOCOL_VERSION,
                observed_revision: given.map_or(0, |g| g.desired.revision),
                packages,
                inventory_hash: tc_proto::inventory_hash(&inventory),
                inventory: Some(inventory),
                load: Default::default(),
                decommissioned: false,
            },
        )
    }
}

fn post<T: serde::de::DeserializeOwned>(
    fleet: &Fleet,
    path: &str,
    token: Option<&str>,
    body: &impl serde::Serialize,
) -> T {
    let mut request = fleet
        .https_client()
        .post(format!("{}{path}", fleet.controller.url()))
        .timeout(Duration::from_secs(30))
        .header("content-type", "application/json")
        .body(serde_json::to_string(body).unwrap());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().expect("the controller answers");
    let status = response.status();
    let text = response.text().unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

/// Simulated members and what each was last given.
struct Members {
    members: Vec<(Member, HeartbeatResponse)>,
}

impl Members {
    fn enroll(fleet: &Fleet, machines: &[&str], site: &str) -> Members {
        let members = machines
            .iter()
            .map(|machine| {
                let member = Member::enroll(fleet, machine, site);
                let given = member.heartbeat(fleet, None);
                (member, given)
            })
            .collect();
        Members { members }
    }

    /// Every member heartbeats once, reporting what it was given installed.
    fn converge(&mut self, fleet: &Fleet) {
        self.converge_failing(fleet, &[]);
    }

    /// Every member heartbeats once: those at the indexes `failing` report what they were given
    /// failed, the others installed.
    fn converge_failing(&mut self, fleet: &Fleet, failing: &[usize]) {
        for (index, (member, given)) in self.members.iter_mut().enumerate() {
            let state = if failing.contains(&index) {
                PackageState::Failed
            } else {
                PackageState::Installed
            };
            *given = member.heartbeat_as(fleet, Some(given), state);
        }
    }

    /// The version of `package` each member is given now.
    fn given(&self, package: &str) -> Vec<Option<String>> {
        self.members
            .iter()
            .map(|(_, given)| {
                given
                    .desired
                    .packages
                    .iter()
                    .find(|p| p.name == package)
                    .map(|p| p.version.clone())
            })
            .collect()
    }
}

/// Polls `check` (every 100 ms, at most 30 s) until it returns `Some`.
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

fn tcadm(fleet: &Fleet, args: &[&str]) -> Run {
    Run::of(&mut fleet.command(args))
}

/// Asserts the exit code and that standard error is one `error:` line; answers it.
#[track_caller]
fn fails(run: &Run, code: i32) -> String {
    assert_eq!(run.code, code, "unexpected exit code: {run:#?}");
    assert!(
        run.stderr.starts_with("error: ") && run.stderr.lines().count() == 1,
        "stderr is not one error line: {run:#?}"
    );
    run.stderr.trim_end().to_string()
}

/// Uploads `kiosk-VERSION.zip` and applies its release.
fn publish(fleet: &Fleet, version: &str) {
    let file = format!("kiosk-{version}.zip");
    let zip = build_zip(&[PackageFile {
        path: "README",
        content: format!("kiosk {version}").as_bytes(),
        mode: 0o644,
    }]);
    std::fs::write(fleet.dir.path().join(&file), zip).unwrap();
    let release = tcadm(fleet, &["push", &file]).ok().to_string();
    let manifest = format!("release-{version}.yaml");
    std::fs::write(fleet.dir.path().join(&manifest), release).unwrap();
    tcadm(fleet, &["apply", "-f", &manifest]).ok();
}

/// Applies group `name` selecting `site=NAME`, requiring kiosk `^1.0`, with `rollout` (YAML
/// lines indented under `spec.rollout`).
fn apply_group(fleet: &Fleet, name: &str, rollout: &str) {
    let manifest = format!(
        "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: {name}\nspec:\n  \
         selector:\n    matchLabels:\n      site: {name}\n  packages:\n    - name: kiosk\n      \
         version: \"^1.0\"\n{rollout}"
    );
    let file = format!("{name}.yaml");
    std::fs::write(fleet.dir.path().join(&file), manifest).unwrap();
    tcadm(fleet, &["apply", "-f", &file]).ok();
}

fn group_json(fleet: &Fleet, name: &str) -> Value {
    serde_json::from_str(tcadm(fleet, &["get", "cg", name, "-o", "json"]).ok()).expect("JSON")
}

fn history_json(fleet: &Fleet, name: &str) -> Value {
    let run = tcadm(fleet, &["rollout", "history", "cg", name, "-o", "json"]);
    serde_json::from_str(run.ok()).expect("JSON")
}

/// Converges the members until each is given kiosk `version` and the group's current rollout is
/// `revision` and complete (a rollout is complete at once while the group has no members yet).
fn roll_out(fleet: &Fleet, members: &mut Members, name: &str, (revision, version): (u64, &str)) {
    eventually(&format!("rollout {revision} of {name} to complete"), || {
        members.converge(fleet);
        let given = members.given("kiosk");
        let history = history_json(fleet, name);
        let current = &history["items"][0];
        (given.iter().all(|g| g.as_deref() == Some(version))
            && current["revision"] == revision
            && current["outcome"] == "Complete")
            .then_some(())
    });
}

/// A group with two completed rollouts: kiosk 1.0.0 (revision 1), then 1.1.0 (revision 2).
fn two_rollouts() -> (Fleet, Members) {
    let fleet = Fleet::start();
    publish(&fleet, "1.0.0");
    apply_group(&fleet, "front-desk", "");
    let mut members = Members::enroll(&fleet, &["kiosk-a"], "front-desk");
    roll_out(&fleet, &mut members, "front-desk", (1, "1.0.0"));
    assert_eq!(members.given("kiosk"), [Some("1.0.0".to_string())]);
    publish(&fleet, "1.1.0");
    roll_out(&fleet, &mut members, "front-desk", (2, "1.1.0"));
    assert_eq!(members.given("kiosk"), [Some("1.1.0".to_string())]);
    (fleet, members)
}

#[test]
fn history_lists_the_rollouts_of_a_group_newest_first() {
    let (fleet, _members) = two_rollouts();
    let table = tcadm(&fleet, &["rollout", "history", "clientgroup", "front-desk"]);
    let lines: Vec<Vec<&str>> = table
        .ok()
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "REVISION", "VERSIONS", "STARTED", "FINISHED", "BY", "OUTCOME"
        ]
    );
    assert_eq!(lines.len(), 3, "{table:#?}");
    assert_eq!(lines[1][..2], ["2", "kiosk@1.1.0"]);
    assert_eq!(lines[1].last(), Some(&"Complete"));
    assert_eq!(lines[2][..2], ["1", "kiosk@1.0.0"]);
    assert!(
        matches!(lines[2].last(), Some(&"Superseded" | &"Complete")),
        "{table:#?}"
    );
    // Finished rollouts have an end time (RFC 3339, to the second).
    assert!(lines[2][3].ends_with('Z'), "{table:#?}");

    let json = history_json(&fleet, "front-desk");
    assert_eq!(json["group"], "front-desk");
    assert_eq!(json["items"][0]["revision"], 2);
    assert_eq!(json["items"][0]["versions"]["kiosk"], "1.1.0");
    assert_eq!(json["items"][1]["revision"], 1);
    let yaml = tcadm(
        &fleet,
        &["rollout", "history", "cg", "front-desk", "-o", "yaml"],
    );
    assert!(yaml.ok().contains("group: front-desk"), "{yaml:#?}");

    let missing = tcadm(&fleet, &["rollout", "history", "cg", "nope"]);
    assert!(fails(&missing, 3).contains("clientgroup/nope not found"));
    let wrong_kind = tcadm(&fleet, &["rollout", "history", "client", "kiosk-a"]);
    assert!(fails(&wrong_kind, 2).contains("rollouts belong to client groups"));
}

#[test]
fn undo_returns_the_group_to_its_previous_completed_rollout() {
    let (fleet, mut members) = two_rollouts();
    let undone = tcadm(&fleet, &["rollout", "undo", "cg", "front-desk"]);
    let out = undone.ok();
    assert!(
        out.starts_with("clientgroup/front-desk: rollout undone by ")
            && out.contains("back to kiosk 1.0.0"),
        "{undone:#?}"
    );
    let group = eventually("the undo to show in the group's status", || {
        let group = group_json(&fleet, "front-desk");
        (!group["status"]["rollout"]["undoneTo"].is_null()).then_some(group)
    });
    assert_eq!(group["status"]["rollout"]["undoneTo"]["kiosk"], "1.0.0");
    eventually("the member to be given kiosk 1.0.0 again", || {
        members.converge(&fleet);
        (members.given("kiosk") == [Some("1.0.0".to_string())]).then_some(())
    });
    let history = history_json(&fleet, "front-desk");
    assert_eq!(history["items"][0]["revision"], 3, "{history:#}");
    assert_eq!(history["items"][0]["versions"]["kiosk"], "1.0.0");
    let described = tcadm(&fleet, &["describe", "cg", "front-desk"]);
    let text = described.ok();
    assert!(
        text.contains("Rollout:") && text.contains("Undone To:") && text.contains("kiosk@1.0.0"),
        "{described:#?}"
    );
}

#[test]
fn undo_without_an_earlier_completed_rollout_is_refused() {
    let fleet = Fleet::start();
    publish(&fleet, "1.0.0");
    apply_group(&fleet, "front-desk", "");
    let mut members = Members::enroll(&fleet, &["kiosk-a"], "front-desk");
    roll_out(&fleet, &mut members, "front-desk", (1, "1.0.0"));
    let refused = tcadm(&fleet, &["rollout", "undo", "clientgroup", "front-desk"]);
    let error = fails(&refused, 3);
    assert!(
        error.contains("clientgroup/front-desk has no completed rollout before the current one"),
        "{error}"
    );
    let group = group_json(&fleet, "front-desk");
    assert!(
        group["status"]["rollout"]["undoneTo"].is_null(),
        "{group:#}"
    );
    assert_eq!(
        history_json(&fleet, "front-desk")["items"][0]["revision"],
        1
    );
}

#[test]
fn activate_now_needs_a_group_that_waits_for_activation() {
    let fleet = Fleet::start();
    publish(&fleet, "1.0.0");
    apply_group(&fleet, "front-desk", "");
    let refused = tcadm(&fleet, &["rollout", "activate-now", "cg", "front-desk"]);
    assert!(
        fails(&refused, 3).contains("has no maintenance windows and activates at once"),
        "{refused:#?}"
    );

    apply_group(
        &fleet,
        "night-shift",
        "  rollout:\n    maintenanceWindows:\n      - schedule: \"0 22 * * 1-5\"\n        \
         duration: 6h\n        timeZone: Europe/Berlin\n",
    );
    let _members = Members::enroll(&fleet, &["kiosk-n"], "night-shift");
    // The group's first rollout starts with the controller's next pass.
    let asked = eventually("activate-now to be accepted", || {
        let run = tcadm(&fleet, &["rollout", "activate-now", "cg", "night-shift"]);
        (run.code == 0).then_some(run)
    });
    assert!(
        asked
            .ok()
            .starts_with("clientgroup/night-shift: activation of rollout 1 asked for now by "),
        "{asked:#?}"
    );
    let group = eventually("activateNow in the group's status", || {
        let group = group_json(&fleet, "night-shift");
        (!group["status"]["rollout"]["activateNow"].is_null()).then_some(group)
    });
    assert!(
        group["status"]["rollout"]["activateNow"]["by"].is_string(),
        "{group:#}"
    );
    let described = tcadm(&fleet, &["describe", "cg", "night-shift"]);
    assert!(described.ok().contains("Activate Now:"), "{described:#?}");
}

#[test]
fn status_shows_a_pause_step_and_resume_moves_the_rollout_on() {
    let fleet = Fleet::start();
    publish(&fleet, "1.0.0");
    apply_group(
        &fleet,
        "canary",
        "  rollout:\n    steps:\n      - clients: 1\n      - pause: {}\n",
    );
    let mut members = Members::enroll(&fleet, &["kiosk-1", "kiosk-2"], "canary");
    // The group's first rollout installs everywhere, without its steps.
    eventually("both members to run kiosk 1.0.0 first", || {
        members.converge(&fleet);
        let group = group_json(&fleet, "canary");
        (group["status"]["ready"] == 2).then_some(())
    });
    publish(&fleet, "1.1.0");
    let status = eventually("the rollout to wait at its pause step", || {
        members.converge(&fleet);
        let run = tcadm(&fleet, &["rollout", "status", "cg", "canary"]);
        run.ok().contains("step 2 of 2").then_some(run)
    });
    let out = status.ok();
    assert!(
        out.starts_with("Waiting for clientgroup \"canary\" rollout to finish: 1 of 2 updated")
            && out
                .contains("(step 2 of 2: paused until `tcadm rollout resume clientgroup canary`)"),
        "{status:#?}"
    );
    assert!(out.contains("\n  rollout 2: step 2 of 2: "), "{status:#?}");
    // Only the canary has the new version while the rollout waits.
    let mut given = members.given("kiosk");
    given.sort();
    assert_eq!(
        given,
        [Some("1.0.0".to_string()), Some("1.1.0".to_string())]
    );

    // --watch reports the pause step and follows on once the rollout is resumed.
    let mut watch = common::agents::Background::start(&mut fleet.command(&[
        "rollout",
        "status",
        "cg",
        "canary",
        "--watch",
        "--timeout",
        "60s",
    ]));
    watch.line_containing("(step 2 of 2: paused until `tcadm rollout resume");
    let resumed = tcadm(&fleet, &["rollout", "resume", "cg", "canary"]);
    assert!(
        resumed
            .ok()
            .starts_with("clientgroup/canary: rollout 2 resumed by "),
        "{resumed:#?}"
    );
    eventually("both members to run kiosk 1.1.0", || {
        members.converge(&fleet);
        let group = group_json(&fleet, "canary");
        (group["status"]["updated"] == 2 && group["status"]["ready"] == 2).then_some(())
    });
    assert_eq!(members.given("kiosk"), vec![Some("1.1.0".to_string()); 2]);
    let watched = watch.finish();
    assert_eq!(watched.code, 0, "{watched:#?}");
    assert!(
        watched
            .stdout
            .ends_with("clientgroup \"canary\" successfully rolled out\n"),
        "{watched:#?}"
    );
    let done = tcadm(&fleet, &["rollout", "status", "cg", "canary"]);
    assert!(
        done.ok()
            .starts_with("clientgroup \"canary\" successfully rolled out")
            && done.ok().contains("past the last of 2 steps"),
        "{done:#?}"
    );
}

#[test]
fn help_and_completion_name_the_new_subcommands() {
    let tcadm = |args: &[&str]| {
        Run::of(
            std::process::Command::new(env!("CARGO_BIN_EXE_tcadm"))
                .args(args)
                .env_clear(),
        )
    };
    let help = tcadm(&["rollout", "--help"]);
    for subcommand in ["history", "undo", "activate-now"] {
        assert!(
            help.ok()
                .lines()
                .any(|line| line.trim_start().starts_with(subcommand)),
            "{subcommand}: {help:#?}"
        );
    }
    let completion = tcadm(&["completion", "bash"]);
    assert!(completion.ok().contains("activate-now"), "{completion:#?}");
    assert!(completion.ok().contains("history"), "{completion:#?}");
    let usage = tcadm(&["rollout", "undo", "cg"]);
    assert_eq!(usage.code, 2, "{usage:#?}");
}

/// Below its `failureThreshold` a rollout with a failed member goes on (`rollout status` says it
/// waits, exit 0); past it the controller reports `FailureThresholdExceeded` and `rollout status`
/// fails with exit 1, with `--watch` too.
#[test]
fn only_a_rollout_past_its_failure_threshold_fails_rollout_status() {
    let fleet = Fleet::start();
    publish(&fleet, "1.0.0");
    apply_group(
        &fleet,
        "lab",
        "  rollout:\n    maxUnavailable: 3\n    failureThreshold: 1\n",
    );
    let mut members = Members::enroll(&fleet, &["kiosk-1", "kiosk-2", "kiosk-3"], "lab");
    eventually("every member to be given kiosk 1.0.0", || {
        members.converge_failing(&fleet, &[0]);
        members
            .given("kiosk")
            .iter()
            .all(Option::is_some)
            .then_some(())
    });
    let group = eventually("one failed and two ready members", || {
        members.converge_failing(&fleet, &[0]);
        let group = group_json(&fleet, "lab");
        (group["status"]["failed"] == 1 && group["status"]["ready"] == 2).then_some(group)
    });
    let progressing = group["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .cloned()
        .unwrap_or_default();
    assert_ne!(
        progressing["reason"], "FailureThresholdExceeded",
        "{group:#}"
    );
    let below = tcadm(&fleet, &["rollout", "status", "cg", "lab"]);
    assert!(
        below.ok().starts_with(
            "Waiting for clientgroup \"lab\" rollout to finish: 3 of 3 updated, 2 ready, 1 failed"
        ),
        "{below:#?}"
    );

    let past = eventually("the failure threshold to be exceeded", || {
        members.converge_failing(&fleet, &[0, 1]);
        let run = tcadm(&fleet, &["rollout", "status", "cg", "lab"]);
        (run.code != 0).then_some(run)
    });
    let error = fails(&past, 1);
    assert!(
        error.starts_with("error: clientgroup/lab rollout failed: 2 of 3 members failed"),
        "{error}"
    );
    let group = group_json(&fleet, "lab");
    assert!(
        group["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Progressing" && c["reason"] == "FailureThresholdExceeded"),
        "{group:#}"
    );
    let watched = tcadm(
        &fleet,
        &[
            "rollout",
            "status",
            "cg",
            "lab",
            "--watch",
            "--timeout",
            "30s",
        ],
    );
    assert!(
        watched
            .stderr
            .contains("error: clientgroup/lab rollout failed: "),
        "{watched:#?}"
    );
    assert_eq!(watched.code, 1, "{watched:#?}");
}
