//! A [`Store`] in a PostgreSQL database, for controllers that keep their state in a server
//! rather than in a file.
//!
//! The schema is the redb store's tables as SQL tables (see `pg_store/migrations/`): documents
//! are the same JSON, names sort bytewise (`COLLATE "C"`), so that both stores answer alike, and
//! one conformance suite (`tests/`) runs against both. Migrations are versioned and applied at
//! open ([`migrate`]).
//!
//! Every method is one transaction on one of a few connections, each owned by a thread of its
//! own ([`pool`]). Writes that take a resourceVersion (or an event or audit sequence number)
//! lock their counter's row in `meta` first, so that they are ordered as the redb store's single
//! writer orders them: versions handed out in commit order, a batch's reads and checks made
//! against the latest committed state.
//!
//! Writes of clients, objects and settings also record what they changed in a change feed
//! ([`changes`]), in the same transaction, so that replicas sharing the database can follow each
//! other's writes ([`PgStore::changes_after`], [`PgStore::listen`]).

mod audit;
mod blobs;
mod changes;
mod clients;
mod import;
mod lease;
mod migrate;
mod pool;
mod tls;

pub use blobs::{BLOB_CHUNK_BYTES, BlobError, BlobPut};
pub use changes::{Change, ChangeListener, ChangesPage};
pub use lease::LeaseState;

use std::str::FromStr;
use std::time::Duration;

use postgres::{Client, Config, Transaction};

pub use import::ImportSink;
use tc_api::task::TaskResult;
use tc_api::{AuditEntry, Client as FleetClient, Event, Inventory, Kind, Object, Timestamp};

use crate::write_path::{apply_object, decode, decode_object, delete_object, write_status};
use crate::{
    AuditFilter, AuditRetention, ClientStatusEntry, DEFAULT_EVENT_CAPACITY, EventFilter, Liveness,
    Result, Store, StoreError, StoredHistory, StoredTaskRun, Write, WriteOutcome,
};

/// How many connections a store keeps unless told otherwise.
pub const DEFAULT_CONNECTIONS: usize = 4;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`Store`] in a PostgreSQL database.
pub struct PgStore {
    pool: pool::Pool,
    /// One connection for the leader lease alone, so that a renewal never queues behind other
    /// work.
    lease_pool: pool::Pool,
    fence: std::sync::RwLock<Option<lease::Fence>>,
    event_capacity: usize,
    /// How the pool connects (password included), for listeners' connections of their own.
    connector: tls::Connector,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("event_capacity", &self.event_capacity)
            .finish_non_exhaustive()
    }
}

/// Wraps a database error with what the store was doing.
fn db(what: impl std::fmt::Display) -> impl FnOnce(postgres::Error) -> StoreError {
    move |e| classify(format!("{what}: {e}"), &e)
}

/// [`StoreError::Unavailable`] when `error` says the server cannot be reached or is going away
/// (a closed connection, an I/O error, SQLSTATE class 08 or 57P, too many connections), so that
/// the caller can answer "try again"; [`StoreError::Database`] otherwise.
fn classify(message: String, error: &postgres::Error) -> StoreError {
    use std::error::Error as _;
    let unavailable = error.is_closed()
        || error
            .source()
            .is_some_and(|source| source.is::<std::io::Error>())
        || error.code().is_some_and(|code| {
            let code = code.code();
            code.starts_with("08") || code.starts_with("57P") || code == "53300"
        });
    if unavailable {
        StoreError::Unavailable(message)
    } else {
        StoreError::Database(message)
    }
}

fn encode<T: serde::Serialize + ?Sized>(key: impl std::fmt::Display, value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|error| StoreError::Database(format!("cannot encode {key}: {error}")))
}

/// A `u64` as PostgreSQL's `bigint`.
fn int(what: &str, value: u64) -> Result<i64> {
    i64::try_from(value)
        .map_err(|_| StoreError::Database(format!("{what} {value} is beyond PostgreSQL's bigint")))
}

/// A stored `bigint` that must not be negative.
fn uint(key: impl std::fmt::Display, value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        key: key.to_string(),
        message: format!("{value} is negative"),
    })
}

