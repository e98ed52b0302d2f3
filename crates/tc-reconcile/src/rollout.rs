//! The rollout budget: how much of what each client should run it is assigned now.
//!
//! Rollouts are per package. A member of a group counts as unavailable *for a package* of that
//! group from the moment it is assigned a new version of it (an update, or a first install) until
//! it reports that version installed and healthy (see [`crate::convergence`]); a member whose
//! install failed stays unavailable for that package. Every other package of the member is
//! unaffected: a failure of package X is counted only by the groups that ask for X, and only
//! against their rollouts of X.
//!
//! A change of package X is assigned to a client only while every group of the client that asks
//! for X has room under its `maxUnavailable` for X; a client already unavailable for X takes no
//! further room. A release that failed on a member of a group is not handed to any further member
//! of that group (new members included) until the admin fixes the requirement or retries: the
//! members that failed keep it, and everyone else keeps what they run. Removals are assigned at
//! once. A paused group assigns nothing new: the packages it decides keep their current versions.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::desired::ClientDesire;

/// What a client is assigned: package -> version.
pub type Assignment = BTreeMap<String, String>;

/// The budget of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupBudget {
    /// Group name.
    pub name: String,
    /// How many members may be unavailable at once for each of its packages (`maxUnavailable`
    /// resolved, at least 1).
    pub max_unavailable: usize,
    /// Paused groups assign nothing new.
    pub paused: bool,
    /// The packages the group asks for, sorted and without duplicates.
    pub packages: Vec<String>,
    /// Progressive delivery: how many members the current step admits to the rollout's
    /// versions (`targets`); None without steps or past the last step.
    pub step_cap: Option<usize>,
    /// The version the group's rollout brings each of `packages` to (in that order), if any.
    pub targets: Vec<Option<String>>,
    /// How many failures of a release the group tolerates (`None`: none). With a threshold, a
    /// member whose install failed (and rolled back) holds no room under `maxUnavailable`.
    pub failure_threshold: Option<tc_api::IntOrPercent>,
}

impl GroupBudget {
    /// The position of `package` in [`GroupBudget::packages`], if the group asks for it.
    pub fn package_index(&self, package: &str) -> Option<usize> {
        self.packages
            .binary_search_by(|p| p.as_str().cmp(package))
            .ok()
    }

    /// A group without steps, threshold or targets (as before progressive delivery).
    pub fn new(name: &str, max_unavailable: usize, paused: bool, packages: Vec<String>) -> Self {
        GroupBudget {
            name: name.to_string(),
            max_unavailable,
            paused,
            targets: vec![None; packages.len()],
            packages,
            step_cap: None,
            failure_threshold: None,
        }
    }

    /// Whether its members are counted per target version (steps or a percentage threshold).
    fn counts_targets(&self) -> bool {
        self.step_cap.is_some()
            || matches!(
                self.failure_threshold,
                Some(tc_api::IntOrPercent::Percent(_))
            )
    }

    /// Whether `version` is the rollout's version of package `k`.
    fn is_target(&self, k: usize, version: &str) -> bool {
        self.targets.get(k).and_then(|t| t.as_deref()) == Some(version)
    }
}

/// Where one group's rollouts stand across the whole fleet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStanding {
    /// Per package of the group (in the order of [`GroupBudget::packages`]): how many members
    /// are unavailable for it.
    pub unavailable: Vec<usize>,
    /// Releases (package, version) that failed on members, with how many: beyond the group's
    /// threshold, not handed to further members.
    pub failed: BTreeMap<(String, String), usize>,
    /// Per package: how many members are assigned the rollout's version (counted only for
    /// groups with steps or a percentage threshold).
    pub at_target: Vec<usize>,
}

impl GroupStanding {
    /// An empty standing for `group`.
    pub fn new(group: &GroupBudget) -> GroupStanding {
        GroupStanding {
            unavailable: vec![0; group.packages.len()],
            failed: BTreeMap::new(),
            at_target: vec![0; group.packages.len()],
        }
    }

