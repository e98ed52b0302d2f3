//! The fleet in memory: every client's object, its desired state as agents see it, and the
//! long-poll channels.
//!
//! The store stays the durable truth; this is its write-through cache. Heartbeats that only prove
//! a client is alive update `lastHeartbeat` here and mark the client dirty; dirty clients are
//! written in batches (one transaction per flush). Anything that changes package state, inventory,
//! labels or assignments is written through the [`Persister`] before the request is answered, and
//! concurrent writes share one transaction (group commit).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tc_api::Client;
use tc_proto::DesiredState;
use tc_store::Store;
use tokio::sync::{mpsc, oneshot, watch};

/// One client, as the controller holds it.
#[derive(Debug)]
pub struct ClientSlot {
    /// The client and its served desired state.
    pub state: Mutex<ClientRuntime>,
    /// The client's current desired revision, for long-polls.
    pub revision: watch::Sender<u64>,
}

/// The mutable part of a [`ClientSlot`].
#[derive(Debug)]
pub struct ClientRuntime {
    /// The client object (labels, status) as last persisted or about to be.
    pub client: Client,
    /// What the agent is served: built from `client.status.desired` and the ready releases.
    pub desired: Arc<DesiredState>,
    /// Heartbeat interval for this client (the smallest of its groups').
    pub heartbeat_seconds: u32,
}

#[derive(Default)]
struct Index {
    by_name: HashMap<String, Arc<ClientSlot>>,
    /// Token hash -> client name.
    by_token: HashMap<String, String>,
}

/// All clients in memory.
#[derive(Default)]
pub struct Fleet {
    index: RwLock<Index>,
    /// Clients whose only change is `lastHeartbeat`/`load`; flushed in batches.
    dirty: Mutex<HashSet<String>>,
}

impl Fleet {
    /// Loads every client and token from the store.
    pub fn load(
        store: &dyn Store,
        token_of: impl Fn(&str) -> Option<String>,
    ) -> tc_store::Result<Fleet> {
        let fleet = Fleet::default();
        for client in store.list_clients()? {
            let token = token_of(&client.metadata.name);
            fleet.insert(client, Arc::new(DesiredState::default()), token);
        }
        Ok(fleet)
    }

    /// Adds or replaces a client; `token_hash` replaces its token when given.
    pub fn insert(
        &self,
        client: Client,
        desired: Arc<DesiredState>,
        token_hash: Option<String>,
    ) -> Arc<ClientSlot> {
        let name = client.metadata.name.clone();
        let mut index = self.index.write().expect("fleet lock");
        if let Some(token_hash) = token_hash {
            index.by_token.retain(|_, owner| *owner != name);
            index.by_token.insert(token_hash, name.clone());
        }
        if let Some(slot) = index.by_name.get(&name) {
            let mut state = slot.state.lock().expect("client lock");
            state.client = client;
            return slot.clone();
        }
        let revision = client.status.desired_revision;
        let slot = Arc::new(ClientSlot {
            state: Mutex::new(ClientRuntime {
                client,
                desired,
                heartbeat_seconds: tc_api::resources::DEFAULT_HEARTBEAT_SECONDS,
            }),
            revision: watch::Sender::new(revision),
        });
        index.by_name.insert(name, slot.clone());
        slot
    }

    /// Removes a client and its token.
    pub fn remove(&self, name: &str) {
        let mut index = self.index.write().expect("fleet lock");
        index.by_name.remove(name);
        index.by_token.retain(|_, owner| owner != name);
        self.dirty.lock().expect("dirty lock").remove(name);
    }

    /// The client a token belongs to.
    pub fn by_token(&self, token_hash: &str) -> Option<Arc<ClientSlot>> {
        let index = self.index.read().expect("fleet lock");
        let name = index.by_token.get(token_hash)?;
        index.by_name.get(name).cloned()
    }

    /// A client by name.
    pub fn get(&self, name: &str) -> Option<Arc<ClientSlot>> {
        self.index
            .read()
            .expect("fleet lock")
            .by_name
            .get(name)
            .cloned()
    }

    /// Every client slot, sorted by name.
    pub fn slots(&self) -> Vec<(String, Arc<ClientSlot>)> {
        let index = self.index.read().expect("fleet lock");
        let mut slots: Vec<_> = index
            .by_name
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        slots.sort_by(|a, b| a.0.cmp(&b.0));
        slots
    }

    /// Snapshots of every client, sorted by name.
    pub fn clients(&self) -> Vec<Client> {
        self.slots()
            .into_iter()
            .map(|(_, slot)| slot.state.lock().expect("client lock").client.clone())
            .collect()
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.index.read().expect("fleet lock").by_name.len()
    }

    /// True when there are no clients.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks a client whose only change is liveness.
    pub fn mark_dirty(&self, name: &str) {
        self.dirty
            .lock()
            .expect("dirty lock")
            .insert(name.to_string());
    }

    /// Takes the liveness-dirty clients' current objects.
    pub fn take_dirty(&self) -> Vec<Client> {
        let names: Vec<String> = self.dirty.lock().expect("dirty lock").drain().collect();
        names
            .into_iter()
            .filter_map(|name| self.get(&name))
            .map(|slot| slot.state.lock().expect("client lock").client.clone())
            .collect()
    }
}

struct PersistRequest {
    clients: Vec<Client>,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// Writes clients to the store, sharing one transaction among concurrent requests.
#[derive(Clone)]
pub struct Persister {
    sender: mpsc::UnboundedSender<PersistRequest>,
}

impl Persister {
    /// Starts the writer task. It ends when every `Persister` handle is dropped.
    pub fn start(store: Arc<dyn Store>) -> Persister {
        let (sender, mut receiver) = mpsc::unbounded_channel::<PersistRequest>();
        tokio::spawn(async move {
            while let Some(first) = receiver.recv().await {
                let mut batch = vec![first];
                while batch.len() < 4096 {
                    match receiver.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                // Last write of a client wins within a batch.
                let mut clients: HashMap<String, Client> = HashMap::new();
                let mut waiters = vec![];
                for request in batch {
                    for client in request.clients {
                        clients.insert(client.metadata.name.clone(), client);
                    }
                    waiters.extend(request.done);
                }
                let store = store.clone();
                let clients: Vec<Client> = clients.into_values().collect();
                let count = clients.len();
                let result = tokio::task::spawn_blocking(move || store.put_clients(clients))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()));
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

    /// Writes clients and waits until they are committed.
    pub async fn write(&self, clients: Vec<Client>) -> Result<(), String> {
        if clients.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.sender
            .send(PersistRequest {
                clients,
                done: Some(done),
            })
            .map_err(|_| "the controller is shutting down".to_string())?;
        wait.await
            .map_err(|_| "the controller is shutting down".to_string())?
    }

    /// Queues clients without waiting (liveness flushes).
    pub fn write_later(&self, clients: Vec<Client>) {
        if !clients.is_empty() {
            let _ = self.sender.send(PersistRequest {
                clients,
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
                let _ = persister.write(fleet.take_dirty()).await;
                return;
            }
        }
        persister.write_later(fleet.take_dirty());
    }
}
