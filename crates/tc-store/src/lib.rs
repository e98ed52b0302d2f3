//! Persistence of desired and observed state behind the [`Store`] trait.
//!
//! [`RedbStore`] is the embedded default; [`PgStore`] keeps the state in a PostgreSQL database.
//! Every write that returns `Ok` is committed.
//!
//! Object writes go through one place (see [`Write`]): it assigns `uid` and `creationTimestamp` on
//! creation, bumps `generation` only when `spec` changes, and gives every write a new
//! `resourceVersion` from one store-wide counter, so versions also order writes across objects.
//!
//! A client is stored in parts, as Kubernetes keeps a node's spec, status and heartbeat apart: its
//! object (metadata and spec), its status, its inventory and its liveness. Its `resourceVersion`
//! moves only when its object is written ([`Store::create_client`], [`Store::put_clients`],
//! [`Store::delete_client`]); the frequent status and liveness writes
//! ([`Store::put_client_status`], [`Store::put_liveness`]) take none.

mod copy;
mod pg_store;
mod redb_store;
mod write_path;

use tc_api::task::TaskResult;
use tc_api::{AuditEntry, Client, Event, Kind, Object, Timestamp};
use tc_proto::Load;

pub use copy::{CopyReport, Counters, TableCounts, TaskLogs, TaskRecord, copy_redb_to_pg};
pub use pg_store::{
    BLOB_CHUNK_BYTES, BlobError, BlobPut, Change, ChangeListener, ChangesPage, DEFAULT_CONNECTIONS,
    ImportSink, LeaseState, PgSettings, PgStore,
};
pub use redb_store::{DEFAULT_EVENT_CAPACITY, PUBLIC_KEY_KIND, RedbStore};

/// Settings key prefix of the token hash a client enrolled before key-bound identities had
/// (`legacyClientToken/{name}`): kept when a store of layout 2 is opened, so that the client's
/// upgraded agent can prove once that it is that client, and deleted then.
pub const LEGACY_CLIENT_TOKEN_SETTING: &str = "legacyClientToken/";

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("{kind}/{name} not found")]
    NotFound {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
    },
    /// A `resourceVersion` precondition failed.
    #[error(
        "{kind}/{name} has been modified: its resourceVersion is {actual}, the request expected \
         {expected}; read it again and retry"
    )]
    Conflict {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// The version the request named.
        expected: String,
        /// The stored version (`none` when the object does not exist).
        actual: String,
    },
    /// An object that must be unique already exists.
    #[error("{kind}/{name} already exists")]
    AlreadyExists {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
    },
    /// The database failed (I/O, corruption, full disk).
    #[error("database error: {0}")]
    Database(String),
    /// The database cannot be reached now (a server stopped or restarting, a lost connection):
    /// nothing was written, and the same request may succeed later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// This controller replica no longer holds the leader lease: another took over, and nothing
    /// was written (see `PgStore::fence`).
    #[error("{0}")]
    NotLeader(String),
    /// An import into a store that already holds records (nothing was written).
    #[error("the target store is not empty: {holds}; nothing was copied")]
    TargetNotEmpty {
        /// What it holds (tables with their counts, counters moved on).
        holds: String,
    },
    /// A stored record could not be decoded.
    #[error("stored record {key} is unreadable: {message}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Result of store operations.
pub type Result<T> = std::result::Result<T, StoreError>;

/// One write of an atomic batch (see [`Store::write`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Create the object, or replace its `spec`, `labels` and `annotations` (its `status` is kept).
    /// `metadata.resourceVersion`, when set, is a precondition. Server-set metadata in `object` is
    /// otherwise ignored. Nothing is written (and the outcome is `Unchanged`) when spec, labels,
    /// annotations and manager are all the same as stored.
    Apply {
        /// The object as applied.
        object: Object,
        /// Who applies it (`tcadm`, `dir:/srv/manifests`); recorded in `metadata.managedBy`.
        manager: String,
    },
    /// Replace only the object's `status` (controller-owned); `generation` does not move, and
    /// `metadata.resourceVersion` of `object` is not a precondition. The outcome is `Configured`
    /// with the stored object, `Unchanged` when the status is equal (nothing written), or
    /// `Missing` when the object no longer exists (nothing written, the batch goes on).
    Status {
        /// The object carrying the new status.
        object: Object,
    },
    /// Delete the object. `precondition`, when set, must equal its `resourceVersion`. A missing
    /// object is `Missing` without a precondition and fails with `NotFound` with one.
    Delete {
        /// Its kind (`ClientGroup` or `PackageRelease`).
        kind: Kind,
        /// Its name.
        name: String,
        /// Expected `resourceVersion`.
        precondition: Option<String>,
    },
}

