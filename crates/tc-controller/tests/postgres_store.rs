//! A controller with `--store postgres://…` keeps its state and its blobs in the database, not
//! in its data directory: another controller, with a data directory of its own, finds them
//! there; the data directory is still one controller's.

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

/// A PostgreSQL server started for the test, and the location of a new database in it.
async fn database() -> (TestPostgres, StoreLocation) {
    let server = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap();
    let location = StoreLocation::Postgres(PgSettings::new(server.create_database()));
    (server, location)
}

#[tokio::test]
async fn a_controller_keeps_its_state_in_postgresql_where_another_one_finds_it() {
    let (_server, location) = database().await;

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
    let (_server, location) = database().await;
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
    let (mut server, location) = database().await;
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

/// Bytes that do not compress, so that a package made of them is as large as they are.
fn noise(size: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9u32;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

/// GET (or HEAD) of a blob with extra headers: status, headers, body.
async fn fetch(
    api: &Api,
    method: reqwest::Method,
    sha: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = api
        .http
        .request(method, format!("{}/blobs/sha256/{sha}", api.base))
        .bearer_auth(&api.token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, response.bytes().await.unwrap().to_vec())
}

/// Whole, by ranges (inside a chunk, across the 1 MiB boundary, a suffix, unsatisfiable), and
/// with If-None-Match: the answers a blob on disk gets.
async fn check_served(api: &Api, sha: &str, zip: &[u8]) {
    let size = zip.len();
    let get = reqwest::Method::GET;
    let (status, headers, body) = fetch(api, get.clone(), sha, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], size.to_string().as_str());
    assert!(body == zip, "the whole blob differs from the upload");
    let etag = headers["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"sha256:{sha}\""));

    const MIB: usize = 1 << 20;
    for (range, start, end) in [
        ("bytes=100-199".to_string(), 100, 199),
        (format!("bytes={}-{}", MIB - 7, MIB + 8), MIB - 7, MIB + 8),
        (format!("bytes={}-", MIB - 1), MIB - 1, size - 1),
        ("bytes=-1000".to_string(), size - 1000, size - 1),
    ] {
        let (status, headers, body) = fetch(api, get.clone(), sha, &[("range", &range)]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            headers["content-range"],
            format!("bytes {start}-{end}/{size}").as_str(),
            "{range}"
        );
        assert!(body == zip[start..=end], "{range}: the bytes differ");
    }
    let (status, headers, _) = fetch(
        api,
        get.clone(),
        sha,
        &[("range", &format!("bytes={size}-"))],
    )
    .await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(headers["content-range"], format!("bytes */{size}").as_str());
    let (status, _, body) = fetch(api, get, sha, &[("if-none-match", &etag)]).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    let (status, headers, body) = fetch(api, reqwest::Method::HEAD, sha, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], size.to_string().as_str());
    assert!(body.is_empty());
}

#[tokio::test]
async fn blobs_live_in_postgresql_where_another_controller_serves_them() {
    let (_server, location) = database().await;
    let first = TestController::start_with(|config| config.store = location.clone()).await;
    let api = Api::admin(&first);
    // A package of a little more than two chunks.
    let zip = build_zip(&[PackageFile {
        path: "payload.bin",
        content: &noise((2 << 20) + 4321),
        mode: 0o644,
    }]);
    let sha = sha256_hex(&zip);
    assert!(zip.len() > 2 << 20, "{} bytes", zip.len());
    let (status, info) = api.put_blob(zip.clone()).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["sha256"], sha);
    assert_eq!(info["size"], zip.len());
    let (status, result) = api.apply(&release_yaml("kiosk", "1.0.0", &sha), "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(
        result["items"][0]["object"]["status"]["artifact"]["size"],
        zip.len()
    );
    check_served(&api, &sha, &zip).await;

    // A content that is not the declared one is refused, and nothing is stored.
    let wrong = "a".repeat(64);
    let response = api
        .http
        .put(format!("{}/blobs?sha256={wrong}", api.base))
        .bearer_auth(&api.token)
        .body(b"xyz".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _, _) = fetch(&api, reqwest::Method::GET, &wrong, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing of the blob is in the data directory.
    let blobs = first.data_dir().join("blobs");
    assert!(!blobs.join("sha256").join(&sha).exists());
    assert_eq!(std::fs::read_dir(blobs.join("tmp")).unwrap().count(), 0);
    let other = tempfile::tempdir().unwrap();
    copy_shared_files(first.data_dir(), &other.path().join("data"));
    first.stop().await;

    // Another controller, with a data directory of its own (and the files the replicas share),
    // serves the blob from the database.
    let second =
        TestController::start_in(&other.path().join("data"), |config| config.store = location)
            .await;
    assert!(!second.data_dir().join("blobs/sha256").join(&sha).exists());
    let api = Api::admin(&second);
    check_served(&api, &sha, &zip).await;
    // It finds the blob for a release too, and takes the same blob again without harm.
    let (status, result) = api.apply(&release_yaml("kiosk", "1.1.0", &sha), "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let (status, info) = api.put_blob(zip.clone()).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["sha256"], sha);
    check_served(&api, &sha, &zip).await;
    second.stop().await;
}
