//! `tcadm get audit`: the real binary against a real controller on `127.0.0.1:0` over HTTPS.

mod common;

use common::{Fleet, Run};
use serde_json::Value;

const GROUP: &str = "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: front-desk\n\
spec:\n  selector: {}\n  packages: []\n";

#[test]
fn get_audit_shows_who_changed_what_filters_and_exports_json_lines() {
    let fleet = Fleet::start();
    std::fs::write(fleet.dir.path().join("group.yaml"), GROUP).unwrap();
    let tcadm = |token: &str, args: &[&str]| Run::of(&mut fleet.command_as(token, args));
    let admin = fleet.controller.admin_token().to_string();
    let ops = tcadm(&admin, &["credential", "create", "ops", "--role", "admin"])
        .ok()
        .trim()
        .to_string();
    let desk = tcadm(
        &admin,
        &["credential", "create", "desk", "--role", "operator"],
    )
    .ok()
    .trim()
    .to_string();
    tcadm(&ops, &["apply", "-f", "group.yaml"]).ok();
    let refused = tcadm(&desk, &["delete", "clientgroup", "front-desk"]);
    assert_eq!(refused.code, 3, "{refused:#?}");

    // The table: who, what, on which object, how it ended.
    let table = tcadm(&desk, &["get", "audit"]);
    let text = table.ok();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].starts_with("AGE"), "{text}");
    assert!(
        lines[1].contains("admin")
            && lines[1].contains("createCredential")
            && lines[1].contains("credential/ops"),
        "{text}"
    );
    assert!(
        lines[3].contains("ops")
            && lines[3].contains("apply")
            && lines[3].contains("clientgroup/front-desk (created)")
            && lines[3].ends_with("Succeeded"),
        "{text}"
    );
    assert!(
        lines[4].contains("desk")
            && lines[4].contains("delete")
            && lines[4].ends_with("Denied (403)"),
        "{text}"
    );

    // Filters.
    let by = tcadm(&desk, &["get", "audit", "--by", "ops", "-o", "wide"]);
    let text = by.ok();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("127.0.0.1:"), "{text}");
    let for_group = tcadm(&desk, &["get", "audit", "--for", "cg/front-desk"]);
    assert_eq!(for_group.ok().lines().count(), 3, "{for_group:#?}");
    let for_credential = tcadm(&desk, &["get", "audit", "--for", "credential/desk"]);
    assert_eq!(
        for_credential.ok().lines().count(),
        2,
        "{for_credential:#?}"
    );
    let newest = tcadm(&desk, &["get", "audit", "--limit", "1", "-o", "json"]);
    let list: Value = serde_json::from_str(newest.ok()).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["user"], "desk");

    // The export: one JSON entry per line, the same entries as the list.
    let export = tcadm(&desk, &["get", "audit", "-o", "jsonl"]);
    let entries: Vec<Value> = export
        .ok()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(entries.len(), 4);
    let all = tcadm(&desk, &["get", "audit", "-o", "json"]);
    let list: Value = serde_json::from_str(all.ok()).unwrap();
    assert_eq!(list["items"].as_array().unwrap(), &entries);
    let export = tcadm(&desk, &["get", "audit", "--by", "desk", "-o", "jsonl"]);
    assert_eq!(export.ok().lines().count(), 1);

    // Mistakes are usage errors.
    for args in [
        &["get", "audit", "front-desk"][..],
        &["get", "clients", "--by", "ops"],
        &["get", "clients", "-o", "jsonl"],
        &["get", "audit", "-o", "name"],
        &["get", "audit", "--for", "nonsense/x"],
    ] {
        let run = tcadm(&desk, args);
        assert_eq!(run.code, 2, "{args:?}: {run:#?}");
    }
    // Nothing to show is said on standard error.
    let none = tcadm(&desk, &["get", "audit", "--by", "nobody"]);
    assert_eq!(none.ok(), "");
    assert!(none.stderr.contains("No audit entries found."), "{none:#?}");
}
