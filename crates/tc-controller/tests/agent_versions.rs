//! Finding outdated agents: the `thinfleet.io/agent-version` label from the reported inventory,
//! its version comparisons in the clients list's `labelSelector` and in group selectors, and
//! that neither admins nor agents can set it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Heartbeats as an agent of `version` (None: an agent that reports no version); returns the
/// desired state.
async fn heartbeat_as(agent: &SimAgent, version: Option<&str>) -> Value {
    let mut inventory =
        json!({ "hostname": agent.name, "arch": "x86_64", "osName": "Debian GNU/Linux" });
    if let Some(version) = version {
        inventory["agentVersion"] = json!(version);
    }
    let (status, response) = agent
        .api
        .heartbeat(json!({
            "protocolVersion": 1, "observedRevision": agent.revision, "packages": agent.packages,
            "inventoryHash": format!("inv-{}", version.unwrap_or("none")), "inventory": inventory,
        }))
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    response["desired"].clone()
}

/// Heartbeats as `version` until the desired state satisfies `check` (at most 5 s).
async fn wait_as(agent: &SimAgent, version: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let desired = heartbeat_as(agent, Some(version)).await;
        if check(&desired) {
            return desired;
        }
        assert!(
            Instant::now() < deadline,
            "{} never got the expected desired state: {desired}",
            agent.name
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The names of the clients `selector` lists, sorted.
async fn listed(admin: &Api, selector: &str) -> Vec<String> {
    let (status, list) = admin
        .request(
            Method::GET,
            &format!(
                "/apis/thinfleet.io/v1/clients?labelSelector={}",
                urlencode(selector)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{selector}: {list}");
    let mut names = item_names(&list);
    names.sort();
    names
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn clients_are_listed_by_agent_version_with_semver_comparisons() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let versions = [
        Some("0.1.0"),
        Some("0.2.0-rc.1"),
        Some("0.2.0"),
        Some("0.10.0+git.5"),
        Some("dev"),
        None,
    ];
    let mut agents = vec![];
    for (index, version) in versions.iter().enumerate() {
        let agent = SimAgent::enroll(&controller, &format!("m-v{index}"), json!({})).await;
        heartbeat_as(&agent, *version).await;
        agents.push(agent);
    }
    let names: Vec<String> = agents.iter().map(|agent| agent.name.clone()).collect();
    let pick = |indexes: &[usize]| {
        let mut picked: Vec<String> = indexes.iter().map(|&i| names[i].clone()).collect();
        picked.sort();
        picked
    };

    // The label is the version without build metadata.
    let (_, client) = admin
        .get(&format!("/apis/thinfleet.io/v1/clients/{}", names[3]))
        .await;
    assert_eq!(
        client["metadata"]["labels"]["thinfleet.io/agent-version"],
        "0.10.0"
    );
    assert_eq!(
        client["status"]["inventory"]["agentVersion"],
        "0.10.0+git.5"
    );

    for (selector, expected) in [
        // Pre-releases before their release, 0.10 after 0.2; "dev" and no version never compare.
        ("thinfleet.io/agent-version<0.2.0", pick(&[0, 1])),
        ("thinfleet.io/agent-version<=0.2.0", pick(&[0, 1, 2])),
        ("thinfleet.io/agent-version>0.2.0-rc.1", pick(&[2, 3])),
        ("thinfleet.io/agent-version>=0.2.0", pick(&[2, 3])),
        ("thinfleet.io/agent-version=0.2.0", pick(&[2])),
        ("thinfleet.io/agent-version!=0.2.0", pick(&[0, 1, 3, 4, 5])),
        ("thinfleet.io/agent-version in (0.1.0,dev)", pick(&[0, 4])),
        ("thinfleet.io/agent-version", pick(&[0, 1, 2, 3, 4])),
        ("!thinfleet.io/agent-version", pick(&[5])),
        (
            "thinfleet.io/arch=x86_64,thinfleet.io/agent-version<0.10.0",
            pick(&[0, 1, 2]),
        ),
    ] {
        assert_eq!(listed(&admin, selector).await, expected, "{selector}");
    }

    // An upgraded agent is no longer outdated as soon as its heartbeat reports the version.
    heartbeat_as(&agents[0], Some("0.3.0")).await;
    assert_eq!(
        listed(&admin, "thinfleet.io/agent-version<0.2.0").await,
        pick(&[1])
    );
    assert_eq!(
        listed(&admin, "thinfleet.io/agent-version>=0.3.0").await,
        pick(&[0, 3])
    );

    // Loaded again from the store, each client has the version of its newest inventory.
    let (data, _keep) = controller.stop_keep_data().await;
    let controller = TestController::start_in(&data, |_| {}).await;
    let admin = Api::admin(&controller);
    assert_eq!(
        listed(&admin, "thinfleet.io/agent-version<0.3.0").await,
        pick(&[1, 2])
    );

    // Comparisons on other keys, or with no version, are refused, saying where.
    for (selector, wanted) in [
        (
            "site<3",
            "operator Lt (`<`) compares versions and applies only to `thinfleet.io/agent-version`",
        ),
        (
            "thinfleet.io/agent-version<latest",
            "needs a semantic version (MAJOR.MINOR.PATCH, optionally -PRERELEASE), not `latest`",
        ),
    ] {
        let (status, body) = admin
            .get(&format!(
                "/apis/thinfleet.io/v1/clients?labelSelector={}",
                urlencode(selector)
            ))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(wanted) && message.contains("selector.matchExpressions[0]"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn neither_an_admin_nor_an_agent_sets_the_agent_version_label() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let agent = SimAgent::enroll(
        &controller,
        "m-self",
        json!({ "thinfleet.io/agent-version": "9.9.9", "site": "berlin" }),
    )
    .await;
    heartbeat_as(&agent, Some("0.1.0")).await;
    let path = format!("/apis/thinfleet.io/v1/clients/{}", agent.name);
    let (_, client) = admin.get(&path).await;
    assert_eq!(
        client["metadata"]["labels"]["thinfleet.io/agent-version"],
        "0.1.0"
    );
    assert_eq!(client["metadata"]["labels"]["site"], "berlin");
    assert_eq!(
        listed(&admin, "thinfleet.io/agent-version>1.0.0").await,
        Vec::<String>::new()
    );

    for labels in [
        json!({ "thinfleet.io/agent-version": "9.9.9", "rack": "7" }),
        json!({ "thinfleet.io/agent-version": null }),
    ] {
        let (status, body) = admin
            .request(
                Method::PATCH,
                &path,
                Some(json!({ "metadata": { "labels": labels } })),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("metadata.labels.thinfleet.io/agent-version")
                && message.contains("set by the controller"),
            "{message}"
        );
    }
    // Nothing changed: not even the valid label of the refused patch.
    let (_, after) = admin.get(&path).await;
    assert_eq!(after["metadata"]["labels"], client["metadata"]["labels"]);

    let (status, body) = admin
        .request(
            Method::POST,
            "/apis/thinfleet.io/v1/bootstraptokens",
            Some(json!({ "name": "old-agents", "labels": { "thinfleet.io/agent-version": "0.0.1" } })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("labels.thinfleet.io/agent-version"),
        "{body}"
    );
}

#[tokio::test]
async fn a_group_on_outdated_agents_loses_a_member_once_it_reports_a_newer_version() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    publish(&admin, "fixup", "1.0.0").await;
    let selector = "{ matchExpressions: [{ key: thinfleet.io/agent-version, operator: Lt, values: [\"0.2.0\"] }] }";
    let (status, body) = admin
        .apply(
            &group_yaml("outdated", selector, &[("fixup", "1.0.0")], "10"),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let old = SimAgent::enroll(&controller, "m-old", json!({})).await;
    let new = SimAgent::enroll(&controller, "m-new", json!({})).await;
    heartbeat_as(&new, Some("0.2.0")).await;
    wait_as(&old, "0.1.0", |d| versions(d) == ["fixup@1.0.0"]).await;
    assert!(versions(&heartbeat_as(&new, Some("0.2.0")).await).is_empty());

    // The old agent is updated: its next heartbeat's inventory takes it out of the group.
    wait_as(&old, "0.2.0", |d| versions(d).is_empty()).await;

    // A group may not compare another key.
    let bad = "{ matchExpressions: [{ key: rack, operator: Gt, values: [\"3\"] }] }";
    let (status, body) = admin
        .apply(&group_yaml("racks", bad, &[("fixup", "1.0.0")], "10"), "")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("spec.selector.matchExpressions[0].operator")
            && text.contains("applies only to `thinfleet.io/agent-version`"),
        "{text}"
    );
    let (_, groups) = admin.get("/apis/thinfleet.io/v1/clientgroups").await;
    assert_eq!(item_names(&groups), vec!["outdated".to_string()]);
}
