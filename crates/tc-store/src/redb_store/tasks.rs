//! The tables of remote operations: each task's runs (when, until when, which targets), each
//! target's result in a run (state, exit code, output tails: a few KB at most), and the logs a
//! `collectLogs` result carried, kept apart so that listing results never reads them.
//!
//! Keys are `task/run/client`, the run as 20 digits so that they sort by time; object and
//! client names cannot contain `/`. Results are written in batches, one transaction each.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use tc_api::task::TaskResult;

use super::{RedbStore, db_error, decode, encode, open, open_read};
use crate::{Result, StoredTaskRun};

/// Runs by `task/run`.
pub(super) const TASK_RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("task_runs");
/// Results by `task/run/client`.
pub(super) const TASK_RESULTS: TableDefinition<&str, &[u8]> = TableDefinition::new("task_results");
/// `collectLogs` logs by `task/run/client`.
pub(super) const TASK_LOGS: TableDefinition<&str, &[u8]> = TableDefinition::new("task_logs");

fn run_key(task: &str, run: u64) -> String {
    format!("{task}/{run:020}")
}

fn result_key(task: &str, run: u64, client: &str) -> String {
    format!("{task}/{run:020}/{client}")
}

/// The range of keys under `prefix` (which ends with `/`): `prefix` up to `prefix` with its
/// final `/` replaced by the next character, `0`.
fn under(prefix: &str) -> (String, String) {
    let mut end = prefix[..prefix.len() - 1].to_owned();
    end.push('0');
    (prefix.to_owned(), end)
}

/// Removes every key in `[start, end)` of `table`.
fn remove_range(
    txn: &WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    start: &str,
    end: &str,
) -> Result<usize> {
    let mut opened = open(txn, table)?;
    let keys: Vec<String> = opened
        .range(start..end)
        .map_err(db_error(format_args!("scan {table}")))?
        .map(|entry| entry.map(|(key, _)| key.value().to_owned()))
        .collect::<std::result::Result<_, _>>()
        .map_err(db_error(format_args!("scan {table}")))?;
    for key in &keys {
        opened
            .remove(key.as_str())
            .map_err(db_error(format_args!("remove {table}/{key}")))?;
    }
    Ok(keys.len())
}

impl RedbStore {
    pub(super) fn init_tasks(txn: &WriteTransaction) -> Result<()> {
        open(txn, TASK_RUNS)?;
        open(txn, TASK_RESULTS)?;
        open(txn, TASK_LOGS).map(drop)
    }

    pub(super) fn put_run(&self, run: &StoredTaskRun) -> Result<()> {
        let key = run_key(&run.task, run.run);
        let bytes = encode(format_args!("task_runs/{key}"), run)?;
        self.write_txn("write task run", |txn| {
            open(txn, TASK_RUNS)?
                .insert(key.as_str(), bytes.as_slice())
                .map_err(db_error(format_args!("write task_runs/{key}")))?;
            Ok(())
        })
    }

    pub(super) fn runs_of(&self, task: &str) -> Result<Vec<StoredTaskRun>> {
        let (start, end) = under(&format!("{task}/"));
        self.read_txn("read task runs", |txn| {
            let table = open_read(txn, TASK_RUNS)?;
            let mut runs = Vec::new();
            for entry in table
                .range(start.as_str()..end.as_str())
                .map_err(db_error("scan task_runs"))?
            {
                let (key, value) = entry.map_err(db_error("scan task_runs"))?;
                runs.push(decode(
                    format_args!("task_runs/{}", key.value()),
                    value.value(),
                )?);
            }
            Ok(runs)
        })
    }

    pub(super) fn put_results(
        &self,
        results: &[TaskResult],
        logs: &[(usize, String)],
    ) -> Result<()> {
        let mut records = Vec::with_capacity(results.len());
        for result in results {
            let key = result_key(&result.task, result.run, &result.client);
            let bytes = encode(format_args!("task_results/{key}"), result)?;
            records.push((key, bytes));
        }
        self.write_txn("write task results", |txn| {
            let mut table = open(txn, TASK_RESULTS)?;
            for (key, bytes) in &records {
                table
                    .insert(key.as_str(), bytes.as_slice())
                    .map_err(db_error(format_args!("write task_results/{key}")))?;
            }
            let mut table = open(txn, TASK_LOGS)?;
            for (index, text) in logs {
                let key = &records[*index].0;
                table
                    .insert(key.as_str(), text.as_bytes())
                    .map_err(db_error(format_args!("write task_logs/{key}")))?;
            }
            Ok(())
        })
    }

    pub(super) fn results_of(&self, task: &str, run: u64) -> Result<Vec<TaskResult>> {
        let (start, end) = under(&format!("{}/", run_key(task, run)));
        self.read_txn("read task results", |txn| {
            let table = open_read(txn, TASK_RESULTS)?;
            let mut results = Vec::new();
            for entry in table
                .range(start.as_str()..end.as_str())
                .map_err(db_error("scan task_results"))?
            {
                let (key, value) = entry.map_err(db_error("scan task_results"))?;
                results.push(decode(
                    format_args!("task_results/{}", key.value()),
                    value.value(),
                )?);
            }
            Ok(results)
        })
    }

    pub(super) fn result_of(
        &self,
        task: &str,
        run: u64,
        client: &str,
    ) -> Result<Option<TaskResult>> {
        let key = result_key(task, run, client);
        self.read_txn("read a task result", |txn| {
            let table = open_read(txn, TASK_RESULTS)?;
            let value = table
                .get(key.as_str())
                .map_err(db_error(format_args!("read task_results/{key}")))?;
            value
                .map(|value| decode(format_args!("task_results/{key}"), value.value()))
                .transpose()
        })
    }

    pub(super) fn logs_of(&self, task: &str, run: u64, client: &str) -> Result<Option<String>> {
        let key = result_key(task, run, client);
        self.read_txn("read task logs", |txn| {
            let table = open_read(txn, TASK_LOGS)?;
            let value = table
                .get(key.as_str())
                .map_err(db_error(format_args!("read task_logs/{key}")))?;
            Ok(value.map(|value| String::from_utf8_lossy(value.value()).into_owned()))
        })
    }

    pub(super) fn remove_runs(&self, task: &str, before: Option<u64>) -> Result<usize> {
        let prefix = format!("{task}/");
        let (start, all_end) = under(&prefix);
        let end = match before {
            Some(run) => run_key(task, run),
            None => all_end,
        };
        self.write_txn("remove task runs", |txn| {
            let removed = remove_range(txn, TASK_RUNS, &start, &end)?;
            remove_range(txn, TASK_RESULTS, &start, &end)?;
            remove_range(txn, TASK_LOGS, &start, &end)?;
            Ok(removed)
        })
    }
}
