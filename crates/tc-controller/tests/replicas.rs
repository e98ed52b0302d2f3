//! Several `tc-controller` processes on one PostgreSQL database: one leads, the others follow and
//! serve too (long-polls woken through the change feed, blobs from the database, everything else
//! forwarded to the leader), and one of them takes over when the leader dies (kill -9) or stops; a
//! replica whose shared files differ from the others' is refused before it changes anything; a
//! rollout to real agents, spread over the replicas, finishes within its budget after the leader
//! is killed.

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
        Replica::start_with(url, data, name, &[])
    }

    /// Starts a replica with `args` added to its command line.
    fn start_with(url: &str, data: &Path, name: &str, args: &[&str]) -> Replica {
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
            .args(if args.contains(&"--manifests") {
                &[][..]
            } else {
                &["--no-manifests"][..]
            })
            .args(["--store", url, "--replica-name", name])
            .args(args)
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

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

/// A database with a first replica (`a`, leading) and what the tests need around it.
struct Cluster {
    /// Dropped last: the replicas stop before the database.
    server: TestPostgres,
    url: String,
    temp: tempfile::TempDir,
    /// Trusts the replicas' CA.
    http: reqwest::Client,
}

impl Cluster {
    /// Starts a database and replica `a` on it, and waits until `a` serves.
    async fn start() -> (Cluster, Replica) {
        tc_controller::install_crypto_provider();
        let server = tokio::task::spawn_blocking(TestPostgres::start)
            .await
            .unwrap();
        let url = server.create_database();
        let temp = tempfile::tempdir().unwrap();
        let a = Replica::start(&url, &temp.path().join("a"), "a");
        let http = client_trusting_its_ca(&temp.path().join("a"), Duration::from_secs(10)).await;
        a.wait_ready(&http).await;
        let cluster = Cluster {
            server,
            url,
            temp,
            http,
        };
        (cluster, a)
    }

    /// The data directory of replica `name`.
    fn data(&self, name: &str) -> PathBuf {
        self.temp.path().join(name)
    }

    /// Starts replica `name` with the shared files of `a`, and waits until it follows.
    fn follower(&self, name: &str) -> Replica {
        copy_shared_files(&self.data("a"), &self.data(name));
        let replica = Replica::start(&self.url, &self.data(name), name);
        replica.wait_log("this one follows and serves");
        replica
    }

    fn admin(&self, replica: &Replica) -> Api {
        admin_of(&self.data("a"), replica, &self.http)
    }
}

const GROUP: &str = "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: front-desk\nspec:\n  selector:\n    matchLabels:\n      site: front\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_leader_and_nothing_acknowledged_is_lost() {
    let (cluster, mut a) = Cluster::start().await;
    let (url, http, data_a) = (&cluster.url, &cluster.http, cluster.data("a"));
    let b = cluster.follower("b");
    // A follower serves: ready once it knows the leader, its metrics say it does not lead.
    b.wait_ready(http).await;
    assert_eq!(metric(http, &b, "thinfleet_replica_leading").await, Some(0));

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

    // kill -9: the lease is not given up, b takes it when it expires. Meanwhile b answers what
    // it forwards with 503 (the leader is gone), and then serves as the leader.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    let admin_b = Api {
        base: b.base.clone(),
        ..admin
    };
    let mut refused = 0;
    let takeover = loop {
        let (status, body) = admin_b.apply(GROUP, "").await;
        if status == StatusCode::OK {
            break killed.elapsed();
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        refused += 1;
        assert!(killed.elapsed() < Duration::from_secs(60), "{}", b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "takeover after the leader's death: {takeover:?} (lease {:?}; {refused} writes refused with 503 meanwhile)",
        tc_controller::leader::LEASE_TTL
    );
    b.wait_log("took the leader lease");

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

    // a comes back as a follower; b stopping cleanly gives the lease up, and a takes over at
    // once.
    let a = Replica::start(url, &data_a, "a");
    a.wait_log("this one follows and serves");
    let mut b = b;
    b.signal("-TERM");
    assert!(b.wait_exit().success(), "{}", b.log());
    assert!(b.log().contains("gave the leader lease up"), "{}", b.log());
    let stopped = Instant::now();
    a.wait_log("took the leader lease");
    println!("handover after a clean stop: {:?}", stopped.elapsed());
    let admin_a = Api {
        base: a.base.clone(),
        ..admin_b
    };
    let (status, _) = admin_a.get("/apis/thinfleet.io/v1/clients/kiosk-1").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_shared_files_differ_is_refused_before_it_changes_anything() {
    let (cluster, mut a) = Cluster::start().await;
    let (url, http) = (&cluster.url, &cluster.http);
    let (data_a, data_b) = (cluster.data("a"), cluster.data("b"));
    let bootstrap = read(&data_a.join("bootstrap.token"));
    // b has a bootstrap token file of its own: leading with it would revoke a's token.
    copy_shared_files(&data_a, &data_b);
    std::fs::write(data_b.join("bootstrap.token"), "another-token\n").unwrap();
    // Refused while following, before it serves anything.
    let mut b = Replica::start(url, &data_b, "b");
    let status = b.wait_exit();
    assert!(!status.success());
    let log = b.log();
    assert!(
        log.contains("bootstrap token file")
            && log.contains("differs")
            && log.contains("b/bootstrap.token"),
        "{log}"
    );
    // a's bootstrap token still enrols, on a and on a replica taking over from it.
    a.signal("-TERM");
    assert!(a.wait_exit().success(), "{}", a.log());
    let a = Replica::start(url, &data_a, "a2");
    a.wait_ready(http).await;
    let agent = Api {
        base: a.base.clone(),
        token: String::new(),
        http: http.clone(),
    };
    let (status, enrolled) = agent.enroll(&bootstrap, "m-2", "kiosk-2", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{enrolled}");
}

/// A TCP proxy in front of the replicas that sends each new connection to the next replica
/// answering `/readyz`, in turn, as a Kubernetes Service with a readiness probe does; checked
/// every 100 ms.
async fn proxy_to_the_replicas(replicas: Vec<String>, http: reqwest::Client) -> String {
    let ready = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let watched = ready.clone();
    tokio::spawn(async move {
        loop {
            let mut found = Vec::new();
            for base in &replicas {
                if let Ok(response) = http.get(format!("{base}/readyz")).send().await
                    && response.status() == StatusCode::OK
                {
                    found.push(base.trim_start_matches("https://").to_string());
                }
            }
            *watched.lock().unwrap() = found;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut turn = 0usize;
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            let target = {
                let ready = ready.lock().unwrap();
                turn += 1;
                (!ready.is_empty()).then(|| ready[turn % ready.len()].clone())
            };
            tokio::spawn(async move {
                let Some(target) = target else {
                    return;
                };
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    format!("https://{address}")
}

/// GET `path` through the proxy: `None` while no replica answers, or the one asked cannot reach
/// a leader (between two leaders).
async fn try_get(admin: &Api, path: &str) -> Option<serde_json::Value> {
    let response = admin
        .http
        .get(format!("{}{path}", admin.base))
        .bearer_auth(&admin.token)
        .send()
        .await
        .ok()?;
    if response.status() != StatusCode::OK {
        return None;
    }
    let text = response.text().await.ok()?;
    Some(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// What the clients of the fleet run of `package`, through `admin`.
async fn running(admin: &Api, package: &str) -> Vec<(String, Option<String>)> {
    let Some(clients) = try_get(admin, "/apis/thinfleet.io/v1/clients").await else {
        return vec![];
    };
    clients["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|client| {
            let version = client["status"]["packages"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == package && p["state"] == "Installed")
                .and_then(|p| p["version"].as_str().map(str::to_string));
            (
                client["metadata"]["name"].as_str().unwrap().to_string(),
                version,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_over_three_serving_replicas_goes_on_when_its_leader_is_killed() {
    let (cluster, mut a) = Cluster::start().await;
    let (http, data_a) = (&cluster.http, cluster.data("a"));
    let (b, c) = (cluster.follower("b"), cluster.follower("c"));
    let front = proxy_to_the_replicas(
        vec![a.base.clone(), b.base.clone(), c.base.clone()],
        http.clone(),
    )
    .await;
    let admin = Api {
        base: front.clone(),
        token: read(&data_a.join("admin.token")),
        http: http.clone(),
    };
    eventually(Duration::from_secs(30), || async {
        try_get(&admin, "/readyz").await.map(drop)
    })
    .await;

    // Three real agents through the proxy; kiosk 1.0.0 for all, one member at a time.
    let ca_hash = tc_trust::CaCertHash::of_certificate(
        tc_trust::read_pem_certificates(&data_a.join("pki/ca.crt")).unwrap()[0].as_ref(),
    )
    .unwrap()
    .to_string();
    let agents = tc_controller::demo::start_agents(
        &common::demo::binary("tc-agent"),
        &front,
        &data_a.join("bootstrap.token"),
        Some(&ca_hash),
    )
    .unwrap();
    publish(&admin, "kiosk", "1.0.0").await;
    let (status, applied) = admin
        .apply(&group_yaml("all", "{}", &[("kiosk", "^1")], "1"), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    eventually(Duration::from_secs(120), || async {
        let now = running(&admin, "kiosk").await;
        (now.len() == 3 && now.iter().all(|(_, v)| v.as_deref() == Some("1.0.0"))).then_some(())
    })
    .await;

    // 1.1.0 rolls out; once the first member has it, the leader is killed.
    publish(&admin, "kiosk", "1.1.0").await;
    eventually(Duration::from_secs(120), || async {
        let now = running(&admin, "kiosk").await;
        now.iter()
            .any(|(_, v)| v.as_deref() == Some("1.1.0"))
            .then_some(())
    })
    .await;
    // The followers serve the agents too: their long-polls wait there.
    let mut followed = 0;
    for replica in [&b, &c] {
        followed += metric(http, replica, "thinfleet_follower_long_polls_total")
            .await
            .unwrap_or(0);
    }
    assert!(followed > 0, "no long-poll waited on a follower");
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();

    // Another replica leads, the agents reach it through the proxy, and the rollout finishes.
    eventually(Duration::from_secs(180), || async {
        let now = running(&admin, "kiosk").await;
        (now.len() == 3 && now.iter().all(|(_, v)| v.as_deref() == Some("1.1.0"))).then_some(())
    })
    .await;
    println!(
        "the rollout finished {:?} after the leader was killed",
        killed.elapsed()
    );
    assert!(
        b.log().contains("took the leader lease") || c.log().contains("took the leader lease"),
        "no follower took over:\n{}\n{}",
        b.log(),
        c.log()
    );
    // Nothing acknowledged was lost: both releases and the group, as applied.
    for path in [
        "/apis/thinfleet.io/v1/packagereleases/kiosk-1.0.0",
        "/apis/thinfleet.io/v1/packagereleases/kiosk-1.1.0",
        "/apis/thinfleet.io/v1/clientgroups/all",
    ] {
        assert!(try_get(&admin, path).await.is_some(), "{path} is missing");
    }
    // The budget held across the takeover: never two members between "assigned 1.1.0" and
    // "installed 1.1.0".
    let events = try_get(&admin, "/apis/thinfleet.io/v1/events?limit=10000")
        .await
        .unwrap();
    let mut changing = std::collections::BTreeSet::new();
    let mut most = 0;
    for event in events["items"].as_array().unwrap() {
        let (client, message) = (
            event["object"]["name"].as_str().unwrap_or_default(),
            event["message"].as_str().unwrap_or_default(),
        );
        if event["reason"] == "Assigned" && message.contains("kiosk 1.0.0 -> 1.1.0") {
            changing.insert(client.to_string());
        }
        if event["reason"] == "Installed" && message.contains("kiosk 1.1.0") {
            changing.remove(client);
        }
        most = most.max(changing.len());
    }
    assert_eq!(most, 1, "{most} members updating at once: {events}");
    agents.stop().await;
}

/// The value of `name` in `replica`'s metrics.
async fn metric(http: &reqwest::Client, replica: &Replica, name: &str) -> Option<u64> {
    let text = http
        .get(format!("{}/metrics", replica.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
}

/// An enrolled client's agent, as the test drives it through one replica.
async fn enrolled_agent(cluster: &Cluster, replica: &Replica, machine: &str, name: &str) -> Api {
    let agent = Api {
        base: replica.base.clone(),
        token: String::new(),
        http: cluster.http.clone(),
    };
    let bootstrap = read(&cluster.data("a").join("bootstrap.token"));
    let (status, enrolled) = agent
        .enroll(&bootstrap, machine, name, json!({"site": "front"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{enrolled}");
    Api {
        token: enrolled["session"]["token"].as_str().unwrap().to_string(),
        ..agent
    }
}

/// Starts a long-poll of `agent` after `revision`; its answer and when it came.
fn long_poll(
    agent: &Api,
    revision: u64,
) -> tokio::task::JoinHandle<(StatusCode, serde_json::Value, Instant)> {
    let agent = Api {
        base: agent.base.clone(),
        token: agent.token.clone(),
        http: agent.http.clone(),
    };
    tokio::spawn(async move {
        let (status, answer) = agent
            .get(&format!(
                "/agent/v1/desired?afterRevision={revision}&timeoutSeconds=30"
            ))
            .await;
        (status, answer, Instant::now())
    })
}

async fn revision_of(agent: &Api) -> u64 {
    let (status, answer) = agent
        .get("/agent/v1/desired?afterRevision=0&timeoutSeconds=0")
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["desired"]["revision"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_serves_and_a_change_through_any_wakes_long_polls_on_all() {
    let (cluster, a) = Cluster::start().await;
    let http = &cluster.http;
    let (b, c) = (cluster.follower("b"), cluster.follower("c"));
    b.wait_ready(http).await;
    c.wait_ready(http).await;

    // The admin API through a follower: a blob uploaded and a release applied through c.
    let sha = publish(&cluster.admin(&c), "kiosk", "1.0.0").await;
    // Agents enrol through every replica, and each long-polls the replica it enrolled on.
    let mut agents = Vec::new();
    for (i, replica) in [&a, &b, &c].into_iter().enumerate() {
        agents.push(
            enrolled_agent(&cluster, replica, &format!("m-{i}"), &format!("kiosk-{i}")).await,
        );
    }
    let mut waiting = Vec::new();
    for agent in &agents {
        let revision = revision_of(agent).await;
        waiting.push(long_poll(agent, revision));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(waiting.iter().all(|poll| !poll.is_finished()));

    // A change through b wakes the long-polls waiting on a, b and c.
    let (status, applied) = cluster
        .admin(&b)
        .apply(
            &group_yaml(
                "all",
                "{matchLabels: {site: front}}",
                &[("kiosk", "^1")],
                "100%",
            ),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    let applied_at = Instant::now();
    for (poll, replica) in waiting.into_iter().zip(["a", "b", "c"]) {
        let (status, answer, at) = poll.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["changed"], true, "{answer}");
        assert_eq!(versions(&answer["desired"]), ["kiosk@1.0.0"], "{answer}");
        println!(
            "long-poll on {replica} answered {:?} after the apply through b returned",
            at.saturating_duration_since(applied_at)
        );
        // Generous: the figure printed is what matters (BENCHMARKS.md); this catches a stall.
        assert!(
            at.saturating_duration_since(applied_at) < Duration::from_secs(5),
            "{replica}"
        );
    }

    // Blobs from a follower: to an agent by its session, whole and by range; to nobody else.
    let zip = package_zip("kiosk-1.0.0");
    let url = format!("{}/blobs/sha256/{sha}", b.base);
    let whole = http
        .get(&url)
        .bearer_auth(&agents[1].token)
        .send()
        .await
        .unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.bytes().await.unwrap().as_ref(), &zip[..]);
    let part = http
        .get(&url)
        .bearer_auth(&agents[1].token)
        .header("range", "bytes=2-5")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap().as_ref(), &zip[2..6]);
    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // The notification connection of c is cut: c reads the feed every second anyway, opens a
    // new one, and its long-polls keep being woken.
    let terminated = cluster.server.psql(
        &cluster.url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    );
    assert_ne!(terminated.trim(), "0", "no listening connection found");
    let revision = revision_of(&agents[2]).await;
    let poll = long_poll(&agents[2], revision);
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&cluster.admin(&a), "kiosk", "1.1.0").await;
    let published = Instant::now();
    let (status, answer, at) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(versions(&answer["desired"]), ["kiosk@1.1.0"], "{answer}");
    println!(
        "with its notification connection cut, c answered {:?} after the change",
        at.saturating_duration_since(published)
    );
    assert!(at.saturating_duration_since(published) < Duration::from_secs(10));
    eventually(Duration::from_secs(10), || async {
        (metric(http, &c, "thinfleet_follower_feed_errors_total").await > Some(0)).then_some(())
    })
    .await;
}

/// Starts replica `a` on `url` in `temp/a` and, once it serves, replica `b` in `temp/b` with a's
/// shared files, `args` added to both; returns once b follows and serves, with a client that
/// trusts their CA.
async fn two_replicas(
    url: &str,
    temp: &Path,
    args: &[&str],
) -> (Replica, Replica, reqwest::Client) {
    let (data_a, data_b) = (temp.join("a"), temp.join("b"));
    let a = Replica::start_with(url, &data_a, "a", args);
    let http = client_trusting_its_ca(&data_a, Duration::from_secs(10)).await;
    a.wait_ready(&http).await;
    copy_shared_files(&data_a, &data_b);
    let b = Replica::start_with(url, &data_b, "b", args);
    b.wait_log("this one follows and serves");
    b.wait_ready(&http).await;
    (a, b, http)
}

/// The admin API on `replica`, with the admin token of the replicas' shared files in `data`.
fn admin_of(data: &Path, replica: &Replica, http: &reqwest::Client) -> Api {
    Api {
        base: replica.base.clone(),
        token: read(&data.join("admin.token")),
        http: http.clone(),
    }
}

/// Replicas on a database server that takes TLS connections only: given the CA that signed the
/// server's certificate, every connection of the leader and of a follower (the pool's, the
/// change feed's listener) is encrypted, and the replicas work as over plain text; a replica
/// without the CA is refused by the server and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reach_a_database_that_requires_tls() {
    tc_controller::install_crypto_provider();
    let (server, url, ca_file) = tokio::task::spawn_blocking(|| {
        let mut server = TestPostgres::start();
        let url = server.create_database();
        let ca_file = server.require_tls();
        (server, url, ca_file)
    })
    .await
    .unwrap();
    let name = url.rsplit('/').next().unwrap().to_string();
    let by_name = format!(
        "postgres://postgres@localhost:{}/{name}?hostaddr=127.0.0.1&sslmode=verify-full",
        server.port()
    );
    let ca = ca_file.to_str().unwrap();
    let temp = tempfile::tempdir().unwrap();
    let (a, b, http) = two_replicas(&by_name, temp.path(), &["--store-ca-file", ca]).await;
    assert!(
        a.log()
            .contains("use TLS; the server's certificate is verified"),
        "{}",
        a.log()
    );
    let data_a = temp.path().join("a");
    // A write through the follower reaches the leader, and the follower hears of it.
    let admin = |replica: &Replica| admin_of(&data_a, replica, &http);
    let (status, result) = admin(&b).apply(GROUP, "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let (status, group) = admin(&a)
        .get("/apis/thinfleet.io/v1/clientgroups/front-desk")
        .await;
    assert_eq!(status, StatusCode::OK, "{group}");
    let plain = server.psql(
        &url,
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.application_name = 'thinfleet' AND NOT s.ssl",
    );
    let encrypted = server.psql(
        &url,
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.application_name = 'thinfleet' AND s.ssl",
    );
    assert_eq!(
        plain, "0",
        "no connection in plain text ({encrypted} encrypted)"
    );
    assert_ne!(encrypted, "0");

    // Without the CA the URL's verify-full is refused before connecting; without either, the
    // server refuses plain text.
    let data_c = temp.path().join("c");
    copy_shared_files(&data_a, &data_c);
    let mut c = Replica::start(&by_name, &data_c, "c");
    assert!(!c.wait_exit().success());
    assert!(c.log().contains("--store-ca-file"), "{}", c.log());
    let mut c = Replica::start(&url, &data_c, "c");
    assert!(!c.wait_exit().success());
    assert!(c.log().contains("no encryption"), "{}", c.log());
}

/// The watched directory is the leader's: with the same directory on two replicas, the leader
/// applies it and the follower does not (it writes nothing of its own); when the leader is
/// killed, the replica that takes over applies the directory as it is then, a change made while
/// no one led included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_alone_applies_the_watched_directory_and_a_new_leader_takes_it_over() {
    tc_controller::install_crypto_provider();
    let server = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap();
    let url = server.create_database();
    let temp = tempfile::tempdir().unwrap();
    let manifests = temp.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("front-desk.yaml"), GROUP).unwrap();
    let dir = manifests.to_str().unwrap();
    let (mut a, b, http) = two_replicas(&url, temp.path(), &["--manifests", dir]).await;
    a.wait_log("manifest directory applied");
    let data_a = temp.path().join("a");
    let admin = |replica: &Replica| admin_of(&data_a, replica, &http);
    let group = |api: Api, name: &'static str| async move {
        api.get(&format!("/apis/thinfleet.io/v1/clientgroups/{name}"))
            .await
    };
    let (status, front) = group(admin(&b), "front-desk").await;
    assert_eq!(status, StatusCode::OK, "{front}");

    // A change to the directory is applied once, by the leader.
    std::fs::write(
        manifests.join("lobby.yaml"),
        GROUP.replace("front-desk", "lobby"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while group(admin(&b), "lobby").await.0 != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "lobby never applied:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !b.log().contains("manifest directory applied"),
        "the follower applied the directory:\n{}",
        b.log()
    );

    // With the leader gone, a change waits for the next leader, which applies it.
    a.signal("-KILL");
    a.wait_exit();
    std::fs::write(
        manifests.join("kiosks.yaml"),
        GROUP.replace("front-desk", "kiosks"),
    )
    .unwrap();
    std::fs::remove_file(manifests.join("lobby.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let kiosks = group(admin(&b), "kiosks").await.0;
        let lobby = group(admin(&b), "lobby").await.0;
        if kiosks == StatusCode::OK && lobby == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new leader did not apply the directory (kiosks {kiosks}, lobby {lobby}):\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        b.log().contains("manifest directory applied"),
        "{}",
        b.log()
    );
    let (status, front) = group(admin(&b), "front-desk").await;
    assert_eq!(status, StatusCode::OK, "{front}");
}
