//! The embedded [`Store`]: one redb file.
//!
//! # Tables
//!
//! | table                | key                     | value                                        |
//! |----------------------|-------------------------|----------------------------------------------|
//! | `objects`            | `"{Kind}/{name}"`       | JSON of the [`Object`]                       |
//! | `clients`            | client name             | JSON of the [`Client`]                       |
//! | `client_machine_ids` | machine id              | client name                                  |
//! | `client_tokens`      | token hash              | client name                                  |
//! | `client_token_of`    | client name             | token hash (so re-tokening and deletion find the old hash without a scan) |
//! | `client_liveness`    | client name             | last heartbeat and load, 28 bytes (see [`Liveness`]) |
//! | `events`             | sequence number (`u64`) | JSON of the [`Event`], at most `capacity` of them |
//! | `settings`           | key                     | value                                        |
//! | `meta`               | `revision`, `nextEventSeq`, `schemaVersion` | `u64`                    |
//!
//! Object keys sort by kind and then by name, so listing a kind is one range scan that already
//! returns names in order. The store-wide `revision` counter is the last `resourceVersion` handed
//! out; every write that changes an object or a client (including deletions) takes the next one.
//!
//! Liveness (`lastHeartbeat` and `load`) changes with every heartbeat of every client, so it has
//! its own table of small fixed-size records instead of rewriting the client's JSON: flushing the
//! heartbeats of a large fleet writes a few dozen bytes per client. Reading a client overlays its
//! liveness record when that is newer than what the client's JSON holds.
//!
//! Every public method is one redb transaction. Write transactions use redb's default immediate
//! durability, so a call that returned `Ok` is on disk; a failed call aborts its transaction and
//! leaves nothing behind.

use std::collections::hash_map::DefaultHasher;
use std::fmt::Display;
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::path::Path;

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tc_api::{Client, ClientGroup, Event, Kind, Object, ObjectMeta, PackageRelease, Timestamp};
use tc_proto::Load;

use crate::{EventFilter, Liveness, Result, Store, StoreError, Write, WriteOutcome};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("clients");
const MACHINE_IDS: TableDefinition<&str, &str> = TableDefinition::new("client_machine_ids");
const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("client_tokens");
const TOKEN_OF: TableDefinition<&str, &str> = TableDefinition::new("client_token_of");
const LIVENESS: TableDefinition<&str, &[u8]> = TableDefinition::new("client_liveness");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// `meta` key of the last `resourceVersion` handed out.
const META_REVISION: &str = "revision";
/// `meta` key of the sequence number the next event gets.
const META_NEXT_EVENT_SEQ: &str = "nextEventSeq";
/// `meta` key of the layout version of the tables, so that an older build refuses a file written
/// by a newer one instead of misreading it.
const META_SCHEMA_VERSION: &str = "schemaVersion";
/// The table layout this build reads and writes.
const SCHEMA_VERSION: u64 = 1;

/// How many events are kept unless the store is opened with another capacity.
pub const DEFAULT_EVENT_CAPACITY: usize = 10_000;

/// Page cache of the database. redb's default (1 GiB) would let the cache grow with the fleet
/// and dominate the controller's memory; client records are read rarely enough that a modest
/// cache costs little.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// The Kind name used in [`StoreError::AlreadyExists`] when a machine id is already enrolled
/// (the `name` is then the machine id).
pub const MACHINE_ID_KIND: &str = "MachineId";

/// The Kind name used in [`StoreError::AlreadyExists`] when a token hash already belongs to
/// another client (the `name` is then that client's name).
pub const CLIENT_TOKEN_KIND: &str = "ClientToken";

/// A [`Store`] in one redb file.
pub struct RedbStore {
    db: Database,
    /// How many events the ring keeps; older ones are dropped by the append that overflows it.
    event_capacity: u64,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("event_capacity", &self.event_capacity)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Creates or opens the database file at `path` (creating its parent directories), keeping
    /// the default number of events ([`DEFAULT_EVENT_CAPACITY`]).
    pub fn open(path: &Path) -> Result<RedbStore> {
        Self::open_with_event_capacity(path, DEFAULT_EVENT_CAPACITY)
    }