/// Locks counter `key` of `meta` for the rest of the transaction and reads it.
fn lock_counter(txn: &mut Transaction<'_>, key: &str) -> Result<u64> {
    let row = txn
        .query_one("SELECT value FROM meta WHERE key = $1 FOR UPDATE", &[&key])
        .map_err(db(format_args!("lock meta/{key}")))?;
    uint(format_args!("meta/{key}"), row.get(0))
}

fn set_counter(txn: &mut Transaction<'_>, key: &str, value: u64) -> Result<()> {
    txn.execute(
        "UPDATE meta SET value = $2 WHERE key = $1",
        &[&key, &int(key, value)?],
    )
    .map_err(db(format_args!("write meta/{key}")))?;
    Ok(())
}

/// Where and how to connect a [`PgStore`].
#[derive(Clone, PartialEq, Eq)]
pub struct PgSettings {
    /// The database: `postgres://user@host:port/db` (or the key=value form).
    pub url: String,
    /// The password, when it is not in the URL (from an environment variable or a file).
    pub password: Option<String>,
    /// At most this many events are kept.
    pub event_capacity: usize,
    /// How many connections the store keeps.
    pub connections: usize,
    /// The CA certificates (PEM) that signed the server's certificate: with them, every
    /// connection uses TLS and verifies the server (its chain and its host name); without them,
    /// connections are in plain text and a URL that asks for TLS is refused.
    pub ca_file: Option<std::path::PathBuf>,
}

impl PgSettings {
    /// The database `url`, with the default event capacity and number of connections.
    pub fn new(url: impl Into<String>) -> PgSettings {
        PgSettings {
            url: url.into(),
            password: None,
            event_capacity: DEFAULT_EVENT_CAPACITY,
            connections: DEFAULT_CONNECTIONS,
            ca_file: None,
        }
    }
}

