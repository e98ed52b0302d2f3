//! The rollout budget, failure isolation and convergence.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::map;
use proptest::prelude::*;
use tc_api::{AssignedPackage, ClientStatus, PackageReport, PackageState, Timestamp};
use tc_reconcile::{
    Assignment, ClientDesire, ClientRollout, Convergence, GroupBudget, PackageHealth, Want,
    convergence, package_health, plan_rollout, plan_rollout_from, standings,
};

fn desire(pairs: &[(&str, &str, &str)]) -> ClientDesire {
    ClientDesire {
        packages: pairs
            .iter()
            .map(|(package, version, group)| {
                (
                    package.to_string(),
                    Want {
                        version: version.to_string(),
                        group: Some(group.to_string()),
                    },
                )
            })
            .collect(),
        ..Default::default()
    }
}

fn names(list: &[&str]) -> Arc<[String]> {
    let mut list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    list.sort();
    list.into()
}

/// A client: its groups, what it wants (package, version, deciding group), what it is assigned,
/// which assigned packages are unavailable and which of those failed.
fn client(
    name: &str,
    groups: Vec<usize>,
    wants: &[(&str, &str, &str)],
    has: &[(&str, &str)],
    unavailable: &[&str],
    failed: &[&str],
) -> ClientRollout {
    ClientRollout {
        name: name.into(),
        groups: groups.into(),
        desire: Arc::new(desire(wants)),
        assigned: Arc::new(map(has)),
        unavailable: names(unavailable),
        failed: names(failed),
    }
}

fn budget(name: &str, max: usize, paused: bool, packages: &[&str]) -> GroupBudget {
    let mut packages: Vec<String> = packages.iter().map(|p| p.to_string()).collect();
    packages.sort();
    packages.dedup();
    GroupBudget::new(name, max, paused, packages)
}

/// A client's groups, desire and assignment, as clients share them.
type SharedInputs = (Arc<[usize]>, Arc<ClientDesire>, Arc<Assignment>);

/// The rollout rule client by client and package by package, written plainly: the planner must
/// decide what this decides.
fn reference_plan(groups: &[GroupBudget], clients: &[ClientRollout]) -> Vec<Assignment> {
    // (group, package) -> members unavailable for it; group -> failed releases.
    let mut unavailable: BTreeMap<(usize, String), usize> = BTreeMap::new();
    let mut failed: BTreeSet<(usize, String, String)> = BTreeSet::new();
    let asks = |g: usize, package: &str| groups[g].packages.iter().any(|p| p == package);
    for client in clients {
        for &g in client.groups.iter() {
            for package in client.unavailable.iter().filter(|p| asks(g, p)) {
                *unavailable.entry((g, package.clone())).or_default() += 1;
            }
            for package in client.failed.iter().filter(|p| asks(g, p)) {
                failed.insert((g, package.clone(), client.assigned[package].clone()));
            }
        }
    }
    let paused = |owner: &Option<String>| {
        groups
            .iter()
            .any(|g| Some(&g.name) == owner.as_ref() && g.paused)
    };
    let mut next = vec![];
    for client in clients {
        let mut assignment = Assignment::new();
        for (package, version) in client.assigned.iter() {
            if client.desire.packages.contains_key(package) {
                assignment.insert(package.clone(), version.clone());
            }
        }
        for (package, want) in &client.desire.packages {
            if client.assigned.get(package) == Some(&want.version) || paused(&want.group) {
                continue;
            }
            let asking: Vec<usize> = client
                .groups
                .iter()
                .copied()
                .filter(|&g| asks(g, package))
                .collect();
            if asking
                .iter()
                .any(|&g| failed.contains(&(g, package.clone(), want.version.clone())))
            {
                continue;
            }
            if !client.unavailable.contains(package) {
                let room = asking.iter().all(|&g| {
                    unavailable
                        .get(&(g, package.clone()))
                        .copied()
                        .unwrap_or_default()
                        < groups[g].max_unavailable
                });
                if !room {
                    continue;
                }
                for &g in &asking {
                    *unavailable.entry((g, package.clone())).or_default() += 1;
                }
            }
            assignment.insert(package.clone(), want.version.clone());
        }
        next.push(assignment);
    }
    next
}

