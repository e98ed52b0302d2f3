//! `tcadm rollout status|retry|pause|resume|history|undo|activate-now`: following and steering
//! a group's rollout.

use std::io;

use tc_api::{ClientGroup, Kind};

use crate::cli::{DocumentFormat, RolloutStatusArgs, RolloutTargetArgs};
use crate::commands::{Context, follow_rollouts};
use crate::error::{CliError, EXIT_OK};
use crate::output::{terminal_safe, to_json, to_yaml};
use crate::progressive::{history_table, pause_note, status_lines};
use crate::rollout::{RolloutState, awaiting_source_sync, progress_text, rollout_state};
use crate::rollout_cli::{RolloutCommand, RolloutHistoryArgs};
use crate::sources::fetch_sources;

/// Runs `tcadm rollout SUBCOMMAND`.
pub fn run(context: &mut Context<'_>, command: &RolloutCommand) -> Result<u8, CliError> {
    match command {
        RolloutCommand::Status(args) => status(context, args),
        RolloutCommand::Retry(args) => retry(context, args),
        RolloutCommand::Pause(args) => pause(context, args),
        RolloutCommand::Resume(args) => resume(context, args),
        RolloutCommand::History(args) => history(context, args),
        RolloutCommand::Undo(args) => steer(context, args, "undo"),
        RolloutCommand::ActivateNow(args) => steer(context, args, "activate-now"),
    }
}

/// Refuses `tcadm rollout SUBCOMMAND` for anything but a client group.
fn rollout_of_client_group(kind: Kind, subcommand: &str) -> Result<(), CliError> {
    if kind == Kind::ClientGroup {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "rollouts belong to client groups: use `tcadm rollout {subcommand} clientgroup NAME`, not {}",
        kind.as_str().to_ascii_lowercase()
    )))
}

pub fn status(context: &mut Context<'_>, args: &RolloutStatusArgs) -> Result<u8, CliError> {
    rollout_of_client_group(args.kind, "status")?;
    let client = context.client()?;
    let name = &args.name;
    if args.watch {
        let mut out = io::stdout();
        follow_rollouts(
            context,
            &client,
            std::slice::from_ref(name),
            &[],
            args.timeout,
            &mut out,
        )?;
        writeln!(
            context.out,
            "clientgroup \"{name}\" successfully rolled out"
        )?;
        return Ok(EXIT_OK);
    }
    if let Some(text) = awaiting_source_sync(name, &fetch_sources(&client)) {
        writeln!(
            context.out,
            "Waiting for clientgroup \"{name}\" rollout to finish: {text}"
        )?;
        return Ok(EXIT_OK);
    }
    let group: ClientGroup = client.get_typed(Kind::ClientGroup, name)?;
    match rollout_state(&group, &[]) {
        RolloutState::Complete => {
            writeln!(
                context.out,
                "clientgroup \"{name}\" successfully rolled out ({})",
                progress_text(&group)
            )?;
            write_status_lines(context, &group)?;
            Ok(EXIT_OK)
        }
        RolloutState::Progressing(text) => {
            let paused = pause_note(&group);
            writeln!(
                context.out,
                "Waiting for clientgroup \"{name}\" rollout to finish: {text}{paused}"
            )?;
            write_status_lines(context, &group)?;
            Ok(EXIT_OK)
        }
        RolloutState::Failed(message) => Err(CliError::Failed(format!(
            "clientgroup/{name} rollout failed: {message}"
        ))),
        RolloutState::Stalled(message) => Err(CliError::Failed(format!(
            "clientgroup/{name} rollout stalled: {message}"
        ))),
    }
}

/// The step, counts, message and staged members of a progressive group's rollout (its
/// messages may quote what clients reported: shown terminal-safe).
fn write_status_lines(context: &mut Context<'_>, group: &ClientGroup) -> Result<(), CliError> {
    for line in status_lines(group) {
        writeln!(context.out, "{}", terminal_safe(&line))?;
    }
    Ok(())
}

/// `tcadm rollout history clientgroup NAME [-o json|yaml]`.
pub fn history(context: &mut Context<'_>, args: &RolloutHistoryArgs) -> Result<u8, CliError> {
    rollout_of_client_group(args.kind, "history")?;
    let history = context.client()?.rollout_history(&args.name)?;
    match args.output {
        Some(DocumentFormat::Json) => writeln!(context.out, "{}", to_json(&history))?,
        Some(DocumentFormat::Yaml) => write!(context.out, "{}", to_yaml(&history))?,
        None if history.items.is_empty() => {
            writeln!(context.out, "clientgroup/{} has no rollouts yet", args.name)?
        }
        None => write!(context.out, "{}", history_table(&history).render())?,
    }
    Ok(EXIT_OK)
}

pub fn retry(context: &mut Context<'_>, args: &RolloutTargetArgs) -> Result<u8, CliError> {
    rollout_of_client_group(args.kind, "retry")?;
    let client = context.client()?;
    let answer = client.retry_group(&args.name)?;
    writeln!(
        context.out,
        "clientgroup/{}: {}",
        args.name,
        answer["message"].as_str().unwrap_or_default()
    )?;
    for retried in answer["retried"].as_array().into_iter().flatten() {
        writeln!(
            context.out,
            "  client/{} {} {}",
            retried["client"].as_str().unwrap_or_default(),
            retried["package"].as_str().unwrap_or_default(),
            retried["version"].as_str().unwrap_or_default()
        )?;
    }
    Ok(EXIT_OK)
}

/// `tcadm rollout pause clientgroup NAME`.
pub fn pause(context: &mut Context<'_>, args: &RolloutTargetArgs) -> Result<u8, CliError> {
    steer(context, args, "pause")
}

/// `tcadm rollout resume clientgroup NAME` (also past a pause step without a duration).
pub fn resume(context: &mut Context<'_>, args: &RolloutTargetArgs) -> Result<u8, CliError> {
    steer(context, args, "resume")
}

/// `POST .../clientgroups/NAME/VERB` (`pause`, `resume`, `undo`, `activate-now`); prints the
/// answer's message.
fn steer(context: &mut Context<'_>, args: &RolloutTargetArgs, verb: &str) -> Result<u8, CliError> {
    rollout_of_client_group(args.kind, verb)?;
    let answer = context.client()?.steer_group(&args.name, verb)?;
    writeln!(
        context.out,
        "clientgroup/{}: {}",
        args.name,
        answer["message"].as_str().unwrap_or_default()
    )?;
    Ok(EXIT_OK)
}
