//! The tcadm configuration file (kubeconfig-like): named contexts, each a server, how to trust it
//! and where its token is, and the context used when none is chosen. Also how a connection is
//! resolved from flags, environment, context and the local defaults, in that order.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use tc_api::decode::{Document, Limits, parse_documents};

use crate::api::{CaSource, Connection, TokenSource};

/// The config file's fields, in the order they are written.
const TOP_FIELDS: &[&str] = &["currentContext", "contexts"];
/// A context's fields.
const CONTEXT_FIELDS: &[&str] = &[
    "name",
    "server",
    "caCertHash",
    "certificateAuthority",
    "tokenFile",
];

/// A config file that cannot be read, decoded or written, or a context that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or writing failed.
    #[error("{}: {message}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The file is not a valid config file (`file:line:column: field: message`).
    #[error(transparent)]
    Decode(#[from] tc_api::DecodeError),
    /// A context is named that the file does not define.
    #[error("no context `{name}` in {}; {}", path.display(), known(contexts))]
    UnknownContext {
        /// The name asked for.
        name: String,
        /// The config file.
        path: PathBuf,
        /// The contexts it defines.
        contexts: Vec<String>,
    },
    /// A context cannot be used as it is.
    #[error("context `{name}` in {}: {message}", path.display())]
    Invalid {
        /// The context.
        name: String,
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn known(contexts: &[String]) -> String {
    if contexts.is_empty() {
        "it defines no contexts (create one with `tcadm config set-context`)".into()
    } else {
        format!("known contexts: {}", contexts.join(", "))
    }
}

/// One named context, its values as written in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextEntry {
    /// Its name.
    pub name: String,
    /// Controller URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// `sha256:<hex>` of the controller's CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert_hash: Option<String>,
    /// PEM file of the controller's CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<String>,
    /// File holding the bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

/// The content of a config file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigContent {
    /// The context used when none is chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// The contexts.
    pub contexts: Vec<ContextEntry>,
}

/// A config file: where it is and what it holds (empty when it does not exist).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFile {
    /// The file.
    pub path: PathBuf,
    /// Its content.
    pub content: ConfigContent,
}

/// The environment a config is looked up in (variables given, not read, so tests can set them).
#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<PathBuf>,
}

impl Environment {
    /// The process environment.
    pub fn from_process() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        Environment {
            home: var("HOME"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
        }
    }

    /// `$XDG_CONFIG_HOME/thinfleet/config.yaml`, else `$HOME/.config/thinfleet/config.yaml`.
    pub fn default_config_path(&self) -> Option<PathBuf> {
        let base = match (&self.xdg_config_home, &self.home) {
            (Some(xdg), _) if xdg.is_absolute() => xdg.clone(),
            (_, Some(home)) => home.join(".config"),
            _ => return None,
        };
        Some(base.join("thinfleet").join("config.yaml"))
    }
}

