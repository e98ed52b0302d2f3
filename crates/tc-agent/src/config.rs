//! Command line and configuration file.
//!
//! Settings come from the command line and from an optional YAML file (`--config`); the command
//! line wins, and labels from both are merged (the command line wins per key). Relative paths in
//! the file are taken relative to the file's directory.
//!
//! ```yaml
//! server: https://controller.example:7130
//! caCertHash: sha256:4f0e...   # the controller CA's fingerprint, from the join material
//! bootstrapTokenFile: /etc/tc-agent/bootstrap.token   # or bootstrapToken: ...
//! stateDir: /var/lib/tc-agent
//! name: front-desk-3
//! labels:
//!   site: berlin
//! trustedKeys:   # minisign public keys packages must be signed with (optional; several to rotate)
//!   - RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::Url;
use tc_trust::CaCertHash;

use crate::signature::TrustedKey;

mod file;
pub mod tasks;

pub use file::{FileConfig, parse_file_config};

/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tc-agent";

/// The thinfleet agent: enrols with the controller, reports this machine and installs the
/// packages assigned to it.
///
/// Without a subcommand it runs the agent with the settings given here (as `tc-agent run` does).
#[derive(Debug, clap::Parser)]
#[command(name = "tc-agent", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The settings of `run`, for the agent run without a subcommand.
    #[command(flatten)]
    pub settings: Settings,
}

impl Cli {
    /// What the command line asks for, with `run` when no subcommand was given.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Run(self.settings))
    }
}

/// The subcommands, each with only the settings it takes.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "made once at start from the command line"
)]
pub enum Command {
    /// Run the agent (the default).
    Run(Settings),
    /// Print what is installed, what is pending and the last error, from the state directory.
    Status(StatusSettings),
}

/// The settings of `run`, as typed on the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Args)]
pub struct Settings {
    /// YAML configuration file; command-line settings override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Controller URL, e.g. `https://controller.example:7130`.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Bootstrap token for the first enrolment (prefer --bootstrap-token-file: a command line is
    /// visible to every user of the machine).
    #[arg(long, value_name = "TOKEN")]
    pub bootstrap_token: Option<String>,
    /// File holding the bootstrap token.
    #[arg(long, value_name = "FILE", conflicts_with = "bootstrap_token")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Fingerprint of the controller's CA, `sha256:<hex>` (from the join material): an https
    /// server is trusted only if its chain has this CA. Several, comma-separated, while the
    /// controller's CA is being replaced.
    #[arg(long, value_name = "sha256:HEX[,...]")]
    pub ca_cert_hash: Option<String>,
    /// PEM file of the CA that signs the controller's certificate (instead of --ca-cert-hash).
    #[arg(long, value_name = "FILE", conflicts_with = "ca_cert_hash")]
    pub ca_file: Option<PathBuf>,
    /// State directory [default: /var/lib/tc-agent].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Label reported at enrolment (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Client name asked for at enrolment [default: the host name].
    #[arg(long)]
    pub name: Option<String>,
    /// Machine identity [default: /etc/machine-id, else one generated in the state directory].
    #[arg(long, value_name = "ID")]
    pub machine_id: Option<String>,
    /// Minisign public key (the `RW...` line of a `.pub` file) that packages must be signed with
    /// (repeatable: several while keys are rotated); replaces `trustedKeys` of the file. Without
    /// any, packages are installed unsigned.
    #[arg(long = "trusted-key", value_name = "BASE64")]
    pub trusted_keys: Vec<String>,
    /// Seconds between two load-history samples (1..=3600) [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub history_interval_seconds: Option<u32>,
    /// Seconds a new agent installed by a `thinfleet-agent` release has to check in with the
    /// controller before the update is rolled back (5..=3600) [default: 120].
    #[arg(long, value_name = "SECONDS")]
    pub self_update_check_in_seconds: Option<u32>,
    /// Remote operations this agent accepts, comma-separated (reboot, shutdown, wake, exec,
    /// collectLogs; an empty list accepts none); replaces `allowedTasks` of the file [default:
    /// all].
    #[arg(long, value_name = "ACTION[,...]")]
    pub allowed_tasks: Option<String>,
}

