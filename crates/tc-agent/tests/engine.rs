//! The install engine against a fake blob server: install, update, removal, rollback, hook
//! timeouts, which failures are retried (downloads, removals) and which are not (a failed
//! release, until its assignment changes), and recovery from a crash at every step.

mod common;

use std::time::{Duration, Instant};

use common::{
    FakeController, assert_active_complete, current_version, list, logging_hooks, package_zip,
    read_log, shell_hook,
};
use tc_agent::backoff::Backoff;
use tc_agent::download::{DownloadOptions, Fetcher};
use tc_agent::engine::{Engine, EngineError, EngineOptions};
use tc_agent::fault::{FaultMode, FaultPoint, Faults};
use tc_agent::state::StateDir;
use tc_proto::{DesiredPackage, DesiredState, Hooks, PackageReport, PackageState};

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
        let fetcher = Fetcher::new(
            tc_agent::client::http_client(
                &tc_agent::config::parse_server(&fake.url()).unwrap(),
                None,
                std::path::Path::new("unused: the fake controller is plain HTTP"),
            )
            .unwrap(),
            tc_agent::config::parse_server(&fake.url()).unwrap(),
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

    fn options(&self) -> EngineOptions {
        EngineOptions {
            retry: Backoff::new(Duration::from_secs(60), Duration::from_secs(60)),
            ..EngineOptions::default()
        }
    }

    fn open(&self) -> Engine {
        Engine::open(self.dir.clone(), self.options()).unwrap()
    }

    fn open_with(&self, options: EngineOptions) -> Engine {
        Engine::open(self.dir.clone(), options).unwrap()
    }

    fn package(&self, version: &str, hooks: Hooks) -> DesiredPackage {
        self.fake
            .package("kiosk", version, package_zip(version), hooks)
    }

    fn desired(&mut self, packages: Vec<DesiredPackage>) -> DesiredState {
        self.revision += 1;
        DesiredState {
            activation: Default::default(),
            revision: self.revision,
            packages,
            decommission: false,
        }
    }

    async fn converge(
        &self,
        engine: &mut Engine,
        desired: &DesiredState,
    ) -> Result<(), EngineError> {
        engine.converge(desired, &self.fetcher, &mut |_| true).await
    }

    fn log(&self) -> std::path::PathBuf {
        self.temp.path().join("hooks.log")
    }

    fn versions_on_disk(&self) -> Vec<String> {
        list(&self.dir.package("kiosk"))
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

#[tokio::test]
async fn first_install_runs_the_hooks_in_order_and_activates_a_complete_version() {
    let mut h = Harness::new();
    let package = h.package("1.0.0", logging_hooks(&h.log()));
    let desired = h.desired(vec![package]);
    let mut engine = h.open();
    h.converge(&mut engine, &desired).await.unwrap();

    let report = report(&engine, "kiosk");
    assert_eq!(report.state, PackageState::Installed);
    assert_eq!(report.version, "1.0.0");
    assert_eq!(report.active_version.as_deref(), Some("1.0.0"));
    assert_eq!(engine.snapshot().observed_revision, 1);
    assert_active_complete(&h.dir, "kiosk", "1.0.0");
    assert_eq!(
        read_log(&h.log()),
        ["preInstall 1.0.0", "postInstall 1.0.0", "healthCheck 1.0.0"]
    );
    assert!(list(&h.dir.staging()).is_empty());
    assert!(
        list(&h.dir.downloads()).is_empty(),
        "finished downloads are removed"
    );
    let journal = engine.journal();
    assert!(journal.packages["kiosk"].operation.is_none());
}

#[tokio::test]
async fn update_keeps_one_previous_version_and_points_current_at_the_new_one() {
    let mut h = Harness::new();
    let mut engine = h.open();
    for version in ["1.0.0", "2.0.0"] {
        let desired = h.desired(vec![h.package(version, Hooks::default())]);
        h.converge(&mut engine, &desired).await.unwrap();
    }
    assert_active_complete(&h.dir, "kiosk", "2.0.0");
    assert_eq!(h.versions_on_disk(), ["1.0.0", "2.0.0", "current"]);
    let record = &engine.journal().packages["kiosk"];
    assert_eq!(record.previous.as_ref().unwrap().version, "1.0.0");

    let desired = h.desired(vec![h.package("3.0.0", Hooks::default())]);
    h.converge(&mut engine, &desired).await.unwrap();
    assert_active_complete(&h.dir, "kiosk", "3.0.0");
    assert_eq!(h.versions_on_disk(), ["2.0.0", "3.0.0", "current"]);
}

#[tokio::test]
async fn converged_state_is_not_rewritten() {
    let mut h = Harness::new();
    let mut engine = h.open();
    let desired = h.desired(vec![h.package("1.0.0", Hooks::default())]);
    h.converge(&mut engine, &desired).await.unwrap();
    let written = std::fs::metadata(h.dir.journal())
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    h.converge(&mut engine, &desired).await.unwrap();
    let again = std::fs::metadata(h.dir.journal())
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(written, again, "an idle pass must not write to the disk");
    assert_eq!(
        h.fake.state().blob_ranges.len(),
        1,
        "nothing downloaded twice"
    );
}

#[tokio::test]
async fn removal_runs_pre_remove_and_leaves_other_packages_alone() {
    let mut h = Harness::new();
    let mut engine = h.open();
    let foreign = h.dir.package("not-ours");
    std::fs::create_dir_all(foreign.join("1.0")).unwrap();
    std::fs::write(foreign.join("1.0/keep.txt"), "mine").unwrap();

    let desired = h.desired(vec![h.package("1.0.0", logging_hooks(&h.log()))]);
    h.converge(&mut engine, &desired).await.unwrap();
    let desired = h.desired(vec![]);
    h.converge(&mut engine, &desired).await.unwrap();

    assert_eq!(read_log(&h.log()).last().unwrap(), "preRemove 1.0.0");
    assert!(!h.dir.package("kiosk").exists());
    assert!(engine.snapshot().packages.is_empty());
    assert_eq!(
        std::fs::read_to_string(foreign.join("1.0/keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(list(&h.dir.packages()), ["not-ours"]);
}

#[tokio::test]
async fn failing_pre_remove_keeps_the_package_and_reports_it() {
    let mut h = Harness::new();
    let mut engine = h.open();
    let hooks = Hooks {
        pre_remove: Some(shell_hook("echo cannot stop; exit 2", 10)),
        ..Hooks::default()
    };
    let desired = h.desired(vec![h.package("1.0.0", hooks)]);
    h.converge(&mut engine, &desired).await.unwrap();
    let desired = h.desired(vec![]);
    h.converge(&mut engine, &desired).await.unwrap();

    let report = report(&engine, "kiosk");
    assert_eq!(report.state, PackageState::Failed);
    let message = report.message.as_deref().unwrap();
    assert!(message.contains("preRemove failed"), "{message}");
    assert!(message.contains("cannot stop"), "{message}");
    assert_active_complete(&h.dir, "kiosk", "1.0.0");
}

/// Engine options that retry what is retried at once, so that a test sees any retry the engine
/// would make without waiting for a backoff.
fn retry_at_once(h: &Harness) -> EngineOptions {
    EngineOptions {
        retry: Backoff::new(Duration::ZERO, Duration::ZERO),
        ..h.options()
    }
}

/// Hooks that append `postInstall <version>` to `log`, then fail the health check with a message.
fn failing_health_check(log: &std::path::Path) -> Hooks {
    Hooks {
        post_install: Some(shell_hook(
            &format!("echo postInstall $TC_PACKAGE_VERSION >> {}", log.display()),
            10,
        )),
        health_check: Some(shell_hook("echo database unreachable >&2; exit 1", 10)),
        ..Hooks::default()
    }
}

/// Asserts the report of a release that failed its health check with 1.0.0 still active.
fn assert_failed_and_rolled_back(engine: &Engine, h: &Harness, version: &str) {
    let report = report(engine, "kiosk");
    assert_eq!(report.state, PackageState::Failed, "{report:?}");
    assert_eq!(report.version, version);
    assert_eq!(report.active_version.as_deref(), Some("1.0.0"));
    let message = report.message.as_deref().unwrap();
    assert!(message.contains("healthCheck failed"), "{message}");
    assert!(message.contains("database unreachable"), "{message}");
    assert!(message.contains("rolled back to 1.0.0"), "{message}");
    assert_active_complete(&h.dir, "kiosk", "1.0.0");
}

#[tokio::test]
async fn failing_health_check_runs_post_install_once_and_is_not_retried_until_the_attempt_changes()
{
    let mut h = Harness::new();
    let mut engine = h.open_with(retry_at_once(&h));
    let v1 = h.desired(vec![h.package("1.0.0", Hooks::default())]);
    h.converge(&mut engine, &v1).await.unwrap();

    let log = h.log();
    let broken = h.package("2.0.0", failing_health_check(&log));
    let desired = h.desired(vec![broken.clone()]);
    h.converge(&mut engine, &desired).await.unwrap();
    assert_eq!(read_log(&log), ["postInstall 2.0.0"]);
    assert_failed_and_rolled_back(&engine, &h, "2.0.0");
    assert_eq!(h.versions_on_disk(), ["1.0.0", "current"]);
    assert_eq!(
        engine.next_retry_at(tc_proto::Timestamp::now()),
        None,
        "nothing to wake up for"
    );

    // Later passes over the same desired state, and new revisions of it (the controller
    // recomputed, another package changed), leave the failed release alone.
    for _ in 0..3 {
        h.converge(&mut engine, &desired).await.unwrap();
    }
    let same = h.desired(vec![broken.clone()]);
    h.converge(&mut engine, &same).await.unwrap();
    assert_eq!(
        read_log(&log),
        ["postInstall 2.0.0"],
        "postInstall ran once"
    );
    assert_failed_and_rolled_back(&engine, &h, "2.0.0");
    assert_eq!(engine.snapshot().observed_revision, same.revision);
    assert!(
        list(&h.dir.downloads()).is_empty(),
        "the zip of a release that is not retried is not kept"
    );

    // An admin's retry raises the attempt: the release is installed again at once.
    let retried = DesiredPackage {
        attempt: 1,
        ..broken.clone()
    };
    let desired = h.desired(vec![retried]);
    h.converge(&mut engine, &desired).await.unwrap();
    assert_eq!(read_log(&log), ["postInstall 2.0.0", "postInstall 2.0.0"]);
    assert_failed_and_rolled_back(&engine, &h, "2.0.0");
    h.converge(&mut engine, &desired).await.unwrap();
    assert_eq!(read_log(&log).len(), 2, "the new attempt failed once, too");

    // So is another release.
    let desired = h.desired(vec![h.package("3.0.0", Hooks::default())]);
    h.converge(&mut engine, &desired).await.unwrap();
    assert_active_complete(&h.dir, "kiosk", "3.0.0");
    assert_eq!(report(&engine, "kiosk").state, PackageState::Installed);
    assert!(engine.journal().packages["kiosk"].failure.is_none());
}

#[tokio::test]
async fn a_failed_release_stays_failed_across_restarts_of_the_engine() {
    let mut h = Harness::new();
    let v1 = h.desired(vec![h.package("1.0.0", Hooks::default())]);
    let mut engine = h.open_with(retry_at_once(&h));
    h.converge(&mut engine, &v1).await.unwrap();
    let log = h.log();
    let broken = h.package("2.0.0", failing_health_check(&log));
    let desired = h.desired(vec![broken.clone()]);
    h.converge(&mut engine, &desired).await.unwrap();
    assert_eq!(read_log(&log).len(), 1);
    drop(engine);

    for _ in 0..2 {
        let mut engine = h.open_with(retry_at_once(&h));
        assert_failed_and_rolled_back(&engine, &h, "2.0.0");
        h.converge(&mut engine, &desired).await.unwrap();
        assert_eq!(
            read_log(&log),
            ["postInstall 2.0.0"],
            "not retried after a restart"
        );
        assert_failed_and_rolled_back(&engine, &h, "2.0.0");
    }

    let mut engine = h.open_with(retry_at_once(&h));
    let retried = h.desired(vec![DesiredPackage {
        attempt: 1,
        ..broken
    }]);
    h.converge(&mut engine, &retried).await.unwrap();
    assert_eq!(read_log(&log).len(), 2, "a new attempt is installed");
}

#[tokio::test]
async fn failed_downloads_are_still_retried_with_backoff() {
    let mut h = Harness::new();
    let v1 = h.desired(vec![h.package("1.0.0", Hooks::default())]);
    let mut engine = h.open();
    h.converge(&mut engine, &v1).await.unwrap();
    let log = h.log();
    let package = h.package("2.0.0", failing_health_check(&log));
    let zip = h.fake.state().blobs.remove(&package.sha256).unwrap();
    let desired = h.desired(vec![package.clone()]);
    let blob_requests = || h.fake.state().blob_ranges.len();

    // The blob is missing (404): the package fails, and with a backoff of a minute it is not
    // tried again at once.
    h.converge(&mut engine, &desired).await.unwrap();
    let report_now = report(&engine, "kiosk");
    assert_eq!(report_now.state, PackageState::Failed);
    assert_eq!(report_now.active_version.as_deref(), Some("1.0.0"));
    let message = report_now.message.unwrap();
    assert!(message.contains("download failed"), "{message}");
    assert!(message.contains("404"), "{message}");
    let now = tc_proto::Timestamp::now();
    assert!(engine.next_retry_at(now).is_some_and(|at| at > now));
    let requested = blob_requests();
    h.converge(&mut engine, &desired).await.unwrap();
    assert_eq!(blob_requests(), requested, "no retry before the backoff");
    drop(engine);

    // Once the backoff is over (moved into the past here, in the journal) it is downloaded
    // again; still missing, still retried.
    let mut journal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.dir.journal()).unwrap()).unwrap();
    journal["packages"]["kiosk"]["failure"]["retryAt"] = "2020-01-01T00:00:00.000Z".into();
    std::fs::write(h.dir.journal(), serde_json::to_vec(&journal).unwrap()).unwrap();
    let mut engine = h.open_with(retry_at_once(&h));
    for _ in 0..2 {
        let requested = blob_requests();
        h.converge(&mut engine, &desired).await.unwrap();
        assert!(blob_requests() > requested, "the download is retried");
        assert_eq!(report(&engine, "kiosk").state, PackageState::Failed);
    }

    // A blob that does not match its digest is a download failure too.
    let mut corrupted = zip.clone();
    corrupted[0] ^= 0xff;
    h.fake
        .state()
        .blobs
        .insert(package.sha256.clone(), corrupted);
    h.converge(&mut engine, &desired).await.unwrap();
    let message = report(&engine, "kiosk").message.unwrap();
    assert!(message.contains("sha256 mismatch"), "{message}");
    assert!(read_log(&log).is_empty(), "nothing of the release ran");

    // The right blob: downloaded, installed, its health check fails, and from then on the
    // release is not tried again.
    h.fake.state().blobs.insert(package.sha256.clone(), zip);
    h.converge(&mut engine, &desired).await.unwrap();
    assert_eq!(read_log(&log), ["postInstall 2.0.0"]);
    assert_failed_and_rolled_back(&engine, &h, "2.0.0");
    let requested = blob_requests();
    for _ in 0..2 {
        h.converge(&mut engine, &desired).await.unwrap();
    }
    assert_eq!(read_log(&log), ["postInstall 2.0.0"]);
    assert_eq!(blob_requests(), requested);
}

#[tokio::test]
async fn failing_pre_remove_is_still_retried() {
    let mut h = Harness::new();
    let mut engine = h.open_with(retry_at_once(&h));
    let log = h.log();
    let hooks = Hooks {
        pre_remove: Some(shell_hook(
            &format!("echo preRemove >> {}; exit 2", log.display()),
            10,
        )),
        ..Hooks::default()
    };
    let desired = h.desired(vec![h.package("1.0.0", hooks)]);
    h.converge(&mut engine, &desired).await.unwrap();
    let empty = h.desired(vec![]);
    for runs in 1..=3 {
        h.converge(&mut engine, &empty).await.unwrap();
        assert_eq!(read_log(&log).len(), runs);
        assert_eq!(report(&engine, "kiosk").state, PackageState::Failed);
        assert_active_complete(&h.dir, "kiosk", "1.0.0");
    }
}

#[tokio::test]
async fn a_failure_recorded_by_the_previous_agent_is_retried_once() {
    let mut h = Harness::new();
    let v1 = h.desired(vec![h.package("1.0.0", Hooks::default())]);
    let mut engine = h.open_with(retry_at_once(&h));
    h.converge(&mut engine, &v1).await.unwrap();
    let log = h.log();
    let desired = h.desired(vec![h.package("2.0.0", failing_health_check(&log))]);
    h.converge(&mut engine, &desired).await.unwrap();
    drop(engine);

    // The journal as the agent before failure causes wrote it.
    let mut journal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.dir.journal()).unwrap()).unwrap();
    let failure = journal["packages"]["kiosk"]["failure"]
        .as_object_mut()
        .unwrap();
    failure.remove("cause");
    failure.remove("attempt");
    std::fs::write(h.dir.journal(), serde_json::to_vec(&journal).unwrap()).unwrap();

    let mut engine = h.open_with(retry_at_once(&h));
    assert_failed_and_rolled_back(&engine, &h, "2.0.0");
    let failure = engine.journal().packages["kiosk"].failure.clone().unwrap();
    assert_eq!(failure.cause, tc_agent::state::FailureCause::Unrecorded);
    h.converge(&mut engine, &desired).await.unwrap();
    assert_eq!(read_log(&log).len(), 2, "an unrecorded failure is retried");
    assert_failed_and_rolled_back(&engine, &h, "2.0.0");
    for _ in 0..2 {
        h.converge(&mut engine, &desired).await.unwrap();
    }
    assert_eq!(read_log(&log).len(), 2, "once");
}

#[tokio::test]
async fn an_install_that_keeps_crashing_after_its_hooks_started_is_given_up() {
    let mut h = Harness::new();
    let v1 = h.desired(vec![h.package("1.0.0", Hooks::default())]);
    let mut engine = h.open();
    h.converge(&mut engine, &v1).await.unwrap();
    drop(engine);

    let hooks = Hooks {
        post_install: Some(shell_hook("sleep 0.2", 10)),
        ..Hooks::default()
    };
    let package = h.package("2.0.0", hooks);
    let desired = h.desired(vec![package.clone()]);
    let crashing = || {
        h.open_with(EngineOptions {
            faults: Faults::at(FaultPoint::DuringHook, FaultMode::Simulate),
            ..retry_at_once(&h)
        })
    };
    // The first attempt and the immediate retries each crash while postInstall runs.
    for crash in 0..=tc_agent::engine::IMMEDIATE_RETRIES_AFTER_CRASH {
        let mut engine = crashing();
        if crash > 0 {
            assert_eq!(
                report(&engine, "kiosk").state,
                PackageState::Installing,
                "crash {crash}: retried at once"
            );
        }
        let error = h.converge(&mut engine, &desired).await.unwrap_err();
        assert!(
            matches!(error, EngineError::SimulatedCrash(FaultPoint::DuringHook)),
            "{error}"
        );
    }
    // One more interruption: the release is given up.
    let mut engine = crashing();
    h.converge(&mut engine, &desired).await.unwrap();
    let report_now = report(&engine, "kiosk");
    assert_eq!(report_now.state, PackageState::Failed, "{report_now:?}");
    assert_eq!(report_now.version, "2.0.0");
    assert_eq!(report_now.active_version.as_deref(), Some("1.0.0"));
    assert!(
        report_now
            .message
            .as_deref()
            .unwrap()
            .contains("interrupted during postInstall"),
        "{report_now:?}"
    );
    assert_active_complete(&h.dir, "kiosk", "1.0.0");
    assert_eq!(engine.next_retry_at(tc_proto::Timestamp::now()), None);
    drop(engine);

    // An admin's retry installs it again (and this time nothing crashes).
    let mut engine = h.open_with(retry_at_once(&h));
    let retried = h.desired(vec![DesiredPackage {
        attempt: 1,
        ..package
    }]);
    h.converge(&mut engine, &retried).await.unwrap();
    assert_active_complete(&h.dir, "kiosk", "2.0.0");
    assert_eq!(report(&engine, "kiosk").state, PackageState::Installed);
}

#[tokio::test]
async fn hook_over_its_timeout_is_killed_and_reported() {
    let mut h = Harness::new();
    let mut engine = h.open();
    let hooks = Hooks {
        post_install: Some(shell_hook("echo starting; sleep 30", 1)),
        ..Hooks::default()
    };
    let desired = h.desired(vec![h.package("1.0.0", hooks)]);
    let started = Instant::now();
    h.converge(&mut engine, &desired).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));

    let report = report(&engine, "kiosk");
    assert_eq!(report.state, PackageState::Failed);
    assert_eq!(report.active_version, None);
    let message = report.message.as_deref().unwrap();
    assert!(
        message.contains("postInstall timed out after 1s and was killed"),
        "{message}"
    );
    assert!(message.contains("starting"), "{message}");
    assert!(message.contains("no version is active"), "{message}");
    assert_eq!(current_version(&h.dir, "kiosk"), None);
    assert!(
        h.versions_on_disk().is_empty(),
        "{:?}",
        h.versions_on_disk()
    );
}

