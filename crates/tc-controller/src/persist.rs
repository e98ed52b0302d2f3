//! Writes of client state to the store, shared among concurrent requests (group commit), and
//! the periodic liveness flush.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tc_api::{Client, Event};
use tc_store::{ClientStatusEntry, Liveness, Store};
use tokio::sync::{mpsc, oneshot, watch};

use crate::fleet::Fleet;

struct PersistRequest {
    /// Client objects (labels, spec) with their status.
    objects: Vec<Client>,
    /// Client statuses.
    statuses: Vec<ClientStatusEntry>,
    liveness: Vec<Liveness>,
    /// Events about these writes, recorded after them (a failure is logged, never returned:
    /// events never fail a request).
    events: Vec<Event>,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// Most requests one group commit takes.
const MAX_BATCH_REQUESTS: usize = 4096;

/// Most records (objects, statuses, liveness) one group commit takes, unless one request alone
/// has more.
const MAX_BATCH_RECORDS: usize = 8192;

impl PersistRequest {
    fn records(&self) -> usize {
        self.objects.len() + self.statuses.len() + self.liveness.len()
    }
}

/// The writes of one group commit, merged in the order they were requested: the last status of
/// a client wins, and a status without inventory keeps the inventory an earlier one carried.
#[derive(Default)]
struct Batch {
    /// Object writes, in request order (their statuses are in `statuses`).
    objects: Vec<Client>,
    /// Status writes, in request order.
    statuses: Vec<ClientStatusEntry>,
    liveness: Vec<Liveness>,
    events: Vec<Event>,
}

impl Batch {
    fn add(&mut self, request: PersistRequest) {
        for mut object in request.objects {
            let status = std::mem::take(&mut object.status);
            self.statuses.push(ClientStatusEntry {
                name: object.metadata.name.clone(),
                status,
            });
            self.objects.push(object);
        }
        if self.statuses.is_empty() {
            self.statuses = request.statuses;
        } else {
            self.statuses.extend(request.statuses);
        }
        self.liveness.extend(request.liveness);
        self.events.extend(request.events);
    }

    /// Objects (each with its latest status) and the statuses of clients without an object
    /// write, merged, in name order.
    fn split(self) -> (Vec<Client>, Vec<ClientStatusEntry>) {
        let Batch {
            objects,
            mut statuses,
            ..
        } = self;
        // A reconcile pass writes each client once, in name order: nothing to merge.
        let merged = if statuses.windows(2).all(|w| w[0].name < w[1].name) {
            statuses
        } else {
            // In name order, and in request order within a name (a stable sort of positions,
            // so that the large entries move once).
            let mut order: Vec<usize> = (0..statuses.len()).collect();
            order.sort_by(|&a, &b| statuses[a].name.cmp(&statuses[b].name));
            let mut slots: Vec<Option<ClientStatusEntry>> = statuses.drain(..).map(Some).collect();
            let mut merged: Vec<ClientStatusEntry> = Vec::with_capacity(order.len());
            for index in order {
                let mut entry = slots[index].take().expect("each entry once");
                if let Some(earlier) = merged.last_mut()
                    && earlier.name == entry.name
                {
                    if entry.status.inventory.is_none() {
                        entry.status.inventory = earlier.status.inventory.take();
                    }
                    *earlier = entry;
                } else {
                    merged.push(entry);
                }
            }
            merged
        };
        if objects.is_empty() {
            return (objects, merged);
        }
        // The last object write of each name, with the client's merged status.
        let mut latest: HashMap<String, Client> = HashMap::new();
        for object in objects {
            latest.insert(object.metadata.name.clone(), object);
        }
        let mut statuses = Vec::with_capacity(merged.len());
        let mut written = Vec::with_capacity(latest.len());
        for entry in merged {
            match latest.remove(&entry.name) {
                Some(mut object) => {
                    object.status = entry.status;
                    written.push(object);
                }
                None => statuses.push(entry),
            }
        }
        (written, statuses)
    }
}

/// Writes clients (and the events about them) to the store, sharing one transaction among
/// concurrent requests: a thousand heartbeats that change state at once cost one status
/// transaction and one event transaction, not a thousand of each. Requests are written in the
/// order they were made.
#[derive(Clone)]
pub struct Persister {
    sender: mpsc::UnboundedSender<PersistRequest>,
}

impl Persister {
    /// Starts the writer on a thread of its own, and returns at once. It ends when every
    /// `Persister` handle is dropped. `batches` counts the group commits it makes.
    ///
    /// A thread, not a task: the next batch is written as soon as the last one committed, even
    /// while the runtime's workers are busy answering the agents that batch released (a reconcile
    /// pass over 50,000 clients commits in parts, and each part wakes thousands of long-polls).
    /// It holds the store weakly, so that it never keeps a closed store open.
    pub fn start(
        store: Arc<dyn Store>,
        batches: prometheus_client::metrics::counter::Counter,
    ) -> std::io::Result<Persister> {
        let (sender, receiver) = mpsc::unbounded_channel::<PersistRequest>();
        let store = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name("tc-client-writer".into())
            .spawn(move || write_batches(&store, receiver, &batches))?;
        Ok(Persister { sender })
    }

