//! The harness of the tests that run the real `tcadm` against a real controller on `127.0.0.1:0`
//! over HTTPS: the controller with the runtime it runs on, a scratch working directory, `tcadm`
//! commands with nothing from the developer's environment, and what a run did.

#![allow(dead_code)]

pub mod agents;

use std::process::Command;

use tc_testkit::TestController;

/// A controller, the runtime it runs on and a scratch working directory.
pub struct Fleet {
    // Fields drop in order: the controller stops before its runtime goes away.
    pub controller: TestController,
    _runtime: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
}

impl Fleet {
    pub fn start() -> Fleet {
        Fleet::start_with(|_| {})
    }

    pub fn start_with(adjust: impl FnOnce(&mut tc_testkit::Config) + Send + 'static) -> Fleet {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let controller = runtime.block_on(TestController::start_with(adjust));
        Fleet {
            controller,
            _runtime: runtime,
            dir: tempfile::tempdir().expect("scratch directory"),
        }
    }

    /// `tcadm ARGS` in the scratch directory with an empty environment.
    pub fn bare_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tcadm"));
        command.args(args).current_dir(self.dir.path()).env_clear();
        command
    }

    /// `tcadm ARGS` with the controller's URL, CA fingerprint and `token` in its environment.
    pub fn command_as(&self, token: &str, args: &[&str]) -> Command {
        let mut command = self.bare_command(args);
        command
            .env("TCADM_SERVER", self.controller.url())
            .env("TCADM_TOKEN", token)
            .env("TCADM_CA_CERT_HASH", self.ca_cert_hash());
        command
    }

    /// `tcadm ARGS` as the break-glass admin.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_as(self.controller.admin_token(), args)
    }

    /// The controller's CA fingerprint.
    pub fn ca_cert_hash(&self) -> String {
        self.controller.ca_cert_hash().expect("an HTTPS controller")
    }

    /// A blocking HTTP client that trusts the controller's CA.
    pub fn https_client(&self) -> reqwest::blocking::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = self
            .controller
            .tls_client_config(&[b"http/1.1"])
            .expect("an HTTPS controller");
        reqwest::blocking::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .build()
            .unwrap()
    }
}

/// What one run of `tcadm` did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Runs `command` (standard input closed) to its end.
    pub fn of(command: &mut Command) -> Run {
        let output = command
            .stdin(std::process::Stdio::null())
            .output()
            .expect("tcadm runs");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    /// Asserts success and returns standard output.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "tcadm failed: {self:#?}");
        &self.stdout
    }
}
