//! The admin API over a real socket: apply semantics, auth, blobs.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const GROUP: &str = "apiVersion: thinfleet.io/v1
kind: ClientGroup
metadata:
  name: front-desk
  labels: { team: ops }
spec:
  selector: { matchLabels: { site: berlin } }
";

#[tokio::test]
async fn apply_reports_created_unchanged_configured_and_pruned() {
    let controller = TestController::start().await;
    let api = Api::admin(&controller);
    let other = GROUP.replace("front-desk", "back-office");
    let both = format!("{GROUP}---\n{other}");

    let (status, result) = api.apply(&both, "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(
        actions(&result),
        vec![
            ("created".into(), "ClientGroup/front-desk".into()),
            ("created".into(), "ClientGroup/back-office".into())
        ]
    );
    assert_eq!(result["items"][0]["object"]["metadata"]["generation"], 1);
    assert_eq!(
        result["items"][0]["object"]["metadata"]["managedBy"],
        "admin"
    );

    let (_, result) = api.apply(&both, "").await;
    assert_eq!(actions(&result)[0].0, "unchanged");

    let changed = both.replacen("site: berlin", "site: paris", 1);
    let (_, result) = api.apply(&changed, "").await;
    assert_eq!(actions(&result)[0].0, "configured");
    assert_eq!(result["items"][0]["object"]["metadata"]["generation"], 2);

    // Without --prune nothing is deleted; with it, what this manager applied before and left out goes.
    let (_, result) = api.apply(GROUP, "").await;
    assert_eq!(actions(&result).len(), 1);
    let (_, list) = api.get("/apis/thinfleet.io/v1/clientgroups").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let (_, result) = api.apply(GROUP, "?prune=true").await;
    assert_eq!(
        actions(&result)[1],
        ("pruned".into(), "ClientGroup/back-office".into())
    );
    let (status, _) = api
        .get("/apis/thinfleet.io/v1/clientgroups/back-office")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Events record the audit trail.
    let (_, events) = api
        .get("/apis/thinfleet.io/v1/events?kind=ClientGroup&name=back-office")
        .await;
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, vec!["Created", "Pruned"]);
}

#[tokio::test]
async fn dry_run_writes_nothing_and_shows_the_change() {
    let controller = TestController::start().await;
    let api = Api::admin(&controller);
    let (status, result) = api.apply(GROUP, "?dryRun=true").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["dryRun"], true);
    assert_eq!(actions(&result)[0].0, "created");
    let (status, _) = api
        .get("/apis/thinfleet.io/v1/clientgroups/front-desk")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    api.apply(GROUP, "").await;
    let (_, result) = api
        .apply(&GROUP.replace("berlin", "rome"), "?dryRun=true")
        .await;
    assert_eq!(actions(&result)[0].0, "configured");
    assert_eq!(
        result["items"][0]["existing"]["spec"]["selector"]["matchLabels"]["site"],
        "berlin"
    );
    assert_eq!(
        result["items"][0]["object"]["spec"]["selector"]["matchLabels"]["site"],
        "rome"
    );
    let (_, stored) = api
        .get("/apis/thinfleet.io/v1/clientgroups/front-desk")
        .await;
    assert_eq!(stored["spec"]["selector"]["matchLabels"]["site"], "berlin");
}

