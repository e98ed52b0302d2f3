//! `tc-bench rollout`: a group of simulated agents running release 1.0.0 (its first rollout, which
//! skips the steps) is given 2.0.0 by publishing that release; the group's second rollout goes
//! through its steps (`--steps`, by default 1 client, 10 %, 50 %, 100 %). Per step: when it
//! started, how long it took, how many members it admitted and the bytes they downloaded, beside
//! the step's bandwidth bound (its bytes over the blob throughput measured in the same run with
//! the same download code, as `converge` does).
//!
//! Step boundaries are the controller's own millisecond timestamps: polling the group's
//! `status.rollout` every 100 ms reads `startedAt` (the rollout's, so the first step's) and each
//! step's `stepStartedAt`; a step over between two polls gets its start from the controller's
//! `StepReached` event instead (the event log is a ring of the newest 10,000 events, which the
//! agents' install events of a large fleet soon overwrite, so it only serves recent steps). Members are attributed to steps by the order in which the controller acknowledged
//! their `Installed` reports: a step admits its members only once the previous step's are done,
//! so the first `cap(step 1)` acknowledgements belong to step 1, the next ones to step 2, and so
//! on.

use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tc_testkit::sim::measure_downloads;

use super::converge::{noise, package};
use super::{Workspace, describe_transport, mib, seconds};
use crate::RolloutArgs;
use crate::admin::release_yaml;
use crate::report::Report;

const GROUP: &str = "sim-rollout";
const PACKAGE: &str = "bench-app";

/// One step of `--steps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BenchStep {
    /// `N`: this many members in all.
    Clients(u32),
    /// `N%`: this percentage of the members in all.
    Percent(u32),
    /// `pause:DURATION`.
    Pause(String),
}

impl BenchStep {
    fn yaml(&self) -> String {
        match self {
            BenchStep::Clients(n) => format!("{{ clients: {n} }}"),
            BenchStep::Percent(p) => format!("{{ percent: {p} }}"),
            BenchStep::Pause(d) => format!("{{ pause: {{ duration: \"{d}\" }} }}"),
        }
    }

    fn text(&self) -> String {
        match self {
            BenchStep::Clients(n) => format!("clients: {n}"),
            BenchStep::Percent(p) => format!("percent: {p}"),
            BenchStep::Pause(d) => format!("pause: {d}"),
        }
    }

    /// How many members the step admits in all out of `members`, as the controller counts
    /// (a percentage rounds up); None for a pause.
    fn share(&self, members: u64) -> Option<u64> {
        match self {
            BenchStep::Clients(n) => Some(u64::from(*n).min(members)),
            BenchStep::Percent(p) => Some((members * u64::from(*p)).div_ceil(100)),
            BenchStep::Pause(_) => None,
        }
    }
}

/// Parses `--steps`: comma-separated `N` (clients), `N%` (percent) or `pause:DURATION`.
pub fn parse_steps(text: &str) -> Result<Vec<BenchStep>, String> {
    let steps: Vec<BenchStep> = text
        .split(',')
        .map(str::trim)
        .enumerate()
        .map(|(index, item)| {
            let bad = |why: &str| format!("--steps item {} `{item}`: {why}", index + 1);
            if let Some(duration) = item.strip_prefix("pause:") {
                if duration.trim().is_empty() {
                    return Err(bad("a pause needs a duration (`pause:1s`)"));
                }
                Ok(BenchStep::Pause(duration.trim().to_string()))
            } else if let Some(percent) = item.strip_suffix('%') {
                match percent.trim().parse::<u32>() {
                    Ok(p) if (1..=100).contains(&p) => Ok(BenchStep::Percent(p)),
                    _ => Err(bad("a percentage is 1% to 100%")),
                }
            } else {
                match item.parse::<u32>() {
                    Ok(n) if n >= 1 => Ok(BenchStep::Clients(n)),
                    _ => Err(bad("expected a count of clients (`1`), `N%` or `pause:1s`")),
                }
            }
        })
        .collect::<Result<_, _>>()?;
    if !steps.iter().any(|s| s.share(1).is_some()) {
        return Err("--steps has no share step (`N` or `N%`)".into());
    }
    Ok(steps)
}

