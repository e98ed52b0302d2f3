//! Progressive delivery: where a group's rollout stands among its steps, its failure threshold,
//! its history, undo, and its maintenance windows resolved into absolute intervals.
//!
//! A *rollout* is a group moving to one set of versions (package -> version, what its
//! requirements resolve to, or what an undo holds it at). A new set starts a new rollout at its
//! first step; the previous one goes to the history. Each share step (`clients`, `percent`)
//! admits that many members in all to the new versions ([`step_cap`]; the planner hands them out
//! in rank order, canaries first) and is done when, for every package of the rollout, as many
//! members as it admits (or every member that gets the package, if fewer) run it healthy or failed
//! within the threshold. A pause with a duration is done that long after it began; one without
//! waits for a resume. The rollout is complete when every member runs every version: remaining
//! steps are then moot. Everything here is pure: the controller keeps the state, passes the
//! counts and the time, and stores what comes back.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tc_api::rollout::{
    MaintenanceWindow, ROLLOUT_HISTORY_KEPT, RolloutOutcome, RolloutRecord, RolloutStep, Step,
};
use tc_api::{IntOrPercent, RolloutPause, Timestamp};
use tc_proto::activation::Window;

use crate::tasks::Schedule;

/// The rollouts of one group, as the controller keeps them (one record per group).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupRollouts {
    /// The current rollout, once the group has had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<RolloutState>,
    /// Earlier rollouts, newest first (at most [`ROLLOUT_HISTORY_KEPT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RolloutRecord>,
    /// An undo holds the group at these versions until its spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<UndoPin>,
}

/// Versions an undo holds a group at, until the group's generation moves past `generation`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UndoPin {
    /// Package -> version.
    pub versions: BTreeMap<String, String>,
    /// The group's generation when it was undone.
    pub generation: u64,
    /// Who undid it, and when.
    pub by: RolloutPause,
}

/// The current rollout of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    /// Its number in the group's history.
    pub revision: u64,
    /// The versions it rolls out.
    pub versions: BTreeMap<String, String>,
    /// The group's generation when it started.
    pub generation: u64,
    /// When it started.
    pub started_at: Timestamp,
    /// Who made the change (the group's last applier), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The current step (`steps.len()` once past the last).
    pub step: usize,
    /// When the current step began.
    pub step_started_at: Timestamp,
    /// A resume was given for the pause at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<usize>,
    /// An admin asked to activate the staged changes now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activate_now: Option<RolloutPause>,
    /// Set once it completed (or stopped at the threshold), with when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<(Timestamp, RolloutOutcome)>,
}

impl GroupRollouts {
    /// The versions the group rolls out: an undo's while it holds, else what its requirements
    /// resolve to (`resolved`). Drops an undo the group's spec has moved past.
    pub fn target(
        &mut self,
        resolved: BTreeMap<String, String>,
        generation: u64,
    ) -> BTreeMap<String, String> {
        if let Some(undo) = &self.undo {
            if generation > undo.generation {
                self.undo = None;
            } else {
                return undo.versions.clone();
            }
        }
        resolved
    }

    /// Starts a new rollout when `versions` differ from the current one's; returns whether it
    /// did. The current one goes to the history as `Undone` when an undo replaces it, else as
    /// it ended (`Complete`, `Failed`), or `Superseded` while it was still going.
    pub fn begin(
        &mut self,
        versions: &BTreeMap<String, String>,
        generation: u64,
        by: Option<String>,
        now: Timestamp,
    ) -> bool {
        if self
            .current
            .as_ref()
            .is_some_and(|current| current.versions == *versions)
        {
            return false;
        }
        let undone = self.undo.as_ref().is_some_and(|u| u.versions == *versions);
        // A rollout of no versions (a group whose requirements resolve to nothing yet, its
        // release not published) brought nothing to anyone: the next one takes its place, so
        // the group's first real rollout is still its first.
        let revision = match self.current.take() {
            Some(empty) if empty.versions.is_empty() => empty.revision,
            Some(previous) => {
                let outcome = match previous.finished {
                    _ if undone => RolloutOutcome::Undone,
                    Some((_, RolloutOutcome::Complete)) => RolloutOutcome::Complete,
                    Some((_, outcome)) if outcome != RolloutOutcome::Progressing => outcome,
                    _ => RolloutOutcome::Superseded,
                };
                self.record(&previous, outcome, now);
                previous.revision + 1
            }
            None => 1,
        };
        self.current = Some(RolloutState {
            revision,
            versions: versions.clone(),
            generation,
            started_at: now,
            by,
            step: 0,
            step_started_at: now,
            resumed: None,
            activate_now: None,
            finished: None,
        });
        true
    }

