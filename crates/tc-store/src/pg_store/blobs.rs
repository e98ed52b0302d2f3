//! Package blobs in the database, content-addressed, in chunks of [`BLOB_CHUNK_BYTES`] (tables
//! `blobs` and `blob_chunks`, migration `0002_blobs`), so that every controller on the database
//! serves the same blobs.
//!
//! Nothing holds a whole blob: an upload is read from its source one chunk at a time on the
//! caller's thread, hashed, and handed through a channel of one chunk to a job that writes it;
//! the chunks and the `blobs` row are committed in one transaction only after the content's size
//! and digest were found to be the declared ones, so a `blobs` row always means a complete,
//! verified blob, and a mismatch leaves nothing behind. A read fetches one chunk (or the part of
//! it in the range) per job and hands it to the caller's consumer between jobs: a slow consumer
//! holds no connection.

use std::io::{ErrorKind, Read};
use std::sync::mpsc::{Receiver, sync_channel};

use postgres::Client;
use ring::digest::{Context, SHA256};

use super::{PgStore, db, int, uint};
use crate::StoreError;

/// The size of a chunk: every chunk of a blob but its last has this many bytes.
pub const BLOB_CHUNK_BYTES: usize = 1 << 20;

/// Why a blob could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The digest named is not 64 lowercase hex digits.
    #[error("`{sha256}` is not a sha256 digest (64 lowercase hex digits)")]
    InvalidDigest {
        /// What was given.
        sha256: String,
    },
    /// The content has the declared size but not the declared digest.
    #[error("blob sha256:{expected}: the content's sha256 is {actual}; nothing was stored")]
    DigestMismatch {
        /// Declared.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The content is longer than declared (reading stopped past the declared size).
    #[error(
        "blob sha256:{sha256}: the content is longer than the declared {expected} bytes; \
         nothing was stored"
    )]
    TooLong {
        /// The declared digest.
        sha256: String,
        /// The declared size.
        expected: u64,
    },
    /// The content is shorter than declared.
    #[error(
        "blob sha256:{sha256}: the content has {actual} bytes, not the declared {expected}; \
         nothing was stored"
    )]
    TooShort {
        /// The declared digest.
        sha256: String,
        /// The declared size.
        expected: u64,
        /// The content's size.
        actual: u64,
    },
    /// Reading the source failed.
    #[error("blob sha256:{sha256}: reading the content failed: {source}; nothing was stored")]
    Read {
        /// The declared digest.
        sha256: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// No complete blob has this digest.
    #[error("blob sha256:{sha256} not found")]
    NotFound {
        /// The digest.
        sha256: String,
    },
    /// A range that does not lie within the blob.
    #[error("blob sha256:{sha256} has {size} bytes: bytes {start}..{end} are beyond it")]
    OutOfRange {
        /// The digest.
        sha256: String,
        /// The blob's size.
        size: u64,
        /// The range's first byte.
        start: u64,
        /// The range's end (exclusive).
        end: u64,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`PgStore::put_blob`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobPut {
    /// The blob was stored now.
    Stored,
    /// The blob was already there (the content was read and verified all the same).
    AlreadyStored,
}

/// What an upload's reader hands its writing job.
enum Part {
    Chunk(Vec<u8>),
    /// The content was verified: commit.
    Commit,
}

fn check_digest(sha256: &str) -> Result<(), BlobError> {
    if sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(BlobError::InvalidDigest {
            sha256: sha256.to_string(),
        })
    }
}

/// Reads until `buffer` is full or the source ends; returns how many bytes were read.
fn fill(source: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match source.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl PgStore {
    /// The size of the complete blob `sha256`, if there is one.
    pub fn blob_size(&self, sha256: &str) -> Result<Option<u64>, BlobError> {
        check_digest(sha256)?;
        let key = sha256.to_string();
        let size = self.pool.run("stat a blob", move |client| {
            let row = client
                .query_opt("SELECT size FROM blobs WHERE sha256 = $1", &[&key])
                .map_err(db(format_args!("stat blob {key}")))?;
            row.map(|row| uint(format_args!("blobs/{key}"), row.get(0)))
                .transpose()
        })?;
        Ok(size)
    }

    /// Stores the blob `sha256` of `size` bytes read from `source`, verifying both while it
    /// reads: on any mismatch (or a failing source) nothing is stored and the error says what.
    /// Storing a blob that is already there is no error. The source is read on the calling
    /// thread, one chunk at a time.
    pub fn put_blob(
        &self,
        sha256: &str,
        size: u64,
        mut source: impl Read,
    ) -> Result<BlobPut, BlobError> {
        check_digest(sha256)?;
        let size_param = int("blob size", size)?;
        let (parts, received) = sync_channel::<Part>(1);
        let key = sha256.to_string();
        let answer = self.pool.submit("put a blob", move |client| {
            write_blob(client, &key, size_param, &received)
        })?;
        let mut context = Context::new(&SHA256);
        let mut read = 0u64;
        loop {
            let mut buffer = vec![0; BLOB_CHUNK_BYTES];
            let filled = match fill(&mut source, &mut buffer) {
                Ok(filled) => filled,
                Err(source) => {
                    let error = BlobError::Read {
                        sha256: sha256.to_string(),
                        source,
                    };
                    return Err(finish_abandoned(parts, answer, error));
                }
            };
            if filled == 0 {
                break;
            }
            read += filled as u64;
            if read > size {
                let error = BlobError::TooLong {
                    sha256: sha256.to_string(),
                    expected: size,
                };
                return Err(finish_abandoned(parts, answer, error));
            }
            buffer.truncate(filled);
            context.update(&buffer);
            if parts.send(Part::Chunk(buffer)).is_err() {
                // The job ended early: it failed, and says why.
                drop(parts);
                return Err(match answer.wait("put a blob") {
                    Err(error) => error.into(),
                    Ok(_) => StoreError::Database(format!(
                        "put blob {sha256}: the writer stopped before the end"
                    ))
                    .into(),
                });
            }
        }
        if read < size {
            let error = BlobError::TooShort {
                sha256: sha256.to_string(),
                expected: size,
                actual: read,
            };
            return Err(finish_abandoned(parts, answer, error));
        }
        let actual = hex(context.finish().as_ref());
        if actual != sha256 {
            let error = BlobError::DigestMismatch {
                expected: sha256.to_string(),
                actual,
            };
            return Err(finish_abandoned(parts, answer, error));
        }
        // A failed send means the job ended with an error, which `wait` reports.
        let _ = parts.send(Part::Commit);
        drop(parts);
        Ok(answer.wait("put a blob")?)
    }

    /// Reads bytes `start..start + length` of blob `sha256` and hands them to `deliver` in
    /// pieces of at most one chunk, in order, on the calling thread; `deliver` returns `false`
    /// to stop early. Returns how many bytes were delivered.
    pub fn read_blob(
        &self,
        sha256: &str,
        start: u64,
        length: u64,
        mut deliver: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<u64, BlobError> {
        let size = self.blob_size(sha256)?.ok_or_else(|| BlobError::NotFound {
            sha256: sha256.to_string(),
        })?;
        let end = start.saturating_add(length);
        if end > size {
            return Err(BlobError::OutOfRange {
                sha256: sha256.to_string(),
                size,
                start,
                end,
            });
        }
        let mut at = start;
        while at < end {
            let piece = self.read_blob_chunk(sha256, at, end - at)?;
            at += piece.len() as u64;
            if !deliver(piece) {
                break;
            }
        }
        Ok(at - start)
    }

    /// Reads from byte `offset` of blob `sha256` to the end of the chunk it falls in, at most
    /// `max` bytes: one round trip, one chunk at most in memory. A blob that is not there (or
    /// an offset at or past its end) is [`BlobError::NotFound`].
    pub fn read_blob_chunk(
        &self,
        sha256: &str,
        offset: u64,
        max: u64,
    ) -> Result<Vec<u8>, BlobError> {
        check_digest(sha256)?;
        let chunk = BLOB_CHUNK_BYTES as u64;
        let n = i32::try_from(offset / chunk).map_err(|_| BlobError::NotFound {
            sha256: sha256.to_string(),
        })?;
        let within = offset % chunk;
        let take = max.min(chunk - within);
        // PostgreSQL's substring counts from 1; both fit an int (a chunk is 1 MiB).
        let (from, count) = ((within + 1) as i32, take as i32);
        let key = sha256.to_string();
        let data = self.pool.run("read a blob", move |client| {
            let row = client
                .query_opt(
                    "SELECT substring(data FROM $3 FOR $4) FROM blob_chunks \
                     WHERE sha256 = $1 AND n = $2",
                    &[&key, &n, &from, &count],
                )
                .map_err(db(format_args!("read blob {key} chunk {n}")))?;
            Ok(row.map(|row| row.get::<_, Vec<u8>>(0)))
        })?;
        match data {
            Some(data) if !data.is_empty() || take == 0 => Ok(data),
            _ => Err(BlobError::NotFound {
                sha256: sha256.to_string(),
            }),
        }
    }

    /// Deletes blob `sha256` (its chunks with it); `false` when there was none.
    pub fn delete_blob(&self, sha256: &str) -> Result<bool, BlobError> {
        check_digest(sha256)?;
        let key = sha256.to_string();
        let deleted = self.pool.run("delete a blob", move |client| {
            client
                .execute("DELETE FROM blobs WHERE sha256 = $1", &[&key])
                .map_err(db(format_args!("delete blob {key}")))
        })?;
        Ok(deleted > 0)
    }
}

/// Ends an upload that will not be committed: the writing job sees the channel close, rolls
/// back and ends; its own answer is not needed, `error` says what went wrong.
fn finish_abandoned(
    parts: std::sync::mpsc::SyncSender<Part>,
    answer: super::pool::Answer<BlobPut>,
    error: BlobError,
) -> BlobError {
    drop(parts);
    let _ = answer.wait("put a blob");
    error
}

/// The job of an upload: writes the chunks it is handed, and the `blobs` row once the reader
/// found the content to be the declared one, in one transaction. When the blob is already
/// there, the chunks are only received (the reader still verifies the content).
fn write_blob(
    client: &mut Client,
    sha256: &str,
    size: i64,
    parts: &Receiver<Part>,
) -> crate::Result<BlobPut> {
    let mut txn = client
        .transaction()
        .map_err(db(format_args!("put blob {sha256}: begin")))?;
    let present = txn
        .query_opt("SELECT 1 FROM blobs WHERE sha256 = $1", &[&sha256])
        .map_err(db(format_args!("put blob {sha256}: look it up")))?
        .is_some();
    // The same blob uploaded at once by another controller: its rows hold the same bytes (the
    // digest is the key), so whichever commits first wins and the other's rows are dropped.
    let insert = txn
        .prepare(
            "INSERT INTO blob_chunks (sha256, n, data) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .map_err(db(format_args!("put blob {sha256}: prepare")))?;
    let mut n: i32 = 0;
    loop {
        match parts.recv() {
            Ok(Part::Chunk(data)) => {
                if !present {
                    txn.execute(&insert, &[&sha256, &n, &data])
                        .map_err(db(format_args!("put blob {sha256}: write chunk {n}")))?;
                }
                n = n.checked_add(1).ok_or_else(|| {
                    StoreError::Database(format!("put blob {sha256}: too many chunks"))
                })?;
            }
            Ok(Part::Commit) => break,
            // The reader gave up (a mismatch, a failing source): the transaction rolls back.
            Err(_) => {
                return Err(StoreError::Database(format!(
                    "put blob {sha256}: the upload was abandoned"
                )));
            }
        }
    }
    if present {
        return Ok(BlobPut::AlreadyStored);
    }
    let inserted = txn
        .execute(
            "INSERT INTO blobs (sha256, size) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&sha256, &size],
        )
        .map_err(db(format_args!("put blob {sha256}: record it")))?;
    txn.commit()
        .map_err(db(format_args!("put blob {sha256}: commit")))?;
    Ok(if inserted == 1 {
        BlobPut::Stored
    } else {
        BlobPut::AlreadyStored
    })
}
