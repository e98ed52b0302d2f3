//! `tcadm config get-contexts|current-context|use-context|set-context`, and the connection of
//! every other command resolved from the command line, the environment and the config file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cli::{Cli, ConfigCommand, OnCommandLine};
use crate::config::{ConfigFile, ContextEntry, Environment, Given, Resolved, resolve};
use crate::error::{CliError, EXIT_OK};
use crate::format::Table;

/// What the config commands and the connection are resolved from: the global options, the
/// environment and the current directory.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `--config` / `TCADM_CONFIG`.
    pub config: Option<PathBuf>,
    /// `--context` / `TCADM_CONTEXT`.
    pub context: Option<String>,
    /// `--server` / `TCADM_SERVER`.
    pub server: Option<String>,
    /// `--token` / `TCADM_TOKEN`.
    pub token: Option<String>,
    /// `--token-file` / `TCADM_TOKEN_FILE`.
    pub token_file: Option<PathBuf>,
    /// `--certificate-authority` / `TCADM_CA_FILE`.
    pub certificate_authority: Option<PathBuf>,
    /// `--ca-cert-hash` / `TCADM_CA_CERT_HASH`.
    pub ca_cert_hash: Option<tc_trust::CaCertHash>,
    /// Which of them were typed on the command line.
    pub on_command_line: OnCommandLine,
    /// `$HOME` and `$XDG_CONFIG_HOME`.
    pub env: Environment,
    /// The current directory.
    pub current_dir: PathBuf,
}

impl Settings {
    /// The settings of a parsed command line in this process's environment.
    pub fn from_cli(cli: &Cli) -> Self {
        Settings {
            config: cli.config.clone(),
            context: cli.context.clone(),
            server: cli.server.clone(),
            token: cli.token.clone(),
            token_file: cli.token_file.clone(),
            certificate_authority: cli.certificate_authority.clone(),
            ca_cert_hash: cli.ca_cert_hash,
            on_command_line: cli.on_command_line,
            env: Environment::from_process(),
            current_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        }
    }

    /// The config file: `--config` (which must exist), else the default location (which may
    /// not). `None` when there is no default location (no `$HOME`).
    fn config_file(&self) -> Result<Option<ConfigFile>, CliError> {
        self.load(true)
    }

    /// As [`Self::config_file`]; `--config` may name a missing file unless `must_exist`.
    fn load(&self, must_exist: bool) -> Result<Option<ConfigFile>, CliError> {
        let (path, explicit) = match (&self.config, self.env.default_config_path()) {
            (Some(path), _) => (self.current_dir.join(path), must_exist),
            (None, Some(path)) => (path, false),
            (None, None) => return Ok(None),
        };
        Ok(Some(ConfigFile::load(&path, explicit)?))
    }

    /// The config file, or an error saying why there is none.
    fn required_config_file(&self) -> Result<ConfigFile, CliError> {
        self.required(true)
    }

    /// As [`Self::required_config_file`], a missing `--config` file being empty unless
    /// `must_exist` (`set-context` creates it).
    fn required(&self, must_exist: bool) -> Result<ConfigFile, CliError> {
        self.load(must_exist)?.ok_or_else(|| {
            CliError::Usage(
                "no config file: neither HOME nor XDG_CONFIG_HOME is set; pass --config FILE"
                    .into(),
            )
        })
    }

    /// The connection: each setting from its flag, its environment variable, the chosen
    /// context or the local defaults, in that order.
    pub fn connection(&self) -> Result<Resolved, CliError> {
        let config = match self.config_file()? {
            Some(config) => config,
            None => ConfigFile {
                path: PathBuf::from("(no config file)"),
                content: Default::default(),
            },
        };
        let given = Given {
            server: self.server.as_deref(),
            token: self.token.as_deref(),
            token_file: self.token_file.as_deref(),
            certificate_authority: self.certificate_authority.as_deref(),
            ca_cert_hash: self.ca_cert_hash,
            context: self.context.as_deref(),
        };
        Ok(resolve(&given, &config, &self.env, &self.current_dir)?)
    }
}

