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
//! Everything kept per client is sized for fleets of a million: clients are indexed by their
//! 128-bit uid (which session tokens name), a client's revision cell is a counter and one wake-up
//! list (not a channel), and the liveness queue holds slots, not names.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tc_api::resources::is_system_label;
use tc_api::{AssignedPackage, Client, ClientPhase, ClientStatus, Condition, Timestamp};
use tc_proto::{DesiredPackage, Inventory, Load, PackageReport};
use tc_store::{Liveness, Store};
use tokio::sync::Notify;

pub use crate::persist::{Persister, flush_liveness};
use crate::ratelimit::EventBudget;

/// A client's desired revision, for long-polls: the current value, and a wake-up for the
/// requests waiting for it to move.
#[derive(Debug)]
pub struct RevisionCell {
    value: AtomicU64,
    changed: Notify,
}

/// No load history is asked of the client.
const HISTORY_IDLE: u8 = 0;
/// A load history is wanted: the next long-poll answer asks the agent for it.
const HISTORY_WANTED: u8 = 1;
/// The agent was asked; its upload is awaited.
const HISTORY_ASKED: u8 = 2;

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
        self.wait_newer_or(after, closing, || false).await;
    }

    /// [`RevisionCell::wait_newer`], also completing once `also` is true when the cell is woken
    /// (a client's load history wanted: [`ClientSlot::request_history`]).
    pub async fn wait_newer_or(&self, after: u64, closing: &AtomicBool, also: impl Fn() -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the checks, so a change between them and the wait wakes us.
            notified.as_mut().enable();
            if self.get() > after || also() || closing.load(Ordering::SeqCst) {
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

    /// The labels an agent or admin set: without the system labels (the agent's version), which
    /// only the inventory gives, so a selector on them sees the reported value.
    pub fn settable(map: &BTreeMap<String, String>, interner: &Interner) -> Labels {
        Labels(
            map.iter()
                .filter(|(key, _)| !is_system_label(key))
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

    /// The (key, value) pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = &(Arc<str>, Arc<str>)> {
        self.0.iter()
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
                        && (is_system_label(key)
                            || (!client.spec.agent_labels.contains_key(*key)
                                && !client.spec.admin_labels.contains_key(*key)))
                })
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        };
        ClientLabels {
            automatic: Labels::new(&automatic, interner),
            agent: Labels::settable(&client.spec.agent_labels, interner),
            admin: Labels::settable(&client.spec.admin_labels, interner),
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

/// Whether a client takes part in the fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Admission {
    /// Enrolled and approved: groups select it, it gets sessions.
    #[default]
    Active,
    /// Waiting for an admin (`spec.pending`): no group selects it, no session.
    Pending,
    /// Told to decommission (`spec.decommission`): no group selects it; its agent removes
    /// everything and reports back.
    Decommissioning,
}

impl Admission {
    /// The admission a client object says.
    pub fn of(client: &Client) -> Admission {
        if client.spec.pending.is_some() {
            Admission::Pending
        } else if client.spec.decommission {
            Admission::Decommissioning
        } else {
            Admission::Active
        }
    }

    /// The phase a client with this admission shows, given the phase its status records.
    pub fn phase(self, recorded: ClientPhase) -> ClientPhase {
        match (self, recorded) {
            (Admission::Pending, _) => ClientPhase::Pending,
            (Admission::Decommissioning, _) => ClientPhase::Decommissioning,
            // A status recorded before identities used `Pending` for "no heartbeat yet", and a
            // client approved or taken back from decommissioning keeps no stale phase.
            (Admission::Active, ClientPhase::Pending | ClientPhase::Decommissioning) => {
                ClientPhase::Enrolled
            }
            (Admission::Active, phase) => phase,
        }
    }
}

/// A client's status as the controller holds it: [`ClientStatus`] without the inventory, which
/// only the store keeps (it is read on API reads), since a million inventories would take a
/// gigabyte of memory for nothing the controller decides on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveStatus {
    /// Pending, Enrolled, Online, Offline or Decommissioning.
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
    /// The client is to decommission.
    pub decommission: bool,
    /// When its updates and removals may be activated (its groups' maintenance windows,
    /// onReboot, activate-now); None: at once.
    pub activation: Option<Arc<tc_proto::activation::Activation>>,
}