#[tokio::test]
async fn failing_pre_install_never_touches_the_active_version() {
    let mut h = Harness::new();
    let mut engine = h.open();
    let desired = h.desired(vec![h.package("1.0.0", Hooks::default())]);
    h.converge(&mut engine, &desired).await.unwrap();
    let hooks = Hooks {
        pre_install: Some(shell_hook("test -f ./VERSION && exit 7", 10)),
        ..Hooks::default()
    };
    let desired = h.desired(vec![h.package("2.0.0", hooks)]);
    h.converge(&mut engine, &desired).await.unwrap();
    let message = report(&engine, "kiosk").message.clone().unwrap();
    assert!(
        message.contains("preInstall failed (exit status: 7)"),
        "{message}"
    );
    assert_active_complete(&h.dir, "kiosk", "1.0.0");
    assert_eq!(h.versions_on_disk(), ["1.0.0", "current"]);
}

#[tokio::test]
async fn wrong_sha256_is_refused_before_anything_is_extracted() {
    let mut h = Harness::new();
    let mut engine = h.open();
    let mut package = h.package("1.0.0", Hooks::default());
    let real = package.sha256.clone();
    package.sha256 = "1".repeat(64);
    package.url = format!("/blobs/sha256/{real}");
    let desired = h.desired(vec![package]);
    h.converge(&mut engine, &desired).await.unwrap();
    let message = report(&engine, "kiosk").message.clone().unwrap();
    assert!(message.contains("sha256 mismatch"), "{message}");
    assert!(h.versions_on_disk().is_empty());
    assert!(list(&h.dir.staging()).is_empty());
    assert!(list(&h.dir.downloads()).is_empty());
}

