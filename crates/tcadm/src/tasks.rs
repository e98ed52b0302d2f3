//! Remote operations: the `Task` table and `tcadm describe task`.

use std::fmt::Write as _;

use tc_api::task::{Task, TaskRunStatus};
use tc_api::{Event, Timestamp};

use crate::format::{Table, age};

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

/// `tcadm describe task NAME`: the spec, each run's counts and the events.
pub fn describe_task(task: &Task, events: &[Event], now: Timestamp) -> String {
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
