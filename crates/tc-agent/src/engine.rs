//! The install engine: converges the packages under `packages/` to a desired state, one journaled
//! step at a time, and recovers from a crash at any step.
//!
//! An install goes through these steps, each recorded in the journal before it starts:
//!
//! 1. `download` — fetch and verify `downloads/<sha256>.zip` (resumable);
//! 2. `extract` — safe extraction into `staging/<name>`;
//! 3. `move` — rename the staging directory to `packages/<name>/<version>`;
//! 4. `pre-install` — `preInstall` runs in that directory, which is complete but not active;
//! 5. `activate` — a `current.tmp` symlink to the version is renamed over `current`;
//! 6. `post-install`, `health-check` — the hooks run in the active version;
//! 7. commit — the journal records the new version as active and the old one as previous.
//!
//! A failure at any step leads to `roll-back`: `current` points to the previous version again
//! (or is removed when there was none), the new version directory is deleted, and the package is
//! reported `Failed` with the reason. The journal records the failure with the release it was for
//! (version, sha256 and the desired package's `attempt`) and its [`FailureCause`], which decides
//! what happens next:
//!
//! * a failed **download** (network or HTTP error, a download cut short, a size or sha256
//!   mismatch) is retried with exponential backoff: nothing of the release ran;
//! * any other failure (extraction refused, `preInstall`, the move, the activation,
//!   `postInstall`, `healthCheck`) is a failure of the **release**: it is not installed again
//!   while the desired package has the same sha256, version and `attempt`, across restarts. The
//!   package stays reported `Failed` at that version with the message, and `activeVersion` says
//!   what really runs. Retrying it would run its hooks again (a kiosk's `postInstall` restarts the
//!   session) for the same result; another release, or a new `attempt` (the controller raises it
//!   when an admin retries), is installed at once.
//!
//! On start, [`Engine::open`] looks at the step each package was in: before activation nothing
//! active changed and the install simply resumes; from activation on, the install is rolled back
//! like a failure (the hooks of an interrupted attempt cannot be trusted to have completed) and
//! retried at once, up to [`IMMEDIATE_RETRIES_AFTER_CRASH`] times; one more interruption is a
//! failure of the release, so a hook that crashes the machine does not loop it. Since `current`
//! only ever changes by an atomic rename and only ever points to a complete directory, the active
//! version is always the old or the new one.
//!
//! A failure recorded by an agent that did not record causes ([`FailureCause::Unrecorded`]) may
//! have been a network error: that release is retried once when its backoff ends, and whatever
//! that attempt does is recorded with its cause.
//!
//! A removal runs `preRemove` (if it fails the package stays installed, is reported `Failed` and
//! the removal is retried with backoff), then removes `current` and the package directory. Only
//! packages recorded in the journal are ever touched.
//!
//! A desired state may restrict when updates and removals of packages the client runs take
//! effect (maintenance windows, the next boot): until then they are staged — downloaded and
//! verified ahead, reported with `staged` — and activated later through the same install and
//! removal paths, without the controller ([`staging`]).
//!
//! What the agent reports is the journal on disk. A journal that cannot be written (a full disk)
//! stops the pass as a crash at that point would: the journal in memory goes back to the one on
//! disk, and the next pass, after a backoff, recovers from it and writes it again.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tc_proto::activation::Activation;
use tc_proto::{DesiredPackage, DesiredState, Hook, PackageReport, PackageState, Timestamp};

use crate::backoff::Backoff;
use crate::download::{DownloadOptions, Fetcher};
use crate::extract::{ExtractLimits, extract};
use crate::fault::{FaultPoint, Faults};
use crate::hooks::{self, HookContext, HookKind};
use crate::signature::{TrustedKey, verify_zip};
use crate::state::{
    ErrorRecord, FailedAction, Failure, FailureCause, InstallStep, Journal, Operation,
    PackageRecord, RemoveStep, StateDir, StateError, VersionRecord, ensure_dir, sync_dir,
};

/// How many times an install interrupted by a crash after a hook started is retried at once;
/// one more interruption is a failure of the release, which is not retried.
pub const IMMEDIATE_RETRIES_AFTER_CRASH: u32 = 3;

