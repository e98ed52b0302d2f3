//! When a task's runs start.
//!
//! A run is named by the time it was due, in Unix milliseconds: the creation time of a task
//! without a schedule, the fire time of a scheduled one. The controller records the newest
//! started run (`last_run`); given the same `last_run`, [`due_run`] gives the same answer, so
//! a controller that crashes after starting a run and before recording it cannot start a
//! different one, and one that restarts after recording it does not start it again.
//!
//! Missed fire times (the controller was down, the task suspended, the run too late) are not
//! caught up: only the newest fire time since the last run may start, as a Kubernetes CronJob
//! does, and only while it is at most `deadlineSeconds` old. The older ones are counted.

use tc_api::Timestamp;
use tc_api::task::TaskSpec;

use super::schedule::Schedule;

/// Most missed fire times [`due_run`] counts; more are reported as this many.
pub const MAX_MISSED_COUNTED: u32 = 1000;

/// What [`due_run`] decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DueRun {
    /// The run to start now (its id: the time it was due, Unix milliseconds).
    pub start: Option<u64>,
    /// Fire times since the last run that will never start: older than the newest one, or
    /// the newest one itself when it is more than `deadlineSeconds` late (at most
    /// [`MAX_MISSED_COUNTED`]).
    pub missed: u32,
    /// The next fire time after `now` (None for a task without a schedule, a suspended task
    /// included, or a schedule that never fires again).
    pub next: Option<Timestamp>,
}

/// Decides whether a task starts a run now.
///
/// * `schedule`: `spec.schedule` parsed by the caller (it keeps the parsed form). A task whose
///   `spec.schedule` is set while `schedule` is None (the expression did not parse) starts
///   nothing; a `schedule` given for a spec without one is ignored.
/// * `created`: when the task was created; a scheduled task's first run is its first fire
///   time after that.
/// * `last_run`: the id of the newest run started so far.
///
/// A task without a schedule starts one run, id `created`, while it has none. A scheduled task
/// starts the newest fire time in `(max(last_run, created), now]` unless that is more than
/// `spec.deadline_seconds` before `now`. `spec.suspend` starts nothing (a task without a
/// schedule that is created suspended starts its one run when resumed); `next` is still given.
pub fn due_run(
    spec: &TaskSpec,
    schedule: Option<&Schedule>,
    created: Timestamp,
    last_run: Option<u64>,
    now: Timestamp,
) -> DueRun {
    if spec.schedule.is_none() {
        let start = (last_run.is_none() && !spec.suspend).then(|| created.unix_millis());
        return DueRun {
            start,
            missed: 0,
            next: None,
        };
    }
    let Some(schedule) = schedule else {
        return DueRun::default();
    };
    let next = schedule.next_after(now);
    let since = last_run
        .unwrap_or(0)
        .max(created.unix_millis())
        .min(now.unix_millis());
    let since = Timestamp::from_unix_millis(since);
    let newest = schedule
        .last_at_or_before(now)
        .filter(|newest| *newest > since);
    let Some(newest) = newest else {
        return DueRun {
            start: None,
            missed: 0,
            next,
        };
    };
    let older = count_between(schedule, since, newest);
    let deadline = u64::from(spec.deadline_seconds) * 1000;
    let too_late = now.unix_millis() - newest.unix_millis() > deadline;
    if spec.suspend || too_late {
        return DueRun {
            start: None,
            missed: older.saturating_add(1).min(MAX_MISSED_COUNTED),
            next,
        };
    }
    DueRun {
        start: Some(newest.unix_millis()),
        missed: older,
        next,
    }
}

/// Fire times strictly between `after` and `before`, at most [`MAX_MISSED_COUNTED`].
fn count_between(schedule: &Schedule, after: Timestamp, before: Timestamp) -> u32 {
    let mut count = 0;
    let mut at = after;
    while count < MAX_MISSED_COUNTED {
        match schedule.next_after(at) {
            Some(fire) if fire < before => {
                count += 1;
                at = fire;
            }
            _ => break,
        }
    }
    count
}
