//! `tc-bench tasks`: agents waiting on the long-poll; one `exec` task targets all of them; how
//! long until every agent has received its order (it starts it on receipt) and until the
//! controller has recorded every result (answered the report, after storing it), how many were
//! lost, and what the results cost the controller in memory and on disk.

use std::time::{Duration, Instant};

use serde_json::json;
use tc_testkit::sim::{SimConfig, SimFleet};

use super::{Workspace, describe_transport, mib, quantile_ms, seconds};
use crate::TasksArgs;
use crate::report::Report;

/// The task every agent runs.
const TASK: &str = "bench-exec";

/// Bytes under `dir`, recursively.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Runs the scenario.
pub async fn run(args: TasksArgs) -> Result<Report, String> {
    let transport = super::choose_transport(args.transport, args.waiting, 64)?;
    let workspace = Workspace::new()?;
    super::seed(&workspace, args.waiting, args.seed).await?;
    let controller = super::start_controller(&workspace, None).await?;
    let admin = &controller.admin;
    let fleet = SimFleet::seeded(
        args.seed,
        args.waiting,
        true,
        &super::session_key(&workspace)?,
    );
    let mut config = SimConfig::new(controller.server.addr, seconds(args.interval));
    config.connections = 16;
    config.long_poll_share = 1.0;
    config.long_poll_transport = transport;
    config.seed = args.seed;
    config.answer_tasks = true;
    let sim = fleet.start(config);
    super::push::wait_until_all_wait(&sim, args.waiting).await?;
    tokio::time::sleep(seconds(args.settle)).await;
    let rss_before = controller.server.figures().rss_bytes;
    let disk_before = disk_bytes(&workspace.data_dir());
    let cpu_before = controller.server.figures().cpu_seconds;

    let task = json!({
        "apiVersion": "thinfleet.io/v1", "kind": "Task", "metadata": { "name": TASK },
        "spec": { "targets": { "selector": {} }, "action": "exec",
                  "exec": { "command": ["true"], "timeoutSeconds": 60 },
                  "deadlineSeconds": 600 },
    });
    let created = Instant::now();
    admin
        .post_json("/apis/thinfleet.io/v1/tasks", &task)
        .await?;
    let create_ms = created.elapsed().as_secs_f64() * 1000.0;
    let limit = seconds(args.timeout);
    loop {
        let snapshot = sim.snapshot();
        if snapshot.task_reports >= args.waiting || created.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let window = created.elapsed();
    let controller_cpu = controller.server.figures().cpu_seconds - cpu_before;
    let times = sim.task_times();
    let mut started: Vec<Duration> = times
        .iter()
        .filter_map(|(received, _)| received.map(|at| at.saturating_duration_since(created)))
        .collect();
    let mut recorded: Vec<Duration> = times
        .iter()
        .filter_map(|(_, acked)| acked.map(|at| at.saturating_duration_since(created)))
        .collect();
    started.sort();
    recorded.sort();
    // What the controller says it holds.
    let status = admin
        .get(&format!("/apis/thinfleet.io/v1/tasks/{TASK}"))
        .await?;
    let run = &status["status"]["runs"][0];
    let counted = |key: &str| run[key].as_u64().unwrap_or(0);
    let succeeded = counted("succeeded");
    let targets = counted("targets");
    // The size of a stored result: its record as the results route gives it (the store keeps
    // the same JSON).
    let page = admin
        .get(&format!(
            "/apis/thinfleet.io/v1/tasks/{TASK}/results?limit=1000"
        ))
        .await?;
    let items = page["items"].as_array().cloned().unwrap_or_default();
    let record_bytes = items
        .iter()
        .map(|item| serde_json::to_vec(item).map_or(0, |bytes| bytes.len()))
        .sum::<usize>() as f64
        / items.len().max(1) as f64;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = controller.server.figures().rss_bytes;
    let disk_after = disk_bytes(&workspace.data_dir());
    let snapshot = sim.snapshot();
    let errors_sample = sim.error_samples();
    sim.stop().await;
    controller.server.stop().await?;

    let mut report = Report::new("tasks");
    report.text("store", "store", workspace.store_name());
    report.section("setup");
    report.count("waiting", "agents waiting on the long-poll", args.waiting);
    report.text(
        "transport",
        "long-poll transport",
        &describe_transport(transport, args.waiting),
    );
    report.number(
        "controller_rss_mib",
        "controller RSS with every agent waiting",
        mib(rss_before),
        1,
        "MiB",
    );
    report.section("one exec task to every agent");
    report.number(
        "create_ms",
        "task created (POST answered)",
        create_ms,
        1,
        "ms",
    );
    report.count(
        "started",
        "agents that received their order",
        started.len() as u64,
    );
    report.number(
        "started_p50_ms",
        "time from creation to order received, p50",
        quantile_ms(&started, 0.5),
        1,
        "ms",
    );
    report.number(
        "started_p99_ms",
        "p99",
        quantile_ms(&started, 0.99),
        1,
        "ms",
    );
    report.number("started_max_ms", "max", quantile_ms(&started, 1.0), 1, "ms");
    report.count(
        "recorded",
        "results the controller acknowledged",
        recorded.len() as u64,
    );
    report.number(
        "recorded_p50_ms",
        "time from creation to result recorded, p50",
        quantile_ms(&recorded, 0.5),
        1,
        "ms",
    );
    report.number(
        "recorded_p99_ms",
        "p99",
        quantile_ms(&recorded, 0.99),
        1,
        "ms",
    );
    report.number(
        "recorded_max_ms",
        "max",
        quantile_ms(&recorded, 1.0),
        1,
        "ms",
    );
    report.count("run_targets", "targets in the controller's run", targets);
    report.count(
        "succeeded",
        "succeeded in the controller's status",
        succeeded,
    );
    let lost = args.waiting.saturating_sub(succeeded);
    report.count("lost", "results lost (targets not counted succeeded)", lost);
    report.number(
        "controller_cpu_s",
        "controller CPU until every result was recorded",
        controller_cpu,
        2,
        "s",
    );
    report.number(
        "window_s",
        "wall time of that window",
        window.as_secs_f64(),
        2,
        "s",
    );
    let per = |bytes: u64| bytes as f64 / succeeded.max(1) as f64;
    report.number(
        "rss_per_result_bytes",
        "controller RSS growth per result (the run in memory: state and target name)",
        per(rss_after.saturating_sub(rss_before)),
        0,
        "B",
    );
    report.number(
        "result_record_bytes",
        "a stored result record (state, times, exit code, output tail), mean",
        record_bytes,
        0,
        "B",
    );
    report.number(
        "disk_per_result_bytes",
        "store file growth per result (redb grows in steps: 0 at small sizes)",
        per(disk_after.saturating_sub(disk_before)),
        0,
        "B",
    );
    report.count("errors", "errors", snapshot.errors());
    if let Some(sample) = errors_sample.first() {
        report.text("first_error", "first error", sample);
    }
    report.section("targets");
    let started_max = quantile_ms(&started, 1.0);
    let recorded_max = quantile_ms(&recorded, 1.0);
    report.target(
        "all_started_within_1s",
        "every agent received its order within 1 s",
        started.len() as u64 == args.waiting && started_max <= 1000.0,
        &format!(
            "{} of {}; the slowest after {started_max:.0} ms",
            started.len(),
            args.waiting
        ),
    );
    report.target(
        "all_recorded_within_5s",
        "every result recorded within 5 s, none lost",
        recorded.len() as u64 == args.waiting && recorded_max <= 5000.0 && lost == 0,
        &format!(
            "{} of {} recorded, the last after {recorded_max:.0} ms; {lost} lost",
            recorded.len(),
            args.waiting
        ),
    );
    Ok(report)
}