#[tokio::test]
async fn unsafe_names_from_the_controller_are_refused_and_touch_nothing() {
    let mut h = Harness::new();
    let mut engine = h.open();
    let good = h.package("1.0.0", Hooks::default());
    let mut escape = good.clone();
    escape.name = "..".into();
    let mut bad_version = good.clone();
    bad_version.name = "other".into();
    bad_version.version = "../../1.0".into();
    let desired = h.desired(vec![escape, good, bad_version]);
    h.converge(&mut engine, &desired).await.unwrap();

    assert_eq!(report(&engine, "kiosk").state, PackageState::Installed);
    let other = report(&engine, "other");
    assert_eq!(other.state, PackageState::Failed);
    assert!(
        other
            .message
            .as_deref()
            .unwrap()
            .contains("invalid version"),
        "{other:?}"
    );
    assert_eq!(engine.snapshot().packages.len(), 2, "no record for `..`");
    assert_eq!(
        list(h.dir.root()),
        ["downloads", "packages", "staging", "state.json"]
    );
    assert_eq!(list(&h.dir.packages()), ["kiosk"]);
    let last_error = engine.journal().last_error.clone().unwrap();
    assert!(
        last_error.message.contains("invalid package name `..`"),
        "{last_error:?}"
    );
}

/// Found by fuzzing the controller's answers: a download URL that does not resolve against the
/// controller's URL (or resolves to something other than http(s)) was accepted, failed every
/// download attempt and was retried with backoff for ever. It is refused up front, not retried,
/// and nothing is downloaded.
#[tokio::test]
async fn download_url_that_cannot_be_fetched_is_refused_and_not_retried() {
    let mut h = Harness::new();
    let mut engine = h.open();
    let good = h.package("1.0.0", Hooks::default());
    let mut packages = vec![];
    for (name, url) in [
        ("bad-host", "https://cdn.example+blobs%v/pn.zip"),
        ("bad-port", "//controller:99999/blobs/x"),
        ("not-http", "file:///etc/shadow"),
    ] {
        let mut package = good.clone();
        package.name = name.into();
        package.url = url.into();
        packages.push(package);
    }
    let desired = h.desired(packages);
    h.converge(&mut engine, &desired).await.unwrap();
    for name in ["bad-host", "bad-port", "not-http"] {
        let reported = report(&engine, name);
        assert_eq!(reported.state, PackageState::Failed, "{reported:?}");
        let message = reported.message.clone().unwrap();
        assert!(message.starts_with("refused by the agent: "), "{message}");
        assert!(message.contains("URL"), "{message}");
    }
    assert_eq!(engine.next_retry_at(tc_proto::Timestamp::now()), None);
    assert!(list(&h.dir.downloads()).is_empty());
    assert!(h.versions_on_disk().is_empty());
}

