//! `Task`: a remote operation (reboot, shutdown, wake, exec, collectLogs) on a set of clients,
//! run once or on a schedule, with per-client results.
//!
//! A run resolves its targets when it starts (as a Kubernetes Job does): clients that join the
//! selector later are not added to it. Each run is named by the time it was due (the creation
//! time of a task without a schedule), so a controller restart cannot start it twice.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tc_proto::Timestamp;
use tc_proto::task::{MAX_EXEC_TIMEOUT_SECONDS, TaskRunState};

use crate::meta::{Condition, ObjectMeta};
use crate::resources::IntOrPercent;
use crate::selector::LabelSelector;
use crate::validate::{Errors, validate_object_name};

/// Longest run deadline accepted (30 days).
pub const MAX_TASK_DEADLINE_SECONDS: u32 = 2_592_000;

/// Longest `ttlSecondsAfterFinished` accepted (a year).
pub const MAX_TASK_TTL_SECONDS: u32 = 31_536_000;

/// Default run deadline: clients that have not started an hour after the run began expire.
pub const DEFAULT_TASK_DEADLINE_SECONDS: u32 = 3600;

/// Default `exec` timeout.
pub const DEFAULT_EXEC_TIMEOUT_SECONDS: u32 = 300;

/// Most client names a task may list.
pub const MAX_TASK_CLIENT_NAMES: usize = 10_000;

/// Most runs a task's status lists (and the controller keeps results of), newest first.
pub const MAX_TASK_RUNS_KEPT: usize = 5;

/// A remote operation on a set of clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Task {
    /// Always `thinfleet.io/v1`.
    pub api_version: String,
    /// Always `Task`.
    pub kind: String,
    /// Name, labels, annotations.
    pub metadata: ObjectMeta,
    /// What to do, where and how.
    pub spec: TaskSpec,
    /// What the controller observed; ignored on apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
}

/// The admin-written part of a `Task`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskSpec {
    /// Which clients: a label selector, names, and/or a group's members (their union).
    pub targets: TaskTargets,
    /// What they do.
    pub action: TaskActionKind,
    /// The command of an `exec` action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecSpec>,
    /// How many clients may be running it at once: a count or a percentage of the run's
    /// targets (rounded up). All at once when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<IntOrPercent>,
    /// Seconds after a run starts when the clients that have not started it count as
    /// `Expired` (1 to 2592000, default 3600).
    #[serde(default = "default_deadline_seconds")]
    pub deadline_seconds: u32,
    /// Start a new run at each time of this schedule instead of once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<TaskSchedule>,
    /// No new run starts while true (a task without a schedule holds back its one run).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// A task without a schedule is deleted this many seconds after its run completed (kept
    /// until deleted when absent). `tcadm run` sets a week.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<u32>,
}

fn default_deadline_seconds() -> u32 {
    DEFAULT_TASK_DEADLINE_SECONDS
}

/// Which clients a task runs on. Their union; at least one must be given. `selector: {}`
/// selects every client.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskTargets {
    /// Clients whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Clients by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
    /// The members of this `ClientGroup` (clients its selector matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The actions a task can carry out.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum TaskActionKind {
    /// Restart the machine (the agent's `rebootCommand`); succeeded when the client reports
    /// back on a new boot.
    Reboot,
    /// Power the machine off (the agent's `shutdownCommand`).
    Shutdown,
    /// Wake-on-LAN: an online neighbour on the target's network segment sends the magic
    /// packet.
    Wake,
    /// Run `exec.command`.
    #[default]
    Exec,
    /// The agent sends its recent log and its journal.
    CollectLogs,
}

impl TaskActionKind {
    /// Every action.
    pub const ALL: [TaskActionKind; 5] = [
        TaskActionKind::Reboot,
        TaskActionKind::Shutdown,
        TaskActionKind::Wake,
        TaskActionKind::Exec,
        TaskActionKind::CollectLogs,
    ];

    /// The name manifests, `allowedTasks` and the wire use.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskActionKind::Reboot => "reboot",
            TaskActionKind::Shutdown => "shutdown",
            TaskActionKind::Wake => "wake",
            TaskActionKind::Exec => "exec",
            TaskActionKind::CollectLogs => "collectLogs",
        }
    }
}