#[tokio::test]
async fn bad_manifests_change_nothing_and_say_where() {
    let controller = TestController::start().await;
    let api = Api::admin(&controller);
    let good = GROUP.replace("front-desk", "good");
    let bad = "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: { name: bad }\nspec:\n  selector: {}\n  colour: blue\n";
    let (status, error) = api
        .apply_files(&[("fleet/good.yaml", &good), ("fleet/bad.yaml", bad)], "")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["kind"], "Status");
    assert_eq!(error["reason"], "BadRequest");
    let cause = &error["details"]["causes"][0];
    assert_eq!(
        (
            cause["file"].as_str(),
            cause["line"].as_u64(),
            cause["column"].as_u64()
        ),
        (Some("fleet/bad.yaml"), Some(6), Some(3))
    );
    assert_eq!(cause["field"], "spec.colour");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("fleet/bad.yaml:6:3: spec.colour: unknown field `colour`"),
        "{error}"
    );
    // Atomic: the good document was not applied either.
    let (_, list) = api.get("/apis/thinfleet.io/v1/clientgroups").await;
    assert!(list["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn every_decode_error_of_a_request_is_a_cause_in_file_order() {
    let controller = TestController::start().await;
    let api = Api::admin(&controller);
    let first = "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: { name: Bad }\nspec:\n  selector: {}\n  colour: blue\n  priority: high\n";
    let good = GROUP.replace("front-desk", "good");
    let second = "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata: { name: r }\nspec:\n  package: r\n  version: one\n  artifact: { sha256: x }\n---\nkind: [\n";
    let (status, error) = api
        .apply_files(
            &[("a.yaml", first), ("good.yaml", &good), ("b.yaml", second)],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let causes: Vec<String> = error["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}:{}:{}: {}: {}",
                c["file"].as_str().unwrap(),
                c["line"],
                c["column"],
                c["field"].as_str().unwrap_or("-"),
                c["message"]
                    .as_str()
                    .unwrap()
                    .split([':', ','])
                    .next()
                    .unwrap()
            )
        })
        .collect();
    assert_eq!(
        causes,
        [
            "a.yaml:3:13: metadata.name: `Bad` is not a valid name",
            "a.yaml:6:3: spec.colour: unknown field `colour`",
            "a.yaml:7:3: spec.priority: invalid type",
            "b.yaml:6:3: spec.version: `one` is not a semantic version",
            "b.yaml:7:15: spec.artifact.sha256: `x` is not 64 lowercase hex digits",
            "b.yaml:10:1: -: YAML syntax error",
        ]
    );
    let message = error["message"].as_str().unwrap();
    assert_eq!(message.lines().count(), 6, "{message}");
    assert!(
        message.starts_with("a.yaml:3:13: metadata.name: "),
        "{message}"
    );

    // Past the cap, the rest are counted in a last cause.
    let bad = "---\napiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: { name: x }\nspec: { selector: {}, priority: high }\n";
    let (status, error) = api.apply_files(&[("many.yaml", &bad.repeat(60))], "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let causes = error["details"]["causes"].as_array().unwrap();
    assert_eq!(causes.len(), tc_api::MAX_ERRORS + 1);
    assert_eq!(causes[0]["line"], 5);
    assert_eq!(
        causes[tc_api::MAX_ERRORS]["message"],
        "and 10 more errors not listed (at most 50 are listed per request)"
    );
    let (_, list) = api.get("/apis/thinfleet.io/v1/clientgroups").await;
    assert!(list["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn another_managers_object_needs_force() {
    let controller = TestController::start().await;
    let api = Api::admin(&controller);
    api.apply(GROUP, "?fieldManager=alice").await;
    let (status, error) = api.apply(&GROUP.replace("berlin", "rome"), "").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("managed by `alice`"),
        "{error}"
    );
    assert!(error["message"].as_str().unwrap().contains("--force"));
    let (status, result) = api
        .apply(&GROUP.replace("berlin", "rome"), "?force=true")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        result["items"][0]["object"]["metadata"]["managedBy"],
        "admin"
    );
}

#[tokio::test]
async fn stale_resource_version_is_refused() {
    let controller = TestController::start().await;
    let api = Api::admin(&controller);
    let (_, result) = api.apply(GROUP, "").await;
    let version = result["items"][0]["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let with_version = |v: &str, site: &str| {
        GROUP
            .replace(
                "  labels:",
                &format!("  resourceVersion: \"{v}\"\n  labels:"),
            )
            .replace("berlin", site)
    };
    let (status, _) = api.apply(&with_version(&version, "rome"), "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, error) = api.apply(&with_version(&version, "oslo"), "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("has been modified")
    );
    let (_, stored) = api
        .get("/apis/thinfleet.io/v1/clientgroups/front-desk")
        .await;
    assert_eq!(stored["spec"]["selector"]["matchLabels"]["site"], "rome");
}

#[tokio::test]
async fn releases_need_their_blob_and_are_immutable() {
    let controller = TestController::start().await;
    let api = Api::admin(&controller);
    let zip = package_zip("v1");
    let sha = sha256_hex(&zip);
    let (status, error) = api.apply(&release_yaml("kiosk", "1.0.0", &sha), "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not in the blob store")
    );

    let (status, info) = api.put_blob(zip.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["sha256"], sha);
    let (status, result) = api.apply(&release_yaml("kiosk", "1.0.0", &sha), "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let release = &result["items"][0]["object"];
    assert_eq!(release["status"]["artifact"]["sha256"], sha);
    assert_eq!(release["status"]["artifact"]["size"], zip.len());
    assert_eq!(release["status"]["conditions"][0]["type"], "Ready");

    let other = package_zip("v1-rebuilt");
    let other_sha = sha256_hex(&other);
    api.put_blob(other).await;
    let (status, error) = api
        .apply(&release_yaml("kiosk", "1.0.0", &other_sha), "")
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        error["message"].as_str().unwrap().contains("immutable"),
        "{error}"
    );

    // A path on the admin's machine cannot be read by the controller.
    let with_path = release_yaml("kiosk", "1.1.0", &other_sha)
        .replace(&format!("sha256: {other_sha}"), "path: ./kiosk.zip");
    let (status, error) = api.apply(&with_path, "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("upload the zip first"),
        "{error}"
    );
}

