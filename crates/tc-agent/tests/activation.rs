//! Progressive delivery on the agent: updates and removals of packages the client runs wait for
//! a maintenance window or the next boot, downloaded and verified ahead and reported `staged`;
//! they are activated when the window opens (also with the controller gone, also after an agent
//! restart), at a new boot, or at once on activate-now. A first install is never held back, and a
//! window that closes during a pass lets the change in progress finish and starts no other.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    BOOTSTRAP_TOKEN, FakeController, assert_active_complete, current_version, list, logging_hooks,
    package_zip, read_log, shell_hook, wait_for,
};
use tc_agent::backoff::Backoff;
use tc_agent::client::{AgentError, RunOptions, RunOutcome, run};
use tc_agent::config::tasks::TaskConfig;
use tc_agent::config::{AgentConfig, BootstrapToken, parse_server};
use tc_agent::download::{DownloadOptions, Fetcher};
use tc_agent::engine::{Engine, EngineOptions};
use tc_agent::signature::TrustedKey;
use tc_agent::state::{Journal, StateDir};
use tc_proto::activation::{Activation, StagedWait, Window};
use tc_proto::{DesiredPackage, DesiredState, PackageReport, PackageState, Timestamp};
use tokio::sync::oneshot;

/// How long any single expected change may take.
const WAIT: Duration = Duration::from_secs(60);

fn seconds_from_now(seconds: i64) -> Timestamp {
    let now = Timestamp::now().unix_millis() as i64;
    Timestamp::from_unix_millis((now + seconds * 1000).max(0) as u64)
}

/// Updates and removals restricted to `windows`.
fn in_windows(windows: &[(Timestamp, Timestamp)]) -> Activation {
    Activation {
        windows: windows
            .iter()
            .map(|&(start, end)| Window { start, end })
            .collect(),
        windowed: true,
        ..Activation::default()
    }
}

/// Restricted to a window that opens in an hour.
fn window_in_an_hour() -> (Activation, Timestamp) {
    let start = seconds_from_now(3600);
    (in_windows(&[(start, seconds_from_now(7200))]), start)
}

/// The install engine against the fake controller's blob server.
struct Harness {
    fake: FakeController,
    temp: tempfile::TempDir,
    dir: StateDir,
    fetcher: Fetcher,
    revision: u64,
}

impl Harness {
    fn new() -> Self {
        let fake = FakeController::start();
        let temp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(temp.path().join("state"));
        let server = parse_server(&fake.url()).unwrap();
        let http = tc_agent::client::http_client(&server, None, Path::new("unused")).unwrap();
        let fetcher = Fetcher::new(
            http,
            server,
            DownloadOptions {
                attempts: 2,
                backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(20)),
                idle_timeout: Duration::from_secs(5),
            },
        );
        Harness {
            fake,
            temp,
            dir,
            fetcher,
            revision: 0,
        }
    }

    fn open(&self) -> Engine {
        self.open_trusting(Vec::new())
    }

    fn open_trusting(&self, trusted_keys: Vec<TrustedKey>) -> Engine {
        let options = EngineOptions {
            retry: Backoff::new(Duration::from_secs(60), Duration::from_secs(60)),
            trusted_keys,
            ..EngineOptions::default()
        };
        Engine::open(self.dir.clone(), options).unwrap()
    }

    fn log(&self) -> PathBuf {
        self.temp.path().join("hooks.log")
    }

    fn package(&self, name: &str, version: &str) -> DesiredPackage {
        self.fake.package(
            name,
            version,
            package_zip(version),
            logging_hooks(&self.log()),
        )
    }

    fn desired(&mut self, packages: Vec<DesiredPackage>, activation: Activation) -> DesiredState {
        self.revision += 1;
        DesiredState {
            revision: self.revision,
            packages,
            decommission: false,
            activation,
        }
    }

    async fn converge(&self, engine: &mut Engine, desired: &DesiredState) {
        engine
            .converge(desired, &self.fetcher, &mut |_| true)
            .await
            .unwrap();
    }

    /// An engine running `name` 1.0.0, installed with no restriction.
    async fn running_1_0_0(&mut self, names: &[&str]) -> Engine {
        let mut engine = self.open();
        let packages = names
            .iter()
            .map(|name| self.package(name, "1.0.0"))
            .collect();
        let desired = self.desired(packages, Activation::default());
        self.converge(&mut engine, &desired).await;
        for name in names {
            assert_eq!(report(&engine, name).state, PackageState::Installed);
        }
        engine
    }

    fn blob_requests(&self) -> usize {
        self.fake.state().blob_ranges.len()
    }
}

