//! The agent's main loop in-process against a fake controller: enrolment, heartbeats with
//! inventory, the long-poll, an unreachable controller and a revoked token.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{BOOTSTRAP_TOKEN, FakeController, assert_active_complete, package_zip, wait_for};
use tc_agent::backoff::Backoff;
use tc_agent::client::{AgentError, RunOptions, RunOutcome, run};
use tc_agent::config::{AgentConfig, BootstrapToken, parse_server};
use tc_agent::state::{Credentials, StateDir};
use tc_proto::Hooks;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(20);

fn options(fake: &FakeController, state_dir: &std::path::Path) -> RunOptions {
    fake.state().blobs_need_token = true;
    let mut options = RunOptions::new(AgentConfig {
        server: parse_server(&fake.url()).unwrap(),
        bootstrap_token: Some(BootstrapToken::Value(BOOTSTRAP_TOKEN.into())),
        state_dir: state_dir.to_owned(),
        labels: BTreeMap::from([("site".to_owned(), "berlin".to_owned())]),
        name: "kiosk-1".into(),
        machine_id: Some("machine-test-1".into()),
        ca: None,
        trusted_keys: Vec::new(),
        history_interval: Duration::from_secs(60),
        self_update_check_in: Duration::from_secs(120),
        tasks: Default::default(),
    });
    options.retry = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
    options.heartbeat_bounds = (Duration::from_millis(50), Duration::from_secs(3600));
    options.engine.download.backoff =
        Backoff::new(Duration::from_millis(20), Duration::from_millis(100));
    options.engine.retry = Backoff::new(Duration::from_millis(200), Duration::from_millis(500));
    options
}

/// A running in-process agent, stopped when dropped.
struct Agent {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<RunOutcome, AgentError>>,
}