impl Served {
    /// The served state as the protocol's [`tc_proto::DesiredState`] serializes it, without copying.
    pub fn view(&self) -> DesiredView<'_> {
        DesiredView {
            revision: self.revision,
            packages: &self.packages,
            decommission: self.decommission,
            activation: self.activation.as_deref(),
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
    /// See [`tc_proto::DesiredState::decommission`].
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub decommission: bool,
    /// See [`tc_proto::DesiredState::activation`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation: Option<&'a tc_proto::activation::Activation>,
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
    /// Whether the controller wants the client's load history: [`HISTORY_IDLE`],
    /// [`HISTORY_WANTED`] or [`HISTORY_ASKED`] (one byte, in what was padding; see
    /// [`crate::history`]).
    history: AtomicU8,
    /// A task order was offered to the client since its last long-poll answer (see
    /// [`crate::tasks`]): the next one answers at once.
    task_offered: AtomicBool,
    /// The client's uid (0 when it has none): session tokens name it.
    pub uid: u128,
    /// The generation of the client's credential (`spec.credentialGeneration`): sessions of
    /// another generation are refused. Read on every agent request without the client's lock.
    generation: AtomicU32,
}

impl ClientSlot {
    /// The generation of the client's credential.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the client was removed from the fleet.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Asks the client for its load history: wakes this client's long-polls (and no other
    /// client's), whose answer asks the agent for it.
    pub fn request_history(&self) {
        self.history.store(HISTORY_WANTED, Ordering::SeqCst);
        self.revision.wake();
    }

    /// True when a load history is wanted and no long-poll answer has asked for it yet.
    pub fn history_wanted(&self) -> bool {
        self.history.load(Ordering::SeqCst) == HISTORY_WANTED
    }

