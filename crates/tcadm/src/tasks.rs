//! Remote operations: the `Task` table, `tcadm describe task`, the lines `tcadm run` prints
//! for each client and the tasks section of `tcadm describe client`.

use std::fmt::Write as _;

use tc_api::task::{Task, TaskClientState, TaskResult, TaskRunStatus};
use tc_api::{Event, Timestamp};

use crate::format::{Table, age};
use crate::output::one_line;

/// Most clients `describe task` lists of a run.
pub const MAX_DESCRIBED_RESULTS: usize = 50;

/// Most failed clients whose output `describe task` shows.
pub const MAX_DESCRIBED_FAILURES: usize = 5;

/// Most lines of each output tail `describe task` shows.
const MAX_TAIL_LINES: usize = 5;

/// Most results `describe client` lists.
pub const MAX_CLIENT_TASKS: usize = 10;

/// What a task targets, in a few words (`-l room=101`, `3 clients`, `group front-desk`).
pub fn targets_text(task: &Task) -> String {
    let targets = &task.spec.targets;
    let mut parts = Vec::new();
    if let Some(selector) = &targets.selector {
        let text = selector.to_string();
        parts.push(if text.is_empty() {
            "every client".to_string()
        } else {
            format!("-l {text}")
        });
    }
    match targets.clients.len() {
        0 => {}
        1 => parts.push(format!("client {}", targets.clients[0])),
        n => parts.push(format!("{n} clients")),
    }
    if let Some(group) = &targets.group {
        parts.push(format!("group {group}"));
    }
    parts.join(", ")
}

/// `SUCCEEDED/TARGETS` and the other counts of a run, in the table's columns.
fn run_columns(run: Option<&TaskRunStatus>) -> [String; 4] {
    match run {
        None => ["-".into(), "-".into(), "-".into(), "-".into()],
        Some(run) => [
            format!("{}/{}", run.succeeded, run.targets),
            (run.pending + run.running).to_string(),
            (run.failed + run.expired + run.interrupted).to_string(),
            if run.completed_at.is_some() {
                "Complete".into()
            } else {
                "Running".into()
            },
        ],
    }
}

/// `tcadm get tasks`.
pub fn tasks_table(tasks: &[Task], wide: bool, now: Timestamp) -> Table {
    let mut headers = vec![
        "NAME",
        "ACTION",
        "TARGETS",
        "SUCCEEDED",
        "ACTIVE",
        "FAILED",
        "STATUS",
        "AGE",
    ];
    if wide {
        headers.extend(["SCHEDULE", "NEXT RUN"]);
    }
    let mut table = Table::new(&headers);
    for task in tasks {
        let status = task.status.clone().unwrap_or_default();
        let [succeeded, active, failed, state] = run_columns(status.runs.first());
        let mut row = vec![
            task.metadata.name.clone(),
            task.spec.action.to_string(),
            targets_text(task),
            succeeded,
            active,
            failed,
            state,
            age(task.metadata.creation_timestamp, now, "<unknown>"),
        ];
        if wide {
            let schedule = task.spec.schedule.as_ref();
            row.push(schedule.map_or_else(
                || "<none>".into(),
                |s| format!("{} {}", s.cron, s.time_zone.as_deref().unwrap_or("UTC")),
            ));
            row.push(
                status
                    .next_run_time
                    .map_or_else(|| "<none>".into(), |t| t.to_string()),
            );
        }
        table.push(row);
    }
    table
}

