//! The data directory holds the tokens, the database and the blobs: only the controller's user may
//! read it (directories 0700, files 0600), a data directory left readable is tightened at start,
//! and the temporary file of an upload a stop interrupted is removed at the next start.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use reqwest::StatusCode;

/// Every path under `root` (itself included) with its permission bits.
fn modes(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        out.push((path.clone(), metadata.permissions().mode() & 0o7777));
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

/// Checks that nothing under `root` is open to group or others, and that the files the controller
/// makes are there.
fn assert_private(root: &Path) {
    let modes = modes(root);
    let open: Vec<_> = modes.iter().filter(|(_, mode)| mode & 0o077 != 0).collect();
    assert!(open.is_empty(), "readable by others: {open:?}");
    for name in [
        "admin.token",
        "bootstrap.token",
        "thinfleet.redb",
        "blobs/sha256",
    ] {
        assert!(
            modes.iter().any(|(path, _)| *path == root.join(name)),
            "{name} missing: {modes:?}"
        );
    }
    assert!(modes.contains(&(root.to_owned(), 0o700)), "{modes:?}");
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn the_data_directory_is_private_and_an_interrupted_upload_is_cleared_at_start() {
    let controller = TestController::start().await;
    let admin = Api::admin(&controller);
    let (status, blob) = admin.put_blob(package_zip("kiosk")).await;
    assert_eq!(status, StatusCode::OK, "{blob}");
    let (data, temp) = controller.stop_keep_data().await;
    assert_private(&data);
    let blob_file = data
        .join("blobs/sha256")
        .join(blob["sha256"].as_str().unwrap());
    assert_eq!(modes(&blob_file), vec![(blob_file.clone(), 0o600)]);

    // As an older controller (or a copy with the default umask) leaves it, and an upload cut
    // short by a crash: its temporary file stays in blobs/tmp.
    for (path, mode) in [
        (data.clone(), 0o755),
        (data.join("blobs"), 0o755),
        (data.join("blobs/sha256"), 0o775),
        (data.join("thinfleet.redb"), 0o644),
        (data.join("admin.token"), 0o644),
        (blob_file.clone(), 0o644),
    ] {
        set_mode(&path, mode);
    }
    let leftover = data.join("blobs/tmp/2f1a9c0d-interrupted");
    std::fs::write(&leftover, vec![0u8; 4096]).unwrap();

    let controller = TestController::start_in(&data, |_| {}).await;
    assert!(!leftover.exists(), "the interrupted upload's file is gone");
    assert_private(&data);
    assert_eq!(modes(&blob_file), vec![(blob_file.clone(), 0o600)]);
    // The blob is still served.
    let admin = Api::admin(&controller);
    let (status, _) = admin
        .get(&format!(
            "/blobs/sha256/{}",
            blob["sha256"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    controller.stop().await;
    drop(temp);
}
