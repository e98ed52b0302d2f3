//! Remote operations (`Task`s) on the wire: the orders the controller hands an agent in its
//! heartbeat and long-poll answers, and the reports the agent sends back with
//! `POST /agent/v1/tasks/report`.
//!
//! An order is identified by its [`TaskOrder::id`] (`<task>/<run>` for an action the client
//! carries out on itself, `<task>/<run>/wake/<target>` when it wakes a neighbour). The agent
//! journals that it started an order before it carries it out, so an order is run at most once
//! per client, across crashes: an order delivered again is answered from the journal, and one
//! that was started when the agent died is reported [`TaskRunState::Interrupted`] (a reboot or a
//! shutdown is [`TaskRunState::Succeeded`] when the agent comes back on a new boot).
//!
//! Both sides accept unknown fields, and an agent that does not know an action reads it as
//! [`TaskAction::Unknown`] and reports it failed, so neighbouring versions interoperate.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// The most bytes of stdout and of stderr a report carries (the tail of each).
pub const MAX_TASK_OUTPUT_BYTES: usize = 4096;

/// The most bytes of logs a `collectLogs` report carries (the tail).
pub const MAX_TASK_LOGS_BYTES: usize = 512 * 1024;

/// The most reports one `POST /agent/v1/tasks/report` carries.
pub const MAX_TASK_REPORTS: usize = 64;

/// The most bytes of an order or report id.
pub const MAX_TASK_ID_BYTES: usize = 300;

/// Longest `exec` timeout (one day).
pub const MAX_EXEC_TIMEOUT_SECONDS: u32 = 86_400;

/// One thing the controller asks an agent to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TaskOrder {
    /// Unique per client and run: the agent runs an id at most once.
    pub id: String,
    /// The task's name, for logs.
    pub task: String,
    /// What to do.
    pub action: TaskAction,
    /// Do not start after this time (the run's deadline): report nothing, the controller counts
    /// the client as expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Timestamp>,
}

/// What an order does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum TaskAction {
    /// Restart the machine with the platform's command (the agent's `rebootCommand`).
    Reboot,
    /// Power the machine off (the agent's `shutdownCommand`).
    Shutdown,
    /// Send a Wake-on-LAN magic packet for a neighbour on this client's network segment.
    Wake(WakeOrder),
    /// Run a command.
    Exec(ExecOrder),
    /// Send the agent's recent log and its journal.
    CollectLogs,
    /// An action this build does not know (from a newer controller): reported failed.
    #[serde(other)]
    Unknown,
}

impl TaskAction {
    /// The action's name as manifests and `allowedTasks` spell it.
    pub fn name(&self) -> &'static str {
        match self {
            TaskAction::Reboot => "reboot",
            TaskAction::Shutdown => "shutdown",
            TaskAction::Wake(_) => "wake",
            TaskAction::Exec(_) => "exec",
            TaskAction::CollectLogs => "collectLogs",
            TaskAction::Unknown => "unknown",
        }
    }
}

/// A Wake-on-LAN packet to send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct WakeOrder {
    /// The client to wake, for the report.
    pub target: String,
    /// Its hardware address (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    /// The broadcast address of the segment the two share (`192.0.2.255`).
    pub broadcast: String,
}

/// A command to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ExecOrder {
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    /// Killed (with its whole process group) after this many seconds.
    pub timeout_seconds: u32,
    /// Working directory; the agent's state directory's `tasks/` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

/// Where a client is with one order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum TaskRunState {
    /// Started (journaled), not finished yet; a reboot waits for the new boot.
    Running,
    /// Done: exit code 0, the packet sent, the logs sent, the machine rebooted.
    Succeeded,
    /// Done and failed: a non-zero exit, a timeout, a refused or unknown action.
    Failed,
    /// The agent stopped (crash, power loss) while it was running the order; it was not run
    /// again.
    Interrupted,
}

impl TaskRunState {
    /// True once nothing more will happen.
    pub fn is_final(self) -> bool {
        !matches!(self, TaskRunState::Running)
    }
}

/// What an agent says about one order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TaskReport {
    /// The order's id.
    pub id: String,
    /// Where it is.
    pub state: TaskRunState,
    /// When the agent started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it ended (final states).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// The command's exit code (`exec`; absent when it was killed by a signal or timed out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The tail of stdout (at most [`MAX_TASK_OUTPUT_BYTES`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    /// The tail of stderr (at most [`MAX_TASK_OUTPUT_BYTES`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// Why, in a sentence (`timed out after 60 s`, `exec is not in allowedTasks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `collectLogs`: the tail of the agent's log and its journal (at most
    /// [`MAX_TASK_LOGS_BYTES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
}

