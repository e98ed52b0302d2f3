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
    /// Starts the writer task. It ends when every `Persister` handle is dropped. `batches` counts
    /// the group commits it makes.
    pub fn start(
        store: Arc<dyn Store>,
        batches: prometheus_client::metrics::counter::Counter,
    ) -> Persister {
        let (sender, mut receiver) = mpsc::unbounded_channel::<PersistRequest>();
        tokio::spawn(async move {
            while let Some(first) = receiver.recv().await {
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
                    // Bounded, so that a large write queued in parts (a reconcile pass) is
                    // committed, and its waiters answered, part by part.
                    if requests < MAX_BATCH_REQUESTS && records < MAX_BATCH_RECORDS {
                        next = receiver.try_recv().ok();
                    }
                }
                let liveness = std::mem::take(&mut batch.liveness);
                let events = std::mem::take(&mut batch.events);
                let (objects, statuses) = batch.split();
                let count = objects.len() + statuses.len() + liveness.len();
                let store = store.clone();
                batches.inc();
                let result = tokio::task::spawn_blocking(move || -> tc_store::Result<()> {
                    store.put_clients(objects)?;
                    store.put_client_status(statuses)?;
                    store.put_liveness(liveness)?;
                    if let Err(error) = store.append_events(events) {
                        tracing::error!(%error, "recording events failed");
                    }
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
                if let Err(error) = &result {
                    tracing::error!(%error, clients = count, "writing clients failed");
                }
                for waiter in waiters {
                    let _ = waiter.send(result.clone());
                }
            }
        });
        Persister { sender }
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
}
