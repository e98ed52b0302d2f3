//! The embedded [`Store`]: one redb file.
//!
//! # Tables
//!
//! | table                | key                     | value                                        |
//! |----------------------|-------------------------|----------------------------------------------|
//! | `objects`            | `"{Kind}/{name}"`       | JSON of the [`Object`]                       |
//! | `clients`            | client name             | JSON of the [`Client`] object without `status` (metadata and spec); a legacy record embeds a status |
//! | `client_status`      | client name             | JSON of its [`ClientStatus`] without `inventory`, `lastHeartbeat` and `load` |
//! | `client_inventory`   | client name             | JSON of its [`Inventory`]                    |
//! | `client_liveness`    | client name             | last heartbeat and load, 28 bytes (see [`Liveness`]) |
//! | `client_machines`    | `"{machine id}\0{name}"` | client name (a machine id may have several clients) |
//! | `client_keys`        | public key (base64url)  | client name (a key has one client)           |
//! | `events`             | sequence number (`u64`) | JSON of the [`Event`], at most `capacity` of them |
//! | `settings`           | key                     | value                                        |
//! | `meta`               | `revision`, `nextEventSeq`, `schemaVersion` | `u64`                    |
//!
//! Object keys sort by kind and then by name, so listing a kind is one range scan that already
//! returns names in order. The store-wide `revision` counter is the last `resourceVersion` handed
//! out; every write that changes an object or a client object (including deletions) takes the
//! next one.
//!
//! # Clients in parts
//!
//! A client is kept as Kubernetes keeps a node: its object (`clients`), which changes rarely and
//! carries the `resourceVersion`, apart from what changes often. Its status (`client_status`)
//! changes with package reports and assignments, and is a few hundred bytes without the inventory
//! of about a kilobyte (`client_inventory`), which changes almost never and is not needed to
//! load the fleet ([`Store::scan_clients`] does not even read it). Liveness (`lastHeartbeat` and
//! `load`) changes with every heartbeat of every client, so it has its own table of small
//! fixed-size records: flushing the heartbeats of a large fleet writes a few dozen bytes per
//! client. Status and liveness writes take no `resourceVersion`.
//!
//! Reading a client puts it together: the object from `clients`; its status replaced by its
//! `client_status` record if there is one; `status.inventory` from its `client_inventory` record
//! if there is one; then its liveness record, when that is newer than the heartbeat the status
//! holds. All these tables are keyed by client name, so listing walks them side by side.
//!
//! Layout 1 (before this split) kept a client's whole status, inventory and heartbeat included,
//! in its `clients` record. Such legacy records are read as they are: their embedded status
//! stands when there is no `client_status` record, their embedded inventory when there is no
//! `client_inventory` record, and their embedded heartbeat and load compete with the liveness
//! record as above (also when a `client_status` record exists). Opening a file of layout 1 only
//! records layout 2; [`Store::put_clients`] rewrites a legacy record without its status, moving
//! its inventory to `client_inventory` (unless the write carries one or one is recorded) and its
//! heartbeat to `client_liveness` (unless a newer one is recorded).
//!
//! Layout 3 (client identities bound to keys) replaced the unique `client_machine_ids` index
//! (machine id → name) by `client_machines`, added `client_keys`, and dropped the client token
//! tables (`client_tokens`, `client_token_of`): opening a file of layout 1 or 2 moves the machine
//! ids over, and keeps each client's token hash as the setting
//! [`crate::LEGACY_CLIENT_TOKEN_SETTING`]`{name}` (the proof an upgraded agent gives once to
//! claim its client with a key), in the same transaction.
//!
//! Every public method is one redb transaction. Write transactions use redb's default immediate
//! durability, so a call that returned `Ok` is on disk; a failed call aborts its transaction and
//! leaves nothing behind.

use std::cmp::Ordering;
mod audit;
mod export;
pub(crate) mod history;
mod tasks;

use std::fmt::Display;
use std::ops::Bound;
use std::path::Path;

use redb::{
    AccessGuard, Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, WriteTransaction,
};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use tc_api::{
    AssignedPackage, AuditEntry, Client, ClientPhase, ClientSpec, ClientStatus, Condition, Event,
    Inventory, Kind, Object, ObjectMeta, PackageReport, Timestamp,
};
use tc_proto::Load;

use crate::write_path::{apply_object, decode_object, delete_object, new_uid, write_status};
use crate::{
    AuditFilter, AuditRetention, ClientStatusEntry, EventFilter, Liveness, Result, Store,
    StoreError, StoredHistory, StoredTaskRun, Write, WriteOutcome,
};
use tc_api::task::TaskResult;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("clients");
const CLIENT_MACHINES: TableDefinition<&str, &str> = TableDefinition::new("client_machines");
const CLIENT_KEYS: TableDefinition<&str, &str> = TableDefinition::new("client_keys");
/// The unique machine id index of layouts 1 and 2 (machine id → name), migrated at open.
const LEGACY_MACHINE_IDS: TableDefinition<&str, &str> = TableDefinition::new("client_machine_ids");
/// Client token hashes of layouts 1 and 2 (hash → name), dropped at open.
const LEGACY_TOKENS: TableDefinition<&str, &str> = TableDefinition::new("client_tokens");
/// Client token hashes of layouts 1 and 2 (name → hash), moved to settings at open.
const LEGACY_TOKEN_OF: TableDefinition<&str, &str> = TableDefinition::new("client_token_of");
const CLIENT_STATUS: TableDefinition<&str, &[u8]> = TableDefinition::new("client_status");
const CLIENT_INVENTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("client_inventory");
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
/// The table layout this build writes. It also reads layout 1 and migrates layouts 1 and 2 (see
/// the module documentation).
const SCHEMA_VERSION: u64 = 3;
/// The layout with client tokens and one client per machine id.
const TOKEN_SCHEMA_VERSION: u64 = 2;
/// The layout before clients were split into parts: a client's whole status in its `clients`
/// record.
const LEGACY_SCHEMA_VERSION: u64 = 1;

