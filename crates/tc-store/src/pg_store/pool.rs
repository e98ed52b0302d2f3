//! The connections of a [`super::PgStore`]: a few threads, each owning one connection, that take
//! jobs from one queue.
//!
//! The trait is synchronous, and the synchronous `postgres` client drives its connection with a
//! runtime of its own: called on a thread that already runs async tasks it panics ("Cannot start
//! a runtime from within a runtime"). Running every query on these plain threads makes the store
//! callable from anywhere, as the redb store is: a caller (async or not) only waits on a channel.
//! A worker whose connection broke (or whose job panicked) connects again before its next job; one
//! idle for a second, or any after another worker's connection failed, is checked first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::Client;

use super::tls::Connector;

use crate::{Result, StoreError};

/// A job; it says whether its connection failed under it (the store unavailable), so that the
/// worker replaces the connection before its next job.
type Job = Box<dyn FnOnce(Result<&mut Client>) -> bool + Send>;

/// A fixed set of connection threads.
pub(super) struct Pool {
    queue: Mutex<Option<SyncSender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    /// Starts `size` workers connecting with `connector` when they get their first job (on their
    /// own threads: connecting, too, must not happen on the caller's).
    pub(super) fn start(connector: Connector, size: usize) -> Result<Pool> {
        let (sender, receiver) = sync_channel::<Job>(size.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let failures = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::with_capacity(size);
        for index in 0..size.max(1) {
            let receiver = Arc::clone(&receiver);
            let connector = connector.clone();
            let failures = Arc::clone(&failures);
            let worker = std::thread::Builder::new()
                .name(format!("tc-store-pg-{index}"))
                .spawn(move || work(&connector, &receiver, &failures))
                .map_err(|e| StoreError::Database(format!("start a connection thread: {e}")))?;
            workers.push(worker);
        }
        Ok(Pool {
            queue: Mutex::new(Some(sender)),
            workers: Mutex::new(workers),
        })
    }

    /// Runs `job` on a connection and waits for its result.
    pub(super) fn run<T: Send + 'static>(
        &self,
        what: &str,
        job: impl FnOnce(&mut Client) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.submit(what, job)?.wait(what)
    }

    /// Queues `job` (waiting while the queue is full) and returns at once; its result comes
    /// through the answer. For a job that its caller feeds while it runs.
    pub(super) fn submit<T: Send + 'static>(
        &self,
        what: &str,
        job: impl FnOnce(&mut Client) -> Result<T> + Send + 'static,
    ) -> Result<Answer<T>> {
        let (done, result) = sync_channel(1);
        let job: Job = Box::new(move |client| {
            let result = client.and_then(job);
            let broken = matches!(result, Err(StoreError::Unavailable(_)));
            let _ = done.send(result);
            broken
        });
        let queue = self
            .queue
            .lock()
            .map_err(|_| StoreError::Database(format!("{what}: the store's queue is poisoned")))?
            .clone()
            .ok_or_else(|| StoreError::Database(format!("{what}: the store is closed")))?;
        queue
            .send(job)
            .map_err(|_| StoreError::Database(format!("{what}: the store is closed")))?;
        Ok(Answer(result))
    }
}

/// The result of a submitted job, to wait for.
pub(super) struct Answer<T>(Receiver<Result<T>>);

impl<T> Answer<T> {
    /// Waits for the job's result.
    pub(super) fn wait(self, what: &str) -> Result<T> {
        self.0
            .recv()
            .map_err(|_| StoreError::Database(format!("{what}: the connection thread stopped")))?
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.take();
        }
        if let Ok(mut workers) = self.workers.lock() {
            for worker in workers.drain(..) {
                let _ = worker.join();
            }
        }
    }
}

fn connect(connector: &Connector) -> Result<Client> {
    connector.connect().map_err(|e| {
        super::classify(
            format!("connect to PostgreSQL: {}", tc_proto::error_chain(&e)),
            &e,
        )
    })
}

/// A connection idle this long is checked (one empty query) before its next job, so that the
/// first jobs after the server came back do not fail on connections it closed meanwhile.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

/// How long that check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `failures` counts the jobs of every worker whose connection failed: a worker that sees it move
/// checks its own connection before its next job, since a server that went away closed them all.
fn work(connector: &Connector, receiver: &Mutex<Receiver<Job>>, failures: &AtomicU64) {
    let mut client: Option<Client> = None;
    let mut last_used = Instant::now();
    let mut failures_seen = failures.load(Ordering::Relaxed);
    loop {
        let job = {
            let Ok(receiver) = receiver.lock() else {
                return;
            };
            match receiver.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let failures_now = failures.load(Ordering::Relaxed);
        if (last_used.elapsed() > CHECK_AFTER_IDLE || failures_now != failures_seen)
            && let Some(idle) = client.as_mut()
            && idle.is_valid(CHECK_TIMEOUT).is_err()
        {
            client = None;
        }
        last_used = Instant::now();
        failures_seen = failures_now;
        if client.as_ref().is_none_or(Client::is_closed) {
            client = None;
            match connect(connector) {
                Ok(connected) => client = Some(connected),
                Err(e) => {
                    let _ = job(Err(e));
                    failures_seen = failures.fetch_add(1, Ordering::Relaxed) + 1;
                    continue;
                }
            }
        }
        if let Some(connected) = client.as_mut() {
            // A job that panics (a bug) must not take the thread with it: its caller learns it
            // from the dropped result channel, and the connection, maybe mid-transaction, is
            // replaced before the next job.
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Ok(connected))));
            if !matches!(outcome, Ok(false)) {
                client = None;
                failures_seen = failures.fetch_add(1, Ordering::Relaxed) + 1;
            }
        }
    }
}
