//! The task runner: its own loop beside the install engine's. It takes the orders of heartbeat
//! and long-poll answers, journals each one before running it, runs up to
//! [`MAX_CONCURRENT`] at a time (never one id twice), and sends the reports until the controller
//! took them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tc_proto::Timestamp;
use tc_proto::task::{
    MAX_TASK_REPORTS, TaskAction, TaskOrder, TaskReport, TaskReports, TaskRunState,
};
use tokio::sync::mpsc;
use tokio::task::{Id, JoinHandle, JoinSet};
use tokio::time::Instant;

use super::actions;
use super::journal::TaskJournal;
use crate::backoff::{Backoff, Retry};
use crate::client::{ApiError, ControllerClient};
use crate::config::tasks::TaskConfig;
use crate::download::Fetcher;
use crate::state::{StateDir, StateError};

/// Orders run at the same time.
pub const MAX_CONCURRENT: usize = 4;

/// Orders waiting for a free slot; more are dropped (the controller sends them again).
pub const MAX_QUEUED: usize = 64;

/// What a running order ended with.
enum Outcome {
    /// Its final report.
    Final(TaskReport),
    /// The reboot or shutdown command returned: the result comes with the next boot.
    GoingDown(TaskReport),
}

type Sending = JoinHandle<(Vec<TaskReport>, Result<(), ApiError>)>;

/// Runs the controller's orders (see the module documentation).
pub struct TaskRunner {
    config: TaskConfig,
    dir: StateDir,
    journal: TaskJournal,
    controller: ControllerClient,
    /// Holds the current session token.
    session: Fetcher,
    retry: Retry,
    running: JoinSet<(String, Outcome)>,
    running_ids: HashMap<Id, String>,
    queue: VecDeque<TaskOrder>,
    queued_ids: HashSet<String>,
    sending: Option<Sending>,
    send_after: Option<Instant>,
}

impl TaskRunner {
    /// Opens the journal and recovers the orders a previous run left started (see
    /// [`TaskJournal::recover`]). A journal that cannot be decoded is set aside as
    /// `tasks.json.corrupt` (it is never torn by a crash: only a hand edit breaks it).
    pub fn open(
        dir: StateDir,
        config: TaskConfig,
        controller: ControllerClient,
        session: Fetcher,
        backoff: Backoff,
    ) -> Result<TaskRunner, StateError> {
        let path = super::journal::path(&dir);
        let mut journal = match TaskJournal::load(&dir) {
            Ok(journal) => journal,
            Err(StateError::Corrupt { path, source }) => {
                let aside = path.with_extension("json.corrupt");
                tracing::error!(path = %path.display(), error = %source, aside = %aside.display(),
                    "the tasks journal is corrupt: set aside, starting with an empty one");
                std::fs::rename(&path, &aside).map_err(StateError::io(&path))?;
                TaskJournal::default()
            }
            Err(error) => return Err(error),
        };
        let boot_id = actions::boot_id(&config.boot_id_file);
        let recovered =
            journal.recover(boot_id.as_deref().map_err(String::as_str), Timestamp::now());
        if recovered > 0 {
            tracing::warn!(
                orders = recovered,
                "orders were cut short by the agent's last stop; they are not run again"
            );
            journal.save(&dir)?;
        } else if !path.exists() {
            journal.save(&dir)?;
        }
        Ok(TaskRunner {
            config,
            dir,
            journal,
            controller,
            session,
            retry: Retry::new(backoff),
            running: JoinSet::new(),
            running_ids: HashMap::new(),
            queue: VecDeque::new(),
            queued_ids: HashSet::new(),
            sending: None,
            send_after: None,
        })
    }

    /// Runs orders from `orders` and reports on them, forever.
    pub async fn run(mut self, mut orders: mpsc::Receiver<Vec<TaskOrder>>) {
        let mut open = true;
        loop {
            self.start_queued();
            self.start_sending();
            let wait = self
                .send_after
                .filter(|_| self.sending.is_none() && self.journal.has_unsent());
            tokio::select! {
                received = orders.recv(), if open => match received {
                    Some(batch) => self.accept(batch),
                    None => open = false,
                },
                Some(joined) = self.running.join_next_with_id(), if !self.running.is_empty() => {
                    self.finished(joined);
                }
                sent = async { self.sending.as_mut().expect("guarded").await }, if self.sending.is_some() => {
                    self.sending = None;
                    self.sent(sent);
                }
                () = sleep_until(wait), if wait.is_some() => {}
                // No order can come and nothing is running or to be sent.
                else => std::future::pending::<()>().await,
            }
        }
    }

