//! `tcadm rollout status|retry|pause|resume`: following and steering a group's rollout.

use std::io;

use tc_api::{ClientGroup, Kind};

use crate::cli::{RolloutStatusArgs, RolloutTargetArgs};
use crate::commands::{Context, follow_rollouts};
use crate::error::{CliError, EXIT_OK};
use crate::rollout::{RolloutState, awaiting_source_sync, progress_text, rollout_state};
use crate::sources::fetch_sources;

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
            Ok(EXIT_OK)
        }
        RolloutState::Progressing(text) => {
            let paused = if crate::describe::is_paused(&group) {
                " (paused)"
            } else {
                ""
            };
            writeln!(
                context.out,
                "Waiting for clientgroup \"{name}\" rollout to finish: {text}{paused}"
            )?;
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

/// `tcadm rollout resume clientgroup NAME`.
pub fn resume(context: &mut Context<'_>, args: &RolloutTargetArgs) -> Result<u8, CliError> {
    steer(context, args, "resume")
}

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
