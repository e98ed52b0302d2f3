//! `tc-bench push`: agents waiting on the desired-state long-poll; one apply changes what all of
//! them should run; how long until every one of them has the new desired revision.

use std::time::{Duration, Instant};

use tc_testkit::sim::{SimConfig, SimFleet, Via};

use super::{Workspace, describe_transport, mib, quantile_ms, seconds};
use crate::PushArgs;
use crate::admin::{group_yaml, release_yaml};
use crate::report::Report;

/// Runs the scenario.
pub async fn run(args: PushArgs) -> Result<Report, String> {
    let transport = super::choose_transport(args.transport, args.waiting, 64)?;
    let workspace = Workspace::new()?;
    super::seed(&workspace.data_dir(), args.waiting, args.seed).await?;
    let controller = super::start_controller(&workspace, None).await?;
    let admin = &controller.admin;
    let zip = tc_testkit::build_zip(&[tc_testkit::PackageFile {
        path: "README",
        content: b"pushed by tc-bench",
        mode: 0o644,
    }]);
    let sha = admin.put_blob(&zip).await?;
    let heartbeat_seconds = args.interval.round() as u64;
    admin
        .apply(&format!(
            "{}{}",
            release_yaml("bench-push", "1.0.0", &sha),
            group_yaml("sim-push", &[], heartbeat_seconds)
        ))
        .await?;

    let fleet = SimFleet::seeded(args.seed, args.waiting, true);
    let mut config = SimConfig::new(controller.server.addr, seconds(args.interval));
    config.connections = 16;
    config.long_poll_share = 1.0;
    config.long_poll_transport = transport;
    config.seed = args.seed;
    let sim = fleet.start(config);
    let setup = Instant::now();
    while sim.snapshot().long_polls_waiting < args.waiting {
        if setup.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "only {} of {} long-polls were sent within 5 minutes: {:?}",
                sim.snapshot().long_polls_waiting,
                args.waiting,
                sim.error_samples()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = setup.elapsed();
    tokio::time::sleep(seconds(args.settle)).await;
    let rss_waiting = controller.server.figures().rss_bytes;

    let before = sim.snapshot();
    let passes_before = super::reconcile_figures(admin).await?;
    let controller_cpu_before = controller.server.figures().cpu_seconds;
    let own_cpu_before = crate::process::figures(std::process::id()).unwrap_or_default();
    let applied = Instant::now();
    admin
        .apply(&group_yaml(
            "sim-push",
            &[("bench-push", "1.0.0")],
            heartbeat_seconds,
        ))
        .await?;
    let apply_took = applied.elapsed();
    let all = sim
        .wait_for(seconds(args.timeout), Duration::from_millis(20), |view| {
            view.desired_revision >= 1
        })
        .await;
    let last_learned = applied.elapsed();
    let controller_cpu = controller.server.figures().cpu_seconds - controller_cpu_before;
    let own_cpu = crate::process::figures(std::process::id())
        .unwrap_or_default()
        .cpu_seconds
        - own_cpu_before.cpu_seconds;
    let views = sim.fleet().views();
    let after = sim.snapshot();
    let passes_after = super::reconcile_figures(admin).await?;
    let errors_sample = sim.error_samples();
    sim.stop().await;
    controller.server.stop().await?;

    let mut latencies: Vec<Duration> = views
        .iter()
        .filter(|v| v.desired_revision >= 1)
        .filter_map(|v| v.learned_at.map(|at| at.saturating_duration_since(applied)))
        .collect();
    latencies.sort();
    let notified = latencies.len() as u64;
    let by_long_poll = views
        .iter()
        .filter(|v| v.desired_revision >= 1 && v.learned_by == Via::LongPoll)
        .count() as u64;
    let errors = after.errors() - before.errors();

    let mut report = Report::new("push");
    report.section("setup");
    report.count("waiting", "agents waiting on the long-poll", args.waiting);
    report.text(
        "transport",
        "long-poll transport",
        &describe_transport(transport, args.waiting),
    );
    report.number(
        "connect_s",
        "time to send every long-poll",
        connected.as_secs_f64(),
        1,
        "s",
    );
    report.number(
        "controller_rss_mib",
        "controller RSS with every agent waiting",
        mib(rss_waiting),
        1,
        "MiB",
    );
    report.section("one apply (a new package for every agent)");
    report.number(
        "apply_ms",
        "apply request",
        apply_took.as_secs_f64() * 1000.0,
        1,
        "ms",
    );
    report.count("notified", "agents with the new revision", notified);
    report.count(
        "via_long_poll",
        "of which learned it from the long-poll",
        by_long_poll,
    );
    report.number(
        "p50_ms",
        "time from apply to agent, p50",
        quantile_ms(&latencies, 0.5),
        1,
        "ms",
    );
    report.number("p99_ms", "p99", quantile_ms(&latencies, 0.99), 1, "ms");
    report.number("max_ms", "max", quantile_ms(&latencies, 1.0), 1, "ms");
    report.count(
        "reconcile_passes",
        "reconcile passes meanwhile",
        (passes_after.0 - passes_before.0) as u64,
    );
    report.number(
        "reconcile_s",
        "time in them",
        passes_after.1 - passes_before.1,
        2,
        "s",
    );
    report.number(
        "controller_cpu_s",
        "controller CPU until every agent had it",
        controller_cpu,
        2,
        "s",
    );
    report.number(
        "simulator_cpu_s",
        "simulator CPU meanwhile",
        own_cpu,
        2,
        "s",
    );
    report.number(
        "window_s",
        "wall time of that window",
        last_learned.as_secs_f64(),
        2,
        "s",
    );
    report.count("errors", "errors", errors);
    if let Some(sample) = errors_sample.first() {
        report.text("first_error", "first error", sample);
    }
    report.section("targets");
    let max = quantile_ms(&latencies, 1.0);
    report.target(
        "all_within_1s",
        "every agent notified within 1 s",
        all && notified == args.waiting && max <= 1000.0,
        &format!("{notified} of {} within {max:.0} ms", args.waiting),
    );
    Ok(report)
}
