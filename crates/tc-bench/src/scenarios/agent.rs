//! `tc-bench agent`: the real `tc-agent` binary enrolled with a real controller and left idle
//! (heartbeating, waiting on the long-poll): stripped binary size, resident memory, and CPU time
//! extrapolated to an hour.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{Workspace, mib, seconds};
use crate::AgentArgs;
use crate::process::{figures, this_binary};
use crate::report::Report;

/// Where the agent binary is: the flag, else next to this executable, else (when allowed) the
/// debug build of the same target directory. Returns the path and whether it is a debug build.
fn agent_binary(args: &AgentArgs) -> Result<(PathBuf, bool), String> {
    let name = format!("tc-agent{}", std::env::consts::EXE_SUFFIX);
    if let Some(path) = &args.agent_binary {
        return if path.is_file() {
            Ok((
                path.clone(),
                path.components().any(|c| c.as_os_str() == "debug"),
            ))
        } else {
            Err(format!("{} does not exist", path.display()))
        };
    }
    let exe = this_binary()?;
    let beside = exe.with_file_name(&name);
    let profile_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let is_debug = profile_dir.ends_with("debug") || profile_dir.ends_with("deps");
    if beside.is_file() && !is_debug {
        return Ok((beside, false));
    }
    let debug = profile_dir
        .ancestors()
        .find(|p| p.join("debug").join(&name).is_file())
        .map(|p| p.join("debug").join(&name));
    match debug {
        Some(path) if args.allow_debug_agent => Ok((path, true)),
        _ if beside.is_file() && args.allow_debug_agent => Ok((beside, true)),
        _ => Err(format!(
            "no release tc-agent next to {}: run `cargo build --release -p tc-agent` first \
             (or pass --agent-binary, or --allow-debug-agent for a smoke run)",
            exe.display()
        )),
    }
}

/// Size of the binary after `strip`, if `strip` is available; else its size as built.
fn stripped_size(binary: &Path, workspace: &Workspace) -> Result<(u64, bool), String> {
    let copy = workspace.path("tc-agent.stripped");
    std::fs::copy(binary, &copy).map_err(|e| format!("copying {}: {e}", binary.display()))?;
    let stripped = std::process::Command::new("strip")
        .arg(&copy)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let size = std::fs::metadata(&copy).map_err(|e| e.to_string())?.len();
    Ok((size, stripped))
}

