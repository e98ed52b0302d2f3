//! The book of tasks: each task's runs and the state of each target, in memory (a few bytes a
//! target; outputs stay in the store), and the passes of the loop that start and dispatch runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tc_api::task::{
    MAX_TASK_RUNS_KEPT, TaskActionKind, TaskClientState, TaskResult, TaskRunStatus, TaskStatus,
};
use tc_api::{
    ClientPhase, Condition, ConditionStatus, Event, IntOrPercent, Inventory, Task, Timestamp,
};
use tc_proto::task::{ExecOrder, TaskAction, TaskOrder, WakeOrder};
use tc_reconcile::tasks::{
    Candidate, ClientRun, Schedule, WakeOutcome, WakeTarget, due_run, plan_dispatch, plan_wake,
    resolve_targets, run_counts,
};
use tc_store::{StoredTaskRun, StoredTaskTarget};

use super::{SharedOrder, counts_text, task_event};
use crate::Controller;
use crate::fleet::Admission;

/// Every task the controller knows, by name.
#[derive(Default)]
pub struct Book {
    tasks: BTreeMap<String, Entry>,
}

/// One task.
struct Entry {
    /// The object, without status.
    task: Task,
    /// Its schedule, parsed (an error is reported once and stops the schedule).
    schedule: Option<Result<Schedule, String>>,
    /// When the next run is due.
    next: Option<Timestamp>,
    /// Its runs, oldest first, at most [`MAX_TASK_RUNS_KEPT`].
    runs: Vec<Run>,
    /// A run being started (outside the lock): no second one starts meanwhile.
    starting: bool,
}

/// One run.
pub(crate) struct Run {
    pub(crate) stored: StoredTaskRun,
    /// Per target, in `stored.targets`' order (sorted by client name).
    pub(crate) clients: Vec<ClientRun>,
    /// When every target reached a final state.
    completed_at: Option<Timestamp>,
    /// Something changed since the last dispatch.
    pub(crate) dirty: bool,
    /// The order of the targets that carry it out themselves (all but wakes), shared.
    own_order: SharedOrder,
}

impl Run {
    /// The index of target `client`.
    pub(crate) fn target(&self, client: &str) -> Option<usize> {
        self.stored
            .targets
            .binary_search_by(|target| target.client.as_str().cmp(client))
            .ok()
    }

    /// Who carries out target `index`'s order: the neighbour for a wake, else the target.
    pub(crate) fn executor(&self, index: usize) -> &str {
        let target = &self.stored.targets[index];
        match &target.wake {
            Some((neighbour, _)) => neighbour,
            None => &target.client,
        }
    }

    /// The id of target `index`'s order.
    pub(crate) fn order_id(&self, index: usize) -> String {
        let target = &self.stored.targets[index];
        match &target.wake {
            Some(_) => format!(
                "{}/{}/wake/{}",
                self.stored.task, self.stored.run, target.client
            ),
            None => format!("{}/{}", self.stored.task, self.stored.run),
        }
    }

    /// Target `index`'s order.
    fn order(&self, index: usize) -> SharedOrder {
        match &self.stored.targets[index].wake {
            Some((_, packet)) => SharedOrder(Arc::new(TaskOrder {
                id: self.order_id(index),
                task: self.stored.task.clone(),
                action: TaskAction::Wake(packet.clone()),
                not_after: Some(self.stored.deadline),
            })),
            None => self.own_order.clone(),
        }
    }

    /// A run as stored, with every target pending.
    fn new(stored: StoredTaskRun) -> Run {
        let own_order = SharedOrder(Arc::new(TaskOrder {
            id: format!("{}/{}", stored.task, stored.run),
            task: stored.task.clone(),
            action: stored.action.clone(),
            not_after: Some(stored.deadline),
        }));
        Run {
            clients: vec![
                ClientRun {
                    state: TaskClientState::Pending,
                    offered: false,
                };
                stored.targets.len()
            ],
            stored,
            completed_at: None,
            dirty: true,
            own_order,
        }
    }

