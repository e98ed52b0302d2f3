//! `tcadm run|reboot|shutdown|wake|logs`: create a `Task` and follow its run, printing each
//! client's result as it arrives.

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use tc_api::task::{
    ExecSpec, Task, TaskActionKind, TaskClientState, TaskResult, TaskRunStatus, TaskSpec,
    TaskTargets,
};
use tc_api::{API_VERSION, Kind, LabelSelector, ObjectMeta, Timestamp};

use crate::api::ApiClient;
use crate::commands::Context;
use crate::error::{CliError, EXIT_OK};
use crate::task_cli::{LogsArgs, PowerArgs, RunArgs, RunOutput, TaskFlowArgs, client_names};
use crate::tasks::{
    MAX_DESCRIBED_FAILURES, MAX_DESCRIBED_RESULTS, RunSample, Summary, result_text,
};

/// How often the results of a run are polled.
pub const RESULTS_POLL_INTERVAL: Duration = Duration::from_millis(400);

/// How long the controller may take to start the run of a new task.
const RUN_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long after the run's deadline a started client may still take to finish, besides an
/// `exec` command's own timeout (a reboot waits for the machine to come back).
const FINISH_GRACE: Duration = Duration::from_secs(30);
const POWER_GRACE: Duration = Duration::from_secs(600);

/// A task to create, and how to follow it.
struct Launch<'a> {
    action: TaskActionKind,
    targets: TaskTargets,
    exec: Option<ExecSpec>,
    flow: &'a TaskFlowArgs,
}

/// `tcadm run`.
pub fn run(context: &mut Context<'_>, args: &RunArgs) -> Result<u8, CliError> {
    if args.command.is_empty() || args.command[0].trim().is_empty() {
        return Err(CliError::Usage(
            "no command: give the program and its arguments after `--` (`tcadm run -l room=101 \
             -- uptime`)"
                .into(),
        ));
    }
    let targets = targets(
        args.selector.as_deref(),
        &args.clients,
        args.group.as_deref(),
    )?;
    let exec = ExecSpec {
        command: args.command.clone(),
        timeout_seconds: seconds(args.timeout, "--timeout")?,
        working_dir: args.working_dir.clone(),
    };
    launch(
        context,
        Launch {
            action: TaskActionKind::Exec,
            targets,
            exec: Some(exec),
            flow: &args.flow,
        },
    )
}

/// `tcadm reboot|shutdown|wake`.
pub fn power(
    context: &mut Context<'_>,
    action: TaskActionKind,
    args: &PowerArgs,
) -> Result<u8, CliError> {
    let names = client_names(&args.clients).map_err(CliError::Usage)?;
    let targets = targets(args.selector.as_deref(), &names, args.group.as_deref())?;
    launch(
        context,
        Launch {
            action,
            targets,
            exec: None,
            flow: &args.flow,
        },
    )
}

/// The targets of the command line; at least one kind must be given.
fn targets(
    selector: Option<&str>,
    clients: &[String],
    group: Option<&str>,
) -> Result<TaskTargets, CliError> {
    if selector.is_none() && clients.is_empty() && group.is_none() {
        return Err(CliError::Usage(
            "no targets: name them with -l SELECTOR, client names or --group NAME".into(),
        ));
    }
    let selector = selector
        .map(LabelSelector::parse)
        .transpose()
        .map_err(|error| CliError::Usage(error.to_string()))?;
    Ok(TaskTargets {
        selector,
        clients: clients.to_vec(),
        group: group.map(str::to_string),
    })
}

/// Whole seconds of a duration flag, at least one.
fn seconds(duration: Duration, flag: &str) -> Result<u32, CliError> {
    let seconds = duration.as_secs();
    if seconds == 0 {
        return Err(CliError::Usage(format!("{flag} must be at least 1s")));
    }
    u32::try_from(seconds).map_err(|_| CliError::Usage(format!("{flag} is too long")))
}

/// `PREFIX-<UTC yyyymmdd-hhmmss>-<4 random hex digits>`.
pub fn generated_name(prefix: &str, now: Timestamp) -> String {
    use ring::rand::SecureRandom;
    let mut random = [0u8; 2];
    // The random part only keeps two names of the same second apart: the time alone will do
    // if the system cannot give randomness.
    let _ = ring::rand::SystemRandom::new().fill(&mut random);
    let digits: String = now
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .take(14)
        .collect();
    format!(
        "{prefix}-{}-{}-{:02x}{:02x}",
        &digits[..8],
        &digits[8..],
        random[0],
        random[1]
    )
}

