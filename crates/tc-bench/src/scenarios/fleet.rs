//! `tc-bench fleet`: a large simulated fleet heartbeating on a jittered schedule against the real
//! controller, for a sustained window: achieved rate, latency, errors, controller memory and CPU.

use std::time::{Duration, Instant};

use tc_testkit::sim::{SimConfig, SimFleet};

use super::{Workspace, describe_transport, mib, seconds};
use crate::FleetArgs;
use crate::admin::group_yaml;
use crate::report::Report;

/// Runs the scenario.
pub async fn run(args: FleetArgs) -> Result<Report, String> {
    let workspace = Workspace::new()?;
    let seeding = super::seed_as(&workspace, args.clients, args.seed, args.first_contact).await?;
    let controller = super::start_controller_with(&workspace, None, args.tls).await?;
    let loaded = controller.server.figures();
    let interval = seconds(args.interval);
    controller
        .admin
        .apply(&group_yaml("sim-fleet", &[], args.interval.round() as u64))
        .await?;

    // The enrolment path real agents take, one request per agent.
    let enrolment = if args.enroll_http > 0 {
        let (_, report) = SimFleet::enroll(
            &[controller.server.addr],
            controller.tls.as_ref(),
            &controller.bootstrap_token,
            args.seed ^ 0x5eed,
            args.enroll_http,
            32,
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| e.to_string())?;
        Some(report)
    } else {
        None
    };

    let waiting = (args.clients as f64 * args.long_poll_share.clamp(0.0, 1.0)).round() as u64;
    let transport = super::choose_transport(args.transport, waiting, args.connections as u64)?;
    let fleet = SimFleet::seeded(
        args.seed,
        args.clients,
        !args.first_contact,
        &super::session_key(&workspace)?,
    );
    let mut config = SimConfig::new(controller.server.addr, interval);
    // With --replicas, the agents are spread over every replica.
    config.servers = controller.addrs();
    config.connections = args.connections;
    config.long_poll_share = args.long_poll_share;
    config.long_poll_transport = transport;
    config.seed = args.seed;
    config.tls = controller.tls.clone();
    let sim = fleet.start(config);

    let warmup = seconds(args.warmup.unwrap_or((args.interval / 4.0).min(15.0)));
    tokio::time::sleep(warmup).await;
    let _ = sim.take_latencies();
    let _ = sim.take_dispatch_lag();
    let before = sim.snapshot();
    let passes_before = super::reconcile_figures(&controller.admin).await?;
    let cpu_before = controller.server.figures().cpu_seconds;
    let followers_cpu_before = controller.followers_cpu_seconds();
    let started = Instant::now();
    let window = seconds(args.duration);
    let mut peak_rss = 0;
    let mut peak_follower_rss = 0;
    while started.elapsed() < window {
        let left = window.saturating_sub(started.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(2))).await;
        peak_rss = peak_rss.max(controller.server.figures().rss_bytes);
        peak_follower_rss = peak_follower_rss.max(controller.largest_follower_rss_bytes());
    }
    let elapsed = started.elapsed();
    let latency = sim.take_latencies();
    let lag = sim.take_dispatch_lag();
    let after = sim.snapshot();
    let figures = controller.server.figures();
    let followers_cpu = controller.followers_cpu_seconds() - followers_cpu_before;
    let passes_after = super::reconcile_figures(&controller.admin).await?;
    let errors_sample = sim.error_samples();
    let total = sim.stop().await;
    let total_inventories = total.inventories_sent;
    let replicas = controller.addrs().len();
    let startup = controller.startup;
    controller.stop().await?;

    let rate = (after.heartbeats - before.heartbeats) as f64 / elapsed.as_secs_f64();
    let expected = args.clients as f64 / args.interval;
    let errors = after.errors() - before.errors();
    let rss = figures.rss_bytes.max(peak_rss);
    let per_client = rss as f64 / args.clients.max(1) as f64;
    let cpu = (figures.cpu_seconds - cpu_before) / elapsed.as_secs_f64();

    let mut report = Report::new("fleet");
    report.text("store", "store", workspace.store_name());
    report.count(
        "replicas",
        "controller replicas the agents are spread over",
        replicas as u64,
    );
    report.section("setup");
    report.count("clients", "clients", args.clients);
    report.number(
        "interval_s",
        "heartbeat interval (±10 % jitter)",
        args.interval,
        1,
        "s",
    );
    report.count(
        "connections",
        "keep-alive connections",
        args.connections as u64,
    );
    report.number("warmup_s", "warm-up", warmup.as_secs_f64(), 1, "s");
    report.text(
        "start",
        "fleet at the start",
        if args.first_contact {
            "freshly enrolled: every first heartbeat carries the inventory"
        } else {
            "running: inventories known, heartbeats carry the hash"
        },
    );
    report.count(
        "inventories_sent",
        "heartbeats that carried a full inventory",
        total_inventories,
    );
    report.number(
        "duration_s",
        "measured window",
        elapsed.as_secs_f64(),
        1,
        "s",
    );
    report.text(
        "security",
        "agent connections",
        if args.tls {
            "HTTPS (TLS 1.3, the controller's generated certificate), session tokens"
        } else {
            "plain HTTP, session tokens"
        },
    );
    if waiting > 0 {
        report.count("long_polls", "agents on the long-poll", waiting);
        report.text(
            "transport",
            "long-poll transport",
            &describe_transport(transport, waiting),
        );
    }
    report.number(
        "seed_s",
        "seeding (Store::create_clients, 10k per transaction)",
        seeding.as_secs_f64(),
        1,
        "s",
    );
    report.number(
        "seed_rate",
        "seeding rate",
        args.clients as f64 / seeding.as_secs_f64().max(1e-9),
        0,
        "clients/s",
    );
    report.number(
        "startup_s",
        "controller start-up (open store, load fleet)",
        startup.as_secs_f64(),
        1,
        "s",
    );
    report.number(
        "loaded_rss_mib",
        "controller RSS after start-up",
        mib(loaded.rss_bytes),
        1,
        "MiB",
    );
    if let Some(enrolment) = &enrolment {
        report.number(
            "enroll_http_rate",
            "HTTP enrolment, 32 concurrent (extra agents)",
            enrolment.enrolled as f64 / enrolment.elapsed.as_secs_f64().max(1e-9),
            0,
            "enrolments/s",
        );
        report.count(
            "enroll_http_errors",
            "HTTP enrolment errors",
            enrolment.errors,
        );
    }
    report.section("sustained load");
    report.number(
        "expected_rate",
        "scheduled rate",
        expected,
        0,
        "heartbeats/s",
    );
    report.number("achieved_rate", "achieved rate", rate, 0, "heartbeats/s");
    report.number("p50_ms", "p50", latency.quantile_ms(0.5), 3, "ms");
    report.number("p99_ms", "p99", latency.quantile_ms(0.99), 3, "ms");
    report.number("max_ms", "max", latency.max_ms(), 1, "ms");
    report.count("errors", "errors in the window", errors);
    report.count("errors_total", "errors in the whole run", total.errors());
    report.count(
        "late_dispatches",
        "heartbeats dispatched > 100 ms late",
        after.late_dispatches - before.late_dispatches,
    );
    report.number(
        "dispatch_lag_p99_ms",
        "dispatch lag p99",
        lag.quantile_ms(0.99),
        1,
        "ms",
    );
    report.number(
        "controller_rss_mib",
        "controller RSS (peak in window)",
        mib(rss),
        1,
        "MiB",
    );
    report.number(
        "rss_per_client_bytes",
        "RSS per client",
        per_client,
        0,
        "bytes",
    );
    report.number("controller_cpu_cores", "controller CPU", cpu, 2, "cores");
    if replicas > 1 {
        report.number(
            "follower_rss_mib",
            "a follower's RSS (the largest, peak in window)",
            mib(peak_follower_rss),
            1,
            "MiB",
        );
        report.number(
            "followers_cpu_cores",
            "the followers' CPU, together",
            followers_cpu / elapsed.as_secs_f64(),
            2,
            "cores",
        );
    }
    let passes = passes_after.0 - passes_before.0;
    report.count(
        "reconcile_passes",
        "reconcile passes in the window",
        passes as u64,
    );
    report.number(
        "reconcile_pass_s",
        "mean reconcile pass",
        (passes_after.1 - passes_before.1) / passes.max(1.0),
        2,
        "s",
    );
    if let Some(sample) = errors_sample.first() {
        report.text("first_error", "first error", sample);
    }
    report.section("targets");
    let p99 = latency.quantile_ms(0.99);
    report.target(
        "errors",
        "0 errors",
        errors == 0 && total.errors() == 0,
        &format!("{} errors", total.errors()),
    );
    report.target("p99", "p99 < 10 ms", p99 < 10.0, &format!("{p99:.3} ms"));
    report.target(
        "rss",
        "controller RSS <= 2 GiB",
        rss <= 2 << 30,
        &format!("{:.0} MiB", mib(rss)),
    );
    report.target(
        "rate",
        "achieved rate within 2 % of the schedule",
        rate >= expected * 0.98,
        &format!("{rate:.0} of {expected:.0}/s"),
    );
    Ok(report)
}