#[tokio::test]
async fn blobs_support_range_etag_and_are_verified() {
    let controller = TestController::start().await;
    let api = Api::admin(&controller);
    let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let (_, info) = api.put_blob(bytes.clone()).await;
    let sha = info["sha256"].as_str().unwrap().to_string();
    let url = format!("{}/blobs/sha256/{sha}", api.base);

    let full = api
        .http
        .get(&url)
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(full.status(), StatusCode::OK);
    let etag = full.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"sha256:{sha}\""));
    assert!(
        full.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert_eq!(full.bytes().await.unwrap().to_vec(), bytes);

    let part = api
        .http
        .get(&url)
        .bearer_auth(&api.token)
        .header("range", "bytes=9000-")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], "bytes 9000-9999/10000");
    assert_eq!(part.bytes().await.unwrap().to_vec(), bytes[9000..].to_vec());

    let cached = api
        .http
        .get(&url)
        .bearer_auth(&api.token)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    let bad_range = api
        .http
        .get(&url)
        .bearer_auth(&api.token)
        .header("range", "bytes=20000-")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_range.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // A declared digest that does not match is refused and nothing is stored.
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
    let missing = api
        .http
        .get(format!("{}/blobs/sha256/{wrong}", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    // Without a token: 401.
    let anonymous = api.http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn every_protected_route_refuses_missing_wrong_and_misused_tokens() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let (_, enrolled) = admin
        .enroll(controller.bootstrap_token(), "m-1", "kiosk-1", json!({}))
        .await;
    let client_token = enrolled["session"]["token"].as_str().unwrap().to_string();
    let routes: Vec<(Method, &str, bool)> = vec![
        (Method::GET, "/apis/thinfleet.io/v1/clientgroups", true),
        (Method::GET, "/apis/thinfleet.io/v1/clientgroups/x", true),
        (Method::DELETE, "/apis/thinfleet.io/v1/clientgroups/x", true),
        (Method::GET, "/apis/thinfleet.io/v1/packagereleases", true),
        (Method::GET, "/apis/thinfleet.io/v1/clients", true),
        (Method::GET, "/apis/thinfleet.io/v1/clients/kiosk-1", true),
        (Method::PATCH, "/apis/thinfleet.io/v1/clients/kiosk-1", true),
        (
            Method::DELETE,
            "/apis/thinfleet.io/v1/clients/kiosk-1",
            true,
        ),
        (Method::POST, "/apis/thinfleet.io/v1/apply", true),
        (Method::GET, "/apis/thinfleet.io/v1/events", true),
        (Method::GET, "/apis/thinfleet.io/v1/sources", true),
        (Method::GET, "/apis/thinfleet.io/v1/sources/manifests", true),
        (Method::POST, "/apis/thinfleet.io/v1/bootstraptokens", true),
        (Method::GET, "/apis/thinfleet.io/v1/bootstraptokens", true),
        (
            Method::DELETE,
            "/apis/thinfleet.io/v1/bootstraptokens/default",
            true,
        ),
        (
            Method::POST,
            "/apis/thinfleet.io/v1/clients/kiosk-1/approve",
            true,
        ),
        (
            Method::POST,
            "/apis/thinfleet.io/v1/clients/kiosk-1/deny",
            true,
        ),
        (
            Method::POST,
            "/apis/thinfleet.io/v1/clients/kiosk-1/decommission",
            true,
        ),
        (Method::GET, "/apis/thinfleet.io/v1/blockedmachines", true),
        (
            Method::DELETE,
            "/apis/thinfleet.io/v1/blockedmachines/m-1",
            true,
        ),
        (Method::PUT, "/blobs", true),
        (Method::POST, "/agent/v1/heartbeat", false),
        (
            Method::GET,
            "/agent/v1/desired?afterRevision=0&timeoutSeconds=0",
            false,
        ),
    ];
    for (method, path, admin_route) in routes {
        let url = format!("{}{path}", admin.base);
        let body = if method == Method::GET || method == Method::DELETE {
            None
        } else {
            Some(json!({"protocolVersion": 1, "observedRevision": 0, "inventoryHash": ""}))
        };
        let send = |token: Option<&str>| {
            let mut request = admin.http.request(method.clone(), &url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            request.send()
        };
        let missing = send(None).await.unwrap();
        assert_eq!(
            missing.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        let body: serde_json::Value = missing.json().await.unwrap();
        assert_eq!(body["kind"], "Status", "{method} {path}");
        assert_eq!(
            send(Some("wrong")).await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path} wrong token"
        );
        let misused = if admin_route {
            client_token.as_str()
        } else {
            controller.admin_token()
        };
        assert_eq!(
            send(Some(misused)).await.unwrap().status(),
            StatusCode::FORBIDDEN,
            "{method} {path} wrong kind of token"
        );
    }
    // Enrolment with a wrong bootstrap token.
    let (status, _) = admin.enroll("nope", "m-2", "kiosk-2", json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The open routes stay open.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/version",
        "/openapi.json",
    ] {
        let response = admin
            .http
            .get(format!("{}{path}", admin.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn labels_select_clients_and_patch_changes_only_admin_labels() {
    let controller = TestController::start().await;
    let api = Api::admin(&controller);
    api.enroll(
        controller.bootstrap_token(),
        "m-1",
        "kiosk-1",
        json!({"site": "berlin"}),
    )
    .await;
    api.enroll(
        controller.bootstrap_token(),
        "m-2",
        "kiosk-2",
        json!({"site": "paris"}),
    )
    .await;
    let (_, list) = api
        .get("/apis/thinfleet.io/v1/clients?labelSelector=site%3Dberlin")
        .await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["kiosk-1"]);

    let patch = json!({"metadata": {"labels": {"rack": "7", "site": "rome"}}});
    let (status, client) = api
        .request(
            Method::PATCH,
            "/apis/thinfleet.io/v1/clients/kiosk-2",
            Some(patch),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{client}");
    assert_eq!(client["metadata"]["labels"]["site"], "rome");
    assert_eq!(client["spec"]["agentLabels"]["site"], "paris");
    let (_, client) = api
        .request(
            Method::PATCH,
            "/apis/thinfleet.io/v1/clients/kiosk-2",
            Some(json!({"metadata": {"labels": {"site": null}}})),
        )
        .await;
    assert_eq!(client["metadata"]["labels"]["site"], "paris");
    assert_eq!(client["metadata"]["labels"]["rack"], "7");
    let (status, _) = api
        .request(
            Method::PATCH,
            "/apis/thinfleet.io/v1/clients/kiosk-2",
            Some(json!({"spec": {}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = api
        .request(
            Method::PATCH,
            "/apis/thinfleet.io/v1/clients/kiosk-2",
            Some(json!({"metadata": {"labels": {"bad key": "x"}}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn openapi_describes_the_routes() {
    let controller = TestController::start().await;
    let api = Api::admin(&controller);
    let (_, document) = api.get("/openapi.json").await;
    assert_eq!(document["openapi"], "3.1.0");
    for path in [
        "/apis/thinfleet.io/v1/clientgroups/{name}",
        "/apis/thinfleet.io/v1/clientgroups/{name}/retry",
        "/apis/thinfleet.io/v1/apply",
        "/agent/v1/heartbeat",
        "/blobs/sha256/{hex}",
    ] {
        assert!(document["paths"][path].is_object(), "{path} missing");
    }
    assert!(document["components"]["schemas"]["ClientGroupSpec"].is_object());
    let sources = &document["paths"]["/apis/thinfleet.io/v1/sources"]["get"]["responses"]["200"];
    assert_eq!(
        sources["content"]["application/json"]["schema"]["properties"]["items"]["items"]["$ref"],
        "#/components/schemas/SourceStatus"
    );
    assert!(
        document["components"]["schemas"]["SourceStatus"]["properties"]["syncPending"].is_object()
    );
    // Every operation: a body where it reads one, the statuses of its authentication, and every
    // error as a JSON Status.
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let what = format!("{method} {path}");
            let responses = operation["responses"].as_object().unwrap();
            let public = operation["security"] == serde_json::json!([]);
            if !public {
                assert!(responses.contains_key("401"), "{what}: no 401");
            }
            if ["post", "put", "patch"].contains(&method.as_str())
                && !path.ends_with("/retry")
                && !path.ends_with("/pause")
                && !path.ends_with("/resume")
                && !path.ends_with("/undo")
                && !path.ends_with("/activate-now")
                && !path.ends_with("/bootstraptokens")
                && !path.ends_with("/deny")
                && !path.ends_with("/decommission")
                && !path.ends_with("/rotate")
            {
                assert!(operation["requestBody"].is_object(), "{what}: no body");
            }
            for (code, response) in responses {
                if code.starts_with('4') || code.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Status",
                        "{what} {code}"
                    );
                }
            }
        }
    }
    let enroll = &document["paths"]["/agent/v1/enroll"]["post"];
    assert_eq!(
        enroll["security"],
        serde_json::json!([]),
        "the bootstrap token is in the body"
    );
    assert_eq!(
        enroll["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/EnrollRequest"
    );
    for schema in [
        "HeartbeatRequest",
        "HeartbeatResponse",
        "DesiredResponse",
        "ReleaseInfo",
    ] {
        assert!(
            document["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
    let (_, metrics) = api.get("/metrics").await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("thinfleet_heartbeats_total"),
        "{metrics}"
    );
}

/// Serves `bytes` at `/kiosk.zip` on a loopback port; counts requests.
async fn serve_file(bytes: Vec<u8>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/kiosk.zip",
        axum::routing::get(move || {
            let bytes = bytes.clone();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { bytes }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/kiosk.zip", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

#[tokio::test]
async fn url_artifacts_are_fetched_once_and_verified() {
    let controller = TestController::start().await;
    let api = Api::admin(&controller);
    let zip = package_zip("from a url");
    let sha = sha256_hex(&zip);
    let (url, hits) = serve_file(zip.clone()).await;
    let manifest = |version: &str, sha: &str| {
        format!(
            "apiVersion: thinfleet.io/v1\nkind: PackageRelease\nmetadata: {{ name: kiosk-{version} }}\nspec:\n  package: kiosk\n  version: {version}\n  artifact: {{ url: \"{url}\", sha256: {sha} }}\n"
        )
    };
    // A dry run fetches nothing.
    let (status, _) = api.apply(&manifest("1.0.0", &sha), "?dryRun=true").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    let (status, result) = api.apply(&manifest("1.0.0", &sha), "").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(
        result["items"][0]["object"]["status"]["artifact"]["sha256"],
        sha
    );
    let blob = api
        .http
        .get(format!("{}/blobs/sha256/{sha}", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(blob.bytes().await.unwrap().to_vec(), zip);
    // Re-applying does not fetch again: the blob is in the store.
    let (_, result) = api.apply(&manifest("1.0.0", &sha), "").await;
    assert_eq!(result["items"][0]["action"], "unchanged");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // A URL whose content does not match the declared sha256 is refused and nothing is stored.
    let wrong = "b".repeat(64);
    let (status, error) = api.apply(&manifest("1.1.0", &wrong), "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("sha256 mismatch"),
        "{error}"
    );
    let (status, _) = api
        .get("/apis/thinfleet.io/v1/packagereleases/kiosk-1.1.0")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let missing = api
        .http
        .get(format!("{}/blobs/sha256/{wrong}", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn listing_many_clients_selects_on_live_labels_and_shows_stored_objects() {
    let controller = TestController::start().await;
    let api = Api::admin(&controller);
    // More than a page of individual reads: the list is read from the store in one scan.
    for i in 0..90 {
        let site = if i % 10 == 0 { "paris" } else { "berlin" };
        let (status, enrolled) = api
            .enroll(
                controller.bootstrap_token(),
                &format!("m-{i:03}"),
                &format!("kiosk-{i:03}"),
                json!({ "site": site }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{enrolled}");
    }
    // An admin label moves one Paris client to Berlin: selection follows the live labels.
    let (status, _) = api
        .request(
            Method::PATCH,
            "/apis/thinfleet.io/v1/clients/kiosk-010",
            Some(json!({"metadata": {"labels": {"site": "berlin"}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, all) = api.get("/apis/thinfleet.io/v1/clients").await;
    assert_eq!(item_names(&all).len(), 90);
    assert!(
        all["items"][0]["metadata"]["uid"].is_string(),
        "{}",
        all["items"][0]
    );
    assert_eq!(all["items"][0]["spec"]["machineId"], "m-000");

    let (_, berlin) = api
        .get("/apis/thinfleet.io/v1/clients?labelSelector=site%3Dberlin")
        .await;
    let berlin = item_names(&berlin);
    assert_eq!(berlin.len(), 82);
    assert!(berlin.contains(&"kiosk-010".to_string()));
    assert!(!berlin.contains(&"kiosk-020".to_string()));
    let mut sorted = berlin.clone();
    sorted.sort();
    assert_eq!(berlin, sorted, "listed in name order");

    let (_, paris) = api
        .get("/apis/thinfleet.io/v1/clients?labelSelector=site%3Dparis")
        .await;
    let expected: Vec<String> = (20..90)
        .step_by(10)
        .chain([0])
        .map(|i| format!("kiosk-{i:03}"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(item_names(&paris), expected);
}

#[tokio::test]
async fn only_a_replica_may_ask_for_long_poll_answers_in_a_batch() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let agent = Api::with_token(&controller, "");
    let (status, enrolled) = agent
        .enroll(controller.bootstrap_token(), "m-1", "kiosk-1", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{enrolled}");
    let key = tc_controller::session::SessionKey::load_or_create(controller.data_dir()).unwrap();
    let url = format!("{}/internal/v1/desired", controller.url());
    let batch = json!([
        {"client": "kiosk-1", "afterRevision": 0, "waitMillis": 0},
        {"client": "ghost", "afterRevision": 0, "waitMillis": 0},
    ]);
    let ask = |token: Option<String>, body: Value| {
        let mut request = admin.http.post(&url).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    // Nobody else: no token, an admin's, another key's tag.
    for token in [
        None,
        Some(controller.admin_token().to_string()),
        Some(tc_controller::follower::replica_token(
            &tc_controller::session::SessionKey::from_secret(b"another"),
        )),
    ] {
        let (status, body) = ask(token, batch.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let token = Some(tc_controller::follower::replica_token(&key));
    // One line each, in order: the long-poll's answer, and null for a client it does not know.
    let (status, body) = ask(token.clone(), batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 2, "{body}");
    let answer: Value = serde_json::from_str(lines[0]).unwrap();
    assert!(answer["desired"]["revision"].is_u64(), "{answer}");
    assert!(answer["changed"].is_boolean(), "{answer}");
    assert_eq!(lines[1], "null");
    // Hostile batches are refused whole.
    let (status, body) = ask(token.clone(), json!({"client": "kiosk-1"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let many: Vec<Value> = (0..=tc_controller::follower::MAX_BATCH)
        .map(|_| json!({"client": "kiosk-1", "afterRevision": 0, "waitMillis": 0}))
        .collect();
    let (status, body) = ask(token, Value::Array(many)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}