/// How long the controller keeps a task `tcadm` created after its run finished: a week (its
/// results, and the audit trail's entry, are there to look at meanwhile).
pub const TASK_TTL_SECONDS: u32 = 7 * 24 * 3600;

fn new_task(name: String, launch: &Launch<'_>, deadline_seconds: u32) -> Task {
    Task {
        api_version: API_VERSION.into(),
        kind: "Task".into(),
        metadata: ObjectMeta {
            name,
            ..Default::default()
        },
        spec: TaskSpec {
            targets: launch.targets.clone(),
            action: launch.action,
            exec: launch.exec.clone(),
            max_concurrent: launch.flow.max_concurrent,
            deadline_seconds,
            schedule: None,
            suspend: false,
            ttl_seconds_after_finished: Some(TASK_TTL_SECONDS),
        },
        status: None,
    }
}

fn launch(context: &mut Context<'_>, launch: Launch<'_>) -> Result<u8, CliError> {
    let deadline_seconds = seconds(launch.flow.deadline, "--deadline")?;
    let prefix = match launch.action {
        TaskActionKind::Exec => "run",
        TaskActionKind::CollectLogs => "logs",
        other => other.as_str(),
    };
    let name = launch
        .flow
        .name
        .clone()
        .unwrap_or_else(|| generated_name(prefix, Timestamp::now()));
    let client = context.client()?;
    client.create_task(&new_task(name.clone(), &launch, deadline_seconds))?;
    if launch.flow.detach {
        writeln!(context.out, "{name}")?;
        return Ok(EXIT_OK);
    }
    let run = wait_for_run(&client, &name)?;
    let created = format!(
        "task/{name} created ({} target{})",
        run.targets,
        if run.targets == 1 { "" } else { "s" }
    );
    match launch.flow.output {
        None => {
            writeln!(context.out, "{created}")?;
            context.out.flush()?;
        }
        Some(_) => context.note(&created),
    }
    let finishing = match (&launch.exec, launch.action) {
        (Some(exec), _) => Duration::from_secs(exec.timeout_seconds.into()),
        (None, TaskActionKind::Reboot | TaskActionKind::Shutdown) => POWER_GRACE,
        (None, _) => Duration::ZERO,
    };
    let give_up = give_up_after(&run, finishing);
    let output = launch.flow.output;
    let mut width = 0;
    let results = follow_run(&client, &name, run.run, give_up, |results, finished| {
        if width == 0 {
            width = results.iter().map(|r| r.client.len()).max().unwrap_or(0);
        }
        for result in finished {
            match output {
                None => write!(context.out, "{}", result_text(result, width))?,
                Some(RunOutput::Jsonl) => writeln!(
                    context.out,
                    "{}",
                    serde_json::to_string(result).expect("results serialize")
                )?,
                Some(RunOutput::Json) => {}
            }
        }
        context.out.flush()?;
        Ok(())
    })?;
    let summary = Summary::of(&results.items);
    match output {
        None => writeln!(context.out, "{summary}")?,
        Some(RunOutput::Jsonl) => context.note(&summary.to_string()),
        Some(RunOutput::Json) => {
            let document = serde_json::json!({
                "apiVersion": API_VERSION, "kind": "TaskResultList", "task": name,
                "run": run.run, "items": results.items,
            });
            writeln!(
                context.out,
                "{}",
                serde_json::to_string_pretty(&document).expect("results serialize")
            )?;
            context.note(&summary.to_string());
        }
    }
    judge(&name, &summary, results.gave_up)
}

/// Exit 0 when every target succeeded; else the error that says why (exit 1).
fn judge(name: &str, summary: &Summary, gave_up: bool) -> Result<u8, CliError> {
    if summary.all_succeeded() {
        return Ok(EXIT_OK);
    }
    let total = summary.succeeded
        + summary.failed
        + summary.expired
        + summary.interrupted
        + summary.unfinished;
    if total == 0 {
        return Err(CliError::Failed(format!(
            "task/{name} targets no client: nothing matched"
        )));
    }
    if gave_up {
        return Err(CliError::Failed(format!(
            "task/{name}: stopped waiting with {} of {total} clients not finished (they go on; \
             see `tcadm describe task {name}`)",
            summary.unfinished
        )));
    }
    Err(CliError::Failed(format!(
        "task/{name}: {} of {total} clients did not succeed",
        total - summary.succeeded
    )))
}

