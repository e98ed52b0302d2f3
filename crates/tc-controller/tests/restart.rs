//! Durability across a hard kill: the real `tc-controller` binary is killed with SIGKILL and
//! restarted on the same data directory; everything it acknowledged is still there.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(data_dir: &std::path::Path, port: u16) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_tc-controller"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data_dir)
        .arg("--no-manifests")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Process { child }
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = http.get(format!("{base}/readyz")).send().await
            && response.status() == StatusCode::OK
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "controller did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn everything_acknowledged_survives_kill_9() {
    tc_controller::install_crypto_provider();
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let port = free_port();
    let base = format!("https://127.0.0.1:{port}");
    let mut process = start(&data, port);
    let http = client_trusting_its_ca(&data, Duration::from_secs(30)).await;
    wait_ready(&http, &base).await;

    let admin_token = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let bootstrap = std::fs::read_to_string(data.join("bootstrap.token"))
        .unwrap()
        .trim()
        .to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(data.join("admin.token"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
    let api = Api {
        base: base.clone(),
        token: admin_token.clone(),
        http: http.clone(),
    };
    let zip = package_zip("durable");
    let (_, blob) = api.put_blob(zip.clone()).await;
    let sha = blob["sha256"].as_str().unwrap().to_string();
    let (status, _) = api
        .apply(
            &format!(
                "{}{}",
                release_yaml("kiosk", "1.0.0", &sha),
                group_yaml("all", "{}", &[("kiosk", "^1")], "1")
            ),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, enrolled) = api
        .enroll(
            &bootstrap,
            "machine-1",
            "kiosk-1",
            json!({"site": "berlin"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let client = Api {
        base: base.clone(),
        token: enrolled["session"]["token"].as_str().unwrap().to_string(),
        http: http.clone(),
    };
    // Wait until the client is assigned the package, then report it installed (acknowledged).
    let desired = eventually(Duration::from_secs(10), || async {
        let (_, response) = client
            .heartbeat(json!({"protocolVersion": 1, "observedRevision": 0, "inventoryHash": ""}))
            .await;
        (!response["desired"]["packages"]
            .as_array()
            .unwrap()
            .is_empty())
        .then_some(response["desired"].clone())
    })
    .await;
    let report = json!({"protocolVersion": 1, "observedRevision": desired["revision"], "inventoryHash": "",
        "packages": [{"name": "kiosk", "version": "1.0.0", "state": "Installed", "since": "2026-11-22T00:00:00Z"}]});
    let (status, _) = client.heartbeat(report).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .request(
            reqwest::Method::PATCH,
            "/apis/thinfleet.io/v1/clients/kiosk-1",
            Some(json!({"metadata": {"labels": {"rack": "7"}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // A new inventory is acknowledged.
    let inventory = json!({"protocolVersion": 1, "observedRevision": desired["revision"], "inventoryHash": "inv-1",
        "packages": [{"name": "kiosk", "version": "1.0.0", "state": "Installed", "since": "2026-11-22T00:00:00Z"}],
        "inventory": {"hostname": "kiosk-1-host", "arch": "x86_64", "osName": "Debian GNU/Linux", "cpuCores": 2}});
    let (status, response) = client.heartbeat(inventory).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response["sendInventory"], false);
    // Then a status change.
    let changed = json!({"protocolVersion": 1, "observedRevision": desired["revision"], "inventoryHash": "inv-1",
        "packages": [{"name": "kiosk", "version": "1.0.0", "state": "Installed", "since": "2026-11-22T00:00:01Z"}]});
    let (status, _) = client.heartbeat(changed).await;
    assert_eq!(status, StatusCode::OK);

    // SIGKILL: no chance to flush anything.
    process.child.kill().unwrap();
    process.child.wait().unwrap();
    drop(process);

    let _process = start(&data, port);
    // The client made before the kill still trusts the controller: its CA is kept.
    wait_ready(&http, &base).await;
    let (_, group) = api.get("/apis/thinfleet.io/v1/clientgroups/all").await;
    assert_eq!(group["spec"]["packages"][0]["name"], "kiosk");
    let (_, release) = api
        .get("/apis/thinfleet.io/v1/packagereleases/kiosk-1.0.0")
        .await;
    assert_eq!(release["status"]["artifact"]["sha256"], sha);
    let (_, stored) = api.get("/apis/thinfleet.io/v1/clients/kiosk-1").await;
    assert_eq!(stored["metadata"]["labels"]["rack"], "7");
    assert_eq!(stored["status"]["packages"][0]["state"], "Installed");
    assert_eq!(stored["status"]["desired"][0]["version"], "1.0.0");
    // The acknowledged inventory and its hash are durable: the agent is not asked again.
    assert_eq!(stored["status"]["inventoryHash"], "inv-1", "{stored}");
    assert_eq!(stored["status"]["inventory"]["hostname"], "kiosk-1-host");
    let (status, response) = client.heartbeat(json!({"protocolVersion": 1, "observedRevision": desired["revision"], "inventoryHash": "inv-1",
        "packages": [{"name": "kiosk", "version": "1.0.0", "state": "Installed", "since": "2026-11-22T00:00:01Z"}]})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response["sendInventory"], false, "{response}");
    // The client token still works and the desired state is served again.
    let (status, response) = client.heartbeat(json!({"protocolVersion": 1, "observedRevision": desired["revision"], "inventoryHash": ""})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response["desired"]["packages"][0]["sha256"], sha);
    assert_eq!(response["desired"]["revision"], desired["revision"]);
    let blob = http
        .get(format!("{base}/blobs/sha256/{sha}"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(blob.bytes().await.unwrap().to_vec(), zip);
}

#[tokio::test]
async fn sigterm_stops_cleanly_even_with_a_long_poll_waiting_and_ipv6_works() {
    tc_controller::install_crypto_provider();
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let port = {
        let listener = std::net::TcpListener::bind("[::1]:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_tc-controller"))
        .args(["--listen", &format!("[::1]:{port}"), "--data-dir"])
        .arg(&data)
        .arg("--no-manifests")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut process = Process { child };
    let base = format!("https://[::1]:{port}");
    let http = client_trusting_its_ca(&data, Duration::from_secs(90)).await;
    wait_ready(&http, &base).await;
    let bootstrap = std::fs::read_to_string(data.join("bootstrap.token"))
        .unwrap()
        .trim()
        .to_string();
    let api = Api {
        base: base.clone(),
        token: String::new(),
        http: http.clone(),
    };
    let (_, enrolled) = api.enroll(&bootstrap, "m", "kiosk", json!({})).await;
    let token = enrolled["session"]["token"].as_str().unwrap().to_string();
    let poll = {
        let http = http.clone();
        let url = format!("{base}/agent/v1/desired?afterRevision=999");
        tokio::spawn(async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let signalled = Command::new("kill")
        .args(["-TERM", &process.child.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the controller did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited for the long-poll: {:?}",
        started.elapsed()
    );
    // The waiting long-poll was answered (not cut off) before the process ended.
    assert_eq!(poll.await.unwrap().unwrap(), StatusCode::OK);
}
