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

use tc_api::{AssignedPackage, Client, ClientPhase, ClientStatus, Condition, Event, Timestamp};
use tc_proto::{DesiredPackage, Inventory, Load, PackageReport};
use tc_store::{ClientStatusEntry, Liveness, Store};
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

    /// Completes once the revision is greater than `after`, or `closing` is set (and the cell
    /// woken with [`RevisionCell::wake`]).
    pub async fn wait_newer(&self, after: u64, closing: &AtomicBool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the checks, so a change between them and the wait wakes us.
            notified.as_mut().enable();
            if self.get() > after || closing.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Wakes every waiter, so that it looks again.
    pub fn wake(&self) {
        self.changed.notify_waiters();
    }
}

/// Strings that many clients share (label keys, and values such as a site or an OS name), held
/// once. A string no client uses any more (the old host name of a renamed client) is dropped by
/// the next purge, which runs whenever the set has doubled since the last one, so the set stays
/// within twice the strings in use at an amortised constant cost per string.
#[derive(Debug)]
pub struct Interner(Mutex<InternerSet>);

#[derive(Debug)]
struct InternerSet {
    strings: std::collections::HashSet<Arc<str>>,
    /// Size at which the next purge runs.
    purge_at: usize,
}

/// The smallest size at which an interner purges.
const MIN_PURGE_AT: usize = 1024;

impl Default for Interner {
    fn default() -> Self {
        Interner(Mutex::new(InternerSet {
            strings: Default::default(),
            purge_at: MIN_PURGE_AT,
        }))
    }
}

impl Interner {
    /// The shared copy of `text`.
    pub fn intern(&self, text: &str) -> Arc<str> {
        let mut set = self.0.lock().expect("interner lock");
        if let Some(shared) = set.strings.get(text) {
            return shared.clone();
        }
        if set.strings.len() >= set.purge_at {
            set.strings.retain(|shared| Arc::strong_count(shared) > 1);
            set.purge_at = (2 * set.strings.len()).max(MIN_PURGE_AT);
        }
        let shared: Arc<str> = Arc::from(text);
        set.strings.insert(shared.clone());
        shared
    }

    /// How many strings are held.
    pub fn len(&self) -> usize {
        self.0.lock().expect("interner lock").strings.len()
    }

    /// True when no string is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A set of labels, compact: (key, value) pairs of shared strings, sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Arc<str>, Arc<str>)]>);

impl Labels {
    /// The labels of a map, with their strings interned.
    pub fn new(map: &BTreeMap<String, String>, interner: &Interner) -> Labels {
        Labels(
            map.iter()
                .map(|(key, value)| (interner.intern(key), interner.intern(value)))
                .collect(),
        )
    }

    /// The value of a label.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|at| &*self.0[at].1)
    }

    /// The labels as a map.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }
}

/// A client's labels by source; selectors see them merged (admin over agent over automatic),
/// as [`Client::refresh_labels`] merges them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientLabels {
    /// Derived from the inventory (host name, OS, architecture).
    pub automatic: Labels,
    /// From the agent's configuration.
    pub agent: Labels,
    /// Set by admins.
    pub admin: Labels,
}

impl ClientLabels {
    /// The labels of a client object: automatic ones from its inventory when it carries one,
    /// else from its stored merged labels.
    pub fn of(client: &Client, interner: &Interner) -> ClientLabels {
        let automatic = match &client.status.inventory {
            Some(inventory) => tc_api::resources::automatic_labels(inventory),
            None => client
                .metadata
                .labels
                .iter()
                .filter(|(key, _)| {
                    tc_api::resources::AUTOMATIC_LABEL_KEYS.contains(&key.as_str())
                        && !client.spec.agent_labels.contains_key(*key)
                        && !client.spec.admin_labels.contains_key(*key)
                })
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        };
        ClientLabels {
            automatic: Labels::new(&automatic, interner),
            agent: Labels::new(&client.spec.agent_labels, interner),
            admin: Labels::new(&client.spec.admin_labels, interner),
        }
    }