fn updating(count: usize, package: &str, group: &str) -> Vec<ClientRollout> {
    (0..count)
        .map(|i| {
            client(
                &format!("c{i}"),
                vec![0],
                &[(package, "2.0.0", group)],
                &[(package, "1.0.0")],
                &[],
                &[],
            )
        })
        .collect()
}

#[test]
fn updates_respect_max_unavailable() {
    let groups = [budget("g", 2, false, &["kiosk"])];
    let next = plan_rollout(&groups, &updating(5, "kiosk", "g"));
    let updated = next.iter().filter(|a| a["kiosk"] == "2.0.0").count();
    assert_eq!(updated, 2);
    // The first two (input order) were picked.
    assert_eq!(next[0]["kiosk"], "2.0.0");
    assert_eq!(next[4]["kiosk"], "1.0.0");
}

#[test]
fn members_already_unavailable_for_the_package_use_up_its_budget() {
    let groups = [budget("g", 2, false, &["kiosk"])];
    let mut clients = updating(4, "kiosk", "g");
    // c3 is mid-update already (assigned 2.0.0, not reported yet).
    clients[3] = client(
        "c3",
        vec![0],
        &[("kiosk", "2.0.0", "g")],
        &[("kiosk", "2.0.0")],
        &["kiosk"],
        &[],
    );
    // c2 is still installing 1.0.0 and counts too.
    clients[2].unavailable = names(&["kiosk"]);
    let next = plan_rollout(&groups, &clients);
    assert_eq!(next[0]["kiosk"], "1.0.0");
    assert_eq!(next[1]["kiosk"], "1.0.0");
    // An unavailable client may take further changes of the package without more room.
    assert_eq!(next[2]["kiosk"], "2.0.0");
    assert_eq!(next[3]["kiosk"], "2.0.0");
}

/// The reproduction: `hello-banner` failing on a kiosk of `berlin` stalled `front-desk`'s
/// next update of another package, because the kiosk counted as unavailable as a whole.
#[test]
fn a_failed_package_does_not_hold_back_other_packages() {
    let groups = [
        budget("front-desk", 1, false, &["kiosk-browser"]),
        budget("berlin", 1, false, &["hello-banner"]),
    ];
    let clients = vec![
        // Failed on hello-banner 0.2.0 (rolled back): unavailable for hello-banner only.
        client(
            "kiosk-1",
            vec![0, 1],
            &[
                ("kiosk-browser", "1.5.0", "front-desk"),
                ("hello-banner", "0.2.0", "berlin"),
            ],
            &[("kiosk-browser", "1.4.2"), ("hello-banner", "0.2.0")],
            &["hello-banner"],
            &["hello-banner"],
        ),
        client(
            "kiosk-2",
            vec![0],
            &[("kiosk-browser", "1.5.0", "front-desk")],
            &[("kiosk-browser", "1.4.2")],
            &[],
            &[],
        ),
    ];
    let next = plan_rollout(&groups, &clients);
    // front-desk's budget of one goes to the first member, although it failed another package.
    assert_eq!(next[0]["kiosk-browser"], "1.5.0");
    assert_eq!(next[0]["hello-banner"], "0.2.0");
    assert_eq!(next[1]["kiosk-browser"], "1.4.2");
}

#[test]
fn first_installs_take_room_in_the_budget_too() {
    let groups = [budget("g", 2, false, &["kiosk"])];
    let clients: Vec<_> = (0..5)
        .map(|i| {
            client(
                &format!("c{i}"),
                vec![0],
                &[("kiosk", "1.0.0", "g")],
                &[],
                &[],
                &[],
            )
        })
        .collect();
    let next = plan_rollout(&groups, &clients);
    let installed = next.iter().filter(|a| a.contains_key("kiosk")).count();
    assert_eq!(installed, 2);
}

