//! Progressive delivery on the agent: updates and removals held back until their activation.
//!
//! A desired state carries an [`Activation`]: maintenance windows (absolute intervals the
//! controller resolved), `onReboot`, or an admin's activate-now. When it does not allow a change
//! to a package the client runs (an update to another version, or its removal), the engine
//! *stages* the change instead of activating it:
//!
//! * an update is downloaded and verified ahead (size, sha256, the minisign signature when
//!   trusted keys are configured: the same checks as an install) into `downloads/<sha256>.zip`,
//!   which the install reuses at activation and the sweep deletes once nothing needs it; nothing
//!   is extracted and no hook runs;
//! * a removal needs nothing ahead: `preRemove` waits with it.
//!
//! The package record keeps a [`StagedChange`] (journaled): what is staged, what it waits for,
//! since when, and the boot id at that time. The package is reported `Installing` (or
//! `Removing`) with `staged`. A first install is never held back, nor is anything while the
//! client is being decommissioned.
//!
//! Before each package's change the engine asks again whether it may start (so a window that
//! closes during a pass lets the change in progress finish and starts no other), and
//! [`Engine::next_activation_at`] tells the engine loop when to wake up by itself: at the next
//! window's start, from the desired state kept in the journal, controller or not. Under
//! `onReboot` a change staged during one boot is activated when the agent runs in another one
//! (its boot id, read from `bootIdFile`, differs), which is at the agent's first pass after the
//! machine started again.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tc_proto::activation::{Activation, Staged, StagedWait};
use tc_proto::{DesiredPackage, PackageState, Timestamp};

use super::{Engine, EngineError, StepError, record_failure, version_record};
use crate::state::{ErrorRecord, FailedAction, FailureCause};

/// While a change waits for a window, the engine looks again at least this often: the wall clock
/// of a thin client may be stepped (NTP after a boot without a clock), and the timer runs on the
/// monotonic clock.
const ACTIVATION_RECHECK: Duration = Duration::from_secs(60);

/// While a window is open and a change is still staged, the next look is this far ahead (never
/// a busy loop, whatever keeps the change staged).
const OPEN_WINDOW_RECHECK: Duration = Duration::from_secs(1);

/// A change to a package that the engine holds back until its activation (kept in the journal
/// with the package's record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StagedChange {
    /// The version staged (downloaded and verified); `None` for the removal of the package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The sha256 of the staged zip (empty for a removal): another artifact is another change.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// What the change waits for.
    pub waiting_for: StagedWait,
    /// When it will be activated, if known (the next window's start), as last computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activates_at: Option<Timestamp>,
    /// When it was staged.
    pub since: Timestamp,
    /// The boot id when it was staged (`onReboot`: a later boot activates it). `None` when the
    /// boot id could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

impl StagedChange {
    /// True when this is the staging of `version` with `sha256` (`None`: the removal).
    pub fn is_for(&self, version: Option<&str>, sha256: &str) -> bool {
        self.version.as_deref() == version && (version.is_none() || self.sha256 == sha256)
    }

    /// What the controller is told.
    pub fn report(&self) -> Staged {
        Staged {
            waiting_for: self.waiting_for,
            activates_at: self.activates_at,
            since: self.since,
        }
    }
}

/// What a change the activation does not allow waits for.
fn wait_of(activation: &Activation) -> StagedWait {
    if activation.on_reboot {
        StagedWait::Reboot
    } else {
        StagedWait::Window
    }
}

impl Engine {
    /// What the change of `name` to `version` (with `sha256`; `None`: its removal) must wait for
    /// under `activation` at `now`, or `None` when it may start now. Only a package the client
    /// runs is held back, and the agent's own release (`thinfleet-agent`), which replaces the
    /// agent that runs.
    pub(super) fn held_back(
        &self,
        activation: &Activation,
        name: &str,
        version: Option<&str>,
        sha256: &str,
        now: Timestamp,
    ) -> Option<StagedWait> {
        if activation.is_immediate() {
            return None;
        }
        let record = self.journal.packages.get(name)?;
        // A first install is not held back, except the agent's own release: it replaces the
        // running agent, an update like any other.
        if record.active.is_none() && (name != crate::selfupdate::PACKAGE || version.is_none()) {
            return None;
        }
        let rebooted = record
            .staged
            .as_ref()
            .filter(|staged| staged.is_for(version, sha256))
            .and_then(|staged| staged.boot_id.as_deref())
            .zip(self.boot_id.as_deref())
            .is_some_and(|(then, current)| then != current);
        (!activation.allows(now, rebooted)).then(|| wait_of(activation))
    }