/// Found with the fuzz target of the controller's answers (its check that every hook of an
/// accepted package can run): a hook with an empty command, a blank program, a NUL byte or a
/// timeout of 0 seconds was accepted, so the release was downloaded, extracted and activated
/// before the hook failed (and a `preRemove` like that could never let the package go). Such a
/// package is refused up front and nothing is downloaded.
#[tokio::test]
async fn hook_that_cannot_run_is_refused_before_anything_is_downloaded() {
    let mut h = Harness::new();
    let mut engine = h.open();
    let hook = |command: &[&str], timeout_seconds| {
        Some(tc_proto::Hook {
            command: command.iter().map(|part| part.to_string()).collect(),
            timeout_seconds,
        })
    };
    let cases = [
        (
            "empty",
            Hooks {
                post_install: hook(&[], 10),
                ..Hooks::default()
            },
            "postInstall hook has an empty command",
        ),
        (
            "blank",
            Hooks {
                pre_install: hook(&["  "], 10),
                ..Hooks::default()
            },
            "preInstall hook names no program",
        ),
        (
            "nul",
            Hooks {
                pre_remove: hook(&["/bin/sh", "-c", "echo\0bye"], 10),
                ..Hooks::default()
            },
            "preRemove hook command contains a NUL byte",
        ),
        (
            "zero",
            Hooks {
                health_check: hook(&["./health.sh"], 0),
                ..Hooks::default()
            },
            "healthCheck hook has a timeout of 0 seconds",
        ),
    ];
    let mut packages = vec![];
    for (name, hooks, _) in &cases {
        let mut package = h.package("1.0.0", hooks.clone());
        package.name = (*name).into();
        packages.push(package);
    }
    let desired = h.desired(packages);
    h.converge(&mut engine, &desired).await.unwrap();
    for (name, _, reason) in cases {
        let reported = report(&engine, name);
        assert_eq!(reported.state, PackageState::Failed, "{reported:?}");
        assert_eq!(
            reported.message.as_deref(),
            Some(format!("refused by the agent: {reason}").as_str())
        );
    }
    assert!(list(&h.dir.downloads()).is_empty());
    assert!(h.versions_on_disk().is_empty());
}

