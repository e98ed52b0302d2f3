//! Status of a group: member counts, per-package rollouts and conditions.
//!
//! A group judges its members only on its own packages, and only on the packages it decides for
//! each member: a package decided by a group of higher priority (or tied with one that pins
//! another version) is that group's business, named in `overriddenBy` / `conflictsWith`, and does
//! not keep this group's rollout from completing.

use std::collections::BTreeSet;
use std::time::Duration;

use tc_api::meta::set_condition;
use tc_api::{
    AssignedPackage, ClientGroup, ClientGroupStatus, Condition, ConditionStatus, PackageReport,
    ResolvedPackage, Timestamp, WaitingMember,
};

use crate::catalog::ReleaseCatalog;
use crate::convergence::PackageHealth;
use crate::desired::ClientDesire;
use crate::progressive::{PackageProgress, threshold_exceeded};

/// Members listed in `status.waiting`.
pub const WAITING_LISTED: usize = 10;

/// One member of a group, as its status needs it.
#[derive(Clone, Copy, Debug)]
pub struct MemberView<'a> {
    /// Client name.
    pub name: &'a str,
    /// Whether its agent missed three heartbeats.
    pub offline: bool,
    /// What it should run, and which group decides each package.
    pub desire: &'a ClientDesire,
    /// What it is assigned, sorted by package name.
    pub assigned: &'a [AssignedPackage],
    /// The health of each assigned package, in the order of `assigned`.
    pub health: &'a [PackageHealth],
    /// Its package reports (for what it is waiting for).
    pub reports: &'a [PackageReport],
}

/// Who decides one package of a group for one member.
enum Decider<'a> {
    /// This group.
    Own,
    /// A group of higher priority (or one of them that cannot resolve it).
    Overridden(&'a str),
    /// Groups of the same priority that pin other versions.
    Conflict,
}

fn decider<'a>(desire: &'a ClientDesire, group: &str, package: &str) -> Decider<'a> {
    if let Some(conflict) = desire.conflicts.iter().find(|c| c.package == package)
        && conflict.groups.iter().any(|g| g == group)
    {
        return Decider::Conflict;
    }
    match desire
        .packages
        .get(package)
        .and_then(|w| w.group.as_deref())
    {
        Some(owner) if owner != group => Decider::Overridden(owner),
        Some(_) => Decider::Own,
        None => match desire
            .unresolved
            .iter()
            .find(|u| u.package == package && u.group != group)
        {
            Some(unresolved) => Decider::Overridden(&unresolved.group),
            None => Decider::Own,
        },
    }
}

