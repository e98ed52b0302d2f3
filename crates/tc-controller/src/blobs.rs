//! The content-addressed blob store: `<data>/blobs/sha256/<hex>` with the redb store, the
//! database's `blobs` tables with the PostgreSQL store (so that every controller on the database
//! serves the same blobs; see [`postgres`]).
//!
//! A blob is written to a temporary file (`<data>/blobs/tmp/`) while it is hashed, checked
//! against the expected digest and size if any, synced, and only then renamed to its digest (or
//! copied into the database, where it appears when all of it is written), so a blob that exists
//! under its name is always complete and correct.

mod postgres;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use futures_util::{Stream, StreamExt};
use ring::digest::{Context, SHA256};
use tc_store::PgStore;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::tokens::hex;

/// Bytes read from a blob file per chunk of a response.
const FILE_CHUNK_BYTES: usize = 256 * 1024;

/// A stored blob.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlobInfo {
    /// Lowercase hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Why a blob could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The content does not have the expected digest.
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Declared.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The content is larger than allowed.
    #[error("blob is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Reading the source failed.
    #[error("reading the blob failed: {0}")]
    Source(String),
    /// The disk failed.
    #[error("blob store I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The database failed.
    #[error("blob store database error: {0}")]
    Database(String),
}

/// The blob store.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
    max_size: u64,
    backend: Backend,
}

/// Where complete blobs are kept.
#[derive(Clone, Debug)]
enum Backend {
    /// `<data>/blobs/sha256/<hex>`.
    Disk,
    /// The PostgreSQL store's `blobs` tables.
    Postgres(Arc<PgStore>),
}

impl BlobStore {
    /// Opens (creating) the store under `data_dir`, and removes the temporary files of uploads
    /// that a crash interrupted. Only one controller may use a data directory at a time (the
    /// database's lock sees to it), so every file in `tmp/` is such a leftover.
    pub fn open(data_dir: &Path, max_size: u64) -> std::io::Result<Self> {
        crate::datadir::create_dir(&data_dir.join("blobs").join("sha256"))?;
        Self::open_with(data_dir, max_size, Backend::Disk)
    }

    /// Opens the store keeping blobs in the PostgreSQL `store`; `data_dir` only holds the
    /// temporary files of uploads (cleaned as [`BlobStore::open`] does: the data directory is
    /// locked to one controller).
    pub fn open_postgres(
        data_dir: &Path,
        max_size: u64,
        store: Arc<PgStore>,
    ) -> std::io::Result<Self> {
        Self::open_with(data_dir, max_size, Backend::Postgres(store))
    }

    fn open_with(data_dir: &Path, max_size: u64, backend: Backend) -> std::io::Result<Self> {
        let root = data_dir.join("blobs");
        let tmp = root.join("tmp");
        crate::datadir::create_dir(&tmp)?;
        let mut removed = 0;
        for entry in std::fs::read_dir(&tmp)? {
            let path = entry?.path();
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(error) => tracing::warn!(path = %path.display(), %error,
                    "cannot remove the leftover of an interrupted upload"),
            }
        }
        if removed > 0 {
            tracing::info!(count = removed, dir = %tmp.display(),
                "removed the temporary files of uploads interrupted by a stop");
        }
        Ok(BlobStore {
            root,
            max_size,
            backend,
        })
    }

    /// Where a blob lives on disk (whether or not it exists). `sha256` must be validated hex.
    fn path(&self, sha256: &str) -> PathBuf {
        self.root.join("sha256").join(sha256)
    }

    /// The blob's size, if it exists (a database that fails is logged and counts as missing;
    /// [`BlobStore::try_stat`] tells them apart).
    pub async fn stat(&self, sha256: &str) -> Option<u64> {
        self.try_stat(sha256).await.unwrap_or_else(|error| {
            tracing::warn!(sha256, %error, "cannot look a blob up");
            None
        })
    }

    /// The blob's size if it exists, or why it cannot be told.
    pub async fn try_stat(&self, sha256: &str) -> Result<Option<u64>, BlobError> {
        if !tc_api::resources::is_sha256_hex(sha256) {
            return Ok(None);
        }
        match &self.backend {
            Backend::Disk => Ok(tokio::fs::metadata(self.path(sha256))
                .await
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len())),
            Backend::Postgres(store) => postgres::stat(store, sha256).await,
        }
    }

    /// Bytes `start..start + length` of a stored blob, as a response body that streams them
    /// (from the file, or from the database a chunk at a time).
    pub async fn body(&self, sha256: &str, start: u64, length: u64) -> Result<Body, BlobError> {
        match &self.backend {
            Backend::Disk => {
                let mut file = tokio::fs::File::open(self.path(sha256)).await?;
                file.seek(std::io::SeekFrom::Start(start)).await?;
                // Large chunks: every chunk read from a `tokio::fs::File` is a hop to the
                // blocking pool, so the default 4 KiB chunks cost a hop per 4 KiB served.
                let stream = tokio_util::io::ReaderStream::with_capacity(
                    file.take(length),
                    FILE_CHUNK_BYTES,
                );
                Ok(Body::from_stream(stream))
            }
            Backend::Postgres(store) => Ok(postgres::body(store, sha256, start, length)),
        }
    }

    /// Stores a stream of bytes; verifies `expected` when given.
    pub async fn put_stream<S, B, E>(
        &self,
        mut stream: S,
        expected: Option<&str>,
    ) -> Result<BlobInfo, BlobError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let temp = self.root.join("tmp").join(crate::tokens::generate());
        let result = async {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(crate::datadir::FILE_MODE)
                .open(&temp)
                .await?;
            let mut context = Context::new(&SHA256);
            let mut size = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| BlobError::Source(e.to_string()))?;
                let bytes = chunk.as_ref();
                size += bytes.len() as u64;
                if size > self.max_size {
                    return Err(BlobError::TooLarge {
                        limit: self.max_size,
                    });
                }
                context.update(bytes);
                file.write_all(bytes).await?;
            }
            file.sync_all().await?;
            drop(file);
            let sha256 = hex(context.finish().as_ref());
            if let Some(expected) = expected
                && expected != sha256
            {
                return Err(BlobError::DigestMismatch {
                    expected: expected.to_string(),
                    actual: sha256,
                });
            }
            match &self.backend {
                Backend::Disk => tokio::fs::rename(&temp, self.path(&sha256)).await?,
                Backend::Postgres(store) => {
                    postgres::put_file(store, &temp, &sha256, size).await?;
                    // Stored: a temporary file left behind is only removed at the next start.
                    if let Err(error) = tokio::fs::remove_file(&temp).await {
                        tracing::warn!(path = %temp.display(), %error,
                            "cannot remove the temporary file of a stored upload");
                    }
                }
            }
            Ok(BlobInfo { sha256, size })
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    /// Imports a local file (an `artifact.path` of the watched directory).
    pub async fn put_file(
        &self,
        path: &Path,
        expected: Option<&str>,
    ) -> Result<BlobInfo, BlobError> {
        let file = tokio::fs::File::open(path).await?;
        let stream = tokio_util::io::ReaderStream::new(file);
        self.put_stream(stream, expected).await
    }

    /// Stores bytes held in memory; with `digest_only`, only computes what would be stored.
    pub async fn put_bytes(
        &self,
        bytes: Vec<u8>,
        expected: Option<&str>,
        digest_only: bool,
    ) -> Result<BlobInfo, BlobError> {
        if digest_only {
            let digest = ring::digest::digest(&SHA256, &bytes);
            return Ok(BlobInfo {
                sha256: hex(digest.as_ref()),
                size: bytes.len() as u64,
            });
        }
        let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes)]);
        self.put_stream(stream, expected).await
    }

    /// Hashes a local file without storing it (for dry runs).
    pub async fn digest_file(path: &Path) -> Result<BlobInfo, BlobError> {
        let file = tokio::fs::File::open(path).await?;
        let mut stream = tokio_util::io::ReaderStream::new(file);
        let mut context = Context::new(&SHA256);
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            context.update(&chunk);
        }
        Ok(BlobInfo {
            sha256: hex(context.finish().as_ref()),
            size,
        })
    }
}

