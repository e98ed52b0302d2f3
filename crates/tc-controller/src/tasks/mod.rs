//! Remote operations (`Task`s): runs, their per-client states, the orders offered to agents
//! and the loop that starts, dispatches and expires runs.
//!
//! The decisions are `tc_reconcile::tasks`' (when a run is due, which targets, which neighbour
//! wakes whom, who is offered an order now, who expires); this module gathers the inputs and
//! applies the results. A run is stored (`Store::put_task_run`) before any order of it is
//! offered, and every state an agent reports is stored before the report is answered: after a
//! restart the book is rebuilt from the store and the orders not reported started are offered
//! again (the agent's journal makes a second delivery harmless).
//!
//! Orders travel in the answers of heartbeats and long-polls: an order offered to a client
//! wakes its long-poll at once ([`crate::fleet::ClientSlot::offer_task`]), and is carried in
//! every answer until the agent reports it started.

pub mod api;
mod book;
mod report;
mod results;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tc_api::task::{TaskClientState, TaskResult, TaskStatus};
use tc_api::{Event, EventType, Kind, Object, ObjectRef, Task, Timestamp};
use tc_proto::task::TaskOrder;
use tokio::sync::Notify;

use crate::Controller;
pub use book::Book;
pub use report::report;
pub use results::ResultWriter;

/// How often the loop re-reads the task objects even when nothing said they changed.
const RESYNC: Duration = Duration::from_secs(10);

/// How long the loop waits after a wake-up, so that reports arriving together are dispatched
/// in one pass.
const SETTLE: Duration = Duration::from_millis(20);

/// An order as answers carry it: shared by every client of a run (serializes as the
/// [`TaskOrder`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedOrder(pub Arc<TaskOrder>);

impl std::ops::Deref for SharedOrder {
    type Target = TaskOrder;

    fn deref(&self) -> &TaskOrder {
        &self.0
    }
}

impl serde::Serialize for SharedOrder {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// The controller's remote operations.
pub struct Tasks {
    /// Tasks, their runs and the state of each target.
    pub(crate) book: Mutex<Book>,
    /// Open orders by the client that carries them out (the orders of one run share one copy).
    offers: Mutex<HashMap<Arc<str>, Vec<SharedOrder>>>,
    /// How many orders are open (heartbeats skip the lock when none is).
    open_orders: AtomicUsize,
    /// Wakes the loop (a report freed a slot, an object changed).
    wake: Notify,
    /// Task objects changed: the loop re-reads them.
    objects_changed: AtomicBool,
    /// Stores results in batches.
    pub(crate) writer: ResultWriter,
}

impl Tasks {
    /// An empty book; [`run_loop`] loads it.
    pub fn new(store: Arc<dyn tc_store::Store>) -> Tasks {
        Tasks {
            book: Mutex::new(Book::default()),
            offers: Mutex::new(HashMap::new()),
            open_orders: AtomicUsize::new(0),
            wake: Notify::new(),
            objects_changed: AtomicBool::new(true),
            writer: ResultWriter::start(store),
        }
    }

