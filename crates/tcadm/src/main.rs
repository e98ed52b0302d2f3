//! The `tcadm` binary: parses arguments, runs the command, prints one `error:` line per error on
//! failure and exits with the documented code.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use tcadm::api::Connection;
use tcadm::cli::{Cli, Command, OnCommandLine};
use tcadm::commands::progress_bars_possible;
use tcadm::contexts::Settings;
use tcadm::output::{ExitOnClosedPipe, Style, Terminal, print_stderr};
use tcadm::{Context, run};

fn main() -> ExitCode {
    let matches = Cli::command()
        .try_get_matches()
        .unwrap_or_else(|error| error.exit());
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    cli.on_command_line = OnCommandLine::from_matches(&matches);
    let err_style = Style::stderr();
    // `config` commands edit the config file and talk to no controller: a broken context must
    // not keep them from repairing it (nor keep `completion` from printing a script).
    let connection = if matches!(cli.command, Command::Config(_) | Command::Completion(_)) {
        let current_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Connection::resolve(None, None, &current_dir)
    } else {
        match Settings::from_cli(&cli).connection() {
            Ok(resolved) => {
                if let Some(warning) = &resolved.warning {
                    print_stderr(err_style, &err_style.yellow("warning:"), warning);
                }
                resolved.connection
            }
            Err(error) => {
                for line in error.lines() {
                    print_stderr(err_style, &err_style.error("error:"), &line);
                }
                return ExitCode::from(error.exit_code());
            }
        }
    };
    let out_style = Style::stdout();
    // A closed standard output ends any command quietly (see `ExitOnClosedPipe`); control
    // characters in what is printed are shown, not obeyed (see `Terminal`).
    let mut out = ExitOnClosedPipe::new(Terminal::new(io::stdout().lock(), out_style.color));
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let mut context = Context {
        connection,
        out: &mut out,
        stdin: &mut input,
        out_style,
        err_style,
        progress_bars: progress_bars_possible(),
    };
    let code = match run(cli, &mut context) {
        Ok(code) => code,
        Err(error) if error.is_broken_pipe() => 0,
        Err(error) => {
            let _ = context.out.flush();
            if !error.is_reported() {
                for line in error.lines() {
                    print_stderr(err_style, &err_style.error("error:"), &line);
                }
            }
            error.exit_code()
        }
    };
    let _ = out.flush();
    ExitCode::from(code)
}
