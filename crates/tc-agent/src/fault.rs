//! Fault injection for crash tests, and the other test hooks of the binary. These are test
//! hooks, not features: the binary reads their environment variables only when it is built with
//! the cargo feature `test-hooks`, which only the crate's own tests enable. Any other build
//! ignores the variables (and says so in its log).
//!
//! Setting the environment variable `TC_AGENT_FAULT=<point>` makes the agent call
//! `std::process::abort()` the first time it reaches that point of an install or removal, which
//! is as abrupt as `kill -9` or a power cut: no destructor runs, no journal entry is completed.
//! The crash tests run the real binary with each point, restart it without the variable and check
//! that it recovers to a complete version.
//!
//! | point               | where the agent stops                                             |
//! |---------------------|-------------------------------------------------------------------|
//! | `after-download`    | the zip is downloaded and verified, nothing extracted yet          |
//! | `after-extract`     | the package is extracted into `staging/`                           |
//! | `after-move`        | the version directory exists under `packages/<name>/`, inactive    |
//! | `after-activate`    | `current` points to the new version, `postInstall` has not run     |
//! | `during-hook`       | a hook process was started and is still running                   |
//! | `before-commit`     | every hook passed, the journal does not yet say `Installed`        |
//! | `after-unlink`      | a removal deleted `current`, the package directory is still there  |
//! | `before-restart`    | a `thinfleet-agent` release is committed, the agent not restarted  |
//!
//! For a `thinfleet-agent` release (the agent's self-update), `during-hook` is while the new
//! binary is checking in.
//!
//! In-process tests use [`FaultMode::Simulate`] instead: the engine then returns
//! [`crate::engine::EngineError::SimulatedCrash`] at the point without any clean-up, and the test
//! re-opens the engine on the same state directory.
//!
//! `TC_AGENT_RETRY_MILLIS=<n>` makes the delay before a failed download or removal is retried `n`
//! milliseconds instead of 30 s doubling up to an hour, so that a test of the binary sees within a
//! second whether the agent retries something or not.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::backoff::Backoff;

/// The environment variable read by [`Faults::from_env`].
pub const FAULT_ENV: &str = "TC_AGENT_FAULT";

/// The environment variable read by [`retry_from_env`].
pub const RETRY_ENV: &str = "TC_AGENT_RETRY_MILLIS";

/// True when this build reads the test hooks' variables (the feature `test-hooks`).
pub const TEST_HOOKS: bool = cfg!(feature = "test-hooks");

/// Logs that `variable` is set and ignored, in a build without test hooks.
fn ignored(variable: &str) {
    if std::env::var_os(variable).is_some_and(|value| !value.is_empty()) {
        tracing::warn!("{variable} is set but ignored: this build has no test hooks");
    }
}

/// Reads [`RETRY_ENV`]: the engine's retry backoff it sets, or `None` when it is unset (always
/// `None` in a build without test hooks).
pub fn retry_from_env() -> Result<Option<Backoff>, String> {
    if !TEST_HOOKS {
        ignored(RETRY_ENV);
        return Ok(None);
    }
    match std::env::var(RETRY_ENV) {
        Ok(text) if !text.is_empty() => {
            let millis: u64 = text.parse().map_err(|_| {
                format!("{RETRY_ENV}=`{text}`: expected a whole number of milliseconds")
            })?;
            let delay = Duration::from_millis(millis);
            Ok(Some(Backoff::new(delay, delay)))
        }
        _ => Ok(None),
    }
}

/// A place in the install or removal sequence where a crash can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// After the download was verified.
    AfterDownload,
    /// After extraction into staging.
    AfterExtract,
    /// After the extracted version was moved into `packages/<name>/`.
    AfterMove,
    /// After `current` was switched to the new version.
    AfterActivate,
    /// While a hook process is running.
    DuringHook,
    /// After the health check, before the install is committed to the journal.
    BeforeCommit,
    /// After a removal deleted `current`.
    AfterUnlink,
    /// After a `thinfleet-agent` release was committed, before the agent restarts into it.
    BeforeRestart,
}

impl FaultPoint {
    /// Every point, in the order an install and a removal reach them.
    pub const ALL: [FaultPoint; 8] = [
        FaultPoint::AfterDownload,
        FaultPoint::AfterExtract,
        FaultPoint::AfterMove,
        FaultPoint::AfterActivate,
        FaultPoint::DuringHook,
        FaultPoint::BeforeCommit,
        FaultPoint::AfterUnlink,
        FaultPoint::BeforeRestart,
    ];

    /// The name used in `TC_AGENT_FAULT`.
    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::AfterDownload => "after-download",
            FaultPoint::AfterExtract => "after-extract",
            FaultPoint::AfterMove => "after-move",
            FaultPoint::AfterActivate => "after-activate",
            FaultPoint::DuringHook => "during-hook",
            FaultPoint::BeforeCommit => "before-commit",
            FaultPoint::AfterUnlink => "after-unlink",
            FaultPoint::BeforeRestart => "before-restart",
        }
    }
}

impl fmt::Display for FaultPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultPoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        FaultPoint::ALL
            .into_iter()
            .find(|point| point.name() == text)
            .ok_or_else(|| {
                let names: Vec<_> = FaultPoint::ALL.iter().map(|point| point.name()).collect();
                format!(
                    "unknown fault point `{text}` (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// What happens when a fault point is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// Call `std::process::abort()`.
    Abort,
    /// Return [`crate::engine::EngineError::SimulatedCrash`] without clean-up.
    Simulate,
}

/// The fault to inject, if any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    armed: Option<(FaultPoint, FaultMode)>,
}

impl Faults {
    /// No fault.
    pub fn none() -> Self {
        Faults::default()
    }

    /// A fault at `point` with `mode`.
    pub fn at(point: FaultPoint, mode: FaultMode) -> Self {
        Faults {
            armed: Some((point, mode)),
        }
    }

    /// Reads [`FAULT_ENV`]; an abort at that point, or no fault when it is unset (always no
    /// fault in a build without test hooks).
    pub fn from_env() -> Result<Self, String> {
        if !TEST_HOOKS {
            ignored(FAULT_ENV);
            return Ok(Faults::none());
        }
        match std::env::var(FAULT_ENV) {
            Ok(text) if !text.is_empty() => Ok(Faults::at(text.parse()?, FaultMode::Abort)),
            _ => Ok(Faults::none()),
        }
    }

    /// True when `point` is armed in simulate mode (the caller must stop without clean-up).
    /// Aborts the process when it is armed in abort mode.
    pub fn hit(&self, point: FaultPoint) -> bool {
        match self.armed {
            Some((armed, mode)) if armed == point => {
                if mode == FaultMode::Abort {
                    tracing::error!(point = %point, "{FAULT_ENV} is set: aborting");
                    std::process::abort();
                }
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for point in FaultPoint::ALL {
            assert_eq!(point.name().parse::<FaultPoint>(), Ok(point));
        }
        let error = "sometime".parse::<FaultPoint>().unwrap_err();
        assert!(error.contains("after-download"), "{error}");
    }

    #[test]
    fn simulated_fault_only_hits_its_point() {
        let faults = Faults::at(FaultPoint::AfterExtract, FaultMode::Simulate);
        assert!(!faults.hit(FaultPoint::AfterDownload));
        assert!(faults.hit(FaultPoint::AfterExtract));
        assert!(!Faults::none().hit(FaultPoint::AfterExtract));
    }
}