#[tokio::test]
async fn package_script_runs_as_health_check_from_inside_the_package() {
    let mut h = Harness::new();
    let mut engine = h.open();
    let hooks = Hooks {
        health_check: Some(tc_proto::Hook {
            command: vec!["./health.sh".into()],
            timeout_seconds: 10,
        }),
        ..Hooks::default()
    };
    let desired = h.desired(vec![h.package("1.0.0", hooks)]);
    h.converge(&mut engine, &desired).await.unwrap();
    assert_eq!(report(&engine, "kiosk").state, PackageState::Installed);
}

/// Installs 1.0.0, then crashes (simulated) at `point` while installing 2.0.0, re-opens the
/// engine and checks the active version is complete, then converges to 2.0.0.
async fn crash_during_update_at(point: FaultPoint) {
    let mut h = Harness::new();
    let v1 = h.desired(vec![h.package("1.0.0", Hooks::default())]);
    let mut engine = h.open();
    h.converge(&mut engine, &v1).await.unwrap();
    drop(engine);

    let hooks = Hooks {
        post_install: Some(shell_hook("sleep 0.2", 10)),
        ..Hooks::default()
    };
    let v2 = h.desired(vec![h.package("2.0.0", hooks)]);
    let mut crashing = h.open_with(EngineOptions {
        faults: Faults::at(point, FaultMode::Simulate),
        ..h.options()
    });
    let error = h.converge(&mut crashing, &v2).await.unwrap_err();
    assert!(
        matches!(error, EngineError::SimulatedCrash(hit) if hit == point),
        "{error}"
    );
    drop(crashing);

    let mut engine = h.open();
    assert!(
        engine
            .journal()
            .packages
            .values()
            .all(|record| record.operation.is_none()),
        "recovery finishes every operation"
    );
    let active = current_version(&h.dir, "kiosk").expect("a version is active");
    assert!(
        active == "1.0.0" || active == "2.0.0",
        "{point}: active {active}"
    );
    assert_active_complete(&h.dir, "kiosk", &active);
    assert!(
        list(&h.dir.staging()).is_empty(),
        "{point}: staging cleaned"
    );

    h.converge(&mut engine, &v2).await.unwrap();
    let report = report(&engine, "kiosk");
    assert_eq!(report.state, PackageState::Installed, "{point}: {report:?}");
    assert_active_complete(&h.dir, "kiosk", "2.0.0");
    assert_eq!(
        h.versions_on_disk(),
        ["1.0.0", "2.0.0", "current"],
        "{point}"
    );
}

