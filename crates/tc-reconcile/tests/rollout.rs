//! The rollout budget and convergence.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::map;
use proptest::prelude::*;
use tc_api::{AssignedPackage, ClientStatus, PackageReport, PackageState, Timestamp};
use tc_reconcile::{
    Assignment, ClientDesire, ClientRollout, Convergence, GroupBudget, Want, convergence,
    plan_rollout, plan_rollout_from,
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

fn client(
    name: &str,
    groups: Vec<usize>,
    wants: &[(&str, &str, &str)],
    has: &[(&str, &str)],
    unavailable: bool,
) -> ClientRollout {
    ClientRollout {
        name: name.into(),
        groups: groups.into(),
        desire: Arc::new(desire(wants)),
        assigned: Arc::new(map(has)),
        unavailable,
    }
}

/// A client's groups, desire and assignment, as clients share them.
type SharedInputs = (Arc<[usize]>, Arc<ClientDesire>, Arc<Assignment>);

/// The rollout rule client by client, written plainly: the planner must decide what this decides.
fn reference_plan(
    groups: &[GroupBudget],
    clients: &[ClientRollout],
) -> Vec<BTreeMap<String, String>> {
    let mut unavailable = vec![0usize; groups.len()];
    for client in clients.iter().filter(|c| c.unavailable) {
        for &g in client.groups.iter() {
            unavailable[g] += 1;
        }
    }
    let paused = |owner: &Option<String>| {
        groups
            .iter()
            .any(|g| Some(&g.name) == owner.as_ref() && g.paused)
    };
    let mut next = vec![];
    for client in clients {
        let mut assignment = (*client.assigned).clone();
        let mut counted = client.unavailable;
        let packages: BTreeSet<&String> = client
            .desire
            .packages
            .keys()
            .chain(client.assigned.keys())
            .collect();
        for package in packages {
            let want = client.desire.packages.get(package);
            let have = client.assigned.get(package);
            if want.map(|w| &w.version) == have {
                continue;
            }
            let Some(want) = want else {
                assignment.remove(package);
                continue;
            };
            if paused(&want.group) {
                continue;
            }
            if have.is_some() && !counted {
                if !client
                    .groups
                    .iter()
                    .all(|&g| unavailable[g] < groups[g].max_unavailable)
                {
                    continue;
                }
                for &g in client.groups.iter() {
                    unavailable[g] += 1;
                }
                counted = true;
            }
            assignment.insert(package.clone(), want.version.clone());
        }
        next.push(assignment);
    }
    next
}

fn budget(name: &str, max: usize, paused: bool) -> GroupBudget {
    GroupBudget {
        name: name.into(),
        max_unavailable: max,
        paused,
    }
}

#[test]
fn updates_respect_max_unavailable() {
    let groups = [budget("g", 2, false)];
    let clients: Vec<_> = (0..5)
        .map(|i| {
            client(
                &format!("c{i}"),
                vec![0],
                &[("kiosk", "2.0.0", "g")],
                &[("kiosk", "1.0.0")],
                false,
            )
        })
        .collect();
    let next = plan_rollout(&groups, &clients);
    let updated = next.iter().filter(|a| a["kiosk"] == "2.0.0").count();
    assert_eq!(updated, 2);
    // The first two (input order) were picked.
    assert_eq!(next[0]["kiosk"], "2.0.0");
    assert_eq!(next[4]["kiosk"], "1.0.0");
}

#[test]
fn members_already_unavailable_use_up_the_budget() {
    let groups = [budget("g", 2, false)];
    let mut clients: Vec<_> = (0..4)
        .map(|i| {
            client(
                &format!("c{i}"),
                vec![0],
                &[("kiosk", "2.0.0", "g")],
                &[("kiosk", "1.0.0")],
                false,
            )
        })
        .collect();
    // c3 is mid-update already (assigned 2.0.0, not reported yet).
    clients[3] = client(
        "c3",
        vec![0],
        &[("kiosk", "2.0.0", "g")],
        &[("kiosk", "2.0.0")],
        true,
    );
    // c2 failed on a previous attempt and still counts.
    clients[2].unavailable = true;
    let next = plan_rollout(&groups, &clients);
    assert_eq!(next[0]["kiosk"], "1.0.0");
    assert_eq!(next[1]["kiosk"], "1.0.0");
    // An unavailable client may take further changes without more room.
    assert_eq!(next[2]["kiosk"], "2.0.0");
    assert_eq!(next[3]["kiosk"], "2.0.0");
}

#[test]
fn new_packages_and_removals_are_not_limited() {
    let groups = [budget("g", 1, false)];
    let clients: Vec<_> = (0..3)
        .map(|i| {
            client(
                &format!("c{i}"),
                vec![0],
                &[("kiosk", "1.0.0", "g")],
                &[("old", "0.1.0")],
                false,
            )
        })
        .collect();
    let next = plan_rollout(&groups, &clients);
    for assignment in next {
        assert_eq!(*assignment, map(&[("kiosk", "1.0.0")]));
    }
}

#[test]
fn paused_groups_assign_nothing_new() {
    let groups = [budget("g", 10, true)];
    let clients = vec![
        client(
            "a",
            vec![0],
            &[("kiosk", "2.0.0", "g")],
            &[("kiosk", "1.0.0")],
            false,
        ),
        client("b", vec![0], &[("kiosk", "2.0.0", "g")], &[], false),
    ];
    let next = plan_rollout(&groups, &clients);
    assert_eq!(*next[0], map(&[("kiosk", "1.0.0")]));
    assert_eq!(*next[1], map(&[]));
}

#[test]
fn an_update_needs_room_in_every_group_of_the_client() {
    let groups = [budget("a", 1, false), budget("b", 1, false)];
    let clients = vec![
        // Busy in group b.
        client("busy", vec![1], &[], &[], true),
        // Member of a and b: b has no room, so its update (owned by a) waits.
        client(
            "both",
            vec![0, 1],
            &[("kiosk", "2.0.0", "a")],
            &[("kiosk", "1.0.0")],
            false,
        ),
        client(
            "only-a",
            vec![0],
            &[("kiosk", "2.0.0", "a")],
            &[("kiosk", "1.0.0")],
            false,
        ),
    ];
    let next = plan_rollout(&groups, &clients);
    assert_eq!(next[1]["kiosk"], "1.0.0");
    assert_eq!(next[2]["kiosk"], "2.0.0");
}

fn report(name: &str, version: &str, state: PackageState) -> PackageReport {
    PackageReport {
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
fn convergence_counts_only_fresh_reports() {
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

proptest! {
    /// However many clients and groups, a rollout never makes more members of a group unavailable
    /// than its budget allows (beyond those that already were), and it never touches paused groups.
    #[test]
    fn budget_is_never_exceeded(
        budgets in prop::collection::vec((1usize..4, any::<bool>()), 1..4),
        clients in prop::collection::vec((prop::collection::btree_set(0usize..4, 1..3), any::<bool>(), any::<bool>(), 0usize..4), 0..30),
    ) {
        let groups: Vec<GroupBudget> =
            budgets.iter().enumerate().map(|(i, (max, paused))| budget(&format!("g{i}"), *max, *paused)).collect();
        let inputs: Vec<ClientRollout> = clients
            .iter()
            .enumerate()
            .map(|(i, (member_of, has_old, unavailable, owner))| {
                let member_of: Vec<usize> = member_of.iter().map(|g| g % groups.len()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
                let owner = member_of[owner % member_of.len()];
                let owner_name = format!("g{owner}");
                let has = if *has_old { vec![("kiosk", "1.0.0")] } else { vec![] };
                client(&format!("c{i:02}"), member_of, &[("kiosk", "2.0.0", &owner_name)], &has, *unavailable)
            })
            .collect();
        let next = plan_rollout(&groups, &inputs);
        for (g, group) in groups.iter().enumerate() {
            let before = inputs.iter().filter(|c| c.unavailable && c.groups.contains(&g)).count();
            let newly = inputs
                .iter()
                .zip(&next)
                .filter(|(c, n)| !c.unavailable && c.groups.contains(&g) && c.assigned.get("kiosk").is_some_and(|v| Some(v) != n.get("kiosk")))
                .count();
            prop_assert!(newly == 0 || before + newly <= group.max_unavailable,
                "group {} budget {} before {} newly {}", g, group.max_unavailable, before, newly);
        }
        for (input, assignment) in inputs.iter().zip(&next) {
            let owner = input.desire.packages["kiosk"].group.as_deref().unwrap();
            let paused = groups.iter().any(|g| g.name == owner && g.paused);
            if paused {
                prop_assert_eq!(assignment, &input.assigned);
            }
        }
    }

    /// Planning only the clients that want something else, with the whole fleet's unavailable
    /// counts, decides exactly what planning every client decides (the controller plans only
    /// those, so that a pass over a large converged fleet costs no per-client plan).
    #[test]
    fn planning_a_part_with_fleet_counts_matches_planning_all(
        budgets in prop::collection::vec((1usize..4, any::<bool>()), 1..4),
        clients in prop::collection::vec((prop::collection::btree_set(0usize..4, 1..3), 0usize..3, any::<bool>(), 0usize..4), 0..40),
    ) {
        let groups: Vec<GroupBudget> =
            budgets.iter().enumerate().map(|(i, (max, paused))| budget(&format!("g{i}"), *max, *paused)).collect();
        let inputs: Vec<ClientRollout> = clients
            .iter()
            .enumerate()
            .map(|(i, (member_of, has, unavailable, owner))| {
                let member_of: Vec<usize> = member_of.iter().map(|g| g % groups.len()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
                let owner = member_of[owner % member_of.len()];
                let owner_name = format!("g{owner}");
                let has = match has { 0 => vec![], 1 => vec![("kiosk", "1.0.0")], _ => vec![("kiosk", "2.0.0")] };
                client(&format!("c{i:02}"), member_of, &[("kiosk", "2.0.0", &owner_name)], &has, *unavailable)
            })
            .collect();
        let all = plan_rollout(&groups, &inputs);
        let mut counts = vec![0usize; groups.len()];
        for input in inputs.iter().filter(|c| c.unavailable) {
            for &g in input.groups.iter() {
                counts[g] += 1;
            }
        }
        let wanting: Vec<usize> = (0..inputs.len())
            .filter(|&i| {
                let want: BTreeMap<String, String> = inputs[i].desire.packages.iter().map(|(p, w)| (p.clone(), w.version.clone())).collect();
                want != *inputs[i].assigned
            })
            .collect();
        let part: Vec<ClientRollout> = wanting.iter().map(|&i| inputs[i].clone()).collect();
        let planned = plan_rollout_from(&groups, counts, &part);
        for (i, input) in inputs.iter().enumerate() {
            match wanting.iter().position(|&w| w == i) {
                Some(at) => prop_assert_eq!(&planned[at], &all[i]),
                None => prop_assert_eq!(&input.assigned, &all[i]),
            }
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
        let groups: Vec<GroupBudget> =
            budgets.iter().enumerate().map(|(i, (max, paused))| budget(&format!("g{i}"), *max, *paused)).collect();
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
                ClientRollout {
                    name: format!("c{i:02}").into(),
                    groups: groups.clone(),
                    desire: desire.clone(),
                    assigned: assigned.clone(),
                    unavailable: *unavailable,
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
                unavailable: c.unavailable,
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
