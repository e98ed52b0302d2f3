//! GitOps end to end, with the real binaries as separate processes: `tc-controller --demo` (three
//! real `tc-agent` processes) watching a copy of the example fleet, and `tcadm`. Objects the
//! directory defines are deleted, forced, edited and taken out of and back into the directory's
//! hands through the API; the directory puts back what its files define, and the fleet's packages
//! are never removed on the way.
//!
//! It needs the `tc-agent` and `tcadm` binaries, which `cargo test --workspace` builds before
//! running any test.

mod common;

use std::time::Duration;

use common::demo::Fleet;
use serde_json::Value;

/// back-office as an admin writes it through the API, unlike the file: a label, `maxUnavailable: 3`.
const BACK_OFFICE: &str = "\
apiVersion: thinfleet.io/v1
kind: ClientGroup
metadata:
  name: back-office
  labels: { owner: ops }
spec:
  selector:
    matchExpressions:
      - { key: role, operator: In, values: [back-office] }
  packages:
    - { name: kiosk-browser, version: \"~1.4\" }
  rollout:
    maxUnavailable: 3
";

fn back_office(fleet: &Fleet) -> Value {
    fleet.json(&["get", "cg", "back-office"])
}

fn managed_by_directory(group: &Value) -> bool {
    group["metadata"]["managedBy"]
        .as_str()
        .is_some_and(|m| m.starts_with("dir:"))
}

#[test]
fn the_directory_restores_deleted_forced_and_released_objects_and_no_package_is_removed() {
    let fleet = Fleet::start();
    let root = fleet.root.clone();

    // The fleet converges on the example manifests.
    fleet.wait_until(
        "the fleet runs the example manifests",
        Duration::from_secs(60),
        |f| {
            f.installed("demo-office-1", "kiosk-browser", "1.4.2")
                && f.installed("demo-kiosk-1", "kiosk-browser", "1.4.2")
                && f.installed("demo-kiosk-2", "kiosk-browser", "1.4.2")
                && ["demo-kiosk-1", "demo-kiosk-2", "demo-office-1"]
                    .iter()
                    .all(|c| f.installed(c, "vpn-profile", "2.0.1"))
        },
    );
    let converged = fleet.last_seq();

    // 1. Delete: put back in the same transaction, with an event naming the file.
    let (out, err) = fleet.tcadm_with_stderr(&["delete", "cg", "back-office"]);
    assert_eq!(out, "clientgroup/back-office deleted\n");
    assert!(
        err.contains("groups.yaml of the watched directory `manifests`, which restored it at once"),
        "{err}"
    );
    assert!(managed_by_directory(&back_office(&fleet)));
    let events = fleet.tcadm(&["get", "events", "--for", "clientgroup/back-office"]);
    assert!(
        events.contains("DriftCorrected") && events.contains("groups.yaml"),
        "{events}"
    );

    // 2. Force: taken back within the debounce, the other files still applying.
    std::fs::write(root.join("back-office.yaml"), BACK_OFFICE).unwrap();
    let (out, err) = fleet.tcadm_with_stderr(&["apply", "-f", "back-office.yaml", "--force"]);
    assert_eq!(out, "clientgroup/back-office configured\n");
    assert!(err.contains("which takes it back"), "{err}");
    fleet.wait_until(
        "the directory takes back-office back",
        Duration::from_secs(10),
        |f| {
            let group = back_office(f);
            managed_by_directory(&group) && group["metadata"]["labels"].is_null()
        },
    );

    // 3. Edit: the file changes; a rollout status after it waits for the change to be applied
    // and observed before it reports success.
    let groups = root.join("manifests/groups.yaml");
    let text = std::fs::read_to_string(&groups).unwrap();
    let edited = text.replacen(
        "      - { key: role, operator: In, values: [back-office] }\n  packages:\n    - { name: kiosk-browser, version: \"~1.4\" }\n  rollout:\n    maxUnavailable: 1",
        "      - { key: role, operator: In, values: [back-office] }\n  packages:\n    - { name: kiosk-browser, version: \"~1.4\" }\n  rollout:\n    maxUnavailable: 2",
        1,
    );
    assert_ne!(edited, text, "back-office not found in groups.yaml");
    std::fs::write(&groups, edited).unwrap();
    let out = fleet.tcadm(&[
        "rollout",
        "status",
        "cg",
        "back-office",
        "--watch",
        "--timeout",
        "30s",
    ]);
    assert!(out.ends_with("successfully rolled out\n"), "{out}");
    let group = back_office(&fleet);
    assert_eq!(group["spec"]["rollout"]["maxUnavailable"], 2, "{group}");
    assert_eq!(
        group["status"]["observedGeneration"], group["metadata"]["generation"],
        "{group}"
    );

    // 4. Release: marked `thinfleet.io/reconcile: disabled`, the group stays as the API wrote it.
    let released = BACK_OFFICE.replace(
        "  labels: { owner: ops }\n",
        "  labels: { owner: ops }\n  annotations: { thinfleet.io/reconcile: disabled }\n",
    );
    std::fs::write(root.join("back-office.yaml"), &released).unwrap();
    let (_, err) = fleet.tcadm_with_stderr(&["apply", "-f", "back-office.yaml", "--force"]);
    assert!(err.contains("which leaves it alone"), "{err}");
    fleet.wait_until(
        "the source lists back-office as skipped",
        Duration::from_secs(10),
        |f| {
            let source = f.json(&["get", "sources", "manifests"]);
            source["skipped"]
                .as_array()
                .is_some_and(|s| s.iter().any(|o| o["name"] == "back-office"))
        },
    );
    let group = back_office(&fleet);
    assert_eq!(group["metadata"]["managedBy"], "admin", "{group}");
    assert_eq!(group["spec"]["rollout"]["maxUnavailable"], 3, "{group}");

    // 5. Reclaim: without the mark, the directory takes it back.
    std::fs::write(root.join("back-office.yaml"), BACK_OFFICE).unwrap();
    fleet.tcadm(&["apply", "-f", "back-office.yaml", "--force"]);
    fleet.wait_until(
        "the directory reclaims back-office",
        Duration::from_secs(10),
        |f| {
            let group = back_office(f);
            managed_by_directory(&group)
                && group["metadata"]["labels"].is_null()
                && group["spec"]["rollout"]["maxUnavailable"] == 2
        },
    );
    let source = fleet.json(&["get", "sources", "manifests"]);
    assert!(source["error"].is_null(), "{source}");
    assert!(source["driftCorrections"].as_u64() >= Some(3), "{source}");

    // No package was removed, nor assigned away, on the way.
    let history = fleet.events_after(converged);
    let client_changes: Vec<&Value> = history
        .iter()
        .filter(|e| {
            e["object"]["kind"] == "Client"
                && (e["reason"] == "Removed" || e["reason"] == "Assigned")
        })
        .collect();
    assert!(client_changes.is_empty(), "{client_changes:?}");
    assert!(
        ["demo-kiosk-1", "demo-kiosk-2", "demo-office-1"]
            .iter()
            .all(|c| fleet.installed(c, "kiosk-browser", "1.4.2")),
        "a client lost kiosk-browser"
    );
}
