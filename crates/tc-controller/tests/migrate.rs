//! Moving a controller from its embedded store to PostgreSQL with the real
//! `tc-controller migrate`: the agents it served go on with the controller on PostgreSQL (same
//! clients, same sessions or one opened with their key, no new enrolment) and install what they
//! are assigned next; a migration while the controller runs is refused and writes nothing. And
//! `tc-controller ca rotate` knows a controller on PostgreSQL runs by its data directory's lock.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tc_controller::store::StoreLocation;
use tc_store::{Counters, PgSettings, PgStore, TableCounts};
use tc_testkit::postgres::TestPostgres;

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs the real binary with `args`.
async fn tc_controller(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tc-controller"))
            .args(&args)
            .env_remove("TC_CONTROLLER_STORE")
            .env_remove("TC_CONTROLLER_STORE_PASSWORD")
            .env_remove("TC_CONTROLLER_STORE_PASSWORD_FILE")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

async fn migrate(data: &Path, url: &str) -> Output {
    tc_controller(vec![
        "migrate".into(),
        "--from".into(),
        data.display().to_string(),
        "--to".into(),
        url.into(),
    ])
    .await
}

/// What the database holds (its schema is created if missing; records never).
async fn database_holds(url: &str) -> (TableCounts, Counters) {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let store = PgStore::connect(&url).unwrap();
        (store.table_counts().unwrap(), store.counters().unwrap())
    })
    .await
    .unwrap()
}

/// Heartbeats and converges every agent until all have `version` of kiosk installed (at most
/// 30 s).
async fn converge_on(agents: &mut [SimAgent], version: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        settle(agents, &[], 1).await;
        if agents
            .iter()
            .all(|agent| installed(agent, "kiosk").as_deref() == Some(version))
        {
            return;
        }
        let installed: Vec<_> = agents.iter().map(|a| installed(a, "kiosk")).collect();
        assert!(
            Instant::now() < deadline,
            "the agents did not converge on {version}: {installed:?}"
        );
    }
}

/// Every client's name with its uid and resourceVersion.
async fn clients(admin: &Api) -> Vec<(String, String, String)> {
    let (status, list) = admin.get("/apis/thinfleet.io/v1/clients").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|client| {
            let meta = &client["metadata"];
            let field = |name: &str| meta[name].as_str().unwrap().to_owned();
            (field("name"), field("uid"), field("resourceVersion"))
        })
        .collect()
}

/// An object's uid, generation and resourceVersion.
fn meta_of(object: &Value) -> (Value, Value, u64) {
    let meta = &object["metadata"];
    (
        meta["uid"].clone(),
        meta["generation"].clone(),
        meta["resourceVersion"].as_str().unwrap().parse().unwrap(),
    )
}