/// The settings of `status`: only where the state directory is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Args)]
pub struct StatusSettings {
    /// The agent's YAML configuration file, for its `stateDir`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory [default: /var/lib/tc-agent]; overrides the configuration file.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StatusSettings {
    /// The state directory, from the command line, the file or the default.
    pub fn state_dir(&self) -> Result<PathBuf, ConfigError> {
        state_dir(self.config.as_deref(), self.state_dir.as_deref())
    }
}

/// The resolved configuration of a running agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// Controller URL (ends with `/`, so that relative URLs resolve under it).
    pub server: Url,
    /// Bootstrap token, when one is configured.
    pub bootstrap_token: Option<BootstrapToken>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Labels reported at enrolment.
    pub labels: BTreeMap<String, String>,
    /// Client name asked for at enrolment.
    pub name: String,
    /// Machine identity override.
    pub machine_id: Option<String>,
    /// How an `https://` controller is trusted (required for one; unused for `http://`).
    pub ca: Option<CaTrust>,
    /// Minisign public keys packages must be signed with; empty: packages are not checked.
    pub trusted_keys: Vec<TrustedKey>,
    /// Time between two load-history samples (60 s unless configured).
    pub history_interval: Duration,
    /// Remote operations: allowed actions, reboot and shutdown commands, Wake-on-LAN.
    pub tasks: tasks::TaskConfig,
    /// How long a new agent installed by a `thinfleet-agent` release has to check in.
    pub self_update_check_in: Duration,
}

/// How the agent trusts an `https://` controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaTrust {
    /// A CA whose fingerprint is one of these (`caCertHash`). With one fingerprint, the CA
    /// certificate is stored in the state directory at the first successful contact and trusted
    /// alone from then on; with several (a CA being replaced), the chain is checked against the
    /// fingerprints at every connection.
    Pinned(Vec<CaCertHash>),
    /// The CA certificates of this PEM file (`caFile`).
    File(PathBuf),
}

/// Where the bootstrap token comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootstrapToken {
    /// Given as a value.
    Value(String),
    /// Read from a file at every enrolment, so that a rotated token is picked up without a
    /// restart.
    File(PathBuf),
}

impl BootstrapToken {
    /// The token.
    pub fn read(&self) -> Result<String, ConfigError> {
        match self {
            BootstrapToken::Value(token) => Ok(token.clone()),
            BootstrapToken::File(path) => read_token(path),
        }
    }
}

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// No controller URL was given.
    #[error("no controller URL: pass --server or set `server` in the configuration file")]
    MissingServer,
    /// The controller URL is not usable.
    #[error("invalid controller URL `{url}`: {message}")]
    InvalidServer {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The labels break Kubernetes' rules or are too many.
    #[error("invalid labels: {message}")]
    InvalidLabels {
        /// What is wrong, with the label.
        message: String,
    },
    /// A label is not `key=value`.
    #[error("invalid label `{label}`: expected KEY=VALUE with a non-empty key")]
    InvalidLabel {
        /// The label given.
        label: String,
    },
    /// The token file is empty.
    #[error("{path} is empty; expected the bootstrap token")]
    EmptyToken {
        /// The token file.
        path: PathBuf,
    },
    /// Both a token and a token file were configured.
    #[error("set either a bootstrap token or a bootstrap token file, not both")]
    TwoTokens,
    /// An `https://` controller without a way to verify it.
    #[error(
        "{server} is https: give the controller CA's fingerprint with --ca-cert-hash sha256:<hex> (caCertHash in the configuration file; it is in the join material, and printed by the controller at start) or its certificate with --ca-file FILE (caFile)"
    )]
    MissingCa {
        /// The controller URL.
        server: String,
    },
    /// A fingerprint that is not `sha256:<hex>`.
    #[error("{0}")]
    InvalidCaCertHash(String),
    /// A `trustedKeys` entry or `--trusted-key` that is not a minisign public key.
    #[error("invalid trusted key: {0}")]
    InvalidTrustedKey(String),
    /// Both a fingerprint and a CA file were configured.
    #[error("set either caCertHash or caFile, not both")]
    TwoCas,
    /// A history interval that is not a whole number of seconds within range.
    #[error(
        "invalid historyIntervalSeconds `{0}`: expected whole seconds from {min} to {max}",
        min = tc_proto::history::MIN_INTERVAL_SECONDS,
        max = tc_proto::history::MAX_INTERVAL_SECONDS
    )]
    InvalidHistoryInterval(String),
    /// A self-update check-in deadline that is not a whole number of seconds within range.
    #[error(
        "invalid selfUpdateCheckInSeconds `{0}`: expected whole seconds from {min} to {max}",
        min = crate::selfupdate::MIN_CHECK_IN_SECONDS,
        max = crate::selfupdate::MAX_CHECK_IN_SECONDS
    )]
    InvalidSelfUpdateCheckIn(String),
    /// A setting of remote operations (`allowedTasks`, `rebootCommand`, ...) that is not valid.
    #[error("invalid task setting: {0}")]
    InvalidTasks(String),
}