#[tokio::test]
async fn crash_after_download_recovers() {
    crash_during_update_at(FaultPoint::AfterDownload).await;
}

#[tokio::test]
async fn crash_after_extract_recovers() {
    crash_during_update_at(FaultPoint::AfterExtract).await;
}

#[tokio::test]
async fn crash_after_move_recovers() {
    crash_during_update_at(FaultPoint::AfterMove).await;
}

#[tokio::test]
async fn crash_after_activate_recovers() {
    crash_during_update_at(FaultPoint::AfterActivate).await;
}

#[tokio::test]
async fn crash_during_hook_recovers() {
    crash_during_update_at(FaultPoint::DuringHook).await;
}

#[tokio::test]
async fn crash_before_commit_recovers() {
    crash_during_update_at(FaultPoint::BeforeCommit).await;
}

#[tokio::test]
async fn crash_after_activate_rolls_back_to_the_old_version_on_open() {
    let mut h = Harness::new();
    let v1 = h.desired(vec![h.package("1.0.0", Hooks::default())]);
    let mut engine = h.open();
    h.converge(&mut engine, &v1).await.unwrap();
    let v2 = h.desired(vec![h.package("2.0.0", Hooks::default())]);
    let mut crashing = h.open_with(EngineOptions {
        faults: Faults::at(FaultPoint::AfterActivate, FaultMode::Simulate),
        ..h.options()
    });
    h.converge(&mut crashing, &v2).await.unwrap_err();
    assert_eq!(current_version(&h.dir, "kiosk").as_deref(), Some("2.0.0"));
    drop(crashing);

    let engine = h.open();
    assert_active_complete(&h.dir, "kiosk", "1.0.0");
    let report = report(&engine, "kiosk");
    assert_eq!(
        report.state,
        PackageState::Installing,
        "retried at once: {report:?}"
    );
    assert!(
        report
            .message
            .as_deref()
            .unwrap()
            .contains("interrupted during activation"),
        "{report:?}"
    );
}

