//! Every scenario at a smoke size, through the built binary with `--json`: the last line is one
//! JSON object with the expected figures, and they are sane (rates above zero, no errors, every
//! agent accounted for). Timings are printed by the scenarios, never asserted here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs `tc-bench --json <args>` (at most five minutes) and returns its JSON figures.
fn run(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tc-bench"))
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("tc-bench starts");
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tc-bench {args:?} did not finish within five minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    println!("{stdout}");
    assert!(
        status.success(),
        "tc-bench {args:?} failed:\n{stdout}\n{stderr}"
    );
    let last = stdout.lines().last().expect("tc-bench printed something");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("the last line is not JSON ({e}): {last}"))
}

/// The number at `path` (dot-separated) of the figures.
fn number(figures: &Value, path: &str) -> f64 {
    path.split('.')
        .fold(figures, |value, key| &value[key])
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {figures}"))
}

fn check_machine(figures: &Value) {
    assert!(number(figures, "machine.cpus") >= 1.0);
    assert!(number(figures, "machine.memory_gib") > 0.0);
    assert!(figures["machine"]["cpu_model"].is_string());
    assert!(figures["targets"].is_object(), "{figures}");
}

#[test]
fn heartbeat_measures_the_controller_and_the_bare_endpoint() {
    heartbeat_measures_both(false);
}

#[test]
fn heartbeat_over_tls_measures_both_behind_the_same_rustls_configuration() {
    heartbeat_measures_both(true);
}

