//! Progressive delivery of a group: steps, the failure threshold, maintenance windows, how
//! changes are activated, and what the group's status and history say about its rollouts.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::resources::IntOrPercent;
use crate::validate::Errors;

/// Longest pause step and maintenance window: 30 days.
pub const MAX_STEP_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Most steps of a rollout and most maintenance windows of a group.
pub const MAX_STEPS: usize = 32;

/// How many past rollouts a group keeps in its history.
pub const ROLLOUT_HISTORY_KEPT: usize = 20;

/// One step of a rollout: exactly one of `clients`, `percent` or `pause`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutStep {
    /// Give the new versions to this many members (in all, counting earlier steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<u32>,
    /// Give the new versions to this percentage of the members (in all, rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// Wait: for `duration` (`30m`, `1h`), or without one until `tcadm rollout resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseStep>,
}

/// A pause step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PauseStep {
    /// How long to wait (`90s`, `30m`, `1h`, `2d`); absent: until resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

/// What a step asks for, once validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// This many members in all.
    Clients(u32),
    /// This percentage of the members in all.
    Percent(u32),
    /// Wait this long, or (None) until resumed.
    Pause(Option<Duration>),
}

impl RolloutStep {
    /// The step, if exactly one field is set and valid.
    pub fn step(&self) -> Result<Step, String> {
        match (self.clients, self.percent, &self.pause) {
            (Some(clients), None, None) if clients >= 1 => Ok(Step::Clients(clients)),
            (Some(_), None, None) => Err("`clients` must be at least 1".into()),
            (None, Some(percent), None) if (1..=100).contains(&percent) => {
                Ok(Step::Percent(percent))
            }
            (None, Some(percent), None) => Err(format!("`percent` {percent} is outside 1..=100")),
            (None, None, Some(pause)) => match &pause.duration {
                None => Ok(Step::Pause(None)),
                Some(text) => parse_duration(text).map(|d| Step::Pause(Some(d))),
            },
            _ => Err("give exactly one of `clients`, `percent` or `pause`".into()),
        }
    }
}

/// Parses a duration such as `90s`, `30m`, `1h`, `2d` or `1h30m` (at least a second, at most
/// [`MAX_STEP_DURATION`]).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|error| format!("`{text}` is not a duration (`30m`, `1h`, `2d`): {error}"))?;
    if duration < Duration::from_secs(1) {
        return Err(format!("`{text}` is shorter than a second"));
    }
    if duration > MAX_STEP_DURATION {
        return Err(format!("`{text}` is longer than 30 days"));
    }
    Ok(duration)
}

/// A recurring time when the group's members may activate updates and removals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// When the window opens: a five-field cron expression (`0 22 * * 1-5`).
    pub schedule: String,
    /// How long it stays open (`6h`).
    pub duration: String,
    /// The IANA time zone of `schedule` (`Europe/Berlin`); UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// How a group's members activate updates and removals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ActivationPolicy {
    /// As soon as they are assigned (within `maintenanceWindows` if the group has some).
    #[default]
    Immediate,
    /// Downloaded and verified at once, activated at the client's next boot.
    OnReboot,
}

impl ActivationPolicy {
    /// True for the default (left out when writing).
    pub fn is_immediate(&self) -> bool {
        *self == ActivationPolicy::Immediate
    }
}

