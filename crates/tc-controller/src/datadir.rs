//! The data directory's permissions. It holds the admin token, bootstrap tokens, the database
//! (client token hashes, inventories) and the blobs, so only the controller's user may read it:
//! the directory and every directory in it are 0700, every file the controller creates is 0600.
//! A data directory made by another tool or an older controller is tightened at start, and the
//! controller says so in its log.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the directories of the data directory.
pub const DIR_MODE: u32 = 0o700;

/// Mode of the files of the data directory.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) with mode 0700, unless it exists.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Creates the empty file `path` with mode 0600 unless it exists, so that a file another library
/// creates there (the database) does not get the default mode first.
pub fn create_private_file(path: &Path) -> io::Result<()> {
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

/// Takes group and other permissions away from `dir` and everything below it (a directory made
/// 0755 becomes 0700, a file made 0644 becomes 0600; links are left alone, never followed).
/// Returns the paths changed.
pub fn tighten(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    tighten_into(dir, &mut changed)?;
    Ok(changed)
}

fn tighten_into(path: &Path, changed: &mut Vec<PathBuf>) -> io::Result<()> {
    let metadata = fs::symlink_metadata(path)?;
    if !metadata.is_dir() && !metadata.is_file() {
        return Ok(());
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & !0o077))?;
        changed.push(path.to_owned());
    }
    if metadata.is_dir() {
        for entry in fs::read_dir(path)? {
            tighten_into(&entry?.path(), changed)?;
        }
    }
    Ok(())
}

/// [`tighten`], logging what changed (a warning naming a few paths and the count).
pub fn tighten_and_log(dir: &Path) -> io::Result<()> {
    let changed = tighten(dir)?;
    if !changed.is_empty() {
        let shown: Vec<String> = changed
            .iter()
            .take(5)
            .map(|path| path.display().to_string())
            .collect();
        tracing::warn!(
            dir = %dir.display(),
            count = changed.len(),
            paths = %shown.join(", "),
            "the data directory was readable by other users: took group and other permissions away (directories 0700, files 0600)"
        );
    }
    Ok(())
}

/// Locks the data directory for this process (`controller.lock`, 0600), for stores that do not
/// lock it themselves (the redb file is locked by redb): the lock goes with the returned file,
/// when the controller stops or dies.
pub fn lock(dir: &Path) -> io::Result<fs::File> {
    let path = dir.join("controller.lock");
    create_private_file(&path)?;
    let file = fs::OpenOptions::new().write(true).open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "another controller uses this data directory",
        )),
        Err(fs::TryLockError::Error(error)) => Err(error),
    }
}
