//! Reading a watched directory: its manifest files, and the revision of their content (the git
//! commit checked out, or a digest of the files).

use std::path::Path;

use crate::apply::ManifestFile;

/// Reads every `*.yaml`, `*.yml` and `*.json` below `dir` (hidden entries skipped), sorted by path.
pub fn collect_files(dir: &Path) -> std::io::Result<Vec<ManifestFile>> {
    let mut paths = vec![];
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let file_type = std::fs::metadata(&path)?.file_type();
            if file_type.is_dir() {
                pending.push(path);
            } else if file_type.is_file()
                && path
                    .extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            {
                paths.push(path);
            }
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let content = std::fs::read_to_string(&path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            Ok(ManifestFile {
                name: path.display().to_string(),
                content,
            })
        })
        .collect()
}

/// The revision of a directory's content: the git commit checked out (with its ref) when the
/// directory is inside a git checkout, otherwise `sha256:` over the files' relative names and
/// contents.
pub fn revision(dir: &Path, files: &[ManifestFile]) -> (String, Option<String>) {
    if let Some((commit, reference)) = git_head(dir) {
        return (commit, reference);
    }
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for file in files {
        let name = Path::new(&file.name)
            .strip_prefix(dir)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| file.name.clone());
        context.update(name.as_bytes());
        context.update(&[0]);
        context.update(&(file.content.len() as u64).to_le_bytes());
        context.update(file.content.as_bytes());
    }
    let hex: String = context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (format!("sha256:{hex}"), None)
}

/// The commit checked out in the git repository that contains `dir`, and its ref (`None` for a
/// detached HEAD), read from `.git/HEAD` and the ref file or `packed-refs`. Worktrees and
/// submodules (a `.git` file naming the git directory) are followed.
pub fn git_head(dir: &Path) -> Option<(String, Option<String>)> {
    let dotgit = dir
        .ancestors()
        .map(|d| d.join(".git"))
        .find(|p| p.exists())?;
    let git_dir = if dotgit.is_file() {
        let text = std::fs::read_to_string(&dotgit).ok()?;
        let target = Path::new(text.trim().strip_prefix("gitdir:")?.trim());
        dotgit.parent()?.join(target)
    } else {
        dotgit
    };
    let common = match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(text) => git_dir.join(text.trim()),
        Err(_) => git_dir.clone(),
    };
    let is_commit = |text: &str| {
        (text.len() == 40 || text.len() == 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref:").map(str::trim) else {
        return is_commit(head).then(|| (head.to_string(), None));
    };
    if !reference.starts_with("refs/") || reference.split('/').any(|part| part == "..") {
        return None;
    }
    for base in [&git_dir, &common] {
        if let Ok(text) = std::fs::read_to_string(base.join(reference))
            && is_commit(text.trim())
        {
            return Some((text.trim().to_string(), Some(reference.to_string())));
        }
    }
    let packed = std::fs::read_to_string(common.join("packed-refs")).ok()?;
    packed.lines().find_map(|line| {
        let (commit, name) = line.split_once(' ')?;
        (name.trim() == reference && is_commit(commit))
            .then(|| (commit.to_string(), Some(reference.to_string())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_revision_is_the_checked_out_commit_or_a_content_digest() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("repo/manifests");
        std::fs::create_dir_all(&dir).unwrap();
        let files = vec![ManifestFile {
            name: dir.join("a.yaml").display().to_string(),
            content: "x: 1\n".into(),
        }];
        let (digest, reference) = revision(&dir, &files);
        assert!(
            digest.starts_with("sha256:") && reference.is_none(),
            "{digest}"
        );
        let renamed = vec![ManifestFile {
            name: dir.join("b.yaml").display().to_string(),
            content: "x: 1\n".into(),
        }];
        assert_ne!(revision(&dir, &renamed).0, digest, "names count");

        let git = root.path().join("repo/.git");
        std::fs::create_dir_all(git.join("refs/heads")).unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(
            git.join("packed-refs"),
            format!("# pack-refs with: peeled\n{commit} refs/heads/main\n"),
        )
        .unwrap();
        assert_eq!(
            revision(&dir, &files),
            (commit.to_string(), Some("refs/heads/main".to_string()))
        );
        let newer = "fedcba9876543210fedcba9876543210fedcba98";
        std::fs::write(git.join("refs/heads/main"), format!("{newer}\n")).unwrap();
        assert_eq!(revision(&dir, &files).0, newer, "loose refs win");
        std::fs::write(git.join("HEAD"), format!("{commit}\n")).unwrap();
        assert_eq!(revision(&dir, &files), (commit.to_string(), None));
    }
}