/// How many events are kept unless the store is opened with another capacity.
pub const DEFAULT_EVENT_CAPACITY: usize = 10_000;

/// Page cache of the database. redb's default (1 GiB) would let the cache grow with the fleet
/// and dominate the controller's memory; a quarter of that keeps the upper levels and the busy
/// leaves of a million clients' tables cached (first contact of a million agents writes status
/// and inventory records at random keys; with 64 MiB that ran at about 4,300 per second).
const CACHE_BYTES: usize = 256 * 1024 * 1024;

/// The Kind name used in [`StoreError::AlreadyExists`] when a public key already belongs to
/// another client (the `name` is then that client's name).
pub const PUBLIC_KEY_KIND: &str = "PublicKey";

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
            open(txn, CLIENT_MACHINES)?;
            open(txn, CLIENT_KEYS)?;
            open(txn, CLIENT_STATUS)?;
            open(txn, CLIENT_INVENTORY)?;
            open(txn, LIVENESS)?;
            open(txn, EVENTS)?;
            open(txn, SETTINGS)?;
            RedbStore::init_audit(txn)?;
            RedbStore::init_history(txn)?;
            RedbStore::init_tasks(txn)?;
            let mut meta = open(txn, META)?;
            match meta_value(&meta, META_SCHEMA_VERSION)? {
                // A new file, or one of layout 1, whose client records are read as they are
                // (their embedded status is what a client without records beside it has); the
                // new version keeps older builds, which would not see those records, away.
                None => {
                    meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION)
                        .map_err(db_error("write schema version"))?;
                }
                Some(LEGACY_SCHEMA_VERSION | TOKEN_SCHEMA_VERSION) => {
                    migrate_client_indexes(txn)?;
                    meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION)
                        .map_err(db_error("write schema version"))?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(other) => {
                    return Err(StoreError::Database(format!(
                        "{shown} has table layout {other}, this build understands layouts up to \
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

/// Moves the client indexes of layouts 1 and 2 to layout 3: machine ids into `client_machines`,
/// token hashes into settings (see the module documentation); drops the old tables.
fn migrate_client_indexes(txn: &WriteTransaction) -> Result<()> {
    {
        let old = open(txn, LEGACY_MACHINE_IDS)?;
        let mut machines = open(txn, CLIENT_MACHINES)?;
        for entry in old.iter().map_err(db_error("read machine id index"))? {
            let (machine_id, name) = entry.map_err(db_error("read machine id index"))?;
            machines
                .insert(
                    machine_key(machine_id.value(), name.value()).as_str(),
                    name.value(),
                )
                .map_err(db_error("write machine index"))?;
        }
        let token_of = open(txn, LEGACY_TOKEN_OF)?;
        let mut settings = open(txn, SETTINGS)?;
        for entry in token_of.iter().map_err(db_error("read token index"))? {
            let (name, hash) = entry.map_err(db_error("read token index"))?;
            settings
                .insert(
                    format!("{}{}", crate::LEGACY_CLIENT_TOKEN_SETTING, name.value()).as_str(),
                    hash.value(),
                )
                .map_err(db_error("write legacy client token"))?;
        }
    }
    for table in [LEGACY_MACHINE_IDS, LEGACY_TOKENS, LEGACY_TOKEN_OF] {
        txn.delete_table(table)
            .map_err(db_error("drop a table of layout 2"))?;
    }
    Ok(())
}

/// The `client_machines` key of a client: its machine id, a NUL, its name. Machine ids of
/// enrolments never contain control characters, so every key of one machine id shares the
/// prefix [`machine_prefix`].
fn machine_key(machine_id: &str, name: &str) -> String {
    format!("{machine_id}\0{name}")
}

/// The prefix of every `client_machines` key of a machine id.
fn machine_prefix(machine_id: &str) -> String {
    format!("{machine_id}\0")
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

fn encode<T: Serialize + ?Sized>(key: impl Display, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|error| StoreError::Database(format!("cannot encode {key}: {error}")))
}

/// Decodes a record; `key` names it in the error (formatted only then).
fn decode<T: DeserializeOwned>(key: impl Display, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        key: key.to_string(),
        message: error.to_string(),
    })
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

// ---------------------------------------------------------------------------------------------
// Clients in parts

/// A client's object as the `clients` table holds it: everything but its status.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClientObject<'a> {
    api_version: &'a str,
    kind: &'a str,
    metadata: &'a ObjectMeta,
    spec: &'a ClientSpec,
}

impl<'a> ClientObject<'a> {
    pub(crate) fn of(client: &'a Client) -> Self {
        // Every field named, so that a field added to `Client` fails to compile here instead of
        // being silently left out of the record.
        let Client {
            api_version,
            kind,
            metadata,
            spec,
            status: _,
        } = client;
        ClientObject {
            api_version,
            kind,
            metadata,
            spec,
        }
    }
}

/// A client's status as the `client_status` table holds it: everything but `inventory`,
/// `lastHeartbeat` and `load`, which have tables of their own. Read back as a [`ClientStatus`],
/// whose missing fields take their defaults.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusRecord<'a> {
    phase: ClientPhase,
    #[serde(skip_serializing_if = "str::is_empty")]
    inventory_hash: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    packages: &'a [PackageReport],
    observed_revision: u64,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    desired: &'a [AssignedPackage],
    desired_revision: u64,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    conditions: &'a [Condition],
}

impl<'a> StatusRecord<'a> {
    pub(crate) fn of(status: &'a ClientStatus) -> Self {
        // Every field named, so that a field added to `ClientStatus` fails to compile here.
        let ClientStatus {
            phase,
            last_heartbeat: _,
            inventory: _,
            inventory_hash,
            load: _,
            packages,
            observed_revision,
            desired,
            desired_revision,
            conditions,
            // Computed when a client is read, never stored.
            groups: _,
            decisions: _,
        } = status;
        StatusRecord {
            phase: *phase,
            inventory_hash,
            packages,
            observed_revision: *observed_revision,
            desired,
            desired_revision: *desired_revision,
            conditions,
        }
    }
}

/// Whether a `clients` record may embed an inventory: only legacy records (schema version 1)
/// embed a status, and only those with an inventory contain this key. A false positive (a label
/// value `inventory`) costs only speed.
fn may_embed_inventory(record: &[u8]) -> bool {
    const KEY: &[u8] = b"\"inventory\"";
    record.windows(KEY.len()).any(|window| window == KEY)
}

/// A `clients` record decoded without the inventory a legacy record embeds in its status.
#[derive(Deserialize)]
struct ClientWithoutInventory {
    #[serde(default)]
    status: Option<StatusWithoutInventory>,
    #[serde(flatten)]
    client: Client,
}

/// An embedded legacy status whose inventory is skipped, not decoded.
#[derive(Deserialize)]
struct StatusWithoutInventory {
    #[serde(default, rename = "inventory")]
    _inventory: Option<IgnoredAny>,
    #[serde(flatten)]
    status: ClientStatus,
}

/// Only the inventory a legacy `clients` record embeds (everything else is skipped).
#[derive(Deserialize)]
struct LegacyInventory {
    #[serde(default)]
    status: Option<LegacyInventoryStatus>,
}

#[derive(Deserialize)]
struct LegacyInventoryStatus {
    #[serde(default)]
    inventory: Option<Inventory>,
}

/// The part of a stored client that `put_clients` needs: its metadata, its machine id and the
/// status a legacy record embeds (absent from records of the current layout, so nothing large is
/// decoded for them).
#[derive(Deserialize)]
struct ClientHead {
    metadata: ObjectMeta,
    spec: ClientHeadSpec,
    #[serde(default)]
    status: Option<ClientStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientHeadSpec {
    machine_id: String,
    #[serde(default)]
    public_key: String,
}

/// A `clients` record: the object, with the status a legacy record embeds (else the default).
fn decode_client(name: &str, bytes: &[u8]) -> Result<Client> {
    decode(format_args!("clients/{name}"), bytes)
}

/// A `clients` record as [`decode_client`] returns it, but without decoding (and without) any
/// embedded inventory.
fn decode_client_without_inventory(name: &str, bytes: &[u8]) -> Result<Client> {
    if !may_embed_inventory(bytes) {
        return decode_client(name, bytes);
    }
    let ClientWithoutInventory { status, mut client } =
        decode(format_args!("clients/{name}"), bytes)?;
    client.status = status.map(|status| status.status).unwrap_or_default();
    Ok(client)
}

/// The inventory a legacy `clients` record embeds.
fn decode_legacy_inventory(name: &str, bytes: &[u8]) -> Result<Option<Inventory>> {
    if !may_embed_inventory(bytes) {
        return Ok(None);
    }
    let legacy: LegacyInventory = decode(format_args!("clients/{name}"), bytes)?;
    Ok(legacy.status.and_then(|status| status.inventory))
}

fn decode_status(name: &str, bytes: &[u8]) -> Result<ClientStatus> {
    decode(format_args!("client_status/{name}"), bytes)
}

fn decode_inventory(name: &str, bytes: &[u8]) -> Result<Inventory> {
    decode(format_args!("client_inventory/{name}"), bytes)
}

/// A client's liveness: its last heartbeat and the load it reported with it.
pub(crate) type Live = (Timestamp, Load);

/// Puts a client together from its `clients` record (whose status is the default, or what a
/// legacy record embeds) and its other records: the status record replaces the status, except
/// for the inventory, last heartbeat and load a legacy record embeds; the inventory record
/// replaces the inventory; the liveness record is taken when it is newer.
pub(crate) fn assemble(
    mut client: Client,
    status: Option<ClientStatus>,
    inventory: Option<Inventory>,
    liveness: Option<Live>,
) -> Client {
    if let Some(mut status) = status {
        let embedded = std::mem::take(&mut client.status);
        status.inventory = embedded.inventory;
        status.last_heartbeat = embedded.last_heartbeat;
        status.load = embedded.load;
        client.status = status;
    }
    if inventory.is_some() {
        client.status.inventory = inventory;
    }
    overlay_liveness(&mut client, liveness);
    client
}

/// Sets a status's liveness to the recorded one (none: no heartbeat, no load).
pub(crate) fn set_liveness(status: &mut ClientStatus, liveness: Option<Live>) {
    let (last_heartbeat, load) = liveness.unzip();
    status.last_heartbeat = last_heartbeat;
    status.load = load.unwrap_or_default();
}

/// One record of a table keyed by client name.
fn get_record<'a>(
    table: &'a impl ReadableTable<&'static str, &'static [u8]>,
    table_name: &str,
    name: &str,
) -> Result<Option<AccessGuard<'a, &'static [u8]>>> {
    table
        .get(name)
        .map_err(db_error(format_args!("read {table_name}/{name}")))
}

/// One client, put together from its records, in a read or a write transaction.
fn read_client<T: ReadableTable<&'static str, &'static [u8]>>(
    clients: &T,
    status: &T,
    inventory: &T,
    liveness: &T,
    name: &str,
) -> Result<Option<Client>> {
    let Some(record) = get_record(clients, "clients", name)? else {
        return Ok(None);
    };
    let client = decode_client(name, record.value())?;
    let status = get_record(status, "client_status", name)?
        .map(|bytes| decode_status(name, bytes.value()))
        .transpose()?;
    let inventory = get_record(inventory, "client_inventory", name)?
        .map(|bytes| decode_inventory(name, bytes.value()))
        .transpose()?;
    let liveness = read_liveness(liveness, name)?;
    Ok(Some(assemble(client, status, inventory, liveness)))
}

/// The client tables, open in one read transaction.
struct ClientReadTables {
    clients: ReadOnlyTable<&'static str, &'static [u8]>,
    status: ReadOnlyTable<&'static str, &'static [u8]>,
    inventory: ReadOnlyTable<&'static str, &'static [u8]>,
    liveness: ReadOnlyTable<&'static str, &'static [u8]>,
}

impl ClientReadTables {
    fn open(txn: &ReadTransaction) -> Result<Self> {
        Ok(ClientReadTables {
            clients: open_read(txn, CLIENTS)?,
            status: open_read(txn, CLIENT_STATUS)?,
            inventory: open_read(txn, CLIENT_INVENTORY)?,
            liveness: open_read(txn, LIVENESS)?,
        })
    }

    fn get(&self, name: &str) -> Result<Option<Client>> {
        read_client(
            &self.clients,
            &self.status,
            &self.inventory,
            &self.liveness,
            name,
        )
    }

    /// Visits every client in name order, walking `clients` and the tables beside it (all keyed
    /// by client name) side by side. Without `with_inventory`, clients come without inventory
    /// and no inventory is even decoded.
    fn walk(&self, with_inventory: bool, visit: &mut dyn FnMut(Client)) -> Result<()> {
        let mut status = Beside::new(&self.status, "client_status")?;
        let mut liveness = Beside::new(&self.liveness, "client_liveness")?;
        let mut inventory = if with_inventory {
            Some(Beside::new(&self.inventory, "client_inventory")?)
        } else {
            None
        };
        for entry in self.clients.iter().map_err(db_error("list clients"))? {
            let (key, value) = entry.map_err(db_error("list clients"))?;
            let name = key.value();
            let client = if with_inventory {
                decode_client(name, value.value())?
            } else {
                decode_client_without_inventory(name, value.value())?
            };
            let status = status
                .take(name)?
                .map(|bytes| decode_status(name, bytes.value()))
                .transpose()?;
            let inventory = match &mut inventory {
                Some(records) => records
                    .take(name)?
                    .map(|bytes| decode_inventory(name, bytes.value()))
                    .transpose()?,
                None => None,
            };
            let liveness = liveness
                .take(name)?
                .map(|bytes| decode_liveness(name, bytes.value()))
                .transpose()?;
            visit(assemble(client, status, inventory, liveness));
        }
        Ok(())
    }
}

/// Walks a table keyed by client name beside `clients`, whose names are asked for in order.
struct Beside<'a> {
    entries: redb::Range<'a, &'static str, &'static [u8]>,
    pending: Option<(
        AccessGuard<'a, &'static str>,
        AccessGuard<'a, &'static [u8]>,
    )>,
    table: &'static str,
}

