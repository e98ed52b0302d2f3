//! The audit trail's table: entries by sequence number, apart from the events so that no amount
//! of agents' events can evict one, trimmed only by its own retention.

use std::ops::Bound;

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use tc_api::{AuditEntry, Timestamp};

use super::{META, RedbStore, db_error, decode, encode, meta_value, open, open_read};
use crate::{AuditFilter, AuditRetention, Result};

/// Audit entries by sequence number (JSON).
pub(super) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// `meta` key of the sequence number the next audit entry gets.
pub(super) const META_NEXT_AUDIT_SEQ: &str = "nextAuditSeq";

fn key(seq: u64) -> String {
    format!("audit/{seq}")
}

/// Drops what `retention` does not keep: everything up to `next - 1 - max_entries`, then the
/// oldest entries while they are older than `now - max_age`. Returns how many were dropped.
fn trim(
    table: &mut Table<'_, u64, &'static [u8]>,
    next: u64,
    retention: &AuditRetention,
    now: Timestamp,
) -> Result<usize> {
    let keep_above = next
        .saturating_sub(1)
        .saturating_sub(retention.max_entries.max(1));
    let mut dropped = 0;
    if keep_above > 0 {
        table
            .retain_in(..=keep_above, |_, _| {
                dropped += 1;
                false
            })
            .map_err(db_error("trim audit entries"))?;
    }
    let cutoff = now
        .unix_millis()
        .saturating_sub(u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX));
    // Entries are appended in time order (up to clock steps): the old ones are at the front.
    let mut expired_up_to = None;
    for entry in table.iter().map_err(db_error("read audit entries"))? {
        let (seq, value) = entry.map_err(db_error("read audit entries"))?;
        let entry: AuditEntry = decode(key(seq.value()), value.value())?;
        if entry.time.unix_millis() >= cutoff {
            break;
        }
        expired_up_to = Some(seq.value());
    }
    if let Some(last) = expired_up_to {
        table
            .retain_in(..=last, |_, _| {
                dropped += 1;
                false
            })
            .map_err(db_error("expire audit entries"))?;
    }
    Ok(dropped)
}

impl RedbStore {
    pub(super) fn init_audit(txn: &WriteTransaction) -> Result<()> {
        open(txn, AUDIT).map(drop)
    }

    pub(super) fn append_audit_entries(
        &self,
        entries: Vec<AuditEntry>,
        retention: &AuditRetention,
        now: Timestamp,
    ) -> Result<Vec<AuditEntry>> {
        self.write_txn("append audit entries", |txn| {
            let mut table = open(txn, AUDIT)?;
            let mut meta = open(txn, META)?;
            let mut next = meta_value(&meta, META_NEXT_AUDIT_SEQ)?.unwrap_or(1);
            let mut result = Vec::with_capacity(entries.len());
            for mut entry in entries {
                entry.seq = next;
                next = next.saturating_add(1);
                let bytes = encode(key(entry.seq), &entry)?;
                table
                    .insert(entry.seq, bytes.as_slice())
                    .map_err(db_error("write audit entry"))?;
                result.push(entry);
            }
            meta.insert(META_NEXT_AUDIT_SEQ, next)
                .map_err(db_error("write audit sequence"))?;
            trim(&mut table, next, retention, now)?;
            Ok(result)
        })
    }

    pub(super) fn list_audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read_txn("list audit entries", |txn| {
            let table = open_read(txn, AUDIT)?;
            let start = match filter.after_seq {
                Some(after) => Bound::Excluded(after),
                None => Bound::Unbounded,
            };
            let range = table
                .range::<u64>((start, Bound::Unbounded))
                .map_err(db_error("list audit entries"))?;
            let mut result = Vec::new();
            let mut visit = |entry: std::result::Result<_, redb::StorageError>| -> Result<bool> {
                let (seq, value): (redb::AccessGuard<u64>, redb::AccessGuard<&[u8]>) =
                    entry.map_err(db_error("list audit entries"))?;
                let entry: AuditEntry = decode(key(seq.value()), value.value())?;
                if filter.matches(&entry) {
                    result.push(entry);
                }
                Ok(result.len() < limit)
            };
            if filter.oldest_first {
                for entry in range {
                    if !visit(entry)? {
                        break;
                    }
                }
            } else {
                // Newest first, so that a limit keeps the newest matches; reversed at the end.
                for entry in range.rev() {
                    if !visit(entry)? {
                        break;
                    }
                }
                result.reverse();
            }
            Ok(result)
        })
    }

    pub(super) fn prune_audit_entries(
        &self,
        retention: &AuditRetention,
        now: Timestamp,
    ) -> Result<usize> {
        self.write_txn("prune audit entries", |txn| {
            let mut table = open(txn, AUDIT)?;
            let meta = open(txn, META)?;
            let next = meta_value(&meta, META_NEXT_AUDIT_SEQ)?.unwrap_or(1);
            trim(&mut table, next, retention, now)
        })
    }
}