fn heartbeat_measures_both(tls: bool) {
    let mut args = vec![
        "heartbeat",
        "--clients",
        "50",
        "--connections",
        "4",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
    ];
    if tls {
        args.push("--tls");
    }
    let figures = run(&args);
    assert_eq!(figures["scenario"], "heartbeat");
    let transport = figures["transport"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(transport.starts_with("HTTPS"), tls, "{figures}");
    for server in ["bare", "controller"] {
        assert!(
            number(&figures, &format!("{server}.rps")) > 0.0,
            "{figures}"
        );
        assert_eq!(
            number(&figures, &format!("{server}.errors")),
            0.0,
            "{figures}"
        );
        let p50 = number(&figures, &format!("{server}.p50_ms"));
        let p99 = number(&figures, &format!("{server}.p99_ms"));
        assert!(p50 > 0.0 && p99 >= p50, "{figures}");
    }
    assert!(number(&figures, "ratio") > 0.0);
    assert!(number(&figures, "controller.rss_mib") > 0.0);
    assert!(figures["pinning"].is_string());
    check_machine(&figures);
}

#[test]
fn fleet_sustains_its_schedule_with_long_polls_and_enrolments() {
    for tls in [false, true] {
        let mut args = vec![
            "fleet",
            "--clients",
            "300",
            "--interval",
            "1",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--enroll-http",
            "5",
            "--long-poll-share",
            "0.2",
        ];
        if tls {
            args.push("--tls");
        }
        let figures = run(&args);
        assert_eq!(figures["scenario"], "fleet");
        assert_eq!(
            figures["security"].as_str().unwrap().starts_with("HTTPS"),
            tls,
            "{figures}"
        );
        assert!(number(&figures, "achieved_rate") > 0.0, "{figures}");
        assert!(number(&figures, "expected_rate") > 0.0);
        assert_eq!(number(&figures, "errors"), 0.0, "{figures}");
        assert_eq!(number(&figures, "errors_total"), 0.0, "{figures}");
        assert_eq!(number(&figures, "enroll_http_errors"), 0.0, "{figures}");
        assert!(number(&figures, "enroll_http_rate") > 0.0);
        assert!(number(&figures, "p99_ms") > 0.0);
        assert!(number(&figures, "controller_rss_mib") > 0.0);
        assert!(number(&figures, "rss_per_client_bytes") > 0.0);
        assert_eq!(number(&figures, "long_polls"), 60.0);
        check_machine(&figures);
    }
}

#[test]
fn push_reaches_every_waiting_agent_over_http1_and_h2() {
    for transport in ["http1", "h2"] {
        let figures = run(&[
            "push",
            "--waiting",
            "80",
            "--transport",
            transport,
            "--settle",
            "0.3",
            "--timeout",
            "30",
            "--rounds",
            "2",
        ]);
        assert_eq!(figures["scenario"], "push");
        assert_eq!(number(&figures, "rounds"), 2.0, "{figures}");
        for round in ["round1", "round2"] {
            assert_eq!(
                number(&figures, &format!("{round}_notified")),
                80.0,
                "{transport} {round}: {figures}"
            );
            assert!(number(&figures, &format!("{round}_max_ms")) <= number(&figures, "max_ms"));
        }
        assert_eq!(number(&figures, "notified"), 80.0, "{transport}: {figures}");
        assert_eq!(number(&figures, "errors"), 0.0, "{transport}: {figures}");
        assert!(
            number(&figures, "via_long_poll") > 0.0,
            "{transport}: {figures}"
        );
        let max = number(&figures, "max_ms");
        assert!(max >= number(&figures, "p50_ms"), "{figures}");
        let shown = figures["transport"].as_str().unwrap();
        assert!(
            shown.starts_with(if transport == "h2" { "h2c" } else { "HTTP/1.1" }),
            "{shown}"
        );
        check_machine(&figures);
    }
}

#[test]
fn converge_installs_the_new_release_everywhere() {
    let figures = run(&[
        "converge",
        "--clients",
        "40",
        "--package-mib",
        "0.05",
        "--downloads",
        "4",
        "--timeout",
        "60",
    ]);
    assert_eq!(figures["scenario"], "converge");
    assert_eq!(number(&figures, "converged"), 40.0, "{figures}");
    assert_eq!(number(&figures, "errors"), 0.0, "{figures}");
    assert_eq!(number(&figures, "throughput_errors"), 0.0, "{figures}");
    assert!(number(&figures, "blob_mib_per_s") > 0.0);
    assert!(number(&figures, "bound_s") > 0.0);
    assert!(number(&figures, "converge_s") > 0.0);
    assert!(number(&figures, "package_bytes") > 50_000.0);
    check_machine(&figures);
}

#[test]
fn rollout_goes_through_every_step_to_every_agent() {
    let figures = run(&[
        "rollout",
        "--clients",
        "50",
        "--package-mib",
        "0.05",
        "--downloads",
        "4",
        "--steps",
        "1,10%,50%,100%",
        "--timeout",
        "120",
    ]);
    assert_eq!(figures["scenario"], "rollout");
    assert_eq!(number(&figures, "steps"), 4.0, "{figures}");
    assert_eq!(number(&figures, "steps_seen"), 4.0, "{figures}");
    assert_eq!(number(&figures, "on_new"), 50.0, "{figures}");
    assert_eq!(number(&figures, "errors"), 0.0, "{figures}");
    assert_eq!(number(&figures, "throughput_errors"), 0.0, "{figures}");
    // Each step admits its share in all (1, 10 % and 50 % of 50 rounded up, then everyone).
    for (step, new, total) in [
        (1, 1.0, 1.0),
        (2, 4.0, 5.0),
        (3, 20.0, 25.0),
        (4, 25.0, 50.0),
    ] {
        assert_eq!(
            number(&figures, &format!("step{step}.admitted")),
            new,
            "{figures}"
        );
        assert_eq!(
            number(&figures, &format!("step{step}.admitted_total")),
            total,
            "{figures}"
        );
        assert!(
            number(&figures, &format!("step{step}.bytes")) > 50_000.0 * new,
            "{figures}"
        );
        assert!(
            number(&figures, &format!("step{step}.duration_s")) > 0.0,
            "{figures}"
        );
    }
    // The steps follow one another.
    for step in 1..4 {
        assert!(
            number(&figures, &format!("step{}.start_s", step + 1))
                >= number(&figures, &format!("step{step}.start_s")),
            "{figures}"
        );
    }
    assert!(number(&figures, "blob_mib_per_s") > 0.0);
    assert!(number(&figures, "bound_s") > 0.0);
    assert!(number(&figures, "complete_s") > 0.0, "{figures}");
    assert_eq!(
        figures["targets"]["every_step_every_agent"], true,
        "{figures}"
    );
    check_machine(&figures);
}

#[test]
fn console_measures_its_pages_against_the_baseline() {
    let figures = run(&["console", "--clients", "3000", "--rounds", "3"]);
    assert_eq!(figures["scenario"], "console");
    assert_eq!(number(&figures, "clients"), 3000.0, "{figures}");
    assert!(number(&figures, "healthz_ms") > 0.0);
    for page in [
        "overview",
        "clients_first",
        "clients_filtered",
        "clients_search",
        "clients_sorted",
    ] {
        assert!(number(&figures, &format!("{page}_ms")) > 0.0, "{page}");
        // A page of rows, not a sign-in form or an error page.
        assert!(
            number(&figures, &format!("{page}_bytes")) > 1_000.0,
            "{page}: {figures}"
        );
    }
    check_machine(&figures);
}

#[test]
fn tasks_records_every_result_of_an_exec_task() {
    let figures = run(&["tasks", "--waiting", "300", "--settle", "0.5"]);
    assert_eq!(figures["scenario"], "tasks");
    assert_eq!(number(&figures, "started"), 300.0, "{figures}");
    assert_eq!(number(&figures, "recorded"), 300.0, "{figures}");
    assert_eq!(number(&figures, "run_targets"), 300.0, "{figures}");
    assert_eq!(number(&figures, "succeeded"), 300.0, "{figures}");
    assert_eq!(number(&figures, "lost"), 0.0, "{figures}");
    assert_eq!(number(&figures, "errors"), 0.0, "{figures}");
    assert!(number(&figures, "result_record_bytes") > 50.0, "{figures}");
    check_machine(&figures);
}

/// The tc-agent binary of this build, built first (into its own target directory, since the
/// running `cargo test` holds the lock of this one) when it is not there.
fn agent_binary() -> PathBuf {
    let name = format!("tc-agent{}", std::env::consts::EXE_SUFFIX);
    let profile_dir = Path::new(env!("CARGO_BIN_EXE_tc-bench"))
        .parent()
        .unwrap()
        .to_path_buf();
    let beside = profile_dir.join(&name);
    if beside.is_file() {
        return beside;
    }
    let target = profile_dir.parent().unwrap().join("tc-bench-agent");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "tc-agent",
            "--bin",
            "tc-agent",
            "--target-dir",
        ])
        .arg(&target)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building tc-agent failed");
    target.join("debug").join(name)
}

