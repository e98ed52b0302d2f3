//! Simulated agents answering task orders: an order seen for the first time is reported
//! started and succeeded (exit 0) in one `POST /agent/v1/tasks/report`, from a pool of
//! keep-alive connections; the time each agent received its order and the time the controller
//! acknowledged its result are kept for the benchmark.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tc_api::Timestamp;
use tc_proto::task::{TaskOrder, TaskReport, TaskReports, TaskRunState};
use tokio::sync::{mpsc, watch};

use super::http::{self, Connection};
use super::{Shared, body_start, exchange};

/// Orders to report on: the agent's index and its new orders.
pub(super) type OrderQueue =
    Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(u32, Vec<TaskOrder>)>>>;

/// Takes in orders an agent was given: the new ones are queued for a report.
pub(super) fn take_orders(shared: &Shared, agent: u32, orders: Vec<TaskOrder>) {
    if !shared.config.answer_tasks {
        return;
    }
    let fresh: Vec<TaskOrder> = {
        let mut state = shared.agents[agent as usize]
            .state
            .lock()
            .expect("agent lock");
        let fresh: Vec<TaskOrder> = orders
            .into_iter()
            .filter(|order| state.tasks_seen.iter().all(|seen| **seen != *order.id))
            .collect();
        if fresh.is_empty() {
            return;
        }
        for order in &fresh {
            state.tasks_seen.push(order.id.clone().into_boxed_str());
        }
        state.task_received_at.get_or_insert_with(Instant::now);
        fresh
    };
    shared
        .counters
        .task_orders
        .fetch_add(fresh.len() as u64, Ordering::Relaxed);
    let _ = shared.task_orders.send((agent, fresh));
}

/// Sends the reports of queued orders until `stop`.
pub(super) async fn report_worker(
    shared: Arc<Shared>,
    worker: usize,
    orders: OrderQueue,
    mut stop: watch::Receiver<bool>,
) {
    let server = shared.config.servers[worker % shared.config.servers.len()];
    let host = server.to_string();
    let mut connection: Option<Connection> = None;
    let counters = &shared.counters;
    let mut body = Vec::with_capacity(1024);
    loop {
        let next = {
            let mut receiver = tokio::select! {
                receiver = orders.lock() => receiver,
                _ = stop.wait_for(|s| *s) => return,
            };
            tokio::select! {
                next = receiver.recv() => next,
                _ = stop.wait_for(|s| *s) => return,
            }
        };
        let Some((agent, fresh)) = next else { return };
        let sim_agent = &shared.agents[agent as usize];
        let now = Timestamp::now();
        let mut reports = Vec::with_capacity(fresh.len() * 2);
        for order in &fresh {
            let mut running = TaskReport::new(order.id.clone(), TaskRunState::Running);
            running.started_at = Some(now);
            let mut done = TaskReport::new(order.id.clone(), TaskRunState::Succeeded);
            done.started_at = Some(now);
            done.finished_at = Some(now);
            done.exit_code = Some(0);
            done.stdout = format!("{} ok\n", sim_agent.name);
            reports.push(running);
            reports.push(done);
        }
        body.clear();
        serde_json::to_writer(&mut body, &TaskReports { reports }).expect("reports serialize");
        let request = http::build_request(
            "POST",
            "/agent/v1/tasks/report",
            &host,
            Some(&sim_agent.token),
            Some("application/json"),
            &body,
        );
        let result = tokio::select! {
            result = exchange(&mut connection, server, shared.config.tls.as_ref(), &request, shared.config.request_timeout) => result,
            _ = stop.wait_for(|s| *s) => return,
        };
        match result {
            Ok(response) if response.status == 200 => {
                counters.task_reports.fetch_add(1, Ordering::Relaxed);
                sim_agent
                    .state
                    .lock()
                    .expect("agent lock")
                    .task_recorded_at
                    .get_or_insert_with(Instant::now);
            }
            Ok(response) => shared.error(&counters.task_report_errors, || {
                format!(
                    "task report of {}: HTTP {}: {}",
                    sim_agent.name,
                    response.status,
                    body_start(&response.body)
                )
            }),
            Err(error) => shared.error(&counters.task_report_errors, || {
                format!("task report of {}: {error}", sim_agent.name)
            }),
        }
    }
}
