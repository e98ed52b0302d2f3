//! The settings of remote operations (`Task`s): which actions the agent accepts, the commands
//! that reboot and power off the machine, where the boot id is read, and where Wake-on-LAN
//! packets go.
//!
//! ```yaml
//! allowedTasks: [reboot, shutdown, wake, collectLogs]   # default: every action
//! rebootCommand: [systemctl, reboot]                    # the default
//! shutdownCommand: [systemctl, poweroff]                # the default
//! bootIdFile: /proc/sys/kernel/random/boot_id           # the default
//! wakeOnLan:
//!   port: 9               # the default
//!   address: 192.0.2.255  # instead of the broadcast address each order names
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::{ConfigError, FileConfig, relative_to};

/// Every action an agent can be allowed, as `allowedTasks` spells them.
pub const TASK_ACTIONS: [&str; 5] = ["reboot", "shutdown", "wake", "exec", "collectLogs"];

/// The default `rebootCommand`.
pub const DEFAULT_REBOOT_COMMAND: [&str; 2] = ["systemctl", "reboot"];

/// The default `shutdownCommand`.
pub const DEFAULT_SHUTDOWN_COMMAND: [&str; 2] = ["systemctl", "poweroff"];

/// The default `bootIdFile`: Linux's id of the current boot, new at every boot.
pub const DEFAULT_BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// The default Wake-on-LAN port (discard).
pub const DEFAULT_WAKE_ON_LAN_PORT: u16 = 9;

/// The keys `wakeOnLan` takes.
pub const WAKE_ON_LAN_FIELDS: [&str; 2] = ["address", "port"];

/// How the agent carries out remote operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskConfig {
    /// The actions it accepts (names from [`TASK_ACTIONS`]); an order for another is reported
    /// failed and never run.
    pub allowed: Vec<String>,
    /// Program and arguments that reboot the machine.
    pub reboot_command: Vec<String>,
    /// Program and arguments that power the machine off.
    pub shutdown_command: Vec<String>,
    /// The file holding the id of the current boot: it tells whether a reboot order succeeded,
    /// and when a change staged until the next boot (`onReboot`) may be activated.
    pub boot_id_file: PathBuf,
    /// Where Wake-on-LAN packets go.
    pub wake_on_lan: WakeOnLan,
}

/// Where Wake-on-LAN magic packets are sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakeOnLan {
    /// The UDP port.
    pub port: u16,
    /// Sent here instead of to the order's broadcast address, when set.
    pub address: Option<IpAddr>,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            allowed: TASK_ACTIONS.iter().map(|name| (*name).to_owned()).collect(),
            reboot_command: DEFAULT_REBOOT_COMMAND.map(str::to_owned).to_vec(),
            shutdown_command: DEFAULT_SHUTDOWN_COMMAND.map(str::to_owned).to_vec(),
            boot_id_file: PathBuf::from(DEFAULT_BOOT_ID_FILE),
            wake_on_lan: WakeOnLan {
                port: DEFAULT_WAKE_ON_LAN_PORT,
                address: None,
            },
        }
    }
}

impl TaskConfig {
    /// True when orders for `action` may run.
    pub fn allows(&self, action: &str) -> bool {
        self.allowed.iter().any(|allowed| allowed == action)
    }
}