#[test]
fn agent_reports_size_memory_and_idle_cpu() {
    let binary = agent_binary();
    let figures = run(&[
        "agent",
        "--idle",
        "2",
        "--warmup",
        "0.5",
        "--allow-debug-agent",
        "--agent-binary",
        binary.to_str().unwrap(),
    ]);
    assert_eq!(figures["scenario"], "agent");
    assert!(number(&figures, "binary_bytes") > 0.0);
    assert!(number(&figures, "rss_mib") > 0.0, "{figures}");
    assert!(number(&figures, "cpu_seconds_per_hour") >= 0.0);
    assert!(number(&figures, "cpu_seconds_per_hour_precise") >= 0.0);
    assert!(figures["stripped"].is_boolean());
    assert_ne!(figures["last_heartbeat"], "none", "{figures}");
    check_machine(&figures);
}

#[test]
fn scenarios_run_on_postgresql_too() {
    let figures = run(&[
        "--postgres",
        "heartbeat",
        "--clients",
        "50",
        "--connections",
        "4",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
    ]);
    assert_eq!(figures["store"], "postgresql", "{figures}");
    assert!(number(&figures, "controller.rps") > 0.0, "{figures}");
    assert_eq!(number(&figures, "controller.errors"), 0.0, "{figures}");
    assert!(number(&figures, "ratio") > 0.0, "{figures}");
    let figures = run(&[
        "--postgres",
        "push",
        "--waiting",
        "80",
        "--settle",
        "0.3",
        "--timeout",
        "30",
        "--rounds",
        "1",
    ]);
    assert_eq!(figures["store"], "postgresql", "{figures}");
    assert_eq!(number(&figures, "notified"), 80.0, "{figures}");
    assert_eq!(number(&figures, "errors"), 0.0, "{figures}");
    // Spread over three replicas: every agent notified, whichever replica it waits on.
    let figures = run(&[
        "--postgres",
        "--replicas",
        "3",
        "push",
        "--waiting",
        "90",
        "--settle",
        "0.3",
        "--timeout",
        "30",
        "--rounds",
        "1",
    ]);
    assert_eq!(number(&figures, "replicas"), 3.0, "{figures}");
    assert_eq!(number(&figures, "notified"), 90.0, "{figures}");
    assert_eq!(number(&figures, "errors"), 0.0, "{figures}");
    // Without the flag, the embedded store.
    let figures = run(&[
        "heartbeat",
        "--clients",
        "20",
        "--duration",
        "0.2",
        "--warmup",
        "0.1",
    ]);
    assert_eq!(figures["store"], "redb", "{figures}");
}
