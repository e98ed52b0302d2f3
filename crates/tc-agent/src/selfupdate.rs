//! Self-update: the agent updates itself through the fleet, as a release of the reserved package
//! [`PACKAGE`] (`thinfleet-agent`) that a group assigns like any package, within the group's
//! budget, steps and windows.
//!
//! The release's zip holds the new binary as [`BINARY`] (`tc-agent`) at its top. The install
//! engine installs it like any package, beside the binary that runs: downloaded and verified
//! (size, sha256, signature), extracted into `packages/thinfleet-agent/<version>/`, `current`
//! switched. Its health check is the new binary itself: the agent starts it in *check-in mode*
//! ([`CHECK_IN_ENV`]) with its own command line, and the new binary must open the client's
//! session and have a heartbeat accepted by the controller within the check-in deadline
//! (`selfUpdateCheckInSeconds`, 120 s by default). Only then is the install committed and the
//! agent restarts into the new binary (`exec`, same process id, so systemd follows it). A new
//! binary that exits, hangs, or cannot reach the controller in time is stopped, the install is
//! rolled back like any failed health check and the release reported `Failed`; a failed release
//! is not installed again until the assignment changes or an admin retries it, so it does not
//! loop. The agent that ran on never stopped: nothing needs restoring.
//!
//! Whatever starts the agent (systemd's `ExecStart`, the binary of the operating system's
//! package) *launches* the committed version first: before anything else, [`launch`] replaces the
//! process with the binary of the `thinfleet-agent` version the journal records as installed, if
//! there is one and it is not already running. A crash at any step therefore recovers like any
//! interrupted install: the binary that was committed last starts, and the engine rolls the
//! interrupted attempt back and tries it again at once (a few times; then it is a failure).
//!
//! A committed binary that checked in but then dies at every start (before its first accepted
//! heartbeat) would keep a client from phoning home: [`launch`] counts its launches in
//! `agent-launches` and the first accepted heartbeat clears the count ([`launched_fine`]). After
//! [`MAX_LAUNCHES`] launches without one (the restart after the commit is the first), the binary
//! that was started runs instead and gives that release up: its version is removed, the previous one (or none) becomes active again, and the
//! release is reported `Failed` and not installed again.
//!
//! Unassigning `thinfleet-agent` removes it like any package; the agent then restarts into the
//! binary it was started as ([`ORIGINAL_ENV`]).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::state::{Journal, StateDir};

/// The reserved package name of agent releases.
pub const PACKAGE: &str = "thinfleet-agent";

/// The file at the top of a `thinfleet-agent` zip that is the agent binary.
pub const BINARY: &str = "tc-agent";

/// Set (to a nonce) when the agent is started to check in once and exit: the new binary of a
/// self-update proving that it can reach the controller. It prints [`CHECKED_IN`] and the nonce
/// on standard output once a heartbeat was accepted.
pub const CHECK_IN_ENV: &str = "TC_AGENT_CHECK_IN";

/// The binary the agent was started as, before [`launch`] replaced it with a self-updated one:
/// where it returns when `thinfleet-agent` is unassigned.
pub const ORIGINAL_ENV: &str = "TC_AGENT_ORIGINAL";

/// What a binary in check-in mode prints, followed by a space and the nonce, once it checked in.
pub const CHECKED_IN: &str = "tc-agent: checked in";

/// How many times in a row a committed binary is launched without an accepted heartbeat before it
/// is given up.
pub const MAX_LAUNCHES: u32 = 3;

/// The file counting the launches of a committed binary since its last accepted heartbeat:
/// `<version> <count>`.
const LAUNCHES_FILE: &str = "agent-launches";

/// The check-in deadline unless configured, in seconds.
pub const DEFAULT_CHECK_IN_SECONDS: u32 = 120;
/// The shortest check-in deadline that may be configured, in seconds.
pub const MIN_CHECK_IN_SECONDS: u32 = 5;
/// The longest check-in deadline that may be configured, in seconds.
pub const MAX_CHECK_IN_SECONDS: u32 = 3600;

/// What the install engine needs to update the agent itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfUpdate {
    /// The agent's command line (without the program), given to the new binary as it is.
    pub args: Vec<OsString>,
    /// How long the new binary has to check in.
    pub check_in: Duration,
    /// A committed version [`launch`] gave up: the engine rolls it back when it opens.
    pub give_up: Option<String>,
}

impl SelfUpdate {
    /// The command line of this process and `check_in`.
    pub fn from_process(check_in: Duration) -> Self {
        SelfUpdate {
            args: std::env::args_os().skip(1).collect(),
            check_in,
            give_up: None,
        }
    }
}