    fn status(&self) -> TaskRunStatus {
        let mut status = TaskRunStatus {
            run: self.stored.run,
            started_at: self.stored.started_at,
            deadline: self.stored.deadline,
            completed_at: self.completed_at,
            targets: 0,
            pending: 0,
            running: 0,
            succeeded: 0,
            failed: 0,
            expired: 0,
            interrupted: 0,
        };
        run_counts(&self.clients).fill(&mut status);
        status
    }

    /// When the results of the targets that started are due: the deadline, the time the action
    /// may take (an `exec`'s timeout), and `grace` (a reboot's return, a report's way back).
    fn results_due(&self, grace: Duration) -> Timestamp {
        let allowance = match &self.stored.action {
            TaskAction::Exec(exec) => Duration::from_secs(u64::from(exec.timeout_seconds)),
            _ => Duration::ZERO,
        };
        self.stored.deadline.plus(allowance + grace)
    }

    fn all_final(&self) -> bool {
        self.clients.iter().all(|client| client.state.is_final())
    }
}

fn parse_schedule(task: &Task) -> Option<Result<Schedule, String>> {
    task.spec.schedule.as_ref().map(|schedule| {
        Schedule::parse(&schedule.cron, schedule.time_zone.as_deref())
            .map_err(|error| error.to_string())
    })
}

impl Book {
    /// Brings the book in line with `objects`: returns the tasks to load (new, or created anew
    /// under a known name) and the names of those to drop (deleted, or replaced).
    pub(crate) fn sync(&mut self, objects: Vec<Task>) -> (Vec<Task>, Vec<String>) {
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for mut task in objects {
            task.status = None;
            let name = task.metadata.name.clone();
            seen.insert(name.clone());
            match self.tasks.get_mut(&name) {
                Some(entry) if entry.task.metadata.uid == task.metadata.uid => {
                    if entry.task.spec != task.spec {
                        entry.schedule = parse_schedule(&task);
                    }
                    entry.task = task;
                }
                Some(_) => {
                    self.tasks.remove(&name);
                    removed.push(name);
                    added.push(task);
                }
                None => added.push(task),
            }
        }
        let gone: Vec<String> = self
            .tasks
            .keys()
            .filter(|name| !seen.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            self.tasks.remove(&name);
            removed.push(name);
        }
        (added, removed)
    }

    /// Adds `task` with its stored runs and results. Returns the runs to remove from the store
    /// (`Some(None)`: every run, they belong to an earlier task of that name; `Some(Some(r))`:
    /// those older than `r`, beyond what is kept).
    pub(crate) fn load(
        &mut self,
        task: &Task,
        runs: Vec<StoredTaskRun>,
        results: Vec<Vec<TaskResult>>,
    ) -> Option<Option<u64>> {
        let uid = task.metadata.uid.clone().unwrap_or_default();
        let mut stale = None;
        let mut loaded = Vec::new();
        if runs.iter().any(|run| run.task_uid != uid) {
            stale = Some(None);
        } else {
            for (stored, results) in runs.into_iter().zip(results) {
                let mut run = Run::new(stored);
                let mut finished = None::<Timestamp>;
                for result in results {
                    if let Some(index) = run.target(&result.client) {
                        run.clients[index].state = result.state;
                        finished = finished.max(result.finished_at);
                    }
                }
                if run.all_final() {
                    run.completed_at = Some(finished.unwrap_or(run.stored.started_at));
                }
                loaded.push(run);
            }
            if loaded.len() > MAX_TASK_RUNS_KEPT {
                let drop = loaded.len() - MAX_TASK_RUNS_KEPT;
                loaded.drain(..drop);
                stale = Some(Some(loaded[0].stored.run));
            }
        }
        self.tasks.insert(
            task.metadata.name.clone(),
            Entry {
                task: Task {
                    status: None,
                    ..task.clone()
                },
                schedule: parse_schedule(task),
                next: None,
                runs: loaded,
                starting: false,
            },
        );
        stale
    }