#[test]
fn a_release_that_failed_in_a_group_reaches_no_further_member() {
    let groups = [
        budget("g", 10, false, &["kiosk"]),
        budget("other", 10, false, &["kiosk"]),
    ];
    let clients = vec![
        // Failed on 2.0.0 in g.
        client(
            "failed",
            vec![0],
            &[("kiosk", "2.0.0", "g")],
            &[("kiosk", "2.0.0")],
            &["kiosk"],
            &["kiosk"],
        ),
        // Converged on 1.0.0: would be next, budget allowing.
        client(
            "old",
            vec![0],
            &[("kiosk", "2.0.0", "g")],
            &[("kiosk", "1.0.0")],
            &[],
            &[],
        ),
        // A new member: not even a first install of the failed release.
        client("new", vec![0], &[("kiosk", "2.0.0", "g")], &[], &[], &[]),
        // A member of another group only: that group's rollout goes on.
        client(
            "elsewhere",
            vec![1],
            &[("kiosk", "2.0.0", "other")],
            &[("kiosk", "1.0.0")],
            &[],
            &[],
        ),
    ];
    let next = plan_rollout(&groups, &clients);
    assert_eq!(next[0]["kiosk"], "2.0.0");
    assert_eq!(next[1]["kiosk"], "1.0.0");
    assert!(!next[2].contains_key("kiosk"));
    assert_eq!(next[3]["kiosk"], "2.0.0");

    // A fixed release resumes: the failed member first (it takes no new room), then the others.
    let fixed: Vec<ClientRollout> = clients
        .iter()
        .map(|c| {
            let mut c = c.clone();
            let group = c.desire.packages["kiosk"].group.clone().unwrap();
            c.desire = Arc::new(desire(&[("kiosk", "2.0.1", &group)]));
            c
        })
        .collect();
    let groups = [
        budget("g", 2, false, &["kiosk"]),
        budget("other", 10, false, &["kiosk"]),
    ];
    let next = plan_rollout(&groups, &fixed);
    assert_eq!(next[0]["kiosk"], "2.0.1");
    assert_eq!(next[1]["kiosk"], "2.0.1");
    assert!(!next[2].contains_key("kiosk"), "g's budget of two is used");
}

#[test]
fn removals_are_not_limited() {
    let groups = [budget("g", 1, false, &["kiosk"])];
    let clients: Vec<_> = (0..3)
        .map(|i| {
            client(
                &format!("c{i}"),
                vec![0],
                &[],
                &[("old", "0.1.0")],
                &[],
                &[],
            )
        })
        .collect();
    for assignment in plan_rollout(&groups, &clients) {
        assert!(assignment.is_empty());
    }
}

#[test]
fn paused_groups_assign_nothing_new() {
    let groups = [budget("g", 10, true, &["kiosk"])];
    let clients = vec![
        client(
            "a",
            vec![0],
            &[("kiosk", "2.0.0", "g")],
            &[("kiosk", "1.0.0")],
            &[],
            &[],
        ),
        client("b", vec![0], &[("kiosk", "2.0.0", "g")], &[], &[], &[]),
    ];
    let next = plan_rollout(&groups, &clients);
    assert_eq!(*next[0], map(&[("kiosk", "1.0.0")]));
    assert_eq!(*next[1], map(&[]));
}