/// Runs a `config` subcommand.
pub fn run(
    settings: &Settings,
    command: &ConfigCommand,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    match command {
        ConfigCommand::GetContexts => {
            let config = settings.required_config_file()?;
            if config.content.contexts.is_empty() {
                eprintln!(
                    "No contexts in {} (create one with `tcadm config set-context`).",
                    config.path.display()
                );
            } else {
                write!(out, "{}", contexts_table(&config).render())?;
            }
        }
        ConfigCommand::CurrentContext => {
            let config = settings.required_config_file()?;
            match &config.content.current_context {
                Some(name) => writeln!(out, "{name}")?,
                None => {
                    return Err(CliError::Usage(format!(
                        "no current context in {}; choose one with `tcadm config use-context NAME`",
                        config.path.display()
                    )));
                }
            }
        }
        ConfigCommand::UseContext(args) => {
            let mut config = settings.required_config_file()?;
            config.context(&args.name)?;
            config.content.current_context = Some(args.name.clone());
            config.save()?;
            eprintln!("Switched to context `{}`.", args.name);
        }
        ConfigCommand::SetContext(args) => {
            let mut config = settings.required(false)?;
            let created = set_context(&mut config, &args.name, settings)?;
            config.save()?;
            let verb = if created { "Created" } else { "Updated" };
            eprintln!(
                "{verb} context `{}` in {}.",
                args.name,
                config.path.display()
            );
        }
    }
    Ok(EXIT_OK)
}

/// Creates or updates the context `name` with the settings typed on the command line (never
/// those of the environment); paths are stored absolute. True when it was created.
pub fn set_context(
    config: &mut ConfigFile,
    name: &str,
    settings: &Settings,
) -> Result<bool, CliError> {
    let typed = settings.on_command_line;
    if typed.token {
        return Err(CliError::Usage(
            "a context stores a token file, not a token: use --token-file FILE".into(),
        ));
    }
    let absolute = |path: &Path| settings.current_dir.join(path).display().to_string();
    let existing = config.content.contexts.iter().position(|c| c.name == name);
    let index = match existing {
        Some(index) => index,
        None => {
            config.content.contexts.push(ContextEntry {
                name: name.to_string(),
                ..ContextEntry::default()
            });
            config.content.contexts.len() - 1
        }
    };
    let created = existing.is_none();
    let entry = &mut config.content.contexts[index];
    if typed.server
        && let Some(server) = &settings.server
    {
        entry.server = Some(crate::api::normalize_server(server));
    }
    if typed.ca_cert_hash
        && let Some(hash) = &settings.ca_cert_hash
    {
        entry.ca_cert_hash = Some(hash.to_string());
        entry.certificate_authority = None;
    }
    if typed.certificate_authority
        && let Some(file) = &settings.certificate_authority
    {
        entry.certificate_authority = Some(absolute(file));
        entry.ca_cert_hash = None;
    }
    if typed.token_file
        && let Some(file) = &settings.token_file
    {
        entry.token_file = Some(absolute(file));
    }
    Ok(created)
}

/// The table of `config get-contexts`: `*` marks the current context.
pub fn contexts_table(config: &ConfigFile) -> Table {
    let mut table = Table::new(&["CURRENT", "NAME", "SERVER", "CA", "TOKEN FILE"]);
    let current = config.content.current_context.as_deref();
    for entry in &config.content.contexts {
        let ca = match (&entry.ca_cert_hash, &entry.certificate_authority) {
            (Some(hash), _) => hash.clone(),
            (None, Some(file)) => file.clone(),
            (None, None) => "-".into(),
        };
        let or_dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
        table.push(vec![
            if current == Some(entry.name.as_str()) {
                "*".into()
            } else {
                String::new()
            },
            entry.name.clone(),
            or_dash(&entry.server),
            ca,
            or_dash(&entry.token_file),
        ]);
    }
    table
}