impl Agent {
    fn start(options: RunOptions) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(options, async {
            let _ = stopped.await;
        }));
        Agent {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the agent stops")
            .unwrap()
            .unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn heartbeats_summary(fake: &FakeController) -> String {
    let state = fake.state();
    format!(
        "{} enrolments, {} heartbeats, last: {:?}",
        state.enrolments.len(),
        state.heartbeats.len(),
        state
            .heartbeats
            .last()
            .map(|h| (&h.observed_revision, &h.packages))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrols_reports_inventory_and_installs_the_desired_packages() {
    let fake = FakeController::start();
    let temp = tempfile::tempdir().unwrap();
    let package = fake.package("kiosk", "1.0.0", package_zip("1.0.0"), Hooks::default());
    let revision = fake.set_desired(vec![package]);
    let agent = Agent::start(options(&fake, temp.path()));

    wait_for(
        WAIT,
        || fake.reports_installed("kiosk", "1.0.0", revision),
        || heartbeats_summary(&fake),
    )
    .await;
    let dir = StateDir::new(temp.path());
    assert_active_complete(&dir, "kiosk", "1.0.0");
    {
        let state = fake.state();
        let enrolment = &state.enrolments[0];
        assert_eq!(state.enrolments.len(), 1);
        assert_eq!(enrolment.name, "kiosk-1");
        assert_eq!(enrolment.machine_id, "machine-test-1");
        assert_eq!(enrolment.labels["site"], "berlin");
        let first = &state.heartbeats[0];
        let inventory = first.inventory.as_ref().expect("full inventory at start");
        assert_eq!(first.inventory_hash, tc_proto::inventory_hash(inventory));
        assert!(inventory.cpu_cores >= 1);
        assert!(inventory.memory_total_bytes > 0);
        assert!(!inventory.agent_version.is_empty());
        assert!(first.load.uptime_seconds > 0);
    }
    let credentials = Credentials::load(&dir).unwrap().unwrap();
    assert_eq!(credentials.client_token.as_deref(), Some("client-token-1"));
    let mode = std::fs::metadata(dir.credentials())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Later heartbeats carry only the hash while it stays the same. (Free disk space is part of
    // the inventory, so a busy disk may change the hash now and then: wait for a lean one.)
    wait_for(
        WAIT,
        || {
            let state = fake.state();
            state.heartbeats[1..].iter().any(|h| h.inventory.is_none())
        },
        || heartbeats_summary(&fake),
    )
    .await;
    {
        let state = fake.state();
        let mut last_sent = None;
        for heartbeat in &state.heartbeats {
            match &heartbeat.inventory {
                Some(inventory) => {
                    assert_eq!(
                        heartbeat.inventory_hash,
                        tc_proto::inventory_hash(inventory)
                    );
                    last_sent = Some(heartbeat.inventory_hash.clone());
                }
                None => assert_eq!(
                    Some(&heartbeat.inventory_hash),
                    last_sent.as_ref(),
                    "the inventory is left out only when its hash did not change"
                ),
            }
        }
    }
    fake.state().send_inventory_next = true;
    let seen = fake.state().heartbeats.len();
    wait_for(
        WAIT,
        || {
            let state = fake.state();
            state.heartbeats.len() > seen + 1 && state.heartbeats[seen + 1].inventory.is_some()
        },
        || heartbeats_summary(&fake),
    )
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_delivers_a_new_desired_state_without_waiting_for_a_heartbeat() {
    let fake = FakeController::start();
    fake.state().heartbeat_millis = 60_000;
    let temp = tempfile::tempdir().unwrap();
    let v1 = fake.package("kiosk", "1.0.0", package_zip("1.0.0"), Hooks::default());
    let revision = fake.set_desired(vec![v1]);
    let agent = Agent::start(options(&fake, temp.path()));
    wait_for(
        WAIT,
        || fake.reports_installed("kiosk", "1.0.0", revision),
        || heartbeats_summary(&fake),
    )
    .await;
    wait_for(
        WAIT,
        || fake.state().long_polls > 0,
        || "no long-poll".into(),
    )
    .await;

    let v2 = fake.package("kiosk", "2.0.0", package_zip("2.0.0"), Hooks::default());
    let started = std::time::Instant::now();
    let revision = fake.set_desired(vec![v2]);
    // The heartbeat interval is a minute: only the long-poll can bring this in time.
    wait_for(
        Duration::from_secs(10),
        || fake.reports_installed("kiosk", "2.0.0", revision),
        || heartbeats_summary(&fake),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_active_complete(&StateDir::new(temp.path()), "kiosk", "2.0.0");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_going_away_and_coming_back_is_caught_up_without_a_restart() {
    let mut fake = FakeController::start();
    let temp = tempfile::tempdir().unwrap();
    let v1 = fake.package("kiosk", "1.0.0", package_zip("1.0.0"), Hooks::default());
    let revision = fake.set_desired(vec![v1]);
    let agent = Agent::start(options(&fake, temp.path()));
    wait_for(
        WAIT,
        || fake.reports_installed("kiosk", "1.0.0", revision),
        || heartbeats_summary(&fake),
    )
    .await;

    fake.stop();
    let v2 = fake.package("kiosk", "2.0.0", package_zip("2.0.0"), Hooks::default());
    let revision = fake.set_desired(vec![v2]);
    let before = fake.state().heartbeats.len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        fake.state().heartbeats.len(),
        before,
        "the controller is away"
    );
    let connection = std::fs::read_to_string(StateDir::new(temp.path()).connection()).unwrap();
    assert!(connection.contains("lastError"), "{connection}");

    fake.restart();
    wait_for(
        WAIT,
        || fake.reports_installed("kiosk", "2.0.0", revision),
        || heartbeats_summary(&fake),
    )
    .await;
    assert_active_complete(&StateDir::new(temp.path()), "kiosk", "2.0.0");
    assert_eq!(fake.state().enrolments.len(), 1, "no re-enrolment needed");
    wait_for(
        WAIT,
        || {
            std::fs::read_to_string(StateDir::new(temp.path()).connection())
                .is_ok_and(|text| !text.contains("lastError\": {"))
        },
        || "the connection error is cleared".into(),
    )
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_leads_to_a_new_enrolment_with_the_bootstrap_token() {
    let fake = FakeController::start();
    let temp = tempfile::tempdir().unwrap();
    let agent = Agent::start(options(&fake, temp.path()));
    wait_for(
        WAIT,
        || !fake.state().heartbeats.is_empty(),
        || heartbeats_summary(&fake),
    )
    .await;
    fake.state().tokens.clear();
    wait_for(
        WAIT,
        || fake.state().enrolments.len() == 2,
        || heartbeats_summary(&fake),
    )
    .await;
    let seen = fake.state().heartbeats.len();
    wait_for(
        WAIT,
        || fake.state().heartbeats.len() > seen,
        || heartbeats_summary(&fake),
    )
    .await;
    let credentials = Credentials::load(&StateDir::new(temp.path()))
        .unwrap()
        .unwrap();
    assert_eq!(credentials.client_token.as_deref(), Some("client-token-2"));
    agent.stop().await;
}

#[tokio::test]
async fn without_credentials_or_bootstrap_token_the_agent_stops_with_a_clear_error() {
    let fake = FakeController::start();
    let temp = tempfile::tempdir().unwrap();
    let mut options = options(&fake, temp.path());
    options.config.bootstrap_token = None;
    let error = tokio::time::timeout(WAIT, run(options, std::future::pending()))
        .await
        .expect("the agent gives up at once")
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("not enrolled"), "{message}");
    assert!(message.contains("--bootstrap-token-file"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bootstrap_token_is_reported_and_a_corrected_token_file_is_picked_up() {
    let fake = FakeController::start();
    let temp = tempfile::tempdir().unwrap();
    let token_file = temp.path().join("bootstrap.token");
    std::fs::write(&token_file, "wrong\n").unwrap();
    let mut options = options(&fake, &temp.path().join("state"));
    options.config.bootstrap_token = Some(BootstrapToken::File(token_file.clone()));
    let agent = Agent::start(options);
    let connection = StateDir::new(temp.path().join("state")).connection();
    wait_for(
        WAIT,
        || {
            std::fs::read_to_string(&connection)
                .is_ok_and(|text| text.contains("invalid bootstrap token"))
        },
        || "the enrolment error is recorded".into(),
    )
    .await;
    assert!(fake.state().enrolments.is_empty());

    std::fs::write(&token_file, format!("{BOOTSTRAP_TOKEN}\n")).unwrap();
    wait_for(
        WAIT,
        || !fake.state().heartbeats.is_empty(),
        || heartbeats_summary(&fake),
    )
    .await;
    assert_eq!(fake.state().enrolments.len(), 1);
    agent.stop().await;
}

/// Found by fuzzing the controller's answers: a client token that cannot be sent in a header
/// (here with a line break) was stored, and every heartbeat then failed before leaving the agent,
/// as a network error, with no way back to enrolment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_answer_with_an_unsendable_client_token_is_refused_and_enrolment_retried() {
    let fake = FakeController::start();
    fake.state().token_prefix = "client\ntoken-".into();
    let temp = tempfile::tempdir().unwrap();
    let state = StateDir::new(temp.path().join("state"));
    let agent = Agent::start(options(&fake, state.root()));
    wait_for(
        WAIT,
        || {
            std::fs::read_to_string(state.connection())
                .is_ok_and(|text| text.contains("client token that is not printable ASCII"))
        },
        || format!("the refusal is recorded; {}", heartbeats_summary(&fake)),
    )
    .await;
    assert!(!state.credentials().exists(), "the bad token is not stored");

    fake.state().token_prefix = "client-token-".into();
    wait_for(
        WAIT,
        || !fake.state().heartbeats.is_empty(),
        || heartbeats_summary(&fake),
    )
    .await;
    let credentials = Credentials::load(&state).unwrap().unwrap();
    assert!(
        credentials
            .client_token
            .is_some_and(|token| token.starts_with("client-token-"))
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_zero_from_a_new_controller_removes_nothing() {
    let old = FakeController::start();
    let temp = tempfile::tempdir().unwrap();
    let v1 = old.package("kiosk", "1.0.0", package_zip("1.0.0"), Hooks::default());
    let revision = old.set_desired(vec![v1]);
    let agent = Agent::start(options(&old, temp.path()));
    wait_for(
        WAIT,
        || old.reports_installed("kiosk", "1.0.0", revision),
        || heartbeats_summary(&old),
    )
    .await;
    agent.stop().await;

    // A controller that knows nothing about this client yet answers with revision 0.
    let new = FakeController::start();
    let agent = Agent::start(options(&new, temp.path()));
    wait_for(
        WAIT,
        || new.state().heartbeats.len() >= 5,
        || heartbeats_summary(&new),
    )
    .await;
    let dir = StateDir::new(temp.path());
    assert_active_complete(&dir, "kiosk", "1.0.0");
    assert_eq!(
        new.state().enrolments.len(),
        1,
        "enrolled with the new controller"
    );

    // An explicit assignment without the package does remove it.
    let revision = new.set_desired(vec![]);
    wait_for(
        WAIT,
        || {
            let state = new.state();
            state
                .heartbeats
                .last()
                .is_some_and(|h| h.observed_revision == revision && h.packages.is_empty())
        },
        || heartbeats_summary(&new),
    )
    .await;
    assert!(!dir.package("kiosk").exists());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_release_runs_post_install_once_over_many_rounds_until_an_admin_retries() {
    let fake = FakeController::start();
    // A heartbeat every 100 ms, and a failure backoff of 200-500 ms (see `options`): anything
    // the agent would retry, it retries many times over the rounds below.
    fake.state().heartbeat_millis = 100;
    let temp = tempfile::tempdir().unwrap();
    let log = temp.path().join("post-install.log");
    let v1 = fake.package("kiosk", "1.0.0", package_zip("1.0.0"), Hooks::default());
    let revision = fake.set_desired(vec![v1]);
    let agent = Agent::start(options(&fake, &temp.path().join("state")));
    wait_for(
        WAIT,
        || fake.reports_installed("kiosk", "1.0.0", revision),
        || heartbeats_summary(&fake),
    )
    .await;

    let broken = fake.package(
        "kiosk",
        "2.0.0",
        package_zip("2.0.0"),
        common::failing_release_hooks(&log),
    );
    let revision = fake.set_desired(vec![broken.clone()]);
    common::wait_for_failed_rounds(&fake, 10, "2.0.0", revision).await;
    // New revisions with the same release reach the agent through the long-poll.
    for _ in 0..3 {
        let revision = fake.set_desired(vec![broken.clone()]);
        common::wait_for_failed_rounds(&fake, 3, "2.0.0", revision).await;
    }
    assert_eq!(common::read_log(&log), ["postInstall 2.0.0"]);
    assert_active_complete(&StateDir::new(temp.path().join("state")), "kiosk", "1.0.0");

    // An admin's retry: a new attempt, installed at once, failing once more.
    let revision = fake.set_desired(vec![tc_proto::DesiredPackage {
        attempt: 1,
        ..broken
    }]);
    wait_for(
        WAIT,
        || common::read_log(&log).len() == 2,
        || {
            format!(
                "{:?}\n{}",
                common::read_log(&log),
                heartbeats_summary(&fake)
            )
        },
    )
    .await;
    common::wait_for_failed_rounds(&fake, 10, "2.0.0", revision).await;
    assert_eq!(
        common::read_log(&log),
        ["postInstall 2.0.0", "postInstall 2.0.0"]
    );
    agent.stop().await;
}
