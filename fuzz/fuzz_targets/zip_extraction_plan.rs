//! Arbitrary bytes as a package zip through the agent's extraction planner,
//! `tc_agent::extract::plan_zip` (what would be written where, decided before anything is
//! written), then through the real extraction into a throwaway directory.
//!
//! Asserts, for the default limits and for tight ones:
//! * the planner never panics;
//! * every planned path is relative, made of normal components only, and unique (directories
//!   may repeat); nothing is planned under a link or a file;
//! * the entry count, the declared total size and the compression ratio of every large entry
//!   are within the limits;
//! * every link target is relative, short, and resolves inside the package without passing
//!   through another link;
//! * tight limits only refuse: what they accept, the default limits plan the same way.
//!
//! And for the real extraction (on tmpfs when there is one, so it stays cheap):
//! * a zip the planner refuses is refused by `extract` with the same error, and nothing is left;
//! * any failure leaves nothing behind (the staging directory is gone, nothing else appeared);
//! * a success wrote exactly the planned entries, of the planned kinds, files no larger than
//!   declared and within the size limit, no setuid, setgid or sticky bit, links with their
//!   planned targets, and nothing outside the destination.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use tc_agent::extract::{
    EntryKind, ExtractLimits, PlannedEntry, RATIO_CHECK_MIN_BYTES, extract, plan_zip,
};

/// Inputs up to this size are also extracted for real.
const EXTRACT_MAX_INPUT: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let default_limits = ExtractLimits::default();
    let default_plan = plan_zip(Cursor::new(data), &default_limits);
    if let Ok(plan) = &default_plan {
        check_plan(plan, &default_limits);
    }

    let tight = ExtractLimits {
        max_total_bytes: 256 << 10,
        max_entries: 24,
        max_ratio: 20,
    };
    let tight_plan = plan_zip(Cursor::new(data), &tight);
    if let Ok(plan) = &tight_plan {
        check_plan(plan, &tight);
        match &default_plan {
            Ok(default) => assert_eq!(plan, default, "tight limits changed the plan"),
            Err(error) => panic!("tight limits accept what the defaults refuse: {error}"),
        }
    }

    if data.len() <= EXTRACT_MAX_INPUT {
        extract_for_real(data, &tight, &tight_plan);
    }
});

/// The invariants of a plan the planner accepted under `limits`.
fn check_plan(plan: &[PlannedEntry], limits: &ExtractLimits) {
    assert!(plan.len() <= limits.max_entries, "{} entries", plan.len());
    let mut total: u64 = 0;
    let mut kinds: BTreeMap<&Path, EntryKind> = BTreeMap::new();
    let mut last_index = None;
    for entry in plan {
        assert!(
            last_index < Some(entry.index),
            "entries in archive order: {plan:?}"
        );
        last_index = Some(entry.index);
        assert_normal_relative(&entry.path, &entry.name);
        total = total.saturating_add(entry.size);
        if entry.size >= RATIO_CHECK_MIN_BYTES {
            let ratio = entry.size / entry.compressed_size.max(1);
            assert!(ratio <= limits.max_ratio, "ratio {ratio}: {entry:?}");
        }
        match kinds.insert(&entry.path, entry.kind) {
            None => {}
            Some(EntryKind::Directory) if entry.kind == EntryKind::Directory => {}
            Some(other) => panic!("{:?} planned twice ({other:?}, {entry:?})", entry.path),
        }
        assert_eq!(
            entry.link_target.is_some(),
            entry.kind == EntryKind::Link,
            "{entry:?}"
        );
    }
    assert!(total <= limits.max_total_bytes, "total {total} bytes");
    let links: BTreeSet<&Path> = kinds
        .iter()
        .filter(|(_, kind)| **kind == EntryKind::Link)
        .map(|(path, _)| *path)
        .collect();
    for entry in plan {
        for ancestor in entry.path.ancestors().skip(1) {
            let kind = kinds.get(ancestor);
            assert!(
                !matches!(kind, Some(EntryKind::Link | EntryKind::File)),
                "{entry:?} lies under a {kind:?}"
            );
        }
        if let Some(target) = &entry.link_target {
            check_link(&entry.path, target, &links);
        }
    }
}

/// `path` is relative, not empty, and only has normal components that need no escaping.
fn assert_normal_relative(path: &Path, name: &str) {
    assert!(
        !path.as_os_str().is_empty(),
        "entry `{name}` has an empty path"
    );
    for component in path.components() {
        let Component::Normal(part) = component else {
            panic!("entry `{name}` has the path {path:?}");
        };
        let part = part.to_string_lossy();
        assert!(
            !part.contains(['\0', '\\', '/']) && part != "." && part != "..",
            "entry `{name}` has the path {path:?}"
        );
    }
}