/// `tcadm describe task NAME`: the spec, each run's counts, the newest run's results (a row per
/// client, the output of the first failures) and the events.
pub fn describe_task(task: &Task, sample: &RunSample, events: &[Event], now: Timestamp) -> String {
    let mut out = String::new();
    let spec = &task.spec;
    let _ = writeln!(out, "Name:         {}", task.metadata.name);
    let _ = writeln!(out, "Action:       {}", spec.action);
    if let Some(exec) = &spec.exec {
        let _ = writeln!(out, "Command:      {}", exec.command.join(" "));
        let _ = writeln!(out, "Timeout:      {}s", exec.timeout_seconds);
    }
    let _ = writeln!(out, "Targets:      {}", targets_text(task));
    if let Some(max) = spec.max_concurrent {
        let _ = writeln!(out, "Concurrency:  {max}");
    }
    let _ = writeln!(
        out,
        "Deadline:     {}s after each run starts",
        spec.deadline_seconds
    );
    if let Some(schedule) = &spec.schedule {
        let _ = writeln!(
            out,
            "Schedule:     {} ({}){}",
            schedule.cron,
            schedule.time_zone.as_deref().unwrap_or("UTC"),
            if spec.suspend { ", suspended" } else { "" }
        );
    }
    let _ = writeln!(
        out,
        "Age:          {}",
        age(task.metadata.creation_timestamp, now, "<unknown>")
    );
    let status = task.status.clone().unwrap_or_default();
    if let Some(next) = status.next_run_time {
        let _ = writeln!(out, "Next run:     {next}");
    }
    let _ = writeln!(out, "Runs:");
    if status.runs.is_empty() {
        let _ = writeln!(out, "  <none>");
    }
    for run in &status.runs {
        let _ = writeln!(
            out,
            "  {} (started {}): {} targets: {} pending, {} running, {} succeeded, {} failed, {} expired, {} interrupted",
            run.run,
            run.started_at,
            run.targets,
            run.pending,
            run.running,
            run.succeeded,
            run.failed,
            run.expired,
            run.interrupted
        );
    }
    if let Some(newest) = status.runs.first() {
        describe_results(&mut out, newest, sample);
    }
    let _ = writeln!(out, "Events:");
    if events.is_empty() {
        let _ = writeln!(out, "  <none>");
    }
    for event in events {
        let _ = writeln!(
            out,
            "  {:<8} {:<20} {}",
            format!("{:?}", event.type_),
            event.reason,
            event.message
        );
    }
    out
}

/// What `describe task` shows of the newest run: its first clients by name and its first
/// failures (the counts of the run's status tell how many more there are).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSample {
    /// At most [`MAX_DESCRIBED_RESULTS`] results, by client name.
    pub first: Vec<TaskResult>,
    /// At most [`MAX_DESCRIBED_FAILURES`] failed results, by client name.
    pub failures: Vec<TaskResult>,
}

/// The newest run's results in `describe task`: a table of the first clients, then the output
/// tails of the first failures, each with the count of those not shown.
fn describe_results(out: &mut String, run: &TaskRunStatus, sample: &RunSample) {
    let _ = writeln!(out, "Results of run {}:", run.run);
    if sample.first.is_empty() {
        let _ = writeln!(out, "  <none>");
        return;
    }
    let mut table = Table::new(&["CLIENT", "STATE", "EXIT", "MESSAGE"]);
    let shown = &sample.first[..sample.first.len().min(MAX_DESCRIBED_RESULTS)];
    for result in shown {
        table.push(vec![
            result.client.clone(),
            result.state.as_str().to_string(),
            result
                .exit_code
                .map_or_else(|| "-".into(), |code| code.to_string()),
            detail_text(result),
        ]);
    }
    for line in table.render().lines() {
        let _ = writeln!(out, "  {line}");
    }
    let total = sample.first.len().max(run.targets as usize);
    if total > shown.len() {
        let _ = writeln!(out, "  ... {} more", total - shown.len());
    }
    if sample.failures.is_empty() {
        return;
    }
    let _ = writeln!(out, "Output of failures:");
    let shown = &sample.failures[..sample.failures.len().min(MAX_DESCRIBED_FAILURES)];
    for result in shown {
        let _ = writeln!(out, "  {}:", result.client);
        if result.stdout.is_empty() && result.stderr.is_empty() {
            let _ = writeln!(out, "    <no output>");
        }
        for (name, text) in [("stdout", &result.stdout), ("stderr", &result.stderr)] {
            write_tail(out, name, text, Some(MAX_TAIL_LINES), 4);
        }
    }
    let total = sample.failures.len().max(run.failed as usize);
    if total > shown.len() {
        let _ = writeln!(out, "  ... {} more", total - shown.len());
    }
}

