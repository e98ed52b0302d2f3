//! Load histories through the agent protocol: a request for one client's history wakes that
//! client's long-poll only, the upload answers the waiting request (`fresh: true`) and is
//! stored, a client that does not answer shows the stored one (`fresh: false`), and hostile
//! uploads are refused with a 4xx and leave nothing stored.

mod common;

use std::time::Duration;

use common::{Api, SimAgent, TestController};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tc_proto::Timestamp;
use tc_proto::history::{LoadHistory, Sample};

/// How long any expected change may take.
const WAIT: Duration = Duration::from_secs(20);

fn history_path(client: &str, wait: u64) -> String {
    format!("/apis/thinfleet.io/v1/clients/{client}/history?wait={wait}")
}

/// Three minutes of samples, one of them a gap, ending a minute ago.
fn three_minutes() -> LoadHistory {
    LoadHistory {
        interval_seconds: 60,
        end: Timestamp::from_unix_millis(Timestamp::now().unix_millis() - 60_000),
        samples: vec![
            Sample::measured(12.0, 40.0, 55.0, Some(47.0)),
            Sample::GAP,
            Sample::measured(99.0, 41.0, 55.0, None),
        ],
    }
}

/// An enrolled client that has heartbeated (so it is online), and its current revision.
async fn online(controller: &TestController, machine: &str) -> (SimAgent, u64) {
    let mut agent = SimAgent::enroll(controller, machine, json!({})).await;
    let desired = agent.heartbeat().await;
    let revision = desired["revision"].as_u64().unwrap();
    (agent, revision)
}

/// Starts a long-poll of `agent` (after `revision`, held up to 60 s).
fn long_poll(agent: &SimAgent, revision: u64) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let api = Api {
        base: agent.api.base.clone(),
        token: agent.api.token.clone(),
        http: agent.api.http.clone(),
    };
    tokio::spawn(async move {
        api.get(&format!(
            "/agent/v1/desired?afterRevision={revision}&timeoutSeconds=60"
        ))
        .await
    })
}

async fn upload(agent: &SimAgent, body: Value) -> (StatusCode, Value) {
    agent
        .api
        .request(Method::POST, "/agent/v1/history", Some(body))
        .await
}

fn upload_of(agent: &SimAgent, history: &LoadHistory) -> Value {
    serde_json::to_value(history.to_upload(&agent.name)).unwrap()
}

