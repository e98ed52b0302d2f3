//! The agent's state directory: its layout, crash-safe file writes, the credentials and the install
//! journal.
//!
//! ```text
//! <state-dir>/
//!   identity.key              the client's Ed25519 key pair, PKCS#8 (mode 0600), never sent
//!   credentials.json          client name and session (mode 0600)
//!   decommissioned            the agent was decommissioned: it does not start again
//!   machine-id                generated identity when /etc/machine-id is not readable
//!   state.json                the journal: desired state, package records, step in progress
//!   connection.json           the last error talking to the controller (for `tc-agent status`)
//!   tasks.json                the journal of task orders (see [`crate::tasks::journal`])
//!   tasks/                    the default working directory of `exec` orders (mode 0700)
//!   downloads/<sha256>.part   a download in progress (resumed with HTTP Range)
//!   downloads/<sha256>.zip    a verified download (also an update staged until its activation)
//!   staging/<name>/           a package being extracted
//!   packages/<name>/<version>/  an installed version
//!   packages/<name>/current -> <version>
//! ```
//!
//! Every file that matters after a crash is written with [`write_atomic`]: to a temporary file,
//! fsync, rename over the old one, fsync of the directory. A reader therefore sees either the old
//! or the new content, never a torn write.
//!
//! The agent runs as root and deletes what it finds under its state directory, so it trusts only
//! a directory that nobody else can write to: [`StateDir::create`] refuses a state directory, or
//! one of `downloads/`, `staging/`, `packages/` and `packages/<name>/`, that is not a real
//! directory (a symbolic link included), is owned by another user, or is writable by group or
//! others. Files in it are opened with `O_NOFOLLOW`, so a planted link is reported, never followed.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tc_proto::{DesiredState, Hooks, PackageReport, PackageState, Session, Timestamp};

use crate::engine::StagedChange;

/// Format version written into `state.json`; a journal from a newer agent is not trusted.
pub const JOURNAL_FORMAT: u32 = 1;

/// Errors reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A state file exists but does not hold what the agent wrote.
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why it could not be decoded.
        #[source]
        source: serde_json::Error,
    },
    /// A path in the state directory is not safe to use: a symbolic link, not a directory, owned
    /// by another user, or writable by group or others.
    #[error("{path}: {problem}")]
    Unsafe {
        /// The path.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        problem: String,
    },
    /// The journal was written by a newer agent with a format this one does not know.
    #[error("{path} has format {found}, this agent understands up to {JOURNAL_FORMAT}")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// The format found.
        found: u32,
    },
}

impl StateError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StateError {
        let path = path.into();
        move |source| StateError::Io { path, source }
    }
}

