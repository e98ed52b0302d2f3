//! Moving an installation from the embedded store to PostgreSQL: every record of a [`RedbStore`]
//! into an empty [`PgStore`], as stored.
//!
//! Objects keep their metadata (uid, resourceVersion, generation, creationTimestamp, managedBy):
//! agents, watchers and `tcadm` hold resourceVersions and uids, and the normal write path would
//! hand out new ones. The counters come along (the revision, the next event and audit sequence
//! numbers), so that versions and sequence numbers go on from where they were and are never
//! handed out twice. Everything is written by [`PgStore::import`] in one transaction that first
//! checks the target is empty and last checks the row counts: a failure leaves the target as it
//! was.
//!
//! The source is read through the [`Store`] trait (clients streamed with
//! [`Store::scan_clients`]), and through [`RedbStore::counters`] and [`RedbStore::export_tasks`]
//! for what the trait does not list. A client is written in its four parts as the trait reads
//! it (object, status, inventory, liveness), so a layout-1 record, which embeds its status, is
//! copied split, as the redb store splits it when it next writes the client: every read answers
//! alike, except that [`Store::scan_inventories`] (which skips embedded inventories) then finds
//! its inventory.

use tc_api::{Kind, task::TaskResult};

use crate::{
    AuditFilter, EventFilter, ImportSink, PgStore, RedbStore, Result, Store, StoredTaskRun,
};

/// The store-wide counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    /// The last resourceVersion handed out.
    pub revision: u64,
    /// The sequence number the next event gets.
    pub next_event_seq: u64,
    /// The sequence number the next audit entry gets.
    pub next_audit_seq: u64,
}

impl Default for Counters {
    /// Those of an empty store.
    fn default() -> Self {
        Counters {
            revision: 0,
            next_event_seq: 1,
            next_audit_seq: 1,
        }
    }
}

/// The logs a `collectLogs` result carried, with the result they belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskLogs {
    /// The task.
    pub task: String,
    /// The run.
    pub run: u64,
    /// The client.
    pub client: String,
    /// The logs.
    pub logs: String,
}

/// One task record of [`RedbStore::export_tasks`].
#[derive(Clone, Debug, PartialEq)]
pub enum TaskRecord {
    /// A run.
    Run(StoredTaskRun),
    /// A target's result in a run.
    Result(TaskResult),
    /// A result's logs.
    Logs(TaskLogs),
}

/// How many records each table holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableCounts {
    /// ClientGroup, PackageRelease and Task objects.
    pub objects: u64,
    /// Clients.
    pub clients: u64,
    /// Client status records.
    pub client_status: u64,
    /// Client inventories.
    pub client_inventory: u64,
    /// Client liveness records.
    pub client_liveness: u64,
    /// Load histories.
    pub client_history: u64,
    /// Events.
    pub events: u64,
    /// Audit entries.
    pub audit: u64,
    /// Settings.
    pub settings: u64,
    /// Task runs.
    pub task_runs: u64,
    /// Task results.
    pub task_results: u64,
    /// Task logs.
    pub task_logs: u64,
}