/// Computes a group's status from its members (every member at once; see [`GroupTally`]).
pub fn group_status(
    group: &ClientGroup,
    catalog: &ReleaseCatalog,
    members: &[MemberView<'_>],
    now: Timestamp,
) -> ClientGroupStatus {
    let mut tally = GroupTally::new(group, catalog);
    for member in members {
        tally.add(group, member);
    }
    tally.finish(group, now)
}

/// A group's status counted one member at a time: a pass over a large fleet adds each client to
/// the tallies of its groups as it goes.
#[derive(Clone, Debug)]
pub struct GroupTally {
    status: ClientGroupStatus,
    overridden_by: Vec<BTreeSet<String>>,
    conflicts_with: Vec<BTreeSet<String>>,
    failed_versions: Vec<BTreeSet<String>>,
    conflicted_members: u32,
    /// Per package, over the members the group decides it for (progressive delivery).
    progress: Vec<PackageProgress>,
    /// Members with a change staged (downloaded, waiting for a window or a reboot).
    staged: u32,
    /// The earliest activation time a staged member reported.
    activates_at: Option<Timestamp>,
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
                ..Default::default()
            })
            .collect();
        let count = packages.len();
        GroupTally {
            status: ClientGroupStatus {
                packages,
                ..Default::default()
            },
            overridden_by: vec![BTreeSet::new(); count],
            conflicts_with: vec![BTreeSet::new(); count],
            failed_versions: vec![BTreeSet::new(); count],
            conflicted_members: 0,
            progress: vec![PackageProgress::default(); count],
            staged: 0,
            activates_at: None,
        }
    }

    /// Counts one member of `group` (the group this tally was made for).
    pub fn add(&mut self, group: &ClientGroup, member: &MemberView<'_>) {
        let status = &mut self.status;
        status.desired += 1;
        if member.offline {
            status.offline += 1;
        }
        let (mut updated, mut unavailable, mut failed, mut conflicted) =
            (true, false, false, false);
        // What the member waits for: the first package found and how (formatted only when the
        // member is listed, so that a rollout to many members formats ten reasons, not all).
        let mut waiting_for: Option<(usize, Waiting)> = None;
        for (k, package) in status.packages.iter_mut().enumerate() {
            let Some(resolved) = package.resolved_version.as_deref() else {
                continue;
            };
            match decider(member.desire, &group.metadata.name, &package.name) {
                Decider::Overridden(by) => {
                    package.overridden += 1;
                    if !self.overridden_by[k].contains(by) {
                        self.overridden_by[k].insert(by.to_string());
                    }
                    continue;
                }
                Decider::Conflict => {
                    conflicted = true;
                    package.overridden += 1;
                    if let Some(conflict) = member
                        .desire
                        .conflicts
                        .iter()
                        .find(|c| c.package == package.name)
                    {
                        for other in &conflict.groups {
                            if *other != group.metadata.name {
                                self.conflicts_with[k].insert(other.clone());
                            }
                        }
                    }
                    continue;
                }
                Decider::Own => {}
            }
            let index = member
                .assigned
                .binary_search_by(|p| p.name.as_str().cmp(&package.name))
                .ok();
            let assigned = index.map(|i| &member.assigned[i]);
            let is_updated = assigned.is_some_and(|a| a.version == resolved);
            if is_updated {
                package.updated += 1;
            } else {
                updated = false;
            }
            let health = index.map(|i| member.health[i]);
            let progress = &mut self.progress[k];
            progress.eligible += 1;
            if is_updated {
                match health {
                    Some(PackageHealth::Converged) => progress.converged += 1,
                    Some(PackageHealth::Failed) => progress.failed += 1,
                    _ => {}
                }
            }
            match health {
                Some(PackageHealth::Failed) => {
                    package.failed += 1;
                    package.unavailable += 1;
                    failed = true;
                    unavailable = true;
                    let version = assigned.map(|a| a.version.as_str()).unwrap_or_default();
                    if !self.failed_versions[k].contains(version) {
                        self.failed_versions[k].insert(version.to_string());
                    }
                    waiting_for.get_or_insert((k, Waiting::Failed));
                }
                Some(PackageHealth::Progressing) => {
                    package.unavailable += 1;
                    unavailable = true;
                    waiting_for.get_or_insert((k, Waiting::Installing));
                }
                Some(PackageHealth::Converged) | None => {
                    if !is_updated {
                        waiting_for.get_or_insert((k, Waiting::Queued));
                    }
                }
            }
        }
        if conflicted {
            self.conflicted_members += 1;
        }
        if let Some(staged) = member.reports.iter().find_map(|r| r.staged.as_ref()) {
            self.staged += 1;
            if let Some(at) = staged.activates_at {
                self.activates_at = Some(self.activates_at.map_or(at, |t| t.min(at)));
            }
        }
        if updated {
            status.updated += 1;
        }
        if failed {
            status.failed += 1;
        }
        if unavailable {
            status.unavailable += 1;
        }
        if updated && !unavailable {
            status.ready += 1;
        } else if status.waiting.len() < WAITING_LISTED {
            let reason = match waiting_for {
                Some((k, how)) => waiting_reason(&status.packages[k], how, member),
                None => "waiting".into(),
            };
            status.waiting.push(WaitingMember {
                name: member.name.to_string(),
                reason: if member.offline {
                    format!("offline; {reason}")
                } else {
                    reason
                },
            });
        }
    }

    /// Per package of the group (in spec order, packages that resolve to no release left at
    /// zero): the members it decides the package for, and of them those that run the resolved
    /// version healthy, or failed to install it.
    pub fn progress(&self) -> &[PackageProgress] {
        &self.progress
    }

    /// Members with a staged change, and the earliest activation time they reported.
    pub fn staged(&self) -> (u32, Option<Timestamp>) {
        (self.staged, self.activates_at)
    }

    /// Records who paused the group's rollout through the API (its `Progressing` condition then
    /// says so).
    pub fn paused_by(mut self, pause: Option<tc_api::RolloutPause>) -> GroupTally {
        self.status.paused_by = pause;
        self
    }

    /// The status with its conditions. Conditions keep their transition time while their status
    /// and reason hold.
    pub fn finish(mut self, group: &ClientGroup, now: Timestamp) -> ClientGroupStatus {
        for (k, package) in self.status.packages.iter_mut().enumerate() {
            package.overridden_by = std::mem::take(&mut self.overridden_by[k])
                .into_iter()
                .collect();
            package.conflicts_with = std::mem::take(&mut self.conflicts_with[k])
                .into_iter()
                .collect();
            package.failed_versions = std::mem::take(&mut self.failed_versions[k])
                .into_iter()
                .collect();
        }
        // A member queued for a release that failed on others is held back, not queued.
        for waiting in &mut self.status.waiting {
            for package in &self.status.packages {
                for version in &package.failed_versions {
                    if waiting
                        .reason
                        .ends_with(&format!("queued for {} {version}", package.name))
                    {
                        waiting.reason = waiting.reason.replace(
                            &format!("queued for {} {version}", package.name),
                            &format!(
                                "held back: {} {version} failed on other members",
                                package.name
                            ),
                        );
                    }
                }
            }
        }
        let previous = group.status.clone().unwrap_or_default();
        let generation = group.metadata.generation.unwrap_or(0);
        let mut status = self.status;
        status.observed_generation = generation;
        status.conditions = previous.conditions.clone();
        status.last_progress_time = if made_progress(&previous, &status) {
            Some(now)
        } else {
            previous.last_progress_time.or(Some(now))
        };
        finish_conditions(group, status, self.conflicted_members, generation, now)
    }
}