fn report(engine: &Engine, name: &str) -> PackageReport {
    let snapshot = engine.snapshot();
    snapshot
        .packages
        .iter()
        .find(|report| report.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("no report for {name}: {snapshot:?}"))
}

/// Asserts that `report` is the update to 2.0.0 staged while 1.0.0 runs.
fn assert_update_staged(report: &PackageReport, waiting_for: StagedWait, at: Option<Timestamp>) {
    assert_eq!(report.state, PackageState::Installing, "{report:?}");
    assert_eq!(report.version, "2.0.0", "{report:?}");
    assert_eq!(
        report.active_version.as_deref(),
        Some("1.0.0"),
        "{report:?}"
    );
    let staged = report.staged.as_ref().expect("reported staged");
    assert_eq!(staged.waiting_for, waiting_for, "{report:?}");
    assert_eq!(staged.activates_at, at, "{report:?}");
}

#[tokio::test]
async fn an_update_outside_any_window_is_downloaded_and_verified_ahead_and_activated_on_activate_now()
 {
    let mut h = Harness::new();
    let mut engine = h.running_1_0_0(&["kiosk"]).await;
    let hooks_before = read_log(&h.log());
    let update = h.package("kiosk", "2.0.0");
    let (activation, opens) = window_in_an_hour();
    let desired = h.desired(vec![update.clone()], activation.clone());
    h.converge(&mut engine, &desired).await;

    assert_update_staged(&report(&engine, "kiosk"), StagedWait::Window, Some(opens));
    // Downloaded and verified, kept for the activation; nothing extracted, no hook run, the
    // running version untouched.
    let zip = h.dir.downloads().join(format!("{}.zip", update.sha256));
    assert_eq!(std::fs::read(&zip).unwrap(), package_zip("2.0.0"));
    assert_active_complete(&h.dir, "kiosk", "1.0.0");
    assert_eq!(list(&h.dir.package("kiosk")), ["1.0.0", "current"]);
    assert!(list(&h.dir.staging()).is_empty());
    assert_eq!(read_log(&h.log()), hooks_before);
    assert_eq!(
        engine
            .next_activation_at(Timestamp::now())
            .map(|at| at <= opens),
        Some(true)
    );

    // The journal says so too: a restarted engine reports the same, and downloads nothing again.
    let since = report(&engine, "kiosk").staged.unwrap().since;
    drop(engine);
    let requests = h.blob_requests();
    let mut engine = h.open();
    h.converge(&mut engine, &desired).await;
    assert_update_staged(&report(&engine, "kiosk"), StagedWait::Window, Some(opens));
    assert_eq!(report(&engine, "kiosk").staged.unwrap().since, since);
    assert_eq!(h.blob_requests(), requests, "the staged zip is reused");
    assert_eq!(read_log(&h.log()), hooks_before);

    // Activate-now: installed at once through the usual path, with its hooks.
    let now = Activation {
        now: true,
        ..activation
    };
    let desired = h.desired(vec![update], now);
    h.converge(&mut engine, &desired).await;
    let installed = report(&engine, "kiosk");
    assert_eq!(installed.state, PackageState::Installed, "{installed:?}");
    assert_eq!(installed.version, "2.0.0");
    assert_eq!(installed.staged, None);
    assert_active_complete(&h.dir, "kiosk", "2.0.0");
    assert_eq!(h.blob_requests(), requests, "activated from the staged zip");
    assert_eq!(
        read_log(&h.log())[hooks_before.len()..],
        ["preInstall 2.0.0", "postInstall 2.0.0", "healthCheck 2.0.0"]
    );
    assert!(
        list(&h.dir.downloads()).is_empty(),
        "the staged zip is cleaned up"
    );
    assert_eq!(engine.next_activation_at(Timestamp::now()), None);
}