/// Reads the configuration file at `path`, if one is given.
fn read_file_config(path: Option<&Path>) -> Result<Option<(PathBuf, FileConfig)>, ConfigError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let config = parse_file_config(&text).map_err(|message| ConfigError::File {
        path: path.to_owned(),
        message,
    })?;
    Ok(Some((path.to_owned(), config)))
}

/// The state directory: `state_dir` when given, else the file's `stateDir` (relative to the
/// file), else the default.
fn state_dir(config: Option<&Path>, state_dir: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(dir) = state_dir {
        return Ok(dir.to_owned());
    }
    Ok(read_file_config(config)?
        .and_then(|(path, file)| file.state_dir.map(|dir| relative_to(&path, dir)))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)))
}

impl Settings {
    /// Reads the configuration file, if any.
    pub fn file_config(&self) -> Result<Option<(PathBuf, FileConfig)>, ConfigError> {
        read_file_config(self.config.as_deref())
    }

    /// The state directory, from the command line, the file or the default.
    pub fn state_dir(&self) -> Result<PathBuf, ConfigError> {
        state_dir(self.config.as_deref(), self.state_dir.as_deref())
    }

    /// Merges the command line with the configuration file into the agent's configuration.
    /// `hostname` is the default name.
    pub fn resolve(&self, hostname: &str) -> Result<AgentConfig, ConfigError> {
        let (file_path, file) = self.file_config()?.unwrap_or_default();
        let tasks = tasks::resolve(self.allowed_tasks.as_deref(), &file, &file_path)?;
        let server_text = self
            .server
            .clone()
            .or(file.server)
            .ok_or(ConfigError::MissingServer)?;
        let server = parse_server(&server_text)?;

        let bootstrap_token = if let Some(token) = &self.bootstrap_token {
            Some(BootstrapToken::Value(token.clone()))
        } else if let Some(path) = &self.bootstrap_token_file {
            Some(BootstrapToken::File(path.clone()))
        } else {
            match (file.bootstrap_token, file.bootstrap_token_file) {
                (Some(_), Some(_)) => return Err(ConfigError::TwoTokens),
                (Some(token), None) => Some(BootstrapToken::Value(token)),
                (None, Some(path)) => Some(BootstrapToken::File(relative_to(&file_path, path))),
                (None, None) => None,
            }
        };
        if let Some(token) = &bootstrap_token {
            // A missing or empty token file is a configuration error worth failing on at start.
            token.read()?;
        }

        let ca = if let Some(hash) = &self.ca_cert_hash {
            Some(CaTrust::Pinned(parse_ca_cert_hash(hash)?))
        } else if let Some(path) = &self.ca_file {
            Some(CaTrust::File(path.clone()))
        } else {
            match (&file.ca_cert_hash, &file.ca_file) {
                (Some(_), Some(_)) => return Err(ConfigError::TwoCas),
                (Some(hash), None) => Some(CaTrust::Pinned(parse_ca_cert_hash(hash)?)),
                (None, Some(path)) => Some(CaTrust::File(relative_to(&file_path, path.clone()))),
                (None, None) => None,
            }
        };
        if server.scheme() == "https" && ca.is_none() {
            return Err(ConfigError::MissingCa {
                server: server_text,
            });
        }

        let mut labels = file.labels;
        for label in &self.labels {
            let (key, value) = parse_label(label)?;
            labels.insert(key, value);
        }
        for key in labels.keys() {
            if key.trim().is_empty() {
                return Err(ConfigError::InvalidLabel { label: key.clone() });
            }
        }
        // The controller refuses labels beyond these rules; better said at start than at every
        // enrolment.
        tc_proto::limits::check_labels(&labels, "labels").map_err(|error| {
            ConfigError::InvalidLabels {
                message: error.to_string(),
            }
        })?;

        let key_texts = if self.trusted_keys.is_empty() {
            file.trusted_keys
        } else {
            self.trusted_keys.clone()
        };
        let trusted_keys = key_texts
            .iter()
            .map(|text| TrustedKey::parse(text).map_err(ConfigError::InvalidTrustedKey))
            .collect::<Result<Vec<_>, _>>()?;

        let history_seconds = seconds_setting(
            self.history_interval_seconds,
            file.history_interval_seconds.as_deref(),
            tc_proto::history::DEFAULT_INTERVAL_SECONDS,
            tc_proto::history::MIN_INTERVAL_SECONDS..=tc_proto::history::MAX_INTERVAL_SECONDS,
            ConfigError::InvalidHistoryInterval,
        )?;
        let check_in_seconds = seconds_setting(
            self.self_update_check_in_seconds,
            file.self_update_check_in_seconds.as_deref(),
            crate::selfupdate::DEFAULT_CHECK_IN_SECONDS,
            crate::selfupdate::MIN_CHECK_IN_SECONDS..=crate::selfupdate::MAX_CHECK_IN_SECONDS,
            ConfigError::InvalidSelfUpdateCheckIn,
        )?;

        Ok(AgentConfig {
            server,
            bootstrap_token,
            state_dir: self
                .state_dir
                .clone()
                .or_else(|| file.state_dir.map(|dir| relative_to(&file_path, dir)))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            labels,
            name: self
                .name
                .clone()
                .or(file.name)
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| hostname.to_owned()),
            machine_id: self.machine_id.clone().or(file.machine_id),
            ca,
            trusted_keys,
            history_interval: Duration::from_secs(u64::from(history_seconds)),
            tasks,
            self_update_check_in: Duration::from_secs(u64::from(check_in_seconds)),
        })
    }
}

