//! The raw import path: records written as another store holds them, metadata and sequence
//! numbers included (see [`crate::copy_redb_to_pg`]), into an empty database, in one
//! transaction.
//!
//! The caller produces records on its own thread through an [`ImportSink`]; they are encoded
//! there and stream through a bounded channel to the connection thread, which writes them in
//! one transaction: nothing is held in memory beyond the channel's few hundred records, and a
//! failure on either side (or a target that is not empty) rolls everything back.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use postgres::{Statement, Transaction};
use tc_api::task::TaskResult;
use tc_api::{AuditEntry, Client, Event, Inventory, Object};

use super::{PgStore, db, encode, int, uint};
use crate::copy::{Counters, TableCounts, TaskLogs};
use crate::redb_store::history::encode_history;
use crate::redb_store::{ClientObject, StatusRecord};
use crate::{Result, StoreError, StoredHistory, StoredTaskRun};

/// How many records may wait between the producer and the connection thread.
const QUEUE: usize = 512;

/// The counter rows of `meta`, in the order of [`Counters`].
const COUNTERS: [&str; 3] = ["revision", "next_event_seq", "next_audit_seq"];

/// One record, encoded as its table holds it.
enum Item {
    Object {
        kind: &'static str,
        name: String,
        text: String,
    },
    Client {
        name: String,
        machine_id: String,
        public_key: Option<String>,
        object: String,
        status: String,
        inventory: Option<String>,
        liveness: Option<(i64, String)>,
    },
    History {
        name: String,
        bytes: Vec<u8>,
    },
    Event {
        seq: i64,
        kind: String,
        name: String,
        text: String,
    },
    Audit {
        seq: i64,
        at_millis: i64,
        text: String,
    },
    Setting {
        key: String,
        value: String,
    },
    TaskRun {
        task: String,
        run: i64,
        text: String,
    },
    TaskResult {
        task: String,
        run: i64,
        client: String,
        text: String,
    },
    TaskLogs {
        task: String,
        run: i64,
        client: String,
        logs: String,
    },
    /// Every record was sent; the counts are what the target must then hold.
    End(TableCounts),
}

/// Where [`PgStore::import`]'s producer puts records. Each method sends one record (a client
/// with its parts) to the importing transaction, and fails when that transaction has ended (the
/// import's error then says why).
pub struct ImportSink {
    sender: SyncSender<Item>,
    sent: TableCounts,
    /// Whether a send found the transaction ended (its error is then the import's).
    ended: bool,
}

impl ImportSink {
    fn send(&mut self, item: Item) -> Result<()> {
        self.sender.send(item).map_err(|_| {
            self.ended = true;
            StoreError::Database("import: the target's transaction ended early".into())
        })
    }

    /// An object, with its metadata as it is.
    pub fn object(&mut self, object: &Object) -> Result<()> {
        let kind = object.kind();
        let name = object.name().to_owned();
        let text = encode(format_args!("{kind}/{name}"), object)?;
        self.sent.objects += 1;
        self.send(Item::Object {
            kind: kind.as_str(),
            name,
            text,
        })
    }

    /// A client as [`crate::Store::get_client`] reads it (its inventory apart): its object, its
    /// status, its inventory when given, its liveness when it has a heartbeat.
    pub fn client(&mut self, client: &Client, inventory: Option<&Inventory>) -> Result<()> {
        let name = client.metadata.name.clone();
        let object = encode(format_args!("clients/{name}"), &ClientObject::of(client))?;
        let status = encode(
            format_args!("client_status/{name}"),
            &StatusRecord::of(&client.status),
        )?;
        let inventory = inventory
            .map(|inventory| encode(format_args!("client_inventory/{name}"), inventory))
            .transpose()?;
        let liveness = match client.status.last_heartbeat {
            Some(at) => Some((
                int("heartbeat", at.unix_millis())?,
                encode(format_args!("client_liveness/{name}"), &client.status.load)?,
            )),
            None => None,
        };
        self.sent.clients += 1;
        self.sent.client_status += 1;
        self.sent.client_inventory += u64::from(inventory.is_some());
        self.sent.client_liveness += u64::from(liveness.is_some());
        let public_key = Some(client.spec.public_key.clone()).filter(|key| !key.is_empty());
        self.send(Item::Client {
            machine_id: client.spec.machine_id.clone(),
            public_key,
            object,
            status,
            inventory,
            liveness,
            name,
        })
    }

