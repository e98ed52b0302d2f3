//! `tc-controller migrate --from DIR --to postgres://…`: moves a stopped controller's state from
//! the embedded store (`DIR/thinfleet.redb`) into an empty PostgreSQL database, as it is
//! ([`tc_store::copy_redb_to_pg`]): agents keep their clients, keys and sessions, and no
//! resourceVersion or sequence number is handed out twice.
//!
//! The data directory keeps the blobs, the PKI, the session key and the token files: the
//! controller is then started with the same `--data-dir` and `--store postgres://…`. The redb
//! file stays as it was (a backup; a controller started without `--store` would use it).

use std::path::{Path, PathBuf};

use tc_store::{CopyReport, PgSettings, PgStore, RedbStore, StoreError};

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
}

/// Copies the state of the controller whose data directory is `data_dir` into the PostgreSQL
/// database of `target`, which must be empty. The controller must be stopped: its redb file and
/// the directory's `controller.lock` are held for the whole copy, so none starts meanwhile.
pub fn migrate(data_dir: &Path, target: &PgSettings) -> Result<CopyReport, MigrateError> {
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
    let report = tc_store::copy_redb_to_pg(&source, &target).map_err(MigrateError::Copy)?;
    // The blobs stay in the data directory, which the controller keeps using; a step copying
    // them into the database goes here.
    Ok(report)
}