/// Parses `--allowed-tasks`: names separated by commas; an empty text allows nothing.
pub fn parse_allowed_tasks(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The task settings from the command line's `--allowed-tasks` (which wins) and the file at
/// `file_path`; every value is checked.
pub(super) fn resolve(
    allowed_flag: Option<&str>,
    file: &FileConfig,
    file_path: &Path,
) -> Result<TaskConfig, ConfigError> {
    let mut config = TaskConfig::default();
    let allowed = match (allowed_flag, &file.allowed_tasks) {
        (Some(text), _) => Some(parse_allowed_tasks(text)),
        (None, Some(names)) => Some(names.clone()),
        (None, None) => None,
    };
    if let Some(allowed) = allowed {
        for name in &allowed {
            if !TASK_ACTIONS.contains(&name.as_str()) {
                return Err(ConfigError::InvalidTasks(format!(
                    "allowedTasks: `{name}` is not an action (expected some of {})",
                    TASK_ACTIONS.join(", ")
                )));
            }
        }
        config.allowed = allowed;
    }
    for (key, given, target) in [
        (
            "rebootCommand",
            &file.reboot_command,
            &mut config.reboot_command,
        ),
        (
            "shutdownCommand",
            &file.shutdown_command,
            &mut config.shutdown_command,
        ),
    ] {
        if let Some(command) = given {
            if command.first().is_none_or(|program| program.is_empty()) {
                return Err(ConfigError::InvalidTasks(format!(
                    "{key}: expected a program and its arguments, got an empty command"
                )));
            }
            target.clone_from(command);
        }
    }
    if let Some(path) = &file.boot_id_file {
        config.boot_id_file = relative_to(file_path, path.clone());
    }
    config.wake_on_lan = wake_on_lan(&file.wake_on_lan)?;
    Ok(config)
}

fn wake_on_lan(settings: &BTreeMap<String, String>) -> Result<WakeOnLan, ConfigError> {
    let mut wake = WakeOnLan {
        port: DEFAULT_WAKE_ON_LAN_PORT,
        address: None,
    };
    if let Some(port) = settings.get("port") {
        wake.port = port
            .trim()
            .parse()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| {
                ConfigError::InvalidTasks(format!(
                    "wakeOnLan.port: `{port}` is not a UDP port (1 to 65535)"
                ))
            })?;
    }
    if let Some(address) = settings.get("address").filter(|text| !text.is_empty()) {
        wake.address = Some(address.trim().parse().map_err(|_| {
            ConfigError::InvalidTasks(format!(
                "wakeOnLan.address: `{address}` is not an IP address"
            ))
        })?);
    }
    Ok(wake)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_file_config;

    fn resolve_text(text: &str, flag: Option<&str>) -> Result<TaskConfig, ConfigError> {
        let file = parse_file_config(text).map_err(|message| ConfigError::File {
            path: "agent.yaml".into(),
            message,
        })?;
        resolve(flag, &file, Path::new("/etc/tc-agent/agent.yaml"))
    }

    #[test]
    fn defaults_allow_every_action_and_use_systemctl() {
        let config = resolve_text("", None).unwrap();
        assert_eq!(config, TaskConfig::default());
        for action in TASK_ACTIONS {
            assert!(config.allows(action), "{action}");
        }
        assert_eq!(config.reboot_command, ["systemctl", "reboot"]);
        assert_eq!(config.shutdown_command, ["systemctl", "poweroff"]);
        assert_eq!(config.boot_id_file, PathBuf::from(DEFAULT_BOOT_ID_FILE));
        assert_eq!(config.wake_on_lan.port, 9);
        assert_eq!(config.wake_on_lan.address, None);
    }

    #[test]
    fn settings_come_from_the_file_and_the_flag_wins_for_allowed_tasks() {
        let text = "allowedTasks: [reboot, collectLogs]\n\
                    rebootCommand: [/sbin/reboot, -f]\n\
                    shutdownCommand: [/sbin/poweroff]\n\
                    bootIdFile: boot_id\n\
                    wakeOnLan:\n  port: 7\n  address: 127.0.0.1\n";
        let config = resolve_text(text, None).unwrap();
        assert_eq!(config.allowed, ["reboot", "collectLogs"]);
        assert!(!config.allows("exec"));
        assert_eq!(config.reboot_command, ["/sbin/reboot", "-f"]);
        assert_eq!(config.shutdown_command, ["/sbin/poweroff"]);
        assert_eq!(config.boot_id_file, PathBuf::from("/etc/tc-agent/boot_id"));
        assert_eq!(config.wake_on_lan.port, 7);
        assert_eq!(
            config.wake_on_lan.address,
            Some("127.0.0.1".parse().unwrap())
        );
        let config = resolve_text(text, Some("exec, wake")).unwrap();
        assert_eq!(config.allowed, ["exec", "wake"]);
        // An empty list allows nothing.
        assert!(
            resolve_text("allowedTasks: []\n", None)
                .unwrap()
                .allowed
                .is_empty()
        );
        assert!(resolve_text("", Some("")).unwrap().allowed.is_empty());
    }

    #[test]
    fn bad_values_are_refused_naming_the_setting_and_the_value() {
        let error =
            |text: &str, flag: Option<&str>| resolve_text(text, flag).unwrap_err().to_string();
        let bad = error("allowedTasks: [reboot, format]\n", None);
        assert!(
            bad.contains("allowedTasks: `format` is not an action"),
            "{bad}"
        );
        let bad = error("", Some("reboot,Exec"));
        assert!(bad.contains("`Exec`"), "{bad}");
        let bad = error("rebootCommand: []\n", None);
        assert!(bad.contains("rebootCommand: expected a program"), "{bad}");
        let bad = error("wakeOnLan:\n  port: 70000\n", None);
        assert!(bad.contains("wakeOnLan.port: `70000`"), "{bad}");
        let bad = error("wakeOnLan:\n  address: everywhere\n", None);
        assert!(bad.contains("wakeOnLan.address: `everywhere`"), "{bad}");
        let bad = error("wakeOnLan:\n  host: x\n", None);
        assert!(
            bad.contains("line 2 column 3: unknown field `wakeOnLan.host`"),
            "{bad}"
        );
        let bad = error("allowedTasks: exec\n", None);
        assert!(
            bad.contains("`allowedTasks` must be a list of strings"),
            "{bad}"
        );
    }
}
