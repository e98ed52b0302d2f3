//! Group status: member counts and conditions.

mod common;

use common::{group, map, release};
use tc_api::meta::find_condition;
use tc_api::{ConditionStatus, Timestamp};
use tc_reconcile::status::{MemberState, group_status};
use tc_reconcile::{Convergence, ReleaseCatalog};

#[test]
fn counts_and_conditions() {
    let releases = [
        release("kiosk", "1.0.0", true),
        release("kiosk", "2.0.0", true),
    ];
    let catalog = ReleaseCatalog::new(&releases);
    let mut g = group("g", 0, &[("kiosk", "^2")]);
    g.metadata.generation = Some(3);
    let new = map(&[("kiosk", "2.0.0")]);
    let old = map(&[("kiosk", "1.0.0")]);
    let converged = Convergence::Converged;
    let progressing = Convergence::Progressing;
    let failed = Convergence::Failed {
        package: "kiosk".into(),
        message: "boom".into(),
    };
    let members = [
        MemberState {
            assigned: &new,
            convergence: &converged,
        },
        MemberState {
            assigned: &new,
            convergence: &progressing,
        },
        MemberState {
            assigned: &new,
            convergence: &failed,
        },
        MemberState {
            assigned: &old,
            convergence: &converged,
        },
    ];
    let now = Timestamp::from_unix_millis(1000);
    let status = group_status(&g, &catalog, &members, 0, now);
    assert_eq!(
        (
            status.desired,
            status.updated,
            status.ready,
            status.failed,
            status.unavailable
        ),
        (4, 3, 1, 1, 2)
    );
    assert_eq!(status.observed_generation, 3);
    assert_eq!(
        status.packages[0].resolved_version.as_deref(),
        Some("2.0.0")
    );
    let ready = find_condition(&status.conditions, "Ready").unwrap();
    assert_eq!(ready.status, ConditionStatus::False);
    let degraded = find_condition(&status.conditions, "Degraded").unwrap();
    assert_eq!(
        (degraded.status, degraded.reason.as_str()),
        (ConditionStatus::True, "MembersFailed")
    );

    // Everyone done: Ready, not progressing, not degraded; transition times move only on change.
    g.status = Some(status);
    let all = [MemberState {
        assigned: &new,
        convergence: &converged,
    }];
    let later = Timestamp::from_unix_millis(2000);
    let status = group_status(&g, &catalog, &all, 0, later);
    let ready = find_condition(&status.conditions, "Ready").unwrap();
    assert_eq!(
        (ready.status, ready.last_transition_time),
        (ConditionStatus::True, later)
    );
    let degraded = find_condition(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.status, ConditionStatus::False);
    let progressing = find_condition(&status.conditions, "Progressing").unwrap();
    assert_eq!(
        (progressing.status, progressing.reason.as_str()),
        (ConditionStatus::False, "Complete")
    );
}

#[test]
fn conflicts_and_unresolved_requirements_degrade() {
    let catalog = ReleaseCatalog::new(&[release("kiosk", "1.0.0", true)]);
    let g = group("g", 0, &[("kiosk", "^9")]);
    let status = group_status(&g, &catalog, &[], 0, Timestamp::EPOCH);
    let degraded = find_condition(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.reason, "Unresolved");
    let g = group("g", 0, &[("kiosk", "^1")]);
    let status = group_status(&g, &catalog, &[], 2, Timestamp::EPOCH);
    assert_eq!(
        find_condition(&status.conditions, "Degraded")
            .unwrap()
            .reason,
        "Conflict"
    );
}