    /// A client's load history.
    pub fn history(&mut self, name: &str, history: &StoredHistory) -> Result<()> {
        self.sent.client_history += 1;
        self.send(Item::History {
            name: name.to_owned(),
            bytes: encode_history(history),
        })
    }

    /// An event, with its sequence number.
    pub fn event(&mut self, event: &Event) -> Result<()> {
        let text = encode(format_args!("events/{}", event.seq), event)?;
        self.sent.events += 1;
        self.send(Item::Event {
            seq: int("event seq", event.seq)?,
            kind: event.object.kind.clone(),
            name: event.object.name.clone(),
            text,
        })
    }

    /// An audit entry, with its sequence number.
    pub fn audit(&mut self, entry: &AuditEntry) -> Result<()> {
        let text = encode(format_args!("audit/{}", entry.seq), entry)?;
        self.sent.audit += 1;
        self.send(Item::Audit {
            seq: int("audit seq", entry.seq)?,
            at_millis: int("audit time", entry.time.unix_millis())?,
            text,
        })
    }

    /// A setting.
    pub fn setting(&mut self, key: &str, value: &str) -> Result<()> {
        self.sent.settings += 1;
        self.send(Item::Setting {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }

    /// A task run.
    pub fn task_run(&mut self, run: &StoredTaskRun) -> Result<()> {
        let text = encode(format_args!("task_runs/{}/{}", run.task, run.run), run)?;
        self.sent.task_runs += 1;
        self.send(Item::TaskRun {
            task: run.task.clone(),
            run: int("task run", run.run)?,
            text,
        })
    }

    /// A task result.
    pub fn task_result(&mut self, result: &TaskResult) -> Result<()> {
        let (task, run, client) = (&result.task, result.run, &result.client);
        let text = encode(format_args!("task_results/{task}/{run}/{client}"), result)?;
        self.sent.task_results += 1;
        self.send(Item::TaskResult {
            task: task.clone(),
            run: int("task run", run)?,
            client: client.clone(),
            text,
        })
    }

    /// A task result's logs.
    pub fn task_logs(&mut self, logs: &TaskLogs) -> Result<()> {
        self.sent.task_logs += 1;
        self.send(Item::TaskLogs {
            task: logs.task.clone(),
            run: int("task run", logs.run)?,
            client: logs.client.clone(),
            logs: logs.logs.clone(),
        })
    }
}

impl PgStore {
    /// Writes the records `produce` gives (running on the caller's thread) and sets the
    /// counters to `counters`, in one transaction, into a database that holds nothing yet:
    /// records keep their metadata and sequence numbers as given. A database holding any record,
    /// or whose counters moved, is refused with [`StoreError::TargetNotEmpty`]. The row counts
    /// are checked against what was sent before committing. Any failure (of `produce` too)
    /// leaves the database as it was. Returns the row counts.
    ///
    /// Other writers wait until the import ends (readers do not), and the import takes one of
    /// the store's connections for its whole length: `produce` must not write to this store.
    pub fn import(
        &self,
        counters: Counters,
        produce: &mut dyn FnMut(&mut ImportSink) -> Result<()>,
    ) -> Result<TableCounts> {
        let (sender, items) = sync_channel(QUEUE);
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| self.txn("import", move |txn| write(txn, counters, items)));
            let mut sink = ImportSink {
                sender,
                sent: TableCounts::default(),
                ended: false,
            };
            let produced = produce(&mut sink);
            if produced.is_ok() {
                let sent = sink.sent;
                // A failed send means the writer stopped: its result says why.
                let _ = sink.send(Item::End(sent));
            }
            let ended = sink.ended;
            // Without `End`, the writer rolls back.
            drop(sink);
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(StoreError::Database("import: panicked".into())));
            match (written, produced) {
                (Ok(counts), Ok(())) => Ok(counts),
                // The producer's own failure, unless it only found the writer gone.
                (_, Err(error)) if !ended => Err(error),
                (Err(error), _) | (Ok(_), Err(error)) => Err(error),
            }
        })
    }

    /// How many records each table holds.
    pub fn table_counts(&self) -> Result<TableCounts> {
        self.txn("count records", count_tables)
    }

    /// The store-wide counters.
    pub fn counters(&self) -> Result<Counters> {
        self.txn("read counters", read_counters)
    }
}