/// The binary of the `thinfleet-agent` version the journal records as installed (committed),
/// if there is one and it is a regular file.
/// It is run as root before anything else checks the state directory, so each directory on its
/// way is checked as the agent checks its state directory (no link, owned by the agent's user, not
/// writable by others), and so is the file: nobody else can have put it there.
pub fn committed_binary(dir: &StateDir) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let journal = Journal::load(dir).ok().flatten()?;
    let version = &journal.packages.get(PACKAGE)?.active.as_ref()?.version;
    let version_dir = dir.version(PACKAGE, version);
    for directory in [
        dir.root().to_owned(),
        dir.packages(),
        dir.package(PACKAGE),
        version_dir.clone(),
    ] {
        crate::state::check_dir(&directory).ok()?;
    }
    let path = version_dir.join(BINARY);
    let metadata = std::fs::symlink_metadata(&path).ok()?;
    let trusted = metadata.is_file()
        && metadata.uid() == rustix::process::geteuid().as_raw()
        && metadata.mode() & 0o022 == 0;
    trusted.then_some(path)
}

/// What [`launch`] did, when it returned.
#[derive(Debug)]
pub enum Launched {
    /// Nothing to launch: no committed self-updated binary, or it is this one.
    Nothing,
    /// The `exec` failed; the agent runs as it is.
    Failed(io::Error),
    /// The committed `version` was launched [`MAX_LAUNCHES`] times without an accepted heartbeat:
    /// this binary runs instead and gives that release up.
    GaveUp {
        /// The version given up.
        version: String,
    },
}

/// At start: replaces this process with the committed self-updated binary when there is one and
/// it is not the one running. Returns only when it did not (see [`Launched`]).
pub fn launch(dir: &StateDir) -> Launched {
    if std::env::var_os(CHECK_IN_ENV).is_some() {
        return Launched::Nothing;
    }
    let Some(target) = committed_binary(dir) else {
        return Launched::Nothing;
    };
    if is_running(&target) {
        return Launched::Nothing;
    }
    let version = version_of(&target);
    let launches = launches_of(dir, &version);
    if launches >= MAX_LAUNCHES {
        return Launched::GaveUp { version };
    }
    if let Err(error) = count_launch(dir, &version, launches + 1) {
        return Launched::Failed(error);
    }
    tracing::info!(binary = %target.display(), launch = launches + 1, "starting the agent installed by {PACKAGE}");
    Launched::Failed(exec(&target))
}

/// The version directory a committed binary is in.
fn version_of(binary: &Path) -> String {
    binary
        .parent()
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// How many times `version` was launched since the last accepted heartbeat.
fn launches_of(dir: &StateDir, version: &str) -> u32 {
    read_launches(dir)
        .filter(|(launched, _)| launched == version)
        .map_or(0, |(_, count)| count)
}

fn count_launch(dir: &StateDir, version: &str, count: u32) -> io::Result<()> {
    let text = format!("{version} {count}\n");
    crate::state::write_atomic(&dir.root().join(LAUNCHES_FILE), text.as_bytes(), 0o600)
        .map_err(|error| io::Error::other(error.to_string()))
}

/// After the first accepted heartbeat: the launches are counted afresh.
pub fn launched_fine(dir: &StateDir) {
    let path = dir.root().join(LAUNCHES_FILE);
    if let Err(error) = std::fs::remove_file(&path)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(%error, path = %path.display(), "cannot clear the launch count");
    }
}

/// `(version, count)` of the launch count, if there is one.
fn read_launches(dir: &StateDir) -> Option<(String, u32)> {
    let text = std::fs::read_to_string(dir.root().join(LAUNCHES_FILE)).ok()?;
    let (version, count) = text.trim().split_once(' ')?;
    Some((version.to_owned(), count.parse().ok()?))
}

/// After a self-update was committed or unassigned: replaces this process with the binary that
/// should now run — the committed one, else the one the agent was started as. Returns only the
/// error of a failed `exec`.
pub fn restart(dir: &StateDir) -> io::Error {
    let committed = committed_binary(dir);
    if let Some(binary) = &committed {
        // The restart into a committed binary is its first launch.
        let version = version_of(binary);
        if let Err(error) = count_launch(dir, &version, launches_of(dir, &version) + 1) {
            return error;
        }
    }
    let target = committed
        .or_else(|| std::env::var_os(ORIGINAL_ENV).map(PathBuf::from))
        .or_else(|| std::env::current_exe().ok());
    match target {
        Some(target) => {
            tracing::info!(binary = %target.display(), "restarting the agent");
            exec(&target)
        }
        None => io::Error::other("cannot tell which binary to restart"),
    }
}

