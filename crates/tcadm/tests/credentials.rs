//! `tcadm credential create|list|rotate|revoke` and what each role may do: the real binary against
//! a real controller on `127.0.0.1:0` over HTTPS.

mod common;

use common::{Fleet, Run};

const GROUP: &str = "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: front-desk\n\
spec:\n  selector: {}\n  packages: []\n";

/// A controller and a scratch directory holding `group.yaml`.
fn start() -> Fleet {
    let fleet = Fleet::start();
    std::fs::write(fleet.dir.path().join("group.yaml"), GROUP).unwrap();
    fleet
}

impl Fleet {
    /// Runs tcadm with `token` (the break-glass token when `None`).
    fn tcadm_as(&self, token: Option<&str>, args: &[&str]) -> Run {
        let token = token.unwrap_or(self.controller.admin_token());
        Run::of(&mut self.command_as(token, args))
    }

    fn tcadm(&self, args: &[&str]) -> Run {
        self.tcadm_as(None, args)
    }

    /// `credential create`: the token, alone on standard output.
    fn create(&self, name: &str, role: &str) -> String {
        let run = self.tcadm(&["credential", "create", name, "--role", role]);
        let token = run.ok().trim().to_string();
        assert_eq!(token.len(), 64, "{run:#?}");
        assert!(
            run.stderr
                .contains(&format!("credential `{name}` (role {role}")),
            "{run:#?}"
        );
        assert!(!run.stderr.contains(&token), "{run:#?}");
        token
    }
}

#[test]
fn a_viewer_may_get_clients_but_not_apply() {
    let fleet = start();
    let token = fleet.create("helpdesk", "viewer");
    let run = fleet.tcadm_as(Some(&token), &["get", "clients"]);
    assert_eq!(run.code, 0, "{run:#?}");
    let run = fleet.tcadm_as(Some(&token), &["apply", "-f", "group.yaml"]);
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(
        run.stderr.contains(
            "credential \"helpdesk\" (role viewer) may not POST /apis/thinfleet.io/v1/apply: \
             needs role admin"
        ),
        "{run:#?}"
    );
    assert_eq!(fleet.tcadm(&["get", "cg", "-o", "name"]).ok(), "");
}

#[test]
fn credentials_are_listed_rotated_and_revoked() {
    let fleet = start();
    let token = fleet.create("desk", "operator");
    let run = fleet.tcadm(&[
        "credential",
        "create",
        "ci",
        "--role",
        "admin",
        "--expires",
        "90d",
    ]);
    let ci = run.ok().trim().to_string();
    let list = fleet.tcadm(&["credential", "list"]);
    let lines: Vec<&str> = list.ok().lines().collect();
    assert_eq!(lines.len(), 3, "{list:#?}");
    assert!(lines[0].starts_with("NAME"), "{list:#?}");
    assert!(
        lines[1].starts_with("ci") && lines[1].contains("admin"),
        "{list:#?}"
    );
    assert!(lines[1].contains("in 89d"), "{list:#?}");
    assert!(
        lines[2].starts_with("desk") && lines[2].contains("operator"),
        "{list:#?}"
    );
    assert!(!list.stdout.contains(&token) && !list.stdout.contains(&ci));
    // An apply with the `ci` credential is managed by it.
    fleet
        .tcadm_as(Some(&ci), &["apply", "-f", "group.yaml"])
        .ok();
    let group = fleet.tcadm(&["get", "cg", "front-desk", "-o", "json"]);
    let group: serde_json::Value = serde_json::from_str(group.ok()).unwrap();
    assert_eq!(group["metadata"]["managedBy"], "credential:ci");
    // Rotation: the old token is refused (exit 3), the new one works.
    let rotated = fleet.tcadm(&["credential", "rotate", "desk"]);
    let new_token = rotated.ok().trim().to_string();
    assert_ne!(new_token, token);
    assert_eq!(fleet.tcadm_as(Some(&token), &["get", "clients"]).code, 3);
    fleet.tcadm_as(Some(&new_token), &["get", "clients"]).ok();
    // Revocation.
    assert_eq!(
        fleet.tcadm(&["credential", "revoke", "desk"]).ok(),
        "credential `desk` (role operator) revoked; its token is refused from now on\n"
    );
    let run = fleet.tcadm_as(Some(&new_token), &["get", "clients"]);
    assert_eq!(run.code, 3, "{run:#?}");
    // Only admins manage credentials.
    let viewer = fleet.create("viewer", "viewer");
    let run = fleet.tcadm_as(
        Some(&viewer),
        &["credential", "create", "x", "--role", "admin"],
    );
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(run.stderr.contains("needs role admin"), "{run:#?}");
    assert_eq!(
        fleet
            .tcadm(&["credential", "create", "x", "--role", "root"])
            .code,
        2
    );
}

#[test]
fn an_operator_pauses_and_resumes_a_rollout_a_viewer_may_not() {
    let fleet = start();
    fleet.tcadm(&["apply", "-f", "group.yaml"]).ok();
    let operator = fleet.create("lead", "operator");
    let viewer = fleet.create("eyes", "viewer");
    let run = fleet.tcadm_as(Some(&viewer), &["rollout", "pause", "cg", "front-desk"]);
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(run.stderr.contains("needs role operator"), "{run:#?}");
    let run = fleet.tcadm_as(Some(&operator), &["rollout", "pause", "cg", "front-desk"]);
    assert!(
        run.ok().starts_with(
            "clientgroup/front-desk: rollout paused by lead: no member gets a new version"
        ),
        "{run:#?}"
    );
    let run = fleet.tcadm_as(Some(&operator), &["rollout", "pause", "cg", "front-desk"]);
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(run.stderr.contains("already paused (by lead"), "{run:#?}");
    let run = fleet.tcadm_as(
        Some(&operator),
        &["rollout", "resume", "clientgroup", "front-desk"],
    );
    assert!(run.ok().contains("rollout resumed by lead"), "{run:#?}");
    let run = fleet.tcadm_as(
        Some(&operator),
        &["rollout", "resume", "client", "front-desk"],
    );
    assert_eq!(run.code, 2, "{run:#?}");
}
