//! What a copy of the store to another backend needs beyond the [`crate::Store`] trait: the
//! counters as stored (the next event and audit sequence numbers are not readable through the
//! trait once their entries are gone), and every task record (the trait reads them by task, and
//! has no list of tasks).

use super::audit::META_NEXT_AUDIT_SEQ;
use super::tasks::{TASK_LOGS, TASK_RESULTS, TASK_RUNS};
use super::{
    META, META_NEXT_EVENT_SEQ, META_REVISION, RedbStore, db_error, decode, meta_value, open_read,
};
use crate::copy::{Counters, TaskLogs, TaskRecord};
use crate::{Result, StoreError};
use redb::ReadableTable;

impl RedbStore {
    /// The store-wide counters: the last resourceVersion handed out and the sequence numbers
    /// the next event and the next audit entry get.
    pub fn counters(&self) -> Result<Counters> {
        self.read_txn("read counters", |txn| {
            let meta = open_read(txn, META)?;
            Ok(Counters {
                revision: meta_value(&meta, META_REVISION)?.unwrap_or(0),
                next_event_seq: meta_value(&meta, META_NEXT_EVENT_SEQ)?.unwrap_or(1),
                next_audit_seq: meta_value(&meta, META_NEXT_AUDIT_SEQ)?.unwrap_or(1),
            })
        })
    }

    /// Visits every task run, then every task result, then every result's logs, each in key
    /// order (task, run, client), from one read transaction; stops at `visit`'s first error.
    pub fn export_tasks(&self, visit: &mut dyn FnMut(TaskRecord) -> Result<()>) -> Result<()> {
        self.read_txn("export task records", |txn| {
            for entry in open_read(txn, TASK_RUNS)?
                .iter()
                .map_err(db_error("scan task_runs"))?
            {
                let (key, value) = entry.map_err(db_error("scan task_runs"))?;
                visit(TaskRecord::Run(decode(
                    format_args!("task_runs/{}", key.value()),
                    value.value(),
                )?))?;
            }
            for entry in open_read(txn, TASK_RESULTS)?
                .iter()
                .map_err(db_error("scan task_results"))?
            {
                let (key, value) = entry.map_err(db_error("scan task_results"))?;
                visit(TaskRecord::Result(decode(
                    format_args!("task_results/{}", key.value()),
                    value.value(),
                )?))?;
            }
            for entry in open_read(txn, TASK_LOGS)?
                .iter()
                .map_err(db_error("scan task_logs"))?
            {
                let (key, value) = entry.map_err(db_error("scan task_logs"))?;
                let (task, run, client) = split_result_key(key.value())?;
                visit(TaskRecord::Logs(TaskLogs {
                    task,
                    run,
                    client,
                    logs: String::from_utf8_lossy(value.value()).into_owned(),
                }))?;
            }
            Ok(())
        })
    }
}

/// `task/run/client` (the run as 20 digits) as its parts; names hold no `/`.
fn split_result_key(key: &str) -> Result<(String, u64, String)> {
    let corrupt = || StoreError::Corrupt {
        key: format!("task_logs/{key}"),
        message: "the key is not task/run/client".into(),
    };
    let mut parts = key.splitn(3, '/');
    let (Some(task), Some(run), Some(client)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(corrupt());
    };
    let run = run.parse().map_err(|_| corrupt())?;
    Ok((task.to_owned(), run, client.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::split_result_key;

    #[test]
    fn result_keys_split_into_task_run_and_client() {
        assert_eq!(
            split_result_key("inventory/00000001700000000000/pc-1").unwrap(),
            ("inventory".to_owned(), 1_700_000_000_000, "pc-1".to_owned())
        );
        assert!(split_result_key("inventory/pc-1").is_err());
        assert!(split_result_key("inventory/soon/pc-1").is_err());
    }
}