#[tokio::test]
async fn crash_during_removal_finishes_the_removal() {
    let mut h = Harness::new();
    let v1 = h.desired(vec![h.package("1.0.0", Hooks::default())]);
    let mut engine = h.open();
    h.converge(&mut engine, &v1).await.unwrap();
    let empty = h.desired(vec![]);
    let mut crashing = h.open_with(EngineOptions {
        faults: Faults::at(FaultPoint::AfterUnlink, FaultMode::Simulate),
        ..h.options()
    });
    h.converge(&mut crashing, &empty).await.unwrap_err();
    assert!(h.dir.package("kiosk").exists());
    drop(crashing);

    let engine = h.open();
    assert!(!h.dir.package("kiosk").exists());
    assert!(engine.snapshot().packages.is_empty());
}

#[tokio::test]
async fn every_journal_step_of_an_interrupted_install_recovers_to_old_or_new() {
    use tc_agent::state::{InstallStep, Journal, Operation, VersionRecord};
    // Leave the disk as an install of 2.0.0 would at each step, with 1.0.0 active, and check that
    // opening the engine always ends with a complete active version and no operation.
    for step in [
        InstallStep::Download,
        InstallStep::Extract,
        InstallStep::Move,
        InstallStep::PreInstall,
        InstallStep::Activate,
        InstallStep::PostInstall,
        InstallStep::HealthCheck,
        InstallStep::RollBack,
    ] {
        let mut h = Harness::new();
        let v1 = h.desired(vec![h.package("1.0.0", Hooks::default())]);
        let mut engine = h.open();
        h.converge(&mut engine, &v1).await.unwrap();
        drop(engine);

        // The files of 2.0.0 as far as the step got.
        let staged = h.dir.staging_for("kiosk");
        let zip = h.temp.path().join("v2.zip");
        std::fs::write(&zip, package_zip("2.0.0")).unwrap();
        if step >= InstallStep::Extract {
            tc_agent::extract::extract(&zip, &staged, &Default::default()).unwrap();
        }
        if step >= InstallStep::Move {
            std::fs::rename(&staged, h.dir.version("kiosk", "2.0.0")).unwrap();
        }
        if step >= InstallStep::Activate && step != InstallStep::RollBack {
            std::os::unix::fs::symlink("2.0.0", h.dir.package("kiosk").join("next")).unwrap();
            std::fs::rename(h.dir.package("kiosk").join("next"), h.dir.current("kiosk")).unwrap();
        }
        let mut journal = Journal::load(&h.dir).unwrap().unwrap();
        journal.packages.get_mut("kiosk").unwrap().operation = Some(Operation::Install {
            target: VersionRecord {
                version: "2.0.0".into(),
                sha256: "2".repeat(64),
                hooks: Hooks::default(),
                hooks_unknown: false,
            },
            step,
            reason: (step == InstallStep::RollBack).then(|| "healthCheck failed".into()),
            cause: (step == InstallStep::RollBack)
                .then_some(tc_agent::state::FailureCause::Package),
            attempt: 0,
        });
        journal.save(&h.dir).unwrap();

        let engine = h.open();
        assert_active_complete(&h.dir, "kiosk", "1.0.0");
        assert!(
            !h.dir.version("kiosk", "2.0.0").exists(),
            "{step:?}: the unfinished version is removed"
        );
        assert!(engine.journal().packages["kiosk"].operation.is_none());
        assert!(list(&h.dir.staging()).is_empty(), "{step:?}");
        if step == InstallStep::RollBack {
            let report = report(&engine, "kiosk");
            assert_eq!(report.state, PackageState::Failed);
            assert!(
                report
                    .message
                    .as_deref()
                    .unwrap()
                    .contains("healthCheck failed")
            );
        }
    }
}

#[tokio::test]
async fn corrupt_journal_is_rebuilt_from_the_installed_packages() {
    let mut h = Harness::new();
    let v1 = h.desired(vec![h.package("1.0.0", Hooks::default())]);
    let mut engine = h.open();
    h.converge(&mut engine, &v1).await.unwrap();
    drop(engine);
    std::fs::write(h.dir.journal(), "{ not json").unwrap();

    let mut engine = h.open();
    let report = report(&engine, "kiosk");
    assert_eq!(report.state, PackageState::Installed);
    assert_eq!(report.active_version.as_deref(), Some("1.0.0"));
    assert!(h.dir.root().join("state.json.corrupt").exists());
    // Still managed: an update works and keeps the adopted version as previous.
    let v2 = h.desired(vec![h.package("2.0.0", Hooks::default())]);
    h.converge(&mut engine, &v2).await.unwrap();
    assert_active_complete(&h.dir, "kiosk", "2.0.0");
    assert_eq!(h.versions_on_disk(), ["1.0.0", "2.0.0", "current"]);
}