/// Checks the progressive-delivery fields of `spec.rollout` (cron syntax and time zones are
/// checked where the schedules are resolved, in the controller's apply path).
pub(crate) fn validate(spec: &crate::RolloutSpec, errors: &mut Errors) {
    if spec.steps.len() > MAX_STEPS {
        errors.push(
            "spec.rollout.steps",
            format!("{} steps; at most {MAX_STEPS}", spec.steps.len()),
        );
    }
    let mut last_share: Option<(u32, bool)> = None;
    for (index, step) in spec.steps.iter().enumerate() {
        let path = format!("spec.rollout.steps[{index}]");
        match step.step() {
            Err(message) => errors.push(path, message),
            Ok(Step::Clients(n)) => last_share = Some((n, false)),
            Ok(Step::Percent(p)) => {
                if let Some((previous, true)) = last_share
                    && p < previous
                {
                    errors.push(
                        format!("{path}.percent"),
                        format!("{p}% is less than the {previous}% of an earlier step"),
                    );
                }
                last_share = Some((p, true));
            }
            Ok(Step::Pause(_)) => {}
        }
    }
    if let Some(IntOrPercent::Percent(p)) = spec.failure_threshold
        && p > 100
    {
        errors.push(
            "spec.rollout.failureThreshold",
            format!("{p}% is more than 100%"),
        );
    }
    if spec.maintenance_windows.len() > MAX_STEPS {
        errors.push(
            "spec.rollout.maintenanceWindows",
            format!(
                "{} windows; at most {MAX_STEPS}",
                spec.maintenance_windows.len()
            ),
        );
    }
    for (index, window) in spec.maintenance_windows.iter().enumerate() {
        let path = format!("spec.rollout.maintenanceWindows[{index}]");
        if window.schedule.trim().is_empty() || window.schedule.len() > 256 {
            errors.push(
                format!("{path}.schedule"),
                "needs a cron expression (`0 22 * * 1-5`)",
            );
        }
        if let Err(message) = parse_duration(&window.duration) {
            errors.push(format!("{path}.duration"), message);
        }
        if let Some(zone) = &window.time_zone
            && (zone.trim().is_empty() || zone.len() > 64)
        {
            errors.push(format!("{path}.timeZone"), "needs an IANA time zone name");
        }
    }
    if spec.activation == ActivationPolicy::OnReboot && !spec.maintenance_windows.is_empty() {
        errors.push(
            "spec.rollout.activation",
            "`onReboot` cannot be combined with `maintenanceWindows`: choose one",
        );
    }
}

/// Where a group's current rollout stands (`status.rollout`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The number of this rollout in the group's history (1 for the first).
    pub revision: u64,
    /// The versions it rolls out (package -> version).
    pub versions: BTreeMap<String, String>,
    /// When it started.
    pub started_at: Timestamp,
    /// The current step (0-based) and how many there are; absent for a group without steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// How many steps the rollout has.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub steps: u32,
    /// When the current step began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Timestamp>,
    /// How many members the current step admits to the new versions.
    pub admitted: u32,
    /// How many members run the new versions, installed and healthy.
    pub updated: u32,
    /// How many members failed to install them.
    pub failed: u32,
    /// How many members have them downloaded and verified, waiting for a window or a reboot.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub staged: u32,
    /// When staged changes are next activated (the next window's start), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activates_at: Option<Timestamp>,
    /// An admin asked to activate now (`tcadm rollout activate-now`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activate_now: Option<crate::RolloutPause>,
    /// The versions an undo holds the group at, instead of what its packages resolve to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undone_to: Option<BTreeMap<String, String>>,
    /// A pause step waits until this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<Timestamp>,
    /// What the rollout waits for now, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// How a rollout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RolloutOutcome {
    /// Still going.
    Progressing,
    /// Every member runs the versions.
    Complete,
    /// Stopped at the failure threshold.
    Failed,
    /// Replaced by a newer rollout before it completed.
    Superseded,
    /// Undone by an admin.
    Undone,
}

/// One rollout of a group, as its history keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRecord {
    /// Its number (1 for the group's first).
    pub revision: u64,
    /// The versions it rolled out.
    pub versions: BTreeMap<String, String>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Who made the change that started it (the group's last applier), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// How it ended.
    pub outcome: RolloutOutcome,
    /// The group's generation it started at.
    pub generation: u64,
}

/// `GET .../clientgroups/NAME/rollouts`: the group's rollouts, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutHistory {
    /// The group.
    pub group: String,
    /// Its rollouts, newest first (at most [`ROLLOUT_HISTORY_KEPT`]).
    pub items: Vec<RolloutRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_exactly_one_thing() {
        let step = |json: &str| serde_json::from_str::<RolloutStep>(json).unwrap().step();
        assert_eq!(step(r#"{"clients":1}"#), Ok(Step::Clients(1)));
        assert_eq!(step(r#"{"percent":10}"#), Ok(Step::Percent(10)));
        assert_eq!(step(r#"{"pause":{}}"#), Ok(Step::Pause(None)));
        assert_eq!(
            step(r#"{"pause":{"duration":"1h"}}"#),
            Ok(Step::Pause(Some(Duration::from_secs(3600))))
        );
        assert!(step(r#"{"clients":1,"percent":5}"#).is_err());
        assert!(step(r#"{}"#).is_err());
        assert!(step(r#"{"percent":0}"#).is_err());
        assert!(step(r#"{"percent":101}"#).is_err());
        assert!(step(r#"{"clients":0}"#).is_err());
        assert!(step(r#"{"pause":{"duration":"soon"}}"#).is_err());
        assert!(step(r#"{"pause":{"duration":"40d"}}"#).is_err());
        assert!(serde_json::from_str::<RolloutStep>(r#"{"wait":1}"#).is_err());
    }
}
