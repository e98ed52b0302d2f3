//! Rollouts keep their promises: a failure stays with its package and group, the budget holds
//! for new members, a failed release waits for a fix or a retry, and a rollout that cannot go on
//! says why. Simulated agents speak the real protocol to a real controller.

mod common;

use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The reproduction: with `berlin`'s `hello-banner` failing on a kiosk, `everyone` and
/// `front-desk` (which do not ask for it) reported `Degraded/MembersFailed`, and `front-desk`'s
/// next update stopped after the failed member.
#[tokio::test]
async fn a_failed_package_neither_degrades_nor_stalls_other_groups() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    for (package, version) in [
        ("kiosk-browser", "1.4.2"),
        ("hello-banner", "0.1.0"),
        ("hello-banner", "0.2.0"),
        ("vpn", "1.0.0"),
    ] {
        publish(&admin, package, version).await;
    }
    let groups = |front_desk: &str| {
        group_yaml("everyone", "{}", &[("vpn", "^1")], "100%")
            + &group_yaml(
                "front-desk",
                "{ matchLabels: { role: front-desk } }",
                &[("kiosk-browser", front_desk)],
                "1",
            )
            + &group_yaml(
                "berlin",
                "{ matchLabels: { site: berlin } }",
                &[("hello-banner", "^0.1")],
                "1",
            )
    };
    let (status, result) = admin.apply(&groups("~1.4"), "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let mut agents = vec![
        SimAgent::enroll(
            &controller,
            "kiosk-1",
            json!({"site": "berlin", "role": "front-desk"}),
        )
        .await,
        SimAgent::enroll(&controller, "kiosk-2", json!({"role": "front-desk"})).await,
    ];
    settle(&mut agents, &[], 20).await;
    assert_eq!(
        installed(&agents[0], "hello-banner").as_deref(),
        Some("0.1.0")
    );

    // berlin moves to hello-banner 0.2.0, which fails on kiosk-1 (it keeps 0.1.0).
    let (status, _) = admin
        .apply(&groups("~1.4").replace("\"^0.1\"", "\"^0.2\""), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    settle(&mut agents, &[("hello-banner", "0.2.0")], 20).await;
    let berlin = eventually(Duration::from_secs(10), || async {
        let berlin = group(&admin, "berlin").await;
        (berlin["status"]["failed"] == 1).then_some(berlin)
    })
    .await;
    assert_eq!(condition(&berlin, "Degraded")["reason"], "MembersFailed");
    for name in ["everyone", "front-desk"] {
        let healthy = group(&admin, name).await;
        assert_eq!(healthy["status"]["failed"], 0, "{name}: {healthy}");
        assert_eq!(
            condition(&healthy, "Degraded")["status"],
            "False",
            "{name}: {healthy}"
        );
    }

    // front-desk's next update reaches both members, the failed kiosk included, one at a time.
    publish(&admin, "kiosk-browser", "1.5.0").await;
    let (status, _) = admin
        .apply(&groups("^1.5").replace("\"^0.1\"", "\"^0.2\""), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    settle(&mut agents, &[("hello-banner", "0.2.0")], 40).await;
    for agent in &agents {
        assert_eq!(
            installed(agent, "kiosk-browser").as_deref(),
            Some("1.5.0"),
            "{} was not updated: {:?}",
            agent.name,
            agent.packages
        );
    }
    let front_desk = eventually(Duration::from_secs(10), || async {
        let group = group(&admin, "front-desk").await;
        (group["status"]["ready"] == 2).then_some(group)
    })
    .await;
    assert_eq!(condition(&front_desk, "Progressing")["reason"], "Complete");
    // kiosk-1 still runs hello-banner 0.1.0 and is still failed for it in berlin only.
    assert_eq!(group(&admin, "berlin").await["status"]["failed"], 1);
}

/// A release that failed on a member was installed on every newly enrolled member at once; now
/// it reaches no further member of the group until an admin retries it.
#[tokio::test]
async fn a_failed_release_reaches_no_new_member_until_it_is_retried() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    publish(&admin, "kiosk", "1.0.0").await;
    admin
        .apply(&group_yaml("g", "{}", &[("kiosk", "*")], "1"), "")
        .await;
    let mut agents = vec![
        SimAgent::enroll(&controller, "m1", json!({})).await,
        SimAgent::enroll(&controller, "m2", json!({})).await,
    ];
    settle(&mut agents, &[], 20).await;
    assert!(
        agents
            .iter()
            .all(|a| installed(a, "kiosk").as_deref() == Some("1.0.0"))
    );

    // 2.0.0 fails on the first member that gets it.
    publish(&admin, "kiosk", "2.0.0").await;
    settle(&mut agents, &[("kiosk", "2.0.0")], 20).await;
    let failed: Vec<&SimAgent> = agents
        .iter()
        .filter(|a| a.packages.iter().any(|p| p["state"] == "Failed"))
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "{:?}",
        agents.iter().map(|a| &a.packages).collect::<Vec<_>>()
    );
    let g = eventually(Duration::from_secs(10), || async {
        let g = group(&admin, "g").await;
        (g["status"]["failed"] == 1).then_some(g)
    })
    .await;
    assert_eq!(
        g["status"]["packages"][0]["failedVersions"],
        json!(["2.0.0"])
    );
    assert_eq!(
        condition(&g, "Progressing")["reason"],
        "FailureThresholdExceeded"
    );

    // A new member gets nothing: kiosk 2.0.0 is held back in this group.
    let mut newcomer = SimAgent::enroll(&controller, "m3", json!({})).await;
    let mut seen = Value::Null;
    for _ in 0..10 {
        seen = newcomer.heartbeat().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen["packages"], json!([]), "the newcomer got {seen}");
    let (_, client) = admin
        .get(&format!("/apis/thinfleet.io/v1/clients/{}", newcomer.name))
        .await;
    let decision = &client["status"]["decisions"][0];
    assert!(
        decision["reason"]
            .as_str()
            .unwrap()
            .contains("held back: kiosk 2.0.0 failed on members of group g"),
        "{decision}"
    );

    // A retry raises the attempt of the failed member only; when it succeeds, the rollout goes on.
    let (status, retried) = admin
        .request(
            Method::POST,
            "/apis/thinfleet.io/v1/clientgroups/g/retry",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["retried"].as_array().unwrap().len(), 1, "{retried}");
    assert_eq!(retried["retried"][0]["client"], failed[0].name.as_str());
    assert_eq!(retried["retried"][0]["attempt"], 1);
    let failed_name = failed[0].name.clone();
    let index = agents.iter().position(|a| a.name == failed_name).unwrap();
    let desired = agents[index].heartbeat().await;
    assert_eq!(desired["packages"][0]["version"], "2.0.0");
    assert_eq!(desired["packages"][0]["attempt"], 1);
    agents.push(newcomer);
    settle(&mut agents, &[], 40).await;
    for agent in &agents {
        assert_eq!(
            installed(agent, "kiosk").as_deref(),
            Some("2.0.0"),
            "{}",
            agent.name
        );
    }
    let (status, missing) = admin
        .request(
            Method::POST,
            "/apis/thinfleet.io/v1/clientgroups/nope/retry",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
}

