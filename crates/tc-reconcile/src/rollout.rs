//! The rollout budget: how much of what each client should run it is assigned now.
//!
//! A member counts as unavailable from the moment it is assigned an update until it freshly
//! reports the new version installed and healthy (see [`crate::convergence`]); a failed member stays
//! unavailable, so failures cannot spread past `maxUnavailable` members of a group. An update is
//! assigned to a client only while every group the client belongs to has room under its budget;
//! a client that is already unavailable takes no further room. Packages a client does not have
//! yet are assigned at once (installing them takes nothing down that was running), and so are
//! removals. A paused group assigns nothing new: its packages keep their current versions.

use std::collections::{BTreeMap, BTreeSet};

use crate::desired::ClientDesire;

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

/// One client's input to the rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRollout {
    /// Client name (clients are processed in the order given; pass them sorted for stable results).
    pub name: String,
    /// Indexes into the group list of the groups that select this client.
    pub groups: Vec<usize>,
    /// What it should run.
    pub desire: ClientDesire,
    /// What it is assigned now: package -> version.
    pub assigned: BTreeMap<String, String>,
    /// Whether it is unavailable now (not converged on its current assignment).
    pub unavailable: bool,
}

/// Computes the next assignment of every client (in input order), within the groups' budgets.
pub fn plan_rollout(
    groups: &[GroupBudget],
    clients: &[ClientRollout],
) -> Vec<BTreeMap<String, String>> {
    let mut unavailable = vec![0usize; groups.len()];
    for client in clients.iter().filter(|c| c.unavailable) {
        for &group in &client.groups {
            unavailable[group] += 1;
        }
    }
    plan_rollout_from(groups, unavailable, clients)
}

/// [`plan_rollout`] for a part of the fleet: `unavailable` holds, per group, how many of its
/// members are unavailable across the whole fleet (including members not in `clients`), and
/// `clients` are the members that may need a new assignment, in name order. Clients left out
/// keep their assignment; the budget they use is in `unavailable`.
pub fn plan_rollout_from(
    groups: &[GroupBudget],
    mut unavailable: Vec<usize>,
    clients: &[ClientRollout],
) -> Vec<BTreeMap<String, String>> {
    let group_index: BTreeMap<&str, usize> = groups
        .iter()
        .enumerate()
        .map(|(index, group)| (group.name.as_str(), index))
        .collect();
    let mut next = Vec::with_capacity(clients.len());
    for client in clients {
        let mut assignment = client.assigned.clone();
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
                // No group asks for it any more: remove.
                assignment.remove(package);
                continue;
            };
            let owner = want
                .group
                .as_deref()
                .and_then(|name| group_index.get(name).copied());
            if owner.is_some_and(|index| groups[index].paused) {
                continue;
            }
            if have.is_none() {
                assignment.insert(package.clone(), want.version.clone());
                continue;
            }
            // An update: the client becomes unavailable in every group it belongs to.
            if !counted {
                let room = client
                    .groups
                    .iter()
                    .all(|&g| unavailable[g] < groups[g].max_unavailable);
                if !room {
                    continue;
                }
                for &group in &client.groups {
                    unavailable[group] += 1;
                }
                counted = true;
            }
            assignment.insert(package.clone(), want.version.clone());
        }
        next.push(assignment);
    }
    next
}
