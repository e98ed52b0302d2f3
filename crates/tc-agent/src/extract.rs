//! Safe extraction of a package zip into a staging directory.
//!
//! The whole archive is checked before the first byte is written: every entry name must be a
//! relative path without `..`, symbolic links must point inside the package without passing
//! through another link, no entry may live under a link, and the declared sizes must respect the
//! limits on total size, entry count and compression ratio. While writing, the real decompressed
//! sizes are checked again, since a header can lie. Unix permissions are kept, without the
//! setuid, setgid and sticky bits. On any error the staging directory is removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use zip::ZipArchive;
use zip::result::ZipError;

use crate::state::sync_dir;

/// Entries smaller than this are not subject to the compression-ratio limit: a few kilobytes of
/// zeros compress extremely well and are harmless.
pub const RATIO_CHECK_MIN_BYTES: u64 = 1 << 20;

/// The longest symbolic-link target accepted.
const MAX_LINK_TARGET_BYTES: u64 = 4096;

/// Limits that keep a hostile or broken zip from filling the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtractLimits {
    /// Maximum sum of the uncompressed sizes.
    pub max_total_bytes: u64,
    /// Maximum number of entries.
    pub max_entries: usize,
    /// Maximum uncompressed/compressed ratio of one entry (for entries of at least
    /// [`RATIO_CHECK_MIN_BYTES`]).
    pub max_ratio: u64,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        ExtractLimits {
            max_total_bytes: 1 << 30,
            max_entries: 20_000,
            max_ratio: 200,
        }
    }
}

