//! The rollout budget: how much of what each client should run it is assigned now.
//!
//! A member counts as unavailable from the moment it is assigned an update until it freshly
//! reports the new version installed and healthy (see [`crate::convergence`]); a failed member stays
//! unavailable, so failures cannot spread past `maxUnavailable` members of a group. An update is
//! assigned to a client only while every group the client belongs to has room under its budget;
//! a client that is already unavailable takes no further room. Packages a client does not have
//! yet are assigned at once (installing them takes nothing down that was running), and so are
//! removals. A paused group assigns nothing new: its packages keep their current versions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::desired::ClientDesire;

/// What a client is assigned: package -> version.
pub type Assignment = BTreeMap<String, String>;

/// The budget of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupBudget {
    /// Group name.
    pub name: String,
    /// How many members may be unavailable at once (`maxUnavailable` resolved, at least 1).
    pub max_unavailable: usize,
    /// Paused groups assign nothing new.
    pub paused: bool,
}

/// One client's input to the rollout. The group list, the desire and the assignment are shared:
/// a fleet has few distinct ones, and clients that share them share their planned assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRollout {
    /// Client name (clients are processed in the order given; pass them sorted for stable results).
    pub name: Arc<str>,
    /// Indexes into the group list of the groups that select this client.
    pub groups: Arc<[usize]>,
    /// What it should run.
    pub desire: Arc<ClientDesire>,
    /// What it is assigned now.
    pub assigned: Arc<Assignment>,
    /// Whether it is unavailable now (not converged on its current assignment).
    pub unavailable: bool,
}

/// Computes the next assignment of every client (in input order), within the groups' budgets.
pub fn plan_rollout(groups: &[GroupBudget], clients: &[ClientRollout]) -> Vec<Arc<Assignment>> {
    let mut unavailable = vec![0usize; groups.len()];
    for client in clients.iter().filter(|c| c.unavailable) {
        for &group in client.groups.iter() {
            unavailable[group] += 1;
        }
    }
    plan_rollout_from(groups, unavailable, clients)
}

/// [`plan_rollout`] for a part of the fleet: `unavailable` holds, per group, how many of its
/// members are unavailable across the whole fleet (including members not in `clients`), and
/// `clients` are the members that may need a new assignment, in name order. Clients left out
/// keep their assignment; the budget they use is in `unavailable`.
///
/// A client's next assignment depends only on its desire, its assignment and whether it may take
/// an update (it is unavailable already, or every group of its has room); clients that share the
/// first two (the same `Arc`s) and the third share one result.
pub fn plan_rollout_from(
    groups: &[GroupBudget],
    mut unavailable: Vec<usize>,
    clients: &[ClientRollout],
) -> Vec<Arc<Assignment>> {
    let group_index: BTreeMap<&str, usize> = groups
        .iter()
        .enumerate()
        .map(|(index, group)| (group.name.as_str(), index))
        .collect();
    // Keyed by the addresses of the shared desire and assignment, which `clients` keeps alive.
    let mut updates: HashMap<(usize, usize), bool> = HashMap::new();
    let mut planned: HashMap<(usize, usize, bool), Arc<Assignment>> = HashMap::new();
    let mut next = Vec::with_capacity(clients.len());
    for client in clients {
        let shared = (
            Arc::as_ptr(&client.desire) as usize,
            Arc::as_ptr(&client.assigned) as usize,
        );
        let wants_update = *updates
            .entry(shared)
            .or_insert_with(|| wants_update(groups, &group_index, client));
        // An update makes the client unavailable in every group it belongs to: it needs room in
        // each and takes it, unless it is unavailable already.
        let update = wants_update
            && (client.unavailable || {
                let room = client
                    .groups
                    .iter()
                    .all(|&g| unavailable[g] < groups[g].max_unavailable);
                if room {
                    for &group in client.groups.iter() {
                        unavailable[group] += 1;
                    }
                }
                room
            });
        let assignment = planned
            .entry((shared.0, shared.1, update))
            .or_insert_with(|| Arc::new(plan_client(groups, &group_index, client, update)));
        next.push(assignment.clone());
    }
    next
}

/// The packages that `client` should run and is assigned, in name order.
fn packages_of(client: &ClientRollout) -> BTreeSet<&String> {
    client
        .desire
        .packages
        .keys()
        .chain(client.assigned.keys())
        .collect()
}

/// Whether the owner of the requirement for `package` is paused.
fn paused(
    groups: &[GroupBudget],
    group_index: &BTreeMap<&str, usize>,
    owner: Option<&str>,
) -> bool {
    owner
        .and_then(|name| group_index.get(name).copied())
        .is_some_and(|index| groups[index].paused)
}

/// Whether `client` wants an update: another version of a package it is assigned, from a group
/// that is not paused.
fn wants_update(
    groups: &[GroupBudget],
    group_index: &BTreeMap<&str, usize>,
    client: &ClientRollout,
) -> bool {
    client.desire.packages.iter().any(|(package, want)| {
        client
            .assigned
            .get(package)
            .is_some_and(|have| *have != want.version)
            && !paused(groups, group_index, want.group.as_deref())
    })
}

/// The next assignment of `client`: removals and new packages at once, updates when `update`.
fn plan_client(
    groups: &[GroupBudget],
    group_index: &BTreeMap<&str, usize>,
    client: &ClientRollout,
    update: bool,
) -> Assignment {
    let mut assignment = (*client.assigned).clone();
    for package in packages_of(client) {
        let want = client.desire.packages.get(package);
        let have = client.assigned.get(package);
        if want.map(|w| &w.version) == have {
            continue;
        }
        let Some(want) = want else {
            // No group asks for it any more: remove.
            assignment.remove(package);
            continue;
        };
        if paused(groups, group_index, want.group.as_deref()) {
            continue;
        }
        if have.is_none() || update {
            assignment.insert(package.clone(), want.version.clone());
        }
    }
    assignment
}
