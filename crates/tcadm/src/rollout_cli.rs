//! Arguments of `tcadm rollout ...`, as typed and validated by clap.

use std::time::Duration;

use clap::{Args, Subcommand};
use tc_api::Kind;

use crate::cli::{DocumentFormat, parse_duration, parse_kind};

/// `rollout` subcommands.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Show a group's rollout (with steps or maintenance windows: its step, counts and staged
    /// members); with --watch, follow it until it completes, fails or stalls.
    Status(RolloutStatusArgs),
    /// Try the releases that failed on a group's members once more (agents do not retry a
    /// failed release on their own).
    Retry(RolloutTargetArgs),
    /// Stop assigning new versions to the group's members (those updating finish); kept across
    /// applies and syncs of the watched directory until `rollout resume`. Role operator.
    Pause(RolloutTargetArgs),
    /// Let a group paused with `rollout pause`, or waiting at a pause step without a duration,
    /// go on. Role operator.
    Resume(RolloutTargetArgs),
    /// List a group's rollouts, newest first: revision, versions, start, end, who and outcome.
    History(RolloutHistoryArgs),
    /// Return a group to the versions of its last completed rollout before the current one
    /// (a new rollout, within its budget and steps), until its spec changes. Role operator.
    Undo(RolloutTargetArgs),
    /// Let the members activate the current rollout's staged changes now, without waiting for
    /// a maintenance window or a reboot (within the budget and steps). Role operator.
    #[command(name = "activate-now")]
    ActivateNow(RolloutTargetArgs),
}

/// A rollout's group, for `rollout retry|pause|resume|undo|activate-now`.
#[derive(Debug, Args)]
pub struct RolloutTargetArgs {
    /// Always `clientgroup` (`cg`).
    #[arg(value_name = "KIND", value_parser = parse_kind)]
    pub kind: Kind,
    /// The group's name.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// Arguments of `rollout status`.
#[derive(Debug, Args)]
pub struct RolloutStatusArgs {
    /// Always `clientgroup` (`cg`).
    #[arg(value_name = "KIND", value_parser = parse_kind)]
    pub kind: Kind,
    /// The group's name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Follow the rollout until it completes (exit 0), fails, stalls past its progress deadline
    /// or times out (exit 1).
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// How long --watch follows (`30s`, `5m`, `1h`).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Arguments of `rollout history`.
#[derive(Debug, Args)]
pub struct RolloutHistoryArgs {
    /// Always `clientgroup` (`cg`).
    #[arg(value_name = "KIND", value_parser = parse_kind)]
    pub kind: Kind,
    /// The group's name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Print the history as YAML or JSON instead of a table.
    #[arg(short = 'o', long, value_name = "FORMAT")]
    pub output: Option<DocumentFormat>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use clap::error::ErrorKind;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(line: &str) -> Result<RolloutCommand, clap::Error> {
        let cli = Cli::try_parse_from(line.split_whitespace())?;
        match cli.command {
            Command::Rollout(command) => Ok(command),
            other => panic!("not rollout: {other:?}"),
        }
    }

    #[test]
    fn history_takes_a_group_and_an_output_format() {
        for kind in ["clientgroup", "cg", "ClientGroup", "clientgroups"] {
            let RolloutCommand::History(args) =
                parse(&format!("tcadm rollout history {kind} front-desk")).unwrap()
            else {
                panic!("not history")
            };
            assert_eq!(args.kind, Kind::ClientGroup, "{kind}");
            assert_eq!(args.name, "front-desk");
            assert_eq!(args.output, None);
        }
        let RolloutCommand::History(args) =
            parse("tcadm rollout history cg front-desk -o json").unwrap()
        else {
            panic!("not history")
        };
        assert_eq!(args.output, Some(DocumentFormat::Json));
        let RolloutCommand::History(args) =
            parse("tcadm rollout history cg front-desk --output yaml").unwrap()
        else {
            panic!("not history")
        };
        assert_eq!(args.output, Some(DocumentFormat::Yaml));
        assert_eq!(
            parse("tcadm rollout history cg front-desk -o wide")
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidValue
        );
        assert_eq!(
            parse("tcadm rollout history cg").unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn undo_and_activate_now_take_a_group() {
        let RolloutCommand::Undo(args) = parse("tcadm rollout undo cg front-desk").unwrap() else {
            panic!("not undo")
        };
        assert_eq!(
            (args.kind, args.name.as_str()),
            (Kind::ClientGroup, "front-desk")
        );
        let RolloutCommand::ActivateNow(args) =
            parse("tcadm rollout activate-now clientgroup lab").unwrap()
        else {
            panic!("not activate-now")
        };
        assert_eq!((args.kind, args.name.as_str()), (Kind::ClientGroup, "lab"));
        // The kind is parsed as for the other subcommands; `rollout_of_client_group` refuses
        // kinds other than groups when the command runs.
        let RolloutCommand::Undo(args) = parse("tcadm rollout undo client kiosk-1").unwrap() else {
            panic!("not undo")
        };
        assert_eq!(args.kind, Kind::Client);
        assert_eq!(
            parse("tcadm rollout undo pods x").unwrap_err().kind(),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            parse("tcadm rollout activate-now cg").unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse("tcadm rollout activate_now cg lab")
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidSubcommand
        );
    }
}