#[tokio::test]
async fn a_staged_download_that_fails_verification_is_reported_failed_and_the_old_version_runs() {
    let mut h = Harness::new();
    let mut engine = h.running_1_0_0(&["kiosk"]).await;
    let hooks_before = read_log(&h.log());
    let update = h.package("kiosk", "2.0.0");
    // The controller serves other bytes than the sha256 the desired package names.
    h.fake
        .state()
        .blobs
        .insert(update.sha256.clone(), package_zip("2.0.1"));
    let (activation, _) = window_in_an_hour();
    let desired = h.desired(vec![update.clone()], activation);
    h.converge(&mut engine, &desired).await;

    let failed = report(&engine, "kiosk");
    assert_eq!(failed.state, PackageState::Failed, "{failed:?}");
    assert_eq!(failed.version, "2.0.0");
    assert_eq!(failed.active_version.as_deref(), Some("1.0.0"));
    assert_eq!(failed.staged, None);
    let message = failed.message.unwrap();
    assert!(
        message.contains("download failed") && message.contains("1.0.0 stays active"),
        "{message}"
    );
    assert!(
        !h.dir
            .downloads()
            .join(format!("{}.zip", update.sha256))
            .exists()
    );
    assert_active_complete(&h.dir, "kiosk", "1.0.0");
    assert_eq!(read_log(&h.log()), hooks_before);
}

/// A minisign key pair made in the test: the trusted key and a signer.
fn key_pair() -> (TrustedKey, impl Fn(&[u8]) -> String) {
    let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let trusted = TrustedKey::parse(&pair.pk.to_base64()).unwrap();
    let secret = pair.sk;
    let sign = move |zip: &[u8]| {
        minisign::sign(None, &secret, zip, Some("timestamp:0\tfile:p.zip"), None)
            .unwrap()
            .into_string()
    };
    (trusted, sign)
}

#[tokio::test]
async fn an_agent_with_trusted_keys_checks_the_signature_of_an_update_it_stages() {
    let mut h = Harness::new();
    let (trusted, sign) = key_pair();
    let (_, sign_with_another_key) = key_pair();
    let mut engine = h.open_trusting(vec![trusted]);
    let mut first = h.package("kiosk", "1.0.0");
    first.signature = Some(sign(&package_zip("1.0.0")));
    let desired = h.desired(vec![first], Activation::default());
    h.converge(&mut engine, &desired).await;
    assert_eq!(report(&engine, "kiosk").state, PackageState::Installed);
    let hooks_before = read_log(&h.log());
    let (activation, opens) = window_in_an_hour();

    // Signed by a key the agent does not trust: refused while staging, the old version runs.
    let mut forged = h.package("kiosk", "2.0.0");
    forged.signature = Some(sign_with_another_key(&package_zip("2.0.0")));
    let desired = h.desired(vec![forged], activation.clone());
    h.converge(&mut engine, &desired).await;
    let refused = report(&engine, "kiosk");
    assert_eq!(refused.state, PackageState::Failed, "{refused:?}");
    assert_eq!(refused.version, "2.0.0");
    assert_eq!(refused.staged, None);
    let message = refused.message.unwrap();
    assert!(message.starts_with("refused: "), "{message}");
    assert!(message.ends_with("1.0.0 stays active"), "{message}");
    assert_active_complete(&h.dir, "kiosk", "1.0.0");

    // Signed with the trusted key: staged.
    let mut signed = h.package("kiosk", "2.0.0");
    signed.signature = Some(sign(&package_zip("2.0.0")));
    signed.attempt = 1;
    let desired = h.desired(vec![signed], activation);
    h.converge(&mut engine, &desired).await;
    assert_update_staged(&report(&engine, "kiosk"), StagedWait::Window, Some(opens));
    assert_active_complete(&h.dir, "kiosk", "1.0.0");
    assert_eq!(read_log(&h.log()), hooks_before);
}

