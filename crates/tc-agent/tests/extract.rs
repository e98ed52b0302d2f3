//! Extraction of package zips: what is kept, and what is refused before anything is written.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Entry, build_zip, list};
use tc_agent::extract::{ExtractError, ExtractLimits, extract};

/// Writes `zip` to a temporary directory and extracts it into `<temp>/staging/pkg`.
fn check(zip: &[u8], limits: &ExtractLimits) -> (tempfile::TempDir, Result<(), ExtractError>) {
    let temp = tempfile::tempdir().unwrap();
    let zip_path = temp.path().join("package.zip");
    std::fs::write(&zip_path, zip).unwrap();
    std::fs::create_dir(temp.path().join("staging")).unwrap();
    let destination = temp.path().join("staging").join("pkg");
    let result = extract(&zip_path, &destination, limits).map(|_| ());
    (temp, result)
}

/// Asserts that extraction failed with a message naming `entry` and that nothing was written
/// anywhere: the staging directory is gone and the temporary directory only holds the zip and the
/// empty staging parent.
fn assert_refused(zip: &[u8], limits: &ExtractLimits, entry: &str, reason: &str) {
    let (temp, result) = check(zip, limits);
    let error = result.expect_err("the zip must be refused");
    let message = error.to_string();
    assert!(message.contains(&format!("`{entry}`")), "{message}");
    assert!(message.contains(reason), "{message}");
    assert_eq!(list(temp.path()), ["package.zip", "staging"]);
    assert!(list(&temp.path().join("staging")).is_empty());
    assert!(!Path::new("/tmp/tc-agent-escaped").exists());
}

#[test]
fn good_zip_keeps_nested_directories_and_the_executable_bit() {
    let zip = build_zip(&[
        Entry::Dir("bin/"),
        Entry::File("bin/app", b"#!/bin/sh\necho hi\n", 0o755),
        Entry::File("share/doc/deep/readme.txt", b"hello", 0o640),
        Entry::Link("bin/readme", "../share/doc/deep/readme.txt"),
        Entry::Link("self", "."),
    ]);
    let (temp, result) = check(&zip, &ExtractLimits::default());
    result.unwrap();
    let root = temp.path().join("staging/pkg");
    let mode = |path: &str| {
        std::fs::symlink_metadata(root.join(path))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("bin/app"), 0o755);
    assert_eq!(mode("share/doc/deep/readme.txt"), 0o640);
    assert_eq!(
        std::fs::read_to_string(root.join("share/doc/deep/readme.txt")).unwrap(),
        "hello"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("bin/readme")).unwrap(),
        "hello"
    );
    assert_eq!(
        std::fs::read_link(root.join("bin/readme")).unwrap(),
        Path::new("../share/doc/deep/readme.txt")
    );
    let output = std::process::Command::new(root.join("bin/app"))
        .output()
        .unwrap();
    assert_eq!(output.stdout, b"hi\n");
}

#[test]
fn parent_directory_entry_is_refused() {
    let zip = build_zip(&[
        Entry::File("ok.txt", b"fine", 0o644),
        Entry::File("../../tmp/tc-agent-escaped", b"evil", 0o644),
    ]);
    assert_refused(
        &zip,
        &ExtractLimits::default(),
        "../../tmp/tc-agent-escaped",
        "contains `..`",
    );
}

#[test]
fn absolute_path_entry_is_refused() {
    let zip = build_zip(&[Entry::File("/tmp/tc-agent-escaped", b"evil", 0o644)]);
    assert_refused(
        &zip,
        &ExtractLimits::default(),
        "/tmp/tc-agent-escaped",
        "is an absolute path",
    );
}

#[test]
fn symlink_escaping_the_package_is_refused() {
    let zip = build_zip(&[
        Entry::File("ok.txt", b"fine", 0o644),
        Entry::Link("lib/etc", "../../../../etc"),
    ]);
    assert_refused(
        &zip,
        &ExtractLimits::default(),
        "lib/etc",
        "points outside the package",
    );
}

#[test]
fn absolute_symlink_is_refused() {
    let zip = build_zip(&[Entry::Link("passwd", "/etc/passwd")]);
    assert_refused(
        &zip,
        &ExtractLimits::default(),
        "passwd",
        "is an absolute path",
    );
}

#[test]
fn entry_written_through_a_symlink_is_refused() {
    let zip = build_zip(&[
        Entry::Link("out", "."),
        Entry::File("out/file.txt", b"through a link", 0o644),
    ]);
    assert_refused(
        &zip,
        &ExtractLimits::default(),
        "out/file.txt",
        "lies under a symbolic link",
    );
}

#[test]
fn zip_bomb_with_a_high_compression_ratio_is_refused() {
    let zeros = vec![0u8; 4 << 20];
    let zip = build_zip(&[
        Entry::File("small.txt", b"fine", 0o644),
        Entry::File("bomb.bin", &zeros, 0o644),
    ]);
    assert!(zip.len() < 100_000, "the test zip compresses well");
    assert_refused(
        &zip,
        &ExtractLimits::default(),
        "bomb.bin",
        "compression ratio",
    );
}

#[test]
fn total_size_over_the_limit_is_refused() {
    // Pseudo-random bytes do not compress, so only the size limit can stop them.
    let mut noise = Vec::with_capacity(300_000);
    let mut seed: u32 = 12345;
    for _ in 0..300_000 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        noise.push((seed >> 16) as u8);
    }
    let zip = build_zip(&[
        Entry::File("a.bin", &noise[..150_000], 0o644),
        Entry::File("b.bin", &noise[150_000..], 0o644),
    ]);
    let limits = ExtractLimits {
        max_total_bytes: 200_000,
        ..ExtractLimits::default()
    };
    assert_refused(&zip, &limits, "b.bin", "over the limit of 200000 bytes");
}

#[test]
fn too_many_entries_are_refused() {
    let names: Vec<String> = (0..12).map(|n| format!("file-{n:02}.txt")).collect();
    let entries: Vec<Entry<'_>> = names
        .iter()
        .map(|name| Entry::File(name, b"x", 0o644))
        .collect();
    let zip = build_zip(&entries);
    let limits = ExtractLimits {
        max_entries: 10,
        ..ExtractLimits::default()
    };
    assert_refused(
        &zip,
        &limits,
        "file-10.txt",
        "too many entries: 12 (limit 10)",
    );
}

#[test]
fn duplicate_entries_are_refused() {
    let zip = build_zip(&[
        Entry::File("config", b"one", 0o644),
        Entry::Link("./config", "elsewhere"),
    ]);
    assert_refused(
        &zip,
        &ExtractLimits::default(),
        "./config",
        "appears more than once",
    );
}

#[test]
fn garbage_is_not_a_zip() {
    let (_temp, result) = check(b"this is not a zip file", &ExtractLimits::default());
    let message = result.unwrap_err().to_string();
    assert!(message.contains("not a valid zip archive"), "{message}");
}
