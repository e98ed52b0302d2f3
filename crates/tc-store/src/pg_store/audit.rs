//! The audit trail's table: entries by sequence number, trimmed only by their own retention, as
//! the redb store keeps them.

use postgres::Transaction;
use postgres::fallible_iterator::FallibleIterator;
use tc_api::{AuditEntry, Timestamp};

use super::{PgStore, db, encode, int, lock_counter, set_counter};
use crate::write_path::decode;
use crate::{AuditFilter, AuditRetention, Result};

/// Drops what `retention` does not keep: everything up to `next - 1 - max_entries`, then the
/// oldest entries while they are older than `now - max_age`. Returns how many were dropped.
fn trim(
    txn: &mut Transaction<'_>,
    next: u64,
    retention: &AuditRetention,
    now: Timestamp,
) -> Result<usize> {
    let keep_above = next
        .saturating_sub(1)
        .saturating_sub(retention.max_entries.max(1));
    let mut dropped = 0;
    if keep_above > 0 {
        dropped += txn
            .execute(
                "DELETE FROM audit WHERE seq <= $1",
                &[&int("audit seq", keep_above)?],
            )
            .map_err(db("trim audit entries"))?;
    }
    let cutoff = now
        .unix_millis()
        .saturating_sub(u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX));
    // Entries are appended in time order (up to clock steps): the old ones are at the front, up
    // to the first one that is not old.
    dropped += txn
        .execute(
            "DELETE FROM audit WHERE seq < coalesce(
                 (SELECT min(seq) FROM audit WHERE at_millis >= $1),
                 (SELECT max(seq) + 1 FROM audit))",
            &[&int("audit cutoff", cutoff)?],
        )
        .map_err(db("expire audit entries"))?;
    Ok(usize::try_from(dropped).unwrap_or(usize::MAX))
}

impl PgStore {
    pub(super) fn append_audit_entries(
        &self,
        entries: Vec<AuditEntry>,
        retention: AuditRetention,
        now: Timestamp,
    ) -> Result<Vec<AuditEntry>> {
        self.txn("append audit entries", move |txn| {
            let mut next = lock_counter(txn, "next_audit_seq")?;
            let mut result = Vec::with_capacity(entries.len());
            for mut entry in entries {
                entry.seq = next;
                next = next.saturating_add(1);
                let text = encode(format_args!("audit/{}", entry.seq), &entry)?;
                txn.execute(
                    "INSERT INTO audit (seq, at_millis, entry) VALUES ($1, $2, $3)",
                    &[
                        &int("audit seq", entry.seq)?,
                        &int("audit time", entry.time.unix_millis())?,
                        &text,
                    ],
                )
                .map_err(db("write audit entry"))?;
                result.push(entry);
            }
            set_counter(txn, "next_audit_seq", next)?;
            trim(txn, next, &retention, now)?;
            Ok(result)
        })
    }

    pub(super) fn list_audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Ok(after) = i64::try_from(filter.after_seq.unwrap_or(0)) else {
            return Ok(Vec::new());
        };
        let filter = filter.clone();
        self.txn("list audit entries", move |txn| {
            // Newest first unless the oldest are asked for, so that a limit keeps the right end;
            // the rows stream, and reading stops at the limit.
            let sql = if filter.oldest_first {
                "SELECT seq, entry FROM audit WHERE seq > $1 ORDER BY seq"
            } else {
                "SELECT seq, entry FROM audit WHERE seq > $1 ORDER BY seq DESC"
            };
            let mut rows = txn
                .query_raw(sql, [&after as &(dyn postgres::types::ToSql + Sync)])
                .map_err(db("list audit entries"))?;
            let mut result = Vec::new();
            while result.len() < limit {
                let Some(row) = rows.next().map_err(db("list audit entries"))? else {
                    break;
                };
                let seq: i64 = row.get(0);
                let text: &str = row.get(1);
                let entry: AuditEntry = decode(format_args!("audit/{seq}"), text.as_bytes())?;
                if filter.matches(&entry) {
                    result.push(entry);
                }
            }
            drop(rows);
            if !filter.oldest_first {
                result.reverse();
            }
            Ok(result)
        })
    }

    pub(super) fn prune_audit_entries(
        &self,
        retention: AuditRetention,
        now: Timestamp,
    ) -> Result<usize> {
        self.txn("prune audit entries", move |txn| {
            let next = lock_counter(txn, "next_audit_seq")?;
            trim(txn, next, &retention, now)
        })
    }
}
