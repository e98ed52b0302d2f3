//! Apply plans: created, configured, unchanged, pruned, and refusals.

mod common;

use std::collections::BTreeMap;

use common::{group, release};
use tc_api::Object;
use tc_reconcile::{Action, PlanError, PlanOptions, SkipReason, plan};

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
            ..Default::default()
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
            ..Default::default()
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
            ..Default::default()
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

const DIR: &str = "dir:/srv/manifests";

fn authoritative() -> PlanOptions {
    PlanOptions {
        prune: true,
        authoritative: true,
        ..Default::default()
    }
}

fn disabled(mut object: Object) -> Object {
    object.meta_mut().annotations.insert(
        tc_reconcile::RECONCILE_ANNOTATION.into(),
        tc_reconcile::RECONCILE_DISABLED.into(),
    );
    object
}

fn skipped(plan: &tc_reconcile::Plan) -> Vec<(String, SkipReason)> {
    plan.skipped
        .iter()
        .map(|s| (s.name.clone(), s.reason.clone()))
        .collect()
}

/// The bug: after one `apply --force` through the API, the directory's plan failed as a whole with
/// a manager conflict, so no file change applied any more.
#[test]
fn an_authoritative_plan_takes_back_objects_forced_away_from_it() {
    let existing = vec![
        managed(Object::ClientGroup(group("forced", 5, &[])), "tcadm"),
        managed(Object::ClientGroup(group("other", 0, &[])), DIR),
    ];
    let incoming = vec![
        Object::ClientGroup(group("forced", 0, &[])),
        Object::ClientGroup(group("other", 1, &[])),
    ];
    let result = plan(
        &existing,
        &incoming,
        DIR,
        &authoritative(),
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(
        actions(&result),
        vec![
            ("clientgroup/forced".into(), Action::Configure),
            ("clientgroup/other".into(), Action::Configure),
        ]
    );
    assert!(result.skipped.is_empty());
    // The same content under another manager is taken back too.
    let same = vec![Object::ClientGroup(group("forced", 5, &[]))];
    let result = plan(&existing, &same, DIR, &authoritative(), &BTreeMap::new()).unwrap();
    assert_eq!(result.items[0].action, Action::Configure);
}

#[test]
fn an_authoritative_plan_skips_one_conflicting_object_and_plans_the_others() {
    let existing = vec![
        managed(Object::PackageRelease(release("kiosk", "1.0.0", true)), DIR),
        managed(Object::ClientGroup(group("g", 0, &[])), DIR),
    ];
    let mut twin = release("kiosk", "1.0.0", false);
    twin.metadata.name = "kiosk-again".into();
    let incoming = vec![
        Object::PackageRelease(release("kiosk", "1.0.0", false)),
        Object::PackageRelease(twin),
        Object::ClientGroup(group("g", 3, &[("kiosk", "^1")])),
    ];
    // kiosk-1.0.0 gets another artifact, kiosk-again repeats its version: both skipped.
    let digests = BTreeMap::from([("kiosk-1.0.0".to_string(), "f".repeat(64))]);
    let result = plan(&existing, &incoming, DIR, &authoritative(), &digests).unwrap();
    assert_eq!(
        actions(&result),
        vec![("clientgroup/g".into(), Action::Configure)],
        "the group still applies, and the skipped release is not pruned"
    );
    let skipped = skipped(&result);
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        matches!(&skipped[0], (name, SkipReason::Conflict(PlanError::ImmutableRelease { .. })) if name == "kiosk-1.0.0"),
        "{skipped:?}"
    );
    assert!(
        matches!(&skipped[1], (name, SkipReason::Conflict(PlanError::DuplicateRelease { other, .. })) if name == "kiosk-again" && other == "kiosk-1.0.0"),
        "{skipped:?}"
    );
    // The same set applied through the API is refused as a whole.
    let errors = plan(&existing, &incoming, DIR, &PlanOptions::default(), &digests).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn reconcile_disabled_objects_are_never_created_updated_or_pruned_by_an_authoritative_plan() {
    let existing = vec![
        managed(
            disabled(Object::ClientGroup(group("marked-stored", 0, &[]))),
            "tcadm",
        ),
        managed(
            disabled(Object::ClientGroup(group("gone-but-marked", 0, &[]))),
            DIR,
        ),
        managed(Object::ClientGroup(group("gone", 0, &[])), DIR),
    ];
    let incoming = vec![
        Object::ClientGroup(group("marked-stored", 1, &[])),
        disabled(Object::ClientGroup(group("marked-in-file", 0, &[]))),
    ];
    let result = plan(
        &existing,
        &incoming,
        DIR,
        &authoritative(),
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(
        actions(&result),
        vec![("clientgroup/gone".into(), Action::Prune)]
    );
    assert_eq!(
        skipped(&result),
        vec![
            (
                "marked-stored".into(),
                SkipReason::ReconcileDisabled {
                    in_source: false,
                    would: Action::Configure
                }
            ),
            (
                "marked-in-file".into(),
                SkipReason::ReconcileDisabled {
                    in_source: true,
                    would: Action::Create
                }
            ),
            (
                "gone-but-marked".into(),
                SkipReason::ReconcileDisabled {
                    in_source: false,
                    would: Action::Prune
                }
            ),
        ]
    );
    // An API apply writes the annotation like any other.
    let result = plan(
        &existing,
        &incoming,
        "tcadm",
        &PlanOptions::default(),
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(
        actions(&result),
        vec![
            ("clientgroup/marked-stored".into(), Action::Configure),
            ("clientgroup/marked-in-file".into(), Action::Create),
        ]
    );
}

#[test]
fn a_conflict_with_a_directory_object_says_how_to_take_it_out_of_the_directorys_hands() {
    let existing = vec![managed(Object::ClientGroup(group("g", 0, &[])), DIR)];
    let incoming = vec![Object::ClientGroup(group("g", 1, &[]))];
    let errors = plan(
        &existing,
        &incoming,
        "tcadm",
        &PlanOptions::default(),
        &BTreeMap::new(),
    )
    .unwrap_err();
    let message = errors[0].to_string();
    assert!(message.contains("takes it back"), "{message}");
    assert!(
        message.contains("thinfleet.io/reconcile: disabled"),
        "{message}"
    );
}