    /// Downloads and verifies `package` ahead, and records it staged (reported `Installing` with
    /// `staged`). Already staged with its zip in place, only what it waits for is brought up to
    /// date. A failed download or verification is recorded as a failed install would be.
    pub(super) async fn stage_install(
        &mut self,
        package: &DesiredPackage,
        activation: &Activation,
        fetcher: &crate::download::Fetcher,
    ) -> Result<(), EngineError> {
        let name = package.name.as_str();
        let zip = self.dir.downloads().join(format!("{}.zip", package.sha256));
        let staged = self.journal.packages[name]
            .staged
            .clone()
            .filter(|staged| staged.is_for(Some(&package.version), &package.sha256));
        if staged.is_none() || !zip.is_file() {
            tracing::info!(package = %name, version = %package.version, "downloading ahead: the update waits for its activation");
            match self.fetch_verified(package, fetcher).await {
                Ok(_) => {}
                Err(StepError::Fatal(error)) => return Err(error),
                Err(StepError::Download(reason)) => {
                    return self.staging_failed(package, reason, FailureCause::Download);
                }
                Err(StepError::Failed(reason)) => {
                    return self.staging_failed(package, reason, FailureCause::Package);
                }
            }
        }
        let now = Timestamp::now();
        let staged = self.staged_now(staged, Some(package), activation, now);
        let record = self.record_mut(name);
        if record.staged.as_ref() != Some(&staged) {
            tracing::info!(package = %name, version = %package.version, waiting_for = ?staged.waiting_for,
                activates_at = ?staged.activates_at, "update staged");
        }
        // The download that failed before went through; any other failure (an interrupted
        // install counting towards its limit) stays until the install itself decides.
        if record
            .failure
            .as_ref()
            .is_some_and(|failure| failure.cause == FailureCause::Download)
        {
            record.failure = None;
        }
        record.staged = Some(staged);
        record.set_state(PackageState::Installing, &package.version, None, now);
        self.save_if_changed()?;
        Ok(())
    }

    /// Holds back the removal of `name` (reported `Removing` with `staged`).
    pub(super) fn stage_removal(
        &mut self,
        name: &str,
        activation: &Activation,
    ) -> Result<(), EngineError> {
        let now = Timestamp::now();
        let staged = self.journal.packages[name]
            .staged
            .clone()
            .filter(|staged| staged.is_for(None, ""));
        let staged = self.staged_now(staged, None, activation, now);
        let record = self.record_mut(name);
        if record.staged.as_ref() != Some(&staged) {
            tracing::info!(package = %name, waiting_for = ?staged.waiting_for,
                activates_at = ?staged.activates_at, "removal staged");
        }
        record.staged = Some(staged);
        self.save_if_changed()?;
        Ok(())
    }

    /// The staged record of a change at `now`: `kept` (the same change staged before) with what
    /// it waits for brought up to date, or a new one. A change that now waits for something else
    /// counts as staged anew (a switch to `onReboot` waits for a boot after it).
    fn staged_now(
        &self,
        kept: Option<StagedChange>,
        package: Option<&DesiredPackage>,
        activation: &Activation,
        now: Timestamp,
    ) -> StagedChange {
        let waiting_for = wait_of(activation);
        let activates_at = match waiting_for {
            StagedWait::Window => activation.next_start(now),
            _ => None,
        };
        match kept {
            Some(mut staged) if staged.waiting_for == waiting_for => {
                staged.activates_at = activates_at;
                staged
            }
            _ => {
                if waiting_for == StagedWait::Reboot && self.boot_id.is_none() {
                    tracing::warn!(
                        "the boot id cannot be read: a change waiting for the next boot is activated only by an activate-now"
                    );
                }
                StagedChange {
                    version: package.map(|package| package.version.clone()),
                    sha256: package.map(|p| p.sha256.clone()).unwrap_or_default(),
                    waiting_for,
                    activates_at,
                    since: now,
                    boot_id: self.boot_id.clone(),
                }
            }
        }
    }

    /// Records a download or verification that failed while staging: the running version stays
    /// active and the package is reported `Failed`, retried (or not) as a failed install is.
    fn staging_failed(
        &mut self,
        package: &DesiredPackage,
        reason: String,
        cause: FailureCause,
    ) -> Result<(), EngineError> {
        let now = Timestamp::now();
        let retry = self.options.retry;
        let record = self.record_mut(&package.name);
        let message = match record.active_version() {
            Some(active) => format!("{reason}; {active} stays active"),
            None => reason,
        };
        record.staged = None;
        record_failure(
            record,
            FailedAction::Install,
            &version_record(package),
            package.attempt,
            cause,
            retry,
            now,
        );
        record.set_state(
            PackageState::Failed,
            &package.version,
            Some(message.clone()),
            now,
        );
        self.journal.last_error = Some(ErrorRecord {
            message: format!("{} {}: {message}", package.name, package.version),
            at: now,
        });
        self.save()?;
        tracing::warn!(package = %package.name, version = %package.version, %message, "downloading ahead failed");
        Ok(())
    }

    /// When the engine should look again at the changes it staged for a window (the engine loop
    /// sleeps until then, also while the controller is unreachable): the next window's start, at
    /// most [`ACTIVATION_RECHECK`] ahead; soon when a window is open already. `None` when no
    /// change waits for a window, or no window is known ahead.
    pub fn next_activation_at(&self, now: Timestamp) -> Option<Timestamp> {
        let activation = &self.journal.desired.as_ref()?.activation;
        let waits = self.journal.packages.values().any(|record| {
            record
                .staged
                .as_ref()
                .is_some_and(|staged| staged.waiting_for == StagedWait::Window)
        });
        if !waits {
            return None;
        }
        if activation.now || activation.open_window(now).is_some() {
            return Some(now.plus(OPEN_WINDOW_RECHECK));
        }
        let next = activation.next_start(now)?;
        Some(next.min(now.plus(ACTIVATION_RECHECK)))
    }

    /// Writes the journal when it differs from the one on disk.
    fn save_if_changed(&mut self) -> Result<(), EngineError> {
        if self.journal != self.persisted {
            self.save()?;
        }
        Ok(())
    }
}