#[test]
fn an_update_needs_room_in_every_group_that_asks_for_the_package() {
    let groups = [
        budget("a", 1, false, &["kiosk"]),
        budget("b", 1, false, &["kiosk"]),
        budget("c", 1, false, &["viewer"]),
    ];
    let clients = vec![
        // Busy with kiosk in group b; busy with viewer in group c.
        client("busy", vec![1, 2], &[], &[], &["kiosk", "viewer"], &[]),
        // Member of a and b: b has no room for kiosk, so its update (owned by a) waits.
        client(
            "both",
            vec![0, 1],
            &[("kiosk", "2.0.0", "a")],
            &[("kiosk", "1.0.0")],
            &[],
            &[],
        ),
        // Member of a and c: c does not ask for kiosk, so its full budget does not matter.
        client(
            "a-and-c",
            vec![0, 2],
            &[("kiosk", "2.0.0", "a")],
            &[("kiosk", "1.0.0")],
            &[],
            &[],
        ),
    ];
    let next = plan_rollout(&groups, &clients);
    assert_eq!(next[1]["kiosk"], "1.0.0");
    assert_eq!(next[2]["kiosk"], "2.0.0");
}

fn report(name: &str, version: &str, state: PackageState) -> PackageReport {
    PackageReport {
        staged: None,
        name: name.into(),
        version: version.into(),
        state,
        active_version: None,
        message: Some("health check exited 1".into()),
        since: Timestamp::EPOCH,
    }
}

fn status(
    desired_revision: u64,
    observed: u64,
    assigned: &[(&str, &str)],
    reports: Vec<PackageReport>,
) -> ClientStatus {
    ClientStatus {
        desired_revision,
        observed_revision: observed,
        desired: assigned
            .iter()
            .map(|(n, v)| AssignedPackage {
                name: n.to_string(),
                version: v.to_string(),
                attempt: 0,
            })
            .collect(),
        packages: reports,
        ..Default::default()
    }
}

#[test]
fn convergence_of_a_client_counts_only_fresh_reports() {
    use PackageState::*;
    let installed = || vec![report("kiosk", "2.0.0", Installed)];
    let cases = [
        (
            "fresh and installed",
            status(3, 3, &[("kiosk", "2.0.0")], installed()),
            Convergence::Converged,
        ),
        (
            "stale report",
            status(4, 3, &[("kiosk", "2.0.0")], installed()),
            Convergence::Progressing,
        ),
        (
            "old version still",
            status(
                3,
                3,
                &[("kiosk", "2.0.0")],
                vec![report("kiosk", "1.0.0", Installed)],
            ),
            Convergence::Progressing,
        ),
        (
            "installing",
            status(
                3,
                3,
                &[("kiosk", "2.0.0")],
                vec![report("kiosk", "2.0.0", Installing)],
            ),
            Convergence::Progressing,
        ),
        (
            "failed",
            status(
                3,
                3,
                &[("kiosk", "2.0.0")],
                vec![report("kiosk", "2.0.0", Failed)],
            ),
            Convergence::Failed {
                package: "kiosk".into(),
                message: "health check exited 1".into(),
            },
        ),
        (
            "failure reported before a retry",
            status(
                4,
                3,
                &[("kiosk", "2.0.0")],
                vec![report("kiosk", "2.0.0", Failed)],
            ),
            Convergence::Progressing,
        ),
        (
            "missing report",
            status(3, 3, &[("kiosk", "2.0.0")], vec![]),
            Convergence::Progressing,
        ),
        (
            "leftover being removed",
            status(3, 3, &[], vec![report("old", "1.0.0", Removing)]),
            Convergence::Progressing,
        ),
        (
            "nothing assigned",
            status(0, 0, &[], vec![]),
            Convergence::Converged,
        ),
    ];
    for (name, status, expected) in cases {
        assert_eq!(convergence(&status), expected, "{name}");
    }
}

#[test]
fn package_health_trusts_an_installed_report_and_only_fresh_failures() {
    use PackageState::*;
    let kiosk = AssignedPackage {
        name: "kiosk".into(),
        version: "2.0.0".into(),
        attempt: 0,
    };
    let health = |desired, observed, reports: Vec<PackageReport>| {
        package_health(observed, desired, &kiosk, &reports)
    };
    let installed = || vec![report("kiosk", "2.0.0", Installed)];
    let failed = || vec![report("kiosk", "2.0.0", Failed)];
    assert_eq!(health(3, 3, installed()), PackageHealth::Converged);
    // The client was assigned something else since (another package): kiosk still runs.
    assert_eq!(health(4, 3, installed()), PackageHealth::Converged);
    assert_eq!(health(3, 3, failed()), PackageHealth::Failed);
    // A failure reported before a retry proves nothing about the retry.
    assert_eq!(health(4, 3, failed()), PackageHealth::Progressing);
    assert_eq!(
        health(3, 3, vec![report("kiosk", "1.0.0", Installed)]),
        PackageHealth::Progressing
    );
    assert_eq!(health(3, 3, vec![]), PackageHealth::Progressing);
}