/// The paths inside a state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The layout rooted at `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    /// The state directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `credentials.json`.
    pub fn credentials(&self) -> PathBuf {
        self.root.join("credentials.json")
    }

    /// The path of `identity.key`, the client's key pair.
    pub fn identity_key(&self) -> PathBuf {
        self.root.join("identity.key")
    }

    /// The path of `decommissioned`, the mark of a decommissioned agent.
    pub fn decommissioned(&self) -> PathBuf {
        self.root.join("decommissioned")
    }

    /// The path of `state.json`, the journal.
    pub fn journal(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// The path of `connection.json`, the last error talking to the controller.
    pub fn connection(&self) -> PathBuf {
        self.root.join("connection.json")
    }

    /// The path of `history.bin`, the load history (see [`crate::history`]).
    pub fn history(&self) -> PathBuf {
        self.root.join("history.bin")
    }

    /// The path of `machine-id`, the identity generated when the system has none.
    pub fn machine_id(&self) -> PathBuf {
        self.root.join("machine-id")
    }

    /// The directory `downloads/`.
    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// The directory `staging/`.
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// The directory `staging/<name>`, where a package is extracted before it is moved into place.
    pub fn staging_for(&self, name: &str) -> PathBuf {
        self.staging().join(name)
    }

    /// The directory `packages/`.
    pub fn packages(&self) -> PathBuf {
        self.root.join("packages")
    }

    /// The directory `packages/<name>`.
    pub fn package(&self, name: &str) -> PathBuf {
        self.packages().join(name)
    }

    /// The directory `packages/<name>/<version>`.
    pub fn version(&self, name: &str, version: &str) -> PathBuf {
        self.package(name).join(version)
    }

    /// The link `packages/<name>/current`.
    pub fn current(&self, name: &str) -> PathBuf {
        self.package(name).join("current")
    }

    /// Creates the state directory (mode 0700) and its subdirectories, and checks that the agent
    /// can trust them (see [`check_dir`]): the state directory, `downloads/`, `staging/`,
    /// `packages/` and every directory `packages/<name>/`. A symbolic link among the packages is
    /// refused too: the agent would otherwise install into, or delete from, where it points.
    pub fn create(&self) -> Result<(), StateError> {
        if fs::symlink_metadata(&self.root).is_err() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.root)
                .map_err(StateError::io(&self.root))?;
        }
        check_dir(&self.root)?;
        for dir in [self.downloads(), self.staging(), self.packages()] {
            ensure_dir(&dir)?;
        }
        let packages = self.packages();
        for entry in fs::read_dir(&packages).map_err(StateError::io(&packages))? {
            let entry = entry.map_err(StateError::io(&packages))?;
            let kind = entry.file_type().map_err(StateError::io(entry.path()))?;
            if kind.is_dir() || kind.is_symlink() {
                check_dir(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// Checks that `path` is a directory the agent can trust: a real directory (not a symbolic
/// link), owned by the user the agent runs as, and not writable by group or others. Anyone else
/// who can write there could make the agent (root) delete, overwrite or run what they choose.
pub fn check_dir(path: &Path) -> Result<(), StateError> {
    let unsafe_path = |problem: String| StateError::Unsafe {
        path: path.to_owned(),
        problem,
    };
    let metadata = fs::symlink_metadata(path).map_err(StateError::io(path))?;
    if metadata.file_type().is_symlink() {
        let target = fs::read_link(path)
            .map(|target| target.display().to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(unsafe_path(format!(
            "is a symbolic link (to {target}); the agent follows no link in its state directory: \
             remove the link"
        )));
    }
    if !metadata.is_dir() {
        return Err(unsafe_path("is not a directory".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if metadata.uid() != me {
        return Err(unsafe_path(format!(
            "is owned by uid {}, not by the agent's user (uid {me}); refusing to use it: chown it \
             or choose another state directory",
            metadata.uid()
        )));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_path(format!(
            "is writable by group or others (mode {mode:04o}); refusing to use it: run \
             `chmod go-w {}`",
            path.display()
        )));
    }
    Ok(())
}

/// Creates the directory `path` (mode 0755, its parent must exist) unless it exists, and checks
/// it with [`check_dir`]. An existing link is never followed.
pub fn ensure_dir(path: &Path) -> Result<(), StateError> {
    match fs::DirBuilder::new().mode(0o755).create(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(StateError::io(path)(error)),
    }
    check_dir(path)
}

/// Opens a file for reading without following a symbolic link.
fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW)
        .open(path)
}

/// `O_NOFOLLOW`: opening a symbolic link fails (with `ELOOP`) instead of opening its target.
pub const NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;

/// The error for opening `path` with [`NOFOLLOW`]: a link is reported as such.
pub fn nofollow_error(path: &Path, source: io::Error) -> StateError {
    if source.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
        StateError::Unsafe {
            path: path.to_owned(),
            problem: "is a symbolic link; the agent follows no link in its state directory: \
                      remove the link"
                .into(),
        }
    } else {
        StateError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Reads a file of the state directory without following a symbolic link; `None` when it does
/// not exist.
pub fn read_file(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    let mut file = match open_nofollow(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(nofollow_error(path, error)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(StateError::io(path))?;
    Ok(Some(bytes))
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content: temporary
/// file, fsync, rename, fsync of the directory. The file gets `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.tmp"));
    let write = || -> io::Result<()> {
        // A leftover from a crash could carry other permissions, which `mode` would not reset.
        match fs::remove_file(&temporary) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        // `create_new` (O_EXCL) and O_NOFOLLOW: a link planted under the temporary name is
        // refused, never written through.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(NOFOLLOW)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        Ok(())
    };
    write().map_err(StateError::io(&temporary))?;
    fs::rename(&temporary, path).map_err(StateError::io(path))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent).map_err(StateError::io(parent))?;
    }
    Ok(())
}

/// Flushes a directory's entries (new names, renames, removals) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    open_nofollow(dir)?.sync_all()
}

/// Serialises `value` as pretty JSON and writes it with [`write_atomic`].
pub fn write_json<T: Serialize>(path: &Path, value: &T, mode: u32) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| StateError::Corrupt {
        path: path.to_owned(),
        source,
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes, mode)
}

/// Reads a JSON file (never through a symbolic link); `None` when it does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StateError> {
    let Some(bytes) = read_file(path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateError::Corrupt {
            path: path.to_owned(),
            source,
        })
}

/// What the agent keeps after enrolment (`credentials.json`, mode 0600). Losing it costs only a
/// new enrolment: the client is the key in `identity.key`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// The controller these credentials belong to; enrolling with another controller replaces them.
    pub server: String,
    /// The machine id used at enrolment.
    pub machine_id: String,
    /// The client's name on the controller.
    pub client_name: String,
    /// The public key enrolled (base64url); credentials of another key are stale.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub public_key: String,
    /// The current session, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
    /// The bearer token a controller of protocol 1 handed out (agents written before identities
    /// kept only this; it proves once which client an upgraded agent is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    /// When the agent enrolled.
    pub enrolled_at: Timestamp,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("machine_id", &self.machine_id)
            .field("client_name", &self.client_name)
            .field("public_key", &self.public_key)
            .field("session", &self.session)
            .field("client_token", &self.client_token.as_ref().map(|_| "..."))
            .field("enrolled_at", &self.enrolled_at)
            .finish()
    }
}