mod files;
mod rebuild;
mod recovery;
mod selfupdate;
mod staging;
mod validate;

use files::{read_dir_names, remove_all, remove_file_if_exists};
use rebuild::rebuild_journal;
pub use staging::StagedChange;
use validate::is_safe_name;
pub use validate::validate;

/// The name of the temporary link renamed over `current`.
const CURRENT_TEMPORARY: &str = ".current.tmp";

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Limits applied when extracting.
    pub limits: ExtractLimits,
    /// How downloads are retried within one attempt.
    pub download: DownloadOptions,
    /// Delay before a failed download or removal is retried.
    pub retry: Backoff,
    /// Fault injection for crash tests.
    pub faults: Faults,
    /// Minisign public keys packages must be signed with; empty: signatures are not checked.
    pub trusted_keys: Vec<TrustedKey>,
    /// The file holding the id of the current boot: a change staged until the next boot
    /// (`onReboot`) is activated when it differs from the one read when the change was staged.
    pub boot_id_file: PathBuf,
    /// How the agent updates itself; `None`: `thinfleet-agent` releases fail.
    pub self_update: Option<crate::selfupdate::SelfUpdate>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            limits: ExtractLimits::default(),
            download: DownloadOptions::default(),
            retry: Backoff::new(
                std::time::Duration::from_secs(30),
                std::time::Duration::from_secs(3600),
            ),
            faults: Faults::none(),
            trusted_keys: Vec::new(),
            boot_id_file: PathBuf::from(crate::config::tasks::DEFAULT_BOOT_ID_FILE),
            self_update: None,
        }
    }
}

/// Errors that stop the engine (package failures are not errors: they are reported).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The state directory or the journal could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// A fault point was reached in simulate mode; the engine must be re-opened.
    #[error("simulated crash at {0}")]
    SimulatedCrash(FaultPoint),
}

/// Outcome of a step that did not complete.
enum StepError {
    /// The download failed; roll back, report, and retry with backoff.
    Download(String),
    /// The package failed; roll back, report, and do not install this release again.
    Failed(String),
    /// The engine cannot go on.
    Fatal(EngineError),
}

impl From<EngineError> for StepError {
    fn from(error: EngineError) -> Self {
        StepError::Fatal(error)
    }
}

impl From<StateError> for StepError {
    fn from(error: StateError) -> Self {
        StepError::Fatal(EngineError::State(error))
    }
}

/// What the agent reports: the package states and the desired revision they were produced for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The desired revision the reports belong to.
    pub observed_revision: u64,
    /// One report per managed package.
    pub packages: Vec<PackageReport>,
}

/// The install engine over one state directory.
#[derive(Debug)]
pub struct Engine {
    dir: StateDir,
    /// The journal being worked on: ahead of [`Engine::persisted`] only between a change and the
    /// save that follows it.
    journal: Journal,
    /// The journal as last written to disk. It is what the agent reports (a state it could lose
    /// is never reported), and what `journal` goes back to when a save fails.
    persisted: Journal,
    options: EngineOptions,
    /// The id of the boot the agent runs in (read once at start), `None` when unreadable.
    boot_id: Option<String>,
    /// A self-update was committed or unassigned: the agent restarts into another binary.
    restart: bool,
}

impl Engine {
    /// Opens the state directory, creating it if needed, and recovers from an interrupted run.
    pub fn open(dir: StateDir, options: EngineOptions) -> Result<Engine, EngineError> {
        dir.create()?;
        let (journal, rebuilt) = match Journal::load(&dir) {
            Ok(Some(journal)) => (journal, false),
            Ok(None) => (rebuild_journal(&dir), true),
            Err(StateError::Corrupt { path, source }) => {
                let aside = path.with_extension("json.corrupt");
                tracing::error!(path = %path.display(), error = %source, aside = %aside.display(),
                    "journal is corrupt; rebuilding it from the installed packages");
                fs::rename(&path, &aside).map_err(StateError::io(&path))?;
                (rebuild_journal(&dir), true)
            }
            Err(error) => return Err(error.into()),
        };
        let boot_id = crate::tasks::actions::boot_id(&options.boot_id_file)
            .inspect_err(|error| tracing::warn!(%error, "changes staged until the next boot cannot tell the boot"))
            .ok();
        let mut engine = Engine {
            boot_id,
            restart: false,
            dir,
            persisted: if rebuilt {
                Journal::default()
            } else {
                journal.clone()
            },
            journal,
            options,
        };
        if rebuilt {
            engine.save()?;
        }
        engine.recover()?;
        if let Some(version) = engine
            .options
            .self_update
            .as_ref()
            .and_then(|update| update.give_up.clone())
        {
            engine.give_up_agent(&version)?;
        }
        engine.sweep();
        Ok(engine)
    }

