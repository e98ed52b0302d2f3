//! Pure decisions of the controller. No I/O, no async runtime, no clock: `now` is an argument.
//!
//! * [`catalog`]: which release a requirement resolves to.
//! * [`desired`]: what one client should run, given the groups that select it.
//! * [`rollout`]: how much of that each client is assigned now, package by package, within
//!   `maxUnavailable`, never handing a release that failed in a group to further members.
//! * [`convergence`]: whether a client finished what it was assigned, package by package.
//! * [`status`]: group status and conditions.
//! * [`explain`]: why a client runs what it runs (the `describe client` view).
//! * [`plan`]: what an apply would create, configure, leave unchanged or prune.
//! * [`progressive`]: a group's rollout among its steps, its failure threshold, history and
//!   undo, and its maintenance windows resolved into intervals.
//! * [`tasks`]: remote operations: schedules, due runs, targets, dispatch, wake-on-LAN.

pub mod catalog;
pub mod convergence;
pub mod desired;
pub mod explain;
pub mod plan;
pub mod progressive;
pub mod rollout;
pub mod status;
pub mod tasks;

pub use status::{GroupTally, MemberView, group_status};

pub use catalog::{ReleaseCatalog, ReleaseInfo};
pub use convergence::{Convergence, PackageHealth, convergence, convergence_of, package_health};
pub use desired::{ClientDesire, Conflict, Unresolved, Want, desired_for_client};
pub use explain::explain;
pub use plan::{
    Action, Plan, PlanError, PlanItem, PlanOptions, RECONCILE_ANNOTATION, RECONCILE_DISABLED,
    SkipReason, Skipped, plan, reconcile_disabled,
};
pub use rollout::{
    Assignment, ClientRollout, GroupBudget, GroupStanding, plan_rollout, plan_rollout_from,
    standings,
};