impl std::fmt::Display for TaskActionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The command of an `exec` task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecSpec {
    /// Program and arguments (no shell: use `[sh, -c, "..."]` for one).
    pub command: Vec<String>,
    /// Killed with its whole process group after this many seconds (1 to 86400, default 300).
    #[serde(default = "default_exec_timeout_seconds")]
    pub timeout_seconds: u32,
    /// Working directory on the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

fn default_exec_timeout_seconds() -> u32 {
    DEFAULT_EXEC_TIMEOUT_SECONDS
}

/// When a scheduled task starts its runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskSchedule {
    /// A five-field cron expression (`0 7 * * 1-5`: 07:00 on weekdays).
    pub cron: String,
    /// An IANA time zone (`Europe/Berlin`); UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// What the controller observed of a task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// The runs, newest first (at most [`MAX_TASK_RUNS_KEPT`]).
    #[serde(default)]
    pub runs: Vec<TaskRunStatus>,
    /// When a scheduled task starts its next run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_time: Option<Timestamp>,
    /// `Complete` (the newest run has nothing left to do), `ScheduleValid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One run of a task: its targets' counts by state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunStatus {
    /// The run's id: the time it was due, in Unix milliseconds.
    pub run: u64,
    /// When it started.
    pub started_at: Timestamp,
    /// When clients that have not started it expire.
    pub deadline: Timestamp,
    /// When its last client reached a final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    /// Clients the run targets.
    pub targets: u32,
    /// Not started yet (waiting for their turn or for the client to take it).
    pub pending: u32,
    /// Started, not finished.
    pub running: u32,
    /// Finished successfully.
    pub succeeded: u32,
    /// Finished and failed (refused by the agent included).
    pub failed: u32,
    /// Never started before the deadline.
    pub expired: u32,
    /// The agent stopped while running it.
    pub interrupted: u32,
}

impl TaskRunStatus {
    /// Clients that reached a final state.
    pub fn finished(&self) -> u32 {
        self.succeeded + self.failed + self.expired + self.interrupted
    }
}

/// Where one client is in one run.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum TaskClientState {
    /// Not started yet.
    #[default]
    Pending,
    /// Started.
    Running,
    /// Succeeded.
    Succeeded,
    /// Failed.
    Failed,
    /// Never started before the deadline.
    Expired,
    /// Interrupted by the agent stopping.
    Interrupted,
}

impl TaskClientState {
    /// Every state, in the order statuses count them.
    pub const ALL: [TaskClientState; 6] = [
        TaskClientState::Pending,
        TaskClientState::Running,
        TaskClientState::Succeeded,
        TaskClientState::Failed,
        TaskClientState::Expired,
        TaskClientState::Interrupted,
    ];

    /// True once nothing more will happen.
    pub fn is_final(self) -> bool {
        !matches!(self, TaskClientState::Pending | TaskClientState::Running)
    }

    /// The state's name (`Succeeded`).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskClientState::Pending => "Pending",
            TaskClientState::Running => "Running",
            TaskClientState::Succeeded => "Succeeded",
            TaskClientState::Failed => "Failed",
            TaskClientState::Expired => "Expired",
            TaskClientState::Interrupted => "Interrupted",
        }
    }

    /// Parses a state name, any case.
    pub fn parse(text: &str) -> Option<TaskClientState> {
        TaskClientState::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(text))
    }
}

impl From<TaskRunState> for TaskClientState {
    fn from(state: TaskRunState) -> Self {
        match state {
            TaskRunState::Running => TaskClientState::Running,
            TaskRunState::Succeeded => TaskClientState::Succeeded,
            TaskRunState::Failed => TaskClientState::Failed,
            TaskRunState::Interrupted => TaskClientState::Interrupted,
        }
    }
}

/// One client's result in one run, as `GET /apis/thinfleet.io/v1/tasks/{name}/results` lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskResult {
    /// The task.
    pub task: String,
    /// The run.
    pub run: u64,
    /// The client.
    pub client: String,
    /// Where it is.
    pub state: TaskClientState,
    /// The client that carried it out for this one (`wake`: the neighbour that sent the
    /// packet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When the agent started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it reached its final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// The command's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The tail of stdout.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    /// The tail of stderr.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// Why, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `collectLogs` sent logs (read them from `.../results/{client}/logs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub has_logs: bool,
}

