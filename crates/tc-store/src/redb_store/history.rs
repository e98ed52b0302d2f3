//! The load histories' table: the last history each client uploaded, by client name, in a
//! compact record (a 21-byte header and four bytes per sample, about 5.8 KB for a full day).
//! One write per upload; the record goes with its client (see `ClientParts::clear`).

use redb::{TableDefinition, WriteTransaction};
use tc_api::Timestamp;
use tc_proto::history::LoadHistory;

use super::{CLIENTS, RedbStore, db_error, get_record, open, open_read};
use crate::{Result, StoreError, StoredHistory};

/// Load histories by client name.
pub(super) const HISTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("client_history");

/// Layout version of a record.
const RECORD_VERSION: u8 = 1;
/// Version, collected (u64 ms), newest sample (u64 ms), interval (u32 s).
const HEADER_BYTES: usize = 1 + 8 + 8 + 4;

pub(crate) fn encode_history(stored: &StoredHistory) -> Vec<u8> {
    let history = &stored.history;
    let mut bytes = Vec::with_capacity(HEADER_BYTES + history.samples.len() * 4);
    bytes.push(RECORD_VERSION);
    bytes.extend_from_slice(&stored.collected.unix_millis().to_le_bytes());
    bytes.extend_from_slice(&history.end.unix_millis().to_le_bytes());
    bytes.extend_from_slice(&history.interval_seconds.to_le_bytes());
    bytes.extend_from_slice(&history.encode_samples());
    bytes
}

pub(crate) fn decode_history(name: &str, bytes: &[u8]) -> Result<StoredHistory> {
    let corrupt = |message: String| StoreError::Corrupt {
        key: format!("client_history/{name}"),
        message,
    };
    if bytes.len() < HEADER_BYTES || bytes[0] != RECORD_VERSION {
        return Err(corrupt(format!(
            "{} bytes starting with {:?}: not a version {RECORD_VERSION} record",
            bytes.len(),
            bytes.first()
        )));
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let interval_seconds = u32::from_le_bytes(bytes[17..21].try_into().expect("4 bytes"));
    let samples = LoadHistory::decode_samples(&bytes[HEADER_BYTES..]).map_err(corrupt)?;
    Ok(StoredHistory {
        collected: Timestamp::from_unix_millis(u64_at(1)),
        history: LoadHistory {
            interval_seconds,
            end: Timestamp::from_unix_millis(u64_at(9)),
            samples,
        },
    })
}

/// Drops the history of client `name` (it is being deleted, or created anew under that name).
pub(super) fn clear_history(txn: &WriteTransaction, name: &str) -> Result<()> {
    open(txn, HISTORY)?
        .remove(name)
        .map_err(db_error(format_args!("remove client_history/{name}")))?;
    Ok(())
}

impl RedbStore {
    pub(super) fn init_history(txn: &WriteTransaction) -> Result<()> {
        open(txn, HISTORY).map(drop)
    }

    pub(super) fn put_client_history(&self, name: &str, stored: &StoredHistory) -> Result<()> {
        let bytes = encode_history(stored);
        self.write_txn("write load history", |txn| {
            let clients = open(txn, CLIENTS)?;
            if get_record(&clients, "clients", name)?.is_none() {
                return Err(StoreError::NotFound {
                    kind: "Client".into(),
                    name: name.to_owned(),
                });
            }
            open(txn, HISTORY)?
                .insert(name, bytes.as_slice())
                .map_err(db_error(format_args!("write client_history/{name}")))?;
            Ok(())
        })
    }

    pub(super) fn get_client_history(&self, name: &str) -> Result<Option<StoredHistory>> {
        self.read_txn("read load history", |txn| {
            let table = open_read(txn, HISTORY)?;
            get_record(&table, "client_history", name)?
                .map(|bytes| decode_history(name, bytes.value()))
                .transpose()
        })
    }
}

#[cfg(test)]
mod tests {
    use tc_proto::history::Sample;

    use super::*;

    #[test]
    fn a_record_round_trips_and_a_damaged_one_is_reported() {
        let stored = StoredHistory {
            collected: Timestamp::from_unix_millis(1_800_000_060_000),
            history: LoadHistory {
                interval_seconds: 60,
                end: Timestamp::from_unix_millis(1_800_000_000_000),
                samples: vec![Sample::measured(1.0, 2.0, 3.0, Some(40.0)), Sample::GAP],
            },
        };
        let bytes = encode_history(&stored);
        assert_eq!(bytes.len(), HEADER_BYTES + 8);
        assert_eq!(decode_history("a", &bytes).unwrap(), stored);
        let error = decode_history("a", &bytes[..HEADER_BYTES + 3]).unwrap_err();
        assert!(error.to_string().contains("client_history/a"), "{error}");
        assert!(decode_history("a", &[2; 30]).is_err());
    }
}