impl std::fmt::Debug for PgSettings {
    /// Without the password, nor the URL's (a URL may carry one).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("event_capacity", &self.event_capacity)
            .field("connections", &self.connections)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database `url` names (`postgres://user@host:port/db`, or the key=value
    /// form), applies the migrations it has not had, and keeps [`DEFAULT_EVENT_CAPACITY`]
    /// events.
    pub fn connect(url: &str) -> Result<PgStore> {
        PgStore::open(&PgSettings::new(url))
    }

    /// Connects as [`PgStore::connect`] does, keeping at most `event_capacity` events over
    /// `connections` connections.
    pub fn connect_with(url: &str, event_capacity: usize, connections: usize) -> Result<PgStore> {
        PgStore::open(&PgSettings {
            event_capacity,
            connections,
            ..PgSettings::new(url)
        })
    }

    /// Whether the store's connections use TLS (and verify the server).
    pub fn encrypted(&self) -> bool {
        self.connector.encrypted()
    }

    /// The host the store reaches in plain text over a network (not a unix socket, not
    /// loopback), if any: what a controller warns about at start.
    pub fn plain_text_host(&self) -> Option<String> {
        self.connector.plain_text_host()
    }

    /// Connects as `settings` say and applies the migrations the database has not had.
    pub fn open(settings: &PgSettings) -> Result<PgStore> {
        let (ssl_mode, url) = tls::UrlSslMode::of(&settings.url);
        // The URL is not quoted: it may carry a password.
        let mut config = Config::from_str(&url).map_err(|e| {
            StoreError::Database(format!(
                "PostgreSQL URL (postgres://user@host:port/db): {e}"
            ))
        })?;
        if let Some(password) = &settings.password {
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("thinfleet");
        let connector = tls::Connector::new(config, ssl_mode, settings.ca_file.as_deref())?;
        let pool = pool::Pool::start(connector.clone(), settings.connections.max(1))?;
        // Connects at its first use only: a controller that never takes the lease never opens it.
        let lease_pool = pool::Pool::start(connector.clone(), 1)?;
        // The first job connects: a wrong URL or a server that does not answer fails here.
        pool.run("migrate", |client| migrate::migrate(client).map(drop))?;
        Ok(PgStore {
            pool,
            lease_pool,
            fence: std::sync::RwLock::new(None),
            event_capacity: settings.event_capacity.max(1),
            connector,
        })
    }

    /// Runs `body` in one transaction, committed when it returns `Ok`.
    fn txn<T: Send + 'static>(
        &self,
        what: &'static str,
        body: impl FnOnce(&mut Transaction<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let fence = self.current_fence();
        self.pool.run(what, move |client: &mut Client| {
            let mut txn = client
                .transaction()
                .map_err(db(format_args!("{what}: begin")))?;
            let value = body(&mut txn)?;
            if let Some(fence) = &fence {
                lease::check(&mut txn, fence, what)?;
            }
            txn.commit().map_err(db(format_args!("{what}: commit")))?;
            Ok(value)
        })
    }
}

/// The stored object of `kind`/`name`, if any.
fn read_object(txn: &mut Transaction<'_>, kind: Kind, name: &str) -> Result<Option<Object>> {
    let row = txn
        .query_opt(
            "SELECT object FROM objects WHERE kind = $1 AND name = $2",
            &[&kind.as_str(), &name],
        )
        .map_err(db(format_args!("read {kind}/{name}")))?;
    row.map(|row| {
        let text: &str = row.get(0);
        decode_object(kind, &format!("{kind}/{name}"), text.as_bytes())
    })
    .transpose()
}

impl PgStore {
    fn write_objects(
        txn: &mut Transaction<'_>,
        writes: Vec<Write>,
        now: Timestamp,
    ) -> Result<Vec<WriteOutcome>> {
        let start = lock_counter(txn, "revision")?;
        let mut revision = start;
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut changed = Vec::new();
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
            let stored = read_object(txn, kind, &name)?;
            let next = revision.saturating_add(1);
            let outcome = match write {
                Write::Apply { object, manager } => {
                    apply_object(stored.as_ref(), object, &manager, now, next)?
                }
                Write::Status { object } => write_status(stored.as_ref(), &object, next),
                Write::Delete { precondition, .. } => {
                    delete_object(stored.as_ref(), kind, &name, precondition.as_deref())?
                }
            };
            match &outcome {
                WriteOutcome::Created(object) | WriteOutcome::Configured(object) => {
                    revision = next;
                    let text = encode(format_args!("{kind}/{name}"), object)?;
                    txn.execute(
                        "INSERT INTO objects (kind, name, object) VALUES ($1, $2, $3)
                         ON CONFLICT (kind, name) DO UPDATE SET object = excluded.object",
                        &[&kind.as_str(), &name, &text],
                    )
                    .map_err(db(format_args!("write {kind}/{name}")))?;
                    changed.push(format!("{kind}/{name}"));
                }
                WriteOutcome::Deleted(_) => {
                    revision = next;
                    txn.execute(
                        "DELETE FROM objects WHERE kind = $1 AND name = $2",
                        &[&kind.as_str(), &name],
                    )
                    .map_err(db(format_args!("delete {kind}/{name}")))?;
                    changed.push(format!("{kind}/{name}"));
                }
                WriteOutcome::Unchanged(_) | WriteOutcome::Missing => {}
            }
            outcomes.push(outcome);
        }
        if revision != start {
            set_counter(txn, "revision", revision)?;
        }
        changes::record(txn, changes::OBJECT, &changed)?;
        Ok(outcomes)
    }

    fn append_event_rows(
        txn: &mut Transaction<'_>,
        events: Vec<Event>,
        capacity: u64,
    ) -> Result<Vec<Event>> {
        let first = lock_counter(txn, "next_event_seq")?;
        let count = u64::try_from(events.len()).unwrap_or(u64::MAX);
        let next = first.saturating_add(count);
        set_counter(txn, "next_event_seq", next)?;
        // Keep the `capacity` newest, as the redb store does: events of this batch that the trim
        // would drop are not stored at all.
        let keep_above = next.saturating_sub(1).saturating_sub(capacity);
        if keep_above > 0 {
            txn.execute(
                "DELETE FROM events WHERE seq <= $1",
                &[&int("event seq", keep_above)?],
            )
            .map_err(db("trim events"))?;
        }
        let (mut seqs, mut kinds, mut names, mut texts) = (vec![], vec![], vec![], vec![]);
        let mut result = Vec::with_capacity(events.len());
        let mut seq = first;
        for mut event in events {
            event.seq = seq;
            seq = seq.saturating_add(1);
            if event.seq > keep_above {
                seqs.push(int("event seq", event.seq)?);
                kinds.push(event.object.kind.clone());
                names.push(event.object.name.clone());
                texts.push(encode(format_args!("events/{}", event.seq), &event)?);
            }
            result.push(event);
        }
        txn.execute(
            "INSERT INTO events (seq, kind, name, event)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])",
            &[&seqs, &kinds, &names, &texts],
        )
        .map_err(db("write events"))?;
        Ok(result)
    }
}

impl Store for PgStore {
    fn get(&self, kind: Kind, name: &str) -> Result<Option<Object>> {
        if kind == Kind::Client {
            return Ok(None);
        }
        let name = name.to_string();
        self.txn("get object", move |txn| read_object(txn, kind, &name))
    }