    /// Task objects were applied or deleted: the loop looks again.
    pub fn objects_changed(&self) {
        self.objects_changed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The orders open for `client`, for a heartbeat or long-poll answer.
    pub fn orders_for(&self, client: &str) -> Vec<SharedOrder> {
        if self.open_orders.load(Ordering::SeqCst) == 0 {
            return Vec::new();
        }
        self.offers
            .lock()
            .expect("offers lock")
            .get(client)
            .cloned()
            .unwrap_or_default()
    }

    /// Offers `order` to `client`.
    fn offer(&self, client: &Arc<str>, order: SharedOrder) {
        let mut offers = self.offers.lock().expect("offers lock");
        let list = offers.entry(client.clone()).or_default();
        if !list.iter().any(|open| open.id == order.id) {
            list.push(order);
            self.open_orders.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Withdraws the order `id` from `client`.
    fn withdraw(&self, client: &str, id: &str) {
        let mut offers = self.offers.lock().expect("offers lock");
        if let Some(list) = offers.get_mut(client) {
            let before = list.len();
            list.retain(|open| open.id != id);
            self.open_orders
                .fetch_sub(before - list.len(), Ordering::SeqCst);
            if list.is_empty() {
                offers.remove(client);
            }
        }
    }

    /// Withdraws every order of `task` (deleted), or of one of its runs.
    fn withdraw_task(&self, task: &str, run: Option<u64>) {
        let prefix = match run {
            Some(run) => format!("{task}/{run}"),
            None => format!("{task}/"),
        };
        let mut offers = self.offers.lock().expect("offers lock");
        offers.retain(|_, list| {
            let before = list.len();
            list.retain(|open| match open.id.strip_prefix(&prefix) {
                // `task/123` is not a prefix of run 1234's orders.
                Some(rest) => run.is_some() && !(rest.is_empty() || rest.starts_with('/')),
                None => true,
            });
            self.open_orders
                .fetch_sub(before - list.len(), Ordering::SeqCst);
            !list.is_empty()
        });
    }

    /// Withdraws the orders of `task`'s runs older than `run` (dropped from the book).
    fn withdraw_older(&self, task: &str, run: u64) {
        let prefix = format!("{task}/");
        let mut offers = self.offers.lock().expect("offers lock");
        offers.retain(|_, list| {
            let before = list.len();
            list.retain(|open| {
                let older = open
                    .id
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.split('/').next())
                    .and_then(|id| id.parse::<u64>().ok())
                    .is_some_and(|id| id < run);
                !older
            });
            self.open_orders
                .fetch_sub(before - list.len(), Ordering::SeqCst);
            !list.is_empty()
        });
    }

    /// The status of task `name` as the book has it (`None` when it is not loaded yet).
    pub fn status_of(&self, name: &str) -> Option<TaskStatus> {
        self.book.lock().expect("task book").status_of(name)
    }

    /// Lays the live status over stored task objects.
    pub fn overlay(&self, object: &mut Object) {
        if let Object::Task(task) = object
            && let Some(status) = self.status_of(&task.metadata.name)
        {
            task.status = Some(status);
        }
    }

    /// The results of `client` in every run the book keeps, newest first, with their details
    /// from the store.
    pub async fn client_results(
        &self,
        store: &Arc<dyn tc_store::Store>,
        client: &str,
    ) -> tc_store::Result<Vec<TaskResult>> {
        let states = self.book.lock().expect("task book").client_states(client);
        let store = store.clone();
        let client = client.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut results = Vec::with_capacity(states.len());
            for (task, run, state, by) in states {
                let stored = store.task_result(&task, run, &client)?;
                results.push(stored.unwrap_or(TaskResult {
                    task,
                    run,
                    client: client.clone(),
                    state,
                    by,
                    ..Default::default()
                }));
            }
            Ok(results)
        })
        .await
        .unwrap_or_else(|error| Err(tc_store::StoreError::Database(error.to_string())))
    }
}

/// Runs the task loop until shutdown: loads the book, then starts due runs, offers orders
/// within each run's concurrency, expires what passed its deadline and records completions.
pub async fn run_loop(controller: Arc<Controller>) {
    let mut shutdown = controller.shutdown.clone();
    let mut last_sync = None::<tokio::time::Instant>;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let tasks = &controller.tasks;
        let resync = last_sync.is_none_or(|at| at.elapsed() >= RESYNC);
        if tasks.objects_changed.swap(false, Ordering::SeqCst) || resync {
            match load_objects(&controller).await {
                Ok(objects) => {
                    last_sync = Some(tokio::time::Instant::now());
                    if let Err(error) = sync_objects(&controller, objects).await {
                        tracing::error!(%error, "cannot load the runs of tasks");
                    }
                }
                Err(error) => tracing::error!(%error, "cannot read the tasks"),
            }
        }
        let now = Timestamp::now();
        if let Err(error) = book::start_due_runs(&controller, now).await {
            tracing::error!(%error, "cannot start a task run");
        }
        let wait = book::dispatch(&controller, now).await;
        let (past_ttl, next_ttl) = tasks.book.lock().expect("task book").past_ttl(now);
        let wait = next_ttl.map_or(wait, |due| wait.min(due.since(now) + SETTLE));
        for name in past_ttl {
            let deleted = crate::api::delete(
                axum::extract::State(controller.clone()),
                axum::extract::Path(("tasks".to_string(), name.clone())),
            )
            .await;
            match deleted {
                Ok(_) => {
                    tracing::info!(task = %name, "deleted a finished task past its ttlSecondsAfterFinished")
                }
                Err(error) => tracing::warn!(task = %name, %error, "cannot delete a finished task"),
            }
        }
        let wait = wait.min(RESYNC);
        tokio::select! {
            // Reports arriving together are dispatched in one pass; a new or changed task
            // starts at once.
            () = tasks.wake.notified() => {
                if !tasks.objects_changed.load(Ordering::SeqCst) {
                    tokio::time::sleep(SETTLE).await;
                }
            }
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn load_objects(controller: &Arc<Controller>) -> tc_store::Result<Vec<Task>> {
    let store = controller.store.clone();
    let objects = tokio::task::spawn_blocking(move || store.list(Kind::Task))
        .await
        .map_err(|error| tc_store::StoreError::Database(error.to_string()))??;
    Ok(objects
        .into_iter()
        .filter_map(|object| match object {
            Object::Task(task) => Some(task),
            _ => None,
        })
        .collect())
}

/// Brings the book in line with the task objects: new ones are loaded with their stored runs,
/// deleted ones are dropped with their orders and runs.
async fn sync_objects(controller: &Arc<Controller>, objects: Vec<Task>) -> tc_store::Result<()> {
    let (added, removed) = controller
        .tasks
        .book
        .lock()
        .expect("task book")
        .sync(objects);
    for name in removed {
        controller.tasks.withdraw_task(&name, None);
        let store = controller.store.clone();
        let task = name.clone();
        tokio::task::spawn_blocking(move || store.remove_task_runs(&task, None))
            .await
            .map_err(|error| tc_store::StoreError::Database(error.to_string()))??;
    }
    for task in added {
        let store = controller.store.clone();
        let name = task.metadata.name.clone();
        let (runs, results) = tokio::task::spawn_blocking(move || {
            let runs = store.task_runs(&name)?;
            let mut results = Vec::with_capacity(runs.len());
            for run in &runs {
                results.push(store.task_results(&name, run.run)?);
            }
            tc_store::Result::Ok((runs, results))
        })
        .await
        .map_err(|error| tc_store::StoreError::Database(error.to_string()))??;
        let stale = controller
            .tasks
            .book
            .lock()
            .expect("task book")
            .load(&task, runs, results);
        if let Some(before) = stale {
            let store = controller.store.clone();
            let name = task.metadata.name.clone();
            tokio::task::spawn_blocking(move || store.remove_task_runs(&name, before))
                .await
                .map_err(|error| tc_store::StoreError::Database(error.to_string()))??;
        }
    }
    Ok(())
}

/// An event about a task.
fn task_event(name: &str, warning: bool, reason: &str, message: String, now: Timestamp) -> Event {
    Event::new(
        now,
        ObjectRef::new(Kind::Task, name),
        if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason,
        message,
    )
}

/// The counts of a run's states, in a sentence.
fn counts_text(states: impl Iterator<Item = TaskClientState>) -> String {
    let mut counts = [0u32; 6];
    for state in states {
        counts[TaskClientState::ALL
            .iter()
            .position(|s| *s == state)
            .expect("every state is listed")] += 1;
    }
    TaskClientState::ALL
        .iter()
        .zip(counts)
        .filter(|(_, count)| *count > 0)
        .map(|(state, count)| format!("{count} {}", state.as_str().to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(", ")
}