/// True when `binary` is the executable of this process.
fn is_running(binary: &Path) -> bool {
    match (std::env::current_exe(), std::fs::canonicalize(binary)) {
        (Ok(running), Ok(binary)) => running == binary,
        _ => false,
    }
}

/// Replaces this process with `binary`, with the same arguments; returns only on failure.
fn exec(binary: &Path) -> io::Error {
    let original = std::env::var_os(ORIGINAL_ENV)
        .or_else(|| std::env::current_exe().ok().map(PathBuf::into_os_string))
        .unwrap_or_default();
    std::process::Command::new(binary)
        .args(std::env::args_os().skip(1))
        .env(ORIGINAL_ENV, original)
        .env_remove(CHECK_IN_ENV)
        .exec()
}

/// A new binary started in check-in mode.
#[derive(Debug)]
pub struct CheckIn {
    child: tokio::process::Child,
    nonce: String,
}

impl CheckIn {
    /// Starts `binary` in check-in mode with the agent's command line.
    pub fn spawn(binary: &Path, update: &SelfUpdate) -> Result<CheckIn, String> {
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos())
                .unwrap_or_default()
        );
        let child = tokio::process::Command::new(binary)
            .args(&update.args)
            .env(CHECK_IN_ENV, &nonce)
            .env_remove(ORIGINAL_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| {
                format!(
                    "the new agent {} could not be started: {error}",
                    binary.display()
                )
            })?;
        Ok(CheckIn { child, nonce })
    }

    /// Waits until the new binary says it checked in and exits, for at most `deadline`. Stops it
    /// when the deadline passes.
    pub async fn wait(mut self, deadline: Duration) -> Result<(), String> {
        let expected = format!("{CHECKED_IN} {}", self.nonce);
        let stdout = self.child.stdout.take();
        let outcome = tokio::time::timeout(deadline, async {
            let mut checked_in = false;
            if let Some(stdout) = stdout {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    checked_in |= line.trim_end() == expected;
                }
            }
            (checked_in, self.child.wait().await)
        })
        .await;
        match outcome {
            Ok((true, Ok(status))) if status.success() => Ok(()),
            Ok((_, Ok(status))) => Err(format!(
                "the new agent exited ({}) without checking in with the controller",
                describe(status)
            )),
            Ok((_, Err(error))) => Err(format!("the new agent could not be waited for: {error}")),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(format!(
                    "the new agent did not check in with the controller within {} s and was stopped",
                    deadline.as_secs()
                ))
            }
        }
    }
}

/// `exit code 3` or `killed by signal 9`.
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// The line a binary in check-in mode prints once it checked in.
pub fn checked_in_line(nonce: &OsStr) -> String {
    format!("{CHECKED_IN} {}", nonce.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use tc_proto::Timestamp;

    use super::*;
    use crate::state::{PackageRecord, VersionRecord};

    /// A state directory whose journal says `thinfleet-agent` 0.3.0 is installed, with its binary.
    fn installed() -> (tempfile::TempDir, StateDir, PathBuf) {
        let temp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(temp.path().join("state"));
        dir.create().unwrap();
        let mut record = PackageRecord::new("0.3.0", Timestamp::now());
        record.active = Some(VersionRecord {
            version: "0.3.0".into(),
            sha256: String::new(),
            hooks: Default::default(),
            hooks_unknown: false,
        });
        let mut journal = Journal::default();
        journal.packages.insert(PACKAGE.into(), record);
        journal.save(&dir).unwrap();
        let version = dir.version(PACKAGE, "0.3.0");
        std::fs::create_dir_all(&version).unwrap();
        for directory in [dir.package(PACKAGE), version.clone()] {
            std::fs::set_permissions(&directory, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let binary = version.join(BINARY);
        std::fs::write(&binary, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        (temp, dir, binary)
    }

    #[test]
    fn the_committed_binary_is_launched_only_from_a_trusted_state_directory() {
        let (_temp, dir, binary) = installed();
        assert_eq!(committed_binary(&dir), Some(binary.clone()));

        // A binary others may write, or a version directory others may write, is not run.
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(committed_binary(&dir), None);
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let version = binary.parent().unwrap();
        std::fs::set_permissions(version, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(committed_binary(&dir), None);
        std::fs::set_permissions(version, std::fs::Permissions::from_mode(0o755)).unwrap();

        // Nor a link in the binary's place.
        std::fs::rename(&binary, version.join("real")).unwrap();
        std::os::unix::fs::symlink("real", &binary).unwrap();
        assert_eq!(committed_binary(&dir), None);
    }

    #[test]
    fn nothing_is_launched_without_an_installed_release() {
        let temp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(temp.path().join("state"));
        assert_eq!(committed_binary(&dir), None);
        dir.create().unwrap();
        assert_eq!(committed_binary(&dir), None);
    }
}