/// A link at `link` with `target` resolves inside the package, by its text, through no link.
fn check_link(link: &Path, target: &str, links: &BTreeSet<&Path>) {
    assert!(
        !target.is_empty() && target.len() <= 4096 && !target.contains('\0'),
        "link {link:?} -> {target:?}"
    );
    let mut resolved: Vec<&std::ffi::OsStr> = link
        .parent()
        .into_iter()
        .flat_map(Path::components)
        .map(Component::as_os_str)
        .collect();
    for component in Path::new(target).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                assert!(
                    resolved.pop().is_some(),
                    "link {link:?} -> {target:?} leaves the package"
                );
            }
            Component::Normal(part) => {
                resolved.push(part);
                let so_far: PathBuf = resolved.iter().collect();
                assert!(
                    !links.contains(so_far.as_path()),
                    "link {link:?} -> {target:?} passes through the link {so_far:?}"
                );
            }
            Component::RootDir | Component::Prefix(_) => {
                panic!("link {link:?} -> {target:?} is absolute")
            }
        }
    }
}

/// Extracts `data` into a throwaway directory and checks what landed where.
fn extract_for_real(
    data: &[u8],
    limits: &ExtractLimits,
    plan: &Result<Vec<PlannedEntry>, tc_agent::extract::ExtractError>,
) {
    let shm = Path::new("/dev/shm");
    let temp = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("a temporary directory");
    let root = temp.path();
    let zip = root.join("package.zip");
    std::fs::write(&zip, data).expect("write the zip");
    let staging = root.join("staging");
    std::fs::create_dir(&staging).expect("create staging");
    let destination = staging.join("pkg");

    let result = extract(&zip, &destination, limits);
    assert_eq!(names(root), ["package.zip", "staging"], "{result:?}");
    match (&result, plan) {
        (Err(error), Err(refused)) => {
            assert_eq!(error.to_string(), refused.to_string());
            assert!(names(&staging).is_empty(), "left behind after {error}");
        }
        (Err(error), Ok(_)) => {
            // A header lied about sizes or the data is corrupt: found while writing.
            assert!(names(&staging).is_empty(), "left behind after {error}");
        }
        (Ok(_), Err(refused)) => panic!("extracted a zip the planner refuses: {refused}"),
        (Ok(extracted), Ok(plan)) => {
            assert_eq!(names(&staging), ["pkg"]);
            assert_eq!(extracted.entries, plan.len());
            assert!(extracted.bytes <= limits.max_total_bytes);
            check_tree(&destination, plan, extracted.bytes);
        }
    }
}

/// What was written under `destination` is exactly the plan.
fn check_tree(destination: &Path, plan: &[PlannedEntry], bytes: u64) {
    let mut expected: BTreeMap<PathBuf, EntryKind> = BTreeMap::new();
    for entry in plan {
        for ancestor in entry.path.ancestors().skip(1) {
            if !ancestor.as_os_str().is_empty() {
                expected
                    .entry(ancestor.to_owned())
                    .or_insert(EntryKind::Directory);
            }
        }
        expected.insert(entry.path.clone(), entry.kind);
    }
    let mut found = BTreeMap::new();
    walk(destination, Path::new(""), &mut found);
    let found_kinds: BTreeMap<PathBuf, EntryKind> = found
        .iter()
        .map(|(path, (kind, _, _))| (path.clone(), *kind))
        .collect();
    assert_eq!(found_kinds, expected, "the tree is not the plan");
    let mut written = 0;
    let canonical_root = destination.canonicalize().expect("destination exists");
    for entry in plan {
        let (_, size, mode) = found[&entry.path];
        assert_eq!(mode & 0o7000, 0, "{:?} has mode {mode:o}", entry.path);
        let full = destination.join(&entry.path);
        match entry.kind {
            EntryKind::File => {
                assert!(size <= entry.size, "{entry:?} holds {size} bytes");
                written += size;
            }
            EntryKind::Link => {
                let target = std::fs::read_link(&full).expect("a link");
                assert_eq!(
                    Some(target.as_path()),
                    entry.link_target.as_deref().map(Path::new)
                );
                if let Ok(resolved) = full.canonicalize() {
                    assert!(
                        resolved.starts_with(&canonical_root),
                        "{full:?} resolves to {resolved:?}"
                    );
                }
            }
            EntryKind::Directory => {}
        }
    }
    assert_eq!(written, bytes);
}

/// Every path under `dir` (relative to the destination) with its kind, size and mode.
fn walk(dir: &Path, relative: &Path, found: &mut BTreeMap<PathBuf, (EntryKind, u64, u32)>) {
    for entry in std::fs::read_dir(dir).expect("readable") {
        let entry = entry.expect("readable");
        let path = relative.join(entry.file_name());
        let metadata = std::fs::symlink_metadata(entry.path()).expect("metadata");
        let kind = if metadata.file_type().is_symlink() {
            EntryKind::Link
        } else if metadata.is_dir() {
            EntryKind::Directory
        } else {
            assert!(metadata.is_file(), "{path:?} is {:?}", metadata.file_type());
            EntryKind::File
        };
        found.insert(
            path.clone(),
            (kind, metadata.len(), metadata.permissions().mode()),
        );
        if kind == EntryKind::Directory {
            walk(&entry.path(), &path, found);
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("readable")
        .map(|entry| {
            entry
                .expect("readable")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}