    fn list(&self, kind: Kind) -> Result<Vec<Object>> {
        if kind == Kind::Client {
            return Ok(Vec::new());
        }
        self.txn("list objects", move |txn| {
            let rows = txn
                .query(
                    "SELECT name, object FROM objects WHERE kind = $1 ORDER BY name",
                    &[&kind.as_str()],
                )
                .map_err(db(format_args!("list {kind}")))?;
            rows.iter()
                .map(|row| {
                    let name: &str = row.get(0);
                    let text: &str = row.get(1);
                    decode_object(kind, &format!("{kind}/{name}"), text.as_bytes())
                })
                .collect()
        })
    }

    fn write(&self, writes: Vec<Write>, now: Timestamp) -> Result<Vec<WriteOutcome>> {
        self.txn("write objects", move |txn| {
            PgStore::write_objects(txn, writes, now)
        })
    }

    fn revision(&self) -> Result<u64> {
        self.txn("read revision", |txn| {
            let row = txn
                .query_one("SELECT value FROM meta WHERE key = 'revision'", &[])
                .map_err(db("read meta/revision"))?;
            uint("meta/revision", row.get(0))
        })
    }

    fn get_client(&self, name: &str) -> Result<Option<FleetClient>> {
        let name = name.to_string();
        self.txn("get client", move |txn| clients::read_client(txn, &name))
    }

    fn list_clients(&self) -> Result<Vec<FleetClient>> {
        self.txn("list clients", |txn| {
            clients::read_clients(txn, "TRUE", None)
        })
    }

    fn scan_clients(&self, visit: &mut dyn FnMut(FleetClient)) -> Result<()> {
        // The rows stream from one statement (one snapshot) on a connection thread; `visit` runs
        // here, as they arrive.
        let (rows, received) = std::sync::mpsc::sync_channel::<FleetClient>(256);
        std::thread::scope(|scope| {
            let scan = scope.spawn(|| {
                self.txn("scan clients", move |txn| {
                    clients::stream_clients(txn, &mut |client| rows.send(client).is_ok())
                })
            });
            for client in received {
                visit(client);
            }
            scan.join()
                .unwrap_or_else(|_| Err(StoreError::Database("scan clients: panicked".into())))
        })
    }

    fn scan_inventories(&self, visit: &mut dyn FnMut(&str, Inventory)) -> Result<()> {
        let rows = self.txn("scan inventories", |txn| {
            let rows = txn
                .query(
                    "SELECT name, inventory FROM client_inventory ORDER BY name",
                    &[],
                )
                .map_err(db("scan inventories"))?;
            rows.iter()
                .map(|row| {
                    let name: String = row.get(0);
                    let text: &str = row.get(1);
                    let inventory: Inventory =
                        decode(format_args!("client_inventory/{name}"), text.as_bytes())?;
                    Ok((name, inventory))
                })
                .collect::<Result<Vec<_>>>()
        })?;
        for (name, inventory) in rows {
            visit(&name, inventory);
        }
        Ok(())
    }

    fn client_inventory(&self, name: &str) -> Result<Option<Inventory>> {
        let name = name.to_string();
        self.txn("read client inventory", move |txn| {
            let row = txn
                .query_opt(
                    "SELECT i.inventory FROM clients c
                     JOIN client_inventory i ON i.name = c.name WHERE c.name = $1",
                    &[&name],
                )
                .map_err(db(format_args!("read client_inventory/{name}")))?;
            row.map(|row| {
                decode(
                    format_args!("client_inventory/{name}"),
                    row.get::<_, &str>(0).as_bytes(),
                )
            })
            .transpose()
        })
    }