/// A generated client: the groups it belongs to, and per package (kiosk, viewer, vpn) what it
/// has and how that is.
type ClientSpecs = Vec<(BTreeSet<usize>, Vec<(usize, usize)>)>;

/// A random fleet: groups (budget, paused, packages) and clients (groups, per package: whether
/// it has an old version, the new one, nothing; whether that package is unavailable, failed).
fn fleet(
    budgets: &[(usize, bool, BTreeSet<usize>)],
    clients: &ClientSpecs,
) -> (Vec<GroupBudget>, Vec<ClientRollout>) {
    const PACKAGES: [&str; 3] = ["kiosk", "viewer", "vpn"];
    let groups: Vec<GroupBudget> = budgets
        .iter()
        .enumerate()
        .map(|(i, (max, paused, packages))| {
            let packages: Vec<&str> = packages.iter().map(|&p| PACKAGES[p % 3]).collect();
            budget(&format!("g{i}"), *max, *paused, &packages)
        })
        .collect();
    let clients = clients
        .iter()
        .enumerate()
        .map(|(i, (member_of, states))| {
            let member_of: Vec<usize> = member_of
                .iter()
                .map(|g| g % groups.len())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut wants = vec![];
            let mut has = vec![];
            let mut unavailable = vec![];
            let mut failed = vec![];
            for (p, package) in PACKAGES.iter().enumerate() {
                // The first group of the client (in order) that asks for it decides.
                let Some(&owner) = member_of
                    .iter()
                    .find(|&&g| groups[g].packages.iter().any(|q| q == package))
                else {
                    continue;
                };
                let (has_what, health) = states.get(p).copied().unwrap_or((0, 0));
                wants.push((*package, "2.0.0", format!("g{owner}")));
                match has_what % 3 {
                    0 => {}
                    1 => has.push((*package, "1.0.0")),
                    _ => has.push((*package, "2.0.0")),
                }
                if has_what % 3 != 0 {
                    match health % 3 {
                        0 => {}
                        1 => unavailable.push(*package),
                        _ => {
                            unavailable.push(*package);
                            failed.push(*package);
                        }
                    }
                }
            }
            let wants: Vec<(&str, &str, &str)> =
                wants.iter().map(|(p, v, g)| (*p, *v, g.as_str())).collect();
            client(
                &format!("c{i:02}"),
                member_of,
                &wants,
                &has,
                &unavailable,
                &failed,
            )
        })
        .collect();
    (groups, clients)
}

fn group_strategy() -> impl Strategy<Value = Vec<(usize, bool, BTreeSet<usize>)>> {
    prop::collection::vec(
        (
            1usize..4,
            prop::bool::weighted(0.2),
            prop::collection::btree_set(0usize..3, 1..3),
        ),
        1..4,
    )
}

fn client_strategy() -> impl Strategy<Value = ClientSpecs> {
    prop::collection::vec(
        (
            prop::collection::btree_set(0usize..4, 1..3),
            prop::collection::vec((0usize..3, 0usize..3), 3),
        ),
        0..40,
    )
}

