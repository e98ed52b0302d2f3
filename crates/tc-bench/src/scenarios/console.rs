//! `tc-bench console`: the web console's pages on a large fleet. A seeded fleet (a million
//! clients unless told otherwise) is loaded by the real controller in its own process; a signed-in
//! console session asks for the overview and the clients page (the first page, a filtered page, a
//! searched page, a sorted page) over and over, one request at a time, as someone keeping the
//! console open does, and each page's latency is measured against `GET /healthz` on the same
//! connection, in the same run.

use std::time::{Duration, Instant};

use super::{Workspace, mib};
use crate::ConsoleArgs;
use crate::report::Report;

/// The pages asked for: key, label, path.
const PAGES: &[(&str, &str, &str)] = &[
    ("overview", "overview", "/ui"),
    (
        "clients_first",
        "clients, first page by name",
        "/ui/clients",
    ),
    (
        "clients_filtered",
        "clients, selector site=oslo,role=kiosk + online",
        "/ui/clients?selector=site%3Doslo%2Crole%3Dkiosk&phase=online",
    ),
    (
        "clients_search",
        "clients, search `oslo-kiosk-00`",
        "/ui/clients?q=oslo-kiosk-00",
    ),
    (
        "clients_sorted",
        "clients, sorted by last seen, page 20",
        "/ui/clients?sort=lastSeen&order=desc&page=20",
    ),
];

/// Latencies of one page: median, p99 and the largest, in milliseconds.
struct Latency {
    median: f64,
    p99: f64,
    max: f64,
}

fn latency(mut samples: Vec<Duration>) -> Latency {
    samples.sort();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index].as_secs_f64() * 1e3
    };
    Latency {
        median: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// Runs the scenario.
pub async fn run(args: ConsoleArgs) -> Result<Report, String> {
    let workspace = Workspace::new()?;
    let seeding = super::seed(&workspace, args.clients, args.seed).await?;
    let controller = super::start_controller(&workspace, None).await?;
    let base = format!("http://{}", controller.server.addr);
    tc_controller::install_crypto_provider();
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| e.to_string())?;
    let token = std::fs::read_to_string(workspace.data_dir().join("admin.token"))
        .map_err(|e| format!("admin.token: {e}"))?;
    let signed_in = http
        .post(format!("{base}/ui/signin"))
        .form(&[("token", token.trim())])
        .send()
        .await
        .map_err(|e| format!("sign-in: {e}"))?;
    let cookie = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| value.split(';').next().filter(|c| c.contains('=')))
        .map(str::to_string)
        .ok_or_else(|| format!("sign-in answered {} without a cookie", signed_in.status()))?;
    let get = |path: &str| {
        let request = http
            .get(format!("{base}{path}"))
            .header("cookie", cookie.clone());
        async move {
            let started = Instant::now();
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response.bytes().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                ));
            }
            Ok::<_, String>((started.elapsed(), body.len()))
        }
    };

    // The first page after a start waits for the console's first snapshot of the fleet.
    let (first, _) = get("/ui/clients").await?;
    let cpu_before = controller.server.figures().cpu_seconds;
    let window = Instant::now();
    let mut baseline = vec![];
    let mut pages: Vec<Vec<Duration>> = vec![vec![]; PAGES.len()];
    let mut sizes = vec![0usize; PAGES.len()];
    for _ in 0..args.rounds {
        let started = Instant::now();
        let answer = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        answer.bytes().await.map_err(|e| e.to_string())?;
        baseline.push(started.elapsed());
        for (index, (key, _, path)) in PAGES.iter().enumerate() {
            let (took, size) = get(path).await.map_err(|e| format!("{key}: {e}"))?;
            pages[index].push(took);
            sizes[index] = size;
        }
    }
    let elapsed = window.elapsed();
    let cpu = (controller.server.figures().cpu_seconds - cpu_before) / elapsed.as_secs_f64();
    let rss = controller.server.figures().rss_bytes;
    controller.server.stop().await?;

    let mut report = Report::new("console");
    report.text("store", "store", workspace.store_name());
    report.section("setup");
    report.count(
        "clients",
        "clients (seeded, in the controller's memory)",
        args.clients,
    );
    report.number("seed_s", "seeding", seeding.as_secs_f64(), 1, "s");
    report.number(
        "startup_s",
        "controller start-up (store opened, fleet loaded)",
        controller.startup.as_secs_f64(),
        1,
        "s",
    );
    report.count("rounds", "rounds (every page once per round)", args.rounds);
    report.section("latency, one request at a time (ms)");
    let base_latency = latency(baseline);
    report.number(
        "healthz_ms",
        "baseline: GET /healthz, median",
        base_latency.median,
        2,
        "ms",
    );
    report.number(
        "first_page_ms",
        "first clients page after start (waits for the first snapshot)",
        first.as_secs_f64() * 1e3,
        1,
        "ms",
    );
    let mut worst_overview = 0.0f64;
    let mut worst_clients = 0.0f64;
    for (index, (key, label, _)) in PAGES.iter().enumerate() {
        let l = latency(std::mem::take(&mut pages[index]));
        report.number(
            &format!("{key}_ms"),
            &format!("{label}: median"),
            l.median,
            1,
            "ms",
        );
        report.number(&format!("{key}_p99_ms"), "  p99", l.p99, 1, "ms");
        report.number(&format!("{key}_max_ms"), "  max", l.max, 1, "ms");
        report.number(
            &format!("{key}_ratio"),
            "  median / baseline",
            l.median / base_latency.median.max(1e-6),
            0,
            "×",
        );
        report.count(
            &format!("{key}_bytes"),
            "  page size (bytes)",
            sizes[index] as u64,
        );
        if *key == "overview" {
            worst_overview = worst_overview.max(l.p99);
        } else {
            worst_clients = worst_clients.max(l.p99);
        }
    }
    report.section("controller");
    report.number(
        "cpu",
        "CPU while the console is asked (cores)",
        cpu,
        2,
        "cores",
    );
    report.number("rss_mib", "resident memory", mib(rss), 0, "MiB");
    report.section("targets");
    report.target(
        "overview_target",
        "overview under 100 ms (p99 over the rounds)",
        worst_overview < 100.0,
        &format!("{worst_overview:.1} ms"),
    );
    report.target(
        "clients_target",
        "clients pages under 200 ms (worst p99 of first, filtered, searched, sorted)",
        worst_clients < 200.0,
        &format!("{worst_clients:.1} ms"),
    );
    Ok(report)
}