    fn send(&self, request: PersistRequest) -> Result<(), String> {
        self.sender
            .send(request)
            .map_err(|_| "the controller is shutting down".to_string())
    }

    async fn send_and_wait(&self, request: PersistRequest) -> Result<(), String> {
        self.queue(request).await
    }

    /// Queues a request now; the future completes when it is committed.
    fn queue(
        &self,
        mut request: PersistRequest,
    ) -> impl std::future::Future<Output = Result<(), String>> + use<> {
        let (done, wait) = oneshot::channel();
        request.done = Some(done);
        let sent = self.send(request);
        async move {
            sent?;
            wait.await
                .map_err(|_| "the controller is shutting down".to_string())?
        }
    }

    /// Queues client statuses at once (in order with every other write) and returns a future
    /// that completes when they are committed: for writing a large set in parts that commit one
    /// after the other while the caller waits for each in turn.
    pub fn queue_statuses(
        &self,
        statuses: Vec<ClientStatusEntry>,
    ) -> impl std::future::Future<Output = Result<(), String>> + use<> {
        self.queue(PersistRequest {
            objects: vec![],
            statuses,
            liveness: vec![],
            events: vec![],
            done: None,
        })
    }

    /// Writes client objects (labels, spec, and the status they carry; a status without
    /// inventory keeps the recorded one) and waits until they are committed.
    pub async fn write_objects(&self, objects: Vec<Client>) -> Result<(), String> {
        if objects.is_empty() {
            return Ok(());
        }
        self.send_and_wait(PersistRequest {
            objects,
            statuses: vec![],
            liveness: vec![],
            events: vec![],
            done: None,
        })
        .await
    }

    /// Writes client statuses, then records events about them, and waits until both are
    /// committed (an event that cannot be recorded is logged, not returned).
    pub async fn write_statuses(
        &self,
        statuses: Vec<ClientStatusEntry>,
        events: Vec<Event>,
    ) -> Result<(), String> {
        if statuses.is_empty() && events.is_empty() {
            return Ok(());
        }
        self.send_and_wait(PersistRequest {
            objects: vec![],
            statuses,
            liveness: vec![],
            events,
            done: None,
        })
        .await
    }

    /// Records events (after every write requested before them) without waiting.
    pub fn record_later(&self, events: Vec<Event>) {
        if !events.is_empty() {
            let _ = self.send(PersistRequest {
                objects: vec![],
                statuses: vec![],
                liveness: vec![],
                events,
                done: None,
            });
        }
    }