    /// Counts a member of `group`: `unavailable` and `failed` name its assigned packages that are
    /// not converged, and those of them that failed (at the version `assigned` gives).
    pub fn count_member(
        &mut self,
        group: &GroupBudget,
        unavailable: &[String],
        failed: &[String],
        assigned: &Assignment,
    ) {
        let tolerant = group.failure_threshold.is_some();
        for package in unavailable {
            if tolerant && failed.contains(package) {
                continue;
            }
            if let Some(index) = group.package_index(package) {
                self.unavailable[index] += 1;
            }
        }
        for package in failed {
            if group.package_index(package).is_some()
                && let Some(version) = assigned.get(package)
            {
                *self
                    .failed
                    .entry((package.clone(), version.clone()))
                    .or_default() += 1;
            }
        }
        if group.counts_targets() {
            for (k, package) in group.packages.iter().enumerate() {
                if let Some(version) = assigned.get(package)
                    && group.is_target(k, version)
                {
                    self.at_target[k] += 1;
                }
            }
        }
    }

    /// How many members of this group the release `package` `version` failed on.
    pub fn failures(&self, package: &str, version: &str) -> usize {
        // Few failures at a time: a scan avoids building a key.
        self.failed
            .iter()
            .find(|((p, v), _)| p == package && v == version)
            .map_or(0, |(_, &count)| count)
    }

    /// Whether the release `package` `version` failed on more members of `group` than its
    /// threshold allows (any failure, without one): it is then not handed to further members.
    pub fn has_failed(&self, group: &GroupBudget, package: &str, version: &str) -> bool {
        let failures = self.failures(package, version);
        if failures == 0 {
            return false;
        }
        let given = match group.package_index(package) {
            Some(k) if group.is_target(k, version) && group.counts_targets() => self.at_target[k],
            _ => failures,
        };
        crate::progressive::threshold_exceeded(group.failure_threshold, failures, given)
    }
}

/// One client's input to the rollout. The group list, the desire, the assignment and the
/// package lists are shared: a fleet has few distinct ones, and clients that share them and are
/// planned alike share their planned assignment.
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
    /// Its assigned packages that are not converged (being changed, or failed), sorted.
    pub unavailable: Arc<[String]>,
    /// Its assigned packages that failed at their assigned version, sorted.
    pub failed: Arc<[String]>,
}

/// The standings of every group, counted from `clients` (the whole fleet).
pub fn standings(groups: &[GroupBudget], clients: &[ClientRollout]) -> Vec<GroupStanding> {
    let mut standings: Vec<GroupStanding> = groups.iter().map(GroupStanding::new).collect();
    for client in clients {
        for &g in client.groups.iter() {
            standings[g].count_member(
                &groups[g],
                &client.unavailable,
                &client.failed,
                &client.assigned,
            );
        }
    }
    standings
}

/// Computes the next assignment of every client (in input order), within the groups' budgets.
pub fn plan_rollout(groups: &[GroupBudget], clients: &[ClientRollout]) -> Vec<Arc<Assignment>> {
    plan_rollout_from(groups, standings(groups, clients), clients)
}

/// One change a client wants: a package to install or update, and the version.
#[derive(Clone, Debug)]
struct WantedChange {
    package: String,
    version: String,
}

/// What clients with one desire and one assignment want, computed once for all of them.
struct Wanted {
    /// Installs and updates, in package order, from groups that are not paused.
    changes: Vec<WantedChange>,
}