    /// Takes a batch of orders: journaled ones are answered from the journal (their unsent
    /// reports go out anyway), expired ones are ignored, refused ones are journaled as failed,
    /// the others queued.
    fn accept(&mut self, batch: Vec<TaskOrder>) {
        let now = Timestamp::now();
        let mut changed = false;
        for order in batch {
            if self.journal.get(&order.id).is_some() || self.queued_ids.contains(&order.id) {
                continue;
            }
            if order.not_after.is_some_and(|deadline| deadline < now) {
                tracing::debug!(id = %order.id, "order past its deadline: not run");
                continue;
            }
            let action = order.action.name();
            let refusal = match &order.action {
                TaskAction::Unknown => Some("this agent does not know the action".to_owned()),
                _ if !self.config.allows(action) => {
                    Some(format!("`{action}` is not in this agent's allowedTasks"))
                }
                _ => None,
            };
            if let Some(message) = refusal {
                tracing::warn!(id = %order.id, task = %order.task, %message, "order refused");
                let mut report = actions::report(&order.id, TaskRunState::Failed, message);
                report.finished_at = Some(now);
                self.journal.refuse(&order, report);
                changed = true;
                continue;
            }
            if self.queue.len() >= MAX_QUEUED {
                tracing::warn!(id = %order.id, "too many orders waiting: this one waits for the next delivery");
                continue;
            }
            self.queued_ids.insert(order.id.clone());
            self.queue.push_back(order);
        }
        if changed {
            self.save();
        }
    }

    /// Starts queued orders while a slot is free: journaled `Started` (and fsynced) first.
    fn start_queued(&mut self) {
        while self.running.len() < MAX_CONCURRENT {
            let Some(order) = self.queue.pop_front() else {
                return;
            };
            self.queued_ids.remove(&order.id);
            let now = Timestamp::now();
            if order.not_after.is_some_and(|deadline| deadline < now) {
                tracing::info!(id = %order.id, "order reached its deadline while it waited: not run");
                continue;
            }
            let boot_id = match &order.action {
                TaskAction::Reboot | TaskAction::Shutdown => {
                    match actions::boot_id(&self.config.boot_id_file) {
                        Ok(id) => Some(id),
                        Err(why) => {
                            // Without it the result after the restart could not be told.
                            let mut report = actions::report(
                                &order.id,
                                TaskRunState::Failed,
                                format!(
                                    "{why}; not going down, as the agent could not tell afterwards whether it did"
                                ),
                            );
                            report.finished_at = Some(now);
                            self.journal.refuse(&order, report);
                            self.save();
                            continue;
                        }
                    }
                }
                _ => None,
            };
            self.journal.start(&order, boot_id, now);
            if !self.save() {
                // Not journaled, so not run: the controller sends it again.
                self.journal.entries.retain(|entry| entry.id != order.id);
                continue;
            }
            tracing::info!(id = %order.id, task = %order.task, action = order.action.name(), "order started");
            let config = self.config.clone();
            let dir = self.dir.clone();
            let id = order.id.clone();
            let handle = self
                .running
                .spawn(async move { (order.id.clone(), carry_out(order, config, dir).await) });
            self.running_ids.insert(handle.id(), id);
        }
    }