    fn record(&mut self, rollout: &RolloutState, outcome: RolloutOutcome, now: Timestamp) {
        self.history.insert(
            0,
            RolloutRecord {
                revision: rollout.revision,
                versions: rollout.versions.clone(),
                started_at: rollout.started_at,
                finished_at: Some(rollout.finished.map_or(now, |(at, _)| at)),
                by: rollout.by.clone(),
                outcome,
                generation: rollout.generation,
            },
        );
        self.history.truncate(ROLLOUT_HISTORY_KEPT);
    }

    /// The versions of the last rollout before the current one that completed: what an undo
    /// returns to. None when there is none.
    pub fn undo_target(&self) -> Option<&RolloutRecord> {
        let current = self.current.as_ref().map(|c| &c.versions);
        self.history.iter().find(|record| {
            record.outcome == RolloutOutcome::Complete && Some(&record.versions) != current
        })
    }

    /// The history as the API shows it: the current rollout first, then the earlier ones.
    pub fn records(&self) -> Vec<RolloutRecord> {
        let mut records = Vec::with_capacity(self.history.len() + 1);
        if let Some(current) = &self.current {
            records.push(RolloutRecord {
                revision: current.revision,
                versions: current.versions.clone(),
                started_at: current.started_at,
                finished_at: current.finished.map(|(at, _)| at),
                by: current.by.clone(),
                outcome: current
                    .finished
                    .map_or(RolloutOutcome::Progressing, |(_, outcome)| outcome),
                generation: current.generation,
            });
        }
        records.extend(self.history.iter().cloned());
        records
    }
}

/// Parses every step (already validated at apply; an invalid one is skipped).
pub fn parse_steps(steps: &[RolloutStep]) -> Vec<Step> {
    steps.iter().filter_map(|step| step.step().ok()).collect()
}

/// How many members a share step admits out of `members` (a percentage rounds up).
fn share(step: Step, members: usize) -> Option<usize> {
    match step {
        Step::Clients(n) => Some((n as usize).min(members)),
        Step::Percent(p) => Some((members * p as usize).div_ceil(100)),
        Step::Pause(_) => None,
    }
}

/// How many members the rollout admits to its versions at `step`: the share of the last share
/// step at or before it (0 before the first), None past the last step or without steps.
pub fn step_cap(steps: &[Step], step: usize, members: usize) -> Option<usize> {
    if step >= steps.len() {
        return None;
    }
    Some(
        steps[..=step]
            .iter()
            .rev()
            .find_map(|s| share(*s, members))
            .unwrap_or(0),
    )
}

/// One package of a rollout, counted over the members whose version of it the group decides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackageProgress {
    /// Members the group decides the package for.
    pub eligible: usize,
    /// Of them, members that run the rollout's version, installed and healthy.
    pub converged: usize,
    /// Of them, members whose install of that version failed.
    pub failed: usize,
}

/// What a rollout waits for after [`advance`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Every member runs the versions.
    Complete,
    /// More members failed than the threshold allows.
    FailureThreshold,
    /// Paused by an admin or `spec.paused`.
    Paused,
    /// A share step: `done` of `needed` admitted members run the versions (per the slowest package).
    Share {
        /// Step index.
        step: usize,
        /// Members the step admits.
        admitted: usize,
        /// Of the members it needs, how many are done.
        done: usize,
        /// How many it needs.
        needed: usize,
    },
    /// A pause with a duration, until then.
    PauseUntil {
        /// Step index.
        step: usize,
        /// When it ends.
        until: Timestamp,
    },
    /// A pause without duration: until resumed.
    PauseUntilResumed {
        /// Step index.
        step: usize,
    },
    /// Past the last step: the rest of the members follow within the budget.
    Rest,
}

/// Whether `failed` members exceed `threshold` (a count, or a percentage of `given`, the members
/// given the release so far, rounded down). Without a threshold any failure exceeds it.
pub fn threshold_exceeded(threshold: Option<IntOrPercent>, failed: usize, given: usize) -> bool {
    let allowed = match threshold {
        None => 0,
        Some(IntOrPercent::Int(n)) => n as usize,
        Some(IntOrPercent::Percent(p)) => given * p as usize / 100,
    };
    failed > allowed
}