fn count_tables(txn: &mut Transaction<'_>) -> Result<TableCounts> {
    let tables = TableCounts::default().tables().map(|(name, _)| name);
    let sql = format!(
        "SELECT {}",
        tables
            .iter()
            .map(|table| format!("(SELECT count(*) FROM {table})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let row = txn.query_one(&sql, &[]).map_err(db("count records"))?;
    let mut counts = TableCounts::default();
    for (index, table) in tables.iter().enumerate() {
        counts.set(table, uint(table, row.get(index))?);
    }
    Ok(counts)
}

fn read_counters(txn: &mut Transaction<'_>) -> Result<Counters> {
    let mut values = [0; 3];
    for (value, key) in values.iter_mut().zip(COUNTERS) {
        let row = txn
            .query_one("SELECT value FROM meta WHERE key = $1", &[&key])
            .map_err(db(format_args!("read meta/{key}")))?;
        *value = uint(format_args!("meta/{key}"), row.get(0))?;
    }
    let [revision, next_event_seq, next_audit_seq] = values;
    Ok(Counters {
        revision,
        next_event_seq,
        next_audit_seq,
    })
}

/// The importing transaction: refuses a target that is not empty, writes what arrives, sets
/// the counters, checks the counts.
fn write(
    txn: &mut Transaction<'_>,
    counters: Counters,
    items: Receiver<Item>,
) -> Result<TableCounts> {
    let tables = TableCounts::default().tables().map(|(name, _)| name);
    // Writers wait until the import ends (readers do not), so that the target stays empty
    // between the check and the first record.
    txn.batch_execute(&format!(
        "LOCK TABLE meta, {} IN EXCLUSIVE MODE",
        tables.join(", ")
    ))
    .map_err(db("import: lock the tables"))?;
    let held = count_tables(txn)?;
    let stored = read_counters(txn)?;
    if held != TableCounts::default() || stored != Counters::default() {
        let mut holds = held.non_empty();
        if stored != Counters::default() {
            if !holds.is_empty() {
                holds.push_str(", ");
            }
            holds.push_str(&format!(
                "counters moved (revision {}, next event {}, next audit entry {})",
                stored.revision, stored.next_event_seq, stored.next_audit_seq
            ));
        }
        return Err(StoreError::TargetNotEmpty { holds });
    }
    let statements = Statements::prepare(txn)?;
    let expected = loop {
        match items.recv() {
            Ok(Item::End(expected)) => break expected,
            Ok(item) => statements.write(txn, item)?,
            Err(_) => {
                return Err(StoreError::Database(
                    "import: the source stopped before its end; nothing was written".into(),
                ));
            }
        }
    };
    let values = [
        counters.revision,
        counters.next_event_seq,
        counters.next_audit_seq,
    ];
    for (key, value) in COUNTERS.into_iter().zip(values) {
        txn.execute(
            "UPDATE meta SET value = $2 WHERE key = $1",
            &[&key, &int(key, value)?],
        )
        .map_err(db(format_args!("import: write meta/{key}")))?;
    }
    let written = count_tables(txn)?;
    if written != expected {
        return Err(StoreError::Database(format!(
            "import: the tables hold {written:?} after the copy, {expected:?} were sent; nothing \
             was written"
        )));
    }
    Ok(written)
}

/// The import's statements, prepared once.
struct Statements {
    object: Statement,
    client: Statement,
    status: Statement,
    inventory: Statement,
    liveness: Statement,
    history: Statement,
    event: Statement,
    audit: Statement,
    setting: Statement,
    task_run: Statement,
    task_result: Statement,
    task_logs: Statement,
}

impl Statements {
    fn prepare(txn: &mut Transaction<'_>) -> Result<Statements> {
        let mut prepare = |sql: &str| txn.prepare(sql).map_err(db("import: prepare"));
        Ok(Statements {
            object: prepare("INSERT INTO objects (kind, name, object) VALUES ($1, $2, $3)")?,
            client: prepare(
                "INSERT INTO clients (name, machine_id, public_key, object) VALUES ($1, $2, $3, $4)",
            )?,
            status: prepare("INSERT INTO client_status (name, status) VALUES ($1, $2)")?,
            inventory: prepare("INSERT INTO client_inventory (name, inventory) VALUES ($1, $2)")?,
            liveness: prepare(
                "INSERT INTO client_liveness (name, last_heartbeat_millis, load) VALUES ($1, $2, $3)",
            )?,
            history: prepare("INSERT INTO client_history (name, history) VALUES ($1, $2)")?,
            event: prepare("INSERT INTO events (seq, kind, name, event) VALUES ($1, $2, $3, $4)")?,
            audit: prepare("INSERT INTO audit (seq, at_millis, entry) VALUES ($1, $2, $3)")?,
            setting: prepare("INSERT INTO settings (key, value) VALUES ($1, $2)")?,
            task_run: prepare("INSERT INTO task_runs (task, run, stored) VALUES ($1, $2, $3)")?,
            task_result: prepare(
                "INSERT INTO task_results (task, run, client, result) VALUES ($1, $2, $3, $4)",
            )?,
            task_logs: prepare(
                "INSERT INTO task_logs (task, run, client, logs) VALUES ($1, $2, $3, $4)",
            )?,
        })
    }

    fn write(&self, txn: &mut Transaction<'_>, item: Item) -> Result<()> {
        let (what, result) = match &item {
            Item::Object { kind, name, text } => (
                format!("{kind}/{name}"),
                txn.execute(&self.object, &[kind, name, text]),
            ),
            Item::Client {
                name,
                machine_id,
                public_key,
                object,
                status,
                inventory,
                liveness,
            } => (
                format!("clients/{name}"),
                self.write_client(txn, name, machine_id, public_key, object, status)
                    .and_then(|_| match inventory {
                        Some(inventory) => txn.execute(&self.inventory, &[name, inventory]),
                        None => Ok(0),
                    })
                    .and_then(|_| match liveness {
                        Some((at, load)) => txn.execute(&self.liveness, &[name, at, load]),
                        None => Ok(0),
                    }),
            ),
            Item::History { name, bytes } => (
                format!("client_history/{name}"),
                txn.execute(&self.history, &[name, bytes]),
            ),
            Item::Event {
                seq,
                kind,
                name,
                text,
            } => (
                format!("events/{seq}"),
                txn.execute(&self.event, &[seq, kind, name, text]),
            ),
            Item::Audit {
                seq,
                at_millis,
                text,
            } => (
                format!("audit/{seq}"),
                txn.execute(&self.audit, &[seq, at_millis, text]),
            ),
            Item::Setting { key, value } => (
                format!("settings/{key}"),
                txn.execute(&self.setting, &[key, value]),
            ),
            Item::TaskRun { task, run, text } => (
                format!("task_runs/{task}/{run}"),
                txn.execute(&self.task_run, &[task, run, text]),
            ),
            Item::TaskResult {
                task,
                run,
                client,
                text,
            } => (
                format!("task_results/{task}/{run}/{client}"),
                txn.execute(&self.task_result, &[task, run, client, text]),
            ),
            Item::TaskLogs {
                task,
                run,
                client,
                logs,
            } => (
                format!("task_logs/{task}/{run}/{client}"),
                txn.execute(&self.task_logs, &[task, run, client, logs]),
            ),
            Item::End(_) => return Ok(()),
        };
        result.map(drop).map_err(db(format_args!("import {what}")))
    }

    fn write_client(
        &self,
        txn: &mut Transaction<'_>,
        name: &String,
        machine_id: &String,
        public_key: &Option<String>,
        object: &String,
        status: &String,
    ) -> std::result::Result<u64, postgres::Error> {
        txn.execute(&self.client, &[name, machine_id, public_key, object])?;
        txn.execute(&self.status, &[name, status])
    }
}