#[tokio::test]
async fn a_history_request_wakes_only_that_clients_long_poll_and_gets_a_fresh_history() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let (a, revision_a) = online(&controller, "history-machine-a").await;
    let (b, revision_b) = online(&controller, "history-machine-b").await;
    let poll_a = long_poll(&a, revision_a);
    let poll_b = long_poll(&b, revision_b);

    // Someone opens client a.
    let path = history_path(&a.name, 10);
    let request = tokio::spawn(async move { admin.get(&path).await });
    let (status, answer) = tokio::time::timeout(WAIT, poll_a)
        .await
        .expect("a's long-poll answers")
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["sendHistory"], true, "{answer}");
    assert_eq!(answer["changed"], false, "{answer}");
    assert!(!poll_b.is_finished(), "b's long-poll must not be woken");

    let sent = three_minutes();
    let (status, body) = upload(&a, upload_of(&a, &sent)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["samples"], 3);
    let (status, shown) = tokio::time::timeout(WAIT, request)
        .await
        .expect("the request answers once the upload arrived")
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["client"], a.name.as_str());
    assert_eq!(shown["fresh"], true);
    assert_eq!(shown["intervalSeconds"], 60);
    let samples = shown["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2, "the gap is left out: {shown}");
    assert_eq!(samples[0]["cpuPercent"], 12);
    assert_eq!(samples[0]["memoryPercent"], 40);
    assert_eq!(samples[0]["diskPercent"], 55);
    assert_eq!(samples[0]["temperatureCelsius"], 47);
    assert_eq!(samples[0]["time"], sent.time_of(0).to_string());
    assert_eq!(samples[1]["time"], sent.end.to_string());
    assert!(samples[1].get("temperatureCelsius").is_none());
    assert!(!poll_b.is_finished(), "b's long-poll must still be waiting");
    poll_b.abort();

    // The agent does not answer any more (it stopped): the stored history, not fresh, with its
    // age. The viewer role may read it.
    let viewer_token = {
        let (status, created) = Api::admin(&controller)
            .request(
                Method::POST,
                "/apis/thinfleet.io/v1/credentials",
                Some(json!({ "name": "helpdesk", "role": "viewer" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{created}");
        created["token"].as_str().unwrap().to_owned()
    };
    let viewer = Api::with_token(&controller, &viewer_token);
    let (status, stored) = viewer.get(&history_path(&a.name, 1)).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["fresh"], false);
    assert_eq!(stored["samples"], shown["samples"]);
    assert_eq!(stored["collected"], shown["collected"]);
    assert!(stored["ageSeconds"].as_u64().is_some(), "{stored}");
    controller.stop().await;
}

#[tokio::test]
async fn hostile_uploads_are_refused_and_nothing_is_stored() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let (a, _) = online(&controller, "history-machine-c").await;
    let (b, _) = online(&controller, "history-machine-d").await;
    let good = upload_of(&a, &three_minutes());

    // Not asked for: refused.
    let (status, body) = upload(&a, good.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no load history was asked"),
        "{body}"
    );

    // Asked for (a zero wait asks without waiting).
    let (status, shown) = admin.get(&history_path(&a.name, 0)).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["fresh"], false);
    assert!(shown.get("collected").is_none(), "{shown}");

    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let encoded = |bytes: &[u8]| json!(tc_proto::identity::base64url_encode(bytes));
    let refusals = [
        (
            "another client's history",
            with("clientName", json!(b.name)),
            StatusCode::FORBIDDEN,
            "is not accepted",
        ),
        (
            "a count that does not match the samples",
            with("count", json!(4)),
            StatusCode::BAD_REQUEST,
            "count says 4",
        ),
        (
            "more samples than a day holds",
            with("count", json!(1441)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "at most 1440",
        ),
        (
            "a percentage above 100",
            {
                let mut body = with("count", json!(1));
                body["samples"] = encoded(&[10, 101, 10, 40]);
                body
            },
            StatusCode::BAD_REQUEST,
            "sample 0",
        ),
        (
            "a gap that is half a sample",
            {
                let mut body = with("count", json!(1));
                body["samples"] = encoded(&[255, 255, 255, 40]);
                body
            },
            StatusCode::BAD_REQUEST,
            "sample 0",
        ),
        (
            "an interval of 0",
            with("intervalSeconds", json!(0)),
            StatusCode::BAD_REQUEST,
            "intervalSeconds",
        ),
        (
            "samples from the future",
            with(
                "end",
                json!(Timestamp::now().plus(Duration::from_secs(3600)).to_string()),
            ),
            StatusCode::BAD_REQUEST,
            "after the controller's clock",
        ),
        (
            "samples that are not base64url",
            with("samples", json!("a+b/")),
            StatusCode::BAD_REQUEST,
            "base64url",
        ),
        (
            "a body past the limit",
            with("samples", json!("A".repeat(20_000))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
        ),
    ];
    for (what, body, expected, says) in refusals {
        let (status, answer) = upload(&a, body).await;
        assert_eq!(status, expected, "{what}: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap_or_default()
                .contains(says),
            "{what}: {answer}"
        );
    }
    // Without a session.
    let (status, answer) = Api::with_token(&controller, "")
        .post_json("/agent/v1/history", good.clone())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");

    // Nothing was stored, for either client.
    for client in [&a.name, &b.name] {
        let (status, shown) = admin.get(&history_path(client, 0)).await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        assert!(shown.get("collected").is_none(), "{client}: {shown}");
        assert_eq!(shown["samples"], json!([]), "{client}: {shown}");
    }
    // The request is still open: a good upload is taken, once.
    let (status, answer) = upload(&a, good.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = upload(&a, good).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    controller.stop().await;
}

#[tokio::test]
async fn histories_of_unknown_and_offline_clients_and_bad_waits() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let (status, body) = admin.get(&history_path("nothing-here", 0)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = admin.get(&history_path("nothing-here", 11)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("at most 10"),
        "{body}"
    );

    // Enrolled, never heartbeated: not online, so nothing is asked and nothing waited for.
    let agent = SimAgent::enroll(&controller, "history-machine-e", json!({})).await;
    let (status, shown) = admin.get(&history_path(&agent.name, 10)).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["fresh"], false);
    assert_eq!(shown["samples"], json!([]));
    let (status, answer) = upload(&agent, upload_of(&agent, &three_minutes())).await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing was asked: {answer}");
    controller.stop().await;
}