/// Moves `state` through the steps that are done at `now`; returns what it waits for then.
/// `members` is the group's member count; `progress` has one entry per package of the rollout;
/// `held` is true while paused or past the failure threshold (no step advances then).
pub fn advance(
    steps: &[Step],
    state: &mut RolloutState,
    members: usize,
    progress: &[PackageProgress],
    held: Option<Wait>,
    now: Timestamp,
) -> Wait {
    let complete = progress.iter().all(|p| p.converged >= p.eligible);
    if complete {
        // Also one stopped at the threshold before: its failed members have since converged.
        if !matches!(state.finished, Some((_, RolloutOutcome::Complete))) {
            state.finished = Some((now, RolloutOutcome::Complete));
        }
        // Its steps are behind it: members that join later follow within the budget.
        state.step = state.step.max(steps.len());
        return Wait::Complete;
    }
    // A rollout that completed and then lost members' convergence (a new member) goes on.
    if matches!(state.finished, Some((_, RolloutOutcome::Complete))) {
        state.finished = None;
    }
    if let Some(held) = held {
        if held == Wait::FailureThreshold {
            state.finished.get_or_insert((now, RolloutOutcome::Failed));
        }
        return held;
    }
    if matches!(state.finished, Some((_, RolloutOutcome::Failed))) {
        state.finished = None;
    }
    loop {
        let Some(&step) = steps.get(state.step) else {
            return Wait::Rest;
        };
        match step {
            Step::Clients(_) | Step::Percent(_) => {
                let admitted = share(step, members).unwrap_or(0);
                // The package furthest from the step's share says how far it is.
                let (done, needed) = progress
                    .iter()
                    .map(|p| (p.converged + p.failed, admitted.min(p.eligible)))
                    .max_by_key(|(done, needed)| needed.saturating_sub(*done))
                    .unwrap_or((0, 0));
                if done < needed {
                    return Wait::Share {
                        step: state.step,
                        admitted,
                        done,
                        needed,
                    };
                }
            }
            Step::Pause(Some(duration)) => {
                let until = state.step_started_at.plus(duration);
                if now < until {
                    return Wait::PauseUntil {
                        step: state.step,
                        until,
                    };
                }
            }
            Step::Pause(None) => {
                if state.resumed != Some(state.step) {
                    return Wait::PauseUntilResumed { step: state.step };
                }
            }
        }
        state.step += 1;
        state.step_started_at = now;
    }
}

/// When the next pause with a duration of `state` ends, if it waits for one (for the loop's timer).
pub fn next_wake(wait: &Wait) -> Option<Timestamp> {
    match wait {
        Wait::PauseUntil { until, .. } => Some(*until),
        _ => None,
    }
}

/// The intervals of `windows` from `now` to `now + horizon` (a window open at `now` included),
/// sorted, overlapping ones merged, at most `limit`. Windows whose schedule does not parse are
/// skipped (the apply path refuses them).
pub fn window_intervals(
    windows: &[MaintenanceWindow],
    now: Timestamp,
    horizon: Duration,
    limit: usize,
) -> Vec<Window> {
    let end = now.plus(horizon);
    let mut intervals: Vec<Window> = Vec::new();
    for window in windows {
        let (Ok(schedule), Ok(duration)) = (
            Schedule::parse(&window.schedule, window.time_zone.as_deref()),
            tc_api::rollout::parse_duration(&window.duration),
        ) else {
            continue;
        };
        // A window that opened up to `duration` ago may still be open.
        let mut from = Timestamp::from_unix_millis(
            now.unix_millis()
                .saturating_sub(duration.as_millis() as u64 + 1),
        );
        // Bounded per window: a bound over all of them would let an earlier window's later
        // intervals crowd out a later window's earlier ones.
        let mut taken = 0;
        while let Some(start) = schedule.next_after(from) {
            if start >= end || taken > limit * 4 {
                break;
            }
            let close = start.plus(duration);
            if close > now {
                intervals.push(Window { start, end: close });
                taken += 1;
            }
            from = start;
        }
    }
    intervals.sort_by_key(|w| (w.start, w.end));
    let mut merged: Vec<Window> = Vec::with_capacity(intervals.len());
    for window in intervals {
        match merged.last_mut() {
            Some(last) if window.start <= last.end => last.end = last.end.max(window.end),
            _ => merged.push(window),
        }
    }
    merged.truncate(limit);
    merged
}

/// Validates the schedules and time zones of maintenance windows: (field path, message).
pub fn window_errors(windows: &[MaintenanceWindow]) -> Vec<(String, String)> {
    windows
        .iter()
        .enumerate()
        .filter_map(|(index, window)| {
            Schedule::parse(&window.schedule, window.time_zone.as_deref())
                .err()
                .map(|error| {
                    let field = match error {
                        crate::tasks::ScheduleError::UnknownTimeZone(_) => "timeZone",
                        _ => "schedule",
                    };
                    (
                        format!("spec.rollout.maintenanceWindows[{index}].{field}"),
                        error.to_string(),
                    )
                })
        })
        .collect()
}

/// The label that marks a client as a canary: canaries are admitted to a rollout first.
pub const CANARY_LABEL: &str = "thinfleet.io/canary";

/// The order in which members are admitted to a stepped rollout: canaries (`CANARY_LABEL:
/// "true"`) first, then by a hash of the name (FNV-1a, the same on every controller and after
/// every restart, and spread across the fleet rather than alphabetical).
pub fn member_rank(name: &str, canary: bool) -> (bool, u64) {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (!canary, hash)
}