/// What an extraction produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extracted {
    /// Entries written (files, directories and links).
    pub entries: usize,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Why a zip was refused or could not be extracted.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The file is not a readable zip archive.
    #[error("not a valid zip archive: {source}")]
    Archive {
        /// The zip library's error.
        #[source]
        source: ZipError,
    },
    /// One entry could not be read.
    #[error("entry `{entry}`: {source}")]
    Entry {
        /// The entry name.
        entry: String,
        /// The zip library's error.
        #[source]
        source: ZipError,
    },
    /// The archive has more entries than allowed.
    #[error("too many entries: {count} (limit {limit}); refused at entry `{entry}`")]
    TooManyEntries {
        /// The first entry over the limit.
        entry: String,
        /// Entries in the archive.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// An entry name is absolute, contains `..` or is otherwise unusable.
    #[error("entry `{entry}` {reason}")]
    UnsafePath {
        /// The entry name.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A symbolic link points outside the package.
    #[error("entry `{entry}` is a symbolic link to `{target}`, which {reason}")]
    LinkEscapes {
        /// The entry name.
        entry: String,
        /// The link target.
        target: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two entries have the same path.
    #[error("entry `{entry}` appears more than once")]
    Duplicate {
        /// The entry name.
        entry: String,
    },
    /// An entry is encrypted.
    #[error("entry `{entry}` is encrypted")]
    Encrypted {
        /// The entry name.
        entry: String,
    },
    /// The total uncompressed size is over the limit.
    #[error("entry `{entry}` takes the uncompressed size over the limit of {limit} bytes")]
    TotalSize {
        /// The entry that crossed the limit.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// An entry compresses suspiciously well (a zip bomb).
    #[error("entry `{entry}` has a compression ratio of {ratio}:1 (limit {limit}:1)")]
    CompressionRatio {
        /// The entry name.
        entry: String,
        /// Its ratio.
        ratio: u64,
        /// The limit.
        limit: u64,
    },
    /// An entry decompressed to more bytes than its header declared.
    #[error("entry `{entry}` holds more data than the {declared} bytes it declares")]
    SizeMismatch {
        /// The entry name.
        entry: String,
        /// The declared size.
        declared: u64,
    },
    /// Writing to the staging directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What an entry of the archive becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Directory,
    /// A regular file (also entries whose mode names another file type: they are written as
    /// regular files).
    File,
    /// A symbolic link.
    Link,
}

/// One entry of an archive, checked and ready to be written: what [`plan_zip`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEntry {
    /// Its index in the archive.
    pub index: usize,
    /// Its name in the archive (lossily decoded).
    pub name: String,
    /// Where it is written, relative to the package root: not empty, only normal components.
    pub path: PathBuf,
    /// What it is.
    pub kind: EntryKind,
    /// The Unix mode the archive records, if any.
    pub mode: Option<u32>,
    /// The uncompressed size its header declares.
    pub size: u64,
    /// The compressed size its header declares.
    pub compressed_size: u64,
    /// For a link, its target, checked to resolve inside the package.
    pub link_target: Option<String>,
}

/// Extracts `zip` into `destination`, which must not exist yet. On error nothing is left behind.
pub fn extract(
    zip: &Path,
    destination: &Path,
    limits: &ExtractLimits,
) -> Result<Extracted, ExtractError> {
    let result = extract_checked(zip, destination, limits);
    if result.is_err() && destination.exists() {
        let _ = fs::remove_dir_all(destination);
    }
    result
}

fn extract_checked(
    zip: &Path,
    destination: &Path,
    limits: &ExtractLimits,
) -> Result<Extracted, ExtractError> {
    let file = File::open(zip).map_err(io_error(zip))?;
    let mut archive = ZipArchive::new(file).map_err(|source| ExtractError::Archive { source })?;
    let plan = plan(&mut archive, limits)?;
    write(&mut archive, &plan, destination, limits)
}

/// Decides, without writing anything, what extracting the zip read from `zip` would write where:
/// every entry's name, kind, declared size and link target is checked against the rules and
/// `limits` that [`extract`] applies before its first write. Extraction still checks the real
/// decompressed sizes while writing, since a header can lie.
pub fn plan_zip<R: Read + Seek>(
    zip: R,
    limits: &ExtractLimits,
) -> Result<Vec<PlannedEntry>, ExtractError> {
    let mut archive = ZipArchive::new(zip).map_err(|source| ExtractError::Archive { source })?;
    plan(&mut archive, limits)
}

/// Checks every entry and reads the link targets.
fn plan<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    limits: &ExtractLimits,
) -> Result<Vec<PlannedEntry>, ExtractError> {
    let mut plan = check_entries(archive, limits)?;
    read_link_targets(archive, &mut plan)?;
    Ok(plan)
}

/// Checks every entry's name, kind and declared size.
fn check_entries<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    limits: &ExtractLimits,
) -> Result<Vec<PlannedEntry>, ExtractError> {
    let count = archive.len();
    if count > limits.max_entries {
        let entry = archive
            .name_for_index(limits.max_entries)
            .and_then(Result::ok)
            .map(|name| name.into_owned())
            .unwrap_or_default();
        return Err(ExtractError::TooManyEntries {
            entry,
            count,
            limit: limits.max_entries,
        });
    }
    let mut plan = Vec::with_capacity(count);
    let mut kinds: HashMap<PathBuf, EntryKind> = HashMap::new();
    let mut declared_total: u64 = 0;
    for index in 0..count {
        let entry = archive
            .by_index_raw(index)
            .map_err(|source| ExtractError::Archive { source })?;
        let name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        if entry.encrypted() {
            return Err(ExtractError::Encrypted { entry: name });
        }
        let path = safe_relative_path(&name).map_err(|reason| ExtractError::UnsafePath {
            entry: name.clone(),
            reason,
        })?;
        if path.as_os_str().is_empty() {
            continue;
        }
        let kind = if entry.is_symlink() {
            EntryKind::Link
        } else if entry.is_dir() {
            EntryKind::Directory
        } else {
            EntryKind::File
        };
        let size = entry.size();
        declared_total = declared_total.saturating_add(size);
        if declared_total > limits.max_total_bytes {
            return Err(ExtractError::TotalSize {
                entry: name,
                limit: limits.max_total_bytes,
            });
        }
        if size >= RATIO_CHECK_MIN_BYTES {
            let ratio = size / entry.compressed_size().max(1);
            if ratio > limits.max_ratio {
                return Err(ExtractError::CompressionRatio {
                    entry: name,
                    ratio,
                    limit: limits.max_ratio,
                });
            }
        }
        match kinds.insert(path.clone(), kind) {
            Some(EntryKind::Directory) if kind == EntryKind::Directory => {}
            Some(_) => return Err(ExtractError::Duplicate { entry: name }),
            None => {}
        }
        plan.push(PlannedEntry {
            index,
            name,
            path,
            kind,
            mode: entry.unix_mode(),
            size,
            compressed_size: entry.compressed_size(),
            link_target: None,
        });
    }
    for planned in &plan {
        for ancestor in planned.path.ancestors().skip(1) {
            match kinds.get(ancestor) {
                Some(EntryKind::Link) => {
                    return Err(ExtractError::UnsafePath {
                        entry: planned.name.clone(),
                        reason: "lies under a symbolic link",
                    });
                }
                Some(EntryKind::File) => {
                    return Err(ExtractError::UnsafePath {
                        entry: planned.name.clone(),
                        reason: "lies under an entry that is a file",
                    });
                }
                _ => {}
            }
        }
    }
    Ok(plan)
}

