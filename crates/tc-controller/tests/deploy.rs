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

#[test]
fn the_replicas_manifests_run_three_replicas_on_postgresql_with_a_disruption_budget() {
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/replicas.yaml")).unwrap();
    let documents =
        tc_api::decode::parse_documents("replicas.yaml", &text, &Default::default()).unwrap();
    let find = |kind: &str| {
        &documents
            .iter()
            .find(|d| d.value["kind"] == kind)
            .unwrap_or_else(|| panic!("{kind} missing from replicas.yaml"))
            .value
    };
    let deployment = find("Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let budget = find("PodDisruptionBudget");
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&find("Service")["spec"]["selector"], labels);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
    assert_controller_accepts(&args, "replicas.yaml");
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert!(flag("--store").starts_with("postgres://"));
    // No password in the URL: it comes from the Secret.
    let url = flag("--store");
    let userinfo = url["postgres://".len()..].split('@').next().unwrap();
    assert!(!userinfo.contains(':'), "{url}");
    // The password file is the mounted Secret's.
    let password = flag("--store-password-file");
    let mounts = container["volumeMounts"].as_array().unwrap();
    let db_mount = mounts
        .iter()
        .find(|m| password.starts_with(m["mountPath"].as_str().unwrap()) && m["name"] == "db")
        .expect("the password file is on the db Secret's mount");
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["name"] == db_mount["name"] && v["secret"]["secretName"].is_string())
    );
    // Each pod names its replica after itself.
    let env = container["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "TC_CONTROLLER_REPLICA_NAME"
        && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"));
    // The followers forward to the leader at its pod address, which its certificate names.
    let advertised = flag("--advertise-url");
    assert!(advertised.contains("$(POD_IP)"), "{advertised}");
    assert!(env.iter().any(
        |e| e["name"] == "POD_IP" && e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    ));
    // Ready means serving (leading, or following a known leader); no liveness probe.
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["livenessProbe"].is_null());
    // The shared files reach the data directory where the controller looks for them.
    let init = pod["initContainers"][0]["command"][2].as_str().unwrap();
    for file in [
        "pki/",
        "ca.crt",
        "ca.key",
        "session.key",
        "admin.token",
        "bootstrap.token",
    ] {
        assert!(init.contains(file), "{file} not copied: {init}");
    }
    assert!(init.contains(&flag("--data-dir")), "{init}");
}

#[test]
fn the_two_host_systemd_drop_in_runs_the_unit_on_postgresql() {
    let drop_in =
        std::fs::read_to_string(repo().join("deploy/systemd/replicas/postgres.conf")).unwrap();
    let lines: Vec<&str> = drop_in
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStart="))
        .collect();
    // The empty ExecStart= resets the unit's own before the new one.
    assert_eq!(lines.len(), 2, "{drop_in}");
    assert_eq!(lines[0], "");
    let args: Vec<String> = lines[1]
        .split_whitespace()
        .skip(1)
        .map(String::from)
        .collect();
    assert_controller_accepts(&args, "replicas/postgres.conf");
    for flag in [
        "--store",
        "--store-password-file",
        "--replica-name",
        "--advertise-url",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} missing");
    }
    // Installed as a drop-in next to the shipped unit, systemd accepts both.
    let dir = tempfile::tempdir().unwrap();
    let unit =
        std::fs::read_to_string(repo().join("deploy/systemd/tc-controller.service")).unwrap();
    let binary = env!("CARGO_BIN_EXE_tc-controller");
    std::fs::write(
        dir.path().join("tc-controller.service"),
        unit.replace("/usr/bin/tc-controller", binary),
    )
    .unwrap();
    let drop_ins = dir.path().join("tc-controller.service.d");
    std::fs::create_dir(&drop_ins).unwrap();
    std::fs::write(
        drop_ins.join("postgres.conf"),
        drop_in.replace("/usr/bin/tc-controller", binary),
    )
    .unwrap();
    tc_testkit::deploy::verify_unit(&dir.path().join("tc-controller.service"));
}