    /// Writes liveness records and waits until they are committed.
    pub async fn write_liveness(&self, liveness: Vec<Liveness>) -> Result<(), String> {
        if liveness.is_empty() {
            return Ok(());
        }
        self.send_and_wait(PersistRequest {
            objects: vec![],
            statuses: vec![],
            liveness,
            events: vec![],
            done: None,
        })
        .await
    }

    /// Queues liveness records without waiting (the periodic flush).
    pub fn write_liveness_later(&self, liveness: Vec<Liveness>) {
        if !liveness.is_empty() {
            let _ = self.send(PersistRequest {
                objects: vec![],
                statuses: vec![],
                liveness,
                events: vec![],
                done: None,
            });
        }
    }
}

/// The writer thread: takes the requests queued meanwhile (up to the batch bounds), writes them
/// in one group commit, answers their waiters, and goes on with the next.
fn write_batches(
    store: &std::sync::Weak<dyn Store>,
    mut receiver: mpsc::UnboundedReceiver<PersistRequest>,
    batches: &prometheus_client::metrics::counter::Counter,
) {
    while let Some(first) = receiver.blocking_recv() {
        let mut waiters = vec![];
        let mut batch = Batch::default();
        let mut requests = 0;
        let mut records = 0;
        let mut next = Some(first);
        while let Some(mut request) = next.take() {
            waiters.extend(request.done.take());
            records += request.records();
            batch.add(request);
            requests += 1;
            // Bounded, so that a large write queued in parts (a reconcile pass) is committed,
            // and its waiters answered, part by part.
            if requests < MAX_BATCH_REQUESTS && records < MAX_BATCH_RECORDS {
                next = receiver.try_recv().ok();
            }
        }
        let liveness = std::mem::take(&mut batch.liveness);
        let events = std::mem::take(&mut batch.events);
        let (objects, statuses) = batch.split();
        let count = objects.len() + statuses.len() + liveness.len();
        batches.inc();
        let result = match store.upgrade() {
            None => Err("the controller is shutting down".to_string()),
            Some(store) => {
                let write = || -> tc_store::Result<()> {
                    store.put_clients(objects)?;
                    store.put_client_status(statuses)?;
                    store.put_liveness(liveness)?;
                    if let Err(error) = store.append_events(events) {
                        tracing::error!(%error, "recording events failed");
                    }
                    Ok(())
                };
                // A store that panics fails this batch, not every later one.
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(write)) {
                    Ok(written) => written.map_err(|e| e.to_string()),
                    Err(_) => Err("writing clients panicked".to_string()),
                }
            }
        };
        if let Err(error) = &result {
            tracing::error!(%error, clients = count, "writing clients failed");
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

/// Flushes liveness-only changes every `interval` until `shutdown` fires, then once more.
pub async fn flush_liveness(
    fleet: Arc<Fleet>,
    persister: Persister,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {
                let _ = persister.write_liveness(fleet.take_dirty()).await;
                return;
            }
        }
        persister.write_liveness_later(fleet.take_dirty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tc_api::{ClientSpec, ClientStatus};

    fn client(name: &str) -> Client {
        Client::new(
            name,
            ClientSpec {
                machine_id: format!("machine-{name}"),
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_batch_keeps_the_last_status_and_an_earlier_inventory() {
        let inventory = tc_proto::Inventory {
            hostname: "h".into(),
            ..Default::default()
        };
        let status = |revision: u64, inventory: Option<tc_proto::Inventory>| ClientStatus {
            desired_revision: revision,
            inventory,
            ..Default::default()
        };
        let request = |objects: Vec<Client>, statuses: Vec<ClientStatusEntry>| PersistRequest {
            objects,
            statuses,
            liveness: vec![],
            events: vec![],
            done: None,
        };
        let mut batch = Batch::default();
        batch.add(request(
            vec![],
            vec![ClientStatusEntry {
                name: "a".into(),
                status: status(1, Some(inventory.clone())),
            }],
        ));
        let mut object = client("a");
        object.status = status(2, None);
        batch.add(request(vec![object], vec![]));
        batch.add(request(
            vec![],
            vec![
                ClientStatusEntry {
                    name: "a".into(),
                    status: status(3, None),
                },
                ClientStatusEntry {
                    name: "b".into(),
                    status: status(7, None),
                },
            ],
        ));
        let (objects, statuses) = batch.split();
        assert_eq!(objects.len(), 1);
        assert_eq!(
            objects[0].status.desired_revision, 3,
            "the last status wins"
        );
        assert_eq!(objects[0].status.inventory, Some(inventory));
        assert_eq!(statuses.len(), 1);
        assert_eq!(statuses[0].name, "b");
        assert_eq!(statuses[0].status.desired_revision, 7);

        // Statuses out of name order come out in name order, one per client, the last winning.
        let entry = |name: &str, revision: u64| ClientStatusEntry {
            name: name.into(),
            status: status(revision, None),
        };
        let mut batch = Batch::default();
        batch.add(request(vec![], vec![entry("c", 1), entry("a", 2)]));
        batch.add(request(vec![], vec![entry("b", 3), entry("a", 4)]));
        let (objects, statuses) = batch.split();
        assert!(objects.is_empty());
        let merged: Vec<(&str, u64)> = statuses
            .iter()
            .map(|e| (e.name.as_str(), e.status.desired_revision))
            .collect();
        assert_eq!(merged, [("a", 4), ("b", 3), ("c", 1)]);
    }

    /// The writer goes on with the next batch while the runtime is busy (here: blocked), so a
    /// reconcile pass's parts reach the store one after the other without waiting for the
    /// runtime to get round to the writer between them.
    #[tokio::test(flavor = "current_thread")]
    async fn batches_are_written_while_the_runtime_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(tc_store::RedbStore::open(&dir.path().join("state.redb")).unwrap());
        store.put_clients(vec![client("a"), client("b")]).unwrap();
        let persister = Persister::start(
            store.clone(),
            prometheus_client::metrics::counter::Counter::default(),
        )
        .unwrap();
        let entry = |name: &str, revision: u64| ClientStatusEntry {
            name: name.into(),
            status: ClientStatus {
                desired_revision: revision,
                ..Default::default()
            },
        };
        // Queued as two parts (more records than one batch takes); this task does not yield.
        let first = persister.queue_statuses(
            std::iter::repeat_with(|| entry("a", 1))
                .take(MAX_BATCH_RECORDS)
                .collect(),
        );
        let second = persister.queue_statuses(vec![entry("b", 2)]);
        let revision = |name: &str| {
            store
                .get_client(name)
                .unwrap()
                .map(|c| c.status.desired_revision)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while revision("b") != Some(2) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            (revision("a"), revision("b")),
            (Some(1), Some(2)),
            "both parts are committed while the runtime never ran"
        );
        assert_eq!(first.await, Ok(()));
        assert_eq!(second.await, Ok(()));
    }

    /// Writing after the store is gone is an error for the waiter, not a hang or a panic.
    #[tokio::test]
    async fn a_write_after_the_store_closed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(tc_store::RedbStore::open(&dir.path().join("state.redb")).unwrap());
        let persister = Persister::start(
            store.clone(),
            prometheus_client::metrics::counter::Counter::default(),
        )
        .unwrap();
        drop(store);
        // The writer held it weakly: the file is free to open again at once.
        let reopened = tc_store::RedbStore::open(&dir.path().join("state.redb"));
        assert!(reopened.is_ok(), "{:?}", reopened.err());
        drop(reopened);
        let written = persister.write_liveness(vec![Liveness {
            name: "a".into(),
            last_heartbeat: tc_proto::Timestamp::from_unix_millis(1),
            load: Default::default(),
        }]);
        assert_eq!(
            written.await,
            Err("the controller is shutting down".to_string())
        );
    }
}
