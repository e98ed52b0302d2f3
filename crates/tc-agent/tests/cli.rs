//! The `tc-agent` command line: `status`, configuration errors and exit codes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{FakeController, package_zip, shell_hook};
use tc_agent::backoff::Backoff;
use tc_agent::download::{DownloadOptions, Fetcher};
use tc_agent::engine::{Engine, EngineOptions};
use tc_agent::state::StateDir;
use tc_proto::{DesiredState, Hooks};

fn tc_agent() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tc-agent"));
    command.env_remove("TC_AGENT_FAULT");
    command
}

#[tokio::test]
async fn status_shows_installed_pending_and_the_last_error_without_a_controller() {
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
            attempts: 1,
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(10)),
            idle_timeout: Duration::from_secs(5),
        },
    );
    let mut engine = Engine::open(dir.clone(), EngineOptions::default()).unwrap();
    let v1 = fake.package("kiosk", "1.0.0", package_zip("1.0.0"), Hooks::default());
    let broken = Hooks {
        health_check: Some(shell_hook("echo no display; exit 1", 10)),
        ..Hooks::default()
    };
    let v2 = fake.package("kiosk", "2.0.0", package_zip("2.0.0"), broken);
    for (revision, package) in [(1, v1), (2, v2)] {
        let desired = DesiredState {
            activation: Default::default(),
            revision,
            packages: vec![package],
            decommission: false,
        };
        engine
            .converge(&desired, &fetcher, &mut |_| true)
            .await
            .unwrap();
    }
    drop(engine);
    drop(fake);

    let output = tc_agent()
        .args(["status", "--state-dir"])
        .arg(dir.root())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("not enrolled"), "{text}");
    assert!(text.contains("revision 2 (1 package)"), "{text}");
    assert!(
        text.lines().any(|line| line.contains("kiosk")
            && line.contains("1.0.0")
            && line.contains("Failed")),
        "{text}"
    );
    assert!(
        text.contains("install kiosk 2.0.0 (replacing 1.0.0): failed 1 time(s), not tried again until its assignment changes or an admin retries it"),
        "{text}"
    );
    assert!(text.contains("healthCheck failed"), "{text}");
    assert!(text.contains("no display"), "{text}");
}

#[test]
fn status_of_a_fresh_state_directory_works_too() {
    let temp = tempfile::tempdir().unwrap();
    let output = tc_agent()
        .arg("status")
        .arg("--state-dir")
        .arg(temp.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("No packages installed yet."), "{text}");
}

#[test]
fn status_of_a_missing_state_directory_fails_and_says_so() {
    let temp = tempfile::tempdir().unwrap();
    let missing = temp.path().join("not-there");
    let output = tc_agent()
        .arg("status")
        .arg("--state-dir")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    let text = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        text.trim_end(),
        format!(
            "tc-agent: state directory {} does not exist; pass the --state-dir or --config the agent runs with",
            missing.display()
        )
    );
    assert!(!missing.exists(), "status creates nothing");

    // The same through the configuration file's `stateDir`.
    let config = temp.path().join("agent.yaml");
    std::fs::write(
        &config,
        "server: http://127.0.0.1:1
stateDir: elsewhere
",
    )
    .unwrap();
    let output = tc_agent()
        .arg("status")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let text = String::from_utf8(output.stderr).unwrap();
    assert!(
        text.contains(&format!(
            "state directory {} does not exist",
            temp.path().join("elsewhere").display()
        )),
        "{text}"
    );
}

#[test]
fn status_help_lists_only_the_flags_status_takes() {
    let output = tc_agent().args(["status", "--help"]).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|word| word.starts_with("--"))
        .collect();
    assert_eq!(flags, ["--config", "--state-dir", "--help"], "{help}");

    // Every flag of `run` is still in the agent's own help, and refused by `status`.
    let output = tc_agent().arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--server",
        "--bootstrap-token",
        "--bootstrap-token-file",
        "--label",
        "--name",
        "--machine-id",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
        let output = tc_agent().args(["status", flag, "x"]).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "status {flag}: {output:?}");
        let text = String::from_utf8(output.stderr).unwrap();
        assert!(
            text.contains(&format!("unexpected argument '{flag}'")),
            "status {flag}: {text}"
        );
    }
}

#[test]
fn missing_server_is_a_usage_error() {
    let temp = tempfile::tempdir().unwrap();
    let output = tc_agent()
        .arg("--state-dir")
        .arg(temp.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8(output.stderr).unwrap();
    assert!(text.contains("no controller URL"), "{text}");
}

#[test]
fn bad_configuration_file_names_the_problem() {
    let temp = tempfile::tempdir().unwrap();
    let config = temp.path().join("agent.yaml");
    std::fs::write(&config, "server: http://127.0.0.1:1\nsevrer: typo\n").unwrap();
    let output = tc_agent().arg("--config").arg(&config).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8(output.stderr).unwrap();
    assert!(text.contains("agent.yaml"), "{text}");
    assert!(text.contains("sevrer"), "{text}");
}

#[test]
fn not_enrolled_without_a_bootstrap_token_exits_with_a_clear_message() {
    let temp = tempfile::tempdir().unwrap();
    let output = tc_agent()
        .args(["--server", "http://127.0.0.1:9"])
        .arg("--state-dir")
        .arg(temp.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8(output.stderr).unwrap();
    assert!(text.contains("not enrolled"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_agent_cleanly() {
    let fake = FakeController::start();
    let temp = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tc-agent"))
        .args(["--server", &fake.url(), "--bootstrap-token"])
        .arg(common::BOOTSTRAP_TOKEN)
        .arg("--state-dir")
        .arg(temp.path().join("state"))
        .args(["--machine-id", "sigterm-test"])
        .env_remove("TC_AGENT_FAULT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::wait_for(
        Duration::from_secs(30),
        || !fake.state().heartbeats.is_empty(),
        || "no heartbeat".into(),
    )
    .await;
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the agent stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn test_builds_read_the_test_hooks_variables() {
    // The crate's tests run the binary built with the feature `test-hooks` (through the
    // dev-dependency on the crate itself); `.ci/run` checks that a release build ignores them.
    let temp = tempfile::tempdir().unwrap();
    let output = tc_agent()
        .args(["--server", "http://127.0.0.1:9"])
        .arg("--state-dir")
        .arg(temp.path())
        .env("TC_AGENT_FAULT", "no-such-point")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let text = String::from_utf8(output.stderr).unwrap();
    assert!(
        text.contains("unknown fault point `no-such-point`"),
        "{text}"
    );
}
