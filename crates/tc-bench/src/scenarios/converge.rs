//! `tc-bench converge`: a fleet running release 1.0.0 is told to run 2.0.0 (`--package-mib`
//! large); how long until every agent has downloaded, verified and reported it installed, beside
//! the bandwidth bound: total bytes over the blob throughput measured in the same run with the
//! same download code.

use std::time::{Duration, Instant};

use tc_testkit::sim::measure_downloads;

use super::{Workspace, describe_transport, quantile_ms, seconds};
use crate::ConvergeArgs;
use crate::admin::{group_yaml, release_yaml};
use crate::report::Report;

/// Deterministic bytes that do not compress (a zip of them is as large as asked).
pub(crate) fn noise(length: usize) -> Vec<u8> {
    let mut state = 0x1234_5678_9abc_def0u64;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A one-file zip package holding `content`.
pub(crate) fn package(content: &[u8]) -> Vec<u8> {
    tc_testkit::build_zip(&[tc_testkit::PackageFile {
        path: "payload.bin",
        content,
        mode: 0o644,
    }])
}

/// Runs the scenario.
pub async fn run(args: ConvergeArgs) -> Result<Report, String> {
    let transport =
        super::choose_transport(args.transport, args.clients, (args.downloads + 16) as u64)?;
    let workspace = Workspace::new()?;
    super::seed(&workspace, args.clients, args.seed).await?;
    let controller = super::start_controller(&workspace, None).await?;
    let admin = &controller.admin;
    let small = package(b"tc-bench release 1.0.0");
    let large = package(&noise(
        (args.package_mib * 1024.0 * 1024.0).max(1.0) as usize
    ));
    let size = large.len() as u64;
    let sha_small = admin.put_blob(&small).await?;
    let sha_large = admin.put_blob(&large).await?;
    let heartbeat_seconds = 300;
    admin
        .apply(&format!(
            "{}{}{}",
            release_yaml("bench-app", "1.0.0", &sha_small),
            release_yaml("bench-app", "2.0.0", &sha_large),
            group_yaml("sim-converge", &[("bench-app", "1.0.0")], heartbeat_seconds)
        ))
        .await?;

    let (fleet, sim) = super::start_installing_fleet(
        &workspace,
        controller.server.addr,
        (args.clients, args.seed, args.downloads),
        heartbeat_seconds,
        transport,
    )?;
    let token = fleet.agents()[0].token().to_string();
    let first = Instant::now();
    let timeout = seconds(args.timeout);
    if !sim
        .wait_for(timeout, Duration::from_millis(50), |v| {
            v.converged_revision >= 1
        })
        .await
    {
        return Err(format!(
            "the fleet did not install 1.0.0 within {timeout:?}: {:?} {:?}",
            sim.snapshot(),
            sim.error_samples()
        ));
    }
    let initial = first.elapsed();

    // Blob throughput with the agents' download code, the same concurrency, the new blob.
    let rounds = ((256u64 << 20) / size.max(1)).clamp(args.downloads as u64 * 2, 20_000);
    let throughput = measure_downloads(
        controller.server.addr,
        controller.tls.as_ref(),
        &token,
        tc_testkit::sim::BlobSpec {
            url: &format!("/blobs/sha256/{sha_large}"),
            sha256: &sha_large,
            size,
        },
        args.downloads,
        rounds,
    )
    .await;
    let bound = (args.clients * size) as f64 / throughput.bytes_per_second().max(1.0);

    let before = sim.snapshot();
    let views_before = sim.fleet().views();
    let target_revision: Vec<u64> = views_before
        .iter()
        .map(|v| v.desired_revision + 1)
        .collect();
    let applied = Instant::now();
    admin
        .apply(&group_yaml(
            "sim-converge",
            &[("bench-app", "2.0.0")],
            heartbeat_seconds,
        ))
        .await?;
    let done = sim
        .wait_for(timeout, Duration::from_millis(20), |v| {
            v.has_installed("bench-app", "2.0.0") && v.converged_revision == v.desired_revision
        })
        .await;
    let converged = applied.elapsed();
    let views = sim.fleet().views();
    let after = sim.snapshot();
    let errors_sample = sim.error_samples();
    sim.stop().await;
    controller.server.stop().await?;

    let mut per_agent: Vec<Duration> = views
        .iter()
        .zip(&target_revision)
        .filter(|(v, target)| v.converged_revision >= **target)
        .filter_map(|(v, _)| {
            v.converged_at
                .map(|at| at.saturating_duration_since(applied))
        })
        .collect();
    per_agent.sort();
    let last = per_agent.last().copied().unwrap_or(converged);
    let errors = after.errors() - before.errors();
    let allowed = 1.5 * bound + 2.0;

    let mut report = Report::new("converge");
    report.text("store", "store", workspace.store_name());
    report.section("setup");
    report.count("clients", "clients", args.clients);
    report.count("package_bytes", "release 2.0.0 size", size);
    report.count("downloads", "concurrent downloads", args.downloads as u64);
    report.text(
        "transport",
        "long-poll transport",
        &describe_transport(transport, args.clients),
    );
    report.number(
        "initial_install_s",
        "first install of a tiny 1.0.0 (warm-up)",
        initial.as_secs_f64(),
        2,
        "s",
    );
    report.section("bandwidth bound");
    report.number(
        "blob_mib_per_s",
        "blob throughput (download + sha256)",
        throughput.bytes_per_second() / (1024.0 * 1024.0),
        0,
        "MiB/s",
    );
    report.count(
        "throughput_errors",
        "errors while measuring it",
        throughput.errors,
    );
    report.number(
        "bound_s",
        "bound: clients x size / throughput",
        bound,
        2,
        "s",
    );
    report.section("update 1.0.0 -> 2.0.0");
    report.count(
        "converged",
        "agents reporting 2.0.0 installed",
        per_agent.len() as u64,
    );
    report.number(
        "converge_s",
        "time from apply to the last report",
        last.as_secs_f64(),
        2,
        "s",
    );
    report.number(
        "p50_s",
        "per agent, p50",
        quantile_ms(&per_agent, 0.5) / 1000.0,
        2,
        "s",
    );
    report.number(
        "p99_s",
        "per agent, p99",
        quantile_ms(&per_agent, 0.99) / 1000.0,
        2,
        "s",
    );
    report.number(
        "ratio_to_bound",
        "ratio to the bound",
        last.as_secs_f64() / bound.max(1e-9),
        2,
        "",
    );
    report.count("errors", "errors", errors);
    if let Some(sample) = errors_sample.first() {
        report.text("first_error", "first error", sample);
    }
    report.section("targets");
    report.target(
        "within_bound",
        "converged within 1.5 x bound + 2 s",
        done && last.as_secs_f64() <= allowed,
        &format!("{:.2} s of {allowed:.2} s allowed", last.as_secs_f64()),
    );
    Ok(report)
}