    /// The journal as it stands.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The state directory.
    pub fn dir(&self) -> &StateDir {
        &self.dir
    }

    /// The reports to send to the controller: those of the journal on disk, never of a change
    /// not written yet.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            observed_revision: self.persisted.observed_revision,
            packages: self.persisted.reports(),
        }
    }

    /// The earliest time after `now` at which a failed attempt becomes due again, if any package
    /// waits for one (a failed release that is not retried waits for nothing).
    pub fn next_retry_at(&self, now: Timestamp) -> Option<Timestamp> {
        self.journal
            .packages
            .values()
            .filter_map(|record| record.failure.as_ref())
            .filter_map(Failure::retry_after)
            .filter(|at| *at > now)
            .min()
    }

    /// Brings the installed packages to `desired`. Package failures are recorded and reported,
    /// not returned. `progress` is called with the reports whenever they may have changed; when
    /// it returns false the pass stops early (a newer desired state is waiting).
    pub async fn converge(
        &mut self,
        desired: &DesiredState,
        fetcher: &Fetcher,
        progress: &mut (dyn FnMut(&Snapshot) -> bool + Send),
    ) -> Result<(), EngineError> {
        // An earlier pass that stopped on an error (a full disk, say) may have left an operation
        // half done: finish or undo it first, as after a crash.
        self.recover()?;
        let now = Timestamp::now();
        self.journal.desired = Some(desired.clone());
        self.journal.observed_revision = desired.revision;

        let mut seen = BTreeSet::new();
        let mut installs = Vec::new();
        for package in &desired.packages {
            if !seen.insert(package.name.as_str()) {
                tracing::warn!(package = %package.name, "package listed twice in the desired state; using the first");
                continue;
            }
            if let Some(work) = self.plan_package(package, now) {
                installs.push(work);
            }
        }
        let removals: Vec<String> = self
            .journal
            .packages
            .iter()
            .filter(|(name, record)| {
                !seen.contains(name.as_str()) && !waiting(record, FailedAction::Remove, now)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &removals {
            let record = self.record_mut(name);
            let version = record
                .active_version()
                .unwrap_or(&record.version)
                .to_owned();
            record.set_state(PackageState::Removing, &version, None, now);
        }
        // Compared with what is on disk, not with the journal before this pass: after a save
        // failed, the next pass must write what that one could not.
        if self.journal != self.persisted {
            self.save()?;
        }
        if !progress(&self.snapshot()) {
            return Ok(());
        }

        // Leaving the fleet is not held back by windows: the client is going away.
        let activation = if desired.decommission {
            Activation::default()
        } else {
            desired.activation.clone()
        };
        // Whether a change may start is asked again before each one: a window that closes
        // during the pass lets the change in progress finish and starts no other.
        for package in installs {
            let (version, sha256) = (Some(package.version.as_str()), package.sha256.as_str());
            if self
                .held_back(
                    &activation,
                    &package.name,
                    version,
                    sha256,
                    Timestamp::now(),
                )
                .is_some()
            {
                self.stage_install(package, &activation, fetcher).await?;
            } else {
                self.install(package, fetcher).await?;
            }
            if !progress(&self.snapshot()) || self.restart {
                return Ok(());
            }
        }
        for name in removals {
            if self
                .held_back(&activation, &name, None, "", Timestamp::now())
                .is_some()
            {
                self.stage_removal(&name, &activation)?;
            } else {
                // Unassigned while its binary runs: back to the binary the agent was started as.
                let leaving = name == crate::selfupdate::PACKAGE && self.running_self_updated();
                self.remove(&name, fetcher).await?;
                self.restart |= leaving && !self.journal.packages.contains_key(&name);
            }
            if !progress(&self.snapshot()) || self.restart {
                return Ok(());
            }
        }
        self.sweep();
        Ok(())
    }

    /// Sets the state a desired package is reported with before the work starts; returns it when
    /// it needs installing now.
    fn plan_package<'a>(
        &mut self,
        package: &'a DesiredPackage,
        now: Timestamp,
    ) -> Option<&'a DesiredPackage> {
        if !is_safe_name(&package.name) {
            // The name becomes a directory name: without a record, nothing is ever done with it.
            let message = format!("invalid package name `{}` refused", package.name);
            tracing::error!(%message);
            self.journal.last_error = Some(ErrorRecord { message, at: now });
            return None;
        }
        let invalid = validate(package).err();
        let record = self
            .journal
            .packages
            .entry(package.name.clone())
            .or_insert_with(|| PackageRecord::new(&package.version, now));
        if let Some(reason) = invalid {
            let message = format!("refused by the agent: {reason}");
            record.staged = None;
            record.set_state(PackageState::Failed, &package.version, Some(message), now);
            return None;
        }
        if record.active_version() == Some(package.version.as_str()) {
            Self::restore_hooks(&package.name, record, package);
            record.failure = None;
            record.staged = None;
            record.set_state(PackageState::Installed, &package.version, None, now);
            return None;
        }
        let failed_before = record.failure.as_ref().filter(|failure| {
            failure.is_install_of(&package.version, &package.sha256, package.attempt)
        });
        match failed_before.map(Failure::retry_after) {
            // The release failed and is not tried again: it stays reported `Failed` with the
            // message of that failure until the desired package changes.
            Some(None) => return None,
            Some(Some(retry_at)) if now < retry_at => return None,
            Some(Some(_)) => {}
            None => record.failure = None,
        }
        record.set_state(PackageState::Installing, &package.version, None, now);
        Some(package)
    }

    /// Installs one package, rolling back on failure.
    async fn install(
        &mut self,
        package: &DesiredPackage,
        fetcher: &Fetcher,
    ) -> Result<(), EngineError> {
        let previous = self.journal.packages[&package.name]
            .active_version()
            .map(str::to_owned);
        tracing::info!(package = %package.name, version = %package.version,
            previous = previous.as_deref().unwrap_or("none"), "installing");
        // A staged update is being activated: it is no longer held back.
        self.record_mut(&package.name).staged = None;
        self.record_mut(&package.name).operation = Some(Operation::Install {
            target: version_record(package),
            step: InstallStep::Download,
            reason: None,
            cause: None,
            attempt: package.attempt,
        });
        self.save()?;
        let (reason, cause) = match self
            .install_steps(package, fetcher, previous.as_deref())
            .await
        {
            Ok(()) => return Ok(()),
            Err(StepError::Fatal(error)) => return Err(error),
            Err(StepError::Download(reason)) => (reason, FailureCause::Download),
            Err(StepError::Failed(reason)) => (reason, FailureCause::Package),
        };
        self.begin_rollback(&package.name, reason, cause)?;
        self.finish_rollback(&package.name)
    }

    async fn install_steps(
        &mut self,
        package: &DesiredPackage,
        fetcher: &Fetcher,
        previous: Option<&str>,
    ) -> Result<(), StepError> {
        let name = package.name.as_str();
        let version = package.version.as_str();
        let zip = self.fetch_verified(package, fetcher).await?;

        self.set_install_step(name, InstallStep::Extract)?;
        let staging = self.dir.staging_for(name);
        remove_all(&staging).map_err(|error| io_failure(&staging, error))?;
        let limits = self.options.limits.clone();
        let staging_for_task = staging.clone();
        let extracted = tokio::task::spawn_blocking(move || {
            extract(&zip, &staging_for_task, &limits).map_err(|error| error.to_string())
        })
        .await
        .map_err(|error| StepError::Failed(format!("extraction failed: {error}")))?
        .map_err(|error| StepError::Failed(format!("extraction refused: {error}")))?;
        tracing::debug!(package = %name, version = %version, entries = extracted.entries, bytes = extracted.bytes, "extracted");
        self.fault(FaultPoint::AfterExtract)?;

        self.set_install_step(name, InstallStep::Move)?;
        let package_dir = self.dir.package(name);
        let version_dir = self.dir.version(name, version);
        // Never a link: the version would be moved to, and later deleted from, where it points.
        ensure_dir(&package_dir).map_err(|error| StepError::Failed(error.to_string()))?;
        if version_dir.exists() {
            // A leftover of an earlier attempt, or the kept previous version being reinstalled.
            let record = self.record_mut(name);
            if record.previous.as_ref().map(|p| p.version.as_str()) == Some(version) {
                record.previous = None;
                self.save()?;
            }
            remove_all(&version_dir).map_err(|error| io_failure(&version_dir, error))?;
        }
        fs::rename(&staging, &version_dir).map_err(|error| io_failure(&version_dir, error))?;
        sync_dir(&package_dir).map_err(|error| io_failure(&package_dir, error))?;
        sync_dir(&self.dir.staging()).map_err(|error| io_failure(&staging, error))?;
        self.fault(FaultPoint::AfterMove)?;
        let agent_binary = if name == crate::selfupdate::PACKAGE {
            Some(self.prepare_agent_binary(version)?)
        } else {
            None
        };

        if let Some(hook) = &package.hooks.pre_install {
            self.set_install_step(name, InstallStep::PreInstall)?;
            self.run_hook(HookKind::PreInstall, hook, name, version, previous)
                .await?;
        }

        self.set_install_step(name, InstallStep::Activate)?;
        self.switch_current(name, version)
            .map_err(|error| io_failure(&self.dir.current(name), error))?;
        tracing::info!(package = %name, version = %version, "activated");
        self.fault(FaultPoint::AfterActivate)?;
        if let Some(binary) = &agent_binary {
            self.check_in_new_agent(version, binary).await?;
        }

        if let Some(hook) = &package.hooks.post_install {
            self.set_install_step(name, InstallStep::PostInstall)?;
            self.run_hook(HookKind::PostInstall, hook, name, version, previous)
                .await?;
        }
        if let Some(hook) = &package.hooks.health_check {
            self.set_install_step(name, InstallStep::HealthCheck)?;
            self.run_hook(HookKind::HealthCheck, hook, name, version, previous)
                .await?;
        }
        self.fault(FaultPoint::BeforeCommit)?;

        let now = Timestamp::now();
        let record = self.record_mut(name);
        record.operation = None;
        record.previous = record.active.take();
        record.active = Some(version_record(package));
        record.failure = None;
        record.set_state(PackageState::Installed, version, None, now);
        self.save()?;
        tracing::info!(package = %name, version = %version, "installed");
        self.sweep_package(name);
        let download = self.dir.downloads().join(format!("{}.zip", package.sha256));
        let _ = fs::remove_file(download);
        if agent_binary.is_some() {
            self.fault(FaultPoint::BeforeRestart)?;
            self.restart = true;
        }
        Ok(())
    }

    /// Downloads `package` into `downloads/<sha256>.zip` (or reuses it there) and verifies it:
    /// size and sha256, then the signature when trusted keys are configured. Nothing of the zip
    /// is used before.
    async fn fetch_verified(
        &self,
        package: &DesiredPackage,
        fetcher: &Fetcher,
    ) -> Result<PathBuf, StepError> {
        let zip = fetcher
            .fetch(package, &self.dir.downloads())
            .await
            .map_err(|error| StepError::Download(format!("download failed: {error}")))?;
        self.fault(FaultPoint::AfterDownload)?;
        if !self.options.trusted_keys.is_empty() {
            // After the sha256 (checked by the download), before anything of the zip is used.
            let keys = self.options.trusted_keys.clone();
            let signature = package.signature.clone();
            let zip_for_task = zip.clone();
            tokio::task::spawn_blocking(move || {
                verify_zip(&keys, signature.as_deref(), &zip_for_task)
            })
            .await
            .map_err(|error| StepError::Failed(format!("signature check failed: {error}")))?
            .map_err(|reason| StepError::Failed(format!("refused: {reason}")))?;
        }
        Ok(zip)
    }

    /// Runs a hook of version `version` of `name`; a failure becomes [`StepError::Failed`].
    async fn run_hook(
        &self,
        kind: HookKind,
        hook: &Hook,
        name: &str,
        version: &str,
        previous: Option<&str>,
    ) -> Result<String, StepError> {
        let directory = self.dir.version(name, version);
        let context = HookContext {
            package: name,
            version,
            directory: &directory,
            previous_version: previous,
        };
        tracing::info!(package = %name, version = %version, hook = %kind, "running hook");
        let running = hooks::spawn(kind, hook, &context)
            .map_err(|error| StepError::Failed(error.to_string()))?;
        self.fault(FaultPoint::DuringHook)?;
        let output = running
            .wait()
            .await
            .map_err(|error| StepError::Failed(error.to_string()))?;
        tracing::debug!(package = %name, hook = %kind, %output, "hook succeeded");
        Ok(output)
    }

    /// Records in the journal that the install of `name` is being rolled back, why, and what
    /// kind of failure it was (which survives a crash during the rollback).
    fn begin_rollback(
        &mut self,
        name: &str,
        reason: String,
        failure: FailureCause,
    ) -> Result<(), StateError> {
        if let Some(Operation::Install {
            step,
            reason: current_reason,
            cause,
            ..
        }) = &mut self.record_mut(name).operation
        {
            *step = InstallStep::RollBack;
            *current_reason = Some(reason);
            *cause = Some(failure);
        }
        self.save()
    }

    /// Puts the previous version back after a failed or interrupted install and records the
    /// failure with the cause [`Engine::begin_rollback`] recorded.
    fn finish_rollback(&mut self, name: &str) -> Result<(), EngineError> {
        let record = self.record_mut(name);
        let Some(Operation::Install {
            target,
            reason,
            cause,
            attempt,
            ..
        }) = record.operation.clone()
        else {
            return Ok(());
        };
        let cause = cause.unwrap_or(FailureCause::Unrecorded);
        let active = record.active.clone();
        let reason = reason.unwrap_or_else(|| "interrupted".to_owned());
        let restored = match &active {
            Some(active) if self.dir.version(name, &active.version).is_dir() => {
                if self.read_current(name).as_deref() != Some(active.version.as_str()) {
                    self.switch_current(name, &active.version)
                        .map_err(StateError::io(self.dir.current(name)))?;
                }
                Some(active.version.clone())
            }
            _ => {
                remove_file_if_exists(&self.dir.current(name))
                    .map_err(StateError::io(self.dir.current(name)))?;
                None
            }
        };
        if restored.as_deref() != Some(target.version.as_str()) {
            let version_dir = self.dir.version(name, &target.version);
            remove_all(&version_dir).map_err(StateError::io(&version_dir))?;
        }
        let staging = self.dir.staging_for(name);
        remove_all(&staging).map_err(StateError::io(&staging))?;

        let message = match &restored {
            Some(version) => format!("{reason}; rolled back to {version}"),
            None => format!("{reason}; no version is active"),
        };
        let now = Timestamp::now();
        let retry = self.options.retry;
        let record = self.record_mut(name);
        if restored.is_none() {
            record.active = None;
        }
        if record.previous.as_ref().map(|p| &p.version) == Some(&target.version) {
            record.previous = None;
        }
        record.operation = None;
        record_failure(
            record,
            FailedAction::Install,
            &target,
            attempt,
            cause,
            retry,
            now,
        );
        // An attempt cut short by a crash and retried at once is still being installed, not a
        // failure of the package.
        let retrying_now = record
            .failure
            .as_ref()
            .is_some_and(|failure| failure.cause == FailureCause::Interrupted);
        let state = if retrying_now {
            PackageState::Installing
        } else {
            PackageState::Failed
        };
        record.set_state(state, &target.version, Some(message.clone()), now);
        self.journal.last_error = Some(ErrorRecord {
            message: format!("{name} {}: {message}", target.version),
            at: now,
        });
        self.save()?;
        match self.record_mut(name).failure.as_ref().map(|f| f.cause) {
            Some(FailureCause::Interrupted) => {
                tracing::warn!(package = %name, version = %target.version, %message, "install interrupted; trying again");
            }
            Some(FailureCause::Package) => {
                tracing::warn!(package = %name, version = %target.version, %message,
                    "install failed; this release is not installed again until the assignment changes or an admin retries it");
            }
            _ => {
                tracing::warn!(package = %name, version = %target.version, %message, "install failed; retrying with backoff");
            }
        }
        Ok(())
    }

    /// Removes a package that is no longer desired.
    async fn remove(&mut self, name: &str, fetcher: &Fetcher) -> Result<(), EngineError> {
        let Some(mut active) = self.journal.packages[name].active.clone() else {
            // Nothing was ever activated: only leftovers to clear.
            let package_dir = self.dir.package(name);
            remove_all(&package_dir).map_err(StateError::io(&package_dir))?;
            self.journal.packages.remove(name);
            self.save()?;
            return Ok(());
        };
        if active.hooks_unknown {
            match self.learn_hooks(name, &active, fetcher).await? {
                Some(known) => active = known,
                None => return Ok(()),
            }
        }
        tracing::info!(package = %name, version = %active.version, "removing");
        self.record_mut(name).staged = None;
        self.record_mut(name).operation = Some(Operation::Remove {
            step: RemoveStep::PreRemove,
        });
        self.save()?;
        if let Some(hook) = &active.hooks.pre_remove {
            match self
                .run_hook(HookKind::PreRemove, hook, name, &active.version, None)
                .await
            {
                Ok(_) => {}
                Err(StepError::Fatal(error)) => return Err(error),
                Err(StepError::Failed(reason) | StepError::Download(reason)) => {
                    let now = Timestamp::now();
                    let retry = self.options.retry;
                    let message = format!("{reason}; the package stays installed");
                    let record = self.record_mut(name);
                    record.operation = None;
                    record_failure(
                        record,
                        FailedAction::Remove,
                        &active,
                        0,
                        FailureCause::Package,
                        retry,
                        now,
                    );
                    record.set_state(
                        PackageState::Failed,
                        &active.version,
                        Some(message.clone()),
                        now,
                    );
                    self.journal.last_error = Some(ErrorRecord {
                        message: format!("{name} {}: {message}", active.version),
                        at: now,
                    });
                    self.save()?;
                    tracing::warn!(package = %name, %message, "removal failed");
                    return Ok(());
                }
            }
        }
        self.record_mut(name).operation = Some(Operation::Remove {
            step: RemoveStep::Delete,
        });
        self.save()?;
        self.delete_package(name)?;
        tracing::info!(package = %name, "removed");
        Ok(())
    }

    /// Removes `current`, then the package directory, then the record.
    fn delete_package(&mut self, name: &str) -> Result<(), EngineError> {
        let current = self.dir.current(name);
        remove_file_if_exists(&current).map_err(StateError::io(&current))?;
        let package_dir = self.dir.package(name);
        if package_dir.exists() {
            sync_dir(&package_dir).map_err(StateError::io(&package_dir))?;
        }
        self.fault(FaultPoint::AfterUnlink)?;
        remove_all(&package_dir).map_err(StateError::io(&package_dir))?;
        let packages = self.dir.packages();
        sync_dir(&packages).map_err(StateError::io(&packages))?;
        self.journal.packages.remove(name);
        self.save()?;
        Ok(())
    }

    /// Points `packages/<name>/current` at `version` atomically.
    fn switch_current(&self, name: &str, version: &str) -> io::Result<()> {
        let package_dir = self.dir.package(name);
        let temporary = package_dir.join(CURRENT_TEMPORARY);
        remove_file_if_exists(&temporary)?;
        std::os::unix::fs::symlink(version, &temporary)?;
        fs::rename(&temporary, self.dir.current(name))?;
        sync_dir(&package_dir)
    }

    /// The version `current` points to.
    fn read_current(&self, name: &str) -> Option<String> {
        read_current(&self.dir, name)
    }

    fn set_install_step(&mut self, name: &str, step: InstallStep) -> Result<(), StateError> {
        if let Some(Operation::Install { step: current, .. }) = &mut self.record_mut(name).operation
        {
            *current = step;
        }
        self.save()
    }

    fn fault(&self, point: FaultPoint) -> Result<(), EngineError> {
        if self.options.faults.hit(point) {
            Err(EngineError::SimulatedCrash(point))
        } else {
            Ok(())
        }
    }

    fn record_mut(&mut self, name: &str) -> &mut PackageRecord {
        self.journal
            .packages
            .get_mut(name)
            .expect("the package has a record")
    }

    /// Writes the journal. When that fails (a full disk, say), the journal in memory goes back to
    /// the one on disk, as if the agent had stopped just before this save: the step the journal
    /// was to announce has not started, the error stops the pass, and the next pass (after a
    /// backoff) recovers from the journal on disk exactly as after a crash, and saves again.
    fn save(&mut self) -> Result<(), StateError> {
        match self.journal.save(&self.dir) {
            Ok(()) => {
                self.persisted.clone_from(&self.journal);
                Ok(())
            }
            Err(error) => {
                self.journal.clone_from(&self.persisted);
                Err(error)
            }
        }
    }
}