/// Reads and checks the target of every link entry.
fn read_link_targets<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    plan: &mut [PlannedEntry],
) -> Result<(), ExtractError> {
    let links: BTreeSet<PathBuf> = plan
        .iter()
        .filter(|planned| planned.kind == EntryKind::Link)
        .map(|planned| planned.path.clone())
        .collect();
    for planned in plan
        .iter_mut()
        .filter(|planned| planned.kind == EntryKind::Link)
    {
        let entry_error = |source| ExtractError::Entry {
            entry: planned.name.clone(),
            source,
        };
        let entry = archive.by_index(planned.index).map_err(entry_error)?;
        let mut target = String::new();
        entry
            .take(MAX_LINK_TARGET_BYTES + 1)
            .read_to_string(&mut target)
            .map_err(|error| ExtractError::Entry {
                entry: planned.name.clone(),
                source: ZipError::Io(error),
            })?;
        check_link_target(&planned.path, &target, &links).map_err(|reason| {
            ExtractError::LinkEscapes {
                entry: planned.name.clone(),
                target: target.clone(),
                reason,
            }
        })?;
        planned.link_target = Some(target);
    }
    Ok(())
}

/// Writes the checked plan into `destination`.
fn write(
    archive: &mut ZipArchive<File>,
    plan: &[PlannedEntry],
    destination: &Path,
    limits: &ExtractLimits,
) -> Result<Extracted, ExtractError> {
    if let Some(parent) = destination.parent() {
        fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    fs::create_dir(destination).map_err(io_error(destination))?;
    let mut directories: BTreeMap<PathBuf, u32> = BTreeMap::new();
    directories.insert(destination.to_owned(), 0o755);
    let mut written: u64 = 0;
    for planned in plan {
        let target = destination.join(&planned.path);
        for ancestor in planned.path.ancestors().skip(1) {
            if !ancestor.as_os_str().is_empty() {
                directories
                    .entry(destination.join(ancestor))
                    .or_insert(0o755);
            }
        }
        match planned.kind {
            EntryKind::Directory => {
                fs::create_dir_all(&target).map_err(io_error(&target))?;
                directories.insert(target, permissions(planned.mode, 0o755));
            }
            EntryKind::File => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(io_error(parent))?;
                }
                let entry =
                    archive
                        .by_index(planned.index)
                        .map_err(|source| ExtractError::Entry {
                            entry: planned.name.clone(),
                            source,
                        })?;
                let bytes = write_file(entry, planned, &target)?;
                written = written.saturating_add(bytes);
                if written > limits.max_total_bytes {
                    return Err(ExtractError::TotalSize {
                        entry: planned.name.clone(),
                        limit: limits.max_total_bytes,
                    });
                }
            }
            EntryKind::Link => {}
        }
    }
    for planned in plan
        .iter()
        .filter(|planned| planned.kind == EntryKind::Link)
    {
        let target = destination.join(&planned.path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        let link_target = planned
            .link_target
            .as_deref()
            .expect("the plan holds the target of every link");
        std::os::unix::fs::symlink(link_target, &target).map_err(io_error(&target))?;
    }
    // Deepest first, so that a read-only directory does not stop its children from being set.
    for (directory, mode) in directories.iter().rev() {
        fs::set_permissions(directory, fs::Permissions::from_mode(*mode))
            .map_err(io_error(directory))?;
        sync_dir(directory).map_err(io_error(directory))?;
    }
    Ok(Extracted {
        entries: plan.len(),
        bytes: written,
    })
}

/// Writes one file entry, refusing more data than declared, and flushes it to disk.
fn write_file(
    entry: impl Read,
    planned: &PlannedEntry,
    target: &Path,
) -> Result<u64, ExtractError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)
        .map_err(io_error(target))?;
    let mut limited = entry.take(planned.size + 1);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut copied: u64 = 0;
    loop {
        let read = limited
            .read(&mut buffer)
            .map_err(|error| ExtractError::Entry {
                entry: planned.name.clone(),
                source: ZipError::Io(error),
            })?;
        if read == 0 {
            break;
        }
        file.write_all(&buffer[..read]).map_err(io_error(target))?;
        copied += read as u64;
    }
    if copied > planned.size {
        return Err(ExtractError::SizeMismatch {
            entry: planned.name.clone(),
            declared: planned.size,
        });
    }
    file.flush().map_err(io_error(target))?;
    file.set_permissions(fs::Permissions::from_mode(permissions(planned.mode, 0o644)))
        .map_err(io_error(target))?;
    file.sync_all().map_err(io_error(target))?;
    Ok(copied)
}