/// Offline members were invisible and a rollout waiting for them said nothing; now the group
/// counts them and, past `progressDeadlineSeconds`, reports `ProgressDeadlineExceeded` naming them.
#[tokio::test]
async fn a_rollout_waiting_for_an_offline_member_says_so_past_its_deadline() {
    let controller = TestController::start_with(|config| config.offline_after_missed = 1).await;
    let admin = Api::admin(&controller);
    publish(&admin, "kiosk", "1.0.0").await;
    let yaml = group_yaml("g", "{}", &[("kiosk", "^1")], "100%").replace(
        "    maxUnavailable: 100%\n",
        "    maxUnavailable: 100%\n    progressDeadlineSeconds: 1\n  agent:\n    heartbeatSeconds: 5\n",
    );
    let (status, result) = admin.apply(&yaml, "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let mut online = SimAgent::enroll(&controller, "up", json!({})).await;
    // Heard of once, then never again.
    let mut gone = SimAgent::enroll(&controller, "down", json!({})).await;
    gone.heartbeat().await;
    // The online member heartbeats and installs; the other is never heard of again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stalled = loop {
        let desired = online.heartbeat().await;
        if desired["revision"].as_u64().unwrap() != online.revision {
            online.converge(&desired, None);
            online.heartbeat().await;
        }
        let g = group(&admin, "g").await;
        if g["status"]["offline"] == 1
            && condition(&g, "Progressing")["reason"] == "ProgressDeadlineExceeded"
        {
            break g;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rollout never reported its deadline: {g}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let message = condition(&stalled, "Progressing")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains(&format!("{} (offline; installing kiosk 1.0.0)", gone.name)),
        "{message}"
    );
    assert!(message.contains("1 offline"), "{message}");
    assert_eq!(stalled["status"]["ready"], 1);
    assert_eq!(condition(&stalled, "Progressing")["status"], "False");
    assert_eq!(
        stalled["status"]["waiting"],
        json!([{ "name": gone.name, "reason": "offline; installing kiosk 1.0.0" }])
    );
}

/// A group whose only package is pinned by a group of higher priority reported `RollingOut`
/// forever; conflicts did not name the other group; `describe` could not say who decided what.
#[tokio::test]
async fn overrides_and_conflicts_name_the_other_group_and_clients_say_why() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    publish(&admin, "kiosk", "1.0.0").await;
    publish(&admin, "kiosk", "1.1.0").await;
    publish(&admin, "viewer", "1.0.0").await;
    publish(&admin, "viewer", "2.0.0").await;
    let yaml = group_yaml("latest", "{}", &[("kiosk", "^1"), ("viewer", "^1")], "100%")
        + &group_yaml("pinned", "{}", &[("kiosk", "=1.0.0")], "100%")
            .replace("spec:\n", "spec:\n  priority: 10\n")
        + &group_yaml("tied", "{}", &[("viewer", "^2")], "100%");
    let (status, result) = admin.apply(&yaml, "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let mut agents = vec![SimAgent::enroll(&controller, "a", json!({})).await];
    settle(&mut agents, &[], 10).await;
    assert_eq!(installed(&agents[0], "kiosk").as_deref(), Some("1.0.0"));

    let latest = eventually(Duration::from_secs(10), || async {
        let g = group(&admin, "latest").await;
        (g["status"]["packages"][0]["overriddenBy"] == json!(["pinned"])).then_some(g)
    })
    .await;
    assert_ne!(
        condition(&latest, "Progressing")["reason"],
        "RollingOut",
        "{latest}"
    );
    let degraded = condition(&latest, "Degraded");
    assert_eq!(degraded["reason"], "Conflict");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("viewer by tied"),
        "{degraded}"
    );
    let tied = group(&admin, "tied").await;
    assert!(
        condition(&tied, "Degraded")["message"]
            .as_str()
            .unwrap()
            .contains("viewer by latest"),
        "{tied}"
    );

    let (_, client) = admin
        .get(&format!("/apis/thinfleet.io/v1/clients/{}", agents[0].name))
        .await;
    assert_eq!(
        client["status"]["groups"],
        json!(["latest", "pinned", "tied"])
    );
    let decisions = client["status"]["decisions"].as_array().unwrap();
    let kiosk = decisions.iter().find(|d| d["package"] == "kiosk").unwrap();
    assert_eq!(kiosk["group"], "pinned");
    assert_eq!(kiosk["requirement"], "=1.0.0");
    assert!(
        kiosk["reason"]
            .as_str()
            .unwrap()
            .contains("overrides latest (`^1`, priority 0)"),
        "{kiosk}"
    );
    let viewer = decisions.iter().find(|d| d["package"] == "viewer").unwrap();
    assert!(
        viewer["reason"]
            .as_str()
            .unwrap()
            .starts_with("conflict: groups latest"),
        "{viewer}"
    );
    // Lists do not carry the explanation (it is computed per client read).
    let (_, list) = admin.get("/apis/thinfleet.io/v1/clients").await;
    assert!(list["items"][0]["status"]["decisions"].is_null());
}