impl<'a> Beside<'a> {
    fn new(
        table: &'a impl ReadableTable<&'static str, &'static [u8]>,
        table_name: &'static str,
    ) -> Result<Self> {
        let entries = table
            .iter()
            .map_err(db_error(format_args!("list {table_name}")))?;
        let mut beside = Beside {
            entries,
            pending: None,
            table: table_name,
        };
        beside.advance()?;
        Ok(beside)
    }

    fn advance(&mut self) -> Result<()> {
        self.pending = self
            .entries
            .next()
            .transpose()
            .map_err(db_error(format_args!("list {}", self.table)))?;
        Ok(())
    }

    /// The record of `name`, if any. Names must be asked for in increasing order.
    fn take(&mut self, name: &str) -> Result<Option<AccessGuard<'a, &'static [u8]>>> {
        loop {
            let order = match &self.pending {
                None => return Ok(None),
                Some((key, _)) => key.value().cmp(name),
            };
            match order {
                Ordering::Less => self.advance()?,
                Ordering::Equal => {
                    let (_, value) = self.pending.take().expect("a pending record");
                    self.advance()?;
                    return Ok(Some(value));
                }
                Ordering::Greater => return Ok(None),
            }
        }
    }
}

/// The records kept beside client objects (status, inventory, liveness), open in one write
/// transaction.
struct ClientParts<'t> {
    txn: &'t WriteTransaction,
    status: Table<'t, &'static str, &'static [u8]>,
    inventory: Table<'t, &'static str, &'static [u8]>,
    liveness: Table<'t, &'static str, &'static [u8]>,
}

