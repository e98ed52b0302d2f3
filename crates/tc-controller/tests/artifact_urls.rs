//! `artifact.url`s are fetched outside the apply lock, within the configured timeouts: a slow
//! URL holds up no other apply. The URLs are served by a listener on 127.0.0.1 that answers only
//! when the test lets it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Serves `body` to one request, after the request arrived (reported on the returned receiver)
/// and the returned sender was used (dropping it without sending closes the connection
/// unanswered).
async fn slow_server(body: Vec<u8>) -> (SocketAddr, mpsc::Receiver<()>, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived_tx, arrived_rx) = mpsc::channel(1);
    let (answer_tx, answer_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        while !request.windows(4).any(|window| window == b"\r\n\r\n") {
            let read = stream.read(&mut buffer).await.unwrap();
            if read == 0 {
                return;
            }
            request.extend_from_slice(&buffer[..read]);
        }
        arrived_tx.send(()).await.unwrap();
        if answer_rx.await.is_ok() {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(&body).await.unwrap();
        }
    });
    (addr, arrived_rx, answer_tx)
}

fn url_release(addr: SocketAddr, sha: &str) -> String {
    format!(
        "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata:\n  name: kiosk-1.0.0\nspec:\n  \
         package: kiosk\n  version: 1.0.0\n  artifact:\n    url: http://{addr}/kiosk.zip\n    sha256: {sha}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_artifact_url_does_not_hold_up_other_applies() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let zip = package_zip("kiosk-1.0.0");
    let sha = sha256_hex(&zip);
    let (addr, mut arrived, answer) = slow_server(zip.clone()).await;

    let slow_admin = Api::admin(&controller);
    let release = url_release(addr, &sha);
    let slow_apply = tokio::spawn(async move { slow_admin.apply(&release, "").await });
    arrived
        .recv()
        .await
        .expect("the controller fetches the URL");

    // The fetch is under way and does not answer: another apply goes through meanwhile.
    let group = group_yaml("front", "{}", &[("kiosk", "^1")], "1");
    let (status, result) = tokio::time::timeout(Duration::from_secs(30), admin.apply(&group, ""))
        .await
        .expect("an apply waits for the fetch of another apply's artifact.url");
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(
        actions(&result),
        vec![("created".into(), "ClientGroup/front".into())]
    );
    assert!(!slow_apply.is_finished());

    answer.send(()).unwrap();
    let (status, result) = slow_apply.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(
        actions(&result),
        vec![("created".into(), "PackageRelease/kiosk-1.0.0".into())]
    );
    let (status, _) = admin.get(&format!("/blobs/sha256/{sha}")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_url_that_does_not_answer_fails_the_apply_after_the_fetch_timeout() {
    let controller = TestController::start_with(|config| {
        config.artifact_fetch_timeout = Duration::from_millis(300);
    })
    .await;
    let admin = Api::admin(&controller);
    let zip = package_zip("kiosk-1.0.0");
    let sha = sha256_hex(&zip);
    let (addr, _arrived, _answer) = slow_server(zip).await;
    let (status, result) = admin.apply(&url_release(addr, &sha), "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{result}");
    let message = result["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("fetching http://{addr}/kiosk.zip"))
            && message.contains("timed out"),
        "{message}"
    );
    let (status, _) = admin
        .get("/apis/thinfleet.io/v1/packagereleases/kiosk-1.0.0")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was applied");
}