    /// The live status of task `name`.
    pub(crate) fn status_of(&self, name: &str) -> Option<TaskStatus> {
        let entry = self.tasks.get(name)?;
        let mut conditions = Vec::new();
        if let Some(schedule) = &entry.schedule {
            let (status, reason, message) = match schedule {
                Ok(_) => (ConditionStatus::True, "Valid", String::new()),
                Err(error) => (ConditionStatus::False, "InvalidSchedule", error.clone()),
            };
            conditions.push(Condition {
                type_: "ScheduleValid".into(),
                status,
                reason: reason.into(),
                message,
                last_transition_time: entry
                    .task
                    .metadata
                    .creation_timestamp
                    .unwrap_or(Timestamp::EPOCH),
                observed_generation: entry.task.metadata.generation,
            });
        }
        Some(TaskStatus {
            runs: entry.runs.iter().rev().map(Run::status).collect(),
            next_run_time: entry.next,
            conditions,
        })
    }

    /// `(task, run, state, by)` of `client` in every run kept, newest first.
    pub(crate) fn client_states(
        &self,
        client: &str,
    ) -> Vec<(String, u64, TaskClientState, Option<String>)> {
        let mut states = Vec::new();
        for (name, entry) in &self.tasks {
            for run in &entry.runs {
                if let Some(index) = run.target(client) {
                    let by = run.stored.targets[index]
                        .wake
                        .as_ref()
                        .map(|(neighbour, _)| neighbour.clone());
                    states.push((name.clone(), run.stored.run, run.clients[index].state, by));
                }
            }
        }
        states.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        states
    }

    /// Tasks past their `ttlSecondsAfterFinished` (without a schedule, their run completed that
    /// long ago, and not kept by the watched directory, which would create them again, to run
    /// again), and when the next one will be.
    pub(crate) fn past_ttl(&self, now: Timestamp) -> (Vec<String>, Option<Timestamp>) {
        let mut past = Vec::new();
        let mut next: Option<Timestamp> = None;
        for (name, entry) in &self.tasks {
            let task = &entry.task;
            let Some(ttl) = task.spec.ttl_seconds_after_finished else {
                continue;
            };
            let from_directory = task
                .metadata
                .managed_by
                .as_deref()
                .is_some_and(|manager| manager.starts_with("dir:"));
            if task.spec.schedule.is_some() || from_directory {
                continue;
            }
            let Some(completed) = entry.runs.last().and_then(|run| run.completed_at) else {
                continue;
            };
            let due = completed.plus(Duration::from_secs(u64::from(ttl)));
            if due <= now {
                past.push(name.clone());
            } else {
                next = Some(next.map_or(due, |next| next.min(due)));
            }
        }
        (past, next)
    }

    /// The run `run` of task `task`.
    pub(crate) fn run_mut(&mut self, task: &str, run: u64) -> Option<&mut Run> {
        self.tasks
            .get_mut(task)?
            .runs
            .iter_mut()
            .find(|candidate| candidate.stored.run == run)
    }

    /// The run `run` of task `task` (its newest when `None`).
    pub(crate) fn run(&self, task: &str, run: Option<u64>) -> Option<&Run> {
        let runs = &self.tasks.get(task)?.runs;
        match run {
            Some(run) => runs.iter().find(|candidate| candidate.stored.run == run),
            None => runs.last(),
        }
    }
}

/// What a due run needs to start, taken from the book.
struct Due {
    task: Task,
}

/// Starts the runs that are due.
pub(crate) async fn start_due_runs(
    controller: &Arc<Controller>,
    now: Timestamp,
) -> tc_store::Result<()> {
    let mut due = Vec::new();
    let mut events = Vec::new();
    {
        let mut book = controller.tasks.book.lock().expect("task book");
        for (name, entry) in book.tasks.iter_mut() {
            if entry.starting {
                continue;
            }
            let schedule = match &entry.schedule {
                Some(Ok(schedule)) => Some(schedule),
                Some(Err(_)) => {
                    entry.next = None;
                    continue;
                }
                None => None,
            };
            let created = entry
                .task
                .metadata
                .creation_timestamp
                .unwrap_or(Timestamp::EPOCH);
            let last = entry.runs.last().map(|run| run.stored.run);
            let decision = due_run(&entry.task.spec, schedule, created, last, now);
            entry.next = decision.next;
            if decision.missed > 0 && decision.start.is_some() {
                events.push(task_event(
                    name,
                    true,
                    "RunsMissed",
                    format!(
                        "{} run(s) were due while the controller could not start them; only \
                         the latest starts",
                        decision.missed
                    ),
                    now,
                ));
            }
            if let Some(run) = decision.start {
                entry.starting = true;
                due.push((
                    Due {
                        task: entry.task.clone(),
                    },
                    run,
                ));
            }
        }
    }
    controller.record(events).await;
    for (due, run) in due {
        let name = due.task.metadata.name.clone();
        let result = start_run(controller, due, run, now).await;
        if let Some(entry) = controller
            .tasks
            .book
            .lock()
            .expect("task book")
            .tasks
            .get_mut(&name)
        {
            entry.starting = false;
        }
        result?;
    }
    Ok(())
}

