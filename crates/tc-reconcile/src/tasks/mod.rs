//! Pure decisions of remote operations (`Task`): when runs start, on which clients, how many
//! at once, and who sends a wake-on-LAN packet.
//!
//! * [`schedule`]: cron expressions in a time zone, with fixed daylight-saving rules.
//! * [`run`]: whether a task starts a run now, and which (runs are named by their due time).
//! * [`targets`]: the clients a run targets.
//! * [`dispatch`]: which clients are offered the order now, which expire; run counts.
//! * [`wake`]: the neighbour that wakes each sleeping target.

pub mod dispatch;
pub mod run;
pub mod schedule;
pub mod targets;
pub mod wake;

pub use dispatch::{
    ClientRun, Counts, Dispatch, concurrency_limit, free_slots, plan_dispatch, run_counts,
};
pub use run::{DueRun, MAX_MISSED_COUNTED, due_run};
pub use schedule::{Schedule, ScheduleError};
pub use targets::{TargetError, Targets, resolve_targets};
pub use wake::{Candidate, WakeOutcome, WakePlan, WakeTarget, plan_wake};

#[cfg(test)]
mod dispatch_tests;
#[cfg(test)]
mod run_tests;
#[cfg(test)]
mod schedule_tests;
#[cfg(test)]
mod targets_tests;
#[cfg(test)]
mod wake_tests;
