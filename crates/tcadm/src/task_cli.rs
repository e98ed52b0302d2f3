//! Command-line arguments of the remote operations: `run`, `reboot`, `shutdown`, `wake` and
//! `logs`.

use std::time::Duration;

use clap::{Args, ValueEnum};
use tc_api::Kind;
use tc_api::resources::IntOrPercent;

use crate::cli::{parse_duration, parse_kind};

/// Parses `--max-concurrent`: a count (`5`) or a percentage (`25%`), at least one client.
pub fn parse_max_concurrent(text: &str) -> Result<IntOrPercent, String> {
    let value: IntOrPercent = text.parse()?;
    if matches!(value, IntOrPercent::Int(0) | IntOrPercent::Percent(0)) {
        return Err(format!("`{text}` allows no client at all"));
    }
    Ok(value)
}

/// How `run`, `reboot`, `shutdown` and `wake` print results for machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RunOutput {
    /// One JSON result per line, as each client finishes.
    Jsonl,
    /// One JSON document with every result once the run is over.
    Json,
}

/// What every remote operation takes besides its targets.
#[derive(Debug, Args)]
pub struct TaskFlowArgs {
    /// How many clients may carry it out at once: a count (`5`) or a percentage of the targets
    /// (`25%`) [default: all at once].
    #[arg(long, value_name = "N|N%", value_parser = parse_max_concurrent)]
    pub max_concurrent: Option<IntOrPercent>,
    /// Targets that have not started it this long after the run began count as Expired
    /// (`10m`, `1h`; an offline client expires).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub deadline: Duration,
    /// The task's name [default: `run-`, `reboot-`, `shutdown-` or `wake-`, then
    /// <UTC yyyymmdd-hhmmss>-<4 random hex digits>].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Create the task, print its name and return without waiting for results.
    #[arg(long)]
    pub detach: bool,
    /// Print results as JSON: `jsonl` one line per client as each finishes, `json` one
    /// document at the end [default: text].
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FORMAT",
        conflicts_with = "detach"
    )]
    pub output: Option<RunOutput>,
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The clients whose labels match (`room=101`, `site in (a,b)`).
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR", conflicts_with_all = ["clients", "group"])]
    pub selector: Option<String>,
    /// A client by name; repeatable.
    #[arg(long = "client", value_name = "NAME", conflicts_with = "group")]
    pub clients: Vec<String>,
    /// The members of this client group.
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// The command is killed (with its process group) after this long (`60s`, `10m`).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The command's working directory on the clients (an absolute path) [default: the agent's
    /// state directory's tasks/].
    #[arg(long, value_name = "DIR")]
    pub working_dir: Option<String>,
    /// What every remote operation takes.
    #[command(flatten)]
    pub flow: TaskFlowArgs,
    /// The program and its arguments, after `--` (no shell: `-- sh -c 'uptime; df -h'`).
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

/// Arguments of `reboot`, `shutdown` and `wake`.
#[derive(Debug, Args)]
pub struct PowerArgs {
    /// `client` and the names of the clients (`client kiosk-1 kiosk-2`).
    #[arg(value_name = "client NAME", conflicts_with_all = ["selector", "group"])]
    pub clients: Vec<String>,
    /// The clients whose labels match (`room=101`).
    #[arg(
        short = 'l',
        long = "selector",
        value_name = "SELECTOR",
        conflicts_with = "group"
    )]
    pub selector: Option<String>,
    /// The members of this client group.
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// What every remote operation takes.
    #[command(flatten)]
    pub flow: TaskFlowArgs,
}

/// Arguments of `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Always `client`.
    #[arg(value_name = "KIND", value_parser = parse_kind)]
    pub kind: Kind,
    /// The client's name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// How long to wait for the client to send its logs (an offline client fails after it).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// The client names of `reboot client A B`: the words after `client`.
pub fn client_names(words: &[String]) -> Result<Vec<String>, String> {
    let Some((kind, names)) = words.split_first() else {
        return Ok(Vec::new());
    };
    if Kind::parse(kind) != Some(Kind::Client) {
        return Err(format!(
            "`{kind}`: name the targets as `client NAME...`, or use -l SELECTOR or --group NAME"
        ));
    }
    if names.is_empty() {
        return Err("`client` needs at least one client name".into());
    }
    Ok(names.to_vec())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use clap::error::ErrorKind;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(line: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(line)
    }

    #[test]
    fn run_takes_targets_flags_and_the_command_after_the_dashes() {
        let cli = parse(&[
            "tcadm",
            "run",
            "-l",
            "room=101",
            "--timeout",
            "90s",
            "--max-concurrent",
            "25%",
            "--deadline",
            "5m",
            "--",
            "sh",
            "-c",
            "echo hi",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.selector.as_deref(), Some("room=101"));
        assert_eq!(args.timeout, Duration::from_secs(90));
        assert_eq!(args.flow.deadline, Duration::from_secs(300));
        assert_eq!(args.flow.max_concurrent, Some(IntOrPercent::Percent(25)));
        assert_eq!(args.command, ["sh", "-c", "echo hi"]);
        let cli = parse(&[
            "tcadm", "run", "--client", "a", "--client", "b", "--", "true",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.clients, ["a", "b"]);
        assert_eq!(args.flow.deadline, Duration::from_secs(600));
        assert_eq!(args.timeout, Duration::from_secs(60));
        let kind = |line: &[&str]| parse(line).unwrap_err().kind();
        assert_eq!(
            kind(&["tcadm", "run", "-l", "a=b", "--group", "g", "--", "true"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            kind(&[
                "tcadm",
                "run",
                "-l",
                "a=b",
                "--max-concurrent",
                "0",
                "--",
                "x"
            ]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&[
                "tcadm", "run", "-l", "a=b", "--detach", "-o", "json", "--", "x"
            ]),
            ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn power_actions_take_client_names_a_selector_or_a_group() {
        let cli = parse(&[
            "tcadm", "reboot", "client", "kiosk-1", "kiosk-2", "--detach",
        ])
        .unwrap();
        let Command::Reboot(args) = cli.command else {
            panic!("not reboot")
        };
        assert_eq!(client_names(&args.clients).unwrap(), ["kiosk-1", "kiosk-2"]);
        assert!(args.flow.detach);
        assert!(parse(&["tcadm", "wake", "--group", "floor-2"]).is_ok());
        assert!(parse(&["tcadm", "shutdown", "-l", "room=101"]).is_ok());
        assert!(parse(&["tcadm", "shutdown", "client", "a", "-l", "room=101"]).is_err());
        assert!(client_names(&["cg".into(), "a".into()]).is_err());
        assert!(client_names(&["client".into()]).is_err());
        assert_eq!(client_names(&[]).unwrap(), Vec::<String>::new());
        let cli = parse(&["tcadm", "logs", "client", "kiosk-1", "--timeout", "30s"]).unwrap();
        let Command::Logs(args) = cli.command else {
            panic!("not logs")
        };
        assert_eq!(
            (args.kind, args.name.as_str(), args.timeout),
            (Kind::Client, "kiosk-1", Duration::from_secs(30))
        );
    }
}