/// [`plan_rollout`] for a part of the fleet: `standings` hold, per group, the unavailable counts
/// and failed releases across the whole fleet (including members not in `clients`), and `clients`
/// are the members that may need a new assignment, in name order. Clients left out keep their
/// assignment; the budget they use is in `standings`.
///
/// A client's next assignment depends only on its desire, its assignment and which of its wanted
/// changes may go ahead now; clients that share the first two (the same `Arc`s) and the third
/// share one result.
pub fn plan_rollout_from(
    groups: &[GroupBudget],
    mut standings: Vec<GroupStanding>,
    clients: &[ClientRollout],
) -> Vec<Arc<Assignment>> {
    let group_index: BTreeMap<&str, usize> = groups
        .iter()
        .enumerate()
        .map(|(index, group)| (group.name.as_str(), index))
        .collect();
    // Keyed by the addresses of the shared desire and assignment, which `clients` keeps alive.
    let mut wanted: HashMap<(usize, usize), Arc<Wanted>> = HashMap::new();
    let mut planned: HashMap<(usize, usize, u64), Arc<Assignment>> = HashMap::new();
    let mut next = Vec::with_capacity(clients.len());
    let mut allowed: Vec<bool> = vec![];
    for client in clients {
        let shared = (
            Arc::as_ptr(&client.desire) as usize,
            Arc::as_ptr(&client.assigned) as usize,
        );
        let wants = wanted
            .entry(shared)
            .or_insert_with(|| Arc::new(wanted_changes(groups, &group_index, client)))
            .clone();
        allowed.clear();
        for change in &wants.changes {
            allowed.push(may_change(groups, &mut standings, client, change));
        }
        let mask = (allowed.len() <= 64).then(|| {
            allowed
                .iter()
                .enumerate()
                .fold(0u64, |mask, (i, &ok)| mask | (u64::from(ok) << i))
        });
        let assignment = match mask {
            Some(mask) => planned
                .entry((shared.0, shared.1, mask))
                .or_insert_with(|| Arc::new(plan_client(client, &wants, &allowed)))
                .clone(),
            None => Arc::new(plan_client(client, &wants, &allowed)),
        };
        next.push(assignment);
    }
    next
}

/// Whether `client` may take `change` now; takes the room it needs in its groups' budgets.
fn may_change(
    groups: &[GroupBudget],
    standings: &mut [GroupStanding],
    client: &ClientRollout,
    change: &WantedChange,
) -> bool {
    // The groups of the client that ask for the package: they count its rollout.
    let asking = || {
        client
            .groups
            .iter()
            .filter_map(|&g| groups[g].package_index(&change.package).map(|k| (g, k)))
    };
    if asking().any(|(g, _)| standings[g].has_failed(&groups[g], &change.package, &change.version))
    {
        return false;
    }
    // A step admits so many members to the rollout's version in all.
    let stepped = |g: usize, k: usize| {
        groups[g].step_cap.is_some() && groups[g].is_target(k, &change.version)
    };
    if asking().any(|(g, k)| {
        stepped(g, k)
            && groups[g]
                .step_cap
                .is_some_and(|cap| standings[g].at_target[k] >= cap)
    }) {
        return false;
    }
    let counted = client.unavailable.contains(&change.package);
    if !counted && !asking().all(|(g, k)| standings[g].unavailable[k] < groups[g].max_unavailable) {
        return false;
    }
    for (g, k) in asking() {
        if !counted {
            // Unavailable for it already: the room it takes is counted.
            standings[g].unavailable[k] += 1;
        }
        if stepped(g, k) {
            standings[g].at_target[k] += 1;
        }
    }
    true
}

/// The installs and updates `client` wants from groups that are not paused.
fn wanted_changes(
    groups: &[GroupBudget],
    group_index: &BTreeMap<&str, usize>,
    client: &ClientRollout,
) -> Wanted {
    let changes = client
        .desire
        .packages
        .iter()
        .filter(|(package, want)| client.assigned.get(*package) != Some(&want.version))
        .filter(|(_, want)| {
            !want
                .group
                .as_deref()
                .and_then(|name| group_index.get(name))
                .is_some_and(|&g| groups[g].paused)
        })
        .map(|(package, want)| WantedChange {
            package: package.clone(),
            version: want.version.clone(),
        })
        .collect();
    Wanted { changes }
}

/// The next assignment of `client`: removals at once, and the wanted changes that are `allowed`.
fn plan_client(client: &ClientRollout, wanted: &Wanted, allowed: &[bool]) -> Assignment {
    let mut assignment: Assignment = client
        .assigned
        .iter()
        .filter(|(package, _)| client.desire.packages.contains_key(*package))
        .map(|(package, version)| (package.clone(), version.clone()))
        .collect();
    for (change, &ok) in wanted.changes.iter().zip(allowed) {
        if ok {
            assignment.insert(change.package.clone(), change.version.clone());
        }
    }
    assignment
}