    fn clients_by_machine_id(&self, machine_id: &str) -> Result<Vec<FleetClient>> {
        let machine_id = machine_id.to_string();
        self.txn("read clients by machine id", move |txn| {
            clients::read_clients(txn, "c.machine_id = $1", Some(&machine_id))
        })
    }

    fn client_by_public_key(&self, public_key: &str) -> Result<Option<FleetClient>> {
        if public_key.is_empty() {
            return Ok(None);
        }
        let key = public_key.to_string();
        self.txn("read client by public key", move |txn| {
            Ok(clients::read_clients(txn, "c.public_key = $1", Some(&key))?
                .into_iter()
                .next())
        })
    }

    fn create_client(&self, client: FleetClient, now: Timestamp) -> Result<FleetClient> {
        self.txn("create client", move |txn| {
            clients::create(txn, vec![client], now)
        })?
        .pop()
        .ok_or_else(|| StoreError::Database("create client: nothing created".into()))
    }

    fn create_clients(
        &self,
        clients: Vec<FleetClient>,
        now: Timestamp,
    ) -> Result<Vec<FleetClient>> {
        if clients.is_empty() {
            return Ok(Vec::new());
        }
        self.txn("create clients", move |txn| {
            clients::create(txn, clients, now)
        })
    }

    fn put_liveness(&self, mut entries: Vec<Liveness>) -> Result<usize> {
        if entries.is_empty() {
            return Ok(0);
        }
        let count = entries.len();
        // In name order (as every batch writes, so that concurrent batches lock rows in one
        // order); of a name given twice, the later entry.
        entries.reverse();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries.dedup_by(|later, earlier| later.name == earlier.name);
        self.txn("put client liveness", move |txn| {
            clients::write_livenesses(txn, &entries)?;
            Ok(count)
        })
    }

    fn put_client_status(&self, mut entries: Vec<ClientStatusEntry>) -> Result<usize> {
        if entries.is_empty() {
            return Ok(0);
        }
        // In name order; of a name given twice, the later entry wins.
        entries.reverse();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries.dedup_by(|later, earlier| later.name == earlier.name);
        self.txn("put client status", move |txn| {
            clients::record_statuses(txn, &entries)
        })
    }

    fn put_clients(&self, mut clients: Vec<FleetClient>) -> Result<Vec<FleetClient>> {
        if clients.is_empty() {
            return Ok(clients);
        }
        clients.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        self.txn("put clients", move |txn| clients::put(txn, clients))
    }

    fn delete_client(&self, name: &str) -> Result<Option<FleetClient>> {
        let name = name.to_string();
        self.txn("delete client", move |txn| clients::delete(txn, &name))
    }

    fn append_events(&self, events: Vec<Event>) -> Result<Vec<Event>> {
        if events.is_empty() {
            return Ok(events);
        }
        let capacity = u64::try_from(self.event_capacity).unwrap_or(u64::MAX);
        self.txn("append events", move |txn| {
            PgStore::append_event_rows(txn, events, capacity)
        })
    }

    fn list_events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        let limit = match filter.limit {
            Some(0) => return Ok(Vec::new()),
            // A limit beyond bigint is no limit.
            Some(limit) => i64::try_from(limit).ok(),
            None => None,
        };
        // Sequence numbers are bigints: none is after one beyond them.
        let Ok(after) = i64::try_from(filter.after_seq.unwrap_or(0)) else {
            return Ok(Vec::new());
        };
        let (kind, name) = (filter.kind.clone(), filter.name.clone());
        self.txn("list events", move |txn| {
            // Newest first, so that a limit keeps the newest matches; reversed at the end.
            let rows = txn
                .query(
                    "SELECT seq, event FROM events
                     WHERE seq > $1 AND ($2::text IS NULL OR kind = $2)
                       AND ($3::text IS NULL OR name = $3)
                     ORDER BY seq DESC LIMIT $4",
                    &[&after, &kind, &name, &limit],
                )
                .map_err(db("list events"))?;
            let mut events = rows
                .iter()
                .map(|row| {
                    let seq: i64 = row.get(0);
                    let text: &str = row.get(1);
                    decode::<Event>(format_args!("events/{seq}"), text.as_bytes())
                })
                .collect::<Result<Vec<_>>>()?;
            events.reverse();
            Ok(events)
        })
    }

