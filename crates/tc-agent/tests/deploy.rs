//! The agent's deployment files stay true to the binary: `deploy/systemd/tc-agent.service` passes
//! `systemd-analyze verify`, its command line parses with the agent's real CLI, and the
//! configuration it is installed with (`deploy/agent/config.yaml`, the Debian package's conffile)
//! is refused as shipped, with the exit status the unit does not restart on, and accepted once its
//! controller is set, with the state directory systemd creates for it.
//!
//! `systemd-analyze` must be installed (Debian and Ubuntu: package `systemd`): without it the test
//! fails rather than pass without checking anything.

use std::path::{Path, PathBuf};
use std::process::Command;

use tc_agent::config::{Cli, Command as AgentCommand, parse_file_config, parse_server};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The value of the first `key=` line of a unit.
fn unit_setting<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= line in the unit"))
}

#[test]
fn the_agent_unit_verifies_and_its_command_line_parses() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/tc-agent.service")).unwrap();
    let exec_start: Vec<&str> = unit_setting(&unit, "ExecStart")
        .split_whitespace()
        .collect();
    assert_eq!(exec_start[0], "/usr/bin/tc-agent", "{exec_start:?}");
    let arguments = &exec_start[1..];

    // The agent's own parser takes the command line as running the agent with that file.
    let cli = <Cli as clap::Parser>::try_parse_from(
        std::iter::once("tc-agent").chain(arguments.iter().copied()),
    )
    .unwrap_or_else(|error| panic!("tc-agent.service: {arguments:?} rejected: {error}"));
    let AgentCommand::Run(settings) = cli.into_command() else {
        panic!("tc-agent.service does not run the agent: {arguments:?}");
    };
    let config = settings
        .config
        .as_deref()
        .expect("tc-agent.service names a configuration file");
    assert_eq!(config, Path::new("/etc/tc-agent/config.yaml"));

    // So does the built binary (clap refuses a bad flag before it gets to `--version`).
    let output = Command::new(env!("CARGO_BIN_EXE_tc-agent"))
        .args(arguments)
        .arg("--version")
        .env_remove("TC_AGENT_FAULT")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "tc-agent.service: {arguments:?} rejected: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The configuration installed at that path sets no controller: as shipped, the agent refuses
    // it with exit status 2, and the unit does not restart an agent that exits 2 (it stays down,
    // its error in the journal, until it is configured), while it does restart one that failed
    // otherwise.
    let shipped = repo().join("deploy/agent/config.yaml");
    let output = Command::new(env!("CARGO_BIN_EXE_tc-agent"))
        .arg("--config")
        .arg(&shipped)
        .env_remove("TC_AGENT_FAULT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no controller URL"), "{stderr}");
    assert_eq!(unit_setting(&unit, "RestartPreventExitStatus"), "2");
    assert_eq!(unit_setting(&unit, "Restart"), "on-failure");

    // Once `server` and `caCertHash` are uncommented, it parses and keeps its state where systemd
    // creates the state directory.
    let text = std::fs::read_to_string(&shipped).unwrap();
    let configured = text
        .replace("\n#server: ", "\nserver: ")
        .replace("\n#caCertHash: ", "\ncaCertHash: ");
    let file =
        parse_file_config(&configured).unwrap_or_else(|error| panic!("config.yaml: {error}"));
    parse_server(
        file.server
            .as_deref()
            .expect("config.yaml has a `#server:` line"),
    )
    .unwrap();
    let hash = file
        .ca_cert_hash
        .as_deref()
        .expect("config.yaml has a `#caCertHash:` line");
    hash.parse::<tc_trust::CaCertHash>()
        .unwrap_or_else(|error| panic!("config.yaml: {error}"));
    let state_directory = unit_setting(&unit, "StateDirectory");
    assert_eq!(
        file.state_dir,
        Some(Path::new("/var/lib").join(state_directory)),
        "config.yaml's stateDir is the unit's StateDirectory"
    );

    let local = unit.replace("/usr/bin/tc-agent", env!("CARGO_BIN_EXE_tc-agent"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tc-agent.service");
    std::fs::write(&path, local).unwrap();
    tc_testkit::deploy::verify_unit(&path);
}