impl Credentials {
    /// Reads `credentials.json`, if present.
    pub fn load(dir: &StateDir) -> Result<Option<Credentials>, StateError> {
        read_json(&dir.credentials())
    }

    /// Reads `credentials.json`; a file that cannot be decoded is moved aside (to
    /// `credentials.json.corrupt`) and counts as none, so that the agent enrols again instead of
    /// stopping.
    pub fn load_or_set_aside(dir: &StateDir) -> Result<Option<Credentials>, StateError> {
        match Self::load(dir) {
            Err(StateError::Corrupt { path, source }) => {
                let aside = path.with_extension("json.corrupt");
                tracing::error!(path = %path.display(), error = %source, aside = %aside.display(),
                    "credentials are corrupt; enrolling again");
                fs::rename(&path, &aside).map_err(StateError::io(&path))?;
                Ok(None)
            }
            other => other,
        }
    }

    /// Writes `credentials.json` with mode 0600.
    pub fn save(&self, dir: &StateDir) -> Result<(), StateError> {
        write_json(&dir.credentials(), self, 0o600)
    }

    /// Deletes `credentials.json`.
    pub fn delete(dir: &StateDir) -> Result<(), StateError> {
        let path = dir.credentials();
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(StateError::io(&path)(error)),
        }
    }

    /// The bearer token of agent requests: the session's, or a protocol-1 client token.
    pub fn bearer(&self) -> Option<&str> {
        self.session
            .as_ref()
            .map(|session| session.token.as_str())
            .or(self.client_token.as_deref())
    }
}

/// The mark of a decommissioned agent (`decommissioned`): it removed every package thinfleet
/// installed and its identity, and does not start again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decommissioned {
    /// When.
    pub at: Timestamp,
    /// The client it was.
    pub client_name: String,
    /// The controller that decommissioned it.
    pub server: String,
}

impl Decommissioned {
    /// Reads the mark, if present. A mark that cannot be decoded still counts (with what it
    /// could tell): a decommissioned machine must not come back over a damaged file.
    pub fn load(dir: &StateDir) -> Result<Option<Decommissioned>, StateError> {
        match read_json(&dir.decommissioned()) {
            Err(StateError::Corrupt { .. }) => Ok(Some(Decommissioned {
                at: Timestamp::EPOCH,
                client_name: "(unreadable mark)".into(),
                server: String::new(),
            })),
            other => other,
        }
    }

    /// Writes the mark.
    pub fn save(&self, dir: &StateDir) -> Result<(), StateError> {
        write_json(&dir.decommissioned(), self, 0o644)
    }
}

/// The last problem talking to the controller (`connection.json`), kept for `tc-agent status`.
/// It is written only when the problem changes, not on every retry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    /// The controller URL.
    pub server: String,
    /// The last error, cleared when a request succeeds again.
    pub last_error: Option<ErrorRecord>,
}

/// An error with the time it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRecord {
    /// What went wrong.
    pub message: String,
    /// When it happened.
    pub at: Timestamp,
}

/// One version of a package: what is needed to activate it again and to remove it later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionRecord {
    /// The version (also the directory name under `packages/<name>/`).
    pub version: String,
    /// sha256 of the zip it came from; empty when unknown (a journal rebuilt from the disk).
    pub sha256: String,
    /// Its hooks: `preRemove` must still be known once the package left the desired state.
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
    /// True when `hooks` are not known: a version adopted by a journal rebuilt from the disk.
    /// They are learnt from the desired state (the same version desired) or, before a removal,
    /// from the controller's release; until then the version is not removed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hooks_unknown: bool,
}