/// `NAME:` and the last `max_lines` lines of `text` (all when `None`), indented; nothing for
/// an empty text.
fn write_tail(out: &mut String, name: &str, text: &str, max_lines: Option<usize>, indent: usize) {
    if text.is_empty() {
        return;
    }
    let lines: Vec<&str> = text.lines().collect();
    let skip = max_lines.map_or(0, |max| lines.len().saturating_sub(max));
    let pad = " ".repeat(indent);
    let _ = writeln!(out, "{pad}{name}:");
    if skip > 0 {
        let _ = writeln!(out, "{pad}  ... {skip} earlier lines");
    }
    for line in &lines[skip..] {
        let _ = writeln!(out, "{pad}  {line}");
    }
}

/// What a result says besides its state: who sent a wake, and the message.
fn detail_text(result: &TaskResult) -> String {
    let mut parts = Vec::new();
    if let Some(by) = &result.by {
        parts.push(format!("sent by {by}"));
    }
    if let Some(message) = &result.message {
        parts.push(message.clone());
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

/// The lines `tcadm run` prints for a client that finished: `CLIENT  STATE  exit N  (message)`
/// with the client padded to `width`, then its stdout and stderr tails indented.
pub fn result_text(result: &TaskResult, width: usize) -> String {
    let mut line = format!("{:<width$}  {:<11}", result.client, result.state.as_str());
    if let Some(code) = result.exit_code {
        let _ = write!(line, "  exit {code}");
    }
    if let Some(by) = &result.by {
        let _ = write!(line, "  by {by}");
    }
    if let Some(message) = &result.message {
        let _ = write!(line, "  ({})", one_line(message));
    }
    let mut out = line.trim_end().to_string();
    out.push('\n');
    write_tail(&mut out, "stdout", &result.stdout, None, 4);
    write_tail(&mut out, "stderr", &result.stderr, None, 4);
    out
}

/// The final states of a run's targets, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Succeeded.
    pub succeeded: usize,
    /// Failed.
    pub failed: usize,
    /// Expired.
    pub expired: usize,
    /// Interrupted.
    pub interrupted: usize,
    /// Still pending or running.
    pub unfinished: usize,
}

impl Summary {
    /// Counts `results`.
    pub fn of(results: &[TaskResult]) -> Summary {
        let mut summary = Summary::default();
        for result in results {
            match result.state {
                TaskClientState::Succeeded => summary.succeeded += 1,
                TaskClientState::Failed => summary.failed += 1,
                TaskClientState::Expired => summary.expired += 1,
                TaskClientState::Interrupted => summary.interrupted += 1,
                TaskClientState::Pending | TaskClientState::Running => summary.unfinished += 1,
            }
        }
        summary
    }

    /// True when there were targets and every one succeeded.
    pub fn all_succeeded(&self) -> bool {
        self.succeeded > 0 && self.failed + self.expired + self.interrupted + self.unfinished == 0
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} succeeded, {} failed, {} expired, {} interrupted",
            self.succeeded, self.failed, self.expired, self.interrupted
        )?;
        if self.unfinished > 0 {
            write!(f, ", {} not finished", self.unfinished)?;
        }
        Ok(())
    }
}

