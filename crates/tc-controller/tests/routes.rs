//! Route tests without a socket: the router is driven with `tower::ServiceExt::oneshot`.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

async fn controller() -> (
    tempfile::TempDir,
    std::sync::Arc<tc_controller::Controller>,
    String,
) {
    let dir = tempfile::tempdir().unwrap();
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let mut config = tc_controller::Config::new(dir.path().join("data"));
    config.max_apply_bytes = 64 * 1024;
    let (controller, tokens) = tc_controller::open(config, stopping).await.unwrap();
    (dir, controller, tokens.admin_token)
}

async fn call(
    controller: &std::sync::Arc<tc_controller::Controller>,
    request: Request<Body>,
) -> (StatusCode, Value) {
    let response = tc_controller::router(controller.clone())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into())),
    )
}

fn apply(token: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post("/apis/thinfleet.io/v1/apply")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/yaml")
        .body(body.into())
        .unwrap()
}

#[tokio::test]
async fn unknown_routes_are_json_404s() {
    let (_dir, controller, _) = controller().await;
    let (status, body) = call(
        &controller,
        Request::get("/nope").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "NotFound");
    let (status, _) = call(
        &controller,
        Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn apply_and_read_back_without_a_socket() {
    let (_dir, controller, token) = controller().await;
    let manifest = "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata: { name: g }\nspec: { selector: {} }\n";
    let (status, result) = call(&controller, apply(&token, manifest)).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["items"][0]["action"], "created");
    let request = Request::get("/apis/thinfleet.io/v1/clientgroups/g")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let (status, group) = call(&controller, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(group["spec"]["rollout"]["maxUnavailable"], "25%");
    assert_eq!(
        group["metadata"]["resourceVersion"],
        result["items"][0]["object"]["metadata"]["resourceVersion"]
    );
    let request = Request::get("/apis/thinfleet.io/v1/widgets")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let (status, body) = call(&controller, request).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("unknown resource `widgets`")
    );
}

#[tokio::test]
async fn oversized_and_malformed_bodies_are_refused_with_status_bodies() {
    let (_dir, controller, token) = controller().await;
    let (status, _) = call(&controller, apply(&token, vec![b'#'; 128 * 1024])).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, body) = call(&controller, apply(&token, vec![0xff, 0xfe])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("UTF-8"));
    let request = Request::post("/agent/v1/enroll")
        .header("content-type", "application/json")
        .body(Body::from("{\"bootstrapToken\": 1}"))
        .unwrap();
    let (status, _) = call(&controller, request).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let request = Request::post("/agent/v1/enroll")
        .body(Body::from("{}"))
        .unwrap();
    let (status, _) = call(&controller, request).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}
