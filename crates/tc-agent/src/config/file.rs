//! The YAML configuration file, read event by event with `saphyr-parser` so that every error
//! names its line and column.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use saphyr_parser::{Event, Parser, ScalarStyle};

/// The configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileConfig {
    /// Controller URL.
    pub server: Option<String>,
    /// Bootstrap token.
    pub bootstrap_token: Option<String>,
    /// File holding the bootstrap token.
    pub bootstrap_token_file: Option<PathBuf>,
    /// Fingerprint of the controller's CA.
    pub ca_cert_hash: Option<String>,
    /// PEM file of the controller's CA.
    pub ca_file: Option<PathBuf>,
    /// State directory.
    pub state_dir: Option<PathBuf>,
    /// Labels reported at enrolment.
    pub labels: BTreeMap<String, String>,
    /// Client name.
    pub name: Option<String>,
    /// Machine identity.
    pub machine_id: Option<String>,
    /// Minisign public keys packages must be signed with.
    pub trusted_keys: Vec<String>,
    /// Seconds between two load-history samples.
    pub history_interval_seconds: Option<String>,
    /// Seconds a self-updated agent has to check in.
    pub self_update_check_in_seconds: Option<String>,
    /// Actions of remote operations the agent accepts (`None`: every one).
    pub allowed_tasks: Option<Vec<String>>,
    /// The command that reboots the machine.
    pub reboot_command: Option<Vec<String>>,
    /// The command that powers the machine off.
    pub shutdown_command: Option<Vec<String>>,
    /// The file holding the current boot's id.
    pub boot_id_file: Option<PathBuf>,
    /// `wakeOnLan`: `port` and `address`.
    pub wake_on_lan: BTreeMap<String, String>,
}

/// The settings a configuration file may hold, as written in YAML.
const FILE_FIELDS: &str = "server, caCertHash, caFile, bootstrapToken, bootstrapTokenFile, stateDir, labels, name, machineId, trustedKeys, historyIntervalSeconds, selfUpdateCheckInSeconds, allowedTasks, rebootCommand, shutdownCommand, bootIdFile, wakeOnLan";

/// Parses the YAML configuration file. Errors name the line and column.
pub fn parse_file_config(text: &str) -> Result<FileConfig, String> {
    let mut events = YamlEvents {
        parser: Parser::new_from_str(text),
    };
    let mut config = FileConfig::default();
    loop {
        match events.next()? {
            (Event::StreamStart, _) => {}
            (Event::StreamEnd, _) => return Ok(config),
            (Event::DocumentStart(_), _) => break,
            (_, position) => return Err(position.error("expected a YAML document")),
        }
    }
    match events.next()? {
        (Event::MappingStart(..), _) => {}
        (Event::Scalar(text, ScalarStyle::Plain, ..), _) if is_null(&text) => {
            return events.end(config);
        }
        (_, position) => return Err(position.error("the configuration must be a mapping")),
    }
    let mut seen = BTreeSet::new();
    loop {
        let (key, position) = match events.next()? {
            (Event::MappingEnd, _) => break,
            (Event::Scalar(key, ..), position) => (key.into_owned(), position),
            (_, position) => return Err(position.error("expected a setting name")),
        };
        if !seen.insert(key.clone()) {
            return Err(position.error(&format!("`{key}` is set twice")));
        }
        match key.as_str() {
            "server" => config.server = events.string(&key)?,
            "caCertHash" => config.ca_cert_hash = events.string(&key)?,
            "caFile" => config.ca_file = events.string(&key)?.map(PathBuf::from),
            "bootstrapToken" => config.bootstrap_token = events.string(&key)?,
            "bootstrapTokenFile" => {
                config.bootstrap_token_file = events.string(&key)?.map(PathBuf::from);
            }
            "stateDir" => config.state_dir = events.string(&key)?.map(PathBuf::from),
            "labels" => config.labels = events.string_map(&key, None)?,
            "name" => config.name = events.string(&key)?,
            "machineId" => config.machine_id = events.string(&key)?,
            "trustedKeys" => config.trusted_keys = events.strings(&key)?,
            "historyIntervalSeconds" => config.history_interval_seconds = events.string(&key)?,
            "selfUpdateCheckInSeconds" => {
                config.self_update_check_in_seconds = events.string(&key)?;
            }
            "allowedTasks" => config.allowed_tasks = events.optional_strings(&key)?,
            "rebootCommand" => config.reboot_command = events.optional_strings(&key)?,
            "shutdownCommand" => config.shutdown_command = events.optional_strings(&key)?,
            "bootIdFile" => config.boot_id_file = events.string(&key)?.map(PathBuf::from),
            "wakeOnLan" => {
                config.wake_on_lan =
                    events.string_map(&key, Some(&super::tasks::WAKE_ON_LAN_FIELDS))?;
            }
            other => {
                return Err(position.error(&format!(
                    "unknown field `{other}`, expected one of {FILE_FIELDS}"
                )));
            }
        }
    }
    events.end(config)
}