/// Events said `update hello-banner 0.2.0 -> 0.2.1` when 0.1.0 was what ran (0.2.0 had failed and
/// rolled back).
#[tokio::test]
async fn an_update_event_names_the_version_the_client_really_ran() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    publish(&admin, "hello-banner", "0.1.0").await;
    admin
        .apply(&group_yaml("g", "{}", &[("hello-banner", "*")], "1"), "")
        .await;
    let mut agents = vec![SimAgent::enroll(&controller, "kiosk", json!({})).await];
    settle(&mut agents, &[], 10).await;
    publish(&admin, "hello-banner", "0.2.0").await;
    settle(&mut agents, &[("hello-banner", "0.2.0")], 10).await;
    assert_eq!(agents[0].packages[0]["activeVersion"], "0.1.0");
    publish(&admin, "hello-banner", "0.2.1").await;
    settle(&mut agents, &[], 10).await;
    let name = agents[0].name.clone();
    let events = eventually(Duration::from_secs(10), || async {
        let (_, events) = admin
            .get(&format!(
                "/apis/thinfleet.io/v1/events?kind=Client&name={name}"
            ))
            .await;
        let messages: Vec<String> = events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["reason"] == "Assigned")
            .map(|e| e["message"].as_str().unwrap().to_string())
            .collect();
        (messages.len() >= 3).then_some(messages)
    })
    .await;
    assert_eq!(
        events,
        [
            "install hello-banner 0.1.0",
            "update hello-banner 0.1.0 -> 0.2.0",
            "update hello-banner 0.1.0 -> 0.2.1"
        ]
    );
}

