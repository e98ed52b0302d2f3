//! Apply plans: created, configured, unchanged, pruned, and refusals.

mod common;

use std::collections::BTreeMap;

use common::{group, release};
use tc_api::Object;
use tc_reconcile::{Action, PlanError, PlanOptions, plan};

fn managed(mut object: Object, manager: &str) -> Object {
    object.meta_mut().managed_by = Some(manager.into());
    object
}

fn actions(result: &tc_reconcile::Plan) -> Vec<(String, Action)> {
    result
        .items
        .iter()
        .map(|item| (item.object.reference(), item.action))
        .collect()
}

#[test]
fn plan_table() {
    let existing = vec![
        managed(
            Object::ClientGroup(group("same", 0, &[("kiosk", "^1")])),
            "tcadm",
        ),
        managed(
            Object::ClientGroup(group("changed", 0, &[("kiosk", "^1")])),
            "tcadm",
        ),
        managed(Object::ClientGroup(group("gone", 0, &[])), "tcadm"),
        managed(
            Object::ClientGroup(group("other-managers", 0, &[])),
            "dir:/srv",
        ),
    ];
    let incoming = vec![
        Object::ClientGroup(group("same", 0, &[("kiosk", "^1")])),
        Object::ClientGroup(group("changed", 0, &[("kiosk", "^2")])),
        Object::ClientGroup(group("new", 0, &[])),
    ];
    let none = BTreeMap::new();
    let without_prune = plan(
        &existing,
        &incoming,
        "tcadm",
        &PlanOptions::default(),
        &none,
    )
    .unwrap();
    assert_eq!(
        actions(&without_prune),
        vec![
            ("clientgroup/same".into(), Action::Unchanged),
            ("clientgroup/changed".into(), Action::Configure),
            ("clientgroup/new".into(), Action::Create),
        ]
    );
    let with_prune = plan(
        &existing,
        &incoming,
        "tcadm",
        &PlanOptions {
            prune: true,
            force: false,
        },
        &none,
    )
    .unwrap();
    // Only this manager's objects are pruned.
    assert_eq!(
        actions(&with_prune).last().unwrap(),
        &("clientgroup/gone".to_string(), Action::Prune)
    );
    assert_eq!(with_prune.items.len(), 4);
    assert!(!with_prune.is_noop());

    // A label change alone configures.
    let mut relabelled = incoming[0].clone();
    relabelled
        .meta_mut()
        .labels
        .insert("team".into(), "ops".into());
    let result = plan(
        &existing,
        &[relabelled],
        "tcadm",
        &PlanOptions::default(),
        &none,
    )
    .unwrap();
    assert_eq!(result.items[0].action, Action::Configure);
}

#[test]
fn other_managers_objects_need_force() {
    let existing = vec![managed(
        Object::ClientGroup(group("g", 0, &[])),
        "dir:/srv/manifests",
    )];
    let incoming = vec![Object::ClientGroup(group("g", 1, &[]))];
    let none = BTreeMap::new();
    let errors = plan(
        &existing,
        &incoming,
        "tcadm",
        &PlanOptions::default(),
        &none,
    )
    .unwrap_err();
    assert!(
        matches!(&errors[0], PlanError::ManagerConflict { manager, .. } if manager == "dir:/srv/manifests")
    );
    assert!(errors[0].to_string().contains("--force"));
    let forced = plan(
        &existing,
        &incoming,
        "tcadm",
        &PlanOptions {
            force: true,
            prune: false,
        },
        &none,
    )
    .unwrap();
    assert_eq!(forced.items[0].action, Action::Configure);
    // The same content under a new manager still counts as configured (the manager changes).
    let same = vec![Object::ClientGroup(group("g", 0, &[]))];
    let forced = plan(
        &existing,
        &same,
        "tcadm",
        &PlanOptions {
            force: true,
            prune: false,
        },
        &none,
    )
    .unwrap();
    assert_eq!(forced.items[0].action, Action::Configure);
}

#[test]
fn releases_are_immutable_and_unique_per_version() {
    let existing = vec![managed(
        Object::PackageRelease(release("kiosk", "1.0.0", true)),
        "tcadm",
    )];
    let none = BTreeMap::new();
    // Re-applying the same release is fine.
    let same = vec![Object::PackageRelease(release("kiosk", "1.0.0", false))];
    assert_eq!(
        plan(&existing, &same, "tcadm", &PlanOptions::default(), &none)
            .unwrap()
            .items[0]
            .action,
        Action::Unchanged
    );
    // Another artifact for the same release is refused.
    let digests = BTreeMap::from([("kiosk-1.0.0".to_string(), "f".repeat(64))]);
    let errors = plan(&existing, &same, "tcadm", &PlanOptions::default(), &digests).unwrap_err();
    assert!(
        matches!(&errors[0], PlanError::ImmutableRelease { reason, .. } if reason.contains("artifact")),
        "{errors:?}"
    );
    // Another object name for the same package version is refused.
    let mut twin = release("kiosk", "1.0.0", false);
    twin.metadata.name = "kiosk-again".into();
    let errors = plan(
        &existing,
        &[Object::PackageRelease(twin)],
        "tcadm",
        &PlanOptions::default(),
        &none,
    )
    .unwrap_err();
    assert!(matches!(&errors[0], PlanError::DuplicateRelease { .. }));
}

#[test]
fn duplicates_in_one_request_are_refused() {
    let incoming = vec![
        Object::ClientGroup(group("g", 0, &[])),
        Object::ClientGroup(group("g", 1, &[])),
    ];
    let errors = plan(
        &[],
        &incoming,
        "tcadm",
        &PlanOptions::default(),
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].to_string().contains("more than once"));
}