/// When to stop waiting: the run's deadline, plus the time a client that started just before
/// it may take to finish (`finishing`: the command's timeout, the time a machine takes to come
/// back), plus a grace.
fn give_up_after(run: &TaskRunStatus, finishing: Duration) -> Instant {
    let until_deadline = run.deadline.since(Timestamp::now());
    Instant::now() + until_deadline + finishing + FINISH_GRACE
}

/// Polls the task until the controller has started its run; answers the run.
fn wait_for_run(client: &ApiClient, name: &str) -> Result<TaskRunStatus, CliError> {
    let limit = Instant::now() + RUN_START_TIMEOUT;
    loop {
        let task: Task = client.get_typed(Kind::Task, name)?;
        if let Some(run) = task
            .status
            .and_then(|status| status.runs.into_iter().next())
        {
            return Ok(run);
        }
        if Instant::now() >= limit {
            return Err(CliError::Failed(format!(
                "task/{name} was created, but the controller started no run of it within {}s",
                RUN_START_TIMEOUT.as_secs()
            )));
        }
        thread::sleep(RESULTS_POLL_INTERVAL);
    }
}

/// What following a run found.
struct Followed {
    /// Every target's result (the last poll's).
    items: Vec<TaskResult>,
    /// True when the run was not complete at `give_up`.
    gave_up: bool,
}

/// Polls the run until it is complete (or `give_up` passes), handing `seen` the results of
/// each fetch and those that reached a final state since the previous one. The status (its
/// counts) is polled every [`RESULTS_POLL_INTERVAL`]; the results, which carry output tails, only
/// when more clients finished, and for a large run at most every half a millisecond per target
/// (5 s at most).
fn follow_run(
    client: &ApiClient,
    name: &str,
    run: u64,
    give_up: Instant,
    mut seen: impl FnMut(&[TaskResult], &[&TaskResult]) -> Result<(), CliError>,
) -> Result<Followed, CliError> {
    let mut reported = BTreeSet::new();
    let mut fetched: Option<(Instant, Option<u32>)> = None;
    let mut items = Vec::new();
    loop {
        // The status first: results read after it saw the run complete are all final.
        let task: Task = client.get_typed(Kind::Task, name)?;
        let status = task
            .status
            .as_ref()
            .and_then(|status| status.runs.iter().find(|r| r.run == run));
        let complete = status.is_none_or(|r| r.completed_at.is_some());
        let finished = status.map(TaskRunStatus::finished);
        let gap = Duration::from_millis(status.map_or(0, |r| u64::from(r.targets) / 2).min(5000));
        let gave_up = !complete && Instant::now() >= give_up;
        let due = match fetched {
            None => true,
            Some((at, count)) => count != finished && at.elapsed() >= gap,
        };
        if complete || gave_up || due {
            fetched = Some((Instant::now(), finished));
            items = client.task_results(name, Some(run))?.items;
            let newly: Vec<&TaskResult> = items
                .iter()
                .filter(|r| r.state.is_final() && reported.insert(r.client.clone()))
                .collect();
            seen(&items, &newly)?;
        }
        if complete || gave_up {
            return Ok(Followed { items, gave_up });
        }
        thread::sleep(RESULTS_POLL_INTERVAL);
    }
}

/// The first clients and the first failures of a task's newest run, for `describe task`.
pub fn newest_run_sample(client: &ApiClient, task: &Task) -> Result<RunSample, CliError> {
    let name = &task.metadata.name;
    let Some(run) = task.status.as_ref().and_then(|status| status.runs.first()) else {
        return Ok(RunSample::default());
    };
    Ok(RunSample {
        first: client.task_results_page(name, run.run, None, MAX_DESCRIBED_RESULTS)?,
        failures: if run.failed == 0 {
            Vec::new()
        } else {
            client.task_results_page(name, run.run, Some("Failed"), MAX_DESCRIBED_FAILURES)?
        },
    })
}