impl ConfigFile {
    /// Reads `path`; a missing file is an empty config unless `explicit` (named by `--config` or
    /// `TCADM_CONFIG`).
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(ConfigFile {
                    path: path.to_owned(),
                    content: ConfigContent::default(),
                });
            }
            Err(error) => {
                return Err(ConfigError::Io {
                    path: path.to_owned(),
                    message: format!("cannot read the config file: {error}"),
                });
            }
        };
        let content = parse(&path.display().to_string(), &text)?;
        Ok(ConfigFile {
            path: path.to_owned(),
            content,
        })
    }

    /// The names of the contexts.
    pub fn names(&self) -> Vec<String> {
        self.content
            .contexts
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    /// The context called `name`.
    pub fn context(&self, name: &str) -> Result<&ContextEntry, ConfigError> {
        self.content
            .contexts
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| ConfigError::UnknownContext {
                name: name.to_string(),
                path: self.path.clone(),
                contexts: self.names(),
            })
    }

    /// The directory relative paths of the file resolve against.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Writes the file atomically (a temporary file in the same directory, then a rename), with
    /// mode 0600; a missing directory is created with mode 0700.
    pub fn save(&self) -> Result<(), ConfigError> {
        let io = |message: String| ConfigError::Io {
            path: self.path.clone(),
            message,
        };
        let dir = self.dir().to_owned();
        if !dir.as_os_str().is_empty() && !dir.exists() {
            create_private_dir(&dir)
                .map_err(|e| io(format!("cannot create {}: {e}", dir.display())))?;
        }
        let text = serde_saphyr::to_string(&self.content)
            .map_err(|e| io(format!("cannot encode the config: {e}")))?;
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config.yaml".into());
        let temp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
        let written = (|| {
            let mut file = create_private_file(&temp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.path)
        })();
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(io(format!("cannot write the config file: {error}")));
        }
        Ok(())
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Decodes a config file strictly: unknown fields and values of the wrong type are errors at
/// their line.
pub fn parse(file: &str, text: &str) -> Result<ConfigContent, tc_api::DecodeError> {
    let documents = parse_documents(file, text, &Limits::default())?;
    let mut documents = documents.into_iter();
    let Some(document) = documents.next() else {
        return Ok(ConfigContent::default());
    };
    if let Some(extra) = documents.next() {
        return Err(extra.error("", "a config file holds one YAML document"));
    }
    let Value::Object(top) = &document.value else {
        return Err(document.error("", "the config file must be a mapping"));
    };
    check_fields(&document, "", top, TOP_FIELDS)?;
    let current_context = string(&document, "currentContext", top.get("currentContext"))?;
    let mut contexts: Vec<ContextEntry> = vec![];
    match top.get("contexts") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                let path = format!("contexts[{index}]");
                let Value::Object(map) = item else {
                    return Err(document.error(&path, "a context must be a mapping"));
                };
                check_fields(&document, &path, map, CONTEXT_FIELDS)?;
                let field =
                    |name: &str| string(&document, &format!("{path}.{name}"), map.get(name));
                let Some(name) = field("name")?.filter(|n| !n.is_empty()) else {
                    return Err(document.error(&path, "a context needs a name"));
                };
                if contexts.iter().any(|c| c.name == name) {
                    return Err(document.error(
                        &format!("{path}.name"),
                        format!("duplicate context `{name}`"),
                    ));
                }
                let entry = ContextEntry {
                    name,
                    server: field("server")?,
                    ca_cert_hash: field("caCertHash")?,
                    certificate_authority: field("certificateAuthority")?,
                    token_file: field("tokenFile")?,
                };
                if entry.ca_cert_hash.is_some() && entry.certificate_authority.is_some() {
                    return Err(
                        document.error(&path, "set caCertHash or certificateAuthority, not both")
                    );
                }
                if let Some(hash) = &entry.ca_cert_hash
                    && let Err(error) = hash.parse::<tc_trust::CaCertHash>()
                {
                    return Err(document.error(&format!("{path}.caCertHash"), error.to_string()));
                }
                contexts.push(entry);
            }
        }
        Some(_) => return Err(document.error("contexts", "must be a list of contexts")),
    }
    Ok(ConfigContent {
        current_context,
        contexts,
    })
}

