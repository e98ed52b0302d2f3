//! The audit trail: every write of the admin API is recorded with the authenticated identity, the
//! source address, what changed and how it ended — refused requests included — and so are the
//! watched directory's changes; it is filtered, exported as JSON lines, kept by its own
//! retention, and never holds a secret.

mod common;

use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn audit(api: &Api, query: &str) -> Vec<Value> {
    let (status, list) = api
        .get(&format!("/apis/thinfleet.io/v1/audit{query}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["kind"], "AuditList");
    list["items"].as_array().unwrap().clone()
}

/// The entry of `user` doing `action` on `kind/name`, which must exist exactly once.
fn entry<'a>(entries: &'a [Value], user: &str, action: &str, kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            e["user"] == user
                && e["action"] == action
                && e["objects"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|o| o["kind"] == kind && o["name"] == name))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{user} {action} {kind}/{name} recorded {} times in {}",
        found.len(),
        serde_json::to_string_pretty(entries).unwrap()
    );
    found[0]
}

fn change<'a>(entry: &'a Value, name: &str) -> &'a str {
    entry["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .and_then(|o| o["change"].as_str())
        .unwrap_or_else(|| panic!("no change for {name} in {entry}"))
}

#[tokio::test]
async fn every_kind_of_write_is_recorded_with_who_from_where_what_and_how_it_ended() {
    let controller = TestController::start_with(|config| config.require_approval = true).await;
    let admin = Api::admin(&controller);
    let ops = Api::with_token(&controller, &credential(&admin, "ops", "admin").await);
    let desk = Api::with_token(&controller, &credential(&admin, "desk", "operator").await);
    let viewer_token = credential(&admin, "auditor", "viewer").await;
    let mut secrets = vec![viewer_token];

    // Artifacts, releases and groups.
    let sha = publish(&ops, "kiosk", "1.0.0").await;
    let (status, result) = ops
        .apply(&group_yaml("lab", "{}", &[("kiosk", "1.0.0")], "1"), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    let (status, result) = ops
        .apply(
            &group_yaml("lab", "{}", &[("kiosk", "1.0.0")], "2"),
            "?dryRun=true",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{result}");

    // Enrolment control: approve, deny (which blocks the machine), allow, decommission.
    let anonymous = Api::with_token(&controller, "");
    let mut pending = vec![];
    for machine in ["m-a", "m-b"] {
        let (status, answer) = anonymous
            .enroll(controller.bootstrap_token(), machine, machine, json!({}))
            .await;
        assert!(status.is_success(), "{answer}");
        pending.push(answer["clientName"].as_str().unwrap().to_string());
    }
    let v1 = |path: &str| format!("/apis/thinfleet.io/v1/{path}");
    let (status, body) = ops
        .request(
            Method::POST,
            &v1(&format!("clients/{}/approve", pending[0])),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = ops
        .request(
            Method::POST,
            &v1(&format!("clients/{}/deny", pending[1])),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = ops
        .request(Method::DELETE, &v1("blockedmachines/m-b"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The helpdesk labels the approved client and retries the group's rollout.
    let (status, body) = desk
        .request(
            Method::PATCH,
            &v1(&format!("clients/{}", pending[0])),
            Some(json!({ "metadata": { "labels": { "room": "12", "old": null } } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = desk
        .request(Method::POST, &v1("clientgroups/lab/retry"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = ops
        .request(
            Method::POST,
            &v1(&format!("clients/{}/decommission", pending[0])),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Tokens and credentials.
    let (status, body) = ops
        .request(
            Method::POST,
            &v1("bootstraptokens"),
            Some(json!({ "name": "site-berlin", "labels": { "site": "berlin" } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    secrets.push(body["token"].as_str().unwrap().to_string());
    let (status, body) = ops
        .request(Method::DELETE, &v1("bootstraptokens/site-berlin"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = ops
        .request(Method::POST, &v1("credentials/auditor/rotate"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    secrets.push(body["token"].as_str().unwrap().to_string());
    let viewer = Api::with_token(&controller, body["token"].as_str().unwrap());
    let (status, body) = admin
        .request(
            Method::POST,
            &v1("credentials"),
            Some(json!({ "name": "temp", "role": "viewer" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    secrets.push(body["token"].as_str().unwrap().to_string());
    let (status, body) = ops
        .request(Method::DELETE, &v1("credentials/temp"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Deletion, a failure, a refusal, and a request nobody authenticated.
    let (status, body) = ops
        .request(Method::DELETE, &v1("clientgroups/lab"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = ops
        .request(Method::DELETE, &v1("clientgroups/nothing-here"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = viewer
        .apply(&group_yaml("sneaky", "{}", &[], "1"), "")
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = desk
        .request(Method::DELETE, &v1("clientgroups/lab"), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let stranger = Api::with_token(&controller, "not-a-token");
    let (status, _) = stranger
        .apply(&group_yaml("anonymous", "{}", &[], "1"), "")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A viewer reads the trail.
    let entries = audit(&viewer, "").await;
    for e in &entries {
        let source = e["source"].as_str().unwrap();
        assert!(source.starts_with("127.0.0.1:"), "{e}");
        assert!(e["time"].is_string(), "{e}");
        assert!(e["seq"].as_u64().unwrap() > 0, "{e}");
    }
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {seqs:?}"
    );

    let e = entry(&entries, "admin", "createCredential", "Credential", "ops");
    assert_eq!(
        (e["role"].as_str(), e["breakGlass"].as_bool()),
        (Some("admin"), Some(true))
    );
    assert!(change(e, "ops").contains("role admin"), "{e}");
    let e = entry(&entries, "ops", "uploadBlob", "Blob", &sha);
    assert!(change(e, &sha).contains("bytes"), "{e}");
    let e = entry(&entries, "ops", "apply", "PackageRelease", "kiosk-1.0.0");
    assert_eq!(change(e, "kiosk-1.0.0"), "created");
    assert_eq!(e["outcome"], "Succeeded");
    assert_eq!(e["code"], 200);
    assert_eq!(e["role"], "admin");
    assert!(e.get("breakGlass").is_none(), "{e}");
    let applies: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            e["user"] == "ops"
                && e["action"] == "apply"
                && e["request"].as_str().unwrap().contains("dryRun=true")
        })
        .collect();
    assert_eq!(applies.len(), 1, "{entries:?}");
    assert_eq!(change(applies[0], "lab"), "configured");
    assert!(
        applies[0]["message"].as_str().unwrap().contains("dry run"),
        "{}",
        applies[0]
    );
    entry(&entries, "ops", "approve", "Client", &pending[0]);
    entry(&entries, "ops", "deny", "Client", &pending[1]);
    entry(&entries, "ops", "allow", "BlockedMachine", "m-b");
    entry(&entries, "ops", "decommission", "Client", &pending[0]);
    let e = entry(&entries, "desk", "label", "Client", &pending[0]);
    assert_eq!(change(e, &pending[0]), "labels: +room=12 -old");
    assert_eq!(e["role"], "operator");
    entry(&entries, "desk", "retry", "ClientGroup", "lab");
    let e = entry(
        &entries,
        "ops",
        "createBootstrapToken",
        "BootstrapToken",
        "site-berlin",
    );
    assert!(change(e, "site-berlin").contains("site=berlin"), "{e}");
    entry(
        &entries,
        "ops",
        "revokeBootstrapToken",
        "BootstrapToken",
        "site-berlin",
    );
    entry(&entries, "ops", "rotateCredential", "Credential", "auditor");
    entry(&entries, "admin", "createCredential", "Credential", "temp");
    entry(&entries, "ops", "revokeCredential", "Credential", "temp");
    let deletes: Vec<&Value> = entries.iter().filter(|e| e["action"] == "delete").collect();
    let outcomes: Vec<(String, String, String)> = deletes
        .iter()
        .map(|e| {
            (
                e["user"].as_str().unwrap().to_string(),
                e["objects"][0]["name"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (
                "ops".to_string(),
                "lab".to_string(),
                "Succeeded".to_string()
            ),
            ("ops".into(), "nothing-here".into(), "Failed".into()),
            ("desk".into(), "lab".into(), "Denied".into()),
        ]
    );
    assert!(
        deletes[1]["message"]
            .as_str()
            .unwrap()
            .contains("not found"),
        "{}",
        deletes[1]
    );
    assert_eq!(deletes[2]["code"], 403);
    assert!(
        deletes[2]["message"]
            .as_str()
            .unwrap()
            .contains("needs role admin"),
        "{}",
        deletes[2]
    );
    let refused: Vec<&Value> = entries
        .iter()
        .filter(|e| e["user"] == "auditor" && e["action"] == "apply")
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["outcome"], "Denied");
    assert_eq!(refused[0]["role"], "viewer");
    // Nobody authenticated: not recorded (anyone could flood the trail with those).
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains("anonymous"), "{text}");
    assert!(!text.contains("not-a-token"), "{text}");
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a secret is in the audit trail"
        );
    }
    // Reads are not recorded.
    assert!(
        entries
            .iter()
            .all(|e| !e["request"].as_str().unwrap().starts_with("GET"))
    );

    // Filters: by user, by object, by action, the newest N.
    let by_desk = audit(&viewer, "?by=desk").await;
    assert_eq!(by_desk.len(), 3, "{by_desk:?}");
    assert!(by_desk.iter().all(|e| e["user"] == "desk"));
    let for_lab = audit(&viewer, "?kind=clientgroup&name=lab").await;
    let actions: Vec<&str> = for_lab
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["apply", "apply", "retry", "delete", "delete"]);
    let newest = audit(&viewer, "?limit=2").await;
    assert_eq!(
        newest.iter().map(|e| e["seq"].clone()).collect::<Vec<_>>(),
        entries[entries.len() - 2..]
            .iter()
            .map(|e| e["seq"].clone())
            .collect::<Vec<_>>()
    );
    let after = audit(&viewer, &format!("?afterSeq={}", seqs[seqs.len() - 3])).await;
    assert_eq!(after.len(), 2);
    assert_eq!(audit(&viewer, "?action=label").await.len(), 1);

    // The JSON-lines export has the same entries, one per line.
    let response = controller
        .http_client()
        .get(format!(
            "{}/apis/thinfleet.io/v1/audit?format=jsonl",
            controller.url()
        ))
        .bearer_auth(controller.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/jsonl");
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines, entries);
    let (status, body) = viewer.get("/apis/thinfleet.io/v1/audit?format=csv").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn an_export_larger_than_a_page_is_complete_and_in_order() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    // 1,100 writes (more than one page of the export), made quick as failed deletes.
    for chunk in 0..11 {
        let mut calls = vec![];
        for i in 0..100 {
            let api = &admin;
            calls.push(async move {
                api.request(
                    Method::DELETE,
                    &format!("/apis/thinfleet.io/v1/clientgroups/g-{chunk}-{i}"),
                    None,
                )
                .await
            });
        }
        for (status, _) in futures_util::future::join_all(calls).await {
            assert_eq!(status, StatusCode::NOT_FOUND);
        }
    }
    let response = controller
        .http_client()
        .get(format!(
            "{}/apis/thinfleet.io/v1/audit?format=jsonl&action=delete",
            controller.url()
        ))
        .bearer_auth(controller.admin_token())
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    let seqs: Vec<u64> = text
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs.len(), 1_100);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn the_trail_keeps_its_configured_number_of_entries_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let retention = |config: &mut tc_controller::Config| {
        config.audit_retention.max_entries = 3;
    };
    {
        let controller = TestController::start_in(&data, retention).await;
        let admin = Api::admin(&controller);
        for name in ["a", "b", "c", "d", "e"] {
            let (status, body) = admin.apply(&group_yaml(name, "{}", &[], "1"), "").await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        controller.stop().await;
    }
    let controller = TestController::start_in(&data, retention).await;
    let admin = Api::admin(&controller);
    let entries = audit(&admin, "").await;
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["objects"][0]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["c", "d", "e"]);
    assert_eq!(entries[2]["seq"], 5);
}

#[tokio::test]
async fn the_watched_directory_s_changes_are_recorded_as_its_manager() {
    let manifests = tempfile::tempdir().unwrap();
    let dir = manifests.path().to_path_buf();
    std::fs::write(dir.join("lab.yaml"), group_yaml("lab", "{}", &[], "1")).unwrap();
    let watched = dir.clone();
    let controller =
        TestController::start_with(move |config| config.manifests_dir = Some(watched)).await;
    let admin = Api::admin(&controller);
    let base = dir.file_name().unwrap().to_string_lossy().to_string();
    let entries = eventually(Duration::from_secs(10), || async {
        let entries = audit(&admin, "?action=sync").await;
        (!entries.is_empty()).then_some(entries)
    })
    .await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    let user = e["user"].as_str().unwrap();
    assert!(user.starts_with("dir:") && user.ends_with(&base), "{e}");
    assert_eq!(e["source"], "controller");
    assert_eq!(change(e, "lab"), "created");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("revision sha256:"),
        "{e}"
    );
    assert!(e.get("role").is_none());
    // Resyncs that change nothing are not recorded; a change is.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(audit(&admin, "?action=sync").await.len(), 1);
    std::fs::write(dir.join("lab.yaml"), group_yaml("lab", "{}", &[], "2")).unwrap();
    let entries = eventually(Duration::from_secs(10), || async {
        let entries = audit(&admin, "?action=sync").await;
        (entries.len() == 2).then_some(entries)
    })
    .await;
    assert_eq!(change(&entries[1], "lab"), "configured");
}
