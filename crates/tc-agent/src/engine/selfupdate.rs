//! The install engine's part of the agent's self-update ([`crate::selfupdate`]): the binary a
//! `thinfleet-agent` release installs, and its check-in as the release's health check.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tc_proto::{PackageState, Timestamp};

use super::files::{remove_all, remove_file_if_exists};
use super::{Engine, EngineError, StepError, io_failure};
use crate::fault::FaultPoint;
use crate::selfupdate::{BINARY, CheckIn, MAX_LAUNCHES, PACKAGE};
use crate::state::{ErrorRecord, FailedAction, FailureCause, InstallStep, StateError};

impl Engine {
    /// Checks that the extracted version `version` of `thinfleet-agent` has its binary, a regular
    /// file at the top of the zip, and makes it executable (0755, whatever the zip said).
    pub(super) fn prepare_agent_binary(&self, version: &str) -> Result<PathBuf, StepError> {
        if self.options.self_update.is_none() {
            return Err(StepError::Failed(format!(
                "{PACKAGE} is the agent's own release, and this agent was not started to update \
                 itself"
            )));
        }
        let binary = self.dir.version(PACKAGE, version).join(BINARY);
        match fs::symlink_metadata(&binary) {
            Ok(metadata) if metadata.is_file() => {}
            Ok(_) => {
                return Err(StepError::Failed(format!(
                    "the release's `{BINARY}` is not a regular file"
                )));
            }
            Err(_) => {
                return Err(StepError::Failed(format!(
                    "the release has no `{BINARY}` at the top of its zip"
                )));
            }
        }
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755))
            .map_err(|error| io_failure(&binary, error))?;
        Ok(binary)
    }

    /// The health check of a `thinfleet-agent` release: its binary, started in check-in mode,
    /// must check in with the controller within the configured deadline.
    pub(super) async fn check_in_new_agent(
        &mut self,
        version: &str,
        binary: &Path,
    ) -> Result<(), StepError> {
        let Some(update) = self.options.self_update.clone() else {
            return Err(StepError::Failed(format!(
                "{PACKAGE} cannot be installed by an agent not started to update itself"
            )));
        };
        self.set_install_step(PACKAGE, InstallStep::HealthCheck)?;
        tracing::info!(version = %version, deadline = ?update.check_in, "starting the new agent to check in");
        let check_in = CheckIn::spawn(binary, &update).map_err(StepError::Failed)?;
        self.fault(FaultPoint::DuringHook)?;
        check_in
            .wait(update.check_in)
            .await
            .map_err(StepError::Failed)?;
        tracing::info!(version = %version, "the new agent checked in");
        Ok(())
    }

    /// True when this process runs a binary installed by `thinfleet-agent`.
    pub(super) fn running_self_updated(&self) -> bool {
        match (
            std::env::current_exe(),
            fs::canonicalize(self.dir.package(PACKAGE)),
        ) {
            (Ok(running), Ok(package)) => running.starts_with(package),
            _ => false,
        }
    }

    /// True when the agent must restart into another binary: a `thinfleet-agent` release was
    /// committed, or unassigned while its binary runs. The pass that set it stops there.
    pub fn restart_requested(&self) -> bool {
        self.restart
    }
}

impl Engine {
    /// Gives up the committed `thinfleet-agent` `version`, whose binary stopped before checking
    /// in at every launch: the previous version (or none) is active again, `version` is deleted,
    /// and the release is recorded as a failed install, which is not tried again.
    pub(super) fn give_up_agent(&mut self, version: &str) -> Result<(), EngineError> {
        let Some(record) = self.journal.packages.get(PACKAGE) else {
            return Ok(());
        };
        let Some(target) = record
            .active
            .clone()
            .filter(|active| active.version == version)
        else {
            return Ok(());
        };
        let attempt = self
            .journal
            .desired
            .as_ref()
            .and_then(|desired| desired.packages.iter().find(|p| p.name == PACKAGE))
            .filter(|package| package.version == version && package.sha256 == target.sha256)
            .map_or(0, |package| package.attempt);
        let previous = record
            .previous
            .clone()
            .filter(|previous| self.dir.version(PACKAGE, &previous.version).is_dir());
        match &previous {
            Some(previous) => self
                .switch_current(PACKAGE, &previous.version)
                .map_err(StateError::io(self.dir.current(PACKAGE)))?,
            None => remove_file_if_exists(&self.dir.current(PACKAGE))
                .map_err(StateError::io(self.dir.current(PACKAGE)))?,
        }
        let reason =
            format!("the new agent stopped before checking in at each of {MAX_LAUNCHES} starts");
        let message = match &previous {
            Some(previous) => format!("{reason}; rolled back to {}", previous.version),
            None => format!("{reason}; no version is active"),
        };
        let now = Timestamp::now();
        let retry = self.options.retry;
        let record = self.record_mut(PACKAGE);
        record.active = previous;
        record.previous = None;
        record.operation = None;
        super::record_failure(
            record,
            FailedAction::Install,
            &target,
            attempt,
            FailureCause::Package,
            retry,
            now,
        );
        record.set_state(PackageState::Failed, version, Some(message.clone()), now);
        self.journal.last_error = Some(ErrorRecord {
            message: format!("{PACKAGE} {version}: {message}"),
            at: now,
        });
        self.save()?;
        let version_dir = self.dir.version(PACKAGE, version);
        remove_all(&version_dir).map_err(StateError::io(&version_dir))?;
        tracing::warn!(%version, %message, "gave the agent's release up");
        // The previous release's binary is the agent to run.
        self.restart = self.journal.packages[PACKAGE].active.is_some();
        Ok(())
    }
}