/// The group: every simulated client, the package at any version from 1.0.0 on (so that
/// publishing a release starts a rollout), the steps, a budget that never limits.
fn group_yaml(steps: &[BenchStep], heartbeat_seconds: u64) -> String {
    let steps: String = steps
        .iter()
        .map(|s| format!("      - {}\n", s.yaml()))
        .collect();
    format!(
        "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: {GROUP}\nspec:\n  \
         selector: {{ matchLabels: {{ thinfleet.io/simulated: \"true\" }} }}\n  packages:\n    \
         - {{ name: {PACKAGE}, version: \">=1.0.0\" }}\n  rollout:\n    maxUnavailable: 100%\n    \
         steps:\n{steps}  agent:\n    heartbeatSeconds: {heartbeat_seconds}\n---\n"
    )
}

/// What polling `status.rollout` saw of one step.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    /// When a poll first showed the step, seconds after the publish.
    first_s: Option<f64>,
    /// `admitted` at that poll.
    admitted: Option<u64>,
    /// The step's start as the status gives it (`stepStartedAt`; the rollout's `startedAt` for
    /// the first step), seconds after the publish.
    started_s: Option<f64>,
}

/// One step's figures.
struct StepFigures {
    start_s: Option<f64>,
    end_s: Option<f64>,
    new_members: u64,
    admitted_total: u64,
    bytes: u64,
    first_told_s: Option<f64>,
    last_done_s: Option<f64>,
}

/// Runs the scenario.
pub async fn run(args: RolloutArgs) -> Result<Report, String> {
    let steps = parse_steps(&args.steps)?;
    run_steps(args, steps).await
}

