//! `tc-controller migrate --from DIR --to postgres://…`: moves a stopped controller's state from
//! the embedded store (`DIR/thinfleet.redb`) into an empty PostgreSQL database, as it is
//! ([`tc_store::copy_redb_to_pg`]): agents keep their clients, keys and sessions, and no
//! resourceVersion or sequence number is handed out twice.
//!
//! The blobs (`DIR/blobs/sha256/`) are copied into the database too, each checked against its
//! name while it is copied ([`copy_blobs`]). The data directory keeps the PKI, the session key and
//! the token files: the controller is then started with the same `--data-dir` and
//! `--store postgres://…`. The redb file and the blob files stay as they were (a backup; a
//! controller started without `--store` would use them).

use std::path::{Path, PathBuf};

use tc_store::{CopyReport, PgSettings, PgStore, RedbStore, StoreError, TableCounts};

use crate::datadir;

/// The redb file of a data directory.
pub const REDB_FILE: &str = "thinfleet.redb";

/// Why a migration did not happen (nothing was written to the target then).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The data directory has no redb store.
    #[error(
        "{0} does not exist: there is nothing to migrate (is --from the controller's data directory?)"
    )]
    NoSource(PathBuf),
    /// A controller uses the data directory.
    #[error("a controller is running on {dir} ({detail}): stop the controller first")]
    Running {
        /// The data directory.
        dir: PathBuf,
        /// What showed it.
        detail: String,
    },
    /// The data directory's lock file cannot be used.
    #[error("{path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The redb store cannot be opened or read.
    #[error("the store {path}: {source}")]
    Source {
        /// The redb file.
        path: PathBuf,
        /// Why.
        source: StoreError,
    },
    /// The PostgreSQL database cannot be opened.
    #[error("the PostgreSQL store: {0}")]
    Target(StoreError),
    /// The copy failed (and was rolled back), or the target is not empty.
    #[error("{0}")]
    Copy(StoreError),
    /// A blob file cannot be read, or its content is not the one its name says.
    #[error("blob {path}: {message}")]
    Blob {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// What [`migrate`] copied.
#[derive(Debug)]
pub struct Migrated {
    /// The store's records.
    pub store: CopyReport,
    /// How many blobs, and their bytes.
    pub blobs: (u64, u64),
}

/// Copies the state of the controller whose data directory is `data_dir` into the PostgreSQL
/// database of `target`, which must be empty. The controller must be stopped: its redb file and
/// the directory's `controller.lock` are held for the whole copy, so none starts meanwhile.
pub fn migrate(data_dir: &Path, target: &PgSettings) -> Result<Migrated, MigrateError> {
    let path = data_dir.join(REDB_FILE);
    if !path.is_file() {
        return Err(MigrateError::NoSource(path));
    }
    // A controller on PostgreSQL holds this lock; one on redb holds the redb file's.
    let _lock = datadir::lock(data_dir).map_err(|source| {
        if source.kind() == std::io::ErrorKind::WouldBlock {
            MigrateError::Running {
                dir: data_dir.to_owned(),
                detail: source.to_string(),
            }
        } else {
            MigrateError::Lock {
                path: data_dir.join("controller.lock"),
                source,
            }
        }
    })?;
    let source = RedbStore::open(&path).map_err(|source| {
        let text = source.to_string();
        if text.contains("already open") || text.contains("Cannot acquire lock") {
            MigrateError::Running {
                dir: data_dir.to_owned(),
                detail: format!("{} is locked", path.display()),
            }
        } else {
            MigrateError::Source {
                path: path.clone(),
                source,
            }
        }
    })?;
    let target = PgStore::open(target).map_err(MigrateError::Target)?;
    // A database holding a store is refused before any blob is copied into it (the copy checks
    // again, in its transaction).
    let holds = target.table_counts().map_err(MigrateError::Target)?;
    if holds != TableCounts::default() {
        let holds = holds
            .tables()
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(table, count)| format!("{table} {count}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(MigrateError::Copy(StoreError::TargetNotEmpty { holds }));
    }
    // The blobs first, each in a transaction of its own, then the store in one: a run that fails
    // anywhere leaves the store's tables empty, and running it again copies what is missing
    // (blobs are content-addressed: one already there is checked and kept).
    let blobs = copy_blobs(&data_dir.join("blobs/sha256"), &target)?;
    let report = tc_store::copy_redb_to_pg(&source, &target).map_err(MigrateError::Copy)?;
    Ok(Migrated {
        store: report,
        blobs,
    })
}

/// Copies every blob file of `dir` (named by its sha256) into `target`, verified as it is read;
/// a blob the database has already is read and checked all the same. Returns how many blobs and
/// bytes.
pub fn copy_blobs(dir: &Path, target: &PgStore) -> Result<(u64, u64), MigrateError> {
    let blob_error = |path: &Path, message: String| MigrateError::Blob {
        path: path.to_owned(),
        message,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(error) => return Err(blob_error(dir, error.to_string())),
    };
    let mut paths = entries
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| blob_error(dir, error.to_string()))?;
    paths.sort();
    let (mut count, mut bytes) = (0, 0);
    for path in paths {
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default()
            .to_string();
        let file = std::fs::File::open(&path).map_err(|e| blob_error(&path, e.to_string()))?;
        let size = file
            .metadata()
            .map_err(|e| blob_error(&path, e.to_string()))?
            .len();
        target
            .put_blob(&name, size, std::io::BufReader::new(file))
            .map_err(|e| blob_error(&path, e.to_string()))?;
        count += 1;
        bytes += size;
    }
    Ok((count, bytes))
}