proptest! {
    /// For random fleets, group sets and failure patterns: a failure of package X never changes
    /// an assignment of any other package; no group that asks for X ever has more members
    /// unavailable for X than its budget (beyond those that already were), first installs
    /// included; a release that failed on a member of a group reaches no further member of it;
    /// and paused groups change nothing.
    #[test]
    fn failures_stay_with_their_package_and_budgets_hold(
        budgets in group_strategy(),
        clients in client_strategy(),
        failing in prop::collection::vec(any::<bool>(), 40),
    ) {
        let (groups, inputs) = fleet(&budgets, &clients);
        // The same fleet where some clients' kiosk failed (at what they are assigned).
        let with_failures: Vec<ClientRollout> = inputs
            .iter()
            .zip(&failing)
            .map(|(c, &fails)| {
                let mut c = c.clone();
                if fails && c.assigned.contains_key("kiosk") {
                    let add = |list: &Arc<[String]>| -> Arc<[String]> {
                        let mut set: BTreeSet<String> = list.iter().cloned().collect();
                        set.insert("kiosk".into());
                        set.into_iter().collect()
                    };
                    c.unavailable = add(&c.unavailable);
                    c.failed = add(&c.failed);
                }
                c
            })
            .collect();
        let without = plan_rollout(&groups, &inputs);
        let with = plan_rollout(&groups, &with_failures);
        for (a, b) in without.iter().zip(&with) {
            for package in ["viewer", "vpn"] {
                prop_assert_eq!(a.get(package), b.get(package));
            }
        }
        for (inputs, next) in [(&inputs, &without), (&with_failures, &with)] {
            for (g, group) in groups.iter().enumerate() {
                for package in &group.packages {
                    let members = || inputs.iter().zip(next.iter()).filter(|(c, _)| c.groups.contains(&g));
                    let before = members().filter(|(c, _)| c.unavailable.contains(package)).count();
                    let newly = members()
                        .filter(|(c, n)| !c.unavailable.contains(package) && c.assigned.get(package) != n.get(package) && n.contains_key(package))
                        .count();
                    prop_assert!(newly == 0 || before + newly <= group.max_unavailable,
                        "group {} package {} budget {} before {} newly {}", g, package, group.max_unavailable, before, newly);
                    let failed: BTreeSet<&String> = members()
                        .filter(|(c, _)| c.failed.contains(package))
                        .map(|(c, _)| &c.assigned[package])
                        .collect();
                    for (c, n) in members() {
                        if let Some(version) = n.get(package) {
                            prop_assert!(
                                c.assigned.get(package) == Some(version) || !failed.contains(version),
                                "{} got {} {} which failed in group {}", c.name, package, version, g
                            );
                        }
                    }
                }
            }
            for (input, assignment) in inputs.iter().zip(next.iter()) {
                for (package, want) in &input.desire.packages {
                    let owner = want.group.as_deref().unwrap();
                    if groups.iter().any(|g| g.name == owner && g.paused) {
                        prop_assert_eq!(assignment.get(package), input.assigned.get(package));
                    }
                }
            }
        }
    }

    /// Planning only the clients that want something else, with the whole fleet's standings,
    /// decides exactly what planning every client decides (the controller plans only those, so
    /// that a pass over a large converged fleet costs no per-client plan).
    #[test]
    fn planning_a_part_with_fleet_standings_matches_planning_all(
        budgets in group_strategy(),
        clients in client_strategy(),
    ) {
        let (groups, inputs) = fleet(&budgets, &clients);
        let all = plan_rollout(&groups, &inputs);
        let wanting: Vec<usize> = (0..inputs.len())
            .filter(|&i| {
                let want: BTreeMap<String, String> = inputs[i].desire.packages.iter().map(|(p, w)| (p.clone(), w.version.clone())).collect();
                want != *inputs[i].assigned
            })
            .collect();
        let part: Vec<ClientRollout> = wanting.iter().map(|&i| inputs[i].clone()).collect();
        let planned = plan_rollout_from(&groups, standings(&groups, &inputs), &part);
        for (i, input) in inputs.iter().enumerate() {
            match wanting.iter().position(|&w| w == i) {
                Some(at) => prop_assert_eq!(&planned[at], &all[i]),
                None => prop_assert_eq!(&input.assigned, &all[i]),
            }
        }
    }

    /// The planner decides what the plain rule decides, for random fleets.
    #[test]
    fn the_planner_follows_the_plain_rule(
        budgets in group_strategy(),
        clients in client_strategy(),
    ) {
        let (groups, inputs) = fleet(&budgets, &clients);
        let expected = reference_plan(&groups, &inputs);
        let planned = plan_rollout(&groups, &inputs);
        for i in 0..inputs.len() {
            prop_assert_eq!(&*planned[i], &expected[i], "client {}", i);
        }
    }

    /// Clients that share their group list, desire and assignment (the same `Arc`s, as the
    /// controller passes them) are planned exactly as when each has its own copy, and both as the
    /// plain rule decides: sharing results never leaks one client's budget decision to another.
    #[test]
    fn shared_inputs_plan_like_the_plain_rule(
        budgets in prop::collection::vec((1usize..4, any::<bool>()), 1..4),
        kinds in prop::collection::vec((prop::collection::btree_set(0usize..4, 1..3), 0usize..4, 0usize..4, 0usize..3), 1..5),
        clients in prop::collection::vec((0usize..5, any::<bool>()), 0..40),
    ) {
        let groups: Vec<GroupBudget> = budgets
            .iter()
            .enumerate()
            .map(|(i, (max, paused))| budget(&format!("g{i}"), *max, *paused, &["kiosk", "viewer"]))
            .collect();
        // A few kinds of client (groups, desire, assignment), each shared by many clients.
        let kinds: Vec<SharedInputs> = kinds
            .iter()
            .map(|(member_of, owner, want, has)| {
                let member_of: Vec<usize> = member_of.iter().map(|g| g % groups.len()).collect::<BTreeSet<_>>().into_iter().collect();
                let owner = format!("g{}", member_of[owner % member_of.len()]);
                let wants: Vec<(&str, &str, &str)> = match want {
                    0 => vec![("kiosk", "2.0.0", &owner)],
                    1 => vec![("kiosk", "2.0.0", &owner), ("viewer", "1.1.0", &owner)],
                    2 => vec![("viewer", "1.1.0", &owner)],
                    _ => vec![],
                };
                let has: Vec<(&str, &str)> = match has {
                    0 => vec![],
                    1 => vec![("kiosk", "1.0.0"), ("viewer", "1.0.0")],
                    _ => vec![("kiosk", "1.0.0")],
                };
                (member_of.into(), Arc::new(desire(&wants)), Arc::new(map(&has)))
            })
            .collect();
        let shared: Vec<ClientRollout> = clients
            .iter()
            .enumerate()
            .map(|(i, (kind, unavailable))| {
                let (groups, desire, assigned) = &kinds[kind % kinds.len()];
                let busy: Vec<&str> = if *unavailable { assigned.keys().map(String::as_str).collect() } else { vec![] };
                ClientRollout {
                    name: format!("c{i:02}").into(),
                    groups: groups.clone(),
                    desire: desire.clone(),
                    assigned: assigned.clone(),
                    unavailable: names(&busy),
                    failed: names(&[]),
                }
            })
            .collect();
        let copies: Vec<ClientRollout> = shared
            .iter()
            .map(|c| ClientRollout {
                name: c.name.clone(),
                groups: c.groups.to_vec().into(),
                desire: Arc::new((*c.desire).clone()),
                assigned: Arc::new((*c.assigned).clone()),
                unavailable: c.unavailable.to_vec().into(),
                failed: c.failed.to_vec().into(),
            })
            .collect();
        let expected = reference_plan(&groups, &copies);
        let from_shared = plan_rollout(&groups, &shared);
        let from_copies = plan_rollout(&groups, &copies);
        for i in 0..shared.len() {
            prop_assert_eq!(&*from_shared[i], &expected[i], "client {} (shared)", i);
            prop_assert_eq!(&*from_copies[i], &expected[i], "client {} (copies)", i);
        }
    }
}
