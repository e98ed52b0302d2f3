//! `tc-bench heartbeat`: the real controller's heartbeat path against a bare axum endpoint that
//! only parses the heartbeat and records it in a map, with the same load generator and the same
//! prepared requests, in one run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tc_testkit::sim::{HammerReport, SimFleet, Tls, hammer};

use super::{RunningController, Workspace, mib, on_own_thread, seconds};
use crate::HeartbeatArgs;
use crate::process::{Pinning, Server};
use crate::report::Report;

/// Runs the scenario.
pub async fn run(args: HeartbeatArgs) -> Result<Report, String> {
    let pinning = Pinning::decide(!args.no_pin);
    let workspace = Workspace::new()?;
    super::seed(&workspace, args.clients, args.seed).await?;
    // Steady-state heartbeats: the controller already has every inventory, so only its hash is
    // sent; the clients were seeded Online.
    let fleet = SimFleet::seeded(
        args.seed,
        args.clients,
        true,
        &super::session_key(&workspace)?,
    );
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..fleet.len())
            .map(|i| fleet.heartbeat_request(i, "127.0.0.1"))
            .collect(),
    );
    let request_bytes = requests.iter().map(|r| r.len()).sum::<usize>() / requests.len().max(1);

    let mut bare_args = vec!["serve-bare".to_string()];
    if let Some(cpu) = pinning.server {
        bare_args.extend(["--cpu".into(), cpu.to_string()]);
    }
    if args.tls {
        // The bare endpoint makes the PKI the controller then loads: one certificate for both.
        bare_args.extend([
            "--tls-data-dir".into(),
            workspace.data_dir().display().to_string(),
        ]);
    }
    let bare = Server::start(
        &bare_args,
        &workspace.path("bare.log"),
        Duration::from_secs(60),
    )
    .await?;
    let bare_tls = if args.tls {
        Some(super::client_tls(&workspace.data_dir(), bare.addr)?)
    } else {
        None
    };
    let (bare_report, bare_cpu) =
        generate(&args, pinning, &bare, bare_tls, requests.clone()).await?;
    bare.stop().await?;

    let RunningController { server, tls, .. } =
        super::start_controller_with(&workspace, pinning.server, args.tls).await?;
    let (controller_report, controller_cpu) =
        generate(&args, pinning, &server, tls, requests.clone()).await?;
    let figures = server.figures();
    server.stop().await?;

    let ratio = controller_report.rate() / bare_report.rate().max(1e-9);
    let mut report = Report::new("heartbeat");
    report.text("store", "store", workspace.store_name());
    report.section("setup");
    report.count(
        "clients",
        "clients (seeded, steady-state heartbeats)",
        args.clients,
    );
    report.count(
        "connections",
        "keep-alive connections",
        args.connections as u64,
    );
    report.number("duration_s", "measured per server", args.duration, 1, "s");
    report.count("request_bytes", "mean request size", request_bytes as u64);
    report.text("pinning", "CPU pinning", &pinning.describe());
    report.text(
        "transport",
        "transport",
        if args.tls {
            "HTTPS (rustls, ring; the controller's configuration and certificate for both servers)"
        } else {
            "plain HTTP"
        },
    );
    report.text(
        "load_generator",
        "load generator",
        if args.tls {
            "tc-testkit sim::hammer: HTTP/1.1 keep-alive over tokio-rustls, prepared requests, one thread"
        } else {
            "tc-testkit sim::hammer: HTTP/1.1 keep-alive over tokio TcpStream, prepared requests, one thread"
        },
    );
    for (name, figures, cpu) in [
        ("bare", &bare_report, bare_cpu),
        ("controller", &controller_report, controller_cpu),
    ] {
        report.section(if name == "bare" {
            "bare axum endpoint (parse JSON, insert into a map)"
        } else {
            "controller (durable store: redb, or PostgreSQL with --postgres)"
        });
        report.number(&format!("{name}.rps"), "requests/s", figures.rate(), 0, "");
        report.number(
            &format!("{name}.p50_ms"),
            "p50",
            figures.latency.quantile_ms(0.5),
            3,
            "ms",
        );
        report.number(
            &format!("{name}.p99_ms"),
            "p99",
            figures.latency.quantile_ms(0.99),
            3,
            "ms",
        );
        report.number(
            &format!("{name}.max_ms"),
            "max",
            figures.latency.max_ms(),
            3,
            "ms",
        );
        report.number(
            &format!("{name}.cpu_cores"),
            "server CPU while loaded",
            cpu,
            2,
            "cores",
        );
        report.count(&format!("{name}.errors"), "errors", figures.errors);
        if let Some(sample) = figures.error_samples.first() {
            report.text(&format!("{name}.first_error"), "first error", sample);
        }
    }
    report.number(
        "controller.rss_mib",
        "controller RSS after the run",
        mib(figures.rss_bytes),
        1,
        "MiB",
    );
    report.section("result");
    report.number("ratio", "ratio controller / bare", ratio, 3, "");
    let p99 = controller_report.latency.quantile_ms(0.99);
    report.target(
        "ratio",
        "ratio >= 0.7",
        ratio >= 0.7,
        &format!("{ratio:.3}"),
    );
    report.target(
        "p99",
        "controller p99 < 2 ms",
        p99 < 2.0,
        &format!("{p99:.3} ms"),
    );
    Ok(report)
}

/// The load generator on its own (pinned) thread; returns its figures and the CPU the server
/// used meanwhile (in cores), which shows whether the server or the generator was the limit.
async fn generate(
    args: &HeartbeatArgs,
    pinning: Pinning,
    server: &Server,
    tls: Option<Tls>,
    requests: Arc<Vec<Vec<u8>>>,
) -> Result<(HammerReport, f64), String> {
    let (connections, warmup, duration) = (
        args.connections,
        seconds(args.warmup),
        seconds(args.duration),
    );
    let addr = server.addr;
    let pid = server.pid;
    let sampler = tokio::spawn(async move {
        tokio::time::sleep(warmup).await;
        let cpu = || crate::process::figures(pid).unwrap_or_default().cpu_seconds;
        let (before, started) = (cpu(), Instant::now());
        tokio::time::sleep(duration).await;
        (cpu() - before) / started.elapsed().as_secs_f64()
    });
    let report = on_own_thread(pinning.generator, move || async move {
        hammer(
            &[addr],
            tls.as_ref(),
            requests,
            connections,
            warmup,
            duration,
        )
        .await
    })
    .await?;
    let cpu = sampler.await.unwrap_or(0.0);
    Ok((report, cpu))
}
