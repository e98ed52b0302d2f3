//! Recovery and clean-up: finishing or undoing what was in progress when the agent stopped, and
//! deleting what no record needs any more (staging leftovers, old versions, downloads).

use std::collections::BTreeSet;
use std::fs;

use super::files::{read_dir_names, remove_all};
use super::{Engine, EngineError, is_given_up, step_name};
use crate::state::{FailureCause, InstallStep, Operation, RemoveStep, StateError, check_dir};

impl Engine {
    /// Finishes or undoes whatever was in progress when the agent stopped.
    pub(super) fn recover(&mut self) -> Result<(), EngineError> {
        let interrupted: Vec<(String, Operation)> = self
            .journal
            .packages
            .iter()
            .filter_map(|(name, record)| Some((name.clone(), record.operation.clone()?)))
            .collect();
        for (name, operation) in interrupted {
            match operation {
                Operation::Install {
                    target,
                    step,
                    reason,
                    ..
                } => {
                    tracing::warn!(package = %name, version = %target.version, ?step, "recovering an interrupted install");
                    if step == InstallStep::RollBack {
                        // The attempt had failed; finish putting the previous version back.
                        self.finish_rollback(&name)?;
                    } else if step.ran_hooks() {
                        // A hook may have run and `current` may point to the new version: the
                        // attempt cannot be trusted, so it is rolled back and tried again.
                        let reason = reason.unwrap_or_else(|| {
                            format!("interrupted during {} (agent restarted)", step_name(step))
                        });
                        self.begin_rollback(&name, reason, FailureCause::Interrupted)?;
                        self.finish_rollback(&name)?;
                    } else {
                        // Nothing active changed: clear the partial work, keep the download, and
                        // let the next pass resume.
                        let record = self.record_mut(&name);
                        record.operation = None;
                        let active = record.active_version().map(str::to_owned);
                        if active.as_deref() != Some(target.version.as_str()) {
                            let version_dir = self.dir.version(&name, &target.version);
                            remove_all(&version_dir).map_err(StateError::io(&version_dir))?;
                            let record = self.record_mut(&name);
                            if record.previous.as_ref().map(|p| &p.version) == Some(&target.version)
                            {
                                record.previous = None;
                            }
                        }
                        let staging = self.dir.staging_for(&name);
                        remove_all(&staging).map_err(StateError::io(&staging))?;
                        self.save()?;
                    }
                }
                Operation::Remove { step } => {
                    tracing::warn!(package = %name, ?step, "recovering an interrupted removal");
                    match step {
                        RemoveStep::PreRemove => {
                            self.record_mut(&name).operation = None;
                            self.save()?;
                        }
                        RemoveStep::Delete => self.delete_package(&name)?,
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes what no record needs any more: staging leftovers, versions other than the active
    /// and the previous one, and downloads of packages that are installed or no longer desired.
    /// Errors are logged, never fatal.
    pub(super) fn sweep(&mut self) {
        let staging = self.dir.staging();
        for entry in read_dir_names(&staging) {
            let busy =
                self.journal.packages.get(&entry).is_some_and(|record| {
                    matches!(record.operation, Some(Operation::Install { .. }))
                });
            if !busy {
                let path = staging.join(&entry);
                if let Err(error) = remove_all(&path) {
                    tracing::warn!(path = %path.display(), %error, "cannot clean up");
                }
            }
        }
        let names: Vec<String> = self.journal.packages.keys().cloned().collect();
        for name in names {
            self.sweep_package(&name);
        }
        let needed: BTreeSet<String> = self
            .journal
            .desired
            .iter()
            .flat_map(|desired| desired.packages.iter())
            .filter(|package| {
                self.journal
                    .packages
                    .get(&package.name)
                    .is_none_or(|record| {
                        record.active_version() != Some(&package.version)
                            && !is_given_up(record, package)
                    })
            })
            .map(|package| package.sha256.clone())
            .collect();
        let downloads = self.dir.downloads();
        for entry in read_dir_names(&downloads) {
            let sha = entry
                .strip_suffix(".zip")
                .or_else(|| entry.strip_suffix(".part"))
                .unwrap_or("");
            if !needed.contains(sha) {
                let path = downloads.join(&entry);
                if let Err(error) = remove_all(&path) {
                    tracing::warn!(path = %path.display(), %error, "cannot clean up");
                }
            }
        }
    }

    /// Deletes the versions of `name` other than the active, the previous and the one being
    /// installed.
    pub(super) fn sweep_package(&self, name: &str) {
        let Some(record) = self.journal.packages.get(name) else {
            return;
        };
        let mut keep: BTreeSet<&str> = BTreeSet::from(["current"]);
        keep.extend(record.active.iter().map(|v| v.version.as_str()));
        keep.extend(record.previous.iter().map(|v| v.version.as_str()));
        if let Some(Operation::Install { target, .. }) = &record.operation {
            keep.insert(&target.version);
        }
        let package_dir = self.dir.package(name);
        if let Err(error) = check_dir(&package_dir) {
            if fs::symlink_metadata(&package_dir).is_ok() {
                tracing::error!(%error, "not cleaning up the package directory");
            }
            return;
        }
        for entry in read_dir_names(&package_dir) {
            if !keep.contains(entry.as_str()) {
                let path = package_dir.join(&entry);
                tracing::debug!(path = %path.display(), "removing old version");
                if let Err(error) = remove_all(&path) {
                    tracing::warn!(path = %path.display(), %error, "cannot clean up");
                }
            }
        }
    }
}