/// The action agents receive for a task's spec.
fn action_of(task: &Task) -> TaskAction {
    match task.spec.action {
        TaskActionKind::Reboot => TaskAction::Reboot,
        TaskActionKind::Shutdown => TaskAction::Shutdown,
        TaskActionKind::CollectLogs => TaskAction::CollectLogs,
        TaskActionKind::Wake => TaskAction::Wake(WakeOrder {
            target: String::new(),
            mac: String::new(),
            broadcast: String::new(),
        }),
        TaskActionKind::Exec => {
            let exec = task
                .spec
                .exec
                .clone()
                .unwrap_or_else(|| tc_api::task::ExecSpec {
                    command: Vec::new(),
                    timeout_seconds: tc_api::task::DEFAULT_EXEC_TIMEOUT_SECONDS,
                    working_dir: None,
                });
            TaskAction::Exec(ExecOrder {
                command: exec.command,
                timeout_seconds: exec.timeout_seconds,
                working_dir: exec.working_dir,
            })
        }
    }
}

/// Resolves the targets of a run from the fleet: approved clients only.
async fn targets_of(
    controller: &Arc<Controller>,
    task: &Task,
) -> Result<(Vec<String>, Vec<String>), String> {
    let groups = if task.spec.targets.group.is_some() {
        let store = controller.store.clone();
        tokio::task::spawn_blocking(move || crate::reconcile::list_groups(&*store))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())?
    } else {
        Vec::new()
    };
    let slots = controller.fleet.slots();
    let mut clients = Vec::with_capacity(slots.len());
    for slot in &slots {
        let state = slot.state.lock().expect("client lock");
        if state.admission == Admission::Active {
            // The labels as the fleet holds them (shared strings), not a map per client.
            clients.push((slot.name.clone(), state.labels.clone()));
        }
    }
    let targets = resolve_targets(
        &task.spec.targets,
        &groups,
        clients
            .iter()
            .map(|(name, labels)| (&**name, move |key: &str| labels.get(key))),
    )
    .map_err(|error| error.to_string())?;
    Ok((targets.clients, targets.unknown))
}

/// Plans who wakes each target, from the inventories of the targets and of the online clients.
async fn wake_plan(
    controller: &Arc<Controller>,
    targets: &[String],
) -> tc_store::Result<
    Vec<(
        Option<(String, WakeOrder)>,
        Option<(TaskClientState, String)>,
    )>,
> {
    let mut online = std::collections::BTreeSet::new();
    for slot in controller.fleet.slots() {
        let state = slot.state.lock().expect("client lock");
        if state.admission == Admission::Active && state.status.phase == ClientPhase::Online {
            online.insert(slot.name.to_string());
        }
    }
    let wanted: std::collections::BTreeSet<String> = targets.iter().cloned().collect();
    let store = controller.store.clone();
    let online_names = online.clone();
    let inventories = tokio::task::spawn_blocking(move || {
        let mut inventories: BTreeMap<String, Inventory> = BTreeMap::new();
        store.scan_inventories(&mut |name, inventory| {
            if wanted.contains(name) || online_names.contains(name) {
                inventories.insert(name.to_owned(), inventory);
            }
        })?;
        tc_store::Result::Ok(inventories)
    })
    .await
    .map_err(|error| tc_store::StoreError::Database(error.to_string()))??;
    let wake_targets: Vec<WakeTarget<'_>> = targets
        .iter()
        .map(|name| WakeTarget {
            name,
            inventory: inventories.get(name),
            online: online.contains(name),
        })
        .collect();
    let candidates: Vec<Candidate<'_>> = online
        .iter()
        .filter_map(|name| {
            inventories
                .get(name)
                .map(|inventory| Candidate { name, inventory })
        })
        .collect();
    Ok(plan_wake(&wake_targets, &candidates)
        .into_iter()
        .zip(targets)
        .map(|(plan, target)| match plan.outcome {
            WakeOutcome::Send {
                neighbour,
                mac,
                broadcast,
            } => (
                Some((
                    neighbour,
                    WakeOrder {
                        target: target.clone(),
                        mac,
                        broadcast: broadcast.to_string(),
                    },
                )),
                None,
            ),
            WakeOutcome::AlreadyOnline => (
                None,
                Some((TaskClientState::Succeeded, "already online".to_string())),
            ),
            WakeOutcome::NoMac => (
                None,
                Some((
                    TaskClientState::Failed,
                    "its inventory has no hardware address to wake".to_string(),
                )),
            ),
            WakeOutcome::NoNeighbour => (
                None,
                Some((
                    TaskClientState::Failed,
                    "no online client on its network segment to send the magic packet".to_string(),
                )),
            ),
        })
        .collect())
}