    /// Creates or opens the database file at `path`, keeping at most `capacity` events (at least
    /// one).
    pub fn open_with_event_capacity(path: &Path, capacity: usize) -> Result<RedbStore> {
        let shown = path.display();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|error| {
                StoreError::Database(format!(
                    "cannot create directory {}: {error}",
                    parent.display()
                ))
            })?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(db_error(format_args!("cannot open database {shown}")))?;
        let store = RedbStore {
            db,
            event_capacity: u64::try_from(capacity.max(1)).unwrap_or(u64::MAX),
        };
        store.write_txn("initialise tables", |txn| {
            open(txn, OBJECTS)?;
            open(txn, CLIENTS)?;
            open(txn, MACHINE_IDS)?;
            open(txn, TOKENS)?;
            open(txn, TOKEN_OF)?;
            open(txn, LIVENESS)?;
            open(txn, EVENTS)?;
            open(txn, SETTINGS)?;
            let mut meta = open(txn, META)?;
            match meta_value(&meta, META_SCHEMA_VERSION)? {
                None => {
                    meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION)
                        .map_err(db_error("write schema version"))?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(other) => {
                    return Err(StoreError::Database(format!(
                        "{shown} has table layout {other}, this build understands only \
                         {SCHEMA_VERSION}; use a newer thinfleet"
                    )));
                }
            }
            Ok(())
        })?;
        Ok(store)
    }

    /// Runs `body` in one write transaction: commits when it returns `Ok`, aborts otherwise.
    fn write_txn<T>(
        &self,
        what: &str,
        body: impl FnOnce(&WriteTransaction) -> Result<T>,
    ) -> Result<T> {
        let txn = self
            .db
            .begin_write()
            .map_err(db_error(format_args!("{what}: begin transaction")))?;
        match body(&txn) {
            Ok(value) => {
                txn.commit()
                    .map_err(db_error(format_args!("{what}: commit")))?;
                Ok(value)
            }
            Err(error) => {
                // The body's error says what went wrong; a failing abort changes nothing on disk.
                let _ = txn.abort();
                Err(error)
            }
        }
    }

    /// Runs `body` in one read transaction (one consistent snapshot).
    fn read_txn<T>(
        &self,
        what: &str,
        body: impl FnOnce(&ReadTransaction) -> Result<T>,
    ) -> Result<T> {
        let txn = self
            .db
            .begin_read()
            .map_err(db_error(format_args!("{what}: begin transaction")))?;
        body(&txn)
    }
}

// ---------------------------------------------------------------------------------------------
// The object write path

/// Decides what an `Apply` does, given the stored object (if any).
///
/// `revision` is the resourceVersion the object gets if the apply writes it; the caller advances
/// the store-wide counter only when the outcome is `Created` or `Configured`. Incoming status and
/// server-set metadata are ignored, except `resourceVersion`, which is a precondition.
pub(crate) fn apply_object(
    stored: Option<&Object>,
    incoming: Object,
    manager: &str,
    now: Timestamp,
    revision: u64,
) -> Result<WriteOutcome> {
    let kind = incoming.kind();
    if let Some(expected) = incoming.meta().resource_version.as_deref() {
        check_precondition(kind, incoming.name(), stored, expected)?;
    }
    let mut object = incoming;
    object.clear_status();
    let meta = object.meta_mut();
    meta.clear_server_fields();
    meta.resource_version = Some(revision.to_string());
    meta.managed_by = Some(manager.to_string());
    let Some(stored) = stored else {
        let meta = object.meta_mut();
        meta.uid = Some(new_uid(kind.as_str(), &meta.name, now, revision));
        meta.generation = Some(1);
        meta.creation_timestamp = Some(now);
        return Ok(WriteOutcome::Created(object));
    };
    let spec_changed = stored.spec_json() != object.spec_json();
    let stored_meta = stored.meta();
    if !spec_changed
        && stored_meta.labels == object.meta().labels
        && stored_meta.annotations == object.meta().annotations
        && stored_meta.managed_by.as_deref() == Some(manager)
    {
        return Ok(WriteOutcome::Unchanged(stored.clone()));
    }
    copy_status(&mut object, stored);
    let meta = object.meta_mut();
    meta.uid.clone_from(&stored_meta.uid);
    meta.creation_timestamp = stored_meta.creation_timestamp;
    let generation = stored_meta.generation.unwrap_or(1);
    meta.generation = Some(if spec_changed {
        generation.saturating_add(1)
    } else {
        generation
    });
    Ok(WriteOutcome::Configured(object))
}

/// Decides what a `Status` write does: `Missing` when the object is gone, `Unchanged` when the
/// status is equal, otherwise `Configured` with the stored object carrying the new status and
/// `revision`.
pub(crate) fn write_status(
    stored: Option<&Object>,
    incoming: &Object,
    revision: u64,
) -> WriteOutcome {
    let Some(stored) = stored else {
        return WriteOutcome::Missing;
    };
    let mut object = stored.clone();
    copy_status(&mut object, incoming);
    if object == *stored {
        return WriteOutcome::Unchanged(stored.clone());
    }
    object.meta_mut().resource_version = Some(revision.to_string());
    WriteOutcome::Configured(object)
}

/// Decides what a `Delete` does: `Deleted` with the last state, `Missing` for a missing object
/// without precondition, `NotFound` for a missing object with one, `Conflict` on a stale one.
pub(crate) fn delete_object(
    stored: Option<&Object>,
    kind: Kind,
    name: &str,
    precondition: Option<&str>,
) -> Result<WriteOutcome> {
    match (stored, precondition) {
        (None, None) => Ok(WriteOutcome::Missing),
        (None, Some(_)) => Err(StoreError::NotFound {
            kind: kind.as_str().to_string(),
            name: name.to_string(),
        }),
        (Some(stored), precondition) => {
            if let Some(expected) = precondition {
                check_precondition(kind, name, Some(stored), expected)?;
            }
            Ok(WriteOutcome::Deleted(stored.clone()))
        }
    }
}

/// Refuses a write whose expected resourceVersion is not the stored one.
fn check_precondition(
    kind: Kind,
    name: &str,
    stored: Option<&Object>,
    expected: &str,
) -> Result<()> {
    let actual = stored.and_then(|object| object.meta().resource_version.as_deref());
    if actual == Some(expected) {
        return Ok(());
    }
    Err(StoreError::Conflict {
        kind: kind.as_str().to_string(),
        name: name.to_string(),
        expected: expected.to_string(),
        actual: actual.unwrap_or("none").to_string(),
    })
}