/// The permission bits to apply: the entry's own without setuid/setgid/sticky, or `default`.
fn permissions(mode: Option<u32>, default: u32) -> u32 {
    match mode {
        Some(mode) if mode & 0o777 != 0 => mode & 0o777,
        _ => default,
    }
}

/// Turns an entry name into a relative path, or says why it is unsafe. `.` components are
/// dropped; an empty result means the entry is the archive root.
pub fn safe_relative_path(name: &str) -> Result<PathBuf, &'static str> {
    if name.contains('\0') {
        return Err("contains a NUL byte");
    }
    if name.contains('\\') {
        return Err("contains a backslash");
    }
    if name.starts_with('/') {
        return Err("is an absolute path");
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err("is an absolute path");
    }
    let mut path = PathBuf::new();
    for component in name.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err("contains `..`"),
            normal => path.push(normal),
        }
    }
    Ok(path)
}

/// Checks that a link at `link` (relative to the package root) with `target` resolves inside the
/// package without passing through another link, so that resolving it by its text is exact.
fn check_link_target(
    link: &Path,
    target: &str,
    links: &BTreeSet<PathBuf>,
) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("is empty");
    }
    if target.len() as u64 > MAX_LINK_TARGET_BYTES {
        return Err("is too long");
    }
    if target.contains('\0') {
        return Err("contains a NUL byte");
    }
    let target_path = Path::new(target);
    if target_path.is_absolute() {
        return Err("is an absolute path");
    }
    let mut resolved: Vec<&std::ffi::OsStr> = link
        .parent()
        .map(|parent| {
            parent
                .components()
                .filter_map(|component| match component {
                    Component::Normal(part) => Some(part),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    for component in target_path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if resolved.pop().is_none() {
                    return Err("points outside the package");
                }
            }
            Component::Normal(part) => {
                resolved.push(part);
                let so_far: PathBuf = resolved.iter().collect();
                if links.contains(so_far.as_path()) {
                    return Err("passes through another symbolic link");
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_relative_path_cases() {
        let ok = |name: &str, expected: &str| {
            assert_eq!(
                safe_relative_path(name),
                Ok(PathBuf::from(expected)),
                "{name}"
            );
        };
        ok("bin/app", "bin/app");
        ok("./bin//app", "bin/app");
        ok("dir/", "dir");
        ok("./", "");
        let refused = |name: &str, reason: &str| {
            assert_eq!(safe_relative_path(name), Err(reason), "{name}");
        };
        refused("/etc/passwd", "is an absolute path");
        refused("C:/windows", "is an absolute path");
        refused("../x", "contains `..`");
        refused("a/../../x", "contains `..`");
        refused("a/b/..", "contains `..`");
        refused("a\\..\\x", "contains a backslash");
    }

    #[test]
    fn link_targets_are_resolved_inside_the_package() {
        let none = BTreeSet::new();
        let check = |link: &str, target: &str| check_link_target(Path::new(link), target, &none);
        assert_eq!(check("bin/app", "../lib/app"), Ok(()));
        assert_eq!(check("a/b/up", ".."), Ok(()));
        assert_eq!(check("up", "."), Ok(()));
        assert_eq!(check("up", ".."), Err("points outside the package"));
        assert_eq!(
            check("a/up", "../../etc"),
            Err("points outside the package")
        );
        assert_eq!(check("abs", "/etc/passwd"), Err("is an absolute path"));
        assert_eq!(check("empty", ""), Err("is empty"));
    }

    #[test]
    fn link_targets_may_not_pass_through_other_links() {
        let links: BTreeSet<PathBuf> = [PathBuf::from("d/l"), PathBuf::from("d/l2")].into();
        assert_eq!(
            check_link_target(Path::new("d/l2"), "l/..", &links),
            Err("passes through another symbolic link")
        );
        assert_eq!(check_link_target(Path::new("d/l"), "..", &links), Ok(()));
    }

    #[test]
    fn permissions_drop_special_bits_and_default_when_missing() {
        assert_eq!(permissions(Some(0o104755), 0o644), 0o755);
        assert_eq!(permissions(Some(0o100000), 0o644), 0o644);
        assert_eq!(permissions(None, 0o755), 0o755);
    }
}