/// Starts run `run` of `due.task`: resolves its targets, stores the run (and the results
/// known at once), then puts it in the book; the next dispatch offers its orders.
async fn start_run(
    controller: &Arc<Controller>,
    due: Due,
    run: u64,
    now: Timestamp,
) -> tc_store::Result<()> {
    let task = due.task;
    let name = task.metadata.name.clone();
    let started = std::time::Instant::now();
    let (targets, unknown) = match targets_of(controller, &task).await {
        Ok(targets) => targets,
        Err(error) => {
            // Recorded as a run with no target, so that it is not retried in a loop.
            controller
                .record(vec![task_event(&name, true, "TargetsInvalid", error, now)])
                .await;
            (Vec::new(), Vec::new())
        }
    };
    let deadline = now.plus(Duration::from_secs(u64::from(task.spec.deadline_seconds)));
    let max = task
        .spec
        .max_concurrent
        .map_or(targets.len(), |max| max.resolve(targets.len()))
        .max(1);
    let mut immediate = Vec::new();
    let stored_targets: Vec<StoredTaskTarget> = if task.spec.action == TaskActionKind::Wake {
        let plan = wake_plan(controller, &targets).await?;
        plan.into_iter()
            .zip(&targets)
            .map(|((wake, outcome), client)| {
                if let Some((state, message)) = outcome {
                    immediate.push(TaskResult {
                        task: name.clone(),
                        run,
                        client: client.clone(),
                        state,
                        finished_at: Some(now),
                        message: Some(message),
                        ..Default::default()
                    });
                }
                StoredTaskTarget {
                    client: client.clone(),
                    wake,
                }
            })
            .collect()
    } else {
        targets
            .iter()
            .map(|client| StoredTaskTarget {
                client: client.clone(),
                wake: None,
            })
            .collect()
    };
    let stored = StoredTaskRun {
        task: name.clone(),
        task_uid: task.metadata.uid.clone().unwrap_or_default(),
        run,
        started_at: now,
        deadline,
        max_concurrent: u32::try_from(max).unwrap_or(u32::MAX),
        action: action_of(&task),
        targets: stored_targets,
    };
    let resolved = started.elapsed();
    let store = controller.store.clone();
    let record = stored.clone();
    let results = immediate.clone();
    tokio::task::spawn_blocking(move || {
        store.put_task_run(&record)?;
        store.put_task_results(&results, &[])
    })
    .await
    .map_err(|error| tc_store::StoreError::Database(error.to_string()))??;
    tracing::info!(
        task = %name,
        run,
        targets = stored.targets.len(),
        resolved_ms = resolved.as_millis() as u64,
        stored_ms = (started.elapsed() - resolved).as_millis() as u64,
        "task run started"
    );
    let mut new_run = Run::new(stored);
    for result in &immediate {
        if let Some(index) = new_run.target(&result.client) {
            new_run.clients[index].state = result.state;
        }
    }
    let mut message = format!("run {run} started on {} client(s)", new_run.clients.len());
    if !unknown.is_empty() {
        message.push_str(&format!(
            "; no client named {}",
            unknown
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let dropped = {
        let mut book = controller.tasks.book.lock().expect("task book");
        let Some(entry) = book.tasks.get_mut(&name) else {
            return Ok(());
        };
        if entry.task.metadata.uid != task.metadata.uid {
            return Ok(());
        }
        entry.runs.push(new_run);
        let extra = entry.runs.len().saturating_sub(MAX_TASK_RUNS_KEPT);
        let dropped: Vec<u64> = entry.runs.drain(..extra).map(|r| r.stored.run).collect();
        dropped.last().map(|_| entry.runs[0].stored.run)
    };
    if let Some(oldest_kept) = dropped {
        let store = controller.store.clone();
        let task_name = name.clone();
        let _ = tokio::task::spawn_blocking(move || {
            store.remove_task_runs(&task_name, Some(oldest_kept))
        })
        .await;
        // Orders of dropped runs are withdrawn.
        controller.tasks.withdraw_older(&name, oldest_kept);
    }
    controller
        .record(vec![task_event(
            &name,
            !unknown.is_empty(),
            "RunStarted",
            message,
            now,
        )])
        .await;
    Ok(())
}

/// Targets that started and never reported a result by `due` (the agent gone, the machine not
/// back from a reboot) count as expired, so that the run completes; a result that still comes
/// replaces it.
fn expire_overdue(run: &mut Run, name: &str, due: Timestamp, expired: &mut Vec<TaskResult>) {
    for (index, client) in run.clients.iter_mut().enumerate() {
        if client.state != TaskClientState::Running {
            continue;
        }
        client.state = TaskClientState::Expired;
        let target = &run.stored.targets[index];
        expired.push(TaskResult {
            task: name.to_owned(),
            run: run.stored.run,
            client: target.client.clone(),
            state: TaskClientState::Expired,
            by: target.wake.as_ref().map(|(neighbour, _)| neighbour.clone()),
            finished_at: Some(due),
            message: Some(format!(
                "started, but no result came by {due} (the client may be gone, or not back from a restart)"
            )),
            ..Default::default()
        });
        run.dirty = true;
    }
}

/// For a run whose concurrency is limited: the order in which its targets take their turns,
/// online clients first, so that offline ones do not hold the slots until the deadline; an
/// offline client that was offered its order and has not started gives its slot back (it is
/// offered again when its turn comes; its journal makes a second delivery harmless).
fn online_first(
    controller: &Arc<Controller>,
    run: &mut Run,
    withdrawn: &mut Vec<(String, String)>,
) -> Vec<usize> {
    let online: Vec<bool> = (0..run.clients.len())
        .map(|index| {
            controller
                .fleet
                .get(run.executor(index))
                .is_some_and(|slot| {
                    slot.state.lock().expect("client lock").status.phase == ClientPhase::Online
                })
        })
        .collect();
    for (index, online) in online.iter().enumerate() {
        let client = &mut run.clients[index];
        if client.offered && client.state == TaskClientState::Pending && !online {
            client.offered = false;
            withdrawn.push((run.executor(index).to_owned(), run.order_id(index)));
        }
    }
    let mut order: Vec<usize> = (0..run.clients.len()).collect();
    order.sort_by_key(|&index| !online[index]);
    order
}

/// Marks `completing` runs (all their targets final) completed at `now`; returns their events.
fn complete_runs(
    controller: &Arc<Controller>,
    completing: &[(String, u64)],
    now: Timestamp,
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut book = controller.tasks.book.lock().expect("task book");
    for (name, number) in completing {
        let Some(run) = book
            .tasks
            .get_mut(name)
            .and_then(|entry| entry.runs.iter_mut().find(|run| run.stored.run == *number))
        else {
            continue;
        };
        if run.completed_at.is_some() || !run.all_final() {
            continue;
        }
        run.completed_at = Some(now);
        let status = run.status();
        let failed = status.failed + status.expired + status.interrupted > 0;
        events.push(task_event(
            name,
            failed,
            "RunCompleted",
            format!(
                "run {} completed: {}",
                run.stored.run,
                if run.clients.is_empty() {
                    "no targets".to_string()
                } else {
                    counts_text(run.clients.iter().map(|c| c.state))
                }
            ),
            now,
        ));
    }
    events
}

/// Offers orders within each run's concurrency, expires targets past their deadline, records
/// completed runs. Returns how long until the next deadline.
pub(crate) async fn dispatch(controller: &Arc<Controller>, now: Timestamp) -> Duration {
    let mut offers: Vec<(String, SharedOrder)> = Vec::new();
    let mut withdrawn: Vec<(String, String)> = Vec::new();
    let mut expired: Vec<TaskResult> = Vec::new();
    let mut completing: Vec<(String, u64)> = Vec::new();
    let mut next_deadline: Option<Timestamp> = None;
    {
        let mut book = controller.tasks.book.lock().expect("task book");
        for (name, entry) in book.tasks.iter_mut() {
            for run in entry.runs.iter_mut() {
                if run.completed_at.is_some() {
                    continue;
                }
                let deadline = run.stored.deadline;
                let results_due = run.results_due(controller.config.task_result_grace);
                let next = if now < deadline {
                    deadline
                } else {
                    results_due
                };
                if now < next {
                    next_deadline = Some(next_deadline.map_or(next, |d| d.min(next)));
                }
                if now >= results_due {
                    expire_overdue(run, name, results_due, &mut expired);
                }
                let limited = (run.stored.max_concurrent as usize) < run.clients.len();
                // A limited run looks at every pass: a client may have come online.
                if !run.dirty && !limited && now < deadline {
                    continue;
                }
                run.dirty = false;
                let plan = if limited && now < deadline {
                    let taken = online_first(controller, run, &mut withdrawn);
                    let view: Vec<ClientRun> = taken.iter().map(|&i| run.clients[i]).collect();
                    let mut plan = plan_dispatch(
                        &view,
                        Some(IntOrPercent::Int(run.stored.max_concurrent)),
                        deadline,
                        now,
                    );
                    for index in plan.offer.iter_mut().chain(plan.expire.iter_mut()) {
                        *index = taken[*index];
                    }
                    plan
                } else {
                    plan_dispatch(
                        &run.clients,
                        Some(IntOrPercent::Int(run.stored.max_concurrent)),
                        deadline,
                        now,
                    )
                };
                for index in plan.offer {
                    run.clients[index].offered = true;
                    offers.push((run.executor(index).to_owned(), run.order(index)));
                }
                for index in plan.expire {
                    if run.clients[index].offered {
                        withdrawn.push((run.executor(index).to_owned(), run.order_id(index)));
                    }
                    run.clients[index] = ClientRun {
                        state: TaskClientState::Expired,
                        offered: false,
                    };
                    let target = &run.stored.targets[index];
                    expired.push(TaskResult {
                        task: name.clone(),
                        run: run.stored.run,
                        client: target.client.clone(),
                        state: TaskClientState::Expired,
                        by: target.wake.as_ref().map(|(neighbour, _)| neighbour.clone()),
                        finished_at: Some(now),
                        message: Some(format!("not started before the deadline ({deadline})")),
                        ..Default::default()
                    });
                }
                if run.all_final() {
                    completing.push((name.clone(), run.stored.run));
                }
            }
        }
    }
    let offering = std::time::Instant::now();
    let offered = offers.len();
    for (client, id) in &withdrawn {
        controller.tasks.withdraw(client, id);
    }
    let mut woken = std::collections::BTreeSet::new();
    for (client, order) in offers {
        let Some(slot) = controller.fleet.get(&client) else {
            continue;
        };
        controller.tasks.offer(&slot.name, order);
        if woken.insert(client) {
            slot.offer_task();
        }
    }
    // Agents waiting on the other replicas are woken through the change feed.
    controller.announce_wakes(woken.into_iter().collect());
    if offered > 1000 {
        tracing::info!(
            orders = offered,
            ms = offering.elapsed().as_millis() as u64,
            "task orders offered"
        );
    }
    if !expired.is_empty()
        && let Err(error) = controller.tasks.writer.write(expired, Vec::new()).await
    {
        tracing::error!(%error, "cannot record expired task targets");
    }
    // A run shows as completed only once its last results are stored, so that whoever sees
    // `completedAt` reads every target's result.
    let events = complete_runs(controller, &completing, now);
    controller.record(events).await;
    next_deadline.map_or(super::RESYNC, |deadline| {
        deadline.since(now) + Duration::from_millis(1)
    })
}