/// Sets `target`'s status to `source`'s (both are of one kind, as they share a key).
fn copy_status(target: &mut Object, source: &Object) {
    match (target, source) {
        (Object::ClientGroup(target), Object::ClientGroup(source)) => {
            target.status.clone_from(&source.status);
        }
        (Object::PackageRelease(target), Object::PackageRelease(source)) => {
            target.status.clone_from(&source.status);
        }
        (target, _) => target.clear_status(),
    }
}

/// A unique id shaped like a UUID: creation time, the revision of the creating write (unique in
/// this store) and a hash of kind and name (to tell apart objects of different stores).
fn new_uid(kind: &str, name: &str, now: Timestamp, revision: u64) -> String {
    let mut hasher = DefaultHasher::new();
    kind.hash(&mut hasher);
    name.hash(&mut hasher);
    let hash = hasher.finish() & 0xffff_ffff;
    let bits = (u128::from(now.unix_millis() & 0xffff_ffff_ffff) << 80)
        | (u128::from(revision & 0xffff_ffff_ffff) << 32)
        | u128::from(hash);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn object_key(kind: Kind, name: &str) -> String {
    format!("{}/{name}", kind.as_str())
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Wraps a redb error with what the store was doing.
fn db_error<E: Display>(context: impl Display) -> impl FnOnce(E) -> StoreError {
    move |error| StoreError::Database(format!("{context}: {error}"))
}

fn open<'t, K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &'t WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<Table<'t, K, V>> {
    txn.open_table(table)
        .map_err(db_error(format_args!("open table {}", table)))
}

fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<redb::ReadOnlyTable<K, V>> {
    txn.open_table(table)
        .map_err(db_error(format_args!("open table {}", table)))
}

fn meta_value(table: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<Option<u64>> {
    Ok(table
        .get(key)
        .map_err(db_error(format_args!("read meta {key}")))?
        .map(|value| value.value()))
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|error| StoreError::Database(format!("cannot encode {key}: {error}")))
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        key: key.to_string(),
        message: error.to_string(),
    })
}

/// Decodes an object as the kind its key names (never guessing from the JSON).
fn decode_object(kind: Kind, key: &str, bytes: &[u8]) -> Result<Object> {
    let key = format!("objects/{key}");
    match kind {
        Kind::ClientGroup => decode::<ClientGroup>(&key, bytes).map(Object::ClientGroup),
        Kind::PackageRelease => decode::<PackageRelease>(&key, bytes).map(Object::PackageRelease),
        Kind::Client => Err(StoreError::Corrupt {
            key,
            message: "clients are not stored as objects".into(),
        }),
    }
}

/// The part of a stored client that `put_clients` needs, decoded without the (large) status.
#[derive(serde::Deserialize)]
struct ClientHead {
    metadata: ObjectMeta,
    spec: ClientHeadSpec,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientHeadSpec {
    machine_id: String,
}

fn already_exists(kind: &str, name: &str) -> StoreError {
    StoreError::AlreadyExists {
        kind: kind.to_string(),
        name: name.to_string(),
    }
}

/// The store-wide resourceVersion counter during one write transaction.
struct Revision {
    /// The last version handed out.
    value: u64,
    /// Whether `value` must be written back at commit.
    moved: bool,
}

impl Revision {
    fn load(meta: &Table<'_, &'static str, u64>) -> Result<Revision> {
        Ok(Revision {
            value: meta_value(meta, META_REVISION)?.unwrap_or(0),
            moved: false,
        })
    }

    /// The version the next write gets, without taking it.
    fn peek(&self) -> u64 {
        self.value.saturating_add(1)
    }

    /// Takes the next version.
    fn take(&mut self) -> u64 {
        self.value = self.peek();
        self.moved = true;
        self.value
    }

    fn save(self, meta: &mut Table<'_, &'static str, u64>) -> Result<()> {
        if self.moved {
            meta.insert(META_REVISION, self.value)
                .map_err(db_error("write revision"))?;
        }
        Ok(())
    }
}

/// The tables an enrolment writes, open in one write transaction.
struct NewClientTables<'t> {
    clients: Table<'t, &'static str, &'static [u8]>,
    machine_ids: Table<'t, &'static str, &'static str>,
    tokens: Table<'t, &'static str, &'static str>,
    token_of: Table<'t, &'static str, &'static str>,
    liveness: Table<'t, &'static str, &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
    revision: Revision,
}