    /// The merged value of a label.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.admin
            .get(key)
            .or_else(|| self.agent.get(key))
            .or_else(|| self.automatic.get(key))
    }

    /// True when `selector` selects these labels.
    pub fn matches(&self, selector: &tc_api::LabelSelector) -> bool {
        selector.matches_with(|key| self.get(key))
    }

    /// The merged labels, as `metadata.labels` shows them.
    pub fn merged(&self) -> BTreeMap<String, String> {
        let mut labels = self.automatic.to_map();
        labels.extend(self.agent.to_map());
        labels.extend(self.admin.to_map());
        labels
    }
}

/// A client's status as the controller holds it: [`ClientStatus`] without the inventory, which
/// only the store keeps (it is read on API reads), since a million inventories would take a
/// gigabyte of memory for nothing the controller decides on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveStatus {
    /// Online, Offline or Pending.
    pub phase: ClientPhase,
    /// Last heartbeat received.
    pub last_heartbeat: Option<Timestamp>,
    /// Latest load figures.
    pub load: Load,
    /// Hash of the recorded inventory (empty when none is recorded).
    pub inventory_hash: String,
    /// Packages as the agent reports them.
    pub packages: Vec<PackageReport>,
    /// The desired revision those reports were made for.
    pub observed_revision: u64,
    /// What the client is assigned to run now (shared by the clients a pass assigned alike).
    pub desired: Arc<[AssignedPackage]>,
    /// Increases whenever `desired` changes.
    pub desired_revision: u64,
    /// Conditions.
    pub conditions: Vec<Condition>,
}

impl LiveStatus {
    /// The live part of a stored status (its inventory is dropped).
    pub fn of(status: ClientStatus) -> LiveStatus {
        LiveStatus {
            phase: status.phase,
            last_heartbeat: status.last_heartbeat,
            load: status.load,
            inventory_hash: status.inventory_hash,
            packages: status.packages,
            observed_revision: status.observed_revision,
            desired: status.desired.into(),
            desired_revision: status.desired_revision,
            conditions: status.conditions,
        }
    }

    /// The status to store or show, with `inventory`.
    pub fn to_status(&self, inventory: Option<Inventory>) -> ClientStatus {
        ClientStatus {
            phase: self.phase,
            last_heartbeat: self.last_heartbeat,
            inventory,
            inventory_hash: self.inventory_hash.clone(),
            load: self.load,
            packages: self.packages.clone(),
            observed_revision: self.observed_revision,
            desired: self.desired.to_vec(),
            desired_revision: self.desired_revision,
            conditions: self.conditions.clone(),
            groups: vec![],
            decisions: vec![],
        }
    }
}

/// What an agent is served: a revision and its packages. Clients assigned the same packages
/// share one list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// The desired revision.
    pub revision: u64,
    /// The packages with their download details, sorted by name.
    pub packages: Arc<[DesiredPackage]>,
}

impl Served {
    /// The served state as the protocol's [`tc_proto::DesiredState`] serializes it, without copying.
    pub fn view(&self) -> DesiredView<'_> {
        DesiredView {
            revision: self.revision,
            packages: &self.packages,
        }
    }
}

/// [`tc_proto::DesiredState`] borrowed from a [`Served`]: serializes exactly as `DesiredState` does.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredView<'a> {
    /// See [`tc_proto::DesiredState::revision`].
    pub revision: u64,
    /// See [`tc_proto::DesiredState::packages`].
    pub packages: &'a [DesiredPackage],
}

/// One client, as the controller holds it.
#[derive(Debug)]
pub struct ClientSlot {
    /// The client's name.
    pub name: Arc<str>,
    /// Labels, status and what the agent is served.
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
    /// Labels, by source.
    pub labels: ClientLabels,
    /// Status as last persisted or about to be.
    pub status: LiveStatus,
    /// What the agent is served: built from `status.desired` and the ready releases.
    pub served: Served,
    /// Heartbeat interval for this client (the smallest of its groups').
    pub heartbeat_seconds: u32,
}

impl ClientRuntime {
    /// The client object: the stored one (`stored`, for its metadata, spec and inventory) with
    /// the live labels and status.
    pub fn overlay(&self, mut stored: Client) -> Client {
        let inventory = stored.status.inventory.take();
        stored.status = self.status.to_status(inventory);
        stored.metadata.labels = self.labels.merged();
        stored
    }
}

