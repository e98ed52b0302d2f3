//! Trust on a real network: who may enrol and act as a client, and bounds on what agents send.
//! Each reproduction of the issue ends here in a refusal.

mod common;

use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tc_testkit::Config;
use tc_testkit::protocol::TestIdentity;

/// An anonymous client of the agent routes.
fn anonymous(controller: &TestController) -> Api {
    Api::with_token(controller, "")
}

/// Reproduction: "Anyone holding the bootstrap token enrols with another client's machine id and
/// becomes that client: new token issued, the real agent locked out, its self-declared labels
/// moving it into another group". The impostor is a pending client; the victim keeps its session,
/// labels, group and packages.
#[tokio::test]
async fn enrolling_another_client_s_machine_id_does_not_take_it_over() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    publish(&admin, "berlin-kiosk", "1.0.0").await;
    publish(&admin, "paris-kiosk", "1.0.0").await;
    admin
        .apply(
            &format!(
                "{}{}",
                group_yaml(
                    "berlin",
                    "{ matchLabels: { site: berlin } }",
                    &[("berlin-kiosk", "^1")],
                    "100%"
                ),
                group_yaml(
                    "paris",
                    "{ matchLabels: { site: paris } }",
                    &[("paris-kiosk", "^1")],
                    "100%"
                )
            ),
            "",
        )
        .await;
    let mut victim =
        SimAgent::enroll(&controller, "victim-machine", json!({"site": "berlin"})).await;
    let desired = victim
        .wait_for(|d| versions(d) == ["berlin-kiosk@1.0.0"])
        .await;
    victim.converge(&desired, None);
    victim.heartbeat().await;

    let impostor = TestIdentity::new("impostor");
    let (status, answer) = anonymous(&controller)
        .enroll_with(
            &impostor,
            controller.bootstrap_token(),
            "victim-machine",
            &victim.name,
            json!({"site": "paris"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["state"], "Pending");
    assert_eq!(answer["reason"], "DuplicateMachineId");
    assert!(answer["session"].is_null(), "{answer}");
    let pending = answer["clientName"].as_str().unwrap();
    assert_ne!(pending, victim.name);
    // No session for the impostor, under either name.
    for name in [pending, victim.name.as_str()] {
        let (status, refused) = anonymous(&controller).open_session(&impostor, name).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {refused}");
    }
    // The victim is untouched: same session, labels, group and packages.
    let desired = victim.heartbeat().await;
    assert_eq!(versions(&desired), ["berlin-kiosk@1.0.0"]);
    let (_, client) = admin
        .get(&format!("/apis/thinfleet.io/v1/clients/{}", victim.name))
        .await;
    assert_eq!(client["metadata"]["labels"]["site"], "berlin");
    assert_eq!(
        client["spec"]["publicKey"],
        TestIdentity::new("victim-machine").public_key()
    );
    // The pending client is visible, selected by no group, and gets nothing.
    let (_, client) = admin
        .get(&format!("/apis/thinfleet.io/v1/clients/{pending}"))
        .await;
    assert_eq!(client["status"]["phase"], "Pending");
    assert_eq!(client["spec"]["pending"]["reason"], "DuplicateMachineId");
    assert_eq!(
        client["spec"]["pending"]["enrolledAs"][0],
        victim.name.as_str()
    );
    assert!(client["status"]["groups"].is_null(), "{client}");
    assert!(client["status"]["desired"].is_null(), "{client}");
    let (_, events) = admin.get("/apis/thinfleet.io/v1/events?kind=Client").await;
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "DuplicateMachineId"),
        "{events}"
    );
}