impl<'t> NewClientTables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self> {
        let meta = open(txn, META)?;
        let revision = Revision::load(&meta)?;
        Ok(NewClientTables {
            clients: open(txn, CLIENTS)?,
            machine_ids: open(txn, MACHINE_IDS)?,
            tokens: open(txn, TOKENS)?,
            token_of: open(txn, TOKEN_OF)?,
            liveness: open(txn, LIVENESS)?,
            meta,
            revision,
        })
    }

    /// Stores one new client with its indexes; refuses a taken name, machine id or token hash
    /// (including one taken earlier in the same transaction).
    fn insert(&mut self, mut client: Client, token_hash: &str, now: Timestamp) -> Result<Client> {
        let name = client.metadata.name.clone();
        let machine_id = client.spec.machine_id.clone();
        if self
            .clients
            .get(name.as_str())
            .map_err(db_error("read client"))?
            .is_some()
        {
            return Err(already_exists("Client", &name));
        }
        if self
            .machine_ids
            .get(machine_id.as_str())
            .map_err(db_error("read machine id index"))?
            .is_some()
        {
            return Err(already_exists(MACHINE_ID_KIND, &machine_id));
        }
        if let Some(holder) = self
            .tokens
            .get(token_hash)
            .map_err(db_error("read token index"))?
        {
            return Err(already_exists(CLIENT_TOKEN_KIND, holder.value()));
        }
        let version = self.revision.take();
        let metadata = &mut client.metadata;
        metadata.uid = Some(new_uid("Client", &name, now, version));
        metadata.creation_timestamp = Some(now);
        metadata.resource_version = Some(version.to_string());
        let bytes = encode(&format!("clients/{name}"), &client)?;
        self.clients
            .insert(name.as_str(), bytes.as_slice())
            .map_err(db_error("write client"))?;
        self.machine_ids
            .insert(machine_id.as_str(), name.as_str())
            .map_err(db_error("write machine id index"))?;
        self.tokens
            .insert(token_hash, name.as_str())
            .map_err(db_error("write token index"))?;
        self.token_of
            .insert(name.as_str(), token_hash)
            .map_err(db_error("write token index"))?;
        // A liveness record written for a client of this name after it was deleted.
        self.liveness
            .remove(name.as_str())
            .map_err(db_error("write client liveness"))?;
        Ok(client)
    }
}

/// Size of an encoded liveness record: last heartbeat (ms), CPU %, memory used, uptime.
const LIVENESS_BYTES: usize = 28;

fn encode_liveness(entry: &Liveness) -> [u8; LIVENESS_BYTES] {
    let mut bytes = [0u8; LIVENESS_BYTES];
    bytes[0..8].copy_from_slice(&entry.last_heartbeat.unix_millis().to_le_bytes());
    bytes[8..12].copy_from_slice(&entry.load.cpu_percent.to_le_bytes());
    bytes[12..20].copy_from_slice(&entry.load.memory_used_bytes.to_le_bytes());
    bytes[20..28].copy_from_slice(&entry.load.uptime_seconds.to_le_bytes());
    bytes
}

