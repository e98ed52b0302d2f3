//! A controller with `--store postgres://…` keeps its state in the database, not in its data
//! directory: another controller, with a data directory of its own, finds it there; the data
//! directory is still one controller's.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use tc_controller::store::StoreLocation;
use tc_store::PgSettings;
use tc_testkit::postgres::TestPostgres;

const GROUP: &str = "apiVersion: thinfleet.io/v1
kind: ClientGroup
metadata:
  name: front-desk
spec:
  selector: { matchLabels: { site: berlin } }
";

#[tokio::test]
async fn a_controller_keeps_its_state_in_postgresql_where_another_one_finds_it() {
    let server = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap();
    let location = StoreLocation::Postgres(PgSettings::new(server.create_database()));

    let first = TestController::start_with(|config| config.store = location.clone()).await;
    let api = Api::admin(&first);
    let (status, result) = api.apply(GROUP, "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let (status, enrolled) = api
        .enroll(
            first.bootstrap_token(),
            "m-1",
            "kiosk-1",
            json!({"site": "berlin"}),
        )
        .await;
    assert!(status.is_success(), "{status}: {enrolled}");
    assert!(!first.data_dir().join("thinfleet.redb").exists());
    // Another controller of this database has a data directory of its own, with the files the
    // replicas share.
    let other = tempfile::tempdir().unwrap();
    copy_shared_files(first.data_dir(), &other.path().join("data"));
    first.stop().await;

    let second =
        TestController::start_in(&other.path().join("data"), |config| config.store = location)
            .await;
    let api = Api::admin(&second);
    let (status, group) = api
        .get("/apis/thinfleet.io/v1/clientgroups/front-desk")
        .await;
    assert_eq!(status, StatusCode::OK, "{group}");
    assert_eq!(group["metadata"]["generation"], 1);
    let (status, clients) = api.get("/apis/thinfleet.io/v1/clients").await;
    assert_eq!(status, StatusCode::OK, "{clients}");
    assert_eq!(item_names(&clients), ["kiosk-1"]);
    assert!(!second.data_dir().join("thinfleet.redb").exists());
    second.stop().await;
}

#[tokio::test]
async fn a_second_controller_on_the_same_data_directory_is_refused() {
    let server = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap();
    let location = StoreLocation::Postgres(PgSettings::new(server.create_database()));
    let first = TestController::start_with(|config| config.store = location.clone()).await;
    let mut config = tc_controller::Config::new(first.data_dir());
    config.store = location;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    match tc_controller::open(config, stopped).await {
        Err(error) => assert!(
            error
                .to_string()
                .contains("another controller uses this data directory"),
            "{error}"
        ),
        Ok(_) => panic!("a second controller opened the data directory"),
    }
    first.stop().await;
}

/// The database going away for a while: writes are answered 503 with `Retry-After` (nothing
/// acknowledged that is not stored), and the controller resumes by itself when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_answered_503_while_the_database_is_down_and_resume_after() {
    let mut server = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap();
    let location = StoreLocation::Postgres(PgSettings::new(server.create_database()));
    let controller = TestController::start_with(|config| config.store = location).await;
    let api = Api::admin(&controller);
    let (status, result) = api.apply(GROUP, "").await;
    assert_eq!(status, StatusCode::OK, "{result}");

    let server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    let changed = GROUP.replace("berlin", "paris");
    let response = api
        .http
        .post(format!("{}/apis/thinfleet.io/v1/apply", api.base))
        .bearer_auth(&api.token)
        .header("content-type", "application/yaml")
        .body(changed.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "StoreUnavailable", "{body}");

    let mut server = server;
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let applied = eventually(std::time::Duration::from_secs(30), || {
        let (api, changed) = (&api, &changed);
        async move {
            let (status, result) = api.apply(changed, "").await;
            (status == StatusCode::OK).then_some(result)
        }
    })
    .await;
    assert_eq!(
        actions(&applied),
        [(
            "configured".to_string(),
            "ClientGroup/front-desk".to_string()
        )]
    );
    let (_, group) = api
        .get("/apis/thinfleet.io/v1/clientgroups/front-desk")
        .await;
    assert_eq!(group["spec"]["selector"]["matchLabels"]["site"], "paris");
    controller.stop().await;
    drop(server);
}
