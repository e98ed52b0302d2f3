//! The controller's deployment files stay true to the binary: the systemd unit passes
//! `systemd-analyze verify` and its command line parses; the container and Kubernetes manifests
//! use the controller's real flags, port and probe paths. (The agent's unit is checked by
//! `crates/tc-agent/tests/deploy.rs`, where the agent binary is built.)
//!
//! `systemd-analyze` must be installed (Debian and Ubuntu: package `systemd`): without it the test
//! fails rather than pass without checking anything.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The arguments of a unit's `ExecStart=` line (after the program).
fn exec_start_args(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart line");
    line.split_whitespace().skip(1).map(String::from).collect()
}

/// Runs the built controller with `args` and `--version`: clap rejects unknown or malformed flags
/// before it gets to `--version`.
fn assert_controller_accepts(args: &[String], origin: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_tc-controller"))
        .args(args)
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{origin}: {args:?} rejected: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_controller_unit_verifies_and_its_flags_parse() {
    let unit =
        std::fs::read_to_string(repo().join("deploy/systemd/tc-controller.service")).unwrap();
    assert_controller_accepts(&exec_start_args(&unit), "tc-controller.service");
    let dir = tempfile::tempdir().unwrap();
    let local = unit.replace(
        "/usr/bin/tc-controller",
        env!("CARGO_BIN_EXE_tc-controller"),
    );
    let path = dir.path().join("tc-controller.service");
    std::fs::write(&path, local).unwrap();
    tc_testkit::deploy::verify_unit(&path);
}

#[test]
fn container_and_kubernetes_use_the_real_flags_port_and_probes() {
    let containerfile =
        std::fs::read_to_string(repo().join("deploy/container/Containerfile")).unwrap();
    let cmd = containerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("CMD line");
    let args: Vec<String> = serde_json::from_str(cmd).unwrap();
    assert_controller_accepts(&args, "Containerfile");
    assert!(containerfile.contains("EXPOSE 7130"));

    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/controller.yaml")).unwrap();
    let documents =
        tc_api::decode::parse_documents("controller.yaml", &text, &Default::default()).unwrap();
    let kinds: Vec<&str> = documents
        .iter()
        .map(|d| d.value["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "Namespace",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from controller.yaml");
    }
    let deployment = documents
        .iter()
        .find(|d| d.value["kind"] == "Deployment")
        .unwrap();
    let container = &deployment.value["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
    assert_controller_accepts(&args, "controller.yaml");
    assert_eq!(container["ports"][0]["containerPort"], 7130);
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
}