/// The `Tasks:` table of `describe client`: the newest [`MAX_CLIENT_TASKS`] results.
pub fn client_tasks_table(results: &[TaskResult], now: Timestamp) -> Table {
    let mut table = Table::new(&["TASK", "RUN", "STATE", "EXIT", "MESSAGE"]);
    for result in results.iter().take(MAX_CLIENT_TASKS) {
        table.push(vec![
            result.task.clone(),
            age(
                Some(Timestamp::from_unix_millis(result.run)),
                now,
                "<unknown>",
            ) + " ago",
            result.state.as_str().to_string(),
            result
                .exit_code
                .map_or_else(|| "-".into(), |code| code.to_string()),
            detail_text(result),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(client: &str, state: TaskClientState) -> TaskResult {
        TaskResult {
            task: "t".into(),
            run: 1_000,
            client: client.into(),
            state,
            ..Default::default()
        }
    }

    #[test]
    fn a_finished_client_is_a_line_and_its_output_tails_indented() {
        let mut failed = result("kiosk-1", TaskClientState::Failed);
        failed.exit_code = Some(3);
        failed.message = Some("exited 3".into());
        failed.stdout = "a\nb\n".into();
        failed.stderr = "no kiosk\n".into();
        assert_eq!(
            result_text(&failed, 9),
            "kiosk-1    Failed       exit 3  (exited 3)\n    stdout:\n      a\n      b\n    \
             stderr:\n      no kiosk\n"
        );
        let mut woken = result("pc-2", TaskClientState::Succeeded);
        woken.by = Some("pc-1".into());
        assert_eq!(result_text(&woken, 4), "pc-2  Succeeded    by pc-1\n");
    }

    #[test]
    fn the_summary_counts_final_states_and_judges_the_run() {
        let mut results = vec![
            result("a", TaskClientState::Succeeded),
            result("b", TaskClientState::Succeeded),
        ];
        let summary = Summary::of(&results);
        assert!(summary.all_succeeded());
        assert_eq!(
            summary.to_string(),
            "2 succeeded, 0 failed, 0 expired, 0 interrupted"
        );
        results.push(result("c", TaskClientState::Expired));
        results.push(result("d", TaskClientState::Running));
        let summary = Summary::of(&results);
        assert!(!summary.all_succeeded());
        assert_eq!(
            summary.to_string(),
            "2 succeeded, 0 failed, 1 expired, 0 interrupted, 1 not finished"
        );
        assert!(!Summary::of(&[]).all_succeeded());
    }

    #[test]
    fn describe_lists_the_newest_run_capped_and_the_output_of_failures() {
        let task: Task = serde_json::from_value(serde_json::json!({
            "apiVersion": "thinfleet.io/v1", "kind": "Task", "metadata": { "name": "t" },
            "spec": { "targets": { "selector": {} }, "action": "exec",
                      "exec": { "command": ["false"] } },
            "status": { "runs": [{ "run": 1000, "startedAt": "2026-12-06T10:00:00Z",
                "deadline": "2026-12-06T11:00:00Z", "targets": 60, "pending": 0, "running": 0,
                "succeeded": 0, "failed": 60, "expired": 0, "interrupted": 0 }] }
        }))
        .unwrap();
        let results: Vec<TaskResult> = (0..60)
            .map(|i| {
                let mut r = result(&format!("pc-{i:02}"), TaskClientState::Failed);
                r.exit_code = Some(1);
                r.stderr = (0..8).map(|l| format!("line {l}\n")).collect();
                r
            })
            .collect();
        let sample = RunSample {
            first: results[..MAX_DESCRIBED_RESULTS].to_vec(),
            failures: results[..MAX_DESCRIBED_FAILURES].to_vec(),
        };
        let text = describe_task(&task, &sample, &[], Timestamp::from_unix_millis(2_000));
        assert!(text.contains("Results of run 1000:"), "{text}");
        assert!(text.contains("  pc-00    Failed   1      -\n"), "{text}");
        assert!(
            text.contains("  pc-49 ") && !text.contains("  pc-50 "),
            "{text}"
        );
        assert!(text.contains("  ... 10 more\n"), "{text}");
        assert!(text.contains("Output of failures:\n  pc-00:\n    stderr:\n      ... 3 earlier lines\n      line 3\n"), "{text}");
        assert!(text.contains("  ... 55 more\n"), "{text}");
    }

    #[test]
    fn the_tasks_of_a_client_are_the_newest_ten() {
        let results: Vec<TaskResult> = (0..12)
            .map(|i| {
                let mut r = result("pc-1", TaskClientState::Succeeded);
                r.task = format!("task-{i}");
                r.exit_code = Some(0);
                r
            })
            .collect();
        let table = client_tasks_table(&results, Timestamp::from_unix_millis(61_000));
        assert_eq!(table.rows.len(), 10);
        assert_eq!(table.rows[0], ["task-0", "60s ago", "Succeeded", "0", "-"]);
    }
}
