//! `tc-bench push`: agents waiting on the desired-state long-poll; one apply changes what all of
//! them should run; how long until every one of them has the new desired revision. The apply is
//! repeated (`--rounds`), each time with a newer release, so that one run shows the spread.

use std::time::{Duration, Instant};

use tc_testkit::sim::{RunningSim, SimConfig, SimFleet, Via};

use super::{Workspace, describe_transport, mib, quantile_ms, seconds};
use crate::PushArgs;
use crate::admin::{Admin, group_yaml, release_yaml};
use crate::report::Report;

/// What one round measured.
struct Round {
    apply: Duration,
    /// Apply to agent, sorted.
    latencies: Vec<Duration>,
    by_long_poll: u64,
    all: bool,
    passes: f64,
    pass_seconds: f64,
    controller_cpu: f64,
    simulator_cpu: f64,
    window: Duration,
    errors: u64,
}

impl Round {
    fn max_ms(&self) -> f64 {
        quantile_ms(&self.latencies, 1.0)
    }
}

/// The version of the release that round `round` (from 1) assigns.
fn version(round: u32) -> String {
    format!("1.0.{}", round - 1)
}

/// Runs the scenario.
pub async fn run(args: PushArgs) -> Result<Report, String> {
    if args.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let transport = super::choose_transport(args.transport, args.waiting, 64)?;
    let workspace = Workspace::new()?;
    super::seed(&workspace, args.waiting, args.seed).await?;
    let controller = super::start_controller(&workspace, None).await?;
    let admin = &controller.admin;
    let zip = tc_testkit::build_zip(&[tc_testkit::PackageFile {
        path: "README",
        content: b"pushed by tc-bench",
        mode: 0o644,
    }]);
    let sha = admin.put_blob(&zip).await?;
    let heartbeat_seconds = args.interval.round() as u64;
    let mut manifests: String = (1..=args.rounds)
        .map(|round| release_yaml("bench-push", &version(round), &sha))
        .collect();
    manifests.push_str(&group_yaml("sim-push", &[], heartbeat_seconds));
    admin.apply(&manifests).await?;

    let fleet = SimFleet::seeded(
        args.seed,
        args.waiting,
        true,
        &super::session_key(&workspace)?,
    );
    let mut config = SimConfig::new(controller.server.addr, seconds(args.interval));
    // With --replicas, the agents are spread over every replica.
    config.servers = controller.addrs();
    config.connections = 16;
    config.long_poll_share = 1.0;
    config.long_poll_transport = transport;
    config.seed = args.seed;
    let sim = fleet.start(config);
    let setup = Instant::now();
    wait_until_all_wait(&sim, args.waiting).await?;
    let connected = setup.elapsed();
    tokio::time::sleep(seconds(args.settle)).await;
    let rss_waiting = controller.server.figures().rss_bytes;

    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        if round > 1 {
            wait_until_all_wait(&sim, args.waiting).await?;
            tokio::time::sleep(seconds(args.settle)).await;
        }
        let version = version(round);
        let group = group_yaml(
            "sim-push",
            &[("bench-push", version.as_str())],
            heartbeat_seconds,
        );
        rounds.push(measure(&controller, admin, &sim, &group, round, &args).await?);
    }
    let errors_sample = sim.error_samples();
    sim.stop().await;
    let replicas = controller.addrs().len();
    controller.stop().await?;

    let mut report = Report::new("push");
    report.text("store", "store", workspace.store_name());
    report.count(
        "replicas",
        "controller replicas the agents are spread over",
        replicas as u64,
    );
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
    report.count(
        "rounds",
        "applies, each a newer release",
        rounds.len() as u64,
    );
    for (index, round) in rounds.iter().enumerate() {
        report.section(&format!(
            "round {} (every agent is assigned bench-push {})",
            index + 1,
            version(index as u32 + 1)
        ));
        let key = |name: &str| format!("round{}_{name}", index + 1);
        report.number(
            &key("apply_ms"),
            "apply request",
            round.apply.as_secs_f64() * 1000.0,
            1,
            "ms",
        );
        report.count(
            &key("notified"),
            "agents with the new revision",
            round.latencies.len() as u64,
        );
        report.count(
            &key("via_long_poll"),
            "of which learned it from the long-poll",
            round.by_long_poll,
        );
        report.number(
            &key("p50_ms"),
            "time from apply to agent, p50",
            quantile_ms(&round.latencies, 0.5),
            1,
            "ms",
        );
        report.number(
            &key("p99_ms"),
            "p99",
            quantile_ms(&round.latencies, 0.99),
            1,
            "ms",
        );
        report.number(&key("max_ms"), "max", round.max_ms(), 1, "ms");
        report.count(
            &key("reconcile_passes"),
            "reconcile passes meanwhile",
            round.passes as u64,
        );
        report.number(
            &key("reconcile_s"),
            "time in them",
            round.pass_seconds,
            2,
            "s",
        );
        report.number(
            &key("controller_cpu_s"),
            "controller CPU until every agent had it",
            round.controller_cpu,
            2,
            "s",
        );
        report.number(
            &key("simulator_cpu_s"),
            "simulator CPU meanwhile",
            round.simulator_cpu,
            2,
            "s",
        );
        report.number(
            &key("window_s"),
            "wall time of that window",
            round.window.as_secs_f64(),
            2,
            "s",
        );
        report.count(&key("errors"), "errors", round.errors);
    }

    // Over every round: latencies pooled, the worst round's maximum, the median round's CPU.
    let mut pooled: Vec<Duration> = rounds.iter().flat_map(|r| r.latencies.clone()).collect();
    pooled.sort();
    let median = |value: fn(&Round) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(value).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let worst = rounds.iter().map(Round::max_ms).fold(0.0, f64::max);
    let notified = rounds
        .iter()
        .map(|r| r.latencies.len() as u64)
        .min()
        .unwrap_or(0);
    let errors: u64 = rounds.iter().map(|r| r.errors).sum();
    report.section("over every round");
    report.count(
        "notified",
        "agents with the new revision, fewest in a round",
        notified,
    );
    report.count(
        "via_long_poll",
        "learned from the long-poll, fewest in a round",
        rounds.iter().map(|r| r.by_long_poll).min().unwrap_or(0),
    );
    report.number(
        "p50_ms",
        "time from apply to agent, p50",
        quantile_ms(&pooled, 0.5),
        1,
        "ms",
    );
    report.number("p99_ms", "p99", quantile_ms(&pooled, 0.99), 1, "ms");
    report.number("max_ms", "max (the worst round)", worst, 1, "ms");
    report.number(
        "median_round_max_ms",
        "max of the median round",
        median(Round::max_ms),
        1,
        "ms",
    );
    report.number(
        "controller_cpu_s",
        "controller CPU per round, median",
        median(|r| r.controller_cpu),
        2,
        "s",
    );
    report.number(
        "simulator_cpu_s",
        "simulator CPU per round, median",
        median(|r| r.simulator_cpu),
        2,
        "s",
    );
    report.number(
        "reconcile_s",
        "reconcile time per round, median",
        median(|r| r.pass_seconds),
        2,
        "s",
    );
    report.count("errors", "errors", errors);
    if let Some(sample) = errors_sample.first() {
        report.text("first_error", "first error", sample);
    }
    report.section("targets");
    let all = rounds.iter().all(|r| r.all);
    report.target(
        "all_within_1s",
        "every agent notified within 1 s, in every round",
        all && notified == args.waiting && worst <= 1000.0,
        &format!(
            "{notified} of {} in each of {} rounds; the slowest agent took {worst:.0} ms",
            args.waiting,
            rounds.len()
        ),
    );
    Ok(report)
}

