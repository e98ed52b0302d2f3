//! Group status: member counts, per-package rollouts and conditions.

mod common;

use common::{group, map, release};
use tc_api::meta::find_condition;
use tc_api::{
    AssignedPackage, ClientGroup, ClientGroupStatus, ConditionStatus, PackageReport, PackageState,
    Timestamp,
};
use tc_reconcile::{
    ClientDesire, MemberView, PackageHealth, ReleaseCatalog, desired_for_client, group_status,
};

/// A member: its assignment (package, version, health) and reports, deciding groups from
/// `groups`.
struct Member {
    name: String,
    offline: bool,
    desire: ClientDesire,
    assigned: Vec<AssignedPackage>,
    health: Vec<PackageHealth>,
    reports: Vec<PackageReport>,
}

impl Member {
    fn new(
        name: &str,
        groups: &[&ClientGroup],
        catalog: &ReleaseCatalog,
        assigned: &[(&str, &str, PackageHealth)],
    ) -> Member {
        let pairs: Vec<(&str, &str)> = assigned.iter().map(|(p, v, _)| (*p, *v)).collect();
        Member {
            name: name.into(),
            offline: false,
            desire: desired_for_client(groups, catalog, &map(&pairs)),
            assigned: assigned
                .iter()
                .map(|(p, v, _)| AssignedPackage {
                    name: p.to_string(),
                    version: v.to_string(),
                    attempt: 0,
                })
                .collect(),
            health: assigned.iter().map(|(_, _, h)| *h).collect(),
            reports: assigned
                .iter()
                .filter(|(_, _, h)| *h == PackageHealth::Failed)
                .map(|(p, v, _)| PackageReport {
                    staged: None,
                    name: p.to_string(),
                    version: v.to_string(),
                    state: PackageState::Failed,
                    active_version: None,
                    message: Some("health check exited 1\nmore output".into()),
                    since: Timestamp::EPOCH,
                })
                .collect(),
        }
    }

    fn view(&self) -> MemberView<'_> {
        MemberView {
            name: &self.name,
            offline: self.offline,
            desire: &self.desire,
            assigned: &self.assigned,
            health: &self.health,
            reports: &self.reports,
        }
    }
}

fn status_of(
    group: &ClientGroup,
    catalog: &ReleaseCatalog,
    members: &[Member],
    now: Timestamp,
) -> ClientGroupStatus {
    let views: Vec<MemberView<'_>> = members.iter().map(Member::view).collect();
    group_status(group, catalog, &views, now)
}

fn condition(status: &ClientGroupStatus, type_: &str) -> (ConditionStatus, String, String) {
    let c = find_condition(&status.conditions, type_).unwrap();
    (c.status, c.reason.clone(), c.message.clone())
}

use PackageHealth::{Converged, Failed, Progressing};