/// How a member waits for a package.
#[derive(Clone, Copy, Debug)]
enum Waiting {
    /// Its install failed.
    Failed,
    /// It is being installed.
    Installing,
    /// It is not assigned yet.
    Queued,
}

/// `kiosk 1.5.0 failed: <first line of the message>`, `installing kiosk 1.5.0`,
/// `queued for kiosk 1.5.0`.
fn waiting_reason(package: &ResolvedPackage, how: Waiting, member: &MemberView<'_>) -> String {
    let assigned = member
        .assigned
        .iter()
        .find(|p| p.name == package.name)
        .map(|p| p.version.as_str())
        .unwrap_or_default();
    match how {
        Waiting::Failed => {
            let message = member
                .reports
                .iter()
                .find(|r| r.name == package.name)
                .and_then(|r| r.message.as_deref())
                .unwrap_or("no reason given");
            format!(
                "{} {assigned} failed: {}",
                package.name,
                first_line(message)
            )
        }
        Waiting::Installing => format!("installing {} {assigned}", package.name),
        Waiting::Queued => format!(
            "queued for {} {}",
            package.name,
            package.resolved_version.as_deref().unwrap_or_default()
        ),
    }
}

/// Whether `status` shows progress over `previous`: another generation or resolved version, or
/// other member counts.
fn made_progress(previous: &ClientGroupStatus, status: &ClientGroupStatus) -> bool {
    let resolved = |s: &ClientGroupStatus| -> Vec<Option<String>> {
        s.packages
            .iter()
            .map(|p| p.resolved_version.clone())
            .collect()
    };
    previous.observed_generation != status.observed_generation
        || resolved(previous) != resolved(status)
        || (previous.desired, previous.updated, previous.ready)
            != (status.desired, status.updated, status.ready)
        || previous
            .packages
            .iter()
            .map(|p| p.updated)
            .ne(status.packages.iter().map(|p| p.updated))
}

fn first_line(text: &str) -> &str {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(200) {
        Some((cut, _)) => &line[..cut],
        None => line,
    }
}

/// "a (offline; installing kiosk 1.5.0), b (queued for kiosk 1.5.0) and 3 more".
fn waiting_text(status: &ClientGroupStatus) -> String {
    let total = status.desired.saturating_sub(status.ready) as usize;
    let mut text = status
        .waiting
        .iter()
        .map(|w| format!("{} ({})", w.name, w.reason))
        .collect::<Vec<_>>()
        .join(", ");
    if total > status.waiting.len() {
        text.push_str(&format!(" and {} more", total - status.waiting.len()));
    }
    text
}

