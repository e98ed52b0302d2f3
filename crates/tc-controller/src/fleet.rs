//! The fleet in memory: every client's object, its desired state as agents see it, and the
//! long-poll wake-ups.
//!
//! The store stays the durable truth; this is its write-through cache. Heartbeats that only prove
//! a client is alive update `lastHeartbeat` and `load` here and queue the client for the next
//! liveness flush, which writes small liveness records of every queued client in one transaction
//! ([`Store::put_liveness`]). Anything that changes package state, inventory, labels or
//! assignments is written through the [`Persister`] before the request is answered, and
//! concurrent writes share one transaction (group commit).
//!
//! Everything kept per client is sized for fleets of a million: tokens are indexed by their
//! 32-byte digest, a client's revision cell is a counter and one wake-up list (not a channel),
//! and the liveness queue holds slots, not names.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tc_api::{Client, Event};
use tc_proto::DesiredState;
use tc_store::{Liveness, Store};
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// A client's desired revision, for long-polls: the current value, and a wake-up for the
/// requests waiting for it to move.
#[derive(Debug)]
pub struct RevisionCell {
    value: AtomicU64,
    changed: Notify,
}

impl RevisionCell {
    /// A cell holding `revision`.
    pub fn new(revision: u64) -> RevisionCell {
        RevisionCell {
            value: AtomicU64::new(revision),
            changed: Notify::new(),
        }
    }

    /// The current revision.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::SeqCst)
    }

    /// Sets the revision, wakes every waiter when it changed, and returns the previous one.
    pub fn send_replace(&self, revision: u64) -> u64 {
        let previous = self.value.swap(revision, Ordering::SeqCst);
        if previous != revision {
            self.changed.notify_waiters();
        }
        previous
    }

    /// Completes once the revision is greater than `after`.
    pub async fn wait_newer(&self, after: u64) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a change between the check and the wait wakes us.
            notified.as_mut().enable();
            if self.get() > after {
                return;
            }
            notified.await;
        }
    }
}

/// One client, as the controller holds it.
#[derive(Debug)]
pub struct ClientSlot {
    /// The client and its served desired state.
    pub state: Mutex<ClientRuntime>,
    /// The client's current desired revision, for long-polls.
    pub revision: RevisionCell,
    /// Queued for the next liveness flush.
    dirty: AtomicBool,
    /// Removed from the fleet (a queued flush must not write it).
    removed: AtomicBool,
    /// Digest of the client's token (changed only under the fleet's index lock).
    token: Mutex<Option<[u8; 32]>>,
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
    /// Sorted, so that listing every client in name order needs no sort.
    by_name: BTreeMap<String, Arc<ClientSlot>>,
    /// SHA-256 of a client token -> its client.
    by_token: HashMap<[u8; 32], Arc<ClientSlot>, DigestHash>,
}

/// Hashes a SHA-256 digest by taking its first eight bytes: digests are uniformly distributed
/// and nobody can choose them (they are digests of random tokens), so hashing them again, as
/// the default SipHash does, only costs time on every agent request.
#[derive(Clone, Copy, Default)]
struct DigestHash;

impl std::hash::BuildHasher for DigestHash {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

/// See [`DigestHash`].
#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let length = bytes.len().min(8);
        word[..length].copy_from_slice(&bytes[..length]);
        self.0 = u64::from_le_bytes(word);
    }

    fn write_usize(&mut self, _length: usize) {
        // The length prefix `[u8; 32]` hashes before its bytes: the same for every digest.
    }
}

/// All clients in memory.
#[derive(Default)]
pub struct Fleet {
    index: RwLock<Index>,
    /// Clients whose only change is `lastHeartbeat`/`load`; flushed in batches.
    dirty: Mutex<Vec<Arc<ClientSlot>>>,
}

/// The SHA-256 digest of a token, as the fleet indexes it.
pub fn token_digest(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().try_into().expect("SHA-256 has 32 bytes")
}

/// The digest of a lowercase or uppercase hex SHA-256 (as stored), if it is one.
fn parse_hex_digest(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = nibble(bytes[2 * i])? << 4 | nibble(bytes[2 * i + 1])?;
    }
    Some(digest)
}

impl Fleet {
    /// Loads every client and token from the store.
    pub fn load(
        store: &dyn Store,
        token_of: impl Fn(&str) -> Option<String>,
    ) -> tc_store::Result<Fleet> {
        let fleet = Fleet::default();
        let empty = Arc::new(DesiredState::default());
        for client in store.list_clients()? {
            let token = token_of(&client.metadata.name);
            fleet.insert(client, empty.clone(), token);
        }
        Ok(fleet)
    }

