//! Contexts of the config file, `--context`, `--token-file` and the precedence of flags and
//! environment over them: the real binary against a real controller on `127.0.0.1:0` over HTTPS.

mod common;

use common::{Fleet, Run};
use std::path::{Path, PathBuf};

const GROUP: &str = "apiVersion: thinfleet.io/v1\nkind: ClientGroup\nmetadata:\n  name: front-desk\n\
spec:\n  selector: {}\n  packages: []\n";

/// A controller, and a scratch directory holding `group.yaml` and a home directory.
fn start() -> Fleet {
    let fleet = Fleet::start();
    std::fs::write(fleet.dir.path().join("group.yaml"), GROUP).unwrap();
    std::fs::create_dir(fleet.dir.path().join("home")).unwrap();
    fleet
}

impl Fleet {
    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The default config file of `home`.
    fn config_path(&self) -> PathBuf {
        self.home().join(".config/thinfleet/config.yaml")
    }

    fn url(&self) -> String {
        self.controller.url().to_string()
    }

    fn hash(&self) -> String {
        self.ca_cert_hash()
    }

    /// Runs tcadm in the scratch directory with only `HOME` and `env` set.
    fn tcadm_env(&self, env: &[(&str, &str)], args: &[&str]) -> Run {
        let mut command = self.bare_command(args);
        command.env("HOME", self.home());
        for (name, value) in env {
            command.env(name, value);
        }
        Run::of(&mut command)
    }

    /// Runs tcadm with nothing but `HOME`: the connection comes from the config file.
    fn tcadm(&self, args: &[&str]) -> Run {
        self.tcadm_env(&[], args)
    }

    /// Runs tcadm as the break-glass admin, server and CA in the environment.
    fn admin(&self, args: &[&str]) -> Run {
        let url = self.url();
        let hash = self.hash();
        self.tcadm_env(
            &[
                ("TCADM_SERVER", &url),
                ("TCADM_TOKEN", self.controller.admin_token()),
                ("TCADM_CA_CERT_HASH", &hash),
            ],
            args,
        )
    }

    /// `credential create NAME --role ROLE > NAME.token` (mode 0600); the token file's path.
    fn token_file(&self, name: &str, role: &str) -> PathBuf {
        let run = self.admin(&["credential", "create", name, "--role", role]);
        let path = self.dir.path().join(format!("{name}.token"));
        std::fs::write(&path, run.ok()).unwrap();
        set_mode(&path, 0o600);
        path
    }