/// What one [`Write`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteOutcome {
    /// A new object; carries the stored object.
    Created(Object),
    /// An existing object changed; carries the stored object.
    Configured(Object),
    /// Nothing changed; carries the stored object.
    Unchanged(Object),
    /// The object was deleted; carries its last state.
    Deleted(Object),
    /// The object was already gone (a `Delete` without precondition, or a `Status` write, of a
    /// missing object).
    Missing,
}

/// When a client was last heard from, and its load then (see [`Store::put_liveness`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Liveness {
    /// The client's name.
    pub name: String,
    /// Its last heartbeat.
    pub last_heartbeat: Timestamp,
    /// The load it reported with it.
    pub load: Load,
}

/// A client's status to record apart from its object (see [`Store::put_client_status`]).
/// The last load history a client uploaded, and when the controller received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredHistory {
    /// When the controller received it.
    pub collected: Timestamp,
    /// The samples.
    pub history: tc_proto::history::LoadHistory,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClientStatusEntry {
    /// The client's name.
    pub name: String,
    /// Its status. `inventory: None` leaves the recorded inventory as it is; `last_heartbeat:
    /// None` leaves liveness as it is.
    pub status: tc_api::ClientStatus,
}

/// Which events to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only events about this kind (`ClientGroup`, `Client`, ...).
    pub kind: Option<String>,
    /// Only events about objects of this name.
    pub name: Option<String>,
    /// Only events with a sequence number greater than this.
    pub after_seq: Option<u64>,
    /// At most this many, the newest ones (all when `None`).
    pub limit: Option<usize>,
}

/// Which audit entries to list (see [`Store::list_audit`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only entries of this user (a credential's name, `dir:/srv/manifests`).
    pub user: Option<String>,
    /// Only entries naming an object of this kind (case-insensitive: `clientgroup`).
    pub kind: Option<String>,
    /// Only entries naming an object of this name.
    pub name: Option<String>,
    /// Only entries of this action (`apply`, `label`, ...).
    pub action: Option<String>,
    /// Only entries with a sequence number greater than this.
    pub after_seq: Option<u64>,
    /// At most this many (all when `None`): the newest matches, or with `oldest_first` the
    /// oldest ones after `after_seq` (for paging forward through an export).
    pub limit: Option<usize>,
    /// Whether `limit` keeps the oldest matches instead of the newest.
    pub oldest_first: bool,
}

impl AuditFilter {
    /// Whether `entry` matches the filter's user, kind, name and action.
    pub fn matches(&self, entry: &AuditEntry) -> bool {
        self.user.as_ref().is_none_or(|user| *user == entry.user)
            && self
                .action
                .as_ref()
                .is_none_or(|action| *action == entry.action)
            && entry.concerns(self.kind.as_deref(), self.name.as_deref())
    }
}

/// How long the audit trail is kept: entries beyond the newest `max_entries`, and entries older
/// than `max_age`, are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditRetention {
    /// At most this many entries (at least one is kept).
    pub max_entries: u64,
    /// Entries older than this are dropped.
    pub max_age: std::time::Duration,
}

impl Default for AuditRetention {
    /// 100,000 entries, at most 400 days.
    fn default() -> Self {
        AuditRetention {
            max_entries: 100_000,
            max_age: std::time::Duration::from_secs(400 * 24 * 3600),
        }
    }
}

