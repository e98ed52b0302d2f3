//! Which clients of a run are handed their order now, and which expire.
//!
//! One pass over the run's clients; the controller calls it on every report, so it allocates
//! only the answer. [`free_slots`] answers "may one more start?" without a plan.

use tc_api::Timestamp;
use tc_api::resources::IntOrPercent;
use tc_api::task::{TaskClientState, TaskRunStatus};

/// One client's place in a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientRun {
    /// Where it is.
    pub state: TaskClientState,
    /// `Pending` and already handed to the agent, which has not reported it started.
    pub offered: bool,
}

impl ClientRun {
    /// Holds one of the run's concurrency slots: offered and pending, or running.
    pub fn is_active(self) -> bool {
        match self.state {
            TaskClientState::Pending => self.offered,
            TaskClientState::Running => true,
            _ => false,
        }
    }
}

/// What [`plan_dispatch`] decided: indexes into its `runs`, ascending.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dispatch {
    /// Pending clients to hand the order to now.
    pub offer: Vec<usize>,
    /// Pending clients (offered or not) that become `Expired`.
    pub expire: Vec<usize>,
}

/// How many clients may be active at once in a run of `targets` clients (all when None;
/// at least one).
pub fn concurrency_limit(max_concurrent: Option<IntOrPercent>, targets: usize) -> usize {
    max_concurrent.map_or(targets, |limit| limit.resolve(targets))
}

/// How many more clients may be offered the order now: the limit less the active ones (0 at
/// or after the deadline).
pub fn free_slots(
    runs: &[ClientRun],
    max_concurrent: Option<IntOrPercent>,
    deadline: Timestamp,
    now: Timestamp,
) -> usize {
    if now >= deadline {
        return 0;
    }
    let active = runs.iter().filter(|run| run.is_active()).count();
    concurrency_limit(max_concurrent, runs.len()).saturating_sub(active)
}

/// Plans a run's next step. At or after `deadline` every `Pending` client expires and none is
/// offered. Before it, the first not-offered `Pending` clients, in order, are offered until
/// the active ones (offered and pending, or running) reach the limit
/// (`max_concurrent.resolve(runs.len())`, all when None).
pub fn plan_dispatch(
    runs: &[ClientRun],
    max_concurrent: Option<IntOrPercent>,
    deadline: Timestamp,
    now: Timestamp,
) -> Dispatch {
    let mut dispatch = Dispatch::default();
    if now >= deadline {
        dispatch.expire = runs
            .iter()
            .enumerate()
            .filter(|(_, run)| run.state == TaskClientState::Pending)
            .map(|(index, _)| index)
            .collect();
        return dispatch;
    }
    let mut free = free_slots(runs, max_concurrent, deadline, now);
    for (index, run) in runs.iter().enumerate() {
        if free == 0 {
            break;
        }
        if run.state == TaskClientState::Pending && !run.offered {
            dispatch.offer.push(index);
            free -= 1;
        }
    }
    dispatch
}

/// A run's clients counted by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Not started (offered or not).
    pub pending: u32,
    /// Started.
    pub running: u32,
    /// Succeeded.
    pub succeeded: u32,
    /// Failed.
    pub failed: u32,
    /// Expired.
    pub expired: u32,
    /// Interrupted.
    pub interrupted: u32,
}

impl Counts {
    /// Clients counted.
    pub fn total(&self) -> u32 {
        self.pending + self.running + self.finished()
    }

    /// Clients in a final state.
    pub fn finished(&self) -> u32 {
        self.succeeded + self.failed + self.expired + self.interrupted
    }

    /// Copies the counts (and `targets`, their total) into a run's status.
    pub fn fill(&self, status: &mut TaskRunStatus) {
        status.targets = self.total();
        status.pending = self.pending;
        status.running = self.running;
        status.succeeded = self.succeeded;
        status.failed = self.failed;
        status.expired = self.expired;
        status.interrupted = self.interrupted;
    }
}

/// Counts a run's clients by state.
pub fn run_counts(runs: &[ClientRun]) -> Counts {
    let mut counts = Counts::default();
    for run in runs {
        let slot = match run.state {
            TaskClientState::Pending => &mut counts.pending,
            TaskClientState::Running => &mut counts.running,
            TaskClientState::Succeeded => &mut counts.succeeded,
            TaskClientState::Failed => &mut counts.failed,
            TaskClientState::Expired => &mut counts.expired,
            TaskClientState::Interrupted => &mut counts.interrupted,
        };
        *slot = slot.saturating_add(1);
    }
    counts
}