/// The step of an install that was started and not yet finished. On restart the engine looks at
/// this to bring the package back to a complete version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallStep {
    /// Downloading and verifying the zip.
    Download,
    /// Extracting into `staging/<name>`.
    Extract,
    /// Renaming the staging directory to `packages/<name>/<version>`.
    Move,
    /// Running `preInstall` in the new, inactive version.
    PreInstall,
    /// Switching `current` to the new version.
    Activate,
    /// Running `postInstall`.
    PostInstall,
    /// Running `healthCheck`.
    HealthCheck,
    /// Switching `current` back to the previous version after a failure.
    RollBack,
}

impl InstallStep {
    /// True from the step on which a hook of the package may have run.
    pub fn ran_hooks(self) -> bool {
        self >= InstallStep::PreInstall
    }
}

/// The step of a removal that was started and not yet finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoveStep {
    /// Running `preRemove`.
    PreRemove,
    /// Removing `current` and the package directory.
    Delete,
}

/// An operation in progress on one package.
// A package record holds at most one operation, and records are few: boxing the install would
// only add an indirection.
#[expect(
    clippy::large_enum_variant,
    reason = "at most one operation per package record"
)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Operation {
    /// Installing `target`.
    Install {
        /// The version being installed.
        target: VersionRecord,
        /// The step started last.
        step: InstallStep,
        /// Why the install is being rolled back (set with [`InstallStep::RollBack`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// What kind of failure is being rolled back (set with [`InstallStep::RollBack`]); it
        /// decides whether the same release is tried again. A rollback recorded by an agent
        /// that did not write it counts as [`FailureCause::Unrecorded`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<FailureCause>,
        /// The `attempt` of the desired package being installed, recorded with a failure so
        /// that an admin's retry (a new attempt) is told apart from the failed one.
        #[serde(default, skip_serializing_if = "is_zero")]
        attempt: u32,
    },
    /// Removing the package.
    Remove {
        /// The step started last.
        step: RemoveStep,
    },
}

/// What a failed attempt was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailedAction {
    /// Installing a version.
    Install,
    /// Removing the package.
    Remove,
}

/// Why an install failed; it decides whether the same release is installed again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureCause {
    /// The download failed: a network or HTTP error, a download cut short, a size or sha256
    /// mismatch. Nothing of the release ran, and the cause may be passing: retried with backoff.
    Download,
    /// The release itself failed: extraction refused it, `preInstall`, the move, the activation,
    /// `postInstall` or `healthCheck` failed, or the agent kept crashing after its hooks started.
    /// Trying it again would run its hooks again (a `postInstall` may restart the kiosk session)
    /// with the same result, so it is not installed again until the desired package changes
    /// (another sha256, version or `attempt`).
    Package,
    /// The agent stopped (a crash, a power cut) after a hook of the release may have started.
    /// Retried at once up to [`crate::engine::IMMEDIATE_RETRIES_AFTER_CRASH`] times; one more
    /// interruption counts as [`FailureCause::Package`].
    Interrupted,
    /// Recorded by an agent that did not tell download failures from package failures. It may
    /// have been a network error, so the release is retried once when its backoff ends; that
    /// attempt's failure, if any, has a cause.
    Unrecorded,
}

/// A failed attempt, so that the same attempt is retried later with backoff (or not at all)
/// rather than at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// What failed.
    pub action: FailedAction,
    /// The version the attempt was for.
    pub version: String,
    /// The sha256 the attempt was for (a different artifact is a different attempt).
    pub sha256: String,
    /// The desired package's `attempt` the failure was for: the controller raises it when an
    /// admin retries, which makes the same release a new attempt. 0 in journals of agents that
    /// predate it, as from controllers that predate it.
    #[serde(default)]
    pub attempt: u32,
    /// Why it failed. Absent from journals of agents that predate it.
    #[serde(default = "unrecorded")]
    pub cause: FailureCause,
    /// Consecutive failed attempts.
    pub attempts: u32,
    /// Not retried before this time. Written for every failure, also for one that is not
    /// retried at all, so that an older agent reading the journal backs off as it used to.
    pub retry_at: Timestamp,
}

