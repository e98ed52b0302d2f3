//! `POST /agent/v1/tasks/report`: what agents say about their orders.
//!
//! A client reports only orders it was given: its own (`task/run`) or the wakes it sends
//! (`task/run/wake/target`); anything else is ignored (and answered, so that the agent stops
//! sending it: an order of a deleted task or of a dropped run). A state that moves nothing (a
//! second `Running`, a report after the final one) is ignored too, so redelivery is harmless.
//! The new states are stored before the answer; only then does the book move.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use tc_api::Timestamp;
use tc_api::task::{TaskClientState, TaskResult};
use tc_proto::task::{TaskReports, check_reports};

use crate::Controller;
use crate::enroll::AuthenticatedClient;
use crate::error::ApiError;

/// An order id taken apart: task, run, and the target of a wake.
fn parse_id(id: &str) -> Option<(&str, u64, Option<&str>)> {
    let mut parts = id.splitn(4, '/');
    let task = parts.next()?;
    let run = parts.next()?.parse().ok()?;
    match (parts.next(), parts.next()) {
        (None, None) => Some((task, run, None)),
        (Some("wake"), Some(target)) if !target.is_empty() => Some((task, run, Some(target))),
        _ => None,
    }
}

/// Whether a report moves a target from `current` to `new`.
fn moves(current: TaskClientState, new: TaskClientState) -> bool {
    match current {
        TaskClientState::Pending => true,
        TaskClientState::Running => new != TaskClientState::Running,
        // Started just before the deadline, or its result came late: the result is the truth (a
        // late `Running` changes nothing, the run may be complete already).
        TaskClientState::Expired => new.is_final(),
        _ => false,
    }
}

/// One accepted report: where it goes in the book and what is stored.
struct Accepted {
    task: String,
    run: u64,
    index: usize,
    executor: String,
    id: String,
    state: TaskClientState,
}

/// `POST /agent/v1/tasks/report`.
pub async fn report(
    State(controller): State<Arc<Controller>>,
    AuthenticatedClient(slot): AuthenticatedClient,
    Json(body): Json<TaskReports>,
) -> Result<Json<Value>, ApiError> {
    check_reports(&body).map_err(ApiError::bad_request)?;
    let now = Timestamp::now();
    let client = &*slot.name;
    let mut accepted = Vec::new();
    let mut results = Vec::new();
    let mut logs = Vec::new();
    {
        let book = controller.tasks.book.lock().expect("task book");
        for report in body.reports {
            let Some((task, run_id, wake_target)) = parse_id(&report.id) else {
                continue;
            };
            let target = wake_target.unwrap_or(client);
            let Some(run) = book.run(task, Some(run_id)) else {
                continue;
            };
            let Some(index) = run.target(target) else {
                continue;
            };
            // Only the client the order was given to reports on it.
            if run.executor(index) != client || run.order_id(index) != report.id {
                continue;
            }
            let state = TaskClientState::from(report.state);
            if !moves(run.clients[index].state, state)
                || accepted
                    .iter()
                    .any(|a: &Accepted| a.id == report.id && a.state.is_final())
            {
                continue;
            }
            // A later report of this request on the same order supersedes an earlier one
            // (`Running` then the result): only the last is stored.
            if let Some(earlier) = accepted.iter().position(|a: &Accepted| a.id == report.id) {
                accepted.remove(earlier);
                results.remove(earlier);
                logs.retain(|(index, _)| *index != earlier);
                for (index, _) in logs.iter_mut() {
                    if *index > earlier {
                        *index -= 1;
                    }
                }
            }
            let has_logs = report.logs.is_some();
            if let Some(text) = report.logs {
                logs.push((results.len(), text));
            }
            results.push(TaskResult {
                task: task.to_owned(),
                run: run_id,
                client: target.to_owned(),
                state,
                by: wake_target.map(|_| client.to_owned()),
                started_at: report.started_at,
                finished_at: report
                    .finished_at
                    .or_else(|| state.is_final().then_some(now)),
                exit_code: report.exit_code,
                stdout: report.stdout,
                stderr: report.stderr,
                message: report.message,
                has_logs,
            });
            accepted.push(Accepted {
                task: task.to_owned(),
                run: run_id,
                index,
                executor: client.to_owned(),
                id: report.id,
                state,
            });
        }
    }
    let count = accepted.len();
    controller
        .tasks
        .writer
        .write(results, logs)
        .await
        .map_err(|error| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot store the task reports: {error}"),
            )
        })?;
    {
        let mut book = controller.tasks.book.lock().expect("task book");
        for accepted in &accepted {
            if let Some(run) = book.run_mut(&accepted.task, accepted.run) {
                let entry = &mut run.clients[accepted.index];
                if moves(entry.state, accepted.state) {
                    entry.state = accepted.state;
                    entry.offered = false;
                    run.dirty = true;
                }
            }
        }
    }
    for accepted in &accepted {
        controller.tasks.withdraw(&accepted.executor, &accepted.id);
    }
    if count > 0 {
        controller.tasks.wake.notify_one();
    }
    Ok(Json(json!({ "accepted": count })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_taken_apart_and_malformed_ones_refused() {
        assert_eq!(parse_id("restart/17"), Some(("restart", 17, None)));
        assert_eq!(
            parse_id("wake-floor/17/wake/kiosk-1"),
            Some(("wake-floor", 17, Some("kiosk-1")))
        );
        assert_eq!(parse_id("restart"), None);
        assert_eq!(parse_id("restart/x"), None);
        assert_eq!(parse_id("restart/17/other/kiosk-1"), None);
        assert_eq!(parse_id("restart/17/wake/"), None);
    }

    #[test]
    fn only_forward_moves_are_taken() {
        use TaskClientState::*;
        assert!(moves(Pending, Running));
        assert!(moves(Running, Succeeded));
        assert!(!moves(Running, Running));
        assert!(!moves(Succeeded, Failed));
        assert!(!moves(Interrupted, Running));
        assert!(!moves(Expired, Running));
        assert!(moves(Expired, Succeeded));
    }
}