    /// Journals how an order ended.
    fn finished(&mut self, joined: Result<(Id, (String, Outcome)), tokio::task::JoinError>) {
        let now = Timestamp::now();
        let (id, outcome) = match joined {
            Ok((task, (id, outcome))) => {
                self.running_ids.remove(&task);
                (id, outcome)
            }
            Err(error) => {
                let Some(id) = self.running_ids.remove(&error.id()) else {
                    return;
                };
                let report = actions::report(
                    &id,
                    TaskRunState::Failed,
                    format!("the agent failed while running it: {error}"),
                );
                (id, Outcome::Final(report))
            }
        };
        let started_at = self
            .journal
            .get(&id)
            .and_then(|entry| entry.report.started_at);
        match outcome {
            Outcome::Final(mut report) => {
                report.started_at = started_at;
                report.finished_at = Some(now);
                tracing::info!(%id, state = ?report.state, message = report.message.as_deref().unwrap_or(""), "order finished");
                self.journal.finish(&id, report);
            }
            Outcome::GoingDown(mut report) => {
                report.started_at = started_at;
                tracing::warn!(%id, message = report.message.as_deref().unwrap_or(""), "the machine is going down");
                self.journal.command_returned(&id, report);
            }
        }
        self.save();
    }

    /// Sends the unsent reports when nothing is being sent and no backoff is running.
    fn start_sending(&mut self) {
        if self.sending.is_some() || !self.journal.has_unsent() {
            return;
        }
        if self.send_after.is_some_and(|after| Instant::now() < after) {
            return;
        }
        let Some(token) = self.session.token() else {
            // Not enrolled yet: try again shortly.
            self.send_after = Some(Instant::now() + Duration::from_millis(500));
            return;
        };
        let reports = self.journal.unsent(MAX_TASK_REPORTS);
        let controller = self.controller.clone();
        self.sending = Some(tokio::spawn(async move {
            let body = TaskReports { reports };
            let result = controller.report_tasks(&token, &body).await;
            (body.reports, result)
        }));
    }

    /// Handles the controller's answer to a report.
    fn sent(
        &mut self,
        sent: Result<(Vec<TaskReport>, Result<(), ApiError>), tokio::task::JoinError>,
    ) {
        let Ok((reports, result)) = sent else {
            self.send_after = Some(Instant::now() + self.retry.next_delay());
            return;
        };
        match result {
            Ok(()) => {
                self.retry.reset();
                self.send_after = None;
                tracing::debug!(reports = reports.len(), "task reports sent");
                self.journal.acknowledge(&reports);
                self.save();
            }
            Err(error) if is_refused_for_good(&error) => {
                tracing::error!(%error, reports = reports.len(), "the controller refused the task reports; they are dropped");
                self.journal.acknowledge(&reports);
                self.save();
            }
            Err(error) => {
                let delay = error
                    .retry_after()
                    .unwrap_or_else(|| self.retry.next_delay());
                tracing::warn!(%error, retry_in = ?delay, "cannot send the task reports");
                self.send_after = Some(Instant::now() + delay);
            }
        }
    }

    /// Writes the journal; false (logged) when it could not be written.
    fn save(&mut self) -> bool {
        match self.journal.save(&self.dir) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, "cannot write the tasks journal");
                false
            }
        }
    }
}

/// A 4xx the same reports would get again: anything but an expired session (the protocol loop
/// opens a new one), a timeout or a rate limit.
fn is_refused_for_good(error: &ApiError) -> bool {
    error.status().is_some_and(|status| {
        status.is_client_error() && ![401, 408, 429].contains(&status.as_u16())
    })
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Carries out one order (already journaled as started).
async fn carry_out(order: TaskOrder, config: TaskConfig, dir: StateDir) -> Outcome {
    let id = order.id.as_str();
    match &order.action {
        TaskAction::Exec(exec) => Outcome::Final(actions::exec(id, exec, &dir).await),
        TaskAction::Wake(wake) => Outcome::Final(actions::wake(id, wake, &config.wake_on_lan)),
        TaskAction::CollectLogs => Outcome::Final(actions::collect_logs(id, &dir)),
        TaskAction::Reboot | TaskAction::Shutdown => {
            let (command, action, going) = if order.action == TaskAction::Reboot {
                (&config.reboot_command, "reboot", "rebooting")
            } else {
                (&config.shutdown_command, "shutdown", "shutting down")
            };
            match actions::power(id, command, action).await {
                Ok(()) => Outcome::GoingDown(actions::report(id, TaskRunState::Running, going)),
                Err(report) => Outcome::Final(report),
            }
        }
        TaskAction::Unknown => Outcome::Final(actions::report(
            id,
            TaskRunState::Failed,
            "this agent does not know the action",
        )),
    }
}
