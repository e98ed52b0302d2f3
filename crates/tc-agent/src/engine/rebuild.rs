//! A journal rebuilt from the installed packages, when `state.json` was lost or corrupt: what it
//! knows (the active version of each package) and how it learns what it does not (their hooks).
//!
//! The adopted versions are recorded with their hooks unknown. Nothing is done with such a
//! package before they are known: when the desired state names the same version, its hooks are
//! taken from there ([`Engine::restore_hooks`]); before a removal they are asked from the
//! controller's release ([`Engine::learn_hooks`]), and while the controller cannot tell them the
//! package stays installed, reported `Failed` with the reason, and the removal is retried with
//! backoff.

use tc_proto::{DesiredPackage, PackageState, Timestamp};

use super::{Engine, EngineError, read_current, read_dir_names, record_failure};
use crate::download::Fetcher;
use crate::state::{
    ErrorRecord, FailedAction, FailureCause, Journal, PackageRecord, StateDir, VersionRecord,
};

/// Builds a journal from `packages/*/current` when there is none (or it was corrupt), so that
/// what is installed stays managed. The hooks of the adopted versions are not known: they are
/// learnt before anything is done with those packages (see [`Engine::restore_hooks`] and
/// [`Engine::learn_hooks`]).
pub(super) fn rebuild_journal(dir: &StateDir) -> Journal {
    let mut journal = Journal::default();
    let now = Timestamp::now();
    for name in read_dir_names(&dir.packages()) {
        if let Some(version) = read_current(dir, &name) {
            tracing::info!(package = %name, version = %version, "adopting installed package");
            let mut record = PackageRecord::new(&version, now);
            record.active = Some(VersionRecord {
                version: version.clone(),
                sha256: String::new(),
                hooks: Default::default(),
                hooks_unknown: true,
            });
            record.state = PackageState::Installed;
            journal.packages.insert(name, record);
        }
    }
    journal
}

impl Engine {
    /// Takes the hooks (and digest) of the active version of `name` from the desired `package`
    /// of the same version, when the journal does not know them (it was rebuilt from the disk).
    pub(super) fn restore_hooks(name: &str, record: &mut PackageRecord, package: &DesiredPackage) {
        let Some(active) = record.active.as_mut().filter(|active| active.hooks_unknown) else {
            return;
        };
        tracing::info!(package = %name, version = %active.version,
            "hooks of the installed version restored from the desired state");
        active.hooks = package.hooks.clone();
        active.sha256 = package.sha256.clone();
        active.hooks_unknown = false;
    }

    /// Learns the hooks of the active version of `name` from the controller's release, when the
    /// journal does not know them (it was rebuilt from the disk) and the package is to be
    /// removed: `preRemove` must run first. Returns the version with its hooks; `None` when they
    /// stay unknown: the package then stays installed, reported `Failed` with the reason, and
    /// the removal is retried with backoff.
    pub(super) async fn learn_hooks(
        &mut self,
        name: &str,
        active: &VersionRecord,
        fetcher: &Fetcher,
    ) -> Result<Option<VersionRecord>, EngineError> {
        let version = active.version.as_str();
        let problem = match fetcher.release(name, version).await {
            Ok(Some(release)) if release.name == name && release.version == version => {
                let record = self.record_mut(name);
                let known = record.active.as_mut().expect("the version being removed");
                known.hooks = release.hooks;
                if known.sha256.is_empty() {
                    known.sha256 = release.sha256;
                }
                known.hooks_unknown = false;
                let known = known.clone();
                self.save()?;
                tracing::info!(package = %name, %version,
                    "hooks of the installed version learnt from the controller's release");
                return Ok(Some(known));
            }
            Ok(_) => format!(
                "the controller has no release of {name} {version} to tell them (apply that \
                 PackageRelease again, and its preRemove runs before the removal)"
            ),
            Err(error) => format!("they could not be asked for: {error}"),
        };
        let message = format!(
            "not removed: its hooks are unknown since the journal was rebuilt, and preRemove must \
             run first; {problem}"
        );
        let now = Timestamp::now();
        let retry = self.options.retry;
        let record = self.record_mut(name);
        record_failure(
            record,
            FailedAction::Remove,
            active,
            0,
            FailureCause::Package,
            retry,
            now,
        );
        record.set_state(PackageState::Failed, version, Some(message.clone()), now);
        self.journal.last_error = Some(ErrorRecord {
            message: format!("{name} {version}: {message}"),
            at: now,
        });
        self.save()?;
        tracing::warn!(package = %name, %version, %message, "removal waits");
        Ok(None)
    }
}
