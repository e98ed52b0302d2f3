//! `tcadm` verifies an HTTPS controller: by the CA's fingerprint, by a CA file, or by the local
//! `data/pki/ca.crt`; a wrong fingerprint or no way to verify is refused with one clear line.

use std::process::{Command, Output};

use tc_testkit::TestController;

struct Setup {
    controller: TestController,
    _runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl Setup {
    fn start() -> Setup {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let controller = runtime.block_on(TestController::start());
        Setup {
            controller,
            _runtime: runtime,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn tcadm(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tcadm"))
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("TCADM_SERVER", self.controller.url())
            .env("TCADM_TOKEN", self.controller.admin_token())
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_wrong_ca_fingerprint_is_refused_naming_both() {
    let setup = Setup::start();
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let output = setup.tcadm(&[("TCADM_CA_CERT_HASH", &wrong)], &["get", "clients"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let error = stderr(&output);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(
        error.contains("does not match the pinned fingerprint"),
        "{error}"
    );
    assert!(error.contains(&wrong), "{error}");
    assert!(
        error.contains(&setup.controller.ca_cert_hash().unwrap()),
        "{error}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn the_right_fingerprint_or_the_ca_file_is_trusted() {
    let setup = Setup::start();
    let hash = setup.controller.ca_cert_hash().unwrap();
    let output = setup.tcadm(&[("TCADM_CA_CERT_HASH", &hash)], &["get", "clients"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = setup.tcadm(&[], &["--ca-cert-hash", &hash, "version"]);
    assert!(output.status.success(), "{}", stderr(&output));

    let ca = setup.dir.path().join("fleet-ca.pem");
    std::fs::write(&ca, setup.controller.ca_pem().unwrap()).unwrap();
    let output = setup.tcadm(
        &[],
        &["--certificate-authority", ca.to_str().unwrap(), "get", "cg"],
    );
    assert!(output.status.success(), "{}", stderr(&output));

    // Another controller's CA is refused.
    let other = setup._runtime.block_on(TestController::start());
    let bad = setup.dir.path().join("other-ca.pem");
    std::fs::write(&bad, other.ca_pem().unwrap()).unwrap();
    let output = setup.tcadm(&[("TCADM_CA_FILE", bad.to_str().unwrap())], &["get", "cg"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("certificate"),
        "{}",
        stderr(&output)
    );
    drop(other);
}

#[test]
fn a_local_controller_is_verified_with_data_pki_ca_crt() {
    let setup = Setup::start();
    // Without a CA and without the local file: refused, saying what to give.
    let output = setup.tcadm(&[], &["get", "clients"]);
    assert_eq!(output.status.code(), Some(3));
    let error = stderr(&output);
    assert!(
        error.contains("--certificate-authority") && error.contains("--ca-cert-hash"),
        "{error}"
    );
    // With the controller's data/pki/ca.crt in the current directory, as beside a local
    // controller.
    std::fs::create_dir_all(setup.dir.path().join("data/pki")).unwrap();
    std::fs::copy(
        setup.controller.data_dir().join("pki/ca.crt"),
        setup.dir.path().join("data/pki/ca.crt"),
    )
    .unwrap();
    let output = setup.tcadm(&[], &["get", "clients"]);
    assert!(output.status.success(), "{}", stderr(&output));
}