    /// `config set-context NAME` for this controller, trusted by its CA hash.
    fn set_context(&self, name: &str, token_file: &Path) {
        let url = self.url();
        let hash = self.hash();
        let token_file = token_file.display().to_string();
        let run = self.tcadm(&[
            "config",
            "set-context",
            name,
            "--server",
            &url,
            "--ca-cert-hash",
            &hash,
            "--token-file",
            &token_file,
        ]);
        run.ok();
        assert!(
            run.stderr.contains(&format!("context `{name}`")),
            "{run:#?}"
        );
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn set_context_and_use_context_let_get_clients_run_without_server_or_token() {
    let fleet = start();
    let desk = fleet.token_file("desk", "viewer");
    // No config file yet: tcadm falls back to the local defaults and finds no controller there.
    assert_eq!(fleet.tcadm(&["get", "clients"]).code, 3);
    fleet.set_context("berlin-helpdesk", &desk);
    assert_eq!(mode(&fleet.config_path()), 0o600);
    assert_eq!(mode(fleet.config_path().parent().unwrap()), 0o700);
    // Created, not yet current.
    let run = fleet.tcadm(&["config", "current-context"]);
    assert_eq!(run.code, 2, "{run:#?}");
    let run = fleet.tcadm(&["config", "use-context", "berlin-helpdesk"]);
    run.ok();
    assert_eq!(
        fleet.tcadm(&["config", "current-context"]).ok(),
        "berlin-helpdesk\n"
    );
    fleet.tcadm(&["get", "clients"]).ok();
    let table = fleet.tcadm(&["config", "get-contexts"]);
    let lines: Vec<&str> = table.ok().lines().collect();
    assert_eq!(lines.len(), 2, "{table:#?}");
    assert!(lines[0].starts_with("CURRENT") && lines[0].contains("TOKEN FILE"));
    assert!(lines[1].starts_with('*'), "{table:#?}");
    assert!(lines[1].contains("berlin-helpdesk"), "{table:#?}");
    assert!(lines[1].contains(&fleet.url()), "{table:#?}");
    assert!(lines[1].contains(&fleet.hash()), "{table:#?}");
    assert!(lines[1].contains(&desk.display().to_string()), "{table:#?}");
    // Updating a context keeps what is not given.
    fleet
        .tcadm(&[
            "config",
            "set-context",
            "berlin-helpdesk",
            "--server",
            "https://127.0.0.1:1",
        ])
        .ok();
    let text = std::fs::read_to_string(fleet.config_path()).unwrap();
    assert!(text.contains("server: https://127.0.0.1:1"), "{text}");
    assert!(text.contains(&fleet.hash()), "{text}");
    assert!(text.contains("desk.token"), "{text}");
    assert_eq!(mode(&fleet.config_path()), 0o600);
}

#[test]
fn a_viewer_context_may_not_apply_and_an_admin_context_may() {
    let fleet = start();
    let desk = fleet.token_file("desk", "viewer");
    let ops = fleet.token_file("ops", "admin");
    fleet.set_context("desk", &desk);
    fleet.set_context("ops", &ops);
    fleet.tcadm(&["config", "use-context", "desk"]).ok();
    let run = fleet.tcadm(&["apply", "-f", "group.yaml"]);
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(run.stderr.contains("needs role admin"), "{run:#?}");
    // --context chooses another context for one command.
    fleet
        .tcadm(&["--context", "ops", "apply", "-f", "group.yaml"])
        .ok();
    assert_eq!(fleet.tcadm(&["config", "current-context"]).ok(), "desk\n");
    let group = fleet.tcadm(&["get", "cg", "front-desk", "-o", "json"]);
    let group: serde_json::Value = serde_json::from_str(group.ok()).unwrap();
    assert_eq!(group["metadata"]["managedBy"], "credential:ops");
    // So does TCADM_CONTEXT, and --context wins over it.
    fleet
        .tcadm_env(&[("TCADM_CONTEXT", "ops")], &["delete", "cg", "front-desk"])
        .ok();
    let run = fleet.tcadm_env(
        &[("TCADM_CONTEXT", "ops")],
        &["--context", "desk", "apply", "-f", "group.yaml"],
    );
    assert_eq!(run.code, 3, "{run:#?}");
}

#[test]
fn flags_and_environment_win_over_the_context() {
    let fleet = start();
    let desk = fleet.token_file("desk", "viewer");
    // Written by hand, with a token file relative to the config file's directory and a server
    // where nothing listens.
    let config = fleet.dir.path().join("conf/tcadm.yaml");
    std::fs::create_dir(config.parent().unwrap()).unwrap();
    std::fs::rename(&desk, config.parent().unwrap().join("desk.token")).unwrap();
    std::fs::write(
        &config,
        format!(
            "currentContext: desk\ncontexts:\n  - name: desk\n    server: https://127.0.0.1:1\n    \
             caCertHash: {}\n    tokenFile: desk.token\n",
            fleet.hash()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let url = fleet.url();
    let with_config = [("TCADM_CONFIG", config.as_str())];
    assert_eq!(fleet.tcadm_env(&with_config, &["get", "clients"]).code, 3);
    // The flag's server, the context's token and CA.
    fleet
        .tcadm_env(&with_config, &["--server", &url, "get", "clients"])
        .ok();
    // The environment's server.
    let env = [("TCADM_CONFIG", config.as_str()), ("TCADM_SERVER", &url)];
    fleet.tcadm_env(&env, &["get", "clients"]).ok();
    // The flag wins over the environment.
    let env = [
        ("TCADM_CONFIG", config.as_str()),
        ("TCADM_SERVER", "https://127.0.0.1:1"),
    ];
    fleet
        .tcadm_env(&env, &["--server", &url, "get", "clients"])
        .ok();
    // The environment's token wins over the context's token file: the admin may apply.
    let env = [
        ("TCADM_CONFIG", config.as_str()),
        ("TCADM_SERVER", &url),
        ("TCADM_TOKEN", fleet.controller.admin_token()),
    ];
    fleet.tcadm_env(&env, &["apply", "-f", "group.yaml"]).ok();
    // A wrong CA given on the command line wins over the context's right one.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let run = fleet.tcadm_env(
        &[("TCADM_CONFIG", config.as_str()), ("TCADM_SERVER", &url)],
        &["--ca-cert-hash", &wrong, "get", "clients"],
    );
    assert_eq!(run.code, 3, "{run:#?}");
}

#[test]
fn token_file_gives_the_token_and_warns_when_others_may_read_it() {
    let fleet = start();
    let ops = fleet.token_file("ops", "admin");
    let url = fleet.url();
    let hash = fleet.hash();
    let ops_path = ops.display().to_string();
    let env = [
        ("TCADM_SERVER", url.as_str()),
        ("TCADM_CA_CERT_HASH", &hash),
    ];
    let run = fleet.tcadm_env(
        &env,
        &["--token-file", &ops_path, "apply", "-f", "group.yaml"],
    );
    run.ok();
    assert!(!run.stderr.contains("warning"), "{run:#?}");
    // From the environment, relative to the current directory.
    let env_file = [
        ("TCADM_SERVER", url.as_str()),
        ("TCADM_CA_CERT_HASH", &hash),
        ("TCADM_TOKEN_FILE", "ops.token"),
    ];
    fleet
        .tcadm_env(&env_file, &["get", "cg", "front-desk"])
        .ok();
    set_mode(&ops, 0o644);
    let run = fleet.tcadm_env(&env, &["--token-file", &ops_path, "get", "clients"]);
    run.ok();
    assert!(
        run.stderr.contains("warning:") && run.stderr.contains("chmod 600"),
        "{run:#?}"
    );
    std::fs::write(&ops, "\n").unwrap();
    let run = fleet.tcadm_env(&env, &["--token-file", &ops_path, "get", "clients"]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("the token file is empty"), "{run:#?}");
    let run = fleet.tcadm_env(&env, &["--token-file", "missing.token", "get", "clients"]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("missing.token"), "{run:#?}");
}

#[test]
fn an_unknown_field_in_the_config_file_is_an_error_with_its_line() {
    let fleet = start();
    std::fs::create_dir_all(fleet.config_path().parent().unwrap()).unwrap();
    let text = "currentContext: a\ncontexts:\n  - name: a\n    server: https://127.0.0.1:1\n    \
                tokenFle: a.token\n";
    std::fs::write(fleet.config_path(), text).unwrap();
    for args in [&["get", "clients"][..], &["config", "get-contexts"]] {
        let run = fleet.tcadm(args);
        assert_eq!(run.code, 2, "{run:#?}");
        assert!(
            run.stderr
                .contains("config.yaml:5:5: contexts[0].tokenFle: unknown field `tokenFle`"),
            "{run:#?}"
        );
    }
    // Completion needs no connection.
    assert!(!fleet.tcadm(&["completion", "bash"]).ok().is_empty());
    // Changing the file is refused too, and leaves it as it was.
    assert_eq!(fleet.tcadm(&["config", "use-context", "a"]).code, 2);
    assert_eq!(std::fs::read_to_string(fleet.config_path()).unwrap(), text);
}

#[test]
fn an_unknown_context_exits_2_naming_the_known_ones() {
    let fleet = start();
    let desk = fleet.token_file("desk", "viewer");
    fleet.set_context("desk", &desk);
    fleet.set_context("ops", &desk);
    let before = std::fs::read_to_string(fleet.config_path()).unwrap();
    let run = fleet.tcadm(&["config", "use-context", "nope"]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(
        run.stderr.contains("no context `nope`")
            && run.stderr.contains("known contexts: desk, ops"),
        "{run:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(fleet.config_path()).unwrap(),
        before
    );
    let run = fleet.tcadm(&["--context", "nope", "get", "clients"]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("no context `nope`"), "{run:#?}");
    // A config file named explicitly must exist.
    let run = fleet.tcadm(&["--config", "absent.yaml", "get", "clients"]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("absent.yaml"), "{run:#?}");
    // `set-context` creates a file `--config` names.
    fleet
        .tcadm(&[
            "--config",
            "new/tc.yaml",
            "config",
            "set-context",
            "x",
            "--server",
            "h:1",
        ])
        .ok();
    let run = fleet.tcadm(&["--config", "new/tc.yaml", "config", "get-contexts"]);
    assert!(run.ok().contains("https://h:1"), "{run:#?}");
    // A context without a server says so.
    fleet.tcadm(&["config", "set-context", "empty"]).ok();
    let run = fleet.tcadm(&["--context", "empty", "get", "clients"]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(
        run.stderr.contains("context `empty`") && run.stderr.contains("has no server"),
        "{run:#?}"
    );
}
