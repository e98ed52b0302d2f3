//! `tasks.json`: what the agent did with each order of the controller, so that an order runs at
//! most once, across crashes and restarts.
//!
//! An entry is written (temporary file, fsync, rename: [`write_json`]) as `Started` before the
//! order's side effect begins; it becomes `Finished` with the final report, and `Reported` once
//! the controller acknowledged that report. An order whose id has an entry is never run again:
//! a redelivery is answered from the journal. Entries that are not `Reported` are never dropped;
//! of the `Reported` ones the last [`KEEP_REPORTED`] are kept, so a late redelivery stays a
//! no-op.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tc_proto::Timestamp;
use tc_proto::task::{TaskOrder, TaskReport, TaskRunState};

use crate::state::{StateDir, StateError, read_json, write_json};

/// The journal's file name in the state directory.
pub const TASKS_FILE: &str = "tasks.json";

/// Format version written into `tasks.json`; a journal from a newer agent is not trusted.
pub const TASKS_FORMAT: u32 = 1;

/// How many acknowledged entries are kept (the newest).
pub const KEEP_REPORTED: usize = 200;

/// Where an order is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryState {
    /// Journaled before its side effect; not finished.
    Started,
    /// Finished; the final report has not been acknowledged by the controller yet.
    Finished,
    /// Finished and the controller acknowledged the final report.
    Reported,
}

/// One order in the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskEntry {
    /// The order's id.
    pub id: String,
    /// The task's name.
    pub task: String,
    /// The action's name (`exec`, `reboot`, ...).
    pub action: String,
    /// Where it is.
    pub state: EntryState,
    /// The boot id when it started (`reboot` and `shutdown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The reboot or shutdown command returned successfully (the machine should go down).
    #[serde(default)]
    pub command_returned: bool,
    /// The latest report: `Running` while started, the final one after.
    pub report: TaskReport,
    /// `report` has not been acknowledged by the controller yet.
    pub unsent: bool,
}

/// The journal of orders (`tasks.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskJournal {
    /// [`TASKS_FORMAT`].
    pub format: u32,
    /// Entries in the order they were started.
    pub entries: Vec<TaskEntry>,
}

impl Default for TaskJournal {
    fn default() -> Self {
        TaskJournal {
            format: TASKS_FORMAT,
            entries: Vec::new(),
        }
    }
}

/// The path of `tasks.json` in `dir`.
pub fn path(dir: &StateDir) -> PathBuf {
    dir.root().join(TASKS_FILE)
}

impl TaskJournal {
    /// Reads the journal (empty when there is none).
    pub fn load(dir: &StateDir) -> Result<TaskJournal, StateError> {
        let path = path(dir);
        let journal = read_json::<TaskJournal>(&path)?.unwrap_or_default();
        if journal.format > TASKS_FORMAT {
            return Err(StateError::UnknownFormat {
                path,
                found: journal.format,
            });
        }
        Ok(journal)
    }

    /// Trims the acknowledged entries beyond [`KEEP_REPORTED`] and writes the journal
    /// crash-safely (mode 0600: reports may carry command output).
    pub fn save(&mut self, dir: &StateDir) -> Result<(), StateError> {
        let reported = self
            .entries
            .iter()
            .filter(|entry| entry.state == EntryState::Reported)
            .count();
        let mut excess = reported.saturating_sub(KEEP_REPORTED);
        self.entries.retain(|entry| {
            if excess > 0 && entry.state == EntryState::Reported {
                excess -= 1;
                return false;
            }
            true
        });
        write_json(&path(dir), self, 0o600)
    }