async fn run_steps(args: RolloutArgs, steps: Vec<BenchStep>) -> Result<Report, String> {
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
            "{}{}",
            release_yaml(PACKAGE, "1.0.0", &sha_small),
            group_yaml(&steps, heartbeat_seconds)
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
            v.has_installed(PACKAGE, "1.0.0") && v.converged_revision == v.desired_revision
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
    let group_path = format!("/apis/thinfleet.io/v1/clientgroups/{GROUP}");
    let warm = admin.get(&group_path).await?;
    let first_revision = warm["status"]["rollout"]["revision"]
        .as_u64()
        .unwrap_or(1)
        .max(1);

    // Blob throughput with the agents' download code, the same concurrency, the new blob (any
    // agent's session may fetch any blob, so it is measured before 2.0.0 is published).
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
    let rate = throughput.bytes_per_second().max(1.0);

    let before = sim.snapshot();
    let target_revision: Vec<u64> = sim
        .fleet()
        .views()
        .iter()
        .map(|v| v.desired_revision + 1)
        .collect();
    // The reference of both clocks: agents' `Instant`s and the controller's wall-clock events.
    let published = Instant::now();
    let published_ms = unix_millis(SystemTime::now());
    admin
        .apply(&release_yaml(PACKAGE, "2.0.0", &sha_large))
        .await?;

    // Watch the group's status until its second rollout is complete.
    let mut seen = vec![Seen::default(); steps.len() + 1];
    let mut polls = 0u64;
    let mut poll_errors = 0u64;
    let mut complete = false;
    let deadline = published + timeout;
    let mut last_status = Value::Null;
    while Instant::now() < deadline {
        let at = published.elapsed().as_secs_f64();
        polls += 1;
        match admin.get(&group_path).await {
            Ok(group) => {
                let rollout = &group["status"]["rollout"];
                if rollout["revision"].as_u64() == Some(first_revision + 1) {
                    let since = |field: &str| {
                        rollout[field]
                            .as_str()
                            .and_then(parse_millis)
                            .map(|ms| (ms as f64 - published_ms as f64) / 1000.0)
                    };
                    seen[0].started_s = seen[0].started_s.or(since("startedAt"));
                    let step = rollout["step"].as_u64().unwrap_or(0) as usize;
                    if let Some(seen) = seen.get_mut(step)
                        && seen.first_s.is_none()
                    {
                        seen.first_s = Some(at);
                        seen.admitted = rollout["admitted"].as_u64();
                        if step > 0 && step < steps.len() {
                            seen.started_s = since("stepStartedAt");
                        }
                    }
                    if rollout["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("complete"))
                    {
                        complete = true;
                    }
                }
                last_status = group["status"].clone();
            }
            Err(_) => poll_errors += 1,
        }
        if complete {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_on_new = sim
        .wait_for(
            deadline.saturating_duration_since(Instant::now()),
            Duration::from_millis(20),
            |v| v.has_installed(PACKAGE, "2.0.0") && v.converged_revision == v.desired_revision,
        )
        .await;
    if !complete || !all_on_new {
        let error = format!(
            "the rollout of 2.0.0 did not complete within {timeout:?} (complete: {complete}, \
             every agent on 2.0.0: {all_on_new}): status {last_status} {:?} {:?}",
            sim.snapshot(),
            sim.error_samples()
        );
        sim.stop().await;
        controller.server.stop().await?;
        return Err(error);
    }
    let finished = published.elapsed().as_secs_f64();

    // The controller's step boundaries, from its events (recorded shortly after each pass).
    let revision = first_revision + 1;
    let mut boundaries = vec![None; steps.len() + 1];
    let events_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = admin
            .get(&format!(
                "/apis/thinfleet.io/v1/events?kind=ClientGroup&name={GROUP}&limit=10000"
            ))
            .await?;
        for event in events["items"].as_array().into_iter().flatten() {
            let (Some(reason), Some(message), Some(time)) = (
                event["reason"].as_str(),
                event["message"].as_str(),
                event["time"].as_str(),
            ) else {
                continue;
            };
            let Some(index) = boundary_of(reason, message, revision, steps.len()) else {
                continue;
            };
            let Some(ms) = parse_millis(time) else {
                continue;
            };
            boundaries[index] = Some((ms as f64 - published_ms as f64) / 1000.0);
        }
        if boundaries.iter().all(Option::is_some) || Instant::now() >= events_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let views = sim.fleet().views();
    let after = sim.snapshot();
    let errors_sample = sim.error_samples();
    sim.stop().await;
    controller.server.stop().await?;

    // Agents on 2.0.0, in the order the controller acknowledged their reports.
    let mut done: Vec<(f64, Option<f64>)> = views
        .iter()
        .zip(&target_revision)
        .filter(|(v, target)| {
            v.converged_revision >= **target
                && v.installed.iter().any(|p| *p == format!("{PACKAGE}@2.0.0"))
        })
        .filter_map(|(v, _)| {
            let done = v.converged_at?.checked_duration_since(published)?;
            let told = v
                .learned_at
                .and_then(|at| at.checked_duration_since(published))
                .map(|d| d.as_secs_f64());
            Some((done.as_secs_f64(), told))
        })
        .collect();
    done.sort_by(|a, b| a.0.total_cmp(&b.0));

    let mut figures = Vec::with_capacity(steps.len());
    let mut admitted_before = 0u64;
    for (index, step) in steps.iter().enumerate() {
        let admitted_total = step
            .share(args.clients)
            .unwrap_or(admitted_before)
            .max(admitted_before);
        let members = &done
            [(admitted_before as usize).min(done.len())..(admitted_total as usize).min(done.len())];
        let start_s = seen[index].started_s.or(boundaries[index]);
        // The end of the last step (the rollout complete) is in no status field: its event, or
        // failing that the poll that saw it.
        let end_s = seen[index + 1]
            .started_s
            .or(boundaries[index + 1])
            .or(seen[index + 1].first_s.filter(|_| index + 1 == steps.len()));
        figures.push(StepFigures {
            start_s,
            end_s,
            new_members: admitted_total - admitted_before,
            admitted_total,
            bytes: (admitted_total - admitted_before) * size,
            first_told_s: members.iter().filter_map(|m| m.1).reduce(f64::min),
            last_done_s: members.iter().map(|m| m.0).reduce(f64::max),
        });
        admitted_before = admitted_total;
    }

    let errors = after.errors() - before.errors();
    let bytes_moved = after.download_bytes - before.download_bytes;
    let last_done = done.last().map_or(finished, |m| m.0);
    let total_bound = (args.clients * size) as f64 / rate;
    let steps_seen = figures.iter().filter(|f| f.start_s.is_some()).count();
    let steps_from_events = (0..steps.len())
        .filter(|&i| seen[i].started_s.is_none() && boundaries[i].is_some())
        .count();
    let steps_polled = seen[..steps.len()]
        .iter()
        .filter(|s| s.first_s.is_some())
        .count();

    let mut report = Report::new("rollout");
    report.text("store", "store", workspace.store_name());
    report.section("setup");
    report.count("clients", "clients", args.clients);
    report.count("package_bytes", "release 2.0.0 size", size);
    report.count("downloads", "concurrent downloads", args.downloads as u64);
    report.text(
        "steps_spec",
        "steps",
        &steps
            .iter()
            .map(BenchStep::text)
            .collect::<Vec<_>>()
            .join(", "),
    );
    report.text(
        "transport",
        "long-poll transport",
        &describe_transport(transport, args.clients),
    );
    report.number(
        "initial_install_s",
        "first rollout: a tiny 1.0.0, no steps (warm-up)",
        initial.as_secs_f64(),
        2,
        "s",
    );
    report.section("bandwidth bound");
    report.number(
        "blob_mib_per_s",
        "blob throughput (download + sha256)",
        rate / (1024.0 * 1024.0),
        0,
        "MiB/s",
    );
    report.count(
        "throughput_errors",
        "errors while measuring it",
        throughput.errors,
    );
    for (index, (step, f)) in steps.iter().zip(&figures).enumerate() {
        let key = format!("step{}", index + 1);
        report.section(&format!(
            "step {} of {}: {} (seconds after 2.0.0 was published)",
            index + 1,
            steps.len(),
            step.text()
        ));
        report.number(
            &format!("{key}.start_s"),
            "started (controller's timestamp)",
            f.start_s.unwrap_or(f64::NAN),
            2,
            "s",
        );
        let duration = match (f.start_s, f.end_s) {
            (Some(start), Some(end)) => end - start,
            _ => f64::NAN,
        };
        report.number(
            &format!("{key}.duration_s"),
            "took (until the next step began)",
            duration,
            2,
            "s",
        );
        report.count(
            &format!("{key}.admitted"),
            "members it admitted (new)",
            f.new_members,
        );
        report.count(
            &format!("{key}.admitted_total"),
            "members admitted in all",
            f.admitted_total,
        );
        if let Some(admitted) = seen[index].admitted {
            report.count(
                &format!("{key}.admitted_status"),
                "status.rollout.admitted when polled",
                admitted,
            );
        }
        report.count(&format!("{key}.bytes"), "bytes they downloaded", f.bytes);
        let bound = f.bytes as f64 / rate;
        report.number(
            &format!("{key}.bound_s"),
            "bound: bytes / throughput",
            bound,
            3,
            "s",
        );
        report.number(
            &format!("{key}.ratio_to_bound"),
            "ratio to the bound",
            if f.bytes > 0 {
                duration / bound
            } else {
                f64::NAN
            },
            1,
            "",
        );
        let since_start = |t: Option<f64>| match (t, f.start_s) {
            (Some(t), Some(start)) => t - start,
            _ => f64::NAN,
        };
        report.number(
            &format!("{key}.first_told_s"),
            "first new member told, after the start",
            since_start(f.first_told_s),
            2,
            "s",
        );
        report.number(
            &format!("{key}.last_done_s"),
            "last new member's report acknowledged, after the start",
            since_start(f.last_done_s),
            2,
            "s",
        );
        report.number(
            &format!("{key}.advance_wait_s"),
            "from that report to the next step",
            match (f.end_s, f.last_done_s) {
                (Some(end), Some(done)) => end - done,
                _ => f64::NAN,
            },
            2,
            "s",
        );
    }
    report.section("whole rollout 1.0.0 -> 2.0.0");
    report.count(
        "on_new",
        "agents reporting 2.0.0 installed",
        done.len() as u64,
    );
    report.count("steps", "steps", steps.len() as u64);
    report.count(
        "steps_seen",
        "steps with a start (status or event)",
        steps_seen as u64,
    );
    report.count(
        "steps_polled",
        "steps seen by polling status every 100 ms",
        steps_polled as u64,
    );
    report.count(
        "steps_from_events",
        "steps whose start came from an event",
        steps_from_events as u64,
    );
    report.count("polls", "status polls", polls);
    report.count("poll_errors", "status polls that failed", poll_errors);
    report.number(
        "complete_s",
        "published -> past the last step (controller's event)",
        boundaries[steps.len()]
            .or(seen[steps.len()].first_s)
            .unwrap_or(f64::NAN),
        2,
        "s",
    );
    report.number(
        "last_done_s",
        "published -> last agent's report acknowledged",
        last_done,
        2,
        "s",
    );
    report.number(
        "bound_s",
        "bound: clients x size / throughput",
        total_bound,
        2,
        "s",
    );
    report.number(
        "ratio_to_bound",
        "ratio to the bound",
        last_done / total_bound.max(1e-9),
        1,
        "",
    );
    report.number(
        "moved_mib",
        "bytes the agents downloaded",
        mib(bytes_moved),
        1,
        "MiB",
    );
    report.count("errors", "errors", errors);
    if let Some(sample) = errors_sample.first() {
        report.text("first_error", "first error", sample);
    }
    report.section("targets");
    report.target(
        "every_step_every_agent",
        "every step started and every agent runs 2.0.0",
        steps_seen == steps.len() && done.len() as u64 == args.clients,
        &format!(
            "{steps_seen} of {} steps, {} of {} agents",
            steps.len(),
            done.len(),
            args.clients
        ),
    );
    Ok(report)
}

/// Which boundary an event of the group marks: `index` is the start of step `index` (0 for
/// `RolloutStarted`), `steps` the end of the last one. None for other events and rollouts.
fn boundary_of(reason: &str, message: &str, revision: u64, steps: usize) -> Option<usize> {
    match reason {
        "RolloutStarted" => message
            .starts_with(&format!("rollout {revision} started"))
            .then_some(0),
        "StepReached" => {
            let rest = message.strip_prefix(&format!("rollout {revision}: "))?;
            if rest.starts_with("past its last step") {
                return Some(steps);
            }
            let number: usize = rest
                .strip_prefix("step ")?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            (1..=steps).contains(&number).then(|| number - 1)
        }
        _ => None,
    }
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the epoch of an RFC 3339 timestamp as the controller writes them.
fn parse_millis(text: &str) -> Option<u64> {
    text.parse::<tc_proto::Timestamp>()
        .ok()
        .map(tc_proto::Timestamp::unix_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_and_bad_ones_say_which() {
        assert_eq!(
            parse_steps("1, 10%,pause:1s,100%").unwrap(),
            vec![
                BenchStep::Clients(1),
                BenchStep::Percent(10),
                BenchStep::Pause("1s".into()),
                BenchStep::Percent(100)
            ]
        );
        let error = parse_steps("1,0%,100%").unwrap_err();
        assert!(error.contains("item 2 `0%`"), "{error}");
        assert!(parse_steps("pause:1s").is_err());
        assert!(parse_steps("x").unwrap_err().contains("item 1"));
    }

    #[test]
    fn shares_count_as_the_controller_does() {
        assert_eq!(BenchStep::Percent(10).share(10_001), Some(1_001));
        assert_eq!(BenchStep::Clients(5).share(3), Some(3));
        assert_eq!(BenchStep::Pause("1s".into()).share(3), None);
    }

    #[test]
    fn events_mark_the_step_boundaries_of_their_rollout() {
        assert_eq!(
            boundary_of(
                "RolloutStarted",
                "rollout 2 started: a 2.0.0 in 4 steps",
                2,
                4
            ),
            Some(0)
        );
        assert_eq!(
            boundary_of("StepReached", "rollout 2: step 3 of 4 (percent: 50)", 2, 4),
            Some(2)
        );
        assert_eq!(
            boundary_of(
                "StepReached",
                "rollout 2: past its last step; the rest",
                2,
                4
            ),
            Some(4)
        );
        assert_eq!(
            boundary_of("StepReached", "rollout 1: step 2 of 4 (percent: 10)", 2, 4),
            None
        );
        assert_eq!(boundary_of("Degraded", "rollout 2: step 2", 2, 4), None);
    }
}