/// The version `packages/<name>/current` points to, if it is a link to a directory (a real one,
/// not another link) of `packages/<name>/`.
pub fn read_current(dir: &StateDir, name: &str) -> Option<String> {
    let target = fs::read_link(dir.current(name)).ok()?;
    let version = target.to_str()?.to_owned();
    if version.contains('/') || version.starts_with('.') {
        return None;
    }
    fs::symlink_metadata(dir.version(name, &version))
        .is_ok_and(|metadata| metadata.is_dir())
        .then_some(version)
}

/// What the journal keeps about the version `package` installs.
fn version_record(package: &DesiredPackage) -> VersionRecord {
    VersionRecord {
        version: package.version.clone(),
        sha256: package.sha256.clone(),
        hooks: package.hooks.clone(),
        hooks_unknown: false,
    }
}

/// True while a failed `action` of `record` waits for its retry time.
fn waiting(record: &PackageRecord, action: FailedAction, now: Timestamp) -> bool {
    record
        .failure
        .as_ref()
        .is_some_and(|failure| failure.action == action && now < failure.retry_at)
}

/// True when `record` holds a failure of exactly the release `package` names that is not tried
/// again.
fn is_given_up(record: &PackageRecord, package: &DesiredPackage) -> bool {
    record.failure.as_ref().is_some_and(|failure| {
        failure.is_install_of(&package.version, &package.sha256, package.attempt)
            && failure.retry_after().is_none()
    })
}