    fn append_audit(
        &self,
        entries: Vec<AuditEntry>,
        retention: &AuditRetention,
        now: Timestamp,
    ) -> Result<Vec<AuditEntry>> {
        self.append_audit_entries(entries, *retention, now)
    }

    fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        self.list_audit_entries(filter)
    }

    fn prune_audit(&self, retention: &AuditRetention, now: Timestamp) -> Result<usize> {
        self.prune_audit_entries(*retention, now)
    }

    fn get_setting(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_string();
        self.txn("get setting", move |txn| {
            let row = txn
                .query_opt("SELECT value FROM settings WHERE key = $1", &[&key])
                .map_err(db(format_args!("read setting {key}")))?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    fn list_settings(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let prefix = prefix.to_string();
        self.txn("list settings", move |txn| {
            let rows = txn
                .query(
                    "SELECT key, value FROM settings WHERE starts_with(key, $1) ORDER BY key",
                    &[&prefix],
                )
                .map_err(db("list settings"))?;
            Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
        })
    }

    fn put_setting(&self, key: &str, value: Option<&str>) -> Result<()> {
        let key = key.to_string();
        let value = value.map(str::to_string);
        self.txn("put setting", move |txn| {
            let written = match value {
                Some(value) => txn.execute(
                    "INSERT INTO settings (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[&key, &value],
                ),
                None => txn.execute("DELETE FROM settings WHERE key = $1", &[&key]),
            }
            .map_err(db(format_args!("write setting {key}")))?;
            if written > 0 {
                changes::record(txn, changes::SETTING, &[&key])?;
            }
            Ok(())
        })
    }

    fn put_history(&self, name: &str, history: &StoredHistory) -> Result<()> {
        let name = name.to_string();
        let bytes = crate::redb_store::history::encode_history(history);
        self.txn("write load history", move |txn| {
            if !clients::exists(txn, &name)? {
                return Err(StoreError::NotFound {
                    kind: "Client".into(),
                    name,
                });
            }
            txn.execute(
                "INSERT INTO client_history (name, history) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET history = excluded.history",
                &[&name, &bytes],
            )
            .map_err(db(format_args!("write client_history/{name}")))?;
            Ok(())
        })
    }

    fn get_history(&self, name: &str) -> Result<Option<StoredHistory>> {
        let name = name.to_string();
        self.txn("read load history", move |txn| {
            let row = txn
                .query_opt(
                    "SELECT history FROM client_history WHERE name = $1",
                    &[&name],
                )
                .map_err(db(format_args!("read client_history/{name}")))?;
            row.map(|row| crate::redb_store::history::decode_history(&name, row.get::<_, &[u8]>(0)))
                .transpose()
        })
    }

    fn put_task_run(&self, run: &StoredTaskRun) -> Result<()> {
        let text = encode(format_args!("task_runs/{}/{}", run.task, run.run), run)?;
        let (task, id) = (run.task.clone(), int("task run", run.run)?);
        self.txn("write task run", move |txn| {
            txn.execute(
                "INSERT INTO task_runs (task, run, stored) VALUES ($1, $2, $3)
                 ON CONFLICT (task, run) DO UPDATE SET stored = excluded.stored",
                &[&task, &id, &text],
            )
            .map_err(db(format_args!("write task_runs/{task}/{id}")))?;
            Ok(())
        })
    }

    fn task_runs(&self, task: &str) -> Result<Vec<StoredTaskRun>> {
        let task = task.to_string();
        self.txn("read task runs", move |txn| {
            let rows = txn
                .query(
                    "SELECT run, stored FROM task_runs WHERE task = $1 ORDER BY run",
                    &[&task],
                )
                .map_err(db("read task runs"))?;
            rows.iter()
                .map(|row| {
                    let run: i64 = row.get(0);
                    let text: &str = row.get(1);
                    decode(format_args!("task_runs/{task}/{run}"), text.as_bytes())
                })
                .collect()
        })
    }

    fn put_task_results(&self, results: &[TaskResult], logs: &[(usize, String)]) -> Result<()> {
        let mut records = Vec::with_capacity(results.len());
        for result in results {
            let key = format!("{}/{}/{}", result.task, result.run, result.client);
            let text = encode(format_args!("task_results/{key}"), result)?;
            records.push((
                result.task.clone(),
                int("task run", result.run)?,
                result.client.clone(),
                text,
            ));
        }
        let mut log_records = Vec::with_capacity(logs.len());
        for (index, text) in logs {
            let (task, run, client, _) = records.get(*index).ok_or_else(|| {
                StoreError::Database(format!(
                    "logs of result {index}, of {} results",
                    records.len()
                ))
            })?;
            log_records.push((task.clone(), *run, client.clone(), text.clone()));
        }
        self.txn("write task results", move |txn| {
            for (task, run, client, text) in &records {
                txn.execute(
                    "INSERT INTO task_results (task, run, client, result) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (task, run, client) DO UPDATE SET result = excluded.result",
                    &[task, run, client, text],
                )
                .map_err(db(format_args!("write task_results/{task}/{run}/{client}")))?;
            }
            for (task, run, client, text) in &log_records {
                txn.execute(
                    "INSERT INTO task_logs (task, run, client, logs) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (task, run, client) DO UPDATE SET logs = excluded.logs",
                    &[task, run, client, text],
                )
                .map_err(db(format_args!("write task_logs/{task}/{run}/{client}")))?;
            }
            Ok(())
        })
    }

    fn task_results(&self, task: &str, run: u64) -> Result<Vec<TaskResult>> {
        let (task, run) = (task.to_string(), int("task run", run)?);
        self.txn("read task results", move |txn| {
            let rows = txn
                .query(
                    "SELECT client, result FROM task_results WHERE task = $1 AND run = $2
                     ORDER BY client",
                    &[&task, &run],
                )
                .map_err(db("read task results"))?;
            rows.iter()
                .map(|row| {
                    let client: &str = row.get(0);
                    let text: &str = row.get(1);
                    decode(
                        format_args!("task_results/{task}/{run}/{client}"),
                        text.as_bytes(),
                    )
                })
                .collect()
        })
    }

    fn task_result(&self, task: &str, run: u64, client: &str) -> Result<Option<TaskResult>> {
        let (task, run, client) = (task.to_string(), int("task run", run)?, client.to_string());
        self.txn("read a task result", move |txn| {
            let row = txn
                .query_opt(
                    "SELECT result FROM task_results WHERE task = $1 AND run = $2 AND client = $3",
                    &[&task, &run, &client],
                )
                .map_err(db("read a task result"))?;
            row.map(|row| {
                let text: &str = row.get(0);
                decode(
                    format_args!("task_results/{task}/{run}/{client}"),
                    text.as_bytes(),
                )
            })
            .transpose()
        })
    }

    fn task_logs(&self, task: &str, run: u64, client: &str) -> Result<Option<String>> {
        let (task, run, client) = (task.to_string(), int("task run", run)?, client.to_string());
        self.txn("read task logs", move |txn| {
            let row = txn
                .query_opt(
                    "SELECT logs FROM task_logs WHERE task = $1 AND run = $2 AND client = $3",
                    &[&task, &run, &client],
                )
                .map_err(db("read task logs"))?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    fn remove_task_runs(&self, task: &str, before: Option<u64>) -> Result<usize> {
        let task = task.to_string();
        let before = before.map(|run| int("task run", run)).transpose()?;
        self.txn("remove task runs", move |txn| {
            let removed = txn
                .execute(
                    "DELETE FROM task_runs WHERE task = $1 AND ($2::bigint IS NULL OR run < $2)",
                    &[&task, &before],
                )
                .map_err(db("remove task runs"))?;
            for table in ["task_results", "task_logs"] {
                txn.execute(
                    &format!(
                        "DELETE FROM {table} WHERE task = $1 AND ($2::bigint IS NULL OR run < $2)"
                    ),
                    &[&task, &before],
                )
                .map_err(db(format_args!("remove {table}")))?;
            }
            Ok(usize::try_from(removed).unwrap_or(usize::MAX))
        })
    }
}
