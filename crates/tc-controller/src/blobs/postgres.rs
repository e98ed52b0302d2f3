//! Blobs in the PostgreSQL store: every controller on the database serves the blobs any of them
//! stored. An upload, verified in its temporary file, is copied into the database in chunks; a
//! download streams its range from the database one chunk per round trip, each read on the
//! blocking pool only for that round trip (a slow client holds neither a thread nor a
//! connection while it reads).

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use tc_store::PgStore;

use super::BlobError;

fn database(error: tc_store::BlobError) -> BlobError {
    BlobError::Database(error.to_string())
}

fn joined(error: tokio::task::JoinError) -> BlobError {
    BlobError::Database(format!("the database call failed: {error}"))
}

/// The size of blob `sha256`, if the database has it.
pub(super) async fn stat(store: &Arc<PgStore>, sha256: &str) -> Result<Option<u64>, BlobError> {
    let (store, sha256) = (Arc::clone(store), sha256.to_string());
    tokio::task::spawn_blocking(move || store.blob_size(&sha256))
        .await
        .map_err(joined)?
        .map_err(database)
}

/// Copies the verified file `path` (blob `sha256` of `size` bytes) into the database, unless it
/// is there already. The database checks the digest again as it reads the file.
pub(super) async fn put_file(
    store: &Arc<PgStore>,
    path: &Path,
    sha256: &str,
    size: u64,
) -> Result<(), BlobError> {
    let (store, path, sha256) = (Arc::clone(store), path.to_path_buf(), sha256.to_string());
    tokio::task::spawn_blocking(move || {
        if store.blob_size(&sha256).map_err(database)?.is_some() {
            return Ok(());
        }
        let file = std::fs::File::open(&path)?;
        store.put_blob(&sha256, size, file).map_err(database)?;
        Ok(())
    })
    .await
    .map_err(joined)?
}

/// Bytes `start..start + length` of blob `sha256` as a body read from the database a chunk at a
/// time, when the body is polled for it. A failure mid-way ends the body with an error (the
/// client sees a response shorter than its Content-Length).
pub(super) fn body(store: &Arc<PgStore>, sha256: &str, start: u64, length: u64) -> Body {
    let end = start.saturating_add(length);
    let state = (Arc::clone(store), sha256.to_string(), start);
    let stream = futures_util::stream::try_unfold(state, move |(store, sha256, at)| async move {
        if at >= end {
            return Ok(None);
        }
        let (reader, key) = (Arc::clone(&store), sha256.clone());
        let piece = tokio::task::spawn_blocking(move || reader.read_blob_chunk(&key, at, end - at))
            .await
            .map_err(joined)?
            .map_err(database)?;
        let next = at + piece.len() as u64;
        Ok::<_, BlobError>(Some((piece, (store, sha256, next))))
    });
    Body::from_stream(stream)
}
