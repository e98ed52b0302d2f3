//! The `tcadm` binary: parses arguments, runs the command, prints one `error:` line per error on
//! failure and exits with the documented code.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tcadm::api::Connection;
use tcadm::cli::Cli;
use tcadm::commands::progress_bars_possible;
use tcadm::output::{ExitOnClosedPipe, Style};
use tcadm::{Context, run};

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|error| error.exit());
    let current_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let connection = Connection::resolve(cli.server.as_deref(), cli.token.as_deref(), &current_dir)
        .with_ca(cli.certificate_authority.as_deref(), cli.ca_cert_hash);
    let err_style = Style::stderr();
    // A closed standard output ends any command quietly (see `ExitOnClosedPipe`).
    let mut out = ExitOnClosedPipe::new(io::stdout().lock());
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let mut context = Context {
        connection,
        out: &mut out,
        stdin: &mut input,
        out_style: Style::stdout(),
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
                    eprintln!("{} {line}", err_style.error("error:"));
                }
            }
            error.exit_code()
        }
    };
    let _ = out.flush();
    ExitCode::from(code)
}