async fn steer(api: &Api, verb: &str) -> (StatusCode, Value) {
    let path = format!("/apis/thinfleet.io/v1/clientgroups/g/{verb}");
    api.request(Method::POST, &path, None).await
}

/// An operator (who may not apply) stops a bad rollout: `pause` holds members on what they run —
/// new members included — across applies until `resume`, and the group's status says who paused it.
#[tokio::test]
async fn an_operator_pauses_a_rollout_that_applies_do_not_resume() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let (status, desk) = admin
        .request(
            Method::POST,
            "/apis/thinfleet.io/v1/credentials",
            Some(json!({ "name": "desk", "role": "operator" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{desk}");
    let desk = Api::with_token(&controller, desk["token"].as_str().unwrap());
    publish(&admin, "kiosk", "1.0.0").await;
    publish(&admin, "kiosk", "2.0.0").await;
    let (status, body) = admin
        .apply(&group_yaml("g", "{}", &[("kiosk", "1.0.0")], "1"), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut agents = vec![];
    for machine in ["p-1", "p-2"] {
        agents.push(SimAgent::enroll(&controller, machine, json!({})).await);
    }
    settle(&mut agents, &[], 20).await;
    assert!(
        agents
            .iter()
            .all(|a| installed(a, "kiosk").as_deref() == Some("1.0.0"))
    );

    let (status, body) = steer(&desk, "pause").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["paused"], true);
    let (status, body) = steer(&desk, "pause").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("already paused (by desk"),
        "{body}"
    );
    let paused = eventually(Duration::from_secs(5), || async {
        let g = group(&admin, "g").await;
        (condition(&g, "Progressing")["reason"] == "Paused").then_some(g)
    })
    .await;
    assert_eq!(paused["status"]["pausedBy"]["by"], "desk");
    let message = condition(&paused, "Progressing")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("paused by desk"), "{message}");

    // An admin's apply of a new version neither resumes the rollout nor reaches any member,
    // nor a member that joins meanwhile.
    let (status, body) = admin
        .apply(&group_yaml("g", "{}", &[("kiosk", "2.0.0")], "1"), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let generation = body["items"][0]["object"]["metadata"]["generation"].clone();
    eventually(Duration::from_secs(5), || async {
        let g = group(&admin, "g").await;
        (g["status"]["observedGeneration"] == generation).then_some(())
    })
    .await;
    agents.push(SimAgent::enroll(&controller, "p-new", json!({})).await);
    settle(&mut agents, &[], 5).await;
    for agent in agents.iter_mut() {
        let desired = agent.heartbeat().await;
        assert!(
            !versions(&desired).contains(&"kiosk@2.0.0".to_string()),
            "{} was assigned 2.0.0 while paused: {desired}",
            agent.name
        );
    }
    let g = group(&admin, "g").await;
    assert_eq!(condition(&g, "Progressing")["reason"], "Paused", "{g}");

    // A viewer may not resume; the operator does, and the rollout goes on.
    let (status, viewer) = admin
        .request(
            Method::POST,
            "/apis/thinfleet.io/v1/credentials",
            Some(json!({ "name": "eyes", "role": "viewer" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let viewer = Api::with_token(&controller, viewer["token"].as_str().unwrap());
    let (status, _) = steer(&viewer, "resume").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = steer(&desk, "resume").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = steer(&desk, "resume").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    settle(&mut agents, &[], 40).await;
    for agent in &agents {
        assert_eq!(
            installed(agent, "kiosk").as_deref(),
            Some("2.0.0"),
            "{}",
            agent.name
        );
    }
    let g = group(&admin, "g").await;
    assert!(g["status"].get("pausedBy").is_none(), "{g}");

    // Both are in the audit trail, with the operator's name.
    let (_, audit) = admin.get("/apis/thinfleet.io/v1/audit?by=desk").await;
    let actions: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("pause", "Succeeded"),
            ("pause", "Failed"),
            ("resume", "Succeeded"),
            ("resume", "Failed")
        ]
    );

    // A group paused by its manifest is resumed there, not through the API.
    let mut yaml = group_yaml("m", "{}", &[], "1");
    yaml = yaml.replace("  rollout:", "  paused: true\n  rollout:");
    let (status, body) = admin.apply(&yaml, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = admin
        .request(
            Method::POST,
            "/apis/thinfleet.io/v1/clientgroups/m/resume",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("spec.paused"),
        "{body}"
    );
}