    /// The entry of `id`.
    pub fn get(&self, id: &str) -> Option<&TaskEntry> {
        self.entries.iter().find(|entry| entry.id == id)
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut TaskEntry> {
        self.entries.iter_mut().find(|entry| entry.id == id)
    }

    /// Records that `order` starts now (its report says `Running`, to be sent).
    pub fn start(&mut self, order: &TaskOrder, boot_id: Option<String>, now: Timestamp) {
        let mut report = TaskReport::new(&order.id, TaskRunState::Running);
        report.started_at = Some(now);
        self.entries.push(TaskEntry {
            id: order.id.clone(),
            task: order.task.clone(),
            action: order.action.name().to_owned(),
            state: EntryState::Started,
            boot_id,
            command_returned: false,
            report,
            unsent: true,
        });
    }

    /// Records `order` as finished without having run (refused, unknown): `report` is final.
    pub fn refuse(&mut self, order: &TaskOrder, report: TaskReport) {
        self.entries.push(TaskEntry {
            id: order.id.clone(),
            task: order.task.clone(),
            action: order.action.name().to_owned(),
            state: EntryState::Finished,
            boot_id: None,
            command_returned: false,
            report,
            unsent: true,
        });
    }

    /// Records the final report of a started order.
    pub fn finish(&mut self, id: &str, report: TaskReport) {
        if let Some(entry) = self.get_mut(id) {
            entry.state = EntryState::Finished;
            entry.report = report;
            entry.unsent = true;
        }
    }

    /// Records that the reboot or shutdown command of `id` returned successfully; `report`
    /// (still `Running`) says so.
    pub fn command_returned(&mut self, id: &str, report: TaskReport) {
        if let Some(entry) = self.get_mut(id) {
            entry.command_returned = true;
            entry.report = report;
            entry.unsent = true;
        }
    }

    /// The reports the controller has not acknowledged, oldest first, at most `max`.
    pub fn unsent(&self, max: usize) -> Vec<TaskReport> {
        self.entries
            .iter()
            .filter(|entry| entry.unsent)
            .take(max)
            .map(|entry| entry.report.clone())
            .collect()
    }

    /// True when a report waits for the controller.
    pub fn has_unsent(&self) -> bool {
        self.entries.iter().any(|entry| entry.unsent)
    }

    /// Records that the controller took (or for good refused) `sent`: an entry whose report is
    /// still the one sent is not sent again, and a final one becomes `Reported`. A report that
    /// changed since (a `Running` that finished meanwhile) stays to be sent.
    pub fn acknowledge(&mut self, sent: &[TaskReport]) {
        for report in sent {
            if let Some(entry) = self.get_mut(&report.id)
                && entry.report == *report
            {
                entry.unsent = false;
                if entry.state == EntryState::Finished {
                    entry.state = EntryState::Reported;
                }
            }
        }
    }

    /// At start: every order still `Started` was cut short by the agent's end. A reboot or a
    /// shutdown succeeded when the machine runs a new boot (`boot_id` differs from the one
    /// journaled); anything else is `Interrupted` (or `Failed` when the reboot command returned
    /// and the machine did not restart), and is not run again. Returns how many were recovered.
    pub fn recover(&mut self, boot_id: Result<&str, &str>, now: Timestamp) -> usize {
        let mut recovered = 0;
        for entry in &mut self.entries {
            if entry.state != EntryState::Started {
                continue;
            }
            recovered += 1;
            let (state, message) = recovered_outcome(entry, boot_id);
            let mut report = TaskReport::new(&entry.id, state);
            report.started_at = entry.report.started_at;
            report.finished_at = Some(now);
            report.message = Some(message);
            entry.state = EntryState::Finished;
            entry.report = report;
            entry.unsent = true;
        }
        recovered
    }
}

/// The final state of an entry found `Started` at start, given the current boot id (or why it
/// cannot be read).
fn recovered_outcome(entry: &TaskEntry, boot_id: Result<&str, &str>) -> (TaskRunState, String) {
    let power = match entry.action.as_str() {
        "reboot" => Some(("rebooted", "reboot", "restart")),
        "shutdown" => Some(("came back after shutdown", "shutdown", "go down")),
        _ => None,
    };
    let interrupted = format!(
        "the agent stopped while running `{}` and did not run it again",
        entry.action
    );
    let Some((done, action, verb)) = power else {
        return (TaskRunState::Interrupted, interrupted);
    };
    let (Some(then), Ok(now)) = (&entry.boot_id, boot_id) else {
        let why = boot_id
            .err()
            .unwrap_or("the boot id at start was not recorded");
        return (
            TaskRunState::Interrupted,
            format!("{interrupted}; cannot tell whether the machine restarted: {why}"),
        );
    };
    if then != now {
        (TaskRunState::Succeeded, done.to_owned())
    } else if entry.command_returned {
        (
            TaskRunState::Failed,
            format!(
                "the {action} command succeeded but the machine did not {verb}: the agent \
                 restarted on the same boot"
            ),
        )
    } else {
        (TaskRunState::Interrupted, interrupted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tc_proto::task::TaskAction;

    fn order(id: &str, action: TaskAction) -> TaskOrder {
        TaskOrder {
            id: id.into(),
            task: id.split('/').next().unwrap_or(id).into(),
            action,
            not_after: None,
        }
    }

    #[test]
    fn saved_journals_load_back_and_acknowledged_entries_are_bounded() {
        let temp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(temp.path());
        let mut journal = TaskJournal::default();
        let now = Timestamp::from_unix_millis(1_700_000_000_000);
        journal.start(&order("keep/1", TaskAction::CollectLogs), None, now);
        for index in 0..KEEP_REPORTED + 10 {
            let id = format!("done/{index}");
            journal.start(&order(&id, TaskAction::CollectLogs), None, now);
            let report = TaskReport::new(&id, TaskRunState::Succeeded);
            journal.finish(&id, report.clone());
            journal.acknowledge(&[report]);
        }
        journal.save(&dir).unwrap();
        let loaded = TaskJournal::load(&dir).unwrap();
        assert_eq!(loaded, journal);
        assert_eq!(loaded.entries.len(), KEEP_REPORTED + 1);
        // The unfinished one stays, the oldest acknowledged ones went.
        assert_eq!(loaded.entries[0].id, "keep/1");
        assert!(loaded.get("done/9").is_none());
        assert!(loaded.get("done/10").is_some());
        assert_eq!(loaded.unsent(64).len(), 1);
    }

    #[test]
    fn a_report_that_changed_after_it_was_sent_stays_unsent() {
        let mut journal = TaskJournal::default();
        let now = Timestamp::from_unix_millis(1);
        journal.start(&order("x/1", TaskAction::CollectLogs), None, now);
        let running = journal.unsent(64);
        assert_eq!(running[0].state, TaskRunState::Running);
        journal.finish("x/1", TaskReport::new("x/1", TaskRunState::Succeeded));
        journal.acknowledge(&running);
        assert_eq!(journal.get("x/1").unwrap().state, EntryState::Finished);
        assert_eq!(journal.unsent(64)[0].state, TaskRunState::Succeeded);
        let sent = journal.unsent(64);
        journal.acknowledge(&sent);
        assert_eq!(journal.get("x/1").unwrap().state, EntryState::Reported);
        assert!(!journal.has_unsent());
    }

    #[test]
    fn recovery_tells_reboots_from_interruptions() {
        let now = Timestamp::from_unix_millis(5);
        let mut journal = TaskJournal::default();
        journal.start(
            &order("r/new-boot", TaskAction::Reboot),
            Some("a".into()),
            now,
        );
        journal.start(
            &order("r/no-return", TaskAction::Reboot),
            Some("b".into()),
            now,
        );
        journal.start(
            &order("r/returned", TaskAction::Reboot),
            Some("b".into()),
            now,
        );
        journal.command_returned(
            "r/returned",
            TaskReport::new("r/returned", TaskRunState::Running),
        );
        journal.start(
            &order("s/new-boot", TaskAction::Shutdown),
            Some("a".into()),
            now,
        );
        journal.start(&order("c/1", TaskAction::CollectLogs), None, now);
        assert_eq!(journal.recover(Ok("b"), now), 5);
        let outcome = |id: &str| {
            let report = &journal.get(id).unwrap().report;
            (report.state, report.message.clone().unwrap())
        };
        assert_eq!(
            outcome("r/new-boot"),
            (TaskRunState::Succeeded, "rebooted".into())
        );
        assert_eq!(
            outcome("s/new-boot"),
            (TaskRunState::Succeeded, "came back after shutdown".into())
        );
        assert_eq!(outcome("r/no-return").0, TaskRunState::Interrupted);
        let (state, message) = outcome("r/returned");
        assert_eq!(state, TaskRunState::Failed);
        assert!(message.contains("did not restart"), "{message}");
        let (state, message) = outcome("c/1");
        assert_eq!(state, TaskRunState::Interrupted);
        assert!(message.contains("did not run it again"), "{message}");
        assert!(
            journal
                .entries
                .iter()
                .all(|entry| entry.state == EntryState::Finished)
        );
        assert_eq!(journal.recover(Ok("b"), now), 0);
    }

    #[test]
    fn a_journal_from_a_newer_agent_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(temp.path());
        std::fs::write(path(&dir), r#"{"format": 9, "entries": []}"#).unwrap();
        let error = TaskJournal::load(&dir).unwrap_err();
        assert!(
            matches!(error, StateError::UnknownFormat { found: 9, .. }),
            "{error}"
        );
    }
}
