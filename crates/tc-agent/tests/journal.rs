//! The journal as the real binary keeps it when writing it fails: a failed save is retried with
//! backoff, and the agent never reports a state it has not written.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{FakeController, package_zip, wait_for};
use tc_proto::Hooks;

const WAIT: Duration = Duration::from_secs(30);

fn start_agent(fake: &FakeController, state: &Path, log: &Path) -> tokio::process::Child {
    let mut command = common::agent_command(&fake.url(), None, state);
    command
        .args(["--bootstrap-token", common::BOOTSTRAP_TOKEN])
        .args(["--machine-id", "journal-test"])
        .stderr(std::fs::File::create(log).unwrap());
    tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The observed revision written in `state.json`.
fn revision_on_disk(state: &Path) -> u64 {
    let text = std::fs::read_to_string(state.join("state.json")).unwrap();
    let journal: serde_json::Value = serde_json::from_str(&text).unwrap();
    journal["observedRevision"].as_u64().unwrap()
}

/// Passes of the install engine that stopped because the journal could not be written.
fn failed_saves(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("install engine failed") && line.contains(".state.json.tmp"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_journal_save_is_retried_and_nothing_unsaved_is_reported() {
    let fake = FakeController::start();
    let temp = tempfile::tempdir().unwrap();
    let state = temp.path().join("state");
    let log = temp.path().join("agent.log");
    let kiosk = fake.package("kiosk", "1.0.0", package_zip("1.0.0"), Hooks::default());
    let first = fake.set_desired(vec![kiosk.clone()]);
    let mut agent = start_agent(&fake, &state, &log);
    let summary = || {
        format!(
            "last heartbeat: {:?}\nlog:\n{}",
            fake.state().heartbeats.last(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    wait_for(
        WAIT,
        || fake.reports_installed("kiosk", "1.0.0", first),
        summary,
    )
    .await;
    assert_eq!(revision_on_disk(&state), first);

    // From now on the journal cannot be written (as on a full disk): the temporary file it is
    // written to cannot be created. A new desired revision asks for no package work, only for
    // the journal to record that revision.
    let blocker = state.join(".state.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let second = fake.set_desired(vec![kiosk]);
    wait_for(WAIT, || failed_saves(&log) >= 2, summary).await;
    let heartbeats = fake.state().heartbeats.len();
    wait_for(WAIT, || fake.state().heartbeats.len() > heartbeats, summary).await;
    let reported: Vec<u64> = fake
        .state()
        .heartbeats
        .iter()
        .map(|heartbeat| heartbeat.observed_revision)
        .collect();
    assert!(
        reported.iter().all(|revision| *revision <= first),
        "a revision that is not in the journal was reported: {reported:?}\n{}",
        summary()
    );
    assert_eq!(revision_on_disk(&state), first);

    // Once the journal can be written again, the next retry writes it, and only then is the new
    // revision reported.
    std::fs::remove_dir(&blocker).unwrap();
    wait_for(
        WAIT,
        || revision_on_disk(&state) == second && fake.reports_installed("kiosk", "1.0.0", second),
        summary,
    )
    .await;
    agent.kill().await.unwrap();
}