fn check_fields(
    document: &Document,
    path: &str,
    map: &serde_json::Map<String, Value>,
    allowed: &[&str],
) -> Result<(), tc_api::DecodeError> {
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            let field = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            return Err(document.error(
                &field,
                format!(
                    "unknown field `{key}`; expected one of {}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn string(
    document: &Document,
    path: &str,
    value: Option<&Value>,
) -> Result<Option<String>, tc_api::DecodeError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(document.error(path, "must be a string")),
    }
}

/// Resolves a path from the config file: `~/` is `$HOME`, a relative path is relative to `base`
/// (the config file's directory, or the current directory for a flag).
pub fn expand_path(text: &str, base: &Path, home: Option<&Path>) -> PathBuf {
    if let (Some(rest), Some(home)) = (text.strip_prefix("~/"), home) {
        return home.join(rest);
    }
    if text == "~"
        && let Some(home) = home
    {
        return home.to_owned();
    }
    base.join(text)
}

/// The connection settings given by flags or environment (clap has already put a flag before
/// its environment variable).
#[derive(Clone, Debug, Default)]
pub struct Given<'a> {
    /// `--server` / `TCADM_SERVER`.
    pub server: Option<&'a str>,
    /// `--token` / `TCADM_TOKEN`.
    pub token: Option<&'a str>,
    /// `--token-file` / `TCADM_TOKEN_FILE`.
    pub token_file: Option<&'a Path>,
    /// `--certificate-authority` / `TCADM_CA_FILE`.
    pub certificate_authority: Option<&'a Path>,
    /// `--ca-cert-hash` / `TCADM_CA_CERT_HASH`.
    pub ca_cert_hash: Option<tc_trust::CaCertHash>,
    /// `--context` / `TCADM_CONTEXT`.
    pub context: Option<&'a str>,
}

/// A resolved connection, and a warning to print when its token file is readable by others.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The connection.
    pub connection: Connection,
    /// Set when the token file may be read by group or others.
    pub warning: Option<String>,
}

/// Resolves the connection, each setting from the first of: flag, environment, the chosen
/// context (`--context`, else the file's `currentContext`), the local defaults.
pub fn resolve(
    given: &Given<'_>,
    config: &ConfigFile,
    env: &Environment,
    current_dir: &Path,
) -> Result<Resolved, ConfigError> {
    let name = given.context.or(config.content.current_context.as_deref());
    let context = name.map(|name| config.context(name)).transpose()?;
    let invalid = |entry: &ContextEntry, message: String| ConfigError::Invalid {
        name: entry.name.clone(),
        path: config.path.clone(),
        message,
    };
    let home = env.home.as_deref();
    let given_token = given.token.map(str::trim).filter(|t| !t.is_empty());
    let given_server = given.server.map(str::trim).filter(|s| !s.is_empty());
    // The token file, from a flag (relative to the current directory) or the context.
    let token_file = match (given_token, given.token_file, context) {
        (Some(_), _, _) => None,
        (None, Some(file), _) => Some(current_dir.join(file)),
        (None, None, Some(entry)) => entry
            .token_file
            .as_deref()
            .map(|file| expand_path(file, config.dir(), home)),
        (None, None, None) => None,
    };
    let mut base = match context {
        // A context names a server: the local token file is not sent to it, and the local CA
        // file is used only when that server is local and the context names no CA.
        Some(entry) if given_server.is_none() => {
            let server = entry
                .server
                .as_deref()
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| {
                    let hint = format!(
                        "it has no server; set one with `tcadm config set-context {} --server URL`",
                        entry.name
                    );
                    invalid(entry, hint)
                })?;
            Connection::resolve(Some(server), given_token, current_dir)
        }
        _ => Connection::resolve(given_server, given_token, current_dir),
    };
    let mut warning = None;
    if let Some(path) = token_file {
        let token = read_token_file(&path).map_err(|message| ConfigError::Io {
            path: path.clone(),
            message,
        })?;
        warning = loose_permissions_warning(&path);
        base.token = Some(token);
        base.token_source = TokenSource::File(path);
    }
    // The CA: flags and environment, else the context's, else the local default kept above.
    if given.certificate_authority.is_some() || given.ca_cert_hash.is_some() {
        base = base.with_ca(given.certificate_authority, given.ca_cert_hash);
    } else if let Some(entry) = context {
        if let Some(hash) = &entry.ca_cert_hash {
            let hash = hash
                .parse()
                .map_err(|e: tc_trust::TrustError| invalid(entry, e.to_string()))?;
            base.ca = CaSource::Hash(hash);
        } else if let Some(file) = &entry.certificate_authority {
            base.ca = CaSource::File(expand_path(file, config.dir(), home));
        }
    }
    Ok(Resolved {
        connection: base,
        warning,
    })
}