fn decode_liveness(name: &str, bytes: &[u8]) -> Result<(Timestamp, Load)> {
    let corrupt = || StoreError::Corrupt {
        key: format!("client_liveness/{name}"),
        message: format!("{} bytes, expected {LIVENESS_BYTES}", bytes.len()),
    };
    if bytes.len() != LIVENESS_BYTES {
        return Err(corrupt());
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let f32_at = |at: usize| f32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    Ok((
        Timestamp::from_unix_millis(u64_at(0)),
        Load {
            cpu_percent: f32_at(8),
            memory_used_bytes: u64_at(12),
            uptime_seconds: u64_at(20),
        },
    ))
}

/// Takes a liveness record into a client read from its JSON, when the record is newer.
fn overlay_liveness(client: &mut Client, record: Option<(Timestamp, Load)>) {
    if let Some((last_heartbeat, load)) = record
        && client
            .status
            .last_heartbeat
            .is_none_or(|stored| last_heartbeat > stored)
    {
        client.status.last_heartbeat = Some(last_heartbeat);
        client.status.load = load;
    }
}

/// The liveness record of a client, if any.
fn read_liveness(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<(Timestamp, Load)>> {
    match table
        .get(name)
        .map_err(db_error(format_args!("read liveness of {name}")))?
    {
        Some(bytes) => decode_liveness(name, bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// A client with its liveness overlaid, from a read transaction.
fn read_client_live(txn: &ReadTransaction, name: &str) -> Result<Option<Client>> {
    let Some(mut client) = read_client(&open_read(txn, CLIENTS)?, name)? else {
        return Ok(None);
    };
    overlay_liveness(
        &mut client,
        read_liveness(&open_read(txn, LIVENESS)?, name)?,
    );
    Ok(Some(client))
}

fn read_client(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<Client>> {
    let Some(bytes) = table
        .get(name)
        .map_err(db_error(format_args!("read client {name}")))?
    else {
        return Ok(None);
    };
    decode(&format!("clients/{name}"), bytes.value()).map(Some)
}

// ---------------------------------------------------------------------------------------------
// The Store implementation

impl Store for RedbStore {
    fn get(&self, kind: Kind, name: &str) -> Result<Option<Object>> {
        if kind == Kind::Client {
            return Ok(None);
        }
        self.read_txn("get object", |txn| {
            let objects = open_read(txn, OBJECTS)?;
            let key = object_key(kind, name);
            let Some(bytes) = objects
                .get(key.as_str())
                .map_err(db_error(format_args!("read {key}")))?
            else {
                return Ok(None);
            };
            decode_object(kind, &key, bytes.value()).map(Some)
        })
    }

    fn list(&self, kind: Kind) -> Result<Vec<Object>> {
        if kind == Kind::Client {
            return Ok(Vec::new());
        }
        self.read_txn("list objects", |txn| {
            let objects = open_read(txn, OBJECTS)?;
            // '0' is the character after '/', so this range is exactly the keys "{kind}/...".
            let start = format!("{}/", kind.as_str());
            let end = format!("{}0", kind.as_str());
            let mut result = Vec::new();
            for entry in objects
                .range(start.as_str()..end.as_str())
                .map_err(db_error(format_args!("list {kind}")))?
            {
                let (key, value) = entry.map_err(db_error(format_args!("list {kind}")))?;
                result.push(decode_object(kind, key.value(), value.value())?);
            }
            Ok(result)
        })
    }

    fn write(&self, writes: Vec<Write>, now: Timestamp) -> Result<Vec<WriteOutcome>> {
        self.write_txn("write objects", |txn| {
            let mut objects = open(txn, OBJECTS)?;
            let mut meta = open(txn, META)?;
            let mut revision = Revision::load(&meta)?;
            let mut outcomes = Vec::with_capacity(writes.len());
            for write in writes {
                let (kind, name) = match &write {
                    Write::Apply { object, .. } | Write::Status { object } => {
                        (object.kind(), object.name().to_string())
                    }
                    Write::Delete { kind, name, .. } => (*kind, name.clone()),
                };
                if kind == Kind::Client {
                    return Err(StoreError::Database(
                        "clients are written with put_clients and delete_client, not Store::write"
                            .into(),
                    ));
                }
                let key = object_key(kind, &name);
                let stored = match objects
                    .get(key.as_str())
                    .map_err(db_error(format_args!("read {key}")))?
                {
                    Some(bytes) => Some(decode_object(kind, &key, bytes.value())?),
                    None => None,
                };
                let outcome = match write {
                    Write::Apply { object, manager } => {
                        apply_object(stored.as_ref(), object, &manager, now, revision.peek())?
                    }
                    Write::Status { object } => {
                        write_status(stored.as_ref(), &object, revision.peek())
                    }
                    Write::Delete { precondition, .. } => {
                        delete_object(stored.as_ref(), kind, &name, precondition.as_deref())?
                    }
                };
                match &outcome {
                    WriteOutcome::Created(object) | WriteOutcome::Configured(object) => {
                        revision.take();
                        let bytes = encode(&key, object)?;
                        objects
                            .insert(key.as_str(), bytes.as_slice())
                            .map_err(db_error(format_args!("write {key}")))?;
                    }
                    WriteOutcome::Deleted(_) => {
                        revision.take();
                        objects
                            .remove(key.as_str())
                            .map_err(db_error(format_args!("delete {key}")))?;
                    }
                    WriteOutcome::Unchanged(_) | WriteOutcome::Missing => {}
                }
                outcomes.push(outcome);
            }
            revision.save(&mut meta)?;
            Ok(outcomes)
        })
    }

    fn revision(&self) -> Result<u64> {
        self.read_txn("read revision", |txn| {
            let meta = open_read(txn, META)?;
            Ok(meta_value(&meta, META_REVISION)?.unwrap_or(0))
        })
    }

    fn get_client(&self, name: &str) -> Result<Option<Client>> {
        self.read_txn("get client", |txn| read_client_live(txn, name))
    }

    fn list_clients(&self) -> Result<Vec<Client>> {
        self.read_txn("list clients", |txn| {
            let clients = open_read(txn, CLIENTS)?;
            let liveness = open_read(txn, LIVENESS)?;
            // Both tables are keyed by client name: walk them side by side.
            let mut records = liveness.iter().map_err(db_error("list client liveness"))?;
            let mut next_record = || -> Result<Option<(String, (Timestamp, Load))>> {
                let Some(entry) = records.next() else {
                    return Ok(None);
                };
                let (key, value) = entry.map_err(db_error("list client liveness"))?;
                let name = key.value();
                Ok(Some((
                    name.to_string(),
                    decode_liveness(name, value.value())?,
                )))
            };
            let mut pending = next_record()?;
            let mut result = Vec::new();
            for entry in clients.iter().map_err(db_error("list clients"))? {
                let (key, value) = entry.map_err(db_error("list clients"))?;
                let name = key.value();
                let mut client: Client = decode(&format!("clients/{name}"), value.value())?;
                while pending.as_ref().is_some_and(|(n, _)| n.as_str() < name) {
                    pending = next_record()?;
                }
                let record = match &pending {
                    Some((n, record)) if n == name => Some(*record),
                    _ => None,
                };
                overlay_liveness(&mut client, record);
                result.push(client);
            }
            Ok(result)
        })
    }

    fn client_by_machine_id(&self, machine_id: &str) -> Result<Option<Client>> {
        self.read_txn("find client by machine id", |txn| {
            let index = open_read(txn, MACHINE_IDS)?;
            let Some(name) = index
                .get(machine_id)
                .map_err(db_error("read machine id index"))?
            else {
                return Ok(None);
            };
            read_client_live(txn, name.value())
        })
    }

    fn create_client(&self, client: Client, token_hash: &str, now: Timestamp) -> Result<Client> {
        self.write_txn("create client", |txn| {
            let mut tables = NewClientTables::open(txn)?;
            let client = tables.insert(client, token_hash, now)?;
            tables.revision.save(&mut tables.meta)?;
            Ok(client)
        })
    }

    fn create_clients(
        &self,
        clients: Vec<(Client, String)>,
        now: Timestamp,
    ) -> Result<Vec<Client>> {
        if clients.is_empty() {
            return Ok(Vec::new());
        }
        self.write_txn("create clients", |txn| {
            let mut tables = NewClientTables::open(txn)?;
            let mut created = Vec::with_capacity(clients.len());
            for (client, token_hash) in clients {
                created.push(tables.insert(client, &token_hash, now)?);
            }
            tables.revision.save(&mut tables.meta)?;
            Ok(created)
        })
    }

    fn set_client_token(&self, name: &str, token_hash: &str) -> Result<()> {
        self.write_txn("set client token", |txn| {
            let clients = open(txn, CLIENTS)?;
            let mut tokens = open(txn, TOKENS)?;
            let mut token_of = open(txn, TOKEN_OF)?;
            if clients
                .get(name)
                .map_err(db_error("read client"))?
                .is_none()
            {
                return Err(StoreError::NotFound {
                    kind: "Client".into(),
                    name: name.to_string(),
                });
            }
            let holder = tokens
                .get(token_hash)
                .map_err(db_error("read token index"))?
                .map(|holder| holder.value().to_string());
            match holder {
                Some(holder) if holder == name => return Ok(()),
                Some(holder) => return Err(already_exists(CLIENT_TOKEN_KIND, &holder)),
                None => {}
            }
            let old = token_of
                .insert(name, token_hash)
                .map_err(db_error("write token index"))?
                .map(|old| old.value().to_string());
            if let Some(old) = old {
                tokens
                    .remove(old.as_str())
                    .map_err(db_error("remove old token"))?;
            }
            tokens
                .insert(token_hash, name)
                .map_err(db_error("write token index"))?;
            Ok(())
        })
    }

    fn client_by_token_hash(&self, token_hash: &str) -> Result<Option<String>> {
        self.read_txn("find client by token", |txn| {
            let tokens = open_read(txn, TOKENS)?;
            Ok(tokens
                .get(token_hash)
                .map_err(db_error("read token index"))?
                .map(|name| name.value().to_string()))
        })
    }

    fn client_token_hashes(&self) -> Result<Vec<(String, String)>> {
        self.read_txn("list client tokens", |txn| {
            let table = open_read(txn, TOKEN_OF)?;
            let mut pairs = vec![];
            for entry in table.iter().map_err(db_error("list client tokens"))? {
                let (name, hash) = entry.map_err(db_error("list client tokens"))?;
                pairs.push((name.value().to_string(), hash.value().to_string()));
            }
            Ok(pairs)
        })
    }

    fn put_liveness(&self, mut entries: Vec<Liveness>) -> Result<usize> {
        if entries.is_empty() {
            return Ok(0);
        }
        // In key order, a batch touches every page of the table at most once.
        entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        self.write_txn("put client liveness", |txn| {
            let mut table = open(txn, LIVENESS)?;
            for entry in &entries {
                let name = entry.name.as_str();
                table
                    .insert(name, encode_liveness(entry).as_slice())
                    .map_err(db_error(format_args!("write liveness of {name}")))?;
            }
            Ok(entries.len())
        })
    }

    fn put_clients(&self, mut clients: Vec<Client>) -> Result<Vec<Client>> {
        if clients.is_empty() {
            return Ok(clients);
        }
        // In key order, a batch touches every page of the table at most once (a fifth faster for
        // a batch of 50,000 than in arbitrary order).
        clients.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        self.write_txn("put clients", |txn| {
            let mut table = open(txn, CLIENTS)?;
            let mut liveness = open(txn, LIVENESS)?;
            let mut machine_ids = open(txn, MACHINE_IDS)?;
            let mut meta = open(txn, META)?;
            let mut revision = Revision::load(&meta)?;
            let mut result = Vec::with_capacity(clients.len());
            for mut client in clients {
                let name = client.metadata.name.clone();
                let key = format!("clients/{name}");
                let stored: Option<ClientHead> = match table
                    .get(name.as_str())
                    .map_err(db_error(format_args!("read {key}")))?
                {
                    Some(bytes) => Some(decode(&key, bytes.value())?),
                    None => None,
                };
                let machine_id = client.spec.machine_id.as_str();
                let old_machine_id = stored.as_ref().map(|head| head.spec.machine_id.as_str());
                if old_machine_id != Some(machine_id) {
                    // A new client, or (against the contract) a changed machine id: keep the
                    // index pointing at exactly one client per machine id.
                    let holder = machine_ids
                        .get(machine_id)
                        .map_err(db_error("read machine id index"))?
                        .map(|holder| holder.value().to_string());
                    if holder.is_some_and(|holder| holder != name) {
                        return Err(already_exists(MACHINE_ID_KIND, machine_id));
                    }
                    if let Some(old) = old_machine_id {
                        machine_ids
                            .remove(old)
                            .map_err(db_error("update machine id index"))?;
                    }
                    machine_ids
                        .insert(machine_id, name.as_str())
                        .map_err(db_error("update machine id index"))?;
                }
                let version = revision.take();
                let metadata = &mut client.metadata;
                match stored {
                    Some(head) => {
                        metadata.uid = head.metadata.uid;
                        metadata.creation_timestamp = head.metadata.creation_timestamp;
                    }
                    None => {
                        liveness
                            .remove(name.as_str())
                            .map_err(db_error("write client liveness"))?;
                        let created = *metadata
                            .creation_timestamp
                            .get_or_insert_with(Timestamp::now);
                        if metadata.uid.is_none() {
                            metadata.uid = Some(new_uid("Client", &name, created, version));
                        }
                    }
                }
                metadata.resource_version = Some(version.to_string());
                let bytes = encode(&key, &client)?;
                table
                    .insert(name.as_str(), bytes.as_slice())
                    .map_err(db_error(format_args!("write {key}")))?;
                result.push(client);
            }
            revision.save(&mut meta)?;
            Ok(result)
        })
    }

    fn delete_client(&self, name: &str) -> Result<Option<Client>> {
        self.write_txn("delete client", |txn| {
            let mut clients = open(txn, CLIENTS)?;
            let mut machine_ids = open(txn, MACHINE_IDS)?;
            let mut tokens = open(txn, TOKENS)?;
            let mut token_of = open(txn, TOKEN_OF)?;
            let mut meta = open(txn, META)?;
            let mut liveness = open(txn, LIVENESS)?;
            let Some(mut client) = read_client(&clients, name)? else {
                return Ok(None);
            };
            let record = liveness
                .remove(name)
                .map_err(db_error("delete client liveness"))?
                .map(|bytes| decode_liveness(name, bytes.value()))
                .transpose()?;
            overlay_liveness(&mut client, record);
            clients.remove(name).map_err(db_error("delete client"))?;
            let machine_id = client.spec.machine_id.as_str();
            let indexed = machine_ids
                .get(machine_id)
                .map_err(db_error("read machine id index"))?
                .is_some_and(|holder| holder.value() == name);
            if indexed {
                machine_ids
                    .remove(machine_id)
                    .map_err(db_error("update machine id index"))?;
            }
            let token = token_of
                .remove(name)
                .map_err(db_error("update token index"))?
                .map(|token| token.value().to_string());
            if let Some(token) = token {
                tokens
                    .remove(token.as_str())
                    .map_err(db_error("update token index"))?;
            }
            let mut revision = Revision::load(&meta)?;
            revision.take();
            revision.save(&mut meta)?;
            Ok(Some(client))
        })
    }

    fn append_events(&self, events: Vec<Event>) -> Result<Vec<Event>> {
        if events.is_empty() {
            return Ok(events);
        }
        let capacity = self.event_capacity;
        self.write_txn("append events", |txn| {
            let mut table = open(txn, EVENTS)?;
            let mut meta = open(txn, META)?;
            let mut next = meta_value(&meta, META_NEXT_EVENT_SEQ)?.unwrap_or(1);
            let mut result = Vec::with_capacity(events.len());
            for mut event in events {
                event.seq = next;
                next = next.saturating_add(1);
                let bytes = encode(&format!("events/{}", event.seq), &event)?;
                table
                    .insert(event.seq, bytes.as_slice())
                    .map_err(db_error("write event"))?;
                result.push(event);
            }
            meta.insert(META_NEXT_EVENT_SEQ, next)
                .map_err(db_error("write event sequence"))?;
            // Keep the `capacity` newest: sequence numbers above `next - 1 - capacity`.
            let keep_above = next.saturating_sub(1).saturating_sub(capacity);
            loop {
                let oldest = table
                    .first()
                    .map_err(db_error("trim events"))?
                    .map(|(seq, _)| seq.value());
                match oldest {
                    Some(seq) if seq <= keep_above => {
                        table.remove(seq).map_err(db_error("trim events"))?;
                    }
                    _ => break,
                }
            }
            Ok(result)
        })
    }

    fn list_events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read_txn("list events", |txn| {
            let table = open_read(txn, EVENTS)?;
            let start = match filter.after_seq {
                Some(after) => Bound::Excluded(after),
                None => Bound::Unbounded,
            };
            let mut result = Vec::new();
            // Newest first, so that a limit keeps the newest matches; reversed at the end.
            for entry in table
                .range::<u64>((start, Bound::Unbounded))
                .map_err(db_error("list events"))?
                .rev()
            {
                let (seq, value) = entry.map_err(db_error("list events"))?;
                let event: Event = decode(&format!("events/{}", seq.value()), value.value())?;
                if filter
                    .kind
                    .as_ref()
                    .is_some_and(|kind| *kind != event.object.kind)
                    || filter
                        .name
                        .as_ref()
                        .is_some_and(|name| *name != event.object.name)
                {
                    continue;
                }
                result.push(event);
                if result.len() >= limit {
                    break;
                }
            }
            result.reverse();
            Ok(result)
        })
    }

    fn get_setting(&self, key: &str) -> Result<Option<String>> {
        self.read_txn("get setting", |txn| {
            let settings = open_read(txn, SETTINGS)?;
            Ok(settings
                .get(key)
                .map_err(db_error(format_args!("read setting {key}")))?
                .map(|value| value.value().to_string()))
        })
    }

    fn put_setting(&self, key: &str, value: Option<&str>) -> Result<()> {
        self.write_txn("put setting", |txn| {
            let mut settings = open(txn, SETTINGS)?;
            match value {
                Some(value) => {
                    settings
                        .insert(key, value)
                        .map_err(db_error(format_args!("write setting {key}")))?;
                }
                None => {
                    settings
                        .remove(key)
                        .map_err(db_error(format_args!("remove setting {key}")))?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use tc_api::{API_VERSION, ClientGroupSpec};

    use super::*;

    fn group(priority: i32, label: Option<&str>) -> Object {
        let mut metadata = ObjectMeta::named("g");
        if let Some(label) = label {
            metadata.labels = BTreeMap::from([("tier".to_string(), label.to_string())]);
        }
        Object::ClientGroup(ClientGroup {
            api_version: API_VERSION.into(),
            kind: "ClientGroup".into(),
            metadata,
            spec: ClientGroupSpec {
                priority,
                ..Default::default()
            },
            status: None,
        })
    }

    proptest! {
        /// Over any sequence of applies, generation counts spec changes, resourceVersion moves
        /// exactly on writes, and uid and creationTimestamp never move.
        #[test]
        fn apply_sequences_keep_the_metadata_rules(
            steps in prop::collection::vec((0..3i32, prop::option::of("[ab]"), 0..2usize), 1..20)
        ) {
            let managers = ["tcadm", "dir:/srv"];
            let mut stored: Option<Object> = None;
            let mut revision = 0u64;
            let mut spec_changes = 0u64;
            for (step, (priority, label, manager)) in steps.into_iter().enumerate() {
                let manager = managers[manager];
                let incoming = group(priority, label.as_deref());
                let now = Timestamp::from_unix_millis(step as u64);
                let outcome =
                    apply_object(stored.as_ref(), incoming.clone(), manager, now, revision + 1)
                        .unwrap();
                match (&stored, outcome) {
                    (None, WriteOutcome::Created(object)) => {
                        revision += 1;
                        spec_changes = 1;
                        prop_assert_eq!(object.meta().creation_timestamp, Some(now));
                        prop_assert!(object.meta().uid.is_some());
                        stored = Some(object);
                    }
                    (Some(previous), WriteOutcome::Unchanged(object)) => {
                        prop_assert!(previous.same_content(&incoming));
                        prop_assert_eq!(previous.meta().managed_by.as_deref(), Some(manager));
                        prop_assert_eq!(&object, previous);
                    }
                    (Some(previous), WriteOutcome::Configured(object)) => {
                        revision += 1;
                        if previous.spec_json() != incoming.spec_json() {
                            spec_changes += 1;
                        }
                        prop_assert!(
                            !previous.same_content(&incoming)
                                || previous.meta().managed_by.as_deref() != Some(manager)
                        );
                        prop_assert_eq!(&object.meta().uid, &previous.meta().uid);
                        prop_assert_eq!(
                            object.meta().creation_timestamp,
                            previous.meta().creation_timestamp
                        );
                        stored = Some(object);
                    }
                    (previous, outcome) => {
                        prop_assert!(false, "{:?} after {:?}", outcome, previous);
                    }
                }
                let object = stored.as_ref().unwrap();
                prop_assert_eq!(object.meta().generation, Some(spec_changes));
                prop_assert_eq!(object.meta().resource_version.clone(), Some(revision.to_string()));
                prop_assert_eq!(object.meta().managed_by.as_deref(), Some(manager));
                prop_assert!(object.same_content(&incoming));
            }
        }
    }

    #[test]
    fn uids_look_like_uuids_and_differ_by_revision_and_name() {
        let now = Timestamp::from_unix_millis(1_700_000_000_000);
        let uid = new_uid("ClientGroup", "g", now, 1);
        let lengths: Vec<usize> = uid.split('-').map(str::len).collect();
        assert_eq!(lengths, [8, 4, 4, 4, 12], "{uid}");
        assert!(uid.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert_ne!(uid, new_uid("ClientGroup", "g", now, 2));
        assert_ne!(uid, new_uid("ClientGroup", "h", now, 1));
        assert_ne!(uid, new_uid("PackageRelease", "g", now, 1));
    }

    fn raw_insert(path: &Path, key: &str, value: &[u8]) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(OBJECTS).unwrap();
            table.insert(key, value).unwrap();
        }
        txn.commit().unwrap();
    }

    #[test]
    fn undecodable_records_are_reported_as_corrupt() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("store.redb");
        drop(RedbStore::open(&path).unwrap());
        raw_insert(&path, "ClientGroup/bad", b"{not json");
        raw_insert(
            &path,
            "PackageRelease/wrong-kind",
            br#"{"spec": {"selector": {}}}"#,
        );
        let store = RedbStore::open(&path).unwrap();
        let cases = [
            (Kind::ClientGroup, "bad", "objects/ClientGroup/bad"),
            (
                Kind::PackageRelease,
                "wrong-kind",
                "objects/PackageRelease/wrong-kind",
            ),
        ];
        for (kind, name, expected_key) in cases {
            match store.get(kind, name) {
                Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, expected_key),
                other => panic!("expected Corrupt for {expected_key}, got {other:?}"),
            }
            assert!(matches!(store.list(kind), Err(StoreError::Corrupt { .. })));
        }
        // A batch touching a corrupt record aborts without writing anything.
        let result = store.write(
            vec![
                Write::Apply {
                    object: group(0, None),
                    manager: "tcadm".into(),
                },
                Write::Delete {
                    kind: Kind::ClientGroup,
                    name: "bad".into(),
                    precondition: None,
                },
            ],
            Timestamp::EPOCH,
        );
        assert!(
            matches!(result, Err(StoreError::Corrupt { .. })),
            "{result:?}"
        );
        assert_eq!(store.get(Kind::ClientGroup, "g").unwrap(), None);
        assert_eq!(store.revision().unwrap(), 0);
    }

    #[test]
    fn a_newer_table_layout_is_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("store.redb");
        drop(RedbStore::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION + 1)
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        match RedbStore::open(&path) {
            Err(StoreError::Database(message)) => {
                assert!(message.contains("table layout 2"), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