#[test]
fn counts_and_conditions() {
    let releases = [
        release("kiosk", "1.0.0", true),
        release("kiosk", "2.0.0", true),
    ];
    let catalog = ReleaseCatalog::new(&releases);
    let mut g = group("g", 0, &[("kiosk", "^2")]);
    g.metadata.generation = Some(3);
    let selecting = g.clone();
    let member = |name: &str, version: &str, health| {
        Member::new(name, &[&selecting], &catalog, &[("kiosk", version, health)])
    };
    let mut members = vec![
        member("a", "2.0.0", Converged),
        member("b", "2.0.0", Progressing),
        member("c", "2.0.0", Failed),
        member("d", "1.0.0", Converged),
    ];
    members[1].offline = true;
    let now = Timestamp::from_unix_millis(1000);
    let status = status_of(&g, &catalog, &members, now);
    assert_eq!(
        (
            status.desired,
            status.updated,
            status.ready,
            status.failed,
            status.unavailable,
            status.offline
        ),
        (4, 3, 1, 1, 2, 1)
    );
    assert_eq!(status.observed_generation, 3);
    let kiosk = &status.packages[0];
    assert_eq!(kiosk.resolved_version.as_deref(), Some("2.0.0"));
    assert_eq!((kiosk.updated, kiosk.unavailable, kiosk.failed), (3, 2, 1));
    assert_eq!(kiosk.failed_versions, ["2.0.0"]);
    let waiting: Vec<(&str, &str)> = status
        .waiting
        .iter()
        .map(|w| (w.name.as_str(), w.reason.as_str()))
        .collect();
    assert_eq!(
        waiting,
        [
            ("b", "offline; installing kiosk 2.0.0"),
            ("c", "kiosk 2.0.0 failed: health check exited 1"),
            ("d", "held back: kiosk 2.0.0 failed on other members"),
        ]
    );
    assert_eq!(condition(&status, "Ready").0, ConditionStatus::False);
    let (degraded, reason, message) = condition(&status, "Degraded");
    assert_eq!(
        (degraded, reason.as_str()),
        (ConditionStatus::True, "MembersFailed")
    );
    assert!(message.contains("kiosk 2.0.0"), "{message}");
    let (progressing, reason, message) = condition(&status, "Progressing");
    assert_eq!(
        (progressing, reason.as_str()),
        (ConditionStatus::False, "FailureThresholdExceeded")
    );
    assert!(
        message.contains("tcadm rollout retry clientgroup g"),
        "{message}"
    );

    // Everyone done: Ready, not progressing, not degraded; transition times move only on change.
    g.status = Some(status);
    let all = [member("a", "2.0.0", Converged)];
    let later = Timestamp::from_unix_millis(2000);
    let status = status_of(&g, &catalog, &all, later);
    let ready = find_condition(&status.conditions, "Ready").unwrap();
    assert_eq!(
        (ready.status, ready.last_transition_time),
        (ConditionStatus::True, later)
    );
    assert_eq!(condition(&status, "Degraded").0, ConditionStatus::False);
    let (progressing, reason, _) = condition(&status, "Progressing");
    assert_eq!(
        (progressing, reason.as_str()),
        (ConditionStatus::False, "Complete")
    );
    assert!(status.waiting.is_empty());
}

/// The reproduction: `hello-banner` failing on a kiosk of `berlin` made `everyone` and
/// `front-desk`, which do not ask for it, report `Degraded/MembersFailed`.
#[test]
fn a_failure_counts_only_in_groups_that_ask_for_the_package() {
    let catalog = ReleaseCatalog::new(&[
        release("kiosk-browser", "1.4.2", true),
        release("hello-banner", "0.2.0", true),
        release("vpn", "1.0.0", true),
    ]);
    let front_desk = group("front-desk", 0, &[("kiosk-browser", "~1.4")]);
    let berlin = group("berlin", 0, &[("hello-banner", "^0.2")]);
    let everyone = group("everyone", 0, &[("vpn", "^1")]);
    let groups = [&front_desk, &berlin, &everyone];
    let kiosk = Member::new(
        "kiosk-1",
        &groups,
        &catalog,
        &[
            ("hello-banner", "0.2.0", Failed),
            ("kiosk-browser", "1.4.2", Converged),
            ("vpn", "1.0.0", Converged),
        ],
    );
    let members = [kiosk];
    for healthy in [&front_desk, &everyone] {
        let status = status_of(healthy, &catalog, &members, Timestamp::EPOCH);
        assert_eq!((status.ready, status.failed, status.unavailable), (1, 0, 0));
        assert_eq!(condition(&status, "Degraded").1, "Healthy");
        assert_eq!(condition(&status, "Progressing").1, "Complete");
    }
    let status = status_of(&berlin, &catalog, &members, Timestamp::EPOCH);
    assert_eq!((status.ready, status.failed), (0, 1));
    assert_eq!(condition(&status, "Degraded").1, "MembersFailed");
}