/// Waits until every agent has its long-poll open (5 minutes at most).
pub(crate) async fn wait_until_all_wait(sim: &RunningSim, waiting: u64) -> Result<(), String> {
    let setup = Instant::now();
    while sim.snapshot().long_polls_waiting < waiting {
        if setup.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "only {} of {waiting} long-polls were open after 5 minutes: {:?}",
                sim.snapshot().long_polls_waiting,
                sim.error_samples()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Applies `group` and measures until every agent has desired revision `round`.
async fn measure(
    controller: &super::RunningController,
    admin: &Admin,
    sim: &RunningSim,
    group: &str,
    round: u32,
    args: &PushArgs,
) -> Result<Round, String> {
    let before = sim.snapshot();
    let passes_before = super::reconcile_figures(admin).await?;
    let controller_cpu_before =
        controller.server.figures().cpu_seconds + controller.followers_cpu_seconds();
    let own_cpu_before = crate::process::figures(std::process::id()).unwrap_or_default();
    let applied = Instant::now();
    admin.apply(group).await?;
    let apply = applied.elapsed();
    let revision = u64::from(round);
    let all = sim
        .wait_for(seconds(args.timeout), Duration::from_millis(20), |view| {
            view.desired_revision >= revision
        })
        .await;
    let window = applied.elapsed();
    let controller_cpu = controller.server.figures().cpu_seconds
        + controller.followers_cpu_seconds()
        - controller_cpu_before;
    let simulator_cpu = crate::process::figures(std::process::id())
        .unwrap_or_default()
        .cpu_seconds
        - own_cpu_before.cpu_seconds;
    let after = sim.snapshot();
    let passes_after = super::reconcile_figures(admin).await?;
    let views = sim.fleet().views();
    let learned: Vec<_> = views
        .iter()
        .filter(|v| v.desired_revision >= revision)
        .collect();
    let mut latencies: Vec<Duration> = learned
        .iter()
        .filter_map(|v| v.learned_at.map(|at| at.saturating_duration_since(applied)))
        .collect();
    latencies.sort();
    Ok(Round {
        apply,
        by_long_poll: learned
            .iter()
            .filter(|v| v.learned_by == Via::LongPoll)
            .count() as u64,
        latencies,
        all,
        passes: passes_after.0 - passes_before.0,
        pass_seconds: passes_after.1 - passes_before.1,
        controller_cpu,
        simulator_cpu,
        window,
        errors: after.errors() - before.errors(),
    })
}