/// Reproduction: "Two agents sharing /etc/machine-id (cloned images) flap between each other
/// forever". Each asks again and again; the enrolled one stays the client, the other stays one
/// pending client.
#[tokio::test]
async fn clones_sharing_a_machine_id_do_not_flap() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let api = anonymous(&controller);
    let bootstrap = controller.bootstrap_token();
    let (first, second) = (TestIdentity::new("clone-a"), TestIdentity::new("clone-b"));
    let mut names = vec![];
    for round in 0..5 {
        for (identity, expected) in [(&first, StatusCode::OK), (&second, StatusCode::ACCEPTED)] {
            let (status, answer) = api
                .enroll_with(identity, bootstrap, "cloned-image", "kiosk", json!({}))
                .await;
            assert_eq!(status, expected, "round {round}: {answer}");
            names.push(answer["clientName"].as_str().unwrap().to_string());
        }
    }
    assert!(
        names.chunks(2).all(|pair| pair == ["kiosk", "kiosk-2"]),
        "{names:?}"
    );
    let (_, list) = admin.get("/apis/thinfleet.io/v1/clients").await;
    assert_eq!(item_names(&list), ["kiosk", "kiosk-2"]);
    let (status, session) = api.open_session(&first, "kiosk").await;
    assert_eq!(status, StatusCode::OK, "{session}");
}