fn unrecorded() -> FailureCause {
    FailureCause::Unrecorded
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

impl Failure {
    /// When the same attempt may be tried again; `None` when it is not tried again until the
    /// desired package changes. A removal is always retried: the package stays installed
    /// meanwhile, and `preRemove` is all that runs again.
    pub fn retry_after(&self) -> Option<Timestamp> {
        match (self.action, self.cause) {
            (FailedAction::Install, FailureCause::Package) => None,
            _ => Some(self.retry_at),
        }
    }

    /// True when this is a failed install of exactly `version`, `sha256` and `attempt`.
    pub fn is_install_of(&self, version: &str, sha256: &str, attempt: u32) -> bool {
        self.action == FailedAction::Install
            && self.version == version
            && self.sha256 == sha256
            && self.attempt == attempt
    }
}

/// Everything the agent knows about one package it manages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageRecord {
    /// The version `current` points to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<VersionRecord>,
    /// The version kept for rollback, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<VersionRecord>,
    /// The state reported to the controller.
    pub state: PackageState,
    /// The version the state is about (the target while installing or after a failure).
    pub version: String,
    /// Detail for the report: the failure reason with a hook's output tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the package entered `state`.
    pub since: Timestamp,
    /// The operation in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    /// The last failed attempt, if the package has not converged since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// An update or removal held back until its activation (see [`crate::engine::StagedChange`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<StagedChange>,
}

impl PackageRecord {
    /// A record for a package about to be installed for the first time.
    pub fn new(version: &str, now: Timestamp) -> Self {
        PackageRecord {
            active: None,
            previous: None,
            state: PackageState::Installing,
            version: version.to_owned(),
            message: None,
            since: now,
            operation: None,
            failure: None,
            staged: None,
        }
    }

    /// The active version's name, if any.
    pub fn active_version(&self) -> Option<&str> {
        self.active.as_ref().map(|active| active.version.as_str())
    }

    /// Sets the reported state; `since` only moves when the state or the version changes.
    pub fn set_state(
        &mut self,
        state: PackageState,
        version: &str,
        message: Option<String>,
        now: Timestamp,
    ) {
        if self.state != state || self.version != version {
            self.since = now;
        }
        self.state = state;
        self.version = version.to_owned();
        self.message = message;
    }

    /// The staged change, when it is the one the record's state is about: an update to the
    /// version being installed, or the removal.
    fn reported_staged(&self) -> Option<tc_proto::activation::Staged> {
        let staged = self.staged.as_ref()?;
        let current = match self.state {
            PackageState::Installing => staged.version.as_deref() == Some(self.version.as_str()),
            PackageState::Removing => staged.version.is_none(),
            _ => false,
        };
        current.then(|| staged.report())
    }

    /// The report for the controller.
    pub fn report(&self, name: &str) -> PackageReport {
        PackageReport {
            staged: self.reported_staged(),
            name: name.to_owned(),
            version: self.version.clone(),
            state: self.state,
            active_version: self.active.as_ref().map(|active| active.version.clone()),
            message: self.message.clone(),
            since: self.since,
        }
    }
}

/// `state.json`: what the agent was told, what it has done and what it is in the middle of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    /// The format version ([`JOURNAL_FORMAT`] when written by this agent).
    pub format: u32,
    /// The last desired state received, so that the agent keeps converging after a restart while
    /// the controller is unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<DesiredState>,
    /// The desired revision the package records were produced for.
    #[serde(default)]
    pub observed_revision: u64,
    /// Every package thinfleet manages on this machine, by name.
    #[serde(default)]
    pub packages: BTreeMap<String, PackageRecord>,
    /// The last package failure, for `tc-agent status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ErrorRecord>,
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            format: JOURNAL_FORMAT,
            desired: None,
            observed_revision: 0,
            packages: BTreeMap::new(),
            last_error: None,
        }
    }
}

impl Journal {
    /// Reads `state.json`; `None` when there is none yet.
    pub fn load(dir: &StateDir) -> Result<Option<Journal>, StateError> {
        let path = dir.journal();
        let journal: Option<Journal> = read_json(&path)?;
        if let Some(journal) = &journal
            && journal.format > JOURNAL_FORMAT
        {
            return Err(StateError::UnknownFormat {
                path,
                found: journal.format,
            });
        }
        Ok(journal)
    }

    /// Writes `state.json` atomically.
    pub fn save(&self, dir: &StateDir) -> Result<(), StateError> {
        write_json(&dir.journal(), self, 0o600)
    }

    /// The reports for every managed package, sorted by name.
    pub fn reports(&self) -> Vec<PackageReport> {
        self.packages
            .iter()
            .map(|(name, record)| record.report(name))
            .collect()
    }
}

#[cfg(test)]
mod tests;
