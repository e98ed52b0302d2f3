//! Several `tc-controller` processes on one PostgreSQL database: one leads and serves, the others
//! wait on standby and take over when it dies (kill -9) or stops; a replica whose shared files
//! differ from the others' is refused before it changes anything.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use tc_testkit::postgres::TestPostgres;

struct Replica {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn start(url: &str, data: &Path, name: &str) -> Replica {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::create_dir_all(data).unwrap();
        let log = data.with_extension(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tc-controller"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data)
            .args(["--no-manifests", "--store", url, "--replica-name", name])
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Replica {
            child,
            base: format!("https://127.0.0.1:{port}"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until its log contains `text`.
    fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log().contains(text) {
            assert!(Instant::now() < deadline, "no {text:?} in:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until it answers `/readyz` with 200; how long that took.
    async fn wait_ready(&self, http: &reqwest::Client) -> Duration {
        let started = Instant::now();
        loop {
            if let Ok(response) = http.get(format!("{}/readyz", self.base)).send().await
                && response.status() == StatusCode::OK
            {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "replica at {} never became ready:\n{}",
                self.base,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "replica did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A client trusting the CA the first replica made (`data/pki/ca.crt`), once it exists.
fn client_trusting(data: &Path) -> reqwest::Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    let ca = loop {
        if let Ok(certificates) = tc_trust::read_pem_certificates(&data.join("pki/ca.crt")) {
            break certificates;
        }
        assert!(Instant::now() < deadline, "no CA was created");
        std::thread::sleep(Duration::from_millis(50));
    };
    let config = tc_trust::client_config(
        &tc_trust::Trust::CaCertificates(ca),
        &[tc_trust::ALPN_HTTP1],
        None,
    )
    .unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

const GROUP: &str = "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: front-desk\nspec:\n  selector:\n    matchLabels:\n      site: front\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_leader_and_nothing_acknowledged_is_lost() {
    tc_controller::install_crypto_provider();
    let server = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap();
    let url = server.create_database();
    let temp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (temp.path().join("a"), temp.path().join("b"));

    let mut a = Replica::start(&url, &data_a, "a");
    let http = client_trusting(&data_a);
    a.wait_ready(&http).await;
    copy_shared_files(&data_a, &data_b);
    let b = Replica::start(&url, &data_b, "b");
    b.wait_log("on standby");
    // A standby closes the connections it accepts at once: nobody waits on it.
    let refused = http.get(format!("{}/readyz", b.base)).send().await;
    assert!(refused.is_err(), "{refused:?}");

    // Writes acknowledged by the leader: an object, an enrolled client.
    let admin = Api {
        base: a.base.clone(),
        token: read(&data_a.join("admin.token")),
        http: http.clone(),
    };
    let (status, body) = admin.apply(GROUP, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let agent = Api {
        base: a.base.clone(),
        token: String::new(),
        http: http.clone(),
    };
    let (status, enrolled) = agent
        .enroll(
            &read(&data_a.join("bootstrap.token")),
            "m-1",
            "kiosk-1",
            json!({"site": "front"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{enrolled}");
    let session = enrolled["session"]["token"].as_str().unwrap().to_string();
    let (status, before) = admin.get("/apis/thinfleet.io/v1/clients/kiosk-1").await;
    assert_eq!(status, StatusCode::OK, "{before}");
    assert!(before["metadata"]["uid"].is_string(), "{before}");

    // kill -9: the lease is not given up, b takes it when it expires.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let takeover = b.wait_ready(&http).await;
    println!(
        "takeover after the leader's death: {takeover:?} (lease {:?})",
        tc_controller::leader::LEASE_TTL
    );
    b.wait_log("took the leader lease");

    let admin_b = Api {
        base: b.base.clone(),
        ..admin
    };
    let (status, group) = admin_b
        .get("/apis/thinfleet.io/v1/clientgroups/front-desk")
        .await;
    assert_eq!(status, StatusCode::OK, "{group}");
    let (status, client) = admin_b.get("/apis/thinfleet.io/v1/clients/kiosk-1").await;
    assert_eq!(status, StatusCode::OK, "{client}");
    assert_eq!(client["metadata"]["uid"], before["metadata"]["uid"]);
    // The agent's session, issued by a, is good on b (the replicas share the session key), and
    // the client is a member of the group b found in the database.
    let agent_b = Api {
        base: b.base.clone(),
        token: session,
        http: http.clone(),
    };
    let (status, answer) = agent_b
        .heartbeat(json!({"protocolVersion": 2, "observedRevision": 0, "inventoryHash": ""}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    eventually(Duration::from_secs(30), || async {
        let (_, group) = admin_b
            .get("/apis/thinfleet.io/v1/clientgroups/front-desk")
            .await;
        (group["status"]["desired"] == 1).then_some(())
    })
    .await;

    // a comes back on standby; b stopping cleanly gives the lease up, and a takes over at once.
    let a = Replica::start(&url, &data_a, "a");
    a.wait_log("on standby");
    let mut b = b;
    b.signal("-TERM");
    assert!(b.wait_exit().success(), "{}", b.log());
    assert!(b.log().contains("gave the leader lease up"), "{}", b.log());
    let handover = a.wait_ready(&http).await;
    println!("handover after a clean stop: {handover:?}");
    let admin_a = Api {
        base: a.base.clone(),
        ..admin_b
    };
    let (status, _) = admin_a.get("/apis/thinfleet.io/v1/clients/kiosk-1").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_shared_files_differ_is_refused_before_it_changes_anything() {
    tc_controller::install_crypto_provider();
    let server = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap();
    let url = server.create_database();
    let temp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (temp.path().join("a"), temp.path().join("b"));
    let mut a = Replica::start(&url, &data_a, "a");
    let http = client_trusting(&data_a);
    a.wait_ready(&http).await;
    let bootstrap = read(&data_a.join("bootstrap.token"));
    // b has a bootstrap token file of its own: leading with it would revoke a's token.
    copy_shared_files(&data_a, &data_b);
    std::fs::write(data_b.join("bootstrap.token"), "another-token\n").unwrap();
    let mut b = Replica::start(&url, &data_b, "b");
    b.wait_log("on standby");
    a.signal("-TERM");
    assert!(a.wait_exit().success(), "{}", a.log());
    let status = b.wait_exit();
    assert!(!status.success());
    let log = b.log();
    assert!(
        log.contains("bootstrap token file")
            && log.contains("differs")
            && log.contains("b/bootstrap.token"),
        "{log}"
    );
    // a's bootstrap token still enrols.
    let a = Replica::start(&url, &data_a, "a2");
    a.wait_ready(&http).await;
    let agent = Api {
        base: a.base.clone(),
        token: String::new(),
        http: http.clone(),
    };
    let (status, enrolled) = agent.enroll(&bootstrap, "m-2", "kiosk-2", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{enrolled}");
}
