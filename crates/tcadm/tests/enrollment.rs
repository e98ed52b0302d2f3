//! `tcadm token`, `approve`, `deny`, `decommission` and `allow machine`: the real binary against a
//! real controller on `127.0.0.1:0`, with agents speaking the protocol by hand.

mod common;

use common::{Fleet, Run};
use serde_json::{Value, json};
use tc_testkit::protocol::TestIdentity;

/// An HTTP answer: status and JSON body.
struct Answer {
    status: u16,
    body: Value,
}

impl Fleet {
    fn tcadm(&self, args: &[&str]) -> Run {
        Run::of(&mut self.command(args))
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self
            .https_client()
            .request(method, format!("{}{path}", self.controller.url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().expect("controller answers");
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    fn enroll(
        &self,
        identity: &TestIdentity,
        bootstrap: &str,
        machine: &str,
        name: &str,
        labels: Value,
    ) -> Answer {
        let body = identity.enroll_body(bootstrap, machine, name, labels);
        self.request(reqwest::Method::POST, "/agent/v1/enroll", None, Some(body))
    }

    /// Opens a session for `client` with `identity`.
    fn session(&self, identity: &TestIdentity, client: &str) -> Answer {
        let challenge = self.request(
            reqwest::Method::POST,
            "/agent/v1/session",
            None,
            Some(json!({ "protocolVersion": 2, "clientName": client })),
        );
        if challenge.status != 200 {
            return challenge;
        }
        let value = challenge.body["challenge"]["value"].as_str().unwrap();
        self.request(
            reqwest::Method::POST,
            "/agent/v1/session",
            None,
            Some(identity.session_body(client, value)),
        )
    }

    fn heartbeat(&self, session: &str) -> Answer {
        self.request(
            reqwest::Method::POST,
            "/agent/v1/heartbeat",
            Some(session),
            Some(json!({ "protocolVersion": 2, "observedRevision": 0, "inventoryHash": "" })),
        )
    }

    fn client(&self, name: &str) -> Answer {
        self.request(
            reqwest::Method::GET,
            &format!("/apis/thinfleet.io/v1/clients/{name}"),
            Some(self.controller.admin_token()),
            None,
        )
    }
}

#[test]
fn a_site_token_imposes_its_labels_counts_its_uses_and_is_revoked() {
    let fleet = Fleet::start();
    let created = fleet.tcadm(&[
        "token",
        "create",
        "--name",
        "berlin",
        "--ttl",
        "1h",
        "--max-uses",
        "1",
        "--label",
        "site=berlin",
    ]);
    let secret = created.ok().trim().to_string();
    assert_eq!(secret.len(), 64, "{created:#?}");
    assert!(
        created.stderr.contains("bootstrap token `berlin` created"),
        "{created:#?}"
    );
    assert!(
        created
            .stderr
            .contains(&format!("--server {}", fleet.controller.url())),
        "{created:#?}"
    );

    // The agent says it is in Paris; the token says Berlin, and wins.
    let kiosk = TestIdentity::new("kiosk-b1");
    let answer = fleet.enroll(
        &kiosk,
        &secret,
        "m-b1",
        "kiosk-b1",
        json!({"site": "paris", "rack": "4"}),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let client = fleet.client("kiosk-b1").body;
    assert_eq!(client["metadata"]["labels"]["site"], "berlin", "{client}");
    assert_eq!(client["metadata"]["labels"]["rack"], "4");
    assert_eq!(client["spec"]["bootstrapToken"], "berlin");

    let list = fleet.tcadm(&["token", "list"]);
    let row = list
        .ok()
        .lines()
        .find(|l| l.starts_with("berlin"))
        .expect("listed")
        .to_string();
    assert!(
        row.contains("1/1") && row.contains("site=berlin") && row.contains("in "),
        "{row}"
    );
    assert!(
        list.ok().lines().any(|l| l.starts_with("default")),
        "{list:#?}"
    );
    assert!(!list.ok().contains(&secret), "a list shows no secret");

    // Used up: another machine is refused; the machine it enrolled may enrol again.
    let other = fleet.enroll(
        &TestIdentity::new("kiosk-b2"),
        &secret,
        "m-b2",
        "kiosk-b2",
        json!({}),
    );
    assert_eq!(other.status, 401, "{}", other.body);
    assert!(
        other.body["message"].as_str().unwrap().contains("maximum"),
        "{}",
        other.body
    );
    let again = fleet.enroll(&kiosk, &secret, "m-b1", "kiosk-b1", json!({}));
    assert_eq!(again.status, 200, "{}", again.body);

    // Revoked: refused, gone from the list, and revoking it again is an error.
    assert!(
        fleet
            .tcadm(&["token", "revoke", "berlin"])
            .ok()
            .contains("revoked")
    );
    let refused = fleet.enroll(&kiosk, &secret, "m-b1", "kiosk-b1", json!({}));
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(!fleet.tcadm(&["token", "list"]).ok().contains("berlin"));
    let twice = fleet.tcadm(&["token", "revoke", "berlin"]);
    assert_eq!(twice.code, 3, "{twice:#?}");
    assert!(twice.stderr.contains("not found"), "{twice:#?}");

    // The whole answer, on request.
    let yaml = fleet.tcadm(&["token", "create", "--require-approval", "-o", "json"]);
    let document: Value = serde_json::from_str(yaml.ok()).unwrap();
    assert_eq!(document["bootstrapToken"]["requireApproval"], true);
    assert_eq!(document["join"]["token"], document["token"]);
    assert_eq!(document["join"]["server"], fleet.controller.url());
    // The join material names the CA agents pin, so no CA file has to be copied to them.
    let hash = fleet
        .controller
        .ca_cert_hash()
        .expect("the test controller serves HTTPS");
    assert_eq!(document["join"]["caCertHash"], hash.as_str());
    assert!(
        document["join"]["server"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
}

/// Reproduction: "Bootstrap tokens can never be revoked". The default token is revocable like
/// any other, and revoking it deletes `data/bootstrap.token`.
#[test]
fn the_default_bootstrap_token_can_be_revoked() {
    let fleet = Fleet::start();
    let secret = fleet.controller.bootstrap_token().to_string();
    let identity = TestIdentity::new("k");
    assert_eq!(
        fleet
            .enroll(&identity, &secret, "m-k", "k", json!({}))
            .status,
        200
    );
    fleet.tcadm(&["token", "revoke", "default"]).ok();
    let refused = fleet.enroll(&TestIdentity::new("k2"), &secret, "m-k2", "k2", json!({}));
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(!fleet.controller.data_dir().join("bootstrap.token").exists());
}

#[test]
fn pending_clients_are_approved_or_denied_and_denied_machines_allowed_again() {
    let fleet = Fleet::start_with(|config| config.require_approval = true);
    let bootstrap = fleet.controller.bootstrap_token().to_string();
    let first = TestIdentity::new("first");
    let answer = fleet.enroll(&first, &bootstrap, "m-first", "first", json!({}));
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["state"], "Pending");
    assert_eq!(answer.body["reason"], "ApprovalRequired");
    assert!(answer.body["session"].is_null());
    // Waiting: shown as Pending, no session.
    let clients = fleet.tcadm(&["get", "clients"]);
    assert!(
        clients
            .ok()
            .lines()
            .any(|l| l.starts_with("first") && l.contains("Pending")),
        "{clients:#?}"
    );
    assert_eq!(fleet.session(&first, "first").status, 401);

    assert_eq!(
        fleet.tcadm(&["approve", "client", "first"]).ok(),
        "client/first approved\n"
    );
    let answer = fleet.enroll(&first, &bootstrap, "m-first", "first", json!({}));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let session = fleet.session(&first, "first");
    assert_eq!(session.status, 200, "{}", session.body);
    let token = session.body["session"]["token"].as_str().unwrap();
    assert_eq!(fleet.heartbeat(token).status, 200);
    assert_eq!(fleet.client("first").body["status"]["phase"], "Online");
    let twice = fleet.tcadm(&["approve", "client", "first"]);
    assert_eq!(twice.code, 3, "{twice:#?}");

    let second = TestIdentity::new("second");
    assert_eq!(
        fleet
            .enroll(&second, &bootstrap, "m-second", "second", json!({}))
            .status,
        202
    );
    let denied = fleet.tcadm(&["deny", "client", "second"]);
    assert!(
        denied.ok().contains("tcadm allow machine m-second"),
        "{denied:#?}"
    );
    assert_eq!(fleet.client("second").status, 404);
    let refused = fleet.enroll(&second, &bootstrap, "m-second", "second", json!({}));
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.body["reason"], "Denied");
    // The whole machine is refused (no other client holds its machine id), whatever the key.
    let other_key = fleet.enroll(
        &TestIdentity::new("second-reimaged"),
        &bootstrap,
        "m-second",
        "second",
        json!({}),
    );
    assert_eq!(other_key.status, 403);

    let allowed = fleet.tcadm(&["allow", "machine", "m-second"]);
    assert!(allowed.ok().contains("may enrol again"), "{allowed:#?}");
    assert_eq!(
        fleet
            .enroll(&second, &bootstrap, "m-second", "second", json!({}))
            .status,
        202
    );
    let unknown = fleet.tcadm(&["allow", "machine", "m-nobody"]);
    assert_eq!(unknown.code, 3, "{unknown:#?}");
    let wrong_kind = fleet.tcadm(&["approve", "clientgroup", "x"]);
    assert_eq!(wrong_kind.code, 2, "{wrong_kind:#?}");
}

/// Reproduction: "Anyone holding the bootstrap token enrols with another client's machine id
/// and becomes that client". Now it becomes a pending client an admin sees, and only an admin
/// can make its key the client's.
#[test]
fn a_duplicate_machine_id_is_pending_until_approved_as_the_replacement() {
    let fleet = Fleet::start();
    let bootstrap = fleet.controller.bootstrap_token().to_string();
    let original = TestIdentity::new("original");
    let answer = fleet.enroll(&original, &bootstrap, "m-shared", "kiosk-1", json!({}));
    let old_session = answer.body["session"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let reimaged = TestIdentity::new("re-imaged");
    let answer = fleet.enroll(&reimaged, &bootstrap, "m-shared", "kiosk-1", json!({}));
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["reason"], "DuplicateMachineId");
    let pending = answer.body["clientName"].as_str().unwrap().to_string();
    assert_ne!(pending, "kiosk-1");
    let describe = fleet.tcadm(&["describe", "client", &pending]);
    assert!(
        describe.ok().contains("DuplicateMachineId"),
        "{describe:#?}"
    );
    assert!(describe.ok().contains("--replace kiosk-1"), "{describe:#?}");

    let approved = fleet.tcadm(&["approve", "client", &pending, "--replace", "kiosk-1"]);
    assert!(
        approved.ok().contains("new key of client/kiosk-1"),
        "{approved:#?}"
    );
    // The old key's session is revoked; the new key is kiosk-1 now.
    let refused = fleet.heartbeat(&old_session);
    assert_eq!(refused.status, 401);
    assert_eq!(refused.body["reason"], "SessionRevoked");
    let answer = fleet.enroll(&reimaged, &bootstrap, "m-shared", "kiosk-1", json!({}));
    assert_eq!(answer.body["clientName"], "kiosk-1", "{}", answer.body);
    let session = fleet.session(&reimaged, "kiosk-1");
    assert_eq!(
        fleet
            .heartbeat(session.body["session"]["token"].as_str().unwrap())
            .status,
        200
    );
    assert_eq!(fleet.client(&pending).status, 404);
    assert_eq!(
        fleet.client("kiosk-1").body["spec"]["publicKey"],
        reimaged.public_key()
    );
    // The old key now enrols as a duplicate in turn (an admin sees it).
    let old = fleet.enroll(&original, &bootstrap, "m-shared", "kiosk-1", json!({}));
    assert_eq!(old.status, 202, "{}", old.body);
}

#[test]
fn decommissioning_tells_the_agent_and_shows_the_phase() {
    let fleet = Fleet::start();
    let bootstrap = fleet.controller.bootstrap_token().to_string();
    let identity = TestIdentity::new("leaving");
    let answer = fleet.enroll(&identity, &bootstrap, "m-leaving", "leaving", json!({}));
    let session = answer.body["session"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        fleet.heartbeat(&session).body["desired"]["decommission"],
        Value::Null
    );
    let run = fleet.tcadm(&["decommission", "client", "leaving"]);
    assert!(
        run.ok().contains("client/leaving decommissioning"),
        "{run:#?}"
    );
    let desired = fleet.heartbeat(&session).body["desired"].clone();
    assert_eq!(desired["decommission"], true, "{desired}");
    assert!(desired["revision"].as_u64().unwrap() > 0);
    assert_eq!(
        fleet.client("leaving").body["status"]["phase"],
        "Decommissioning"
    );
    let clients = fleet.tcadm(&["get", "clients"]);
    assert!(clients.ok().contains("Decommissioning"), "{clients:#?}");
    // The agent reports it removed everything: the client goes, its machine is refused.
    let done = fleet.request(
        reqwest::Method::POST,
        "/agent/v1/heartbeat",
        Some(&session),
        Some(json!({ "protocolVersion": 2, "observedRevision": desired["revision"], "inventoryHash": "", "decommissioned": true })),
    );
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(fleet.client("leaving").status, 404);
    let refused = fleet.enroll(
        &TestIdentity::new("leaving-new"),
        &bootstrap,
        "m-leaving",
        "leaving",
        json!({}),
    );
    assert_eq!(refused.status, 403);
    assert_eq!(refused.body["reason"], "Decommissioned");
    assert!(
        fleet
            .tcadm(&["allow", "machine", "m-leaving"])
            .ok()
            .contains("leaving")
    );
}

/// Reproduction: "a deleted client's agent is back 9 s later". `tcadm delete` says that the
/// client's credential is revoked; its agent is refused until the machine is allowed again.
#[test]
fn deleting_a_client_revokes_its_credential_until_allowed() {
    let fleet = Fleet::start();
    let bootstrap = fleet.controller.bootstrap_token().to_string();
    let identity = TestIdentity::new("gone");
    let answer = fleet.enroll(&identity, &bootstrap, "m-gone", "gone", json!({}));
    let session = answer.body["session"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let deleted = fleet.tcadm(&["delete", "client", "gone"]);
    deleted.ok();
    assert!(
        deleted.stderr.contains("tcadm allow machine m-gone"),
        "{deleted:#?}"
    );
    assert_eq!(fleet.heartbeat(&session).status, 401);
    assert_eq!(
        fleet
            .enroll(&identity, &bootstrap, "m-gone", "gone", json!({}))
            .status,
        403
    );
    fleet.tcadm(&["allow", "machine", "m-gone"]).ok();
    assert_eq!(
        fleet
            .enroll(&identity, &bootstrap, "m-gone", "gone", json!({}))
            .status,
        200
    );
}