impl<'t> ClientParts<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self> {
        Ok(ClientParts {
            txn,
            status: open(txn, CLIENT_STATUS)?,
            inventory: open(txn, CLIENT_INVENTORY)?,
            liveness: open(txn, LIVENESS)?,
        })
    }

    /// Drops every record under `name`: those of a deleted client (its load history too), or
    /// liveness written for a name without a client.
    fn clear(&mut self, name: &str) -> Result<()> {
        self.status
            .remove(name)
            .map_err(db_error(format_args!("remove client_status/{name}")))?;
        self.inventory
            .remove(name)
            .map_err(db_error(format_args!("remove client_inventory/{name}")))?;
        self.liveness
            .remove(name)
            .map_err(db_error(format_args!("remove client_liveness/{name}")))?;
        history::clear_history(self.txn, name)
    }

    /// Records a stored client's status: the status record, the inventory when `Some`, and the
    /// heartbeat (with the load) when it is newer than the recorded one. Returns the liveness
    /// recorded afterwards.
    fn record(&mut self, name: &str, status: &ClientStatus) -> Result<Option<Live>> {
        let bytes = encode(
            format_args!("client_status/{name}"),
            &StatusRecord::of(status),
        )?;
        self.status
            .insert(name, bytes.as_slice())
            .map_err(db_error(format_args!("write client_status/{name}")))?;
        if let Some(inventory) = &status.inventory {
            self.put_inventory(name, inventory)?;
        }
        self.advance_liveness(name, status.last_heartbeat.map(|at| (at, status.load)))
    }

    fn put_inventory(&mut self, name: &str, inventory: &Inventory) -> Result<()> {
        let bytes = encode(format_args!("client_inventory/{name}"), inventory)?;
        self.inventory
            .insert(name, bytes.as_slice())
            .map_err(db_error(format_args!("write client_inventory/{name}")))?;
        Ok(())
    }

    /// The recorded inventory (not one a legacy `clients` record embeds).
    fn inventory(&self, name: &str) -> Result<Option<Inventory>> {
        get_record(&self.inventory, "client_inventory", name)?
            .map(|bytes| decode_inventory(name, bytes.value()))
            .transpose()
    }

    /// Records `heartbeat` when it is newer than the recorded one; returns the liveness recorded
    /// afterwards.
    fn advance_liveness(&mut self, name: &str, heartbeat: Option<Live>) -> Result<Option<Live>> {
        let recorded = read_liveness(&self.liveness, name)?;
        match heartbeat {
            Some((at, load)) if recorded.is_none_or(|(recorded_at, _)| at > recorded_at) => {
                self.liveness
                    .insert(name, encode_liveness(at, &load).as_slice())
                    .map_err(db_error(format_args!("write client_liveness/{name}")))?;
                Ok(Some((at, load)))
            }
            _ => Ok(recorded),
        }
    }
}

