//! Reproducible zips. A package directory packs to the same bytes wherever and whenever it is packed:
//! entries sorted by path, a fixed timestamp (1980-01-01), permissions reduced to 0644 or 0755, no
//! owner or extra fields. So a manifest can name a source directory (`artifact.path: ../src/kiosk/`)
//! and its sha256 stays stable across checkouts.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

/// Why a directory could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Reading the directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Symbolic links are not packed (their target could lie outside the package).
    #[error("{path}: symbolic links are not packed; copy the file into the package instead")]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// The zip library failed.
    #[error("zip: {0}")]
    Zip(String),
}

/// One file to pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackFile {
    /// Path inside the zip, with `/` separators.
    pub path: String,
    /// Content.
    pub content: Vec<u8>,
    /// Whether it is executable (stored as 0755, else 0644).
    pub executable: bool,
}

/// Packs files (in any order) into a reproducible zip.
pub fn pack_files(mut files: Vec<PackFile>) -> Result<Vec<u8>, PackError> {
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut buffer = Cursor::new(Vec::new());
    let mut writer = zip::ZipWriter::new(&mut buffer);
    for file in &files {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(6))
            .last_modified_time(zip::DateTime::default())
            .unix_permissions(if file.executable { 0o755 } else { 0o644 });
        writer
            .start_file(file.path.as_str(), options)
            .map_err(|e| PackError::Zip(e.to_string()))?;
        writer
            .write_all(&file.content)
            .map_err(|e| PackError::Zip(e.to_string()))?;
    }
    writer.finish().map_err(|e| PackError::Zip(e.to_string()))?;
    Ok(buffer.into_inner())
}

/// Packs every regular file below `dir` (hidden entries such as `.git` skipped).
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, PackError> {
    let mut files = vec![];
    let mut pending = vec![dir.to_path_buf()];
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackError::Io { path, source }
    };
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).map_err(io(&current))? {
            let entry = entry.map_err(io(&current))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let file_type = entry.file_type().map_err(io(&path))?;
            if file_type.is_symlink() {
                return Err(PackError::Symlink { path });
            }
            if file_type.is_dir() {
                pending.push(path);
                continue;
            }
            let content = std::fs::read(&path).map_err(io(&path))?;
            let relative = path.strip_prefix(dir).expect("below the root");
            let name: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            files.push(PackFile {
                path: name.join("/"),
                content,
                executable: is_executable(&entry, &path)?,
            });
        }
    }
    pack_files(files)
}

#[cfg(unix)]
fn is_executable(entry: &std::fs::DirEntry, path: &Path) -> Result<bool, PackError> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = entry.metadata().map_err(|source| PackError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(metadata.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(_: &std::fs::DirEntry, path: &Path) -> Result<bool, PackError> {
    Ok(path.extension().is_some_and(|e| e == "sh"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_tree_packs_to_the_same_bytes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        // Created in different orders, at different times.
        for (dir, order) in [
            (a.path(), ["x/1.txt", "run.sh", "x/2.txt"]),
            (b.path(), ["x/2.txt", "x/1.txt", "run.sh"]),
        ] {
            for name in order {
                let path = dir.join(name);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, name).unwrap();
                #[cfg(unix)]
                if name.ends_with(".sh") {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                        .unwrap();
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        std::fs::create_dir_all(a.path().join(".git")).unwrap();
        std::fs::write(a.path().join(".git/HEAD"), "ref").unwrap();
        let (zip_a, zip_b) = (pack_dir(a.path()).unwrap(), pack_dir(b.path()).unwrap());
        assert_eq!(zip_a, zip_b);
        let mut archive = zip::ZipArchive::new(Cursor::new(zip_a)).unwrap();
        let names: Vec<String> = (0..archive.len())
            .map(|i| archive.by_index(i).unwrap().name().unwrap().to_string())
            .collect();
        assert_eq!(names, vec!["run.sh", "x/1.txt", "x/2.txt"]);
        #[cfg(unix)]
        assert_eq!(
            archive.by_name("run.sh").unwrap().unix_mode().unwrap() & 0o777,
            0o755
        );
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
        assert!(matches!(
            pack_dir(dir.path()),
            Err(PackError::Symlink { .. })
        ));
    }
}
