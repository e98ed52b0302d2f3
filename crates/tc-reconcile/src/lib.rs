//! Pure decisions of the controller. No I/O, no async runtime, no clock: `now` is an argument.
//!
//! * [`catalog`]: which release a requirement resolves to.
//! * [`desired`]: what one client should run, given the groups that select it.
//! * [`rollout`]: how much of that each client is assigned now, within `maxUnavailable`.
//! * [`convergence`]: whether a client finished what it was assigned, from fresh reports only.
//! * [`status`]: group status and conditions.
//! * [`plan`]: what an apply would create, configure, leave unchanged or prune.

pub mod catalog;
pub mod convergence;
pub mod desired;
pub mod plan;
pub mod rollout;
pub mod status;

pub use status::{GroupTally, MemberState, group_status};

pub use catalog::{ReleaseCatalog, ReleaseInfo};
pub use convergence::{Convergence, convergence, convergence_of};
pub use desired::{ClientDesire, Conflict, Unresolved, Want, desired_for_client};
pub use plan::{
    Action, Plan, PlanError, PlanItem, PlanOptions, RECONCILE_ANNOTATION, RECONCILE_DISABLED,
    SkipReason, Skipped, plan, reconcile_disabled,
};
pub use rollout::{Assignment, ClientRollout, GroupBudget, plan_rollout, plan_rollout_from};