#[derive(Default)]
struct Index {
    /// Sorted, so that listing every client in name order needs no sort.
    by_name: BTreeMap<Arc<str>, Arc<ClientSlot>>,
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
    /// Label strings, shared between clients.
    pub interner: Interner,
    /// Set at shutdown: long-polls end (see [`Fleet::close`]).
    closing: AtomicBool,
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
    /// Loads every client and token from the store, one client at a time (the store never
    /// holds the whole fleet in memory for this, nor decodes inventories).
    pub fn load(
        store: &dyn Store,
        token_of: impl Fn(&str) -> Option<String>,
    ) -> tc_store::Result<Fleet> {
        let fleet = Fleet::default();
        store.scan_clients(&mut |client| {
            let token = token_of(&client.metadata.name);
            fleet.insert(&client, token);
        })?;
        // Automatic labels from the recorded inventories: a client's stored object keeps the
        // labels of its last object write, and its inventory may have changed since.
        store.scan_inventories(&mut |name, inventory| {
            if let Some(slot) = fleet.get(name) {
                let automatic = Labels::new(
                    &tc_api::resources::automatic_labels(&inventory),
                    &fleet.interner,
                );
                slot.state.lock().expect("client lock").labels.automatic = automatic;
            }
        })?;
        Ok(fleet)
    }