/// Reproduction: "deleting the token file and restarting still accepts the old one".
#[tokio::test]
async fn deleting_the_bootstrap_token_file_revokes_the_token_at_restart() {
    let controller = TestController::start().await;
    let old = controller.bootstrap_token().to_string();
    let (status, _) = anonymous(&controller)
        .enroll(&old, "m-1", "kiosk-1", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (data, _keep) = controller.stop_keep_data().await;
    std::fs::remove_file(data.join("bootstrap.token")).unwrap();
    // (The test controller writes a new token file before it starts, as an operator would.)
    let restarted = TestController::start_in(&data, |_| {}).await;
    let (status, refused) = anonymous(&restarted)
        .enroll(&old, "m-2", "kiosk-2", json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    assert_ne!(restarted.bootstrap_token(), old);
    let (status, answer) = anonymous(&restarted)
        .enroll(restarted.bootstrap_token(), "m-2", "kiosk-2", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // The clients enrolled with the old token stay.
    let (_, list) = Api::admin(&restarted)
        .get("/apis/thinfleet.io/v1/clients")
        .await;
    assert_eq!(item_names(&list), ["kiosk-1", "kiosk-2"]);
}

/// Reproduction: "3,000 fake enrolments went through in 14 s". Enrolments from one address
/// beyond its bucket are refused with 429 and `Retry-After`, whatever they carry.
#[tokio::test]
async fn enrolments_beyond_the_rate_limit_are_refused_with_retry_after() {
    let controller = TestController::start_with(|config: &mut Config| {
        // A burst of 5 that refills at one per 1,000 seconds: exactly 5 pass in this test.
        config.enroll_rate_per_source = tc_controller::ratelimit::RateLimit::new(0.001, 5);
    })
    .await;
    let api = anonymous(&controller);
    let mut statuses = vec![];
    for i in 0..8 {
        let machine = format!("fake-{i}");
        let (status, _) = api
            .enroll(controller.bootstrap_token(), &machine, &machine, json!({}))
            .await;
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    // Refused before anything else is looked at, even a request that could never enrol.
    let response = api
        .http
        .post(format!("{}/agent/v1/enroll", api.base))
        .json(&json!({"protocolVersion": 2, "bootstrapToken": "guess", "machineId": "m", "name": "n", "hostname": "n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait >= 1, "{wait}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "TooManyRequests");
    let (_, list) = Api::admin(&controller)
        .get("/apis/thinfleet.io/v1/clients")
        .await;
    assert_eq!(item_names(&list).len(), 5);
    let metrics = Api::admin(&controller)
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("thinfleet_enrolments_refused_total{reason=\"rateLimited\"} 4"),
        "{metrics}"
    );
}

/// Reproduction: "6 enrolments with a 20 MB hostname grew the store to 270 MB; 200,000 agent
/// labels or a 28 MB inventory are stored as they come". Refused before anything is stored,
/// with the field named when the request fits the body limit.
#[tokio::test]
async fn oversized_enrolments_and_inventories_are_refused_and_store_nothing() {
    let controller = TestController::start().await;
    let api = anonymous(&controller);
    let bootstrap = controller.bootstrap_token();
    let identity = TestIdentity::new("big");
    let mut huge = identity.enroll_body(bootstrap, "m-big", "big", json!({}));
    huge["hostname"] = json!("h".repeat(20 << 20));
    let (status, _) = api.post_json("/agent/v1/enroll", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let mut long = identity.enroll_body(bootstrap, "m-big", "big", json!({}));
    long["hostname"] = json!("h".repeat(300));
    let (status, refused) = api.post_json("/agent/v1/enroll", long).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{refused}");
    assert_eq!(
        refused["details"]["causes"][0]["field"], "hostname",
        "{refused}"
    );
    let labels: serde_json::Map<String, Value> = (0..200_000)
        .map(|i| (format!("l{i}"), json!("v")))
        .collect();
    let (status, _) = api
        .enroll(bootstrap, "m-big", "big", Value::Object(labels))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let labels: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("l{i}"), json!("v"))).collect();
    let (status, refused) = api
        .enroll(bootstrap, "m-big", "big", Value::Object(labels))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().starts_with("labels:"),
        "{refused}"
    );
    let (status, refused) = api
        .enroll(bootstrap, "m-big", "big", json!({"bad key!": "v"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let (_, list) = Api::admin(&controller)
        .get("/apis/thinfleet.io/v1/clients")
        .await;
    assert!(item_names(&list).is_empty(), "nothing was stored: {list}");

    // An enrolled client's inventory is bounded too.
    let agent = SimAgent::enroll(&controller, "m-small", json!({})).await;
    let heartbeat = |inventory: Value| json!({"protocolVersion": 2, "observedRevision": 0, "inventoryHash": "x", "inventory": inventory});
    let (status, _) = agent
        .api
        .heartbeat(heartbeat(
            json!({"hostname": "k", "cpuModel": "x".repeat(28 << 20)}),
        ))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let disks: Vec<Value> = (0..65).map(|i| json!({"name": format!("sd{i}")})).collect();
    let (status, refused) = agent
        .api
        .heartbeat(heartbeat(json!({"hostname": "k", "disks": disks})))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{refused}");
    assert_eq!(refused["details"]["causes"][0]["field"], "inventory.disks");
    let reports: Vec<Value> = (0..1024)
        .map(|i| json!({"name": format!("p{i}"), "version": "1.0.0", "state": "Installed", "since": "2026-11-22T00:00:00Z"}))
        .collect();
    let (status, refused) = agent
        .api
        .heartbeat(json!({"protocolVersion": 2, "observedRevision": 0, "inventoryHash": "", "packages": reports}))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{refused}");
    assert_eq!(refused["details"]["causes"][0]["field"], "packages");
    let (_, client) = Api::admin(&controller)
        .get(&format!("/apis/thinfleet.io/v1/clients/{}", agent.name))
        .await;
    assert!(client["status"]["inventory"].is_null(), "{client}");
    assert!(client["status"]["packages"].is_null(), "{client}");
}

/// Reproduction: "ten heartbeats of one client with 1,024 flapping package reports evicted every
/// other event from the 10,000-event ring". A flapping client gets its share of events, one event
/// saying the rest are dropped, and the fleet's history stays.
#[tokio::test]
async fn one_client_flapping_its_packages_cannot_evict_the_rest_of_the_history() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    for i in 0..3 {
        SimAgent::enroll(&controller, &format!("quiet-{i}"), json!({})).await;
    }
    let noisy = SimAgent::enroll(&controller, "noisy", json!({})).await;
    // 100 heartbeats of 128 packages flipping between Installed and Failed: 12,800 transitions,
    // more than the ring holds.
    for round in 0..100 {
        let state = if round % 2 == 0 {
            "Installed"
        } else {
            "Failed"
        };
        let reports: Vec<Value> = (0..128)
            .map(|i| json!({"name": format!("p{i}"), "version": "1.0.0", "state": state, "message": "flap", "since": "2026-11-22T00:00:00Z"}))
            .collect();
        let (status, answer) = noisy
            .api
            .heartbeat(json!({"protocolVersion": 2, "observedRevision": round, "inventoryHash": "", "packages": reports}))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let (_, events) = admin.get("/apis/thinfleet.io/v1/events?limit=10000").await;
    let events = events["items"].as_array().unwrap().clone();
    for i in 0..3 {
        let name = format!("quiet-{i}");
        assert!(
            events
                .iter()
                .any(|e| e["object"]["name"] == name.as_str() && e["reason"] == "Enrolled"),
            "{name}'s enrolment was evicted"
        );
    }
    let about_noisy: Vec<&Value> = events
        .iter()
        .filter(|e| e["object"]["name"] == noisy.name.as_str())
        .collect();
    let burst = Config::new("unused").client_event_rate.burst as usize;
    assert!(
        about_noisy.len() <= burst + 3,
        "{} events about the noisy client",
        about_noisy.len()
    );
    assert_eq!(
        about_noisy
            .iter()
            .filter(|e| e["reason"] == "EventsSuppressed")
            .count(),
        1,
        "one event says that suppression started"
    );
    let metrics = admin
        .http
        .get(format!("{}/metrics", admin.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("thinfleet_client_events_dropped_total "))
        .expect("the counter is exported")
        .parse()
        .unwrap();
    assert!(dropped > 12_000, "{dropped} dropped");
}

/// Sessions expire with a 401 that says so; a new one needs only the key (no bootstrap token);
/// they survive a controller restart.
#[tokio::test]
async fn an_expired_session_is_refused_and_renewed_with_the_key_alone() {
    let controller = TestController::start_with(|config: &mut Config| {
        config.session_lifetime = Duration::from_secs(1);
    })
    .await;
    let agent = SimAgent::enroll(&controller, "m-exp", json!({})).await;
    let body = json!({"protocolVersion": 2, "observedRevision": 0, "inventoryHash": ""});
    let refused = eventually(Duration::from_secs(10), || {
        let (api, body) = (&agent.api, body.clone());
        async move {
            let (status, answer) = api.heartbeat(body).await;
            (status == StatusCode::UNAUTHORIZED).then_some(answer)
        }
    })
    .await;
    assert_eq!(refused["reason"], "SessionExpired", "{refused}");
    // The bootstrap token is gone; the key is enough.
    Api::admin(&controller)
        .request(
            Method::DELETE,
            "/apis/thinfleet.io/v1/bootstraptokens/default",
            None,
        )
        .await;
    let (status, opened) = anonymous(&controller)
        .open_session(&TestIdentity::new("m-exp"), &agent.name)
        .await;
    assert_eq!(status, StatusCode::OK, "{opened}");
    let renewed = Api::with_token(&controller, opened["session"]["token"].as_str().unwrap());
    assert_eq!(renewed.heartbeat(body.clone()).await.0, StatusCode::OK);
    // A challenge is single-client: signing another client's challenge gets nothing.
    let (_, other) = anonymous(&controller)
        .post_json(
            "/agent/v1/session",
            json!({"protocolVersion": 2, "clientName": agent.name}),
        )
        .await;
    let forged = TestIdentity::new("m-other")
        .session_body(&agent.name, other["challenge"]["value"].as_str().unwrap());
    let (status, _) = anonymous(&controller)
        .post_json("/agent/v1/session", forged)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sessions_survive_a_controller_restart() {
    let controller = TestController::start().await;
    let agent = SimAgent::enroll(&controller, "m-restart", json!({})).await;
    let token = agent.api.token.clone();
    let (data, _keep) = controller.stop_keep_data().await;
    let restarted = TestController::start_in(&data, |_| {}).await;
    let body = json!({"protocolVersion": 2, "observedRevision": 0, "inventoryHash": ""});
    let (status, answer) = Api::with_token(&restarted, &token).heartbeat(body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// Agents of protocol 1 (a machine id and a token, no key) are refused with a clear message.
#[tokio::test]
async fn agents_without_a_key_are_told_to_upgrade() {
    let controller = TestController::start().await;
    let (status, refused) = anonymous(&controller)
        .post_json(
            "/agent/v1/enroll",
            json!({"protocolVersion": 1, "bootstrapToken": controller.bootstrap_token(), "machineId": "m", "name": "n", "hostname": "n"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(refused["reason"], "ProtocolVersion");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("upgrade tc-agent")
    );
    // A signature made with another key, or over another token, is refused.
    let mut body =
        TestIdentity::new("a").enroll_body(controller.bootstrap_token(), "m", "n", json!({}));
    body["publicKey"] = json!(TestIdentity::new("b").public_key());
    let (status, refused) = anonymous(&controller)
        .post_json("/agent/v1/enroll", body)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    assert_eq!(refused["reason"], "InvalidSignature");
}

/// A client enrolled before identities keeps its name, labels and status when its upgraded agent
/// proves its old client token once; without the proof, the key is a pending duplicate.
#[tokio::test]
async fn an_upgraded_agent_keeps_its_client_by_proving_its_old_token() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    {
        let store = tc_store::RedbStore::open(&data.join("thinfleet.redb")).unwrap();
        use tc_store::Store;
        let mut legacy = tc_api::Client::new(
            "old-kiosk",
            tc_api::ClientSpec {
                machine_id: "m-old".into(),
                admin_labels: [("room".to_string(), "12".to_string())].into(),
                ..Default::default()
            },
        );
        legacy.status.desired_revision = 4;
        store
            .create_client(legacy, tc_api::Timestamp::now())
            .unwrap();
        let hash = tc_controller::tokens::hash("old-client-token");
        store
            .put_setting(
                &format!("{}old-kiosk", tc_store::LEGACY_CLIENT_TOKEN_SETTING),
                Some(&hash),
            )
            .unwrap();
    }
    let controller = TestController::start_in(&data, |_| {}).await;
    let api = anonymous(&controller);
    let identity = TestIdentity::new("upgraded");
    let mut wrong = identity.enroll_body(
        controller.bootstrap_token(),
        "m-old",
        "old-kiosk",
        json!({}),
    );
    wrong["previousClientToken"] = json!("a guess");
    let (status, answer) = api.post_json("/agent/v1/enroll", wrong).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let pending = answer["clientName"].as_str().unwrap().to_string();
    Api::admin(&controller)
        .request(
            Method::POST,
            &format!("/apis/thinfleet.io/v1/clients/{pending}/deny"),
            None,
        )
        .await;
    Api::admin(&controller)
        .request(
            Method::DELETE,
            "/apis/thinfleet.io/v1/blockedmachines/m-old",
            None,
        )
        .await;

    let mut proven = identity.enroll_body(
        controller.bootstrap_token(),
        "m-old",
        "old-kiosk",
        json!({}),
    );
    proven["previousClientToken"] = json!("old-client-token");
    let (status, answer) = api.post_json("/agent/v1/enroll", proven.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["clientName"], "old-kiosk");
    let session = Api::with_token(&controller, answer["session"]["token"].as_str().unwrap());
    let (status, desired) = session
        .heartbeat(json!({"protocolVersion": 2, "observedRevision": 0, "inventoryHash": ""}))
        .await;
    assert_eq!(status, StatusCode::OK, "{desired}");
    let (_, client) = Api::admin(&controller)
        .get("/apis/thinfleet.io/v1/clients/old-kiosk")
        .await;
    assert_eq!(client["spec"]["publicKey"], identity.public_key());
    assert_eq!(client["metadata"]["labels"]["room"], "12");
    assert_eq!(client["status"]["desiredRevision"], 4);
    // The old token proves nothing any more: it was a one-time proof.
    let (status, answer) = api
        .post_json("/agent/v1/enroll", {
            let mut again = TestIdentity::new("another").enroll_body(
                controller.bootstrap_token(),
                "m-old",
                "x",
                json!({}),
            );
            again["previousClientToken"] = json!("old-client-token");
            again
        })
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
}