/// Checks a task's spec; errors carry field paths.
pub fn validate_task_spec(spec: &TaskSpec, errors: &mut Errors) {
    let targets = &spec.targets;
    if targets.selector.is_none() && targets.clients.is_empty() && targets.group.is_none() {
        errors.push(
            "spec.targets",
            "needs a `selector`, `clients` or a `group` (`selector: {}` selects every client)",
        );
    }
    if let Some(selector) = &targets.selector {
        selector.validate("spec.targets.selector", errors);
    }
    if targets.clients.len() > MAX_TASK_CLIENT_NAMES {
        errors.push(
            "spec.targets.clients",
            format!(
                "{} names, at most {MAX_TASK_CLIENT_NAMES} (use a selector)",
                targets.clients.len()
            ),
        );
    } else {
        for (index, name) in targets.clients.iter().enumerate() {
            validate_object_name(name, &format!("spec.targets.clients[{index}]"), errors);
        }
    }
    if let Some(group) = &targets.group {
        validate_object_name(group, "spec.targets.group", errors);
    }
    match (&spec.exec, spec.action) {
        (None, TaskActionKind::Exec) => errors.push("spec.exec", "is required with `action: exec`"),
        (Some(_), action) if action != TaskActionKind::Exec => errors.push(
            "spec.exec",
            format!("is only for `action: exec`, not `{action}`"),
        ),
        (Some(exec), _) => {
            if exec.command.is_empty() || exec.command[0].trim().is_empty() {
                errors.push("spec.exec.command", "needs a program to run");
            }
            if exec.command.len() > 256
                || exec.command.iter().map(String::len).sum::<usize>() > 64 * 1024
            {
                errors.push("spec.exec.command", "is longer than 256 words or 64 KiB");
            }
            if exec.command.iter().any(|word| word.contains('\0')) {
                errors.push("spec.exec.command", "contains a NUL byte");
            }
            if !(1..=MAX_EXEC_TIMEOUT_SECONDS).contains(&exec.timeout_seconds) {
                errors.push(
                    "spec.exec.timeoutSeconds",
                    format!(
                        "{} is outside 1..={MAX_EXEC_TIMEOUT_SECONDS} seconds",
                        exec.timeout_seconds
                    ),
                );
            }
            if let Some(dir) = &exec.working_dir
                && (!dir.starts_with('/') || dir.len() > 4096 || dir.contains('\0'))
            {
                errors.push(
                    "spec.exec.workingDir",
                    format!("`{dir}` is not an absolute path"),
                );
            }
        }
        (None, _) => {}
    }
    if let Some(IntOrPercent::Int(0) | IntOrPercent::Percent(0)) = spec.max_concurrent {
        errors.push("spec.maxConcurrent", "must allow at least one client");
    }
    if !(1..=MAX_TASK_DEADLINE_SECONDS).contains(&spec.deadline_seconds) {
        errors.push(
            "spec.deadlineSeconds",
            format!(
                "{} is outside 1..={MAX_TASK_DEADLINE_SECONDS} seconds",
                spec.deadline_seconds
            ),
        );
    }
    if let Some(ttl) = spec.ttl_seconds_after_finished {
        if spec.schedule.is_some() {
            errors.push(
                "spec.ttlSecondsAfterFinished",
                "is only for a task without a `schedule`",
            );
        } else if ttl > MAX_TASK_TTL_SECONDS {
            errors.push(
                "spec.ttlSecondsAfterFinished",
                format!("{ttl} is more than {MAX_TASK_TTL_SECONDS} seconds (a year)"),
            );
        }
    }
    if let Some(schedule) = &spec.schedule {
        if schedule.cron.trim().is_empty() || schedule.cron.len() > 256 {
            errors.push(
                "spec.schedule.cron",
                "needs a cron expression (`0 7 * * 1-5`)",
            );
        }
        if let Some(zone) = &schedule.time_zone
            && (zone.is_empty() || zone.len() > 64)
        {
            errors.push(
                "spec.schedule.timeZone",
                format!("`{zone}` is not a time zone"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec {
            targets: TaskTargets {
                clients: vec!["kiosk-1".into()],
                ..Default::default()
            },
            action: TaskActionKind::Exec,
            exec: Some(ExecSpec {
                command: vec!["true".into()],
                timeout_seconds: 60,
                working_dir: None,
            }),
            deadline_seconds: 60,
            ..Default::default()
        }
    }

    fn errors_of(spec: &TaskSpec) -> String {
        let mut errors = Errors::default();
        validate_task_spec(spec, &mut errors);
        match errors.into_result() {
            Ok(()) => String::new(),
            Err(errors) => errors.to_string(),
        }
    }

    #[test]
    fn a_valid_spec_passes_and_each_mistake_names_its_field() {
        assert_eq!(errors_of(&spec()), "");
        let mut no_targets = spec();
        no_targets.targets = TaskTargets::default();
        assert!(errors_of(&no_targets).contains("spec.targets"));
        let mut no_exec = spec();
        no_exec.exec = None;
        assert!(errors_of(&no_exec).contains("spec.exec"));
        let mut exec_on_reboot = spec();
        exec_on_reboot.action = TaskActionKind::Reboot;
        assert!(errors_of(&exec_on_reboot).contains("spec.exec"));
        let mut zero = spec();
        zero.max_concurrent = Some(IntOrPercent::Percent(0));
        assert!(errors_of(&zero).contains("spec.maxConcurrent"));
        let mut timeout = spec();
        timeout.exec.as_mut().unwrap().timeout_seconds = 0;
        assert!(errors_of(&timeout).contains("spec.exec.timeoutSeconds"));
        let mut relative = spec();
        relative.exec.as_mut().unwrap().working_dir = Some("tmp".into());
        assert!(errors_of(&relative).contains("spec.exec.workingDir"));
        let mut bad_name = spec();
        bad_name.targets.clients = vec!["Not A Name".into()];
        assert!(errors_of(&bad_name).contains("spec.targets.clients[0]"));
    }

    #[test]
    fn states_parse_any_case_and_wire_states_map_over() {
        assert_eq!(
            TaskClientState::parse("failed"),
            Some(TaskClientState::Failed)
        );
        assert_eq!(TaskClientState::parse("nope"), None);
        assert_eq!(
            TaskClientState::from(TaskRunState::Interrupted),
            TaskClientState::Interrupted
        );
        assert!(TaskClientState::Expired.is_final());
        assert!(!TaskClientState::Running.is_final());
    }
}
