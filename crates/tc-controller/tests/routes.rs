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

/// Sends `request` and checks that the answer is `code` with a JSON `Status` body of that code;
/// returns the response's headers and body.
async fn check_status(
    controller: &std::sync::Arc<tc_controller::Controller>,
    request: Request<Body>,
    code: StatusCode,
) -> (axum::http::HeaderMap, Value) {
    let what = format!("{} {}", request.method(), request.uri());
    let response = tc_controller::router(controller.clone())
        .oneshot(request)
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(parts.status, code, "{what}: {text}");
    assert_eq!(
        parts.headers["content-type"], "application/json",
        "{what}: {text}"
    );
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["kind"], "Status", "{what}: {body}");
    assert_eq!(body["code"], code.as_u16(), "{what}: {body}");
    assert!(
        !body["message"].as_str().unwrap().is_empty(),
        "{what}: {body}"
    );
    (parts.headers, body)
}

#[tokio::test]
async fn every_error_is_a_json_status_with_its_headers() {
    let (_dir, controller, token) = controller().await;
    let admin = |request: axum::http::request::Builder| {
        request.header("authorization", format!("Bearer {token}"))
    };
    let json =
        |request: axum::http::request::Builder| request.header("content-type", "application/json");
    let enroll = || Request::post("/agent/v1/enroll");
    for (request, code, message) in [
        // JSON syntax, JSON data, content type: the `Json` extractor's rejections.
        (
            json(enroll()).body(Body::from("{")).unwrap(),
            StatusCode::BAD_REQUEST,
            "parse the request body as JSON",
        ),
        (
            json(enroll())
                .body(Body::from("{\"bootstrapToken\": 1}"))
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bootstrapToken",
        ),
        (
            enroll().body(Body::from("{}")).unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        // Query parameters of the wrong type.
        (
            admin(Request::get("/apis/thinfleet.io/v1/events?afterSeq=-1"))
                .body(Body::empty())
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "afterSeq",
        ),
        // A body over the limit.
        (
            json(admin(Request::patch("/apis/thinfleet.io/v1/clients/x")))
                .body(Body::from(vec![b' '; 128 * 1024]))
                .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "length limit",
        ),
        // A method the route does not have.
        (
            Request::delete("/healthz").body(Body::empty()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "DELETE is not allowed on /healthz",
        ),
        // No route at all.
        (
            Request::get("/apis/thinfleet.io/v2/clients")
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
            "no route",
        ),
    ] {
        let (_, body) = check_status(&controller, request, code).await;
        assert!(
            body["message"].as_str().unwrap().contains(message),
            "{code}: {body}"
        );
    }

    let (headers, _) = check_status(
        &controller,
        Request::put("/healthz").body(Body::empty()).unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    assert_eq!(headers["allow"], "GET,HEAD", "the Allow header is kept");

    // An unsatisfiable range keeps its Content-Range.
    let blob = b"0123456789".to_vec();
    let request = admin(Request::put("/blobs"))
        .body(Body::from(blob))
        .unwrap();
    let (status, info) = call(&controller, request).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    let sha = info["sha256"].as_str().unwrap();
    let request = admin(Request::get(format!("/blobs/sha256/{sha}")))
        .header("range", "bytes=50-60")
        .body(Body::empty())
        .unwrap();
    let (headers, _) = check_status(&controller, request, StatusCode::RANGE_NOT_SATISFIABLE).await;
    assert_eq!(headers["content-range"], "bytes */10");
}
