//! File-system helpers of the engine: listing and removing what it manages.

use std::fs;
use std::io;
use std::path::Path;

/// The names in a directory (none when it cannot be read).
pub(super) fn read_dir_names(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Removes a file, link or directory tree; nothing to do when it does not exist.
pub(super) fn remove_all(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => make_writable_and_remove(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// `remove_dir_all`, after giving the owner write permission on directories a package made
/// read-only.
pub(super) fn make_writable_and_remove(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            make_directories_writable(path);
            fs::remove_dir_all(path)
        }
        Err(error) => Err(error),
    }
}

pub(super) fn make_directories_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = fs::symlink_metadata(path) else {
        return;
    };
    if metadata.is_dir() {
        let mode = metadata.permissions().mode() | 0o700;
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode));
        if let Ok(entries) = fs::read_dir(path) {
            for entry in entries.flatten() {
                make_directories_writable(&entry.path());
            }
        }
    }
}

pub(super) fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}