    /// For a long-poll answer: true (once) when it is to ask the agent for its load history.
    pub fn take_history_request(&self) -> bool {
        self.history
            .compare_exchange(
                HISTORY_WANTED,
                HISTORY_ASKED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    /// A task order waits for the client: wakes its long-polls.
    pub fn offer_task(&self) {
        self.task_offered.store(true, Ordering::SeqCst);
        self.revision.wake();
    }

    /// True when an order was offered since the last long-poll answer.
    pub fn task_offered(&self) -> bool {
        self.task_offered.load(Ordering::SeqCst)
    }

    /// For a long-poll answer: clears the offer mark (the answer carries every open order).
    pub fn take_task_offer(&self) -> bool {
        self.task_offered.swap(false, Ordering::SeqCst)
    }

    /// For an upload: true when a load history was asked for (and is no longer).
    pub fn take_history_upload(&self) -> bool {
        self.history.swap(HISTORY_IDLE, Ordering::SeqCst) != HISTORY_IDLE
    }
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
    /// Whether it takes part in the fleet (approved, pending, decommissioning).
    pub admission: Admission,
    /// How many more events about it are recorded now.
    pub events: EventBudget,
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
    /// Client uid -> its client, for the session tokens of agent requests.
    by_uid: HashMap<u128, Arc<ClientSlot>, UidHash>,
}

/// Hashes a uid by mixing its two halves: uids are made by the store (creation time, a
/// store-wide revision and a hash of the name), nobody can choose them, and hashing them again as
/// the default SipHash does only costs time on every agent request.
#[derive(Clone, Copy, Default)]
struct UidHash;

impl std::hash::BuildHasher for UidHash {
    type Hasher = UidHasher;

    fn build_hasher(&self) -> UidHasher {
        UidHasher(0)
    }
}

/// See [`UidHash`].
#[derive(Default)]
struct UidHasher(u64);

impl std::hash::Hasher for UidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u128(&mut self, value: u128) {
        let (low, high) = (value as u64, (value >> 64) as u64);
        self.0 =
            (low ^ high.wrapping_mul(0xff51_afd7_ed55_8ccd)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
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

impl Fleet {
    /// Loads every client from the store, one client at a time (the store never holds the whole
    /// fleet in memory for this, nor decodes inventories).
    pub fn load(store: &dyn Store) -> tc_store::Result<Fleet> {
        let fleet = Fleet::default();
        store.scan_clients(&mut |client| {
            fleet.insert(&client);
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

    /// Adds a client, or replaces the labels, status, admission and credential generation of one
    /// already here (keeping what it is served).
    pub fn insert(&self, client: &Client) -> Arc<ClientSlot> {
        let labels = ClientLabels::of(client, &self.interner);
        let admission = Admission::of(client);
        let mut status = LiveStatus::of(ClientStatus {
            inventory: None,
            ..client.status.clone()
        });
        status.phase = admission.phase(status.phase);
        let uid = client
            .metadata
            .uid
            .as_deref()
            .and_then(crate::session::parse_uid)
            .unwrap_or(0);
        let generation = client.spec.credential_generation;
        let name = client.metadata.name.as_str();
        let mut index = self.index.write().expect("fleet lock");
        match index.by_name.get(name) {
            Some(slot) if slot.uid == uid => {
                let mut state = slot.state.lock().expect("client lock");
                state.labels = labels;
                state.status = status;
                state.admission = admission;
                state.served.decommission = admission == Admission::Decommissioning;
                drop(state);
                slot.generation.store(generation, Ordering::Release);
                slot.clone()
            }
            // A new client, or a new client under the name of one that is gone.
            existing => {
                if let Some(old) = existing.cloned() {
                    old.removed.store(true, Ordering::Release);
                    index.by_uid.remove(&old.uid);
                }
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
                            decommission: admission == Admission::Decommissioning,
                            activation: None,
                        },
                        heartbeat_seconds: tc_api::resources::DEFAULT_HEARTBEAT_SECONDS,
                        admission,
                        events: EventBudget::default(),
                    }),
                    revision: RevisionCell::new(revision),
                    dirty: AtomicBool::new(false),
                    removed: AtomicBool::new(false),
                    history: AtomicU8::new(HISTORY_IDLE),
                    task_offered: AtomicBool::new(false),
                    uid,
                    generation: AtomicU32::new(generation),
                });
                index.by_name.insert(name, slot.clone());
                if uid != 0 {
                    index.by_uid.insert(uid, slot.clone());
                }
                slot
            }
        }
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

    /// Removes a client: its sessions stop working at once (they name a uid that is gone).
    pub fn remove(&self, name: &str) {
        let mut index = self.index.write().expect("fleet lock");
        if let Some(slot) = index.by_name.remove(name) {
            slot.removed.store(true, Ordering::Release);
            index.by_uid.remove(&slot.uid);
        }
    }

    /// The client with this uid.
    pub fn by_uid(&self, uid: u128) -> Option<Arc<ClientSlot>> {
        self.index
            .read()
            .expect("fleet lock")
            .by_uid
            .get(&uid)
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

    /// Calls `visit` with every client slot in name order, under the index's read lock (no
    /// slot is cloned), until it returns false. Enrolments wait while it runs.
    pub fn visit(&self, mut visit: impl FnMut(&Arc<ClientSlot>) -> bool) {
        let index = self.index.read().expect("fleet lock");
        for slot in index.by_name.values() {
            if !visit(slot) {
                return;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
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

    fn with_uid(mut client: Client, uid: u128) -> Client {
        client.metadata.uid = Some(crate::session::format_uid(uid));
        client
    }

    #[test]
    fn clients_are_found_by_uid_until_removed_and_keep_their_generation_current() {
        let fleet = Fleet::default();
        let a = fleet.insert(&with_uid(client("a"), 1));
        fleet.insert(&with_uid(client("b"), 2));
        assert!(Arc::ptr_eq(&fleet.by_uid(1).unwrap(), &a));
        assert_eq!(a.generation(), 0);
        // The key replaced: same client, same slot, new generation.
        let mut replaced = with_uid(client("a"), 1);
        replaced.spec.credential_generation = 1;
        assert!(Arc::ptr_eq(&fleet.insert(&replaced), &a));
        assert_eq!(a.generation(), 1);
        // Deleted and enrolled again under the same name: a new uid, a new slot.
        let again = fleet.insert(&with_uid(client("a"), 3));
        assert!(!Arc::ptr_eq(&again, &a));
        assert!(a.is_removed());
        assert!(fleet.by_uid(1).is_none(), "the old uid is gone");
        assert!(Arc::ptr_eq(&fleet.by_uid(3).unwrap(), &again));
        fleet.remove("a");
        assert!(fleet.by_uid(3).is_none());
        assert!(fleet.by_uid(2).is_some());
        assert_eq!(fleet.len(), 1);
    }

    #[test]
    fn pending_and_decommissioning_clients_show_their_phase() {
        let fleet = Fleet::default();
        let mut pending = client("p");
        pending.spec.pending = Some(tc_api::PendingEnrollment {
            reason: tc_api::PendingReason::ApprovalRequired,
            message: "waits".into(),
            enrolled_as: vec![],
            since: Timestamp::EPOCH,
        });
        let slot = fleet.insert(&pending);
        let state = slot.state.lock().unwrap();
        assert_eq!(state.admission, Admission::Pending);
        assert_eq!(state.status.phase, ClientPhase::Pending);
        drop(state);
        // A status recorded before identities said `Pending` for "no heartbeat yet".
        let mut old = client("o");
        old.status.phase = ClientPhase::Pending;
        let slot = fleet.insert(&old);
        assert_eq!(
            slot.state.lock().unwrap().status.phase,
            ClientPhase::Enrolled
        );
        let mut leaving = client("d");
        leaving.spec.decommission = true;
        leaving.status.phase = ClientPhase::Online;
        let slot = fleet.insert(&leaving);
        let state = slot.state.lock().unwrap();
        assert_eq!(state.status.phase, ClientPhase::Decommissioning);
        assert!(state.served.decommission);
        assert_eq!(
            serde_json::to_value(state.served.view()).unwrap()["decommission"],
            true
        );
    }

    #[test]
    fn uids_hash_by_mixing_their_halves() {
        use std::hash::BuildHasher;
        assert_ne!(UidHash.hash_one(1u128), UidHash.hash_one(2u128));
        assert_ne!(UidHash.hash_one(1u128 << 64), UidHash.hash_one(1u128));
    }

    #[test]
    fn liveness_is_queued_once_and_skips_removed_clients() {
        let fleet = Fleet::default();
        let a = fleet.insert(&client("a"));
        let b = fleet.insert(&client("b"));
        for slot in [&a, &b] {
            slot.state.lock().unwrap().status.last_heartbeat =
                Some(tc_api::Timestamp::from_unix_millis(5));
        }
        fleet.mark_dirty(&a);
        fleet.mark_dirty(&a);
        fleet.mark_dirty(&b);
        fleet.remove("b");
        fleet.insert(&client("b"));
        let names: Vec<String> = fleet.take_dirty().into_iter().map(|l| l.name).collect();
        assert_eq!(names, vec!["a".to_string()]);
        assert!(fleet.take_dirty().is_empty());
        fleet.mark_dirty(&a);
        assert_eq!(fleet.take_dirty().len(), 1, "queued again after a flush");
    }

    /// One console page opening one client must not wake the long-polls of the whole fleet:
    /// a history request wakes that client's long-poll, asks once, and leaves the others
    /// asleep (a waiter looks at its conditions once per wake-up: b's looks are counted).
    #[tokio::test]
    async fn a_history_request_wakes_only_that_clients_long_poll() {
        use std::sync::atomic::AtomicUsize;
        let fleet = Arc::new(Fleet::default());
        let a = fleet.insert(&client("a"));
        let b = fleet.insert(&client("b"));
        let looks = Arc::new(AtomicUsize::new(0));
        let waiter = |slot: &Arc<ClientSlot>| {
            let slot = slot.clone();
            let fleet = fleet.clone();
            let looks = looks.clone();
            let counted = slot.name.as_ref() == "b";
            tokio::spawn(async move {
                let wanted = || {
                    if counted {
                        looks.fetch_add(1, Ordering::SeqCst);
                    }
                    slot.history_wanted()
                };
                slot.revision
                    .wait_newer_or(0, fleet.closing(), wanted)
                    .await
            })
        };
        let (wait_a, wait_b) = (waiter(&a), waiter(&b));
        tokio::task::yield_now().await;
        assert!(!wait_a.is_finished() && !wait_b.is_finished());
        assert_eq!(looks.load(Ordering::SeqCst), 1, "b looked once, then slept");
        assert!(!a.take_history_upload(), "nothing was asked yet");
        a.request_history();
        tokio::time::timeout(Duration::from_secs(5), wait_a)
            .await
            .expect("a's long-poll woken")
            .unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!wait_b.is_finished(), "b's long-poll must go on waiting");
        assert_eq!(looks.load(Ordering::SeqCst), 1, "b's long-poll was woken");
        assert!(!b.history_wanted());
        // The answer asks once; the next long-poll waits again until the upload.
        assert!(a.take_history_request());
        assert!(!a.take_history_request());
        assert!(!a.history_wanted());
        assert!(a.take_history_upload());
        assert!(!a.take_history_upload(), "one upload per request");
        wait_b.abort();
    }

    /// The request costs a client one byte, in what was padding: a client's slot is as large as
    /// before load histories (352 bytes on 64-bit targets), plus the one pointer to the
    /// activation its groups share, with its alignment (368 bytes).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_history_request_costs_no_memory_per_client() {
        assert_eq!(std::mem::size_of::<ClientSlot>(), 368);
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
        let slot = fleet.insert(&client("a"));
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
        let slot = fleet.insert(&a);
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
        let other = fleet.insert(&b);
        assert_eq!(
            other.state.lock().unwrap().labels.merged(),
            a.metadata.labels
        );
        let first = slot.state.lock().unwrap().labels.agent.0[0].0.clone();
        let second = other.state.lock().unwrap().labels.agent.0[0].0.clone();
        assert!(Arc::ptr_eq(&first, &second));
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
            signature: None,
        }];
        let served = Served {
            revision: 4,
            packages: Arc::from(packages.clone()),
            decommission: false,
            activation: None,
        };
        assert_eq!(
            serde_json::to_value(served.view()).unwrap(),
            serde_json::to_value(tc_proto::DesiredState {
                activation: Default::default(),
                revision: 4,
                packages,
                decommission: false,
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
