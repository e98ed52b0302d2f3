//! The agent follows no redirect: a controller (or something posing as one) answering 307 must not
//! make the agent replay an enrolment (with its bootstrap token) or a heartbeat (with the
//! inventory) to another host. The real binary talks to a fake controller that redirects every
//! request to a second listener recording whatever reaches it.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, Uri, header};
use axum::response::IntoResponse;
use tc_agent::state::{Credentials, StateDir};
use tc_proto::Timestamp;

/// Requests one listener received: path and body.
type Received = Arc<Mutex<Vec<(String, String)>>>;

/// Serves `router` on a free port of 127.0.0.1.
async fn listen(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// A listener that records every request and answers 200 with an empty JSON object.
async fn recorder() -> (SocketAddr, Received) {
    let received = Received::default();
    let seen = received.clone();
    let router = Router::new().fallback(move |uri: Uri, body: Bytes| {
        let seen = seen.clone();
        async move {
            let body = String::from_utf8_lossy(&body).into_owned();
            seen.lock().unwrap().push((uri.path().to_owned(), body));
            (StatusCode::OK, "{}")
        }
    });
    (listen(router).await, received)
}

/// A "controller" that answers every request with 307 to the same path on `target`.
async fn redirector(target: SocketAddr) -> (SocketAddr, Received) {
    let received = Received::default();
    let seen = received.clone();
    let router = Router::new().fallback(move |uri: Uri, body: Bytes| {
        let seen = seen.clone();
        async move {
            let body = String::from_utf8_lossy(&body).into_owned();
            seen.lock().unwrap().push((uri.path().to_owned(), body));
            let location = format!("http://{target}{}", uri.path());
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, location)],
            )
                .into_response()
        }
    });
    (listen(router).await, received)
}

fn requests_to(received: &Received, path: &str) -> usize {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|(seen, _)| seen == path)
        .count()
}

fn start_agent(server: SocketAddr, state: &Path, log: &Path) -> tokio::process::Child {
    let token_file = state.parent().unwrap().join("bootstrap.token");
    std::fs::write(&token_file, common::BOOTSTRAP_TOKEN).unwrap();
    let mut command = common::agent_command(&format!("http://{server}"), None, state);
    command
        .arg("--bootstrap-token-file")
        .arg(&token_file)
        .args(["--machine-id", "redirect-test-machine"])
        .stderr(std::fs::File::create(log).unwrap());
    tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_307_on_enroll_does_not_replay_the_bootstrap_token_to_another_host() {
    let (elsewhere, replayed) = recorder().await;
    let (controller, asked) = redirector(elsewhere).await;
    let temp = tempfile::tempdir().unwrap();
    let state = temp.path().join("state");
    let log = temp.path().join("agent.log");
    let mut agent = start_agent(controller, &state, &log);

    // A second enrolment is only sent after the first one ended, whatever happened to it.
    common::wait_for(
        Duration::from_secs(30),
        || requests_to(&asked, "/agent/v1/enroll") >= 2,
        || format!("enrolments seen: {:?}", asked.lock().unwrap()),
    )
    .await;
    assert_eq!(
        *replayed.lock().unwrap(),
        vec![],
        "the enrolment was replayed to the host the redirect named"
    );
    let first = asked.lock().unwrap()[0].1.clone();
    assert!(first.contains(common::BOOTSTRAP_TOKEN), "{first}");
    agent.kill().await.unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("enrolment failed") && log.contains("follows no redirect"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_307_on_heartbeat_does_not_send_the_inventory_to_another_host() {
    let (elsewhere, replayed) = recorder().await;
    let (controller, asked) = redirector(elsewhere).await;
    let temp = tempfile::tempdir().unwrap();
    let dir = StateDir::new(temp.path().join("state"));
    dir.create().unwrap();
    Credentials {
        server: format!("http://{controller}/"),
        machine_id: "redirect-test-machine".into(),
        client_name: "kiosk-1".into(),
        // Credentials as a protocol-1 controller handed out: used as they are, no session to
        // open first, so the first request is the heartbeat.
        public_key: String::new(),
        session: None,
        client_token: Some("client-secret".into()),
        enrolled_at: Timestamp::now(),
    }
    .save(&dir)
    .unwrap();
    let log = temp.path().join("agent.log");
    let mut agent = start_agent(controller, dir.root(), &log);

    common::wait_for(
        Duration::from_secs(30),
        || requests_to(&asked, "/agent/v1/heartbeat") >= 2,
        || format!("requests seen: {:?}", asked.lock().unwrap()),
    )
    .await;
    assert_eq!(
        requests_to(&asked, "/agent/v1/enroll"),
        0,
        "the stored credentials are used"
    );
    let first = asked.lock().unwrap()[0].1.clone();
    assert!(first.contains("\"inventory\""), "{first}");
    assert_eq!(
        *replayed.lock().unwrap(),
        vec![],
        "the heartbeat was replayed to the host the redirect named"
    );
    agent.kill().await.unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("heartbeat failed") && log.contains("follows no redirect"),
        "{log}"
    );
    let connection = std::fs::read_to_string(dir.connection()).unwrap();
    assert!(connection.contains("follows no redirect"), "{connection}");
}