#[tokio::test]
async fn a_staged_update_no_longer_assigned_is_dropped_with_its_download() {
    let mut h = Harness::new();
    let mut engine = h.running_1_0_0(&["kiosk"]).await;
    let running = h.package("kiosk", "1.0.0");
    let update = h.package("kiosk", "2.0.0");
    let (activation, _) = window_in_an_hour();
    let desired = h.desired(vec![update.clone()], activation.clone());
    h.converge(&mut engine, &desired).await;
    let zip = h.dir.downloads().join(format!("{}.zip", update.sha256));
    assert!(zip.is_file());

    // The rollout was taken back: the client stays at the version it runs.
    let desired = h.desired(vec![running], activation);
    h.converge(&mut engine, &desired).await;
    let report = report(&engine, "kiosk");
    assert_eq!(report.state, PackageState::Installed, "{report:?}");
    assert_eq!(report.version, "1.0.0");
    assert_eq!(report.staged, None);
    assert!(!zip.exists(), "the staged download is deleted");
    assert_eq!(engine.next_activation_at(Timestamp::now()), None);
}

#[tokio::test]
async fn a_removal_outside_any_window_is_held_back_until_a_window_is_open() {
    let mut h = Harness::new();
    let mut engine = h.running_1_0_0(&["kiosk"]).await;
    let hooks_before = read_log(&h.log());
    let (activation, opens) = window_in_an_hour();
    let desired = h.desired(Vec::new(), activation);
    h.converge(&mut engine, &desired).await;

    let held = report(&engine, "kiosk");
    assert_eq!(held.state, PackageState::Removing, "{held:?}");
    assert_eq!(held.version, "1.0.0");
    assert_eq!(held.active_version.as_deref(), Some("1.0.0"));
    let staged = held.staged.expect("reported staged");
    assert_eq!(staged.waiting_for, StagedWait::Window);
    assert_eq!(staged.activates_at, Some(opens));
    assert_active_complete(&h.dir, "kiosk", "1.0.0");
    assert_eq!(read_log(&h.log()), hooks_before, "preRemove waits too");

    // A window open now: removed, with its preRemove.
    let open = in_windows(&[(seconds_from_now(-60), seconds_from_now(3600))]);
    let desired = h.desired(Vec::new(), open);
    h.converge(&mut engine, &desired).await;
    assert!(
        engine.snapshot().packages.is_empty(),
        "{:?}",
        engine.snapshot()
    );
    assert!(!h.dir.package("kiosk").exists());
    assert_eq!(
        read_log(&h.log())[hooks_before.len()..],
        ["preRemove 1.0.0"]
    );
}

#[tokio::test]
async fn a_first_install_is_not_held_back() {
    for activation in [
        window_in_an_hour().0,
        Activation {
            on_reboot: true,
            ..Activation::default()
        },
        Activation {
            windowed: true,
            ..Activation::default()
        },
    ] {
        let mut h = Harness::new();
        let mut engine = h.open();
        let package = h.package("kiosk", "1.0.0");
        let desired = h.desired(vec![package], activation.clone());
        h.converge(&mut engine, &desired).await;
        let installed = report(&engine, "kiosk");
        assert_eq!(
            installed.state,
            PackageState::Installed,
            "{activation:?}: {installed:?}"
        );
        assert_eq!(installed.staged, None);
        assert_active_complete(&h.dir, "kiosk", "1.0.0");
        assert_eq!(
            read_log(&h.log()),
            ["preInstall 1.0.0", "postInstall 1.0.0", "healthCheck 1.0.0"]
        );
    }
}

