//! The agent protocol and the rollout, with simulated agents speaking the real protocol.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn re_enrolment_with_the_same_key_is_the_same_client_and_a_session_needs_the_key() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let first = SimAgent::enroll(&controller, "machine-a", json!({"site": "berlin"})).await;
    // The same key enrols again (its credentials file was lost): the same client, its labels
    // as the agent declares them now, and no session in the answer.
    let (status, again) = admin
        .enroll(
            controller.bootstrap_token(),
            "machine-a",
            "machine-a",
            json!({"site": "paris"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["clientName"], first.name.as_str());
    assert_eq!(again["state"], "Enrolled");
    assert!(again["session"].is_null(), "{again}");
    // A session comes from signing a challenge with the key; another key's signature fails.
    let (status, refused) = admin
        .open_session(&TestIdentity::new("someone else"), &first.name)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    assert_eq!(refused["reason"], "InvalidSignature");
    let mut again = SimAgent::enroll(&controller, "machine-a", json!({"site": "paris"})).await;
    assert_eq!(again.name, first.name);
    // The first session stays valid: it is the same client with the same key.
    let (status, _) = first
        .api
        .heartbeat(json!({"protocolVersion": 2, "observedRevision": 0, "inventoryHash": ""}))
        .await;
    assert_eq!(status, StatusCode::OK);
    again.heartbeat().await;
    let (_, client) = admin
        .get(&format!("/apis/thinfleet.io/v1/clients/{}", again.name))
        .await;
    assert_eq!(client["metadata"]["labels"]["site"], "paris");
    assert_eq!(client["status"]["phase"], "Online");
    assert_eq!(client["metadata"]["labels"]["thinfleet.io/arch"], "x86_64");
    assert_eq!(client["status"]["inventory"]["cpuCores"], 2);
    assert_eq!(
        client["spec"]["publicKey"],
        TestIdentity::new("machine-a").public_key()
    );

    // Another machine asking for the same name gets a distinct one.
    let other = SimAgent::enroll(&controller, "machine-b", json!({})).await;
    assert_ne!(other.name, again.name);
}

#[tokio::test]
async fn a_client_only_ever_sees_its_own_desired_state() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    publish(&admin, "kiosk", "1.0.0").await;
    admin
        .apply(
            &group_yaml(
                "berlin",
                "{ matchLabels: { site: berlin } }",
                &[("kiosk", "^1")],
                "1",
            ),
            "",
        )
        .await;
    let mut berlin = SimAgent::enroll(&controller, "b", json!({"site": "berlin"})).await;
    let mut paris = SimAgent::enroll(&controller, "p", json!({"site": "paris"})).await;
    let desired = berlin
        .wait_for(|d| !d["packages"].as_array().unwrap().is_empty())
        .await;
    assert_eq!(versions(&desired), vec!["kiosk@1.0.0"]);
    let desired = paris.heartbeat().await;
    assert!(versions(&desired).is_empty());
    // The long-poll is keyed by the token: paris's token gives paris's state, whatever is asked.
    let (_, answer) = paris
        .api
        .get("/agent/v1/desired?afterRevision=0&timeoutSeconds=0")
        .await;
    assert!(versions(&answer["desired"]).is_empty());
    // A client token cannot read other clients through the admin API.
    let (status, _) = paris
        .api
        .get(&format!("/apis/thinfleet.io/v1/clients/{}", berlin.name))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_waiting_long_poll_returns_well_under_a_second_after_an_apply() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    publish(&admin, "kiosk", "1.0.0").await;
    let mut agent = SimAgent::enroll(&controller, "m", json!({"site": "berlin"})).await;
    let desired = agent.heartbeat().await;
    let revision = desired["revision"].as_u64().unwrap();
    let waiting = {
        let api = Api::with_token(&controller, &agent.api.token);
        tokio::spawn(async move {
            let (status, answer) = api
                .get(&format!("/agent/v1/desired?afterRevision={revision}"))
                .await;
            (status, answer, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the long-poll answered before anything changed"
    );
    let applied = Instant::now();
    admin
        .apply(&group_yaml("all", "{}", &[("kiosk", "^1")], "1"), "")
        .await;
    let (status, answer, answered) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["changed"], true);
    assert_eq!(versions(&answer["desired"]), vec!["kiosk@1.0.0"]);
    let latency = answered.saturating_duration_since(applied);
    assert!(
        latency < Duration::from_millis(900),
        "long-poll answered {latency:?} after the apply"
    );
    assert!(
        answer["desired"]["packages"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("/blobs/sha256/")
    );

    // With nothing new, a long-poll times out with `changed: false`.
    let current = answer["desired"]["revision"].as_u64().unwrap();
    let (_, idle) = agent
        .api
        .get(&format!(
            "/agent/v1/desired?afterRevision={current}&timeoutSeconds=1"
        ))
        .await;
    assert_eq!(idle["changed"], false);
}

#[tokio::test]
async fn a_rollout_respects_max_unavailable_and_stops_on_failures() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    publish(&admin, "kiosk", "1.0.0").await;
    admin
        .apply(&group_yaml("fleet", "{}", &[("kiosk", "^1")], "2"), "")
        .await;
    let mut agents = vec![];
    for i in 0..6 {
        agents.push(SimAgent::enroll(&controller, &format!("m{i}"), json!({})).await);
    }
    // First installs take room in the budget too: each member gets 1.0.0 as others finish.
    for agent in &mut agents {
        let desired = agent
            .wait_for(|d| !d["packages"].as_array().unwrap().is_empty())
            .await;
        agent.converge(&desired, None);
        agent.heartbeat().await;
    }
    let ready = eventually(Duration::from_secs(5), || async {
        let (_, group) = admin.get("/apis/thinfleet.io/v1/clientgroups/fleet").await;
        (group["status"]["ready"] == 6).then_some(group)
    })
    .await;
    assert_eq!(ready["status"]["desired"], 6);

    // Publish 1.1.0: at most 2 of 6 members may be changing at any time.
    publish(&admin, "kiosk", "1.1.0").await;
    let mut max_changing = 0;
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 200, "the rollout did not finish");
        let mut changing = 0;
        let mut done = 0;
        for agent in &mut agents {
            let desired = agent.heartbeat().await;
            let wants_new = versions(&desired) == vec!["kiosk@1.1.0".to_string()];
            let reports_new = agent.packages.iter().any(|p| p["version"] == "1.1.0");
            if wants_new && !reports_new {
                changing += 1;
            }
            if reports_new {
                done += 1;
            }
        }
        max_changing = max_changing.max(changing);
        if done == agents.len() {
            break;
        }
        // Half of the changing agents finish per round, so several rounds overlap.
        let mut finished = 0;
        for agent in &mut agents {
            let desired = agent.heartbeat().await;
            if versions(&desired) == vec!["kiosk@1.1.0".to_string()]
                && !agent.packages.iter().any(|p| p["version"] == "1.1.0")
                && finished < 1
            {
                agent.converge(&desired, None);
                agent.heartbeat().await;
                finished += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        max_changing <= 2,
        "{max_changing} members were changing at once with maxUnavailable 2"
    );
    assert!(max_changing >= 1);

    // 1.2.0 fails its health check everywhere: at most 2 members fail, the others keep 1.1.0.
    publish(&admin, "kiosk", "1.2.0").await;
    for _ in 0..20 {
        for agent in &mut agents {
            let desired = agent.heartbeat().await;
            if versions(&desired) == vec!["kiosk@1.2.0".to_string()]
                && agent.revision != desired["revision"].as_u64().unwrap()
            {
                agent.converge(&desired, Some("1.2.0"));
                agent.heartbeat().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = agents
        .iter()
        .filter(|a| a.packages.iter().any(|p| p["state"] == "Failed"))
        .count();
    assert_eq!(failed, 2);
    let group = eventually(Duration::from_secs(5), || async {
        let (_, group) = admin.get("/apis/thinfleet.io/v1/clientgroups/fleet").await;
        (group["status"]["failed"] == 2).then_some(group)
    })
    .await;
    let degraded = group["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "MembersFailed");
    // The failures are in the clients' update history.
    let (_, events) = admin.get("/apis/thinfleet.io/v1/events?kind=Client").await;
    let failures = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "InstallFailed")
        .count();
    assert_eq!(failures, 2);
}

#[tokio::test]
async fn removing_a_package_from_a_group_removes_it_from_members() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    publish(&admin, "kiosk", "1.0.0").await;
    publish(&admin, "vpn", "2.0.1").await;
    admin
        .apply(
            &group_yaml("g", "{}", &[("kiosk", "^1"), ("vpn", "=2.0.1")], "1"),
            "",
        )
        .await;
    let mut agent = SimAgent::enroll(&controller, "m", json!({})).await;
    let desired = agent.wait_for(|d| versions(d).len() == 2).await;
    agent.converge(&desired, None);
    agent.heartbeat().await;
    admin
        .apply(&group_yaml("g", "{}", &[("kiosk", "^1")], "1"), "")
        .await;
    let desired = agent
        .wait_for(|d| versions(d) == vec!["kiosk@1.0.0".to_string()])
        .await;
    assert_eq!(desired["packages"].as_array().unwrap().len(), 1);
    // A release that is still assigned cannot be deleted.
    let (status, error) = admin
        .request(
            Method::DELETE,
            "/apis/thinfleet.io/v1/packagereleases/kiosk-1.0.0",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
}

#[tokio::test]
async fn clients_that_stop_heartbeating_go_offline() {
    let controller = TestController::start_with(|config| {
        config.resync_interval = Duration::from_millis(200);
    })
    .await;
    let admin = Api::admin(&controller);
    admin.apply("apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: { name: fast }\nspec:\n  selector: {}\n  agent: { heartbeatSeconds: 5 }\n", "").await;
    let mut agent = SimAgent::enroll(&controller, "m", json!({})).await;
    agent.heartbeat().await;
    let (_, client) = admin
        .get(&format!("/apis/thinfleet.io/v1/clients/{}", agent.name))
        .await;
    assert_eq!(client["status"]["phase"], "Online");
    // 3 missed heartbeats of 5 s.
    let client = eventually(Duration::from_secs(25), || async {
        let (_, client) = admin
            .get(&format!("/apis/thinfleet.io/v1/clients/{}", agent.name))
            .await;
        (client["status"]["phase"] == "Offline").then_some(client)
    })
    .await;
    assert_eq!(client["status"]["phase"], "Offline");
    agent.heartbeat().await;
    let (_, client) = admin
        .get(&format!("/apis/thinfleet.io/v1/clients/{}", agent.name))
        .await;
    assert_eq!(client["status"]["phase"], "Online");
}

#[tokio::test]
async fn pruning_a_release_still_in_use_is_deferred_not_refused() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let kiosk = publish(&admin, "kiosk", "1.0.0").await;
    let vpn = publish(&admin, "vpn", "2.0.1").await;
    let both = format!(
        "{}{}{}",
        release_yaml("kiosk", "1.0.0", &kiosk),
        release_yaml("vpn", "2.0.1", &vpn),
        group_yaml("g", "{}", &[("kiosk", "^1"), ("vpn", "=2.0.1")], "1")
    );
    admin.apply(&both, "").await;
    let mut agent = SimAgent::enroll(&controller, "m", json!({})).await;
    let desired = agent.wait_for(|d| versions(d).len() == 2).await;
    agent.converge(&desired, None);
    agent.heartbeat().await;

    // One commit drops vpn from the group and deletes its release.
    let without_vpn = format!(
        "{}{}",
        release_yaml("kiosk", "1.0.0", &kiosk),
        group_yaml("g", "{}", &[("kiosk", "^1")], "1")
    );
    let (status, result) = admin.apply(&without_vpn, "?prune=true").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert!(
        result["deferred"][0]
            .as_str()
            .unwrap()
            .contains("packagerelease/vpn-2.0.1 is still assigned"),
        "{result}"
    );
    let (_, group) = admin.get("/apis/thinfleet.io/v1/clientgroups/g").await;
    assert_eq!(
        group["spec"]["packages"].as_array().unwrap().len(),
        1,
        "the group change was applied"
    );
    let (status, _) = admin
        .get("/apis/thinfleet.io/v1/packagereleases/vpn-2.0.1")
        .await;
    assert_eq!(status, StatusCode::OK, "the release in use was kept");

    // Once nothing is assigned the release, the same apply prunes it.
    agent
        .wait_for(|d| versions(d) == vec!["kiosk@1.0.0".to_string()])
        .await;
    let (_, result) = admin.apply(&without_vpn, "?prune=true").await;
    assert!(result["deferred"].is_null(), "{result}");
    assert!(
        actions(&result).contains(&("pruned".to_string(), "PackageRelease/vpn-2.0.1".to_string())),
        "{result}"
    );
}

/// The value of a counter in the Prometheus text of `/metrics`.
async fn counter(api: &Api, name: &str) -> f64 {
    let (_, text) = api.get("/metrics").await;
    let text = text.as_str().unwrap().to_string();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(&format!("{name} "))
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[tokio::test]
async fn liveness_heartbeats_share_batched_writes_and_survive_a_restart() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let mut agents = vec![];
    for i in 0..4 {
        let mut agent = SimAgent::enroll(&controller, &format!("m{i}"), json!({})).await;
        agent.heartbeat().await;
        agents.push(agent);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let batches_before = counter(&admin, "thinfleet_client_write_batches_total").await;
    let heartbeats_before = counter(&admin, "thinfleet_heartbeats_total").await;
    // Liveness only: same reports, same inventory hash.
    for _ in 0..50 {
        for agent in &mut agents {
            agent.heartbeat().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heartbeats = counter(&admin, "thinfleet_heartbeats_total").await - heartbeats_before;
    let batches = counter(&admin, "thinfleet_client_write_batches_total").await - batches_before;
    assert_eq!(heartbeats, 200.0);
    assert!(
        batches * 10.0 < heartbeats,
        "{batches} write batches for {heartbeats} liveness heartbeats"
    );
    let (_, before) = admin
        .get(&format!("/apis/thinfleet.io/v1/clients/{}", agents[0].name))
        .await;

    // The last heartbeat time is durable across a clean restart.
    let (data, _keep) = controller.stop_keep_data().await;
    let restarted = TestController::start_in(&data, |_| {}).await;
    let admin = Api::admin(&restarted);
    let (_, after) = admin
        .get(&format!("/apis/thinfleet.io/v1/clients/{}", agents[0].name))
        .await;
    assert_eq!(
        after["status"]["lastHeartbeat"],
        before["status"]["lastHeartbeat"]
    );
}

#[tokio::test]
async fn a_new_inventory_moves_automatic_labels_and_a_restart_keeps_them() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let mut agent = SimAgent::enroll(&controller, "m-inv", json!({"site": "berlin"})).await;
    agent.heartbeat().await;
    let path = format!("/apis/thinfleet.io/v1/clients/{}", agent.name);

    // The machine was reinstalled with another OS and renamed: a new inventory and hash.
    let (status, response) = agent
        .api
        .heartbeat(json!({
            "protocolVersion": 1, "observedRevision": 0, "inventoryHash": "h2",
            "inventory": { "hostname": "kiosk-renamed", "arch": "aarch64", "osName": "Alpine Linux", "cpuCores": 4 },
        }))
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let (_, client) = admin.get(&path).await;
    assert_eq!(
        client["metadata"]["labels"]["thinfleet.io/hostname"],
        "kiosk-renamed"
    );
    assert_eq!(client["metadata"]["labels"]["thinfleet.io/arch"], "aarch64");
    assert_eq!(client["metadata"]["labels"]["site"], "berlin");
    assert_eq!(client["status"]["inventory"]["cpuCores"], 4);
    let (_, list) = admin
        .get("/apis/thinfleet.io/v1/clients?labelSelector=thinfleet.io%2Farch%3Daarch64")
        .await;
    assert_eq!(item_names(&list), vec![agent.name.clone()]);

    // Loaded again from the store, the client keeps the labels of its newest inventory.
    let (data, _keep) = controller.stop_keep_data().await;
    let restarted = TestController::start_in(&data, |_| {}).await;
    let admin = Api::admin(&restarted);
    let (_, client) = admin.get(&path).await;
    assert_eq!(
        client["metadata"]["labels"]["thinfleet.io/hostname"],
        "kiosk-renamed"
    );
    assert_eq!(client["status"]["inventory"]["osName"], "Alpine Linux");
    let (_, list) = admin
        .get("/apis/thinfleet.io/v1/clients?labelSelector=thinfleet.io%2Farch%3Dx86_64")
        .await;
    assert!(item_names(&list).is_empty(), "{list}");
    let (_, list) = admin
        .get("/apis/thinfleet.io/v1/clients?labelSelector=thinfleet.io%2Farch%3Daarch64")
        .await;
    assert_eq!(item_names(&list), vec![agent.name.clone()]);
}

/// Reproduction: "a deleted client's agent is back 9 s later". Deleting a client revokes its
/// credential: its session stops at once and its key is refused until an admin allows the
/// machine again.
#[tokio::test]
async fn a_deleted_client_s_agent_is_refused_until_an_admin_allows_its_machine() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    publish(&admin, "kiosk", "1.0.0").await;
    admin
        .apply(&group_yaml("g", "{}", &[("kiosk", "^1")], "1"), "")
        .await;
    let mut agent = SimAgent::enroll(&controller, "m-del", json!({"site": "berlin"})).await;
    let desired = agent.wait_for(|d| versions(d).len() == 1).await;
    agent.converge(&desired, None);
    agent.heartbeat().await;
    let path = format!("/apis/thinfleet.io/v1/clients/{}", agent.name);

    let (status, deleted) = admin.request(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["status"]["packages"][0]["state"], "Installed");
    assert_eq!(deleted["status"]["inventory"]["cpuCores"], 2);
    // Its session is revoked, and nothing the agent sends brings the client back.
    let body = json!({"protocolVersion": 2, "observedRevision": 1, "inventoryHash": "h1"});
    let (status, refused) = agent.api.heartbeat(body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused["reason"], "SessionRevoked", "{refused}");
    let (status, refused) = admin
        .enroll(
            controller.bootstrap_token(),
            "m-del",
            "m-del",
            json!({"site": "berlin"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("tcadm allow machine m-del"),
        "{refused}"
    );
    let (status, _) = admin.get(&path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, blocked) = admin.get("/apis/thinfleet.io/v1/blockedmachines").await;
    assert_eq!(blocked["items"][0]["machineId"], "m-del");
    assert_eq!(blocked["items"][0]["reason"], "Deleted");

    // Allowed again, the agent enrols as a new client that starts clean, and it survives a
    // restart.
    let (status, allowed) = admin
        .request(
            Method::DELETE,
            "/apis/thinfleet.io/v1/blockedmachines/m-del",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{allowed}");
    let mut again = SimAgent::enroll(&controller, "m-del", json!({"site": "paris"})).await;
    assert_eq!(again.name, agent.name);
    let (_, client) = admin.get(&path).await;
    assert_ne!(client["metadata"]["uid"], deleted["metadata"]["uid"]);
    assert!(client["status"]["packages"].is_null(), "{client}");
    assert_eq!(client["status"]["phase"], "Enrolled");
    assert_eq!(client["metadata"]["labels"]["site"], "paris");
    let desired = again.wait_for(|d| versions(d).len() == 1).await;
    assert_eq!(desired["revision"], 1, "a new client's first assignment");
    let (data, _keep) = controller.stop_keep_data().await;
    let restarted = TestController::start_in(&data, |_| {}).await;
    let admin = Api::admin(&restarted);
    let (_, client) = admin.get(&path).await;
    assert_eq!(client["metadata"]["labels"]["site"], "paris");
    assert_eq!(client["status"]["desiredRevision"], 1);
    assert_eq!(client["status"]["phase"], "Online");
    // The old session stays refused after the restart (its uid is gone); the new one works.
    let body = json!({"protocolVersion": 2, "observedRevision": 1, "inventoryHash": "h1"});
    let old = Api::with_token(&restarted, &agent.api.token);
    assert_eq!(
        old.heartbeat(body.clone()).await.0,
        StatusCode::UNAUTHORIZED
    );
    let new = Api::with_token(&restarted, &again.api.token);
    assert_eq!(new.heartbeat(body).await.0, StatusCode::OK);
}

#[tokio::test]
async fn long_polls_multiplexed_over_h2c_learn_a_change() {
    long_polls_multiplexed_over_http2_learn_a_change(TestController::start_insecure().await).await;
}

#[tokio::test]
async fn long_polls_multiplexed_over_h2_by_alpn_learn_a_change() {
    long_polls_multiplexed_over_http2_learn_a_change(TestController::start().await).await;
}

async fn long_polls_multiplexed_over_http2_learn_a_change(controller: TestController) {
    use tc_testkit::sim::{SimConfig, SimFleet, Transport, Via};
    let admin = Api::admin(&controller);
    publish(&admin, "kiosk", "1.0.0").await;
    admin
        .apply(
            "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: { name: g }\nspec:\n  selector: {}\n  agent: { heartbeatSeconds: 3600 }\n",
            "",
        )
        .await;
    let (fleet, report) = SimFleet::enroll(
        &[controller.addr()],
        controller.sim_tls().as_ref(),
        controller.bootstrap_token(),
        7,
        40,
        4,
        Duration::from_secs(10),
    )
    .await
    .expect("enrolled");
    assert_eq!(report.errors, 0);
    // Heartbeats an hour apart: only the long-poll can deliver the change in time.
    let mut config = SimConfig::new(controller.addr(), Duration::from_secs(3600));
    config.tls = controller.sim_tls();
    config.long_poll_share = 1.0;
    config.long_poll_transport = Transport::Http2 {
        streams_per_connection: 16,
    };
    let sim = fleet.start(config);
    let waiting = Instant::now();
    while sim.snapshot().long_polls_waiting < 40 {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "long-polls over HTTP/2 were not accepted: {:?}",
            sim.error_samples()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 100%: first installs take room in the budget too, and every agent is to learn at once.
    admin
        .apply(&group_yaml("g", "{}", &[("kiosk", "^1")], "100%"), "")
        .await;
    let learned = sim
        .wait_for(
            Duration::from_secs(10),
            Duration::from_millis(20),
            |agent| agent.desired_revision >= 1,
        )
        .await;
    let errors = sim.snapshot().long_poll_errors;
    let views = sim.fleet().views();
    sim.stop().await;
    assert!(learned, "not every agent learned the change");
    assert_eq!(errors, 0);
    assert!(views.iter().all(|v| v.learned_by == Via::LongPoll));
}

#[tokio::test]
async fn a_simulated_fleet_enrols_with_keys_and_opens_sessions_over_the_protocol() {
    use tc_testkit::sim::{SeedOptions, SimConfig, SimFleet, seed_store, session_key};
    let controller = TestController::start().await;
    let tls = controller.sim_tls();
    let (fleet, report) = SimFleet::enroll(
        &[controller.addr()],
        tls.as_ref(),
        controller.bootstrap_token(),
        11,
        20,
        4,
        Duration::from_secs(10),
    )
    .await
    .expect("enrolled");
    assert_eq!((report.enrolled, report.pending, report.errors), (20, 0, 0));
    // New sessions from signed challenges replace the ones enrolment gave.
    let renewed = fleet
        .open_sessions(controller.addr(), tls.as_ref(), Duration::from_secs(10))
        .await
        .expect("sessions");
    assert_ne!(renewed.agents()[0].token(), fleet.agents()[0].token());
    let mut config = SimConfig::new(controller.addr(), Duration::from_secs(3600));
    config.tls = tls.clone();
    let sim = renewed.start(config);
    sim.heartbeat_all().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.snapshot().heartbeats + sim.snapshot().heartbeat_errors < 20 {
        assert!(Instant::now() < deadline, "{:?}", sim.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snapshot = sim.stop().await;
    assert_eq!(snapshot.heartbeat_errors, 0, "{:?}", sim_errors(&snapshot));
    // A seeded fleet (written into a store before its controller starts) heartbeats on sessions
    // minted with the controller's session key.
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    {
        let store = tc_store::RedbStore::open(&data.join("thinfleet.redb")).unwrap();
        let options = SeedOptions {
            seed: 5,
            count: 30,
            batch: 7,
            inventory_reported: true,
            now: tc_api::Timestamp::now(),
        };
        assert_eq!(seed_store(&store, &options).unwrap(), 30);
    }
    let restarted = TestController::start_in(&data, |_| {}).await;
    let seeded = SimFleet::seeded(5, 30, true, &session_key(&data).unwrap());
    let mut config = SimConfig::new(restarted.addr(), Duration::from_secs(3600));
    config.tls = restarted.sim_tls();
    let sim = seeded.start(config);
    sim.heartbeat_all().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.snapshot().heartbeats + sim.snapshot().heartbeat_errors < 30 {
        assert!(Instant::now() < deadline, "{:?}", sim.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snapshot = sim.stop().await;
    assert_eq!(snapshot.heartbeat_errors, 0, "{snapshot:?}");
}

fn sim_errors(snapshot: &tc_testkit::sim::SimSnapshot) -> String {
    format!("{snapshot:?}")
}