/// A setting in whole seconds: the flag, else the file's text, else `default`; `invalid` (given
/// the text) when it is not a number within `range`.
fn seconds_setting(
    flag: Option<u32>,
    file: Option<&str>,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
    invalid: fn(String) -> ConfigError,
) -> Result<u32, ConfigError> {
    let seconds = match (flag, file) {
        (Some(seconds), _) => seconds,
        (None, Some(text)) => text.trim().parse().map_err(|_| invalid(text.to_owned()))?,
        (None, None) => default,
    };
    if range.contains(&seconds) {
        Ok(seconds)
    } else {
        Err(invalid(seconds.to_string()))
    }
}

/// One fingerprint, or several separated by commas.
fn parse_ca_cert_hash(text: &str) -> Result<Vec<CaCertHash>, ConfigError> {
    text.split(',')
        .map(|hash| {
            hash.trim().parse().map_err(|error: tc_trust::TrustError| {
                ConfigError::InvalidCaCertHash(error.to_string())
            })
        })
        .collect()
}

/// Parses and normalises the controller URL.
pub fn parse_server(text: &str) -> Result<Url, ConfigError> {
    let invalid = |message: String| ConfigError::InvalidServer {
        url: text.to_owned(),
        message,
    };
    let mut url = Url::parse(text).map_err(|error| invalid(error.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(invalid("the scheme must be http or https".to_owned()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".to_owned()));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

fn parse_label(label: &str) -> Result<(String, String), ConfigError> {
    match label.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(ConfigError::InvalidLabel {
            label: label.to_owned(),
        }),
    }
}

fn read_token(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::EmptyToken {
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

/// `path` relative to the directory of `file` (unchanged when absolute or when there is no file).
fn relative_to(file: &Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        return path;
    }
    match file.parent() {
        Some(parent) if !file.as_os_str().is_empty() => parent.join(path),
        _ => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(arguments: &[&str]) -> Cli {
        <Cli as clap::Parser>::try_parse_from(
            std::iter::once("tc-agent").chain(arguments.iter().copied()),
        )
        .unwrap()
    }

    #[test]
    fn trusted_keys_come_from_the_file_or_the_command_line_and_must_be_minisign_keys() {
        const OLD: &str = "RWSUGzAijdwTU3Fjku6EVUMBcc39WchsTxBp8e2PHYTPlms2GtzNj2rN";
        const NEW: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
        let temp = tempfile::tempdir().unwrap();
        let config_path = temp.path().join("agent.yaml");
        let config = config_path.to_str().unwrap();
        std::fs::write(
            &config_path,
            format!("trustedKeys:\n  - {OLD}\n  - {NEW}\n"),
        )
        .unwrap();
        let base = ["--server", "http://x", "--config", config];
        let keys = |extra: &[&str]| {
            let arguments: Vec<&str> = base.iter().chain(extra).copied().collect();
            cli(&arguments).settings.resolve("h").map(|c| {
                c.trusted_keys
                    .iter()
                    .map(|k| k.as_str().to_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(keys(&[]).unwrap(), vec![OLD, NEW]);
        assert_eq!(keys(&["--trusted-key", NEW]).unwrap(), vec![NEW]);
        let error = keys(&["--trusted-key", "RWnotakey"]).unwrap_err();
        assert!(
            matches!(&error, ConfigError::InvalidTrustedKey(m) if m.contains("RWnotakey")),
            "{error}"
        );
        assert!(
            cli(&["--server", "http://x"])
                .settings
                .resolve("h")
                .unwrap()
                .trusted_keys
                .is_empty()
        );
        let error = parse_file_config("trustedKeys: RWabc\n").unwrap_err();
        assert!(
            error.contains("`trustedKeys` must be a list of strings"),
            "{error}"
        );
    }

    #[test]
    fn the_history_interval_comes_from_the_file_or_the_command_line_within_range() {
        let temp = tempfile::tempdir().unwrap();
        let config_path = temp.path().join("agent.yaml");
        let config = config_path.to_str().unwrap();
        std::fs::write(&config_path, "historyIntervalSeconds: 30\n").unwrap();
        let interval = |arguments: &[&str]| {
            cli(arguments)
                .settings
                .resolve("h")
                .map(|c| c.history_interval)
        };
        assert_eq!(
            interval(&["--server", "http://x"]).unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(
            interval(&["--server", "http://x", "--config", config]).unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            interval(&[
                "--server",
                "http://x",
                "--config",
                config,
                "--history-interval-seconds",
                "1"
            ])
            .unwrap(),
            Duration::from_secs(1)
        );
        let error =
            interval(&["--server", "http://x", "--history-interval-seconds", "0"]).unwrap_err();
        assert!(error.to_string().contains("1 to 3600"), "{error}");
        std::fs::write(&config_path, "historyIntervalSeconds: soon\n").unwrap();
        let error = interval(&["--server", "http://x", "--config", config]).unwrap_err();
        assert!(error.to_string().contains("`soon`"), "{error}");
    }

    #[test]
    fn the_self_update_check_in_deadline_comes_from_the_file_or_the_command_line_within_range() {
        let temp = tempfile::tempdir().unwrap();
        let config_path = temp.path().join("agent.yaml");
        let config = config_path.to_str().unwrap();
        std::fs::write(&config_path, "selfUpdateCheckInSeconds: 30\n").unwrap();
        let deadline = |arguments: &[&str]| {
            cli(arguments)
                .settings
                .resolve("h")
                .map(|c| c.self_update_check_in)
        };
        assert_eq!(
            deadline(&["--server", "http://x"]).unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(
            deadline(&["--server", "http://x", "--config", config]).unwrap(),
            Duration::from_secs(30)
        );
        let flag = ["--self-update-check-in-seconds", "5"];
        let with_flag = [&["--server", "http://x", "--config", config][..], &flag[..]].concat();
        assert_eq!(deadline(&with_flag).unwrap(), Duration::from_secs(5));
        let error = deadline(&[
            "--server",
            "http://x",
            "--self-update-check-in-seconds",
            "4",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("selfUpdateCheckInSeconds `4`") && error.contains("5 to 3600"),
            "{error}"
        );
        std::fs::write(&config_path, "selfUpdateCheckInSeconds: soon\n").unwrap();
        let error = deadline(&["--server", "http://x", "--config", config]).unwrap_err();
        assert!(error.to_string().contains("`soon`"), "{error}");
    }

    #[test]
    fn command_line_alone() {
        let parsed = cli(&[
            "--server",
            "http://127.0.0.1:7130",
            "--bootstrap-token",
            "boot",
            "--label",
            "site=berlin",
            "--label",
            "floor=2",
        ]);
        assert_eq!(parsed.command, None);
        let config = parsed.settings.resolve("kiosk-7").unwrap();
        assert_eq!(config.server.as_str(), "http://127.0.0.1:7130/");
        assert_eq!(
            config.bootstrap_token,
            Some(BootstrapToken::Value("boot".into()))
        );
        assert_eq!(config.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(config.name, "kiosk-7");
        assert_eq!(config.labels.len(), 2);
        assert_eq!(config.labels["site"], "berlin");
    }

    #[test]
    fn file_and_command_line_merge_with_the_command_line_winning() {
        let temp = tempfile::tempdir().unwrap();
        std::fs::write(temp.path().join("token"), "from-file\n").unwrap();
        let config_path = temp.path().join("agent.yaml");
        std::fs::write(
            &config_path,
            "server: https://controller.example/prefix\n\
             caFile: ca.pem\n\
             bootstrapTokenFile: token\n\
             stateDir: state\n\
             name: front-desk\n\
             labels:\n  site: berlin\n  floor: '1'\n",
        )
        .unwrap();
        let parsed = cli(&[
            "run",
            "--config",
            config_path.to_str().unwrap(),
            "--label",
            "floor=2",
        ]);
        let Command::Run(settings) = parsed.into_command() else {
            panic!("`run` parses as run");
        };
        let config = settings.resolve("ignored").unwrap();
        assert_eq!(config.server.as_str(), "https://controller.example/prefix/");
        assert_eq!(config.ca, Some(CaTrust::File(temp.path().join("ca.pem"))));
        let token = config.bootstrap_token.unwrap();
        assert_eq!(token, BootstrapToken::File(temp.path().join("token")));
        assert_eq!(token.read().unwrap(), "from-file");
        assert_eq!(config.state_dir, temp.path().join("state"));
        assert_eq!(config.name, "front-desk");
        assert_eq!(config.labels["site"], "berlin");
        assert_eq!(config.labels["floor"], "2");
        assert_eq!(settings.state_dir().unwrap(), temp.path().join("state"));

        let status = cli(&["status", "--config", config_path.to_str().unwrap()]);
        let Command::Status(status) = status.into_command() else {
            panic!("`status` parses as status");
        };
        assert_eq!(status.state_dir().unwrap(), temp.path().join("state"));
        let status = cli(&[
            "status",
            "--config",
            config_path.to_str().unwrap(),
            "--state-dir",
            "/elsewhere",
        ]);
        let Command::Status(status) = status.into_command() else {
            panic!("`status` parses as status");
        };
        assert_eq!(status.state_dir().unwrap(), PathBuf::from("/elsewhere"));
    }

    #[test]
    fn the_controller_ca_comes_from_a_flag_or_the_file() {
        let hash = format!("sha256:{}", "0f".repeat(32));
        let pinned = cli(&["--server", "https://x", "--ca-cert-hash", &hash])
            .settings
            .resolve("h")
            .unwrap();
        assert_eq!(
            pinned.ca,
            Some(CaTrust::Pinned(vec![hash.parse().unwrap()]))
        );
        let temp = tempfile::tempdir().unwrap();
        let config_path = temp.path().join("agent.yaml");
        std::fs::write(&config_path, "server: https://x\ncaFile: ca.pem\n").unwrap();
        let from_file = cli(&["--config", config_path.to_str().unwrap()])
            .settings
            .resolve("h")
            .unwrap();
        assert_eq!(
            from_file.ca,
            Some(CaTrust::File(temp.path().join("ca.pem")))
        );
        std::fs::write(
            &config_path,
            format!("server: https://x\ncaFile: ca.pem\ncaCertHash: {hash}\n"),
        )
        .unwrap();
        let both = cli(&["--config", config_path.to_str().unwrap()])
            .settings
            .resolve("h")
            .unwrap_err();
        assert!(matches!(both, ConfigError::TwoCas), "{both}");
        // A plain-HTTP controller needs no CA.
        let plain = cli(&["--server", "http://x"])
            .settings
            .resolve("h")
            .unwrap();
        assert_eq!(plain.ca, None);
    }

    #[test]
    fn each_subcommand_takes_only_its_own_settings() {
        let parse = |arguments: &[&str]| {
            <Cli as clap::Parser>::try_parse_from(
                std::iter::once("tc-agent").chain(arguments.iter().copied()),
            )
        };
        let run_flags: [&[&str]; 8] = [
            &["--server", "http://x"],
            &["--ca-cert-hash", "sha256:00"],
            &["--ca-file", "ca.pem"],
            &["--bootstrap-token", "t"],
            &["--bootstrap-token-file", "f"],
            &["--label", "a=b"],
            &["--name", "n"],
            &["--machine-id", "m"],
        ];
        for flag in run_flags {
            let mut arguments = vec!["status"];
            arguments.extend_from_slice(flag);
            let error = parse(&arguments).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::UnknownArgument,
                "{arguments:?}: {error}"
            );
            let mut arguments = vec!["run"];
            arguments.extend_from_slice(flag);
            assert!(parse(&arguments).is_ok(), "{arguments:?}");
            assert!(parse(flag).is_ok(), "{flag:?}");
            // Settings of the default `run` do not go with a subcommand either.
            let mut arguments = flag.to_vec();
            arguments.push("status");
            assert!(parse(&arguments).is_err(), "{arguments:?}");
        }
        assert_eq!(
            parse(&["--server", "http://x", "--name", "n"])
                .unwrap()
                .into_command(),
            Command::Run(Settings {
                server: Some("http://x".into()),
                name: Some("n".into()),
                ..Settings::default()
            })
        );
    }

    #[test]
    fn file_errors_name_line_and_column() {
        let check = |text: &str, expected: &str| {
            let error = parse_file_config(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        };
        check(
            "server: http://x\nbootstrap_token: y\n",
            "line 2 column 1: unknown field `bootstrap_token`, expected one of server,",
        );
        check(
            "server: [a, b]\n",
            "line 1 column 9: `server` must be a string",
        );
        check(
            "labels: [a]\n",
            "line 1 column 9: `labels` must be a mapping",
        );
        check(
            "labels:\n  site: {x: 1}\n",
            "`labels.site` must be a string",
        );
        check("name: a\nname: b\n", "line 2 column 1: `name` is set twice");
        check("- server\n", "the configuration must be a mapping");
        check("name: a\n---\nname: b\n", "must be a single document");
        check("name: &n a\nmachineId: *n\n", "aliases are not supported");
        check("name: 'unterminated\n", "YAML syntax error");
    }

    #[test]
    fn file_values_nulls_and_empty_files() {
        assert_eq!(parse_file_config("").unwrap(), FileConfig::default());
        assert_eq!(
            parse_file_config("# only a comment\n").unwrap(),
            FileConfig::default()
        );
        assert_eq!(parse_file_config("~\n").unwrap(), FileConfig::default());
        let config = parse_file_config(
            "server: \"http://x\"\nname: ~\nlabels:\n  floor: 2\n  kiosk: true\n  empty:\n",
        )
        .unwrap();
        assert_eq!(config.server.as_deref(), Some("http://x"));
        assert_eq!(config.name, None);
        assert_eq!(config.labels["floor"], "2");
        assert_eq!(config.labels["kiosk"], "true");
        assert_eq!(config.labels["empty"], "");
    }

    #[test]
    fn bad_settings_are_refused_with_a_clear_message() {
        let missing = cli(&[]).settings.resolve("h").unwrap_err();
        assert!(missing.to_string().contains("--server"), "{missing}");
        let scheme = cli(&["--server", "ftp://x"])
            .settings
            .resolve("h")
            .unwrap_err();
        assert!(scheme.to_string().contains("http or https"), "{scheme}");
        let https = cli(&["--server", "https://x"])
            .settings
            .resolve("h")
            .unwrap_err();
        assert!(matches!(https, ConfigError::MissingCa { .. }), "{https}");
        assert!(https.to_string().contains("--ca-cert-hash"), "{https}");
        let hash = cli(&["--server", "https://x", "--ca-cert-hash", "sha256:12"])
            .settings
            .resolve("h")
            .unwrap_err();
        assert!(
            hash.to_string().contains("sha256:<64 hex digits>"),
            "{hash}"
        );
        let label = cli(&["--server", "http://x", "--label", "nokey"])
            .settings
            .resolve("h")
            .unwrap_err();
        assert!(label.to_string().contains("`nokey`"), "{label}");
        assert!(
            <Cli as clap::Parser>::try_parse_from([
                "tc-agent",
                "--bootstrap-token",
                "a",
                "--bootstrap-token-file",
                "b"
            ])
            .is_err()
        );
    }
}
