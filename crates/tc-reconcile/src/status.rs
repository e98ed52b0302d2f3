//! Status of a group: member counts and conditions.

use tc_api::meta::set_condition;
use tc_api::{
    ClientGroup, ClientGroupStatus, Condition, ConditionStatus, ResolvedPackage, Timestamp,
};

use crate::catalog::ReleaseCatalog;
use crate::convergence::Convergence;

/// One member of a group, as the status needs it.
#[derive(Clone, Debug)]
pub struct MemberState<'a> {
    /// What the member is assigned (package -> version).
    pub assigned: &'a std::collections::BTreeMap<String, String>,
    /// Whether it converged on that.
    pub convergence: &'a Convergence,
}

/// Computes a group's status from its members. `conflicts` counts members with a priority tie on
/// one of the group's packages. Conditions keep their transition time while their status holds.
pub fn group_status(
    group: &ClientGroup,
    catalog: &ReleaseCatalog,
    members: &[MemberState<'_>],
    conflicts: usize,
    now: Timestamp,
) -> ClientGroupStatus {
    let mut tally = GroupTally::new(group, catalog);
    for member in members {
        tally.add(
            |package| member.assigned.get(package).map(String::as_str),
            member.convergence,
        );
    }
    tally.finish(group, conflicts, now)
}

/// A group's status counted one member at a time ([`group_status`] without a list of members):
/// a pass over a large fleet adds each client to the tallies of its groups as it goes.
#[derive(Clone, Debug)]
pub struct GroupTally {
    status: ClientGroupStatus,
}

impl GroupTally {
    /// An empty tally for `group`, with its requirements resolved in `catalog`.
    pub fn new(group: &ClientGroup, catalog: &ReleaseCatalog) -> GroupTally {
        let packages: Vec<ResolvedPackage> = group
            .spec
            .packages
            .iter()
            .map(|requirement| ResolvedPackage {
                name: requirement.name.clone(),
                version: requirement.version.clone(),
                resolved_version: requirement
                    .version_req()
                    .ok()
                    .and_then(|req| catalog.resolve(&requirement.name, &req))
                    .map(|info| info.version.to_string()),
            })
            .collect();
        GroupTally {
            status: ClientGroupStatus {
                packages,
                ..Default::default()
            },
        }
    }

    /// Counts one member: `assigned` gives the version it is assigned of a package, and
    /// `convergence` whether it converged on its assignment.
    pub fn add<'a>(
        &mut self,
        assigned: impl Fn(&str) -> Option<&'a str>,
        convergence: &Convergence,
    ) {
        let status = &mut self.status;
        status.desired += 1;
        let updated = status
            .packages
            .iter()
            .all(|package| match &package.resolved_version {
                Some(version) => assigned(&package.name) == Some(version.as_str()),
                None => true,
            });
        if updated {
            status.updated += 1;
        }
        match convergence {
            Convergence::Converged if updated => status.ready += 1,
            Convergence::Converged => {}
            Convergence::Failed { .. } => {
                status.failed += 1;
                status.unavailable += 1;
            }
            Convergence::Progressing => status.unavailable += 1,
        }
    }

    /// The status with its conditions; `conflicts` counts members with a priority tie on one of
    /// the group's packages. Conditions keep their transition time while their status holds.
    pub fn finish(
        self,
        group: &ClientGroup,
        conflicts: usize,
        now: Timestamp,
    ) -> ClientGroupStatus {
        let previous = group.status.clone().unwrap_or_default();
        let generation = group.metadata.generation.unwrap_or(0);
        let mut status = self.status;
        status.observed_generation = generation;
        status.conditions = previous.conditions;
        finish_conditions(group, status, conflicts, generation, now)
    }
}

fn finish_conditions(
    group: &ClientGroup,
    mut status: ClientGroupStatus,
    conflicts: usize,
    generation: u64,
    now: Timestamp,
) -> ClientGroupStatus {
    let unresolved: Vec<&str> = status
        .packages
        .iter()
        .filter(|p| p.resolved_version.is_none())
        .map(|p| p.name.as_str())
        .collect();
    let condition = |type_: &str, holds: bool, reason: &str, message: String| Condition {
        type_: type_.into(),
        status: if holds {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        reason: reason.into(),
        message,
        last_transition_time: now,
        observed_generation: Some(generation),
    };
    let all_ready = status.ready == status.desired && unresolved.is_empty();
    set_condition(
        &mut status.conditions,
        condition(
            "Ready",
            all_ready,
            if all_ready {
                "AllMembersReady"
            } else {
                "MembersNotReady"
            },
            format!("{} of {} members ready", status.ready, status.desired),
        ),
    );
    let progressing = !all_ready && !group.spec.paused && status.failed == 0;
    let (reason, message) = if group.spec.paused {
        (
            "Paused",
            "the group is paused; no new assignments".to_string(),
        )
    } else if progressing {
        (
            "RollingOut",
            format!("{} of {} members updated", status.updated, status.desired),
        )
    } else if status.failed > 0 {
        ("Stalled", format!("{} members failed", status.failed))
    } else {
        (
            "Complete",
            "every member runs the group's packages".to_string(),
        )
    };
    set_condition(
        &mut status.conditions,
        condition("Progressing", progressing, reason, message),
    );
    let (degraded, reason, message) = if status.failed > 0 {
        (
            true,
            "MembersFailed",
            format!(
                "{} of {} members failed to update",
                status.failed, status.desired
            ),
        )
    } else if conflicts > 0 {
        (
            true,
            "Conflict",
            format!(
                "{conflicts} members are selected by another group of the same priority that pins a different version"
            ),
        )
    } else if !unresolved.is_empty() {
        (
            true,
            "Unresolved",
            format!("no ready release satisfies: {}", unresolved.join(", ")),
        )
    } else {
        (false, "Healthy", String::new())
    };
    set_condition(
        &mut status.conditions,
        condition("Degraded", degraded, reason, message),
    );
    status
}
