//! The agent runs as root and deletes what it finds in its state directory, so it refuses a state
//! directory someone else could have prepared, and never follows a link planted in it. Each case
//! starts the real binary on a prepared state directory: it must stop at once with an error that
//! names the path and the problem, having touched nothing.

mod common;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::FakeController;

/// Runs the agent on `state` against a fake controller; returns its exit code and stderr. The
/// agent must stop by itself: a refused state directory is not retried.
async fn run_agent(state: &Path) -> (Option<i32>, String) {
    let fake = FakeController::start();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tc-agent"))
        .args(["--server", &fake.url(), "--bootstrap-token"])
        .arg(common::BOOTSTRAP_TOKEN)
        .arg("--state-dir")
        .arg(state)
        .args(["--machine-id", "state-dir-test"])
        .env_remove("TC_AGENT_FAULT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the agent refuses the state directory and stops")
        .unwrap();
    assert!(
        fake.state().enrolments.is_empty(),
        "the agent enrolled with a refused state directory"
    );
    (
        output.status.code(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// A state directory as an agent leaves it, with one package installed.
fn prepared_state(root: &Path) -> std::path::PathBuf {
    let state = root.join("state");
    for dir in ["downloads", "staging", "packages/kiosk/1.0.0"] {
        std::fs::create_dir_all(state.join(dir)).unwrap();
    }
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    symlink("1.0.0", state.join("packages/kiosk/current")).unwrap();
    state
}

/// A directory outside the state directory with a file that must survive.
fn precious(root: &Path) -> std::path::PathBuf {
    let outside = root.join("somewhere");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious.txt"), "keep me").unwrap();
    outside
}

fn assert_refused(code: Option<i32>, stderr: &str, path: &Path, problem: &str) {
    assert_eq!(code, Some(1), "{stderr}");
    let expected = format!("{}: {problem}", path.display());
    assert!(
        stderr.contains(&expected),
        "expected `{expected}` in:\n{stderr}"
    );
}

#[tokio::test]
async fn a_planted_downloads_link_is_reported_and_its_target_not_emptied() {
    let temp = tempfile::tempdir().unwrap();
    let state = prepared_state(temp.path());
    let outside = precious(temp.path());
    std::fs::remove_dir(state.join("downloads")).unwrap();
    symlink(&outside, state.join("downloads")).unwrap();

    let (code, stderr) = run_agent(&state).await;
    assert_refused(
        code,
        &stderr,
        &state.join("downloads"),
        "is a symbolic link",
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("precious.txt")).unwrap(),
        "keep me"
    );
}

#[tokio::test]
async fn a_planted_link_among_the_packages_or_for_the_journal_is_refused() {
    for planted in [
        "packages/other",
        "staging",
        "state.json",
        "credentials.json",
    ] {
        let temp = tempfile::tempdir().unwrap();
        let state = prepared_state(temp.path());
        let outside = precious(temp.path());
        let link = state.join(planted);
        let _ = std::fs::remove_dir(&link);
        let target = if planted.ends_with(".json") {
            outside.join("precious.txt")
        } else {
            outside.clone()
        };
        symlink(&target, &link).unwrap();

        let (code, stderr) = run_agent(&state).await;
        assert_refused(code, &stderr, &link, "is a symbolic link");
        assert_eq!(
            std::fs::read_to_string(outside.join("precious.txt")).unwrap(),
            "keep me",
            "{planted}"
        );
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{planted}: the link is left for the admin to look at"
        );
    }
}

#[tokio::test]
async fn a_state_directory_writable_by_group_or_others_is_refused() {
    for (dir, mode) in [
        ("", 0o770),
        ("", 0o702),
        ("packages", 0o775),
        ("packages/kiosk", 0o777),
    ] {
        let temp = tempfile::tempdir().unwrap();
        let state = prepared_state(temp.path());
        let path = if dir.is_empty() {
            state.clone()
        } else {
            state.join(dir)
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();

        let (code, stderr) = run_agent(&state).await;
        assert_refused(
            code,
            &stderr,
            &path,
            &format!("is writable by group or others (mode {mode:04o})"),
        );
        assert!(
            state.join("packages/kiosk/1.0.0").is_dir(),
            "nothing is touched"
        );
    }
}

#[tokio::test]
async fn a_state_directory_owned_by_another_user_is_refused() {
    for dir in ["", "downloads"] {
        let temp = tempfile::tempdir().unwrap();
        let state = prepared_state(temp.path());
        let path = if dir.is_empty() {
            state.clone()
        } else {
            state.join(dir)
        };
        // The tests run as root (as the agent does), so another owner can be given.
        let nobody = 65534;
        assert_ne!(rustix::process::geteuid().as_raw(), nobody);
        std::os::unix::fs::chown(&path, Some(nobody), None).unwrap();

        let (code, stderr) = run_agent(&state).await;
        assert_refused(
            code,
            &stderr,
            &path,
            &format!("is owned by uid {nobody}, not by the agent's user"),
        );
    }
}