/// A place in the configuration file.
struct Position {
    line: usize,
    column: usize,
}

impl Position {
    fn error(&self, message: &str) -> String {
        format!("line {} column {}: {message}", self.line, self.column)
    }
}

/// The YAML events of a configuration file, with positions.
struct YamlEvents<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
}

impl<'a> YamlEvents<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Position), String> {
        match self.parser.next() {
            Some(Ok((event, span))) => {
                let position = Position {
                    line: span.start.line(),
                    column: span.start.col() + 1,
                };
                if let Event::Alias(_) = event {
                    return Err(position.error("aliases are not supported here"));
                }
                Ok((event, position))
            }
            Some(Err(error)) => {
                let marker = error.marker();
                Err(Position {
                    line: marker.line(),
                    column: marker.col() + 1,
                }
                .error(&format!("YAML syntax error: {}", error.info())))
            }
            None => Err("unexpected end of the file".to_owned()),
        }
    }

    /// A string value; `None` for a YAML null.
    fn string(&mut self, key: &str) -> Result<Option<String>, String> {
        match self.next()? {
            (Event::Scalar(text, ScalarStyle::Plain, ..), _) if is_null(&text) => Ok(None),
            (Event::Scalar(text, ..), _) => Ok(Some(text.into_owned())),
            (_, position) => Err(position.error(&format!("`{key}` must be a string"))),
        }
    }

    /// A sequence of strings; empty for a YAML null.
    fn strings(&mut self, key: &str) -> Result<Vec<String>, String> {
        Ok(self.optional_strings(key)?.unwrap_or_default())
    }

    /// A sequence of strings; `None` for a YAML null.
    fn optional_strings(&mut self, key: &str) -> Result<Option<Vec<String>>, String> {
        let mut values = Vec::new();
        match self.next()? {
            (Event::SequenceStart(..), _) => {}
            (Event::Scalar(text, ScalarStyle::Plain, ..), _) if is_null(&text) => {
                return Ok(None);
            }
            (_, position) => {
                return Err(position.error(&format!("`{key}` must be a list of strings")));
            }
        }
        loop {
            match self.next()? {
                (Event::SequenceEnd, _) => return Ok(Some(values)),
                (Event::Scalar(text, ..), _) => values.push(text.into_owned()),
                (_, position) => {
                    return Err(position.error(&format!("`{key}` must be a list of strings")));
                }
            }
        }
    }

    /// A mapping of strings (`labels`, `wakeOnLan`); empty for a YAML null. With `fields`, only
    /// those keys are accepted.
    fn string_map(
        &mut self,
        key: &str,
        fields: Option<&[&str]>,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut map = BTreeMap::new();
        match self.next()? {
            (Event::MappingStart(..), _) => {}
            (Event::Scalar(text, ScalarStyle::Plain, ..), _) if is_null(&text) => {
                return Ok(map);
            }
            (_, position) => {
                return Err(position.error(&format!("`{key}` must be a mapping of strings")));
            }
        }
        loop {
            let (name, position) = match self.next()? {
                (Event::MappingEnd, _) => return Ok(map),
                (Event::Scalar(name, ..), position) => (name.into_owned(), position),
                (_, position) => return Err(position.error(&format!("expected a name in `{key}`"))),
            };
            if let Some(fields) = fields
                && !fields.contains(&name.as_str())
            {
                return Err(position.error(&format!(
                    "unknown field `{key}.{name}`, expected one of {}",
                    fields.join(", ")
                )));
            }
            let value = self.string(&format!("{key}.{name}"))?.unwrap_or_default();
            if map.insert(name.clone(), value).is_some() {
                return Err(position.error(&format!("`{key}.{name}` is set twice")));
            }
        }
    }

    /// Checks that nothing but the end of the file follows.
    fn end(&mut self, config: FileConfig) -> Result<FileConfig, String> {
        loop {
            match self.next()? {
                (Event::DocumentEnd, _) => {}
                (Event::StreamEnd, _) => return Ok(config),
                (_, position) => {
                    return Err(position.error("the configuration must be a single document"));
                }
            }
        }
    }
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}