/// The tables an enrolment writes, open in one write transaction.
struct NewClientTables<'t> {
    clients: Table<'t, &'static str, &'static [u8]>,
    index: IdentityIndex<'t>,
    parts: ClientParts<'t>,
    meta: Table<'t, &'static str, u64>,
    revision: Revision,
}

impl<'t> NewClientTables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self> {
        let meta = open(txn, META)?;
        let revision = Revision::load(&meta)?;
        Ok(NewClientTables {
            clients: open(txn, CLIENTS)?,
            index: IdentityIndex::open(txn)?,
            parts: ClientParts::open(txn)?,
            meta,
            revision,
        })
    }

    /// Stores one new client with its indexes and its status; refuses a taken name or public key
    /// (including one taken earlier in the same transaction). Returns the client as it now reads.
    fn insert(&mut self, mut client: Client, now: Timestamp) -> Result<Client> {
        let name = client.metadata.name.clone();
        if self
            .clients
            .get(name.as_str())
            .map_err(db_error("read client"))?
            .is_some()
        {
            return Err(already_exists("Client", &name));
        }
        self.index.add(&name, &client.spec)?;
        let version = self.revision.take();
        let metadata = &mut client.metadata;
        if metadata.uid.is_none() {
            metadata.uid = Some(new_uid("Client", &name, now, version));
        }
        metadata.creation_timestamp = Some(now);
        metadata.resource_version = Some(version.to_string());
        let bytes = encode(format_args!("clients/{name}"), &ClientObject::of(&client))?;
        self.clients
            .insert(name.as_str(), bytes.as_slice())
            .map_err(db_error("write client"))?;
        // Records left under this name (liveness written for it after a client of this name was
        // deleted); the new client starts from its own status only.
        self.parts.clear(&name)?;
        let liveness = self.parts.record(&name, &client.status)?;
        set_liveness(&mut client.status, liveness);
        Ok(client)
    }
}