/// Counts a failed attempt of `target` (at the desired package's `attempt`) and schedules the
/// next one: at once for the first interruptions, never for a failed release (its `retry_at`
/// still gets the backoff, for older agents that read the journal), with backoff otherwise.
pub(super) fn record_failure(
    record: &mut PackageRecord,
    action: FailedAction,
    target: &VersionRecord,
    attempt: u32,
    cause: FailureCause,
    retry: Backoff,
    now: Timestamp,
) {
    let attempts = match &record.failure {
        Some(failure)
            if failure.action == action
                && failure.version == target.version
                && failure.sha256 == target.sha256
                && failure.attempt == attempt =>
        {
            failure.attempts.saturating_add(1)
        }
        _ => 1,
    };
    let cause = match cause {
        FailureCause::Interrupted if attempts > IMMEDIATE_RETRIES_AFTER_CRASH => {
            FailureCause::Package
        }
        cause => cause,
    };
    let delay = if cause == FailureCause::Interrupted {
        std::time::Duration::ZERO
    } else {
        retry.delay_with_jitter(attempts - 1)
    };
    record.failure = Some(Failure {
        action,
        version: target.version.clone(),
        sha256: target.sha256.clone(),
        attempt,
        cause,
        attempts,
        retry_at: now.plus(delay),
    });
}

fn step_name(step: InstallStep) -> &'static str {
    match step {
        InstallStep::Download => "download",
        InstallStep::Extract => "extraction",
        InstallStep::Move => "move",
        InstallStep::PreInstall => "preInstall",
        InstallStep::Activate => "activation",
        InstallStep::PostInstall => "postInstall",
        InstallStep::HealthCheck => "healthCheck",
        InstallStep::RollBack => "rollback",
    }
}

fn io_failure(path: &Path, error: io::Error) -> StepError {
    StepError::Failed(format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests;