/// A parsed `Range: bytes=...` header for one range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
}

/// Parses a single-range `Range` header against a size. `Ok(None)`: no usable range (serve the
/// whole blob); `Err(())`: unsatisfiable (416).
#[allow(clippy::result_unit_err)]
pub fn parse_range(header: &str, size: u64) -> Result<Option<ByteRange>, ()> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Several ranges: answer with the whole blob, which is allowed.
        return Ok(None);
    }
    let Some((start, end)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        let suffix: u64 = end.parse().map_err(|_| ())?;
        if suffix == 0 || size == 0 {
            return Err(());
        }
        ByteRange {
            start: size.saturating_sub(suffix),
            end: size - 1,
        }
    } else {
        let start: u64 = start.parse().map_err(|_| ())?;
        let end = if end.is_empty() {
            size.saturating_sub(1)
        } else {
            end.parse::<u64>()
                .map_err(|_| ())?
                .min(size.saturating_sub(1))
        };
        if start >= size || end < start {
            return Err(());
        }
        ByteRange { start, end }
    };
    Ok(Some(range))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_table() {
        let cases = [
            ("bytes=0-9", 100, Ok(Some(ByteRange { start: 0, end: 9 }))),
            ("bytes=10-", 100, Ok(Some(ByteRange { start: 10, end: 99 }))),
            ("bytes=-10", 100, Ok(Some(ByteRange { start: 90, end: 99 }))),
            (
                "bytes=90-200",
                100,
                Ok(Some(ByteRange { start: 90, end: 99 })),
            ),
            ("bytes=100-", 100, Err(())),
            ("bytes=5-3", 100, Err(())),
            ("bytes=0-1,5-6", 100, Ok(None)),
            ("items=0-1", 100, Ok(None)),
            ("bytes=x-1", 100, Err(())),
        ];
        for (header, size, expected) in cases {
            assert_eq!(parse_range(header, size), expected, "{header}");
        }
    }

    #[tokio::test]
    async fn blobs_are_verified_before_they_appear() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 1 << 20).unwrap();
        let chunks = futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>(b"hello ".to_vec()),
            Ok(b"world".to_vec()),
        ]);
        let info = store.put_stream(chunks, None).await.unwrap();
        assert_eq!(
            info.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(store.stat(&info.sha256).await, Some(11));

        let wrong = "0".repeat(64);
        let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(b"other".to_vec())]);
        let error = store.put_stream(chunks, Some(&wrong)).await.unwrap_err();
        assert!(matches!(error, BlobError::DigestMismatch { .. }));
        assert_eq!(store.stat(&wrong).await, None);
        // Nothing is left in the temporary directory.
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/tmp"))
                .unwrap()
                .count(),
            0
        );

        let small = BlobStore::open(dir.path(), 4).unwrap();
        let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(b"too big".to_vec())]);
        assert!(matches!(
            small.put_stream(chunks, None).await.unwrap_err(),
            BlobError::TooLarge { .. }
        ));
    }
}