    /// Adds or replaces a client; `token_hash` (hex SHA-256) replaces its token when given.
    pub fn insert(
        &self,
        client: Client,
        desired: Arc<DesiredState>,
        token_hash: Option<String>,
    ) -> Arc<ClientSlot> {
        let digest = token_hash.as_deref().and_then(parse_hex_digest);
        let name = client.metadata.name.clone();
        let mut index = self.index.write().expect("fleet lock");
        let slot = match index.by_name.get(&name) {
            Some(slot) => {
                slot.state.lock().expect("client lock").client = client;
                slot.clone()
            }
            None => {
                let revision = client.status.desired_revision;
                let slot = Arc::new(ClientSlot {
                    state: Mutex::new(ClientRuntime {
                        client,
                        desired,
                        heartbeat_seconds: tc_api::resources::DEFAULT_HEARTBEAT_SECONDS,
                    }),
                    revision: RevisionCell::new(revision),
                    dirty: AtomicBool::new(false),
                    removed: AtomicBool::new(false),
                    token: Mutex::new(None),
                });
                index.by_name.insert(name, slot.clone());
                slot
            }
        };
        if let Some(digest) = digest {
            let mut token = slot.token.lock().expect("token lock");
            if let Some(old) = token.replace(digest) {
                index.by_token.remove(&old);
            }
            index.by_token.insert(digest, slot.clone());
        }
        slot
    }

    /// Removes a client and its token.
    pub fn remove(&self, name: &str) {
        let mut index = self.index.write().expect("fleet lock");
        if let Some(slot) = index.by_name.remove(name) {
            slot.removed.store(true, Ordering::Release);
            if let Some(token) = slot.token.lock().expect("token lock").take() {
                index.by_token.remove(&token);
            }
        }
    }

    /// The client a token belongs to, by the hex SHA-256 of the token.
    pub fn by_token(&self, token_hash: &str) -> Option<Arc<ClientSlot>> {
        self.by_token_digest(&parse_hex_digest(token_hash)?)
    }

    /// The client a token belongs to, by the token's digest ([`token_digest`]).
    pub fn by_token_digest(&self, digest: &[u8; 32]) -> Option<Arc<ClientSlot>> {
        self.index
            .read()
            .expect("fleet lock")
            .by_token
            .get(digest)
            .cloned()
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
        index
            .by_name
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }

    /// Snapshots of every client, sorted by name.
    pub fn clients(&self) -> Vec<Client> {
        let slots: Vec<Arc<ClientSlot>> = self
            .index
            .read()
            .expect("fleet lock")
            .by_name
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .map(|slot| slot.state.lock().expect("client lock").client.clone())
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

    /// Queues a client whose only change is liveness for the next flush.
    pub fn mark_dirty(&self, slot: &Arc<ClientSlot>) {
        if !slot.dirty.swap(true, Ordering::AcqRel) {
            self.dirty.lock().expect("dirty lock").push(slot.clone());
        }
    }

    /// Takes the liveness of the queued clients that are still in the fleet.
    pub fn take_dirty(&self) -> Vec<Liveness> {
        let slots = std::mem::take(&mut *self.dirty.lock().expect("dirty lock"));
        let mut entries = Vec::with_capacity(slots.len());
        for slot in slots {
            // Cleared before reading, so a heartbeat after the read queues the client again.
            slot.dirty.store(false, Ordering::Release);
            let entry = {
                let state = slot.state.lock().expect("client lock");
                let status = &state.client.status;
                status.last_heartbeat.map(|last_heartbeat| Liveness {
                    name: state.client.metadata.name.clone(),
                    last_heartbeat,
                    load: status.load,
                })
            };
            // A client deleted since (and perhaps enrolled again under its name) is skipped.
            if let Some(entry) = entry
                && !slot.removed.load(Ordering::Acquire)
            {
                entries.push(entry);
            }
        }
        entries
    }
}

struct PersistRequest {
    clients: Vec<Client>,
    liveness: Vec<Liveness>,
    /// Events about these writes, recorded after them (a failure is logged, never returned:
    /// events never fail a request).
    events: Vec<Event>,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// Writes clients (and the events about them) to the store, sharing one transaction among
/// concurrent requests: a thousand heartbeats that change state at once cost one client
/// transaction and one event transaction, not a thousand of each.
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
                let mut batch = vec![first];
                while batch.len() < 4096 {
                    match receiver.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                // Last write of a client wins within a batch.
                let mut clients: HashMap<String, Client> = HashMap::new();
                let mut liveness = vec![];
                let mut events = vec![];
                let mut waiters = vec![];
                for request in batch {
                    for client in request.clients {
                        clients.insert(client.metadata.name.clone(), client);
                    }
                    liveness.extend(request.liveness);
                    events.extend(request.events);
                    waiters.extend(request.done);
                }
                let store = store.clone();
                let clients: Vec<Client> = clients.into_values().collect();
                let count = clients.len() + liveness.len();
                batches.inc();
                let result = tokio::task::spawn_blocking(move || -> tc_store::Result<()> {
                    store.put_clients(clients)?;
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

    async fn send_and_wait(
        &self,
        clients: Vec<Client>,
        liveness: Vec<Liveness>,
        events: Vec<Event>,
    ) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.sender
            .send(PersistRequest {
                clients,
                liveness,
                events,
                done: Some(done),
            })
            .map_err(|_| "the controller is shutting down".to_string())?;
        wait.await
            .map_err(|_| "the controller is shutting down".to_string())?
    }

    /// Writes clients and waits until they are committed.
    pub async fn write(&self, clients: Vec<Client>) -> Result<(), String> {
        if clients.is_empty() {
            return Ok(());
        }
        self.send_and_wait(clients, vec![], vec![]).await
    }

    /// Writes clients, then records events about them, and waits until both are committed
    /// (an event that cannot be recorded is logged, not returned).
    pub async fn write_with_events(
        &self,
        clients: Vec<Client>,
        events: Vec<Event>,
    ) -> Result<(), String> {
        if clients.is_empty() && events.is_empty() {
            return Ok(());
        }
        self.send_and_wait(clients, vec![], events).await
    }

    /// Queues clients without waiting.
    pub fn write_later(&self, clients: Vec<Client>) {
        if !clients.is_empty() {
            let _ = self.sender.send(PersistRequest {
                clients,
                liveness: vec![],
                events: vec![],
                done: None,
            });
        }
    }

    /// Writes liveness records and waits until they are committed.
    pub async fn write_liveness(&self, liveness: Vec<Liveness>) -> Result<(), String> {
        if liveness.is_empty() {
            return Ok(());
        }
        self.send_and_wait(vec![], liveness, vec![]).await
    }

    /// Queues liveness records without waiting (the periodic flush).
    pub fn write_liveness_later(&self, liveness: Vec<Liveness>) {
        if !liveness.is_empty() {
            let _ = self.sender.send(PersistRequest {
                clients: vec![],
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
    use tc_api::ClientSpec;

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
    fn tokens_move_with_re_enrolment_and_go_with_the_client() {
        let fleet = Fleet::default();
        let first = crate::tokens::hash("first");
        let second = crate::tokens::hash("second");
        fleet.insert(client("a"), Default::default(), Some(first.clone()));
        fleet.insert(
            client("b"),
            Default::default(),
            Some(crate::tokens::hash("other")),
        );
        assert!(fleet.by_token(&first).is_some());
        assert!(fleet.by_token_digest(&token_digest("first")).is_some());
        fleet.insert(client("a"), Default::default(), Some(second.clone()));
        assert!(
            fleet.by_token(&first).is_none(),
            "the old token stops working"
        );
        assert!(fleet.by_token(&second).is_some());
        assert!(fleet.by_token("not hex").is_none());
        fleet.remove("a");
        assert!(fleet.by_token(&second).is_none());
        assert!(fleet.by_token_digest(&token_digest("other")).is_some());
        assert_eq!(fleet.len(), 1);
    }

    #[test]
    fn digests_hash_to_their_first_eight_bytes() {
        use std::hash::BuildHasher;
        let digest = token_digest("a token");
        let expected = u64::from_le_bytes(digest[..8].try_into().unwrap());
        assert_eq!(DigestHash.hash_one(digest), expected);
        assert_ne!(DigestHash.hash_one(token_digest("another")), expected);
    }

    #[test]
    fn liveness_is_queued_once_and_skips_removed_clients() {
        let fleet = Fleet::default();
        let a = fleet.insert(client("a"), Default::default(), None);
        let b = fleet.insert(client("b"), Default::default(), None);
        for slot in [&a, &b] {
            slot.state.lock().unwrap().client.status.last_heartbeat =
                Some(tc_api::Timestamp::from_unix_millis(5));
        }
        fleet.mark_dirty(&a);
        fleet.mark_dirty(&a);
        fleet.mark_dirty(&b);
        fleet.remove("b");
        fleet.insert(client("b"), Default::default(), None);
        let names: Vec<String> = fleet.take_dirty().into_iter().map(|l| l.name).collect();
        assert_eq!(names, vec!["a".to_string()]);
        assert!(fleet.take_dirty().is_empty());
        fleet.mark_dirty(&a);
        assert_eq!(fleet.take_dirty().len(), 1, "queued again after a flush");
    }

    #[tokio::test]
    async fn revision_waiters_wake_on_a_newer_revision_only() {
        let cell = Arc::new(RevisionCell::new(3));
        cell.wait_newer(2).await;
        let waiter = tokio::spawn({
            let cell = cell.clone();
            async move { cell.wait_newer(3).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(cell.send_replace(3), 3);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert_eq!(cell.send_replace(4), 3);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