/// The identity indexes of clients: which clients have a machine id, which client has a key.
struct IdentityIndex<'t> {
    machines: Table<'t, &'static str, &'static str>,
    keys: Table<'t, &'static str, &'static str>,
}

impl<'t> IdentityIndex<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self> {
        Ok(IdentityIndex {
            machines: open(txn, CLIENT_MACHINES)?,
            keys: open(txn, CLIENT_KEYS)?,
        })
    }

    /// Indexes a client's machine id and key; refuses a key another client holds.
    fn add(&mut self, name: &str, spec: &ClientSpec) -> Result<()> {
        self.add_key(name, &spec.public_key)?;
        self.machines
            .insert(machine_key(&spec.machine_id, name).as_str(), name)
            .map_err(db_error("write machine index"))?;
        Ok(())
    }

    fn add_key(&mut self, name: &str, key: &str) -> Result<()> {
        if key.is_empty() {
            return Ok(());
        }
        let holder = self
            .keys
            .get(key)
            .map_err(db_error("read key index"))?
            .map(|holder| holder.value().to_string());
        match holder {
            Some(holder) if holder == name => Ok(()),
            Some(holder) => Err(already_exists(PUBLIC_KEY_KIND, &holder)),
            None => {
                self.keys
                    .insert(key, name)
                    .map_err(db_error("write key index"))?;
                Ok(())
            }
        }
    }

    /// Removes a client's machine id and key from the indexes.
    fn remove(&mut self, name: &str, machine_id: &str, key: &str) -> Result<()> {
        self.machines
            .remove(machine_key(machine_id, name).as_str())
            .map_err(db_error("update machine index"))?;
        self.remove_key(name, key)
    }

    fn remove_key(&mut self, name: &str, key: &str) -> Result<()> {
        if key.is_empty() {
            return Ok(());
        }
        let held = self
            .keys
            .get(key)
            .map_err(db_error("read key index"))?
            .is_some_and(|holder| holder.value() == name);
        if held {
            self.keys
                .remove(key)
                .map_err(db_error("update key index"))?;
        }
        Ok(())
    }

    /// Moves a stored client's index entries from `old` to `new` identity.
    fn update(&mut self, name: &str, old: &ClientHeadSpec, new: &ClientSpec) -> Result<()> {
        if old.public_key != new.public_key {
            self.add_key(name, &new.public_key)?;
            self.remove_key(name, &old.public_key)?;
        }
        if old.machine_id != new.machine_id {
            self.machines
                .remove(machine_key(&old.machine_id, name).as_str())
                .map_err(db_error("update machine index"))?;
            self.machines
                .insert(machine_key(&new.machine_id, name).as_str(), name)
                .map_err(db_error("update machine index"))?;
        }
        Ok(())
    }
}

/// Size of an encoded liveness record: last heartbeat (ms), CPU %, memory used, uptime.
const LIVENESS_BYTES: usize = 28;

fn encode_liveness(last_heartbeat: Timestamp, load: &Load) -> [u8; LIVENESS_BYTES] {
    let mut bytes = [0u8; LIVENESS_BYTES];
    bytes[0..8].copy_from_slice(&last_heartbeat.unix_millis().to_le_bytes());
    bytes[8..12].copy_from_slice(&load.cpu_percent.to_le_bytes());
    bytes[12..20].copy_from_slice(&load.memory_used_bytes.to_le_bytes());
    bytes[20..28].copy_from_slice(&load.uptime_seconds.to_le_bytes());
    bytes
}