/// `kiosk by front-desk; vpn by berlin, paris`.
fn other_groups_text(
    status: &ClientGroupStatus,
    pick: fn(&ResolvedPackage) -> &[String],
) -> String {
    status
        .packages
        .iter()
        .filter(|p| !pick(p).is_empty())
        .map(|p| format!("{} by {}", p.name, pick(p).join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether a package's failures exceed the group's failure threshold (any failure, without one):
/// the failures of members given the resolved version, against the members given it.
pub fn past_threshold(group: &ClientGroup, status: &ClientGroupStatus) -> bool {
    status.packages.iter().any(|package| {
        threshold_exceeded(
            group.spec.rollout.failure_threshold,
            package.failed as usize,
            package.updated as usize,
        )
    })
}

fn finish_conditions(
    group: &ClientGroup,
    mut status: ClientGroupStatus,
    conflicted_members: u32,
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
    let offline_note = if status.offline > 0 {
        format!(" ({} offline)", status.offline)
    } else {
        String::new()
    };
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
            format!(
                "{} of {} members ready{offline_note}",
                status.ready, status.desired
            ),
        ),
    );
    let deadline = Duration::from_secs(u64::from(group.spec.rollout.progress_deadline_seconds));
    let stuck_for = status
        .last_progress_time
        .map(|since| now.since(since))
        .unwrap_or_default();
    let failed_releases: Vec<String> = status
        .packages
        .iter()
        .flat_map(|p| {
            p.failed_versions
                .iter()
                .map(move |v| format!("{} {v}", p.name))
        })
        .collect();
    let (progressing, reason, message) = if let Some(pause) = &status.paused_by {
        (
            false,
            "Paused",
            format!(
                "paused by {} at {}: no new assignments until `tcadm rollout resume clientgroup {}`",
                pause.by, pause.time, group.metadata.name
            ),
        )
    } else if group.spec.paused {
        (
            false,
            "Paused",
            "the group is paused (spec.paused); no new assignments".to_string(),
        )
    } else if all_ready {
        let overridden = other_groups_text(&status, |p| &p.overridden_by);
        (
            false,
            "Complete",
            if overridden.is_empty() {
                "every member runs the group's packages".to_string()
            } else {
                format!(
                    "every member runs the group's packages where this group decides them \
                     (decided by higher-priority groups: {overridden})"
                )
            },
        )
    } else if status.failed > 0 && past_threshold(group, &status) {
        (
            false,
            "FailureThresholdExceeded",
            format!(
                "{} of {} members failed to install {}{}; it is not handed to further members \
                 until the requirement changes, `tcadm rollout retry clientgroup {name}` or \
                 `tcadm rollout undo clientgroup {name}`",
                status.failed,
                status.desired,
                failed_releases.join(", "),
                match group.spec.rollout.failure_threshold {
                    None => String::new(),
                    Some(threshold) => format!(" (failureThreshold {threshold})"),
                },
                name = group.metadata.name
            ),
        )
    } else if stuck_for > deadline {
        (
            false,
            "ProgressDeadlineExceeded",
            format!(
                "no progress since {} (progressDeadlineSeconds {}); {} of {} members ready{offline_note}; \
                 waiting for {}",
                status.last_progress_time.unwrap_or(now),
                deadline.as_secs(),
                status.ready,
                status.desired,
                waiting_text(&status)
            ),
        )
    } else {
        (
            true,
            "RollingOut",
            format!(
                "{} of {} members updated, {} ready{offline_note}",
                status.updated, status.desired, status.ready
            ),
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
                "{} of {} members failed to install {}",
                status.failed,
                status.desired,
                failed_releases.join(", ")
            ),
        )
    } else if conflicted_members > 0 {
        (
            true,
            "Conflict",
            format!(
                "{conflicted_members} members are also selected by groups of the same priority \
                 that pin other versions: {}",
                other_groups_text(&status, |p| &p.conflicts_with)
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