#[tokio::test]
async fn the_agents_own_first_release_waits_for_its_window_like_an_update() {
    let mut h = Harness::new();
    let mut engine = h.open();
    let (activation, opens) = window_in_an_hour();
    let package = h.fake.package(
        "thinfleet-agent",
        "0.3.0",
        common::build_zip(&[common::Entry::File("tc-agent", b"#!/bin/sh\n", 0o755)]),
        Default::default(),
    );
    let desired = h.desired(vec![package], activation);
    h.converge(&mut engine, &desired).await;
    let staged = report(&engine, "thinfleet-agent");
    assert_eq!(staged.state, PackageState::Installing, "{staged:?}");
    assert_eq!(staged.active_version, None, "{staged:?}");
    let wait = staged.staged.as_ref().expect("reported staged");
    assert_eq!(wait.waiting_for, StagedWait::Window, "{staged:?}");
    assert_eq!(wait.activates_at, Some(opens), "{staged:?}");
    assert!(!h.dir.package("thinfleet-agent").join("0.3.0").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_closes_during_a_pass_lets_the_update_in_progress_finish_and_starts_no_other()
{
    let mut h = Harness::new();
    let engine = h.running_1_0_0(&["alpha", "beta"]).await;
    let hooks_before = read_log(&h.log());
    let started = h.temp.path().join("alpha-started");
    let release = h.temp.path().join("alpha-release");
    let mut slow = h.package("alpha", "2.0.0");
    // alpha's preInstall holds the pass until the test lets it go, after the window closed.
    slow.hooks.pre_install = Some(shell_hook(
        &format!(
            "touch {}; i=0; while [ ! -e {} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done",
            started.display(),
            release.display()
        ),
        180,
    ));
    let closes = seconds_from_now(8);
    let next = seconds_from_now(3600);
    let activation = in_windows(&[
        (seconds_from_now(-60), closes),
        (next, seconds_from_now(7200)),
    ]);
    let desired = h.desired(vec![slow, h.package("beta", "2.0.0")], activation);
    let fetcher = h.fetcher.clone();
    let pass = tokio::spawn(async move {
        let mut engine = engine;
        engine
            .converge(&desired, &fetcher, &mut |_| true)
            .await
            .unwrap();
        engine
    });

    wait_for(
        WAIT,
        || started.exists(),
        || "alpha's preInstall never started".into(),
    )
    .await;
    wait_for(WAIT, || Timestamp::now() >= closes, String::new).await;
    std::fs::write(&release, b"").unwrap();
    let engine = tokio::time::timeout(WAIT, pass).await.unwrap().unwrap();

    let alpha = report(&engine, "alpha");
    assert_eq!(alpha.state, PackageState::Installed, "{alpha:?}");
    assert_eq!(alpha.version, "2.0.0");
    assert_active_complete(&h.dir, "alpha", "2.0.0");
    assert_update_staged(&report(&engine, "beta"), StagedWait::Window, Some(next));
    assert_active_complete(&h.dir, "beta", "1.0.0");
    let hooks: Vec<String> = read_log(&h.log())[hooks_before.len()..].to_vec();
    assert_eq!(
        hooks,
        ["postInstall 2.0.0", "healthCheck 2.0.0"],
        "only alpha's hooks ran"
    );
}

// --- The agent: its own timer, the journaled desired state, the boot id. ---

/// A running in-process agent, stopped when dropped.
struct Agent {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<RunOutcome, AgentError>>,
}

impl Agent {
    fn start(fake: &FakeController, state_dir: &Path, boot_id_file: &Path) -> Agent {
        let mut options = RunOptions::new(AgentConfig {
            server: parse_server(&fake.url()).unwrap(),
            bootstrap_token: Some(BootstrapToken::Value(BOOTSTRAP_TOKEN.into())),
            state_dir: state_dir.to_owned(),
            labels: BTreeMap::new(),
            name: "kiosk-1".into(),
            machine_id: Some("machine-activation-1".into()),
            ca: None,
            trusted_keys: Vec::new(),
            history_interval: Duration::from_secs(60),
            self_update_check_in: Duration::from_secs(120),
            tasks: TaskConfig {
                boot_id_file: boot_id_file.to_owned(),
                ..TaskConfig::default()
            },
        });
        options.retry = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        options.heartbeat_bounds = (Duration::from_millis(50), Duration::from_secs(3600));
        options.engine.download.backoff =
            Backoff::new(Duration::from_millis(20), Duration::from_millis(100));
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

/// A fake controller, a state directory, a boot id file and a hook log.
struct Machine {
    fake: FakeController,
    temp: tempfile::TempDir,
    dir: StateDir,
}

impl Machine {
    fn new(boot_id: &str) -> Machine {
        let temp = tempfile::tempdir().unwrap();
        let machine = Machine {
            fake: FakeController::start(),
            dir: StateDir::new(temp.path().join("state")),
            temp,
        };
        machine.boot(boot_id);
        machine
    }

    fn boot(&self, boot_id: &str) {
        std::fs::write(self.boot_id_file(), format!("{boot_id}\n")).unwrap();
    }

    fn boot_id_file(&self) -> PathBuf {
        self.temp.path().join("boot_id")
    }

    fn log(&self) -> PathBuf {
        self.temp.path().join("hooks.log")
    }

    fn start(&self) -> Agent {
        Agent::start(&self.fake, self.dir.root(), &self.boot_id_file())
    }

    fn package(&self, version: &str) -> DesiredPackage {
        self.fake.package(
            "kiosk",
            version,
            package_zip(version),
            logging_hooks(&self.log()),
        )
    }

    fn summary(&self) -> String {
        let state = self.fake.state();
        format!(
            "{} heartbeats, last: {:?}; journal: {:?}",
            state.heartbeats.len(),
            state
                .heartbeats
                .last()
                .map(|h| (h.observed_revision, &h.packages)),
            Journal::load(&self.dir).ok().flatten().map(|j| j.packages)
        )
    }

    /// The journal's record of `kiosk`: (state, version, staged) as the agent would report it.
    fn journal_report(&self) -> Option<PackageReport> {
        Journal::load(&self.dir)
            .ok()
            .flatten()?
            .reports()
            .into_iter()
            .find(|report| report.name == "kiosk")
    }

    /// Runs `kiosk` 1.0.0 installed with no restriction; returns the running agent.
    async fn running_1_0_0(&self) -> Agent {
        let revision = self.fake.set_desired(vec![self.package("1.0.0")]);
        let agent = self.start();
        wait_for(
            WAIT,
            || self.fake.reports_installed("kiosk", "1.0.0", revision),
            || self.summary(),
        )
        .await;
        agent
    }

    /// Waits until a heartbeat for `revision` reports the update to 2.0.0 staged.
    async fn wait_staged(&self, revision: u64, waiting_for: StagedWait) -> PackageReport {
        wait_for(
            WAIT,
            || {
                self.fake
                    .last_report("kiosk")
                    .is_some_and(|(observed, report)| {
                        observed == revision
                            && report.staged.as_ref().map(|staged| staged.waiting_for)
                                == Some(waiting_for)
                    })
            },
            || self.summary(),
        )
        .await;
        self.fake.last_report("kiosk").unwrap().1
    }

    /// Waits until 2.0.0 is active and its hooks ran, reading only the machine (the controller
    /// may be gone).
    async fn wait_activated(&self) {
        wait_for(
            WAIT,
            || {
                self.journal_report().is_some_and(|report| {
                    report.state == PackageState::Installed && report.version == "2.0.0"
                })
            },
            || self.summary(),
        )
        .await;
        assert_active_complete(&self.dir, "kiosk", "2.0.0");
        let hooks = read_log(&self.log());
        assert_eq!(
            hooks[hooks.len() - 3..],
            ["preInstall 2.0.0", "postInstall 2.0.0", "healthCheck 2.0.0"]
        );
        assert_eq!(self.journal_report().unwrap().staged, None);
    }
}

/// Stages the update to 2.0.0 for a window that opens in `seconds`, and checks it is reported so;
/// returns the window's start.
async fn stage_for_a_window_soon(machine: &Machine, seconds: i64) -> Timestamp {
    let opens = seconds_from_now(seconds);
    let revision = machine.fake.set_desired_with(
        vec![machine.package("2.0.0")],
        in_windows(&[(opens, seconds_from_now(3600))]),
    );
    let report = machine.wait_staged(revision, StagedWait::Window).await;
    assert_update_staged(&report, StagedWait::Window, Some(opens));
    assert_eq!(
        current_version(&machine.dir, "kiosk").as_deref(),
        Some("1.0.0")
    );
    opens
}

/// The test stopped the controller before the window opened (otherwise it proves nothing).
fn assert_still_closed(opens: Timestamp) {
    assert!(
        Timestamp::now() < opens,
        "the machine was too slow: the window opened before the controller was stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_update_is_activated_when_its_window_opens_with_the_controller_gone() {
    let mut machine = Machine::new("boot-1");
    let _agent = machine.running_1_0_0().await;
    let opens = stage_for_a_window_soon(&machine, 6).await;
    machine.fake.stop();
    assert_still_closed(opens);
    assert_eq!(
        current_version(&machine.dir, "kiosk").as_deref(),
        Some("1.0.0")
    );

    machine.wait_activated().await;
    assert!(
        Timestamp::now() >= opens,
        "activated only once the window opened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_activates_its_staged_update_when_the_window_opens_with_the_controller_gone()
 {
    let mut machine = Machine::new("boot-1");
    let agent = machine.running_1_0_0().await;
    let opens = stage_for_a_window_soon(&machine, 6).await;
    agent.stop().await;
    machine.fake.stop();
    assert_still_closed(opens);

    // From the desired state in its journal alone.
    let _agent = machine.start();
    machine.wait_activated().await;
    assert!(
        Timestamp::now() >= opens,
        "activated only once the window opened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_for_the_next_boot_waits_for_another_boot_id() {
    let machine = Machine::new("boot-1");
    let agent = machine.running_1_0_0().await;
    let on_reboot = Activation {
        on_reboot: true,
        ..Activation::default()
    };
    let update = machine.package("2.0.0");
    let revision = machine
        .fake
        .set_desired_with(vec![update.clone()], on_reboot.clone());
    let report = machine.wait_staged(revision, StagedWait::Reboot).await;
    assert_update_staged(&report, StagedWait::Reboot, None);
    let hooks_before = read_log(&machine.log());
    agent.stop().await;

    // The agent restarts in the same boot: a pass for a new revision keeps the update staged.
    let agent = machine.start();
    let revision = machine
        .fake
        .set_desired_with(vec![update.clone()], on_reboot.clone());
    let report = machine.wait_staged(revision, StagedWait::Reboot).await;
    assert_update_staged(&report, StagedWait::Reboot, None);
    assert_active_complete(&machine.dir, "kiosk", "1.0.0");
    assert_eq!(read_log(&machine.log()), hooks_before);
    agent.stop().await;

    // The machine booted again: the agent activates the update as it starts.
    machine.boot("boot-2");
    let _agent = machine.start();
    wait_for(
        WAIT,
        || machine.fake.reports_installed("kiosk", "2.0.0", revision),
        || machine.summary(),
    )
    .await;
    machine.wait_activated().await;
}