/// Runs the scenario.
pub async fn run(args: AgentArgs) -> Result<Report, String> {
    let (binary, debug_build) = agent_binary(&args)?;
    let workspace = Workspace::new()?;
    let (binary_bytes, stripped) = stripped_size(&binary, &workspace)?;
    std::fs::create_dir_all(workspace.data_dir()).map_err(|e| e.to_string())?;
    let tls = !args.insecure_http;
    let controller = super::start_controller_with(&workspace, None, tls).await?;
    let state_dir = workspace.path("agent-state");
    let log = std::fs::File::create(workspace.path("agent.log")).map_err(|e| e.to_string())?;
    let mut command = tokio::process::Command::new(&binary);
    if tls {
        let ca = tc_trust::read_pem_certificates(&workspace.data_dir().join("pki/ca.crt"))
            .map_err(|e| e.to_string())?;
        let hash = tc_trust::CaCertHash::of_certificate(&ca[0]).map_err(|e| e.to_string())?;
        command
            .arg("--server")
            .arg(format!("https://{}", controller.server.addr))
            .arg("--ca-cert-hash")
            .arg(hash.to_string());
    } else {
        command
            .arg("--server")
            .arg(format!("http://{}", controller.server.addr));
    }
    let mut agent = command
        .arg("--bootstrap-token-file")
        .arg(workspace.data_dir().join("bootstrap.token"))
        .arg("--state-dir")
        .arg(&state_dir)
        .arg("--machine-id")
        .arg("tc-bench-idle-agent")
        .arg("--name")
        .arg("bench-agent")
        .env("TC_AGENT_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let pid = agent.id().unwrap_or(0);

    // Enrolled and heartbeating: the controller shows it Online.
    let started = Instant::now();
    loop {
        let online = controller
            .admin
            .get("/apis/thinfleet.io/v1/clients/bench-agent")
            .await
            .is_ok_and(|client| client["status"]["phase"] == "Online");
        if online {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = agent.kill().await;
            return Err(format!(
                "the agent did not come online within a minute: {}",
                crate::process::log_tail(&workspace.path("agent.log"))
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let enrolled_after = started.elapsed();
    tokio::time::sleep(seconds(args.warmup)).await;
    let before = figures(pid).ok_or("the agent exited")?;
    let idle = seconds(args.idle);
    let measured = Instant::now();
    tokio::time::sleep(idle).await;
    let after = figures(pid).ok_or("the agent exited while idle")?;
    let window = measured.elapsed().as_secs_f64();
    let heartbeats = controller
        .admin
        .get("/apis/thinfleet.io/v1/clients/bench-agent")
        .await?;
    let _ = agent.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), agent.wait()).await;
    controller.server.stop().await?;

    let cpu = (after.cpu_seconds - before.cpu_seconds).max(0.0);
    let precise = (after.live_thread_cpu_seconds - before.live_thread_cpu_seconds).max(0.0);
    let per_hour = cpu / window * 3600.0;
    let precise_per_hour = precise / window * 3600.0;

    let mut report = Report::new("agent");
    report.text("store", "store", workspace.store_name());
    report.section("binary");
    report.text("binary", "agent binary", &binary.display().to_string());
    report.set("debug_build", debug_build);
    report.text(
        "transport",
        "transport",
        if tls {
            "HTTPS, the controller's CA pinned by its fingerprint"
        } else {
            "plain HTTP (--insecure-http)"
        },
    );
    report.text(
        "build",
        "build",
        if debug_build {
            "debug (smoke run: not the release figures)"
        } else {
            "release"
        },
    );
    report.set("stripped", stripped);
    report.number(
        "binary_mib",
        if stripped {
            "size after strip"
        } else {
            "size (strip not available)"
        },
        mib(binary_bytes),
        2,
        "MiB",
    );
    report.set("binary_bytes", binary_bytes);
    report.section("idle");
    report.number(
        "enrol_s",
        "time to enrol and come online",
        enrolled_after.as_secs_f64(),
        2,
        "s",
    );
    report.number("idle_s", "idle window measured", window, 1, "s");
    report.text(
        "last_heartbeat",
        "last heartbeat seen by the controller",
        heartbeats["status"]["lastHeartbeat"]
            .as_str()
            .unwrap_or("none"),
    );
    report.number(
        "rss_mib",
        "RSS at the end of the window",
        mib(after.rss_bytes),
        2,
        "MiB",
    );
    report.number(
        "rss_peak_mib",
        "peak RSS",
        mib(after.rss_peak_bytes),
        2,
        "MiB",
    );
    report.number(
        "cpu_seconds_idle",
        "CPU in the window (clock ticks)",
        cpu,
        3,
        "s",
    );
    report.number(
        "cpu_seconds_per_hour",
        "CPU per hour, extrapolated (clock ticks)",
        per_hour,
        2,
        "s",
    );
    report.number(
        "cpu_seconds_per_hour_precise",
        "CPU per hour, extrapolated (schedstat of live threads)",
        precise_per_hour,
        3,
        "s",
    );
    report.section("targets");
    report.target(
        "binary",
        "stripped binary <= 8 MiB",
        binary_bytes <= 8 << 20,
        &format!("{:.2} MiB", mib(binary_bytes)),
    );
    report.target(
        "rss",
        "RSS idle <= 8 MiB",
        after.rss_bytes <= 8 << 20,
        &format!("{:.2} MiB", mib(after.rss_bytes)),
    );
    let judged = per_hour.max(precise_per_hour);
    report.target(
        "cpu",
        "under 1 CPU-second per hour idle",
        judged < 1.0,
        &format!("{judged:.2} s/h"),
    );
    Ok(report)
}