fn decode_liveness(name: &str, bytes: &[u8]) -> Result<Live> {
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

/// Takes a liveness record into a client, when the record is newer than what its status holds
/// (nothing, or what a legacy record embeds).
fn overlay_liveness(client: &mut Client, record: Option<Live>) {
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
) -> Result<Option<Live>> {
    match table
        .get(name)
        .map_err(db_error(format_args!("read liveness of {name}")))?
    {
        Some(bytes) => decode_liveness(name, bytes.value()).map(Some),
        None => Ok(None),
    }
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
        self.read_txn("get client", |txn| ClientReadTables::open(txn)?.get(name))
    }

    fn list_clients(&self) -> Result<Vec<Client>> {
        self.read_txn("list clients", |txn| {
            let mut result = Vec::new();
            ClientReadTables::open(txn)?.walk(true, &mut |client| result.push(client))?;
            Ok(result)
        })
    }

    fn scan_clients(&self, visit: &mut dyn FnMut(Client)) -> Result<()> {
        self.read_txn("scan clients", |txn| {
            ClientReadTables::open(txn)?.walk(false, visit)
        })
    }

    fn scan_inventories(&self, visit: &mut dyn FnMut(&str, Inventory)) -> Result<()> {
        self.read_txn("scan client inventories", |txn| {
            let table = open_read(txn, CLIENT_INVENTORY)?;
            for entry in table.iter().map_err(db_error("list client inventories"))? {
                let (key, value) = entry.map_err(db_error("list client inventories"))?;
                let name = key.value();
                visit(name, decode_inventory(name, value.value())?);
            }
            Ok(())
        })
    }

    fn client_inventory(&self, name: &str) -> Result<Option<Inventory>> {
        self.read_txn("read client inventory", |txn| {
            let clients = open_read(txn, CLIENTS)?;
            let Some(record) = get_record(&clients, "clients", name)? else {
                return Ok(None);
            };
            let inventory = open_read(txn, CLIENT_INVENTORY)?;
            match get_record(&inventory, "client_inventory", name)? {
                Some(bytes) => decode_inventory(name, bytes.value()).map(Some),
                None => decode_legacy_inventory(name, record.value()),
            }
        })
    }

    fn clients_by_machine_id(&self, machine_id: &str) -> Result<Vec<Client>> {
        self.read_txn("find clients by machine id", |txn| {
            let index = open_read(txn, CLIENT_MACHINES)?;
            let prefix = machine_prefix(machine_id);
            let mut names = vec![];
            let range = index
                .range::<&str>(prefix.as_str()..)
                .map_err(db_error("read machine index"))?;
            for entry in range {
                let (key, name) = entry.map_err(db_error("read machine index"))?;
                if !key.value().starts_with(prefix.as_str()) {
                    break;
                }
                names.push(name.value().to_string());
            }
            let tables = ClientReadTables::open(txn)?;
            let mut clients = Vec::with_capacity(names.len());
            for name in names {
                clients.extend(tables.get(&name)?);
            }
            Ok(clients)
        })
    }

    fn client_by_public_key(&self, public_key: &str) -> Result<Option<Client>> {
        if public_key.is_empty() {
            return Ok(None);
        }
        self.read_txn("find client by key", |txn| {
            let index = open_read(txn, CLIENT_KEYS)?;
            let Some(name) = index.get(public_key).map_err(db_error("read key index"))? else {
                return Ok(None);
            };
            ClientReadTables::open(txn)?.get(name.value())
        })
    }

    fn create_client(&self, client: Client, now: Timestamp) -> Result<Client> {
        self.write_txn("create client", |txn| {
            let mut tables = NewClientTables::open(txn)?;
            let client = tables.insert(client, now)?;
            tables.revision.save(&mut tables.meta)?;
            Ok(client)
        })
    }

    fn create_clients(&self, clients: Vec<Client>, now: Timestamp) -> Result<Vec<Client>> {
        if clients.is_empty() {
            return Ok(Vec::new());
        }
        self.write_txn("create clients", |txn| {
            let mut tables = NewClientTables::open(txn)?;
            let mut created = Vec::with_capacity(clients.len());
            for client in clients {
                created.push(tables.insert(client, now)?);
            }
            tables.revision.save(&mut tables.meta)?;
            Ok(created)
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
                    .insert(
                        name,
                        encode_liveness(entry.last_heartbeat, &entry.load).as_slice(),
                    )
                    .map_err(db_error(format_args!("write liveness of {name}")))?;
            }
            Ok(entries.len())
        })
    }

    fn put_client_status(&self, mut entries: Vec<ClientStatusEntry>) -> Result<usize> {
        if entries.is_empty() {
            return Ok(0);
        }
        // In key order (a stable sort: entries of one name stay in the order given).
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        self.write_txn("put client status", |txn| {
            let clients = open(txn, CLIENTS)?;
            let mut parts = ClientParts::open(txn)?;
            let mut written = 0;
            let mut entries = entries.iter().peekable();
            while let Some(entry) = entries.next() {
                let name = entry.name.as_str();
                if entries.peek().is_some_and(|next| next.name == entry.name) {
                    // A later entry of this name wins.
                    continue;
                }
                // Deleted meanwhile, or never enrolled: not brought back. Every client has a
                // status record from its enrolment on (only clients of a version-1 file may not),
                // and that leaf is about to be written anyway.
                if get_record(&parts.status, "client_status", name)?.is_none()
                    && get_record(&clients, "clients", name)?.is_none()
                {
                    continue;
                }
                parts.record(name, &entry.status)?;
                written += 1;
            }
            Ok(written)
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
            let mut parts = ClientParts::open(txn)?;
            let mut index = IdentityIndex::open(txn)?;
            let mut meta = open(txn, META)?;
            let mut revision = Revision::load(&meta)?;
            let mut result = Vec::with_capacity(clients.len());
            for mut client in clients {
                let name = client.metadata.name.clone();
                let stored: Option<ClientHead> = get_record(&table, "clients", &name)?
                    .map(|bytes| decode(format_args!("clients/{name}"), bytes.value()))
                    .transpose()?;
                match &stored {
                    Some(head) => index.update(&name, &head.spec, &client.spec)?,
                    None => index.add(&name, &client.spec)?,
                }
                let version = revision.take();
                let metadata = &mut client.metadata;
                // The status a legacy record embeds; rewriting the record drops it, so what is
                // not replaced moves to the records beside it.
                let mut embedded = None;
                match stored {
                    Some(head) => {
                        metadata.uid = head.metadata.uid;
                        metadata.creation_timestamp = head.metadata.creation_timestamp;
                        embedded = head.status;
                    }
                    None => {
                        parts.clear(&name)?;
                        let created = *metadata
                            .creation_timestamp
                            .get_or_insert_with(Timestamp::now);
                        if metadata.uid.is_none() {
                            metadata.uid = Some(new_uid("Client", &name, created, version));
                        }
                    }
                }
                metadata.resource_version = Some(version.to_string());
                let bytes = encode(format_args!("clients/{name}"), &ClientObject::of(&client))?;
                table
                    .insert(name.as_str(), bytes.as_slice())
                    .map_err(db_error(format_args!("write clients/{name}")))?;
                let mut embedded_inventory = None;
                if let Some(embedded) = embedded {
                    if let Some(at) = embedded.last_heartbeat {
                        parts.advance_liveness(&name, Some((at, embedded.load)))?;
                    }
                    embedded_inventory = embedded.inventory;
                }
                let liveness = parts.record(&name, &client.status)?;
                if client.status.inventory.is_none() {
                    client.status.inventory = match parts.inventory(&name)? {
                        Some(recorded) => Some(recorded),
                        None => match embedded_inventory {
                            Some(inventory) => {
                                parts.put_inventory(&name, &inventory)?;
                                Some(inventory)
                            }
                            None => None,
                        },
                    };
                }
                set_liveness(&mut client.status, liveness);
                result.push(client);
            }
            revision.save(&mut meta)?;
            Ok(result)
        })
    }

    fn delete_client(&self, name: &str) -> Result<Option<Client>> {
        self.write_txn("delete client", |txn| {
            let mut clients = open(txn, CLIENTS)?;
            let mut parts = ClientParts::open(txn)?;
            let mut index = IdentityIndex::open(txn)?;
            let mut meta = open(txn, META)?;
            let Some(client) = read_client(
                &clients,
                &parts.status,
                &parts.inventory,
                &parts.liveness,
                name,
            )?
            else {
                return Ok(None);
            };
            clients.remove(name).map_err(db_error("delete client"))?;
            parts.clear(name)?;
            index.remove(name, &client.spec.machine_id, &client.spec.public_key)?;
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
            let first = meta_value(&meta, META_NEXT_EVENT_SEQ)?.unwrap_or(1);
            let count = u64::try_from(events.len()).unwrap_or(u64::MAX);
            let next = first.saturating_add(count);
            meta.insert(META_NEXT_EVENT_SEQ, next)
                .map_err(db_error("write event sequence"))?;
            // Keep the `capacity` newest: sequence numbers above `next - 1 - capacity`. The older
            // ones go in one range removal, before the new ones are inserted.
            let keep_above = next.saturating_sub(1).saturating_sub(capacity);
            if keep_above > 0 {
                table
                    .retain_in(..=keep_above, |_, _| false)
                    .map_err(db_error("trim events"))?;
            }
            let mut result = Vec::with_capacity(events.len());
            let mut seq = first;
            for mut event in events {
                event.seq = seq;
                seq = seq.saturating_add(1);
                // Events of this batch that the trim above would drop are not stored at all.
                if event.seq > keep_above {
                    let bytes = encode(format_args!("events/{}", event.seq), &event)?;
                    table
                        .insert(event.seq, bytes.as_slice())
                        .map_err(db_error("write event"))?;
                }
                result.push(event);
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
                let event: Event = decode(format_args!("events/{}", seq.value()), value.value())?;
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

    fn append_audit(
        &self,
        entries: Vec<AuditEntry>,
        retention: &AuditRetention,
        now: Timestamp,
    ) -> Result<Vec<AuditEntry>> {
        self.append_audit_entries(entries, retention, now)
    }

    fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        self.list_audit_entries(filter)
    }

    fn prune_audit(&self, retention: &AuditRetention, now: Timestamp) -> Result<usize> {
        self.prune_audit_entries(retention, now)
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

    fn list_settings(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        self.read_txn("list settings", |txn| {
            let settings = open_read(txn, SETTINGS)?;
            let mut found = vec![];
            let range = settings
                .range::<&str>(prefix..)
                .map_err(db_error("list settings"))?;
            for entry in range {
                let (key, value) = entry.map_err(db_error("list settings"))?;
                if !key.value().starts_with(prefix) {
                    break;
                }
                found.push((key.value().to_string(), value.value().to_string()));
            }
            Ok(found)
        })
    }

    fn put_history(&self, name: &str, history: &StoredHistory) -> Result<()> {
        self.put_client_history(name, history)
    }

    fn get_history(&self, name: &str) -> Result<Option<StoredHistory>> {
        self.get_client_history(name)
    }

    fn put_task_run(&self, run: &StoredTaskRun) -> Result<()> {
        self.put_run(run)
    }

    fn task_runs(&self, task: &str) -> Result<Vec<StoredTaskRun>> {
        self.runs_of(task)
    }

    fn put_task_results(&self, results: &[TaskResult], logs: &[(usize, String)]) -> Result<()> {
        self.put_results(results, logs)
    }

    fn task_results(&self, task: &str, run: u64) -> Result<Vec<TaskResult>> {
        self.results_of(task, run)
    }

    fn task_result(&self, task: &str, run: u64, client: &str) -> Result<Option<TaskResult>> {
        self.result_of(task, run, client)
    }

    fn task_logs(&self, task: &str, run: u64, client: &str) -> Result<Option<String>> {
        self.logs_of(task, run, client)
    }

    fn remove_task_runs(&self, task: &str, before: Option<u64>) -> Result<usize> {
        self.remove_runs(task, before)
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
    use tc_api::{API_VERSION, ClientGroup, ClientGroupSpec};

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
                let newer = format!("table layout {}", SCHEMA_VERSION + 1);
                assert!(message.contains(&newer), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
