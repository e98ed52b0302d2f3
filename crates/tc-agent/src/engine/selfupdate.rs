//! The install engine's part of the agent's self-update ([`crate::selfupdate`]): the binary a
//! `thinfleet-agent` release installs, and its check-in as the release's health check.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{Engine, StepError, io_failure};
use crate::fault::FaultPoint;
use crate::selfupdate::{BINARY, CheckIn, PACKAGE};
use crate::state::InstallStep;

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
