//! Named credentials and roles: every admin route is in the role table and is refused exactly to
//! the roles below the one it needs; credentials are created, listed, rotated, revoked and expire;
//! only hashes of their tokens are stored; the break-glass token keeps working.

mod common;

use common::{Api, TestController};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tc_api::Role;
use tc_controller::credentials::documented_role;

/// Routes that need no credential, and the agents' routes (their own authentication).
fn unguarded(path: &str) -> bool {
    [
        "/healthz",
        "/readyz",
        "/metrics",
        "/version",
        "/openapi.json",
    ]
    .contains(&path)
        || path.starts_with("/agent/")
}

async fn create(api: &Api, name: &str, role: &str, expires: Option<u64>) -> (StatusCode, Value) {
    let mut body = json!({ "name": name, "role": role });
    if let Some(seconds) = expires {
        body["expiresSeconds"] = json!(seconds);
    }
    api.request(
        Method::POST,
        "/apis/thinfleet.io/v1/credentials",
        Some(body),
    )
    .await
}

async fn token_of(api: &Api, name: &str, role: &str) -> String {
    let (status, body) = create(api, name, role, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["token"].as_str().unwrap().to_string()
}

/// A concrete path for an OpenAPI path: parameters become `x` (or 64 zeros for a digest).
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment {
            "{hex}" => "0".repeat(64),
            s if s.starts_with('{') => "nothing-here".to_string(),
            s => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_admin_route_has_a_role_and_refuses_exactly_the_roles_below_it() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let (status, document) = admin.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let mut callers = vec![];
    for role in Role::ALL {
        let name = format!("as-{role}");
        let token = token_of(&admin, &name, role.as_str()).await;
        callers.push((role, name, Api::with_token(&controller, &token)));
    }
    let mut checked = 0;
    for (path, operations) in document["paths"].as_object().unwrap() {
        if unguarded(path) {
            continue;
        }
        for method in operations.as_object().unwrap().keys() {
            let needed = documented_role(method, path).unwrap_or_else(|| {
                panic!("{} {path} is not in the role table", method.to_uppercase())
            });
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let url = concrete(path);
            for (role, name, api) in &callers {
                let (status, body) = api.request(method.clone(), &url, None).await;
                if *role < needed {
                    assert_eq!(
                        status,
                        StatusCode::FORBIDDEN,
                        "{role} {method} {url}: {body}"
                    );
                    assert_eq!(
                        body["message"],
                        format!(
                            "credential \"{name}\" (role {role}) may not {method} {url}: needs role {needed}"
                        ),
                    );
                } else {
                    assert_ne!(
                        status,
                        StatusCode::FORBIDDEN,
                        "{role} {method} {url}: {body}"
                    );
                    assert_ne!(
                        status,
                        StatusCode::UNAUTHORIZED,
                        "{role} {method} {url}: {body}"
                    );
                    assert_ne!(
                        status,
                        StatusCode::METHOD_NOT_ALLOWED,
                        "{role} {method} {url}: {body}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} operations checked");
    // The roles the table gives the routes the roles are about.
    let v1 = |rest: &str| format!("/apis/thinfleet.io/v1/{rest}");
    for (method, path, role) in [
        ("get", v1("clients"), Role::Viewer),
        ("get", v1("clientgroups/{name}"), Role::Viewer),
        ("get", v1("events"), Role::Viewer),
        ("get", v1("clients/{name}/history"), Role::Viewer),
        ("patch", v1("clients/{name}"), Role::Operator),
        ("post", v1("clientgroups/{name}/retry"), Role::Operator),
        ("post", v1("apply"), Role::Admin),
        ("delete", v1("clients/{name}"), Role::Admin),
        ("delete", v1("clientgroups/{name}"), Role::Admin),
        ("post", v1("bootstraptokens"), Role::Admin),
        ("post", v1("credentials"), Role::Admin),
        ("post", v1("clients/{name}/approve"), Role::Admin),
        ("put", "/blobs".to_string(), Role::Admin),
    ] {
        assert_eq!(
            documented_role(method, &path),
            Some(role),
            "{method} {path}"
        );
    }
    // A method a route does not have is still 405 (with Allow), not a refusal.
    let (status, body) = callers[0]
        .2
        .request(Method::PUT, "/apis/thinfleet.io/v1/apply", None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(
        body["message"],
        "PUT is not allowed on /apis/thinfleet.io/v1/apply"
    );
    // The document says which role each admin operation needs.
    assert_eq!(
        document["paths"][v1("apply")]["post"]["description"],
        "Needs a credential with role admin or above."
    );
}

#[tokio::test]
async fn credentials_are_created_listed_rotated_and_revoked_and_shown_once() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let (status, created) = create(&admin, "helpdesk", "viewer", None).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(created["credential"]["name"], "helpdesk");
    assert_eq!(created["credential"]["role"], "viewer");
    let token = created["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64);
    // Listed without the token.
    let (status, list) = admin.get("/apis/thinfleet.io/v1/credentials").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["kind"], "CredentialList");
    assert_eq!(list["items"][0]["name"], "helpdesk");
    assert!(!list.to_string().contains(&token), "{list}");
    // A second create of the name is refused; so are the break-glass name, bad names and roles.
    assert_eq!(
        create(&admin, "helpdesk", "admin", None).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        create(&admin, "admin", "viewer", None).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        create(&admin, "Help Desk", "viewer", None).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let (status, body) = create(&admin, "root", "root", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // The viewer reads.
    let viewer = Api::with_token(&controller, &token);
    assert_eq!(
        viewer.get("/apis/thinfleet.io/v1/clients").await.0,
        StatusCode::OK
    );
    // Rotation: the old token stops working, the new one works.
    let (status, rotated) = admin
        .request(
            Method::POST,
            "/apis/thinfleet.io/v1/credentials/helpdesk/rotate",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_token = rotated["token"].as_str().unwrap().to_string();
    assert_ne!(new_token, token);
    assert!(rotated["credential"]["rotated"].is_string(), "{rotated}");
    let (status, body) = viewer.get("/apis/thinfleet.io/v1/clients").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let viewer = Api::with_token(&controller, &new_token);
    assert_eq!(
        viewer.get("/apis/thinfleet.io/v1/clients").await.0,
        StatusCode::OK
    );
    // Revocation.
    let (status, revoked) = admin
        .request(
            Method::DELETE,
            "/apis/thinfleet.io/v1/credentials/helpdesk",
            None,
        )
        .await;
    assert_eq!(
        (status, &revoked["name"]),
        (StatusCode::OK, &json!("helpdesk"))
    );
    assert_eq!(
        viewer.get("/apis/thinfleet.io/v1/clients").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (_, list) = admin.get("/apis/thinfleet.io/v1/credentials").await;
    assert_eq!(list["items"], json!([]));
    let (status, _) = admin
        .request(
            Method::DELETE,
            "/apis/thinfleet.io/v1/credentials/helpdesk",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Each change is an event.
    let (_, events) = admin
        .get("/apis/thinfleet.io/v1/events?kind=Credential")
        .await;
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["Created", "Rotated", "Revoked"], "{events}");
}

#[tokio::test]
async fn an_expired_credential_is_refused_with_401_saying_so() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let (status, created) = create(&admin, "contractor", "operator", Some(1)).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let expires = created["credential"]["expires"]
        .as_str()
        .unwrap()
        .to_string();
    let api = Api::with_token(&controller, created["token"].as_str().unwrap());
    // It works until its expiry (at most a second away), then is refused.
    let (status, body) = common::eventually(std::time::Duration::from_secs(30), || async {
        let (status, body) = api.get("/apis/thinfleet.io/v1/clients").await;
        (status == StatusCode::UNAUTHORIZED).then_some((status, body))
    })
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body["message"],
        format!(
            "credential \"contractor\" expired at {expires}; an admin can rotate it \
             (`tcadm credential rotate contractor`)"
        )
    );
    assert_eq!(
        create(&admin, "zero", "viewer", Some(0)).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[tokio::test]
async fn only_hashes_of_tokens_are_stored_and_credentials_survive_a_restart() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let token = token_of(&admin, "ops", "operator").await;
    let admin_token = controller.admin_token().to_string();
    let (data_dir, _keep) = controller.stop_keep_data().await;
    let bytes = std::fs::read(data_dir.join("thinfleet.redb")).unwrap();
    let contains = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!contains(&token), "the token is stored in the clear");
    assert!(
        contains(&tc_testkit::sha256_hex(token.as_bytes())),
        "its hash is not stored"
    );
    let controller = TestController::start_in(&data_dir, |_| {}).await;
    let ops = Api::with_token(&controller, &token);
    assert_eq!(
        ops.get("/apis/thinfleet.io/v1/clients").await.0,
        StatusCode::OK
    );
    // The break-glass token is still the admin.
    let admin = Api::with_token(&controller, &admin_token);
    let (status, body) = admin
        .apply(
            &common::group_yaml("front", "{}", &[("x", "^1")], "100%"),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn applies_are_managed_by_the_credential_that_made_them() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let alice = Api::with_token(&controller, &token_of(&admin, "alice", "admin").await);
    let (status, body) = alice
        .apply(
            &common::group_yaml("front", "{}", &[("x", "^1")], "100%"),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, group) = admin.get("/apis/thinfleet.io/v1/clientgroups/front").await;
    assert_eq!(group["metadata"]["managedBy"], "credential:alice");
    let (status, body) = admin
        .apply(
            &common::group_yaml("back", "{}", &[("y", "^1")], "100%"),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, group) = admin.get("/apis/thinfleet.io/v1/clientgroups/back").await;
    assert_eq!(group["metadata"]["managedBy"], "admin");
    // Another credential cannot change alice's object without taking it over.
    let (status, body) = admin
        .apply(
            &common::group_yaml("front", "{}", &[("z", "^1")], "100%"),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("credential:alice"),
        "{body}"
    );
    // An operator may label and retry, not apply.
    let operator = Api::with_token(&controller, &token_of(&admin, "desk", "operator").await);
    let (status, body) = operator
        .apply(
            &common::group_yaml("more", "{}", &[("x", "^1")], "100%"),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["message"],
        "credential \"desk\" (role operator) may not POST /apis/thinfleet.io/v1/apply: needs role admin"
    );
}

#[tokio::test]
async fn agent_sessions_stay_refused_on_admin_routes_and_credentials_on_agent_routes() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let token = token_of(&admin, "viewer", "viewer").await;
    let viewer = Api::with_token(&controller, &token);
    let (status, body) = viewer.heartbeat(json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = Api::with_token(&controller, "nonsense")
        .get("/apis/thinfleet.io/v1/clients")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let anonymous = controller
        .http_client()
        .get(format!("{}/apis/thinfleet.io/v1/clients", controller.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}