#[tokio::test]
async fn agents_go_on_with_a_controller_migrated_from_redb_to_postgresql() {
    let server = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap();
    let url = server.create_database();
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");

    let first = TestController::start_in(&data, |_| {}).await;
    let admin = Api::admin(&first);
    let first_blob = publish(&admin, "kiosk", "1.0.0").await;
    let (status, applied) = admin
        .apply(&group_yaml("all", "{}", &[("kiosk", "^1")], "100%"), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    let mut agents = vec![
        SimAgent::enroll(&first, "m-1", json!({"site": "berlin"})).await,
        SimAgent::enroll(&first, "m-2", json!({"site": "paris"})).await,
    ];
    converge_on(&mut agents, "1.0.0").await;
    let enrolled = clients(&admin).await;
    assert_eq!(enrolled.len(), 2, "{enrolled:?}");
    let group_before = meta_of(&group(&admin, "all").await);

    // While the controller runs, the migration is refused and writes nothing.
    let refused = migrate(&data, &url).await;
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("stop the controller first"),
        "{}",
        text(&refused)
    );
    assert_eq!(
        database_holds(&url).await,
        (TableCounts::default(), Counters::default())
    );

    first.stop().await;
    let migrated = migrate(&data, &url).await;
    assert!(migrated.status.success(), "{}", text(&migrated));
    let report = String::from_utf8_lossy(&migrated.stdout).into_owned();
    let count = |table: &str| {
        report
            .lines()
            .find_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some(table)).then(|| words.next().unwrap().to_owned())
            })
            .unwrap_or_else(|| panic!("no count of {table} in:\n{report}"))
    };
    assert_eq!(count("clients"), "2", "{report}");
    assert_eq!(count("objects"), "2", "{report}");
    assert_eq!(count("blobs"), "1", "{report}");
    // The blobs are in the database now: the controller on PostgreSQL does not need its files.
    std::fs::remove_dir_all(data.join("blobs/sha256")).unwrap();
    // Once copied, the database is not a target any more.
    let again = migrate(&data, &url).await;
    assert!(!again.status.success());
    assert!(text(&again).contains("not empty"), "{}", text(&again));

    let second = TestController::start_in(&data, |config| {
        config.store = StoreLocation::Postgres(PgSettings::new(url.clone()));
    })
    .await;
    let admin = Api::admin(&second);
    let served = admin
        .http
        .get(format!("{}/blobs/sha256/{first_blob}", admin.base))
        .bearer_auth(&admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(
        sha256_hex(&served.bytes().await.unwrap()),
        first_blob,
        "the migrated blob, byte for byte"
    );
    assert_eq!(
        clients(&admin).await,
        enrolled,
        "the same clients, as they were"
    );
    // The same group; the controller may have written its status since (a newer version).
    let (uid, generation, version) = meta_of(&group(&admin, "all").await);
    assert_eq!((&uid, &generation), (&group_before.0, &group_before.1));
    assert!(version >= group_before.2, "{version} < {}", group_before.2);
    // The first agent goes on with its session; the second opens a new one with its key.
    agents[0].api = Api::with_token(&second, &agents[0].api.token);
    let (status, opened) = Api::with_token(&second, "")
        .open_session(&TestIdentity::new("m-2"), "m-2")
        .await;
    assert_eq!(status, StatusCode::OK, "{opened}");
    agents[1].api = Api::with_token(&second, opened["session"]["token"].as_str().unwrap());
    for agent in &mut agents {
        let desired = agent.heartbeat().await;
        assert_eq!(versions(&desired), ["kiosk@1.0.0"], "{desired}");
    }

    publish(&admin, "kiosk", "1.1.0").await;
    converge_on(&mut agents, "1.1.0").await;
    let now = clients(&admin).await;
    let names_and_uids = |list: &[(String, String, String)]| {
        list.iter()
            .map(|(name, uid, _)| (name.clone(), uid.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names_and_uids(&now), names_and_uids(&enrolled));
    let (status, client) = admin.get("/apis/thinfleet.io/v1/clients/m-1").await;
    assert_eq!(status, StatusCode::OK, "{client}");
    assert_eq!(
        client["status"]["packages"][0]["version"], "1.1.0",
        "{client}"
    );
    assert!(client["status"]["lastHeartbeat"].is_string(), "{client}");
    second.stop().await;
}

#[tokio::test]
async fn ca_rotate_is_refused_while_a_controller_on_postgresql_runs() {
    let server = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap();
    let url = server.create_database();
    let controller = TestController::start_with(|config| {
        config.store = StoreLocation::Postgres(PgSettings::new(url.clone()));
    })
    .await;
    let data = controller.data_dir().to_path_buf();
    let ca_command = |step: &str| {
        tc_controller(vec![
            "--data-dir".into(),
            data.display().to_string(),
            "ca".into(),
            step.into(),
            "--store".into(),
            url.clone(),
        ])
    };
    let prepared = ca_command("prepare").await;
    assert!(prepared.status.success(), "{}", text(&prepared));
    let ca = std::fs::read(data.join("pki/ca.crt")).unwrap();
    let next = std::fs::read(data.join("pki/next-ca.crt")).unwrap();

    let refused = ca_command("rotate").await;
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("stop the controller"),
        "{}",
        text(&refused)
    );
    assert_eq!(std::fs::read(data.join("pki/ca.crt")).unwrap(), ca);

    // The data directory outlives the controller.
    let (_, _temp) = controller.stop_keep_data().await;
    let rotated = ca_command("rotate").await;
    assert!(rotated.status.success(), "{}", text(&rotated));
    assert_eq!(std::fs::read(data.join("pki/ca.crt")).unwrap(), next);
}

/// A blob file whose content is not its name stops the migration before the store is copied,
/// naming the file; once it is dealt with, running the migration again copies everything.
#[tokio::test]
async fn a_bad_blob_stops_the_migration_with_the_store_still_empty_and_it_can_run_again() {
    let server = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap();
    let url = server.create_database();
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let controller = TestController::start_in(&data, |_| {}).await;
    let good = publish(&Api::admin(&controller), "kiosk", "1.0.0").await;
    controller.stop().await;
    let bad = data.join("blobs/sha256").join("0".repeat(64));
    std::fs::write(&bad, b"not what the name says").unwrap();

    let settings = PgSettings::new(url.clone());
    let (from, to) = (data.clone(), settings.clone());
    let failed = tokio::task::spawn_blocking(move || tc_controller::migrate::migrate(&from, &to))
        .await
        .unwrap();
    let message = failed.unwrap_err().to_string();
    assert!(message.contains(&bad.display().to_string()), "{message}");
    assert_eq!(database_holds(&url).await.0, TableCounts::default());

    std::fs::remove_file(&bad).unwrap();
    let (from, to) = (data.clone(), settings);
    let migrated = tokio::task::spawn_blocking(move || tc_controller::migrate::migrate(&from, &to))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(migrated.blobs.0, 1);
    assert_eq!(migrated.store.tables.objects, 1);
    let store = PgStore::connect(&url).unwrap();
    assert_eq!(
        store.blob_size(&good).unwrap(),
        Some(
            std::fs::metadata(data.join("blobs/sha256").join(&good))
                .unwrap()
                .len()
        )
    );
}
