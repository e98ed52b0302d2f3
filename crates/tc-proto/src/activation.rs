//! When an agent may activate the changes it is assigned (progressive delivery).
//!
//! A group may restrict when its members' updates and removals take effect: inside maintenance
//! windows, or at the client's next boot. The controller resolves the windows (cron, time zone,
//! duration) into absolute intervals for the coming days, so the agent needs no time-zone
//! database and activates on time even while the controller is unreachable. Outside those
//! times the agent downloads and verifies the new versions ahead ("staged") and reports so.
//!
//! Only changes to packages the client runs are held back (an update, a removal); a package the
//! client does not run yet is installed at once, since nothing on the client uses it yet.
//! Absent from controllers that predate progressive delivery: every change is activated at once.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Most windows a desired state carries; more are dropped (the latest).
pub const MAX_WINDOWS: usize = 64;

/// How far ahead the controller resolves windows, in days.
pub const WINDOW_HORIZON_DAYS: u64 = 14;

/// When the changes of a desired state may be activated. The default (nothing set) is "at once".
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Activation {
    /// Updates and removals wait for one of these intervals (sorted, not overlapping). With
    /// `windowed` set and no interval ahead, they wait until the controller sends new ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
    /// The client is restricted to `windows` (which may be empty for the moment).
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub windowed: bool,
    /// Updates and removals wait for the client's next boot (a boot id other than the one the
    /// agent saw when it staged them).
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub on_reboot: bool,
    /// An admin asked to activate now (`tcadm rollout activate-now`): overrides the windows and
    /// the reboot.
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub now: bool,
}

impl Activation {
    /// True when changes are activated at once (no restriction, or an override).
    pub fn is_immediate(&self) -> bool {
        self.now || (!self.windowed && !self.on_reboot)
    }

    /// Whether an update or removal may start at `now` (before the next boot: `booted` false).
    pub fn allows(&self, now: Timestamp, rebooted: bool) -> bool {
        if self.is_immediate() {
            return true;
        }
        if self.on_reboot {
            return rebooted;
        }
        self.open_window(now).is_some()
    }

    /// The window open at `now`, if any.
    pub fn open_window(&self, now: Timestamp) -> Option<&Window> {
        self.windows
            .iter()
            .find(|window| window.start <= now && now < window.end)
    }

    /// The start of the next window after `now` (None when one is open or none is known).
    pub fn next_start(&self, now: Timestamp) -> Option<Timestamp> {
        self.windows
            .iter()
            .map(|window| window.start)
            .filter(|start| *start > now)
            .min()
    }

    /// True when nothing is set (the field is left out on the wire).
    pub fn is_default(&self) -> bool {
        self == &Activation::default()
    }
}

/// One maintenance window, resolved: from `start` (inclusive) to `end` (exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// When it opens.
    pub start: Timestamp,
    /// When it closes.
    pub end: Timestamp,
}

/// What an agent holds back, reported with a package (`PackageReport::staged`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum StagedWait {
    /// Downloaded and verified; waits for a maintenance window.
    Window,
    /// Downloaded and verified; waits for the next boot.
    Reboot,
    /// Unknown to this version (sent by a newer agent).
    #[serde(other)]
    Other,
}

/// A change the agent has staged: the version is downloaded and verified (for a removal: nothing
/// to download) and waits for its activation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Staged {
    /// What it waits for.
    pub waiting_for: StagedWait,
    /// When it will be activated, if the agent knows (the next window's start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activates_at: Option<Timestamp>,
    /// When it was staged.
    pub since: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    #[test]
    fn windows_bound_activation_and_the_override_lifts_them() {
        let mut activation = Activation {
            windows: vec![
                Window {
                    start: at(1_000),
                    end: at(2_000),
                },
                Window {
                    start: at(5_000),
                    end: at(6_000),
                },
            ],
            windowed: true,
            ..Default::default()
        };
        assert!(!activation.allows(at(999), false));
        assert!(activation.allows(at(1_000), false));
        assert!(activation.allows(at(1_999), false));
        assert!(!activation.allows(at(2_000), false));
        assert_eq!(activation.next_start(at(2_000)), Some(at(5_000)));
        assert_eq!(activation.next_start(at(6_000)), None);
        assert!(!activation.allows(at(7_000), false));
        activation.now = true;
        assert!(activation.allows(at(7_000), false));
    }

    #[test]
    fn on_reboot_waits_for_a_new_boot_and_the_default_is_at_once() {
        let activation = Activation {
            on_reboot: true,
            ..Default::default()
        };
        assert!(!activation.allows(at(1), false));
        assert!(activation.allows(at(1), true));
        assert!(Activation::default().allows(at(1), false));
        let windowed_without_windows = Activation {
            windowed: true,
            ..Default::default()
        };
        assert!(!windowed_without_windows.allows(at(1), true));
    }

    #[test]
    fn unknown_fields_and_waits_from_newer_versions_are_read() {
        let staged: Staged =
            serde_json::from_str(r#"{"waitingFor":"Moon","since":"2026-01-01T00:00:00Z","x":1}"#)
                .unwrap();
        assert_eq!(staged.waiting_for, StagedWait::Other);
        let activation: Activation =
            serde_json::from_str(r#"{"windowed":true,"future":[1]}"#).unwrap();
        assert!(activation.windowed && activation.windows.is_empty());
    }
}