    /// Adds a client, or replaces the labels and status of one already here (keeping what it is
    /// served); `token_hash` (hex SHA-256) replaces its token when given.
    pub fn insert(&self, client: &Client, token_hash: Option<String>) -> Arc<ClientSlot> {
        let digest = token_hash.as_deref().and_then(parse_hex_digest);
        let labels = ClientLabels::of(client, &self.interner);
        let status = LiveStatus::of(ClientStatus {
            inventory: None,
            ..client.status.clone()
        });
        let name = client.metadata.name.as_str();
        let mut index = self.index.write().expect("fleet lock");
        let slot = match index.by_name.get(name) {
            Some(slot) => {
                let mut state = slot.state.lock().expect("client lock");
                state.labels = labels;
                state.status = status;
                drop(state);
                slot.clone()
            }
            None => {
                let revision = status.desired_revision;
                let name: Arc<str> = Arc::from(name);
                let slot = Arc::new(ClientSlot {
                    name: name.clone(),
                    state: Mutex::new(ClientRuntime {
                        labels,
                        status,
                        served: Served {
                            revision,
                            packages: Arc::from([]),
                        },
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

    /// Ends every long-poll, now and later: set at shutdown, so that the server can stop
    /// without waiting for long-polls to time out. (A flag checked by each waiter costs a
    /// long-poll less than also waiting on a shutdown channel.)
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        for slot in self.slots() {
            slot.revision.wake();
        }
    }

    /// Whether [`Fleet::close`] was called.
    pub fn closing(&self) -> &AtomicBool {
        &self.closing
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
    pub fn slots(&self) -> Vec<Arc<ClientSlot>> {
        let index = self.index.read().expect("fleet lock");
        index.by_name.values().cloned().collect()
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
                let status = &state.status;
                status.last_heartbeat.map(|last_heartbeat| Liveness {
                    name: slot.name.to_string(),
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
        fleet.insert(&client("a"), Some(first.clone()));
        fleet.insert(&client("b"), Some(crate::tokens::hash("other")));
        assert!(fleet.by_token(&first).is_some());
        assert!(fleet.by_token_digest(&token_digest("first")).is_some());
        fleet.insert(&client("a"), Some(second.clone()));
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
        let a = fleet.insert(&client("a"), None);
        let b = fleet.insert(&client("b"), None);
        for slot in [&a, &b] {
            slot.state.lock().unwrap().status.last_heartbeat =
                Some(tc_api::Timestamp::from_unix_millis(5));
        }
        fleet.mark_dirty(&a);
        fleet.mark_dirty(&a);
        fleet.mark_dirty(&b);
        fleet.remove("b");
        fleet.insert(&client("b"), None);
        let names: Vec<String> = fleet.take_dirty().into_iter().map(|l| l.name).collect();
        assert_eq!(names, vec!["a".to_string()]);
        assert!(fleet.take_dirty().is_empty());
        fleet.mark_dirty(&a);
        assert_eq!(fleet.take_dirty().len(), 1, "queued again after a flush");
    }

    #[tokio::test]
    async fn revision_waiters_wake_on_a_newer_revision_only() {
        let cell = Arc::new(RevisionCell::new(3));
        let open = AtomicBool::new(false);
        cell.wait_newer(2, &open).await;
        let waiter = tokio::spawn({
            let cell = cell.clone();
            async move { cell.wait_newer(3, &AtomicBool::new(false)).await }
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

    #[tokio::test]
    async fn closing_the_fleet_ends_waits_now_and_later() {
        let fleet = Arc::new(Fleet::default());
        let slot = fleet.insert(&client("a"), None);
        let waiter = tokio::spawn({
            let (fleet, slot) = (fleet.clone(), slot.clone());
            async move { slot.revision.wait_newer(0, fleet.closing()).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        fleet.close();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by close")
            .unwrap();
        // A wait that starts after the close ends at once.
        tokio::time::timeout(
            Duration::from_secs(5),
            slot.revision.wait_newer(0, fleet.closing()),
        )
        .await
        .expect("ends at once");
    }

    #[test]
    fn labels_merge_admin_over_agent_over_automatic_and_share_strings() {
        let fleet = Fleet::default();
        let mut a = client("a");
        a.status.inventory = Some(tc_proto::Inventory {
            hostname: "Kiosk 1".into(),
            os_name: "Debian GNU/Linux".into(),
            arch: "x86_64".into(),
            ..Default::default()
        });
        a.spec.agent_labels = BTreeMap::from([
            ("site".to_string(), "lyon".to_string()),
            ("thinfleet.io/arch".to_string(), "amd64".to_string()),
        ]);
        a.spec.admin_labels = BTreeMap::from([("site".to_string(), "paris".to_string())]);
        a.refresh_labels();
        let slot = fleet.insert(&a, None);
        let state = slot.state.lock().unwrap();
        assert_eq!(
            state.labels.merged(),
            a.metadata.labels,
            "merged as the object merges them"
        );
        assert_eq!(state.labels.get("site"), Some("paris"));
        assert_eq!(state.labels.get("thinfleet.io/arch"), Some("amd64"));
        assert_eq!(state.labels.get("thinfleet.io/hostname"), Some("Kiosk_1"));
        assert_eq!(state.labels.get("missing"), None);
        let selector = tc_api::LabelSelector::parse("site in (paris),thinfleet.io/os").unwrap();
        assert!(state.labels.matches(&selector));
        assert!(
            !state
                .labels
                .matches(&tc_api::LabelSelector::parse("site=lyon").unwrap())
        );
        drop(state);

        // Without an inventory (as the fleet loads clients) the stored merged labels give the
        // automatic ones back, and label strings are held once across clients.
        let mut b = a.clone();
        b.metadata.name = "b".into();
        b.status.inventory = None;
        let other = fleet.insert(&b, None);
        assert_eq!(
            other.state.lock().unwrap().labels.merged(),
            a.metadata.labels
        );
        let first = slot.state.lock().unwrap().labels.agent.0[0].0.clone();
        let second = other.state.lock().unwrap().labels.agent.0[0].0.clone();
        assert!(Arc::ptr_eq(&first, &second));
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

    #[test]
    fn served_state_serializes_as_the_protocol_type() {
        let packages = vec![tc_proto::DesiredPackage {
            name: "kiosk".into(),
            version: "1.0.0".into(),
            sha256: "ab".into(),
            size: 3,
            url: "/blobs/sha256/ab".into(),
            hooks: Default::default(),
            attempt: 0,
        }];
        let served = Served {
            revision: 4,
            packages: Arc::from(packages.clone()),
        };
        assert_eq!(
            serde_json::to_value(served.view()).unwrap(),
            serde_json::to_value(tc_proto::DesiredState {
                revision: 4,
                packages
            })
            .unwrap()
        );
    }

    #[test]
    fn the_interner_drops_strings_no_client_uses_any_more() {
        let interner = Interner::default();
        let kept = interner.intern("site");
        for i in 0..10 * MIN_PURGE_AT {
            // A host name used once, then dropped (a renamed or deleted client).
            drop(interner.intern(&format!("host-{i}")));
        }
        assert!(
            interner.len() <= MIN_PURGE_AT + 1,
            "{} strings held",
            interner.len()
        );
        assert!(
            Arc::ptr_eq(&kept, &interner.intern("site")),
            "strings in use stay shared"
        );
    }
}