/// Persistence of objects, clients, events and settings.
///
/// A client's `resourceVersion` changes only when its object is written
/// ([`Store::create_client`], [`Store::create_clients`], [`Store::put_clients`],
/// [`Store::delete_client`]); [`Store::put_client_status`] and [`Store::put_liveness`] never
/// change it (nor the store-wide counter).
///
/// Every method is synchronous and may block on disk; async callers use `spawn_blocking`.
pub trait Store: Send + Sync + 'static {
    /// One `ClientGroup` or `PackageRelease` (`None` for `Kind::Client`: clients have their own
    /// methods).
    fn get(&self, kind: Kind, name: &str) -> Result<Option<Object>>;

    /// Every object of a kind (`ClientGroup` or `PackageRelease`), sorted by name.
    fn list(&self, kind: Kind) -> Result<Vec<Object>>;

    /// Applies a batch of writes in one transaction: either every write happens or none does
    /// (the first failing precondition aborts the batch and is returned). `now` stamps creations.
    fn write(&self, writes: Vec<Write>, now: Timestamp) -> Result<Vec<WriteOutcome>>;

    /// The current value of the store-wide resourceVersion counter.
    fn revision(&self) -> Result<u64>;

    /// One client: its object with its recorded status, inventory and liveness (the newer of the
    /// recorded liveness and any the object itself carries).
    fn get_client(&self, name: &str) -> Result<Option<Client>>;

    /// Every client, sorted by name, as [`Store::get_client`] returns them.
    fn list_clients(&self) -> Result<Vec<Client>>;

    /// Visits every client in name order, as `list_clients` returns them but WITHOUT the
    /// inventory (`status.inventory` is `None`; `status.inventoryHash` is kept), without
    /// materialising the whole fleet: for loading a large fleet into memory. No inventory is
    /// decoded (nor read). Every client is visited from one read transaction (one consistent
    /// snapshot), which lasts until the scan returns.
    fn scan_clients(&self, visit: &mut dyn FnMut(Client)) -> Result<()>;

    /// Visits every recorded inventory (of the `client_inventory` table; not those a
    /// version-1 client record embeds) with its client's name, in name order: for deriving the
    /// automatic labels of a fleet loaded with [`Store::scan_clients`].
    fn scan_inventories(&self, visit: &mut dyn FnMut(&str, tc_api::Inventory)) -> Result<()>;

    /// A client's recorded inventory, `None` for an unknown client or one without inventory.
    fn client_inventory(&self, name: &str) -> Result<Option<tc_api::Inventory>>;

    /// The clients enrolled with this machine id (several when cloned machines were approved as
    /// clients of their own), in name order, as [`Store::get_client`] returns them.
    fn clients_by_machine_id(&self, machine_id: &str) -> Result<Vec<Client>>;

    /// The client whose `spec.publicKey` is this key (`None` for an empty key).
    fn client_by_public_key(&self, public_key: &str) -> Result<Option<Client>>;

    /// Stores a newly enrolled client. Fails with `AlreadyExists` if the name (kind `Client`) or
    /// the public key (kind [`PUBLIC_KEY_KIND`], name = the client holding it) is taken; machine
    /// ids need not be unique. Assigns creationTimestamp and resourceVersion, and a uid unless the
    /// client carries one (a bulk import, a simulated fleet).
    ///
    /// The client's status is recorded as given: its inventory (if any), and its `lastHeartbeat`
    /// with `load` as its liveness (a `load` without `lastHeartbeat` is not kept). Records left
    /// under the name by an earlier client of that name are dropped. Returns the client as
    /// [`Store::get_client`] then reads it.
    fn create_client(&self, client: Client, now: Timestamp) -> Result<Client>;

    /// Stores many newly enrolled clients in one transaction (bulk enrolment: a site rolled out
    /// at once, or a simulated fleet). The rules of [`Store::create_client`] apply to every
    /// client, also against the others of the batch; the first violation fails the whole batch
    /// and nothing is written.
    fn create_clients(&self, clients: Vec<Client>, now: Timestamp) -> Result<Vec<Client>>;

    /// Records when clients were last heard from, in one transaction, without rewriting the
    /// clients and without taking resourceVersions (as Kubernetes keeps node heartbeats in Lease
    /// objects): liveness changes with every heartbeat of every client, everything else rarely.
    /// Reading a client ([`Store::get_client`], [`Store::list_clients`], ...) returns the newer
    /// of its own `lastHeartbeat`/`load` and the recorded ones. A record is written for any name
    /// without looking the client up (and replaces the recorded one even if older): a record
    /// without a client is never read, and is dropped when a client of that name is created or
    /// deleted. Returns how many were written.
    fn put_liveness(&self, entries: Vec<Liveness>) -> Result<usize>;

    /// Records client statuses in one transaction without rewriting the client objects and
    /// without taking resourceVersions. Entries are written in name order; for a name given twice
    /// the later entry wins. An entry whose client is not stored (deleted meanwhile, or never
    /// enrolled) is skipped, so that a late status write cannot bring a deleted client back.
    /// `Some` inventory replaces the recorded inventory; a `last_heartbeat` newer than the
    /// recorded liveness replaces it (with `load`). Returns how many entries were written.
    fn put_client_status(&self, entries: Vec<ClientStatusEntry>) -> Result<usize>;

    /// Upserts clients (labels and status) in one transaction, each with a new resourceVersion,
    /// in name order (also the order of the returned clients, which are as
    /// [`Store::get_client`] then reads them).
    /// Stored uid and creationTimestamp are kept; a client not stored yet gets them (the current
    /// time, unless it carries one). The machine id and public key indexes follow the spec (a key
    /// replaced by an admin); a public key held by another client fails the batch with
    /// `AlreadyExists` (kind [`PUBLIC_KEY_KIND`]).
    /// Each client's status is recorded as [`Store::put_client_status`] records it: an
    /// `inventory` of `None` keeps the recorded inventory, and liveness only moves forward.
    fn put_clients(&self, clients: Vec<Client>) -> Result<Vec<Client>>;

    /// Deletes a client with its machine-id and key index entries, its status, inventory and liveness;
    /// returns it as it was (as [`Store::get_client`] read it) if it existed. Takes a
    /// resourceVersion, as deleting an object does.
    fn delete_client(&self, name: &str) -> Result<Option<Client>>;

    /// Appends events (assigning increasing `seq`), dropping the oldest beyond the capacity.
    ///
    /// Returns every given event, in order, carrying its `seq`. When the batch alone is larger
    /// than the capacity, its oldest events (all but the newest `capacity`) are returned too but
    /// were never stored: they were dropped by this very append. Their sequence numbers are
    /// consumed all the same.
    fn append_events(&self, events: Vec<Event>) -> Result<Vec<Event>>;

    /// Events matching the filter, oldest first.
    fn list_events(&self, filter: &EventFilter) -> Result<Vec<Event>>;

    /// Appends audit entries (assigning increasing `seq`) in one transaction, then drops the
    /// entries `retention` no longer keeps (by count, and those older than `now - max_age`).
    /// The audit trail is separate from the events: appending events never drops an entry.
    /// Returns the given entries with their `seq`.
    fn append_audit(
        &self,
        entries: Vec<AuditEntry>,
        retention: &AuditRetention,
        now: Timestamp,
    ) -> Result<Vec<AuditEntry>>;

    /// Audit entries matching the filter, oldest first.
    fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>>;

    /// Drops the audit entries `retention` no longer keeps at `now`; returns how many.
    fn prune_audit(&self, retention: &AuditRetention, now: Timestamp) -> Result<usize>;

    /// A small persisted setting (bootstrap token hashes, manifest source status, ...).
    fn get_setting(&self, key: &str) -> Result<Option<String>>;

    /// Every setting whose key starts with `prefix`, as (key, value), in key order.
    fn list_settings(&self, prefix: &str) -> Result<Vec<(String, String)>>;

    /// Sets (or with `None` removes) a setting.
    fn put_setting(&self, key: &str, value: Option<&str>) -> Result<()>;

    /// Records the load history received from client `name`, replacing the one before, in one
    /// write. `NotFound` when there is no such client (deleted since), and nothing is written.
    fn put_history(&self, name: &str, history: &StoredHistory) -> Result<()>;

    /// The last load history received from client `name`, if any. Deleting the client deletes
    /// it.
    fn get_history(&self, name: &str) -> Result<Option<StoredHistory>>;

    /// Records a task's run (its targets, deadline and action), replacing one with its id.
    fn put_task_run(&self, run: &StoredTaskRun) -> Result<()>;

    /// The runs of `task`, oldest first.
    fn task_runs(&self, task: &str) -> Result<Vec<StoredTaskRun>>;

    /// Records task results (replacing earlier ones of the same task, run and client) in one
    /// write, with the logs some carried (`(index into results, logs)`).
    fn put_task_results(&self, results: &[TaskResult], logs: &[(usize, String)]) -> Result<()>;

    /// The results of one run, by client name.
    fn task_results(&self, task: &str, run: u64) -> Result<Vec<TaskResult>>;

    /// One client's result in one run.
    fn task_result(&self, task: &str, run: u64, client: &str) -> Result<Option<TaskResult>>;

    /// The logs a client's `collectLogs` result carried.
    fn task_logs(&self, task: &str, run: u64, client: &str) -> Result<Option<String>>;

    /// Removes the runs of `task` older than `before` (every run when `None`) with their
    /// results and logs; returns how many runs went.
    fn remove_task_runs(&self, task: &str, before: Option<u64>) -> Result<usize>;
}

/// One run of a task as the store keeps it: what the controller needs to carry it on after a
/// restart (results are kept apart, one record per target).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredTaskRun {
    /// The task's name.
    pub task: String,
    /// The uid of the task object the run belongs to (a task deleted and created again under
    /// its name does not inherit runs).
    pub task_uid: String,
    /// The run's id: when it was due, Unix milliseconds.
    pub run: u64,
    /// When it started.
    pub started_at: Timestamp,
    /// When the targets that have not started expire.
    pub deadline: Timestamp,
    /// How many may run at once (resolved against the targets).
    pub max_concurrent: u32,
    /// The action as agents receive it (for `wake`, each target's packet is in `targets`).
    pub action: tc_proto::task::TaskAction,
    /// The targets, by name, with who carries each out when it is not the target itself.
    pub targets: Vec<StoredTaskTarget>,
}

/// One target of a stored run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredTaskTarget {
    /// The client.
    pub client: String,
    /// `wake`: the neighbour that sends the packet and the packet (absent when the target
    /// needs none, or has no neighbour: its result says which).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake: Option<(String, tc_proto::task::WakeOrder)>,
}