#[test]
fn overrides_and_conflicts_name_the_other_group() {
    let catalog = ReleaseCatalog::new(&[
        release("kiosk", "1.0.0", true),
        release("kiosk", "2.0.0", true),
    ]);
    // `pinned` asks for kiosk 1, but `front` (priority 10) decides it for the member.
    let pinned = group("pinned", 0, &[("kiosk", "^1")]);
    let front = group("front", 10, &[("kiosk", "^2")]);
    let member = Member::new(
        "a",
        &[&pinned, &front],
        &catalog,
        &[("kiosk", "2.0.0", Converged)],
    );
    let status = status_of(&pinned, &catalog, &[member], Timestamp::EPOCH);
    // Not "RollingOut" forever: everything it decides is done.
    assert_eq!((status.updated, status.ready), (1, 1));
    assert_eq!(status.packages[0].overridden_by, ["front"]);
    assert_eq!(status.packages[0].overridden, 1);
    let (progressing, reason, message) = condition(&status, "Progressing");
    assert_eq!(
        (progressing, reason.as_str()),
        (ConditionStatus::False, "Complete")
    );
    assert!(message.contains("kiosk by front"), "{message}");

    // Same priority, other versions: a conflict that names the other group.
    let left = group("left", 0, &[("kiosk", "^1")]);
    let right = group("right", 0, &[("kiosk", "^2")]);
    let member = Member::new(
        "b",
        &[&left, &right],
        &catalog,
        &[("kiosk", "1.0.0", Converged)],
    );
    let status = status_of(&right, &catalog, &[member], Timestamp::EPOCH);
    assert_eq!(status.packages[0].conflicts_with, ["left"]);
    let (degraded, reason, message) = condition(&status, "Degraded");
    assert_eq!(
        (degraded, reason.as_str()),
        (ConditionStatus::True, "Conflict")
    );
    assert!(message.contains("kiosk by left"), "{message}");
    assert_ne!(condition(&status, "Progressing").1, "RollingOut");
}

#[test]
fn unresolved_requirements_degrade() {
    let catalog = ReleaseCatalog::new(&[release("kiosk", "1.0.0", true)]);
    let g = group("g", 0, &[("kiosk", "^9")]);
    let status = status_of(&g, &catalog, &[], Timestamp::EPOCH);
    assert_eq!(condition(&status, "Degraded").1, "Unresolved");
}

#[test]
fn a_rollout_without_progress_past_its_deadline_says_whom_it_waits_for() {
    let catalog = ReleaseCatalog::new(&[release("kiosk", "2.0.0", true)]);
    let mut g = group("g", 0, &[("kiosk", "^2")]);
    g.spec.rollout.progress_deadline_seconds = 600;
    let mut offline = Member::new(
        "kiosk-3",
        &[&g],
        &catalog,
        &[("kiosk", "2.0.0", Progressing)],
    );
    offline.offline = true;
    let members = [
        Member::new("kiosk-1", &[&g], &catalog, &[("kiosk", "2.0.0", Converged)]),
        offline,
    ];
    let start = Timestamp::from_unix_millis(1_000_000);
    let status = status_of(&g, &catalog, &members, start);
    assert_eq!(status.last_progress_time, Some(start));
    assert_eq!(condition(&status, "Progressing").1, "RollingOut");

    // Nothing changes for ten minutes: still within the deadline.
    g.status = Some(status);
    let within = Timestamp::from_unix_millis(1_000_000 + 600_000);
    let status = status_of(&g, &catalog, &members, within);
    assert_eq!(status.last_progress_time, Some(start));
    assert_eq!(condition(&status, "Progressing").1, "RollingOut");

    // Past it: Progressing=False, naming the member and that it is offline.
    g.status = Some(status);
    let past = Timestamp::from_unix_millis(1_000_000 + 601_000);
    let status = status_of(&g, &catalog, &members, past);
    let (progressing, reason, message) = condition(&status, "Progressing");
    assert_eq!(
        (progressing, reason.as_str()),
        (ConditionStatus::False, "ProgressDeadlineExceeded")
    );
    assert!(
        message.contains("kiosk-3 (offline; installing kiosk 2.0.0)"),
        "{message}"
    );
    assert!(message.contains("1 offline"), "{message}");

    // The member comes back and finishes: progress, complete.
    g.status = Some(status);
    let done = [
        Member::new("kiosk-1", &[&g], &catalog, &[("kiosk", "2.0.0", Converged)]),
        Member::new("kiosk-3", &[&g], &catalog, &[("kiosk", "2.0.0", Converged)]),
    ];
    let later = Timestamp::from_unix_millis(2_000_000);
    let status = status_of(&g, &catalog, &done, later);
    assert_eq!(status.last_progress_time, Some(later));
    assert_eq!(condition(&status, "Progressing").1, "Complete");
}