impl TableCounts {
    /// Every table's name (as in the PostgreSQL schema) with its count.
    pub fn tables(&self) -> [(&'static str, u64); 12] {
        [
            ("objects", self.objects),
            ("clients", self.clients),
            ("client_status", self.client_status),
            ("client_inventory", self.client_inventory),
            ("client_liveness", self.client_liveness),
            ("client_history", self.client_history),
            ("events", self.events),
            ("audit", self.audit),
            ("settings", self.settings),
            ("task_runs", self.task_runs),
            ("task_results", self.task_results),
            ("task_logs", self.task_logs),
        ]
    }

    /// Sets the count of table `name` (one of [`TableCounts::tables`]).
    pub(crate) fn set(&mut self, name: &str, count: u64) {
        let field = match name {
            "objects" => &mut self.objects,
            "clients" => &mut self.clients,
            "client_status" => &mut self.client_status,
            "client_inventory" => &mut self.client_inventory,
            "client_liveness" => &mut self.client_liveness,
            "client_history" => &mut self.client_history,
            "events" => &mut self.events,
            "audit" => &mut self.audit,
            "settings" => &mut self.settings,
            "task_runs" => &mut self.task_runs,
            "task_results" => &mut self.task_results,
            "task_logs" => &mut self.task_logs,
            _ => return,
        };
        *field = count;
    }

    /// The tables holding records, as `name (count)`, comma-separated.
    pub fn non_empty(&self) -> String {
        self.tables()
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(name, count)| format!("{name} ({count})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What [`copy_redb_to_pg`] copied, as read back from the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyReport {
    /// The counters (equal in both stores).
    pub counters: Counters,
    /// The records per table (equal in both stores).
    pub tables: TableCounts,
}

impl std::fmt::Display for CopyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Counters {
            revision,
            next_event_seq,
            next_audit_seq,
        } = self.counters;
        writeln!(
            f,
            "revision {revision}, next event {next_event_seq}, next audit entry {next_audit_seq}"
        )?;
        for (name, count) in self.tables.tables() {
            writeln!(f, "{name:<17} {count}")?;
        }
        Ok(())
    }
}

/// Copies everything `source` holds into `target`, which must be empty (else
/// [`crate::StoreError::TargetNotEmpty`], and nothing is written), in one transaction; then
/// checks the target's counters and row counts against what was read from the source.
pub fn copy_redb_to_pg(source: &RedbStore, target: &PgStore) -> Result<CopyReport> {
    let counters = source.counters()?;
    let sent = target.import(counters, &mut |sink| copy_records(source, sink))?;
    let copied = target.table_counts()?;
    let target_counters = target.counters()?;
    if copied != sent || target_counters != counters {
        return Err(crate::StoreError::Database(format!(
            "the copy reads back differently: read {sent:?} with {counters:?} from the source, \
             the target holds {copied:?} with {target_counters:?}"
        )));
    }
    Ok(CopyReport {
        counters,
        tables: copied,
    })
}

/// Feeds every record of `source` to `sink`.
fn copy_records(source: &RedbStore, sink: &mut ImportSink) -> Result<()> {
    for kind in Kind::ALL {
        if kind == Kind::Client {
            continue;
        }
        for object in source.list(kind)? {
            sink.object(&object)?;
        }
    }
    copy_clients(source, sink)?;
    for event in source.list_events(&EventFilter::default())? {
        sink.event(&event)?;
    }
    copy_audit(source, sink)?;
    // Every setting, whatever its prefix (bootstrap tokens, credentials, refused machines,
    // legacy token hashes, manifest source status...).
    for (key, value) in source.list_settings("")? {
        sink.setting(&key, &value)?;
    }
    source.export_tasks(&mut |record| match record {
        TaskRecord::Run(run) => sink.task_run(&run),
        TaskRecord::Result(result) => sink.task_result(&result),
        TaskRecord::Logs(logs) => sink.task_logs(&logs),
    })
}

/// Streams the clients (one at a time, with their inventory and load history).
fn copy_clients(source: &RedbStore, sink: &mut ImportSink) -> Result<()> {
    let mut failed = None;
    source.scan_clients(&mut |client| {
        if failed.is_some() {
            return;
        }
        let name = client.metadata.name.clone();
        let copied = source.client_inventory(&name).and_then(|inventory| {
            sink.client(&client, inventory.as_ref())?;
            match source.get_history(&name)? {
                Some(history) => sink.history(&name, &history),
                None => Ok(()),
            }
        });
        if let Err(error) = copied {
            failed = Some(error);
        }
    })?;
    failed.map_or(Ok(()), Err)
}

/// Pages through the audit trail, oldest first.
fn copy_audit(source: &RedbStore, sink: &mut ImportSink) -> Result<()> {
    const PAGE: usize = 1000;
    let mut after_seq = None;
    loop {
        let page = source.list_audit(&AuditFilter {
            after_seq,
            limit: Some(PAGE),
            oldest_first: true,
            ..AuditFilter::default()
        })?;
        for entry in &page {
            sink.audit(entry)?;
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after_seq = Some(last.seq),
            _ => return Ok(()),
        }
    }
}