/// `tcadm logs client NAME`: a `collectLogs` task for the client; its logs on standard output.
pub fn logs(context: &mut Context<'_>, args: &LogsArgs) -> Result<u8, CliError> {
    if args.kind != Kind::Client {
        return Err(CliError::Usage(format!(
            "logs come from clients: use `tcadm logs client NAME`, not {}",
            args.kind.as_str().to_ascii_lowercase()
        )));
    }
    let deadline_seconds = seconds(args.timeout, "--timeout")?;
    let name = generated_name("logs", Timestamp::now());
    let flow = TaskFlowArgs {
        max_concurrent: None,
        deadline: args.timeout,
        name: Some(name.clone()),
        detach: false,
        output: None,
    };
    let launch = Launch {
        action: TaskActionKind::CollectLogs,
        targets: TaskTargets {
            clients: vec![args.name.clone()],
            ..Default::default()
        },
        exec: None,
        flow: &flow,
    };
    let client = context.client()?;
    client.create_task(&new_task(name.clone(), &launch, deadline_seconds))?;
    let run = wait_for_run(&client, &name)?;
    context.note(&format!(
        "task/{name} created: waiting up to {} for client/{} to send its logs",
        crate::format::human_duration(args.timeout),
        args.name
    ));
    let give_up = give_up_after(&run, FINISH_GRACE);
    let followed = follow_run(&client, &name, run.run, give_up, |_, _| Ok(()))?;
    let result = followed.items.iter().find(|r| r.client == args.name);
    match result {
        Some(result) if result.state == TaskClientState::Succeeded && result.has_logs => {
            let text = client.task_logs(&name, &args.name, run.run)?;
            context.out.write_all(text.as_bytes())?;
            if !text.is_empty() && !text.ends_with('\n') {
                writeln!(context.out)?;
            }
            Ok(EXIT_OK)
        }
        Some(result) => Err(CliError::Failed(format!(
            "client/{}: {}{} (task/{name})",
            args.name,
            match result.state {
                TaskClientState::Succeeded => "sent no logs".to_string(),
                TaskClientState::Expired => format!(
                    "Expired: it did not take the order within {}",
                    crate::format::human_duration(args.timeout)
                ),
                TaskClientState::Pending | TaskClientState::Running => {
                    "did not finish in time".into()
                }
                state => state.as_str().to_string(),
            },
            result
                .message
                .as_ref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ))),
        None => Err(CliError::Failed(format!(
            "task/{name} has no result for client/{}",
            args.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_carry_the_utc_time_and_four_hex_digits() {
        let now: Timestamp = "2026-12-06T10:15:48.123Z".parse().unwrap();
        let name = generated_name("run", now);
        assert!(name.starts_with("run-20261206-101548-"), "{name}");
        let random = name.rsplit('-').next().unwrap();
        assert_eq!(random.len(), 4, "{name}");
        assert!(random.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
    }

    #[test]
    fn targets_are_required_and_selectors_checked() {
        assert!(matches!(
            targets(None, &[], None),
            Err(CliError::Usage(text)) if text.contains("no targets")
        ));
        assert!(matches!(
            targets(Some("a in ("), &[], None),
            Err(CliError::Usage(_))
        ));
        let parsed = targets(Some("room=101"), &[], None).unwrap();
        assert_eq!(parsed.selector.unwrap().to_string(), "room=101");
        assert!(matches!(
            seconds(Duration::from_millis(500), "--timeout"),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn only_a_run_where_every_target_succeeded_exits_zero() {
        let all = Summary {
            succeeded: 2,
            ..Default::default()
        };
        assert_eq!(judge("t", &all, false).unwrap(), EXIT_OK);
        let one_failed = Summary { failed: 1, ..all };
        let error = judge("t", &one_failed, false).unwrap_err();
        assert_eq!(error.exit_code(), 1);
        assert_eq!(error.to_string(), "task/t: 1 of 3 clients did not succeed");
        let waiting = Summary {
            unfinished: 1,
            ..all
        };
        assert_eq!(
            judge("t", &waiting, true).unwrap_err().to_string(),
            "task/t: stopped waiting with 1 of 3 clients not finished (they go on; see `tcadm \
             describe task t`)"
        );
        assert!(
            judge("t", &Summary::default(), false)
                .unwrap_err()
                .to_string()
                .contains("targets no client")
        );
    }
}