/// The token in `path`, trimmed; an empty file is an error.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read the token file: {error}"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err("the token file is empty".into());
    }
    Ok(token.to_string())
}

/// A warning when `path` may be read by group or others (the token is still used).
#[cfg(unix)]
pub fn loose_permissions_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "token file {} is accessible by group or others (mode {:o}); restrict it with `chmod 600`",
            path.display(),
            mode & 0o777
        )
    })
}

/// A warning when `path` may be read by others (none off unix).
#[cfg(not(unix))]
pub fn loose_permissions_warning(_path: &Path) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn config(text: &str) -> ConfigFile {
        ConfigFile {
            path: PathBuf::from("/etc/tc/config.yaml"),
            content: parse("/etc/tc/config.yaml", text).unwrap(),
        }
    }

    fn env() -> Environment {
        Environment {
            home: Some(PathBuf::from("/home/ada")),
            xdg_config_home: None,
        }
    }

    #[test]
    fn a_config_file_decodes_into_its_contexts() {
        let text = format!(
            "currentContext: b\ncontexts:\n  - name: a\n    server: https://a:7130\n    \
             caCertHash: {HASH}\n    tokenFile: ~/a.token\n  - name: b\n    \
             certificateAuthority: ca.crt\n"
        );
        let config = config(&text);
        assert_eq!(config.content.current_context.as_deref(), Some("b"));
        assert_eq!(config.names(), ["a", "b"]);
        let a = config.context("a").unwrap();
        assert_eq!(a.server.as_deref(), Some("https://a:7130"));
        assert_eq!(a.ca_cert_hash.as_deref(), Some(HASH));
        assert_eq!(
            config
                .context("b")
                .unwrap()
                .certificate_authority
                .as_deref(),
            Some("ca.crt")
        );
        assert_eq!(parse("c", "").unwrap(), ConfigContent::default());
        // What is written is read back the same.
        let written = serde_saphyr::to_string(&config.content).unwrap();
        assert_eq!(parse("c", &written).unwrap(), config.content);
    }

    #[test]
    fn bad_config_files_are_errors_at_their_line() {
        let error = |text: &str| parse("c.yaml", text).unwrap_err().to_string();
        assert_eq!(
            error("currentContext: a\nkind: Config\n"),
            "c.yaml:2:1: kind: unknown field `kind`; expected one of currentContext, contexts"
        );
        assert!(
            error("contexts:\n  - name: a\n    server: 7\n")
                .starts_with("c.yaml:3:5: contexts[0].server: must be a string"),
        );
        assert!(error("contexts:\n  - server: x\n").contains("a context needs a name"));
        assert!(error("contexts:\n  - name: a\n  - name: a\n").contains("duplicate context `a`"));
        assert!(
            error(&format!(
                "contexts:\n  - name: a\n    caCertHash: {HASH}\n    certificateAuthority: x\n"
            ))
            .contains("not both")
        );
        assert!(
            error("contexts:\n  - name: a\n    caCertHash: md5:1\n").starts_with("c.yaml:3:5:")
        );
        assert!(error("contexts: 3\n").contains("must be a list"));
        assert!(error("- a\n").contains("must be a mapping"));
    }

    #[test]
    fn paths_resolve_against_home_and_the_config_directory() {
        let home = Path::new("/home/ada");
        let base = Path::new("/etc/tc");
        assert_eq!(
            expand_path("~/t.token", base, Some(home)),
            Path::new("/home/ada/t.token")
        );
        assert_eq!(
            expand_path("t.token", base, Some(home)),
            Path::new("/etc/tc/t.token")
        );
        assert_eq!(expand_path("/abs/t", base, Some(home)), Path::new("/abs/t"));
        assert_eq!(
            env().default_config_path().unwrap(),
            Path::new("/home/ada/.config/thinfleet/config.yaml")
        );
        let xdg = Environment {
            xdg_config_home: Some(PathBuf::from("/xdg")),
            ..env()
        };
        assert_eq!(
            xdg.default_config_path().unwrap(),
            Path::new("/xdg/thinfleet/config.yaml")
        );
        assert_eq!(Environment::default().default_config_path(), None);
    }

    #[test]
    fn each_setting_comes_from_flag_then_context_then_local_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("a.token");
        std::fs::write(&token, "secret\n").unwrap();
        let text = format!(
            "currentContext: a\ncontexts:\n  - name: a\n    server: ctl.example:7130\n    \
             caCertHash: {HASH}\n    tokenFile: a.token\n  - name: bare\n"
        );
        let config = ConfigFile {
            path: dir.path().join("config.yaml"),
            content: parse("config.yaml", &text).unwrap(),
        };
        let cwd = Path::new("/nowhere");
        // The current context.
        let resolved = resolve(&Given::default(), &config, &env(), cwd).unwrap();
        let connection = resolved.connection;
        assert_eq!(connection.server, "https://ctl.example:7130");
        assert_eq!(connection.token.as_deref(), Some("secret"));
        assert_eq!(connection.token_source, TokenSource::File(token.clone()));
        assert_eq!(connection.ca, CaSource::Hash(HASH.parse().unwrap()));
        // Flags (or their variables) win, setting by setting.
        let given = Given {
            server: Some("https://other:1"),
            token: Some("typed"),
            certificate_authority: Some(Path::new("/ca.pem")),
            ..Given::default()
        };
        let connection = resolve(&given, &config, &env(), cwd).unwrap().connection;
        assert_eq!(connection.server, "https://other:1");
        assert_eq!(connection.token.as_deref(), Some("typed"));
        assert_eq!(connection.token_source, TokenSource::Given);
        assert_eq!(connection.ca, CaSource::File(PathBuf::from("/ca.pem")));
        // No config: the local defaults of a bare `tcadm`.
        let empty = ConfigFile {
            path: dir.path().join("none.yaml"),
            content: ConfigContent::default(),
        };
        let connection = resolve(&Given::default(), &empty, &env(), cwd)
            .unwrap()
            .connection;
        assert_eq!(connection.server, crate::api::DEFAULT_SERVER);
        assert_eq!(
            connection.token_source,
            TokenSource::Missing(cwd.join(crate::api::DEFAULT_TOKEN_FILE))
        );
        // A chosen context that does not exist, or has no server.
        let unknown = Given {
            context: Some("b"),
            ..Given::default()
        };
        let error = resolve(&unknown, &config, &env(), cwd).unwrap_err();
        assert!(
            error.to_string().contains("known contexts: a, bare"),
            "{error}"
        );
        let bare = Given {
            context: Some("bare"),
            ..Given::default()
        };
        let error = resolve(&bare, &config, &env(), cwd).unwrap_err();
        assert!(error.to_string().contains("has no server"), "{error}");
        // With a server typed, a context without one is fine.
        let bare = Given {
            context: Some("bare"),
            server: Some("https://x:1"),
            ..Given::default()
        };
        let connection = resolve(&bare, &config, &env(), cwd).unwrap().connection;
        assert_eq!(connection.token_source, TokenSource::None);
    }

    #[test]
    fn save_writes_a_private_file_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut config = ConfigFile::load(&dir.path().join("new/config.yaml"), false).unwrap();
        assert!(config.content.contexts.is_empty());
        config.content.current_context = Some("a".into());
        config.content.contexts.push(ContextEntry {
            name: "a".into(),
            server: Some("https://a:1".into()),
            ..ContextEntry::default()
        });
        config.save().unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&config.path), 0o600);
        assert_eq!(mode(&dir.path().join("new")), 0o700);
        assert_eq!(ConfigFile::load(&config.path, true).unwrap(), config);
        let entries: Vec<_> = std::fs::read_dir(dir.path().join("new")).unwrap().collect();
        assert_eq!(entries.len(), 1, "no temporary file is left");
        assert!(ConfigFile::load(&dir.path().join("absent.yaml"), true).is_err());
    }
}