impl TaskReport {
    /// A report with only an id and a state.
    pub fn new(id: impl Into<String>, state: TaskRunState) -> TaskReport {
        TaskReport {
            id: id.into(),
            state,
            started_at: None,
            finished_at: None,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            message: None,
            logs: None,
        }
    }
}

/// Body of `POST /agent/v1/tasks/report`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TaskReports {
    /// At most [`MAX_TASK_REPORTS`].
    pub reports: Vec<TaskReport>,
}

/// Checks what an agent reports is within bounds; the error names the field.
pub fn check_reports(reports: &TaskReports) -> Result<(), String> {
    if reports.reports.len() > MAX_TASK_REPORTS {
        return Err(format!(
            "reports: {} reports, at most {MAX_TASK_REPORTS}",
            reports.reports.len()
        ));
    }
    for (index, report) in reports.reports.iter().enumerate() {
        let at = |field: &str| format!("reports[{index}].{field}");
        if report.id.is_empty() || report.id.len() > MAX_TASK_ID_BYTES {
            return Err(format!(
                "{}: must be 1 to {MAX_TASK_ID_BYTES} bytes",
                at("id")
            ));
        }
        for (field, text) in [("stdout", &report.stdout), ("stderr", &report.stderr)] {
            if text.len() > MAX_TASK_OUTPUT_BYTES {
                return Err(format!(
                    "{}: {} bytes, at most {MAX_TASK_OUTPUT_BYTES}",
                    at(field),
                    text.len()
                ));
            }
        }
        if let Some(message) = &report.message
            && message.len() > crate::limits::MAX_MESSAGE_BYTES
        {
            return Err(format!(
                "{}: {} bytes, at most {}",
                at("message"),
                message.len(),
                crate::limits::MAX_MESSAGE_BYTES
            ));
        }
        if let Some(logs) = &report.logs
            && logs.len() > MAX_TASK_LOGS_BYTES
        {
            return Err(format!(
                "{}: {} bytes, at most {MAX_TASK_LOGS_BYTES}",
                at("logs"),
                logs.len()
            ));
        }
    }
    Ok(())
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_round_trip_and_unknown_actions_are_read_as_unknown() {
        let order = TaskOrder {
            id: "restart/1700000000000".into(),
            task: "restart".into(),
            action: TaskAction::Exec(ExecOrder {
                command: vec!["systemctl".into(), "restart".into(), "kiosk".into()],
                timeout_seconds: 60,
                working_dir: None,
            }),
            not_after: Some(Timestamp::from_unix_millis(1_700_000_600_000)),
        };
        let json = serde_json::to_string(&order).unwrap();
        assert!(json.contains(r#""type":"exec""#), "{json}");
        assert_eq!(serde_json::from_str::<TaskOrder>(&json).unwrap(), order);
        let newer =
            r#"{"id":"x/1","task":"x","action":{"type":"flash","firmware":"v2"},"extra":1}"#;
        let read: TaskOrder = serde_json::from_str(newer).unwrap();
        assert_eq!(read.action, TaskAction::Unknown);
        let reboot: TaskOrder =
            serde_json::from_str(r#"{"id":"r/1","task":"r","action":{"type":"reboot"}}"#).unwrap();
        assert_eq!(reboot.action, TaskAction::Reboot);
    }

    #[test]
    fn reports_beyond_the_bounds_are_refused_naming_the_field() {
        let mut reports = TaskReports {
            reports: vec![TaskReport::new("t/1", TaskRunState::Succeeded)],
        };
        assert!(check_reports(&reports).is_ok());
        reports.reports[0].stdout = "x".repeat(MAX_TASK_OUTPUT_BYTES + 1);
        assert!(
            check_reports(&reports)
                .unwrap_err()
                .contains("reports[0].stdout")
        );
        reports.reports[0].stdout.clear();
        reports.reports[0].id.clear();
        assert!(
            check_reports(&reports)
                .unwrap_err()
                .contains("reports[0].id")
        );
        let many = TaskReports {
            reports: vec![TaskReport::new("t/1", TaskRunState::Running); MAX_TASK_REPORTS + 1],
        };
        assert!(check_reports(&many).is_err());
    }

    #[test]
    fn tails_cut_at_character_boundaries() {
        assert_eq!(tail("hello", 10), "hello");
        assert_eq!(tail("hello", 3), "llo");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }
}
