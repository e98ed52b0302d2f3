//! `tc-agent status`: what is installed, what is pending and the last error, read from the state
//! directory alone (the controller is not needed).

use std::fmt::Write;
use std::path::PathBuf;

use tc_proto::{PackageState, Timestamp};

use crate::state::{
    ConnectionStatus, Credentials, Decommissioned, Journal, StateDir, StateError, read_json,
};

/// Why the status cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The state directory does not exist: a wrong `--state-dir`, or an agent that never ran.
    #[error(
        "state directory {path} does not exist; pass the --state-dir or --config the agent runs with"
    )]
    MissingStateDir {
        /// The directory looked for.
        path: PathBuf,
    },
    /// Something other than a directory is where the state directory should be.
    #[error("{path} is not a directory; pass the --state-dir or --config the agent runs with")]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// A state file could not be read or decoded.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Renders the status of the agent whose state lives in `dir`.
pub fn render(dir: &StateDir, now: Timestamp) -> Result<String, StatusError> {
    let root = dir.root();
    match std::fs::metadata(root) {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => {
            return Err(StatusError::NotADirectory {
                path: root.to_owned(),
            });
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(StatusError::MissingStateDir {
                path: root.to_owned(),
            });
        }
        Err(error) => return Err(StateError::io(root)(error).into()),
    }
    let journal = Journal::load(dir)?;
    let credentials = Credentials::load(dir);
    let connection: Option<ConnectionStatus> = read_json(&dir.connection())?;
    let mut out = String::new();
    let _ = writeln!(out, "State directory: {}", dir.root().display());
    if let Some(mark) = Decommissioned::load(dir)? {
        let _ = writeln!(
            out,
            "Decommissioned:  as client {} at {}; the agent does not run",
            mark.client_name, mark.at
        );
    }
    match &credentials {
        Ok(Some(credentials)) => {
            let _ = writeln!(
                out,
                "Client:          {} (enrolled with {} at {})",
                credentials.client_name, credentials.server, credentials.enrolled_at
            );
            if let Some(session) = &credentials.session {
                let state = if session.expires_at > now {
                    "expires"
                } else {
                    "expired"
                };
                let _ = writeln!(out, "Session:         {state} {}", session.expires_at);
            }
        }
        Ok(None) => {
            let _ = writeln!(out, "Client:          not enrolled");
        }
        Err(error) => {
            let _ = writeln!(
                out,
                "Client:          credentials unreadable ({error}); the agent enrols again"
            );
        }
    }
    let Some(journal) = journal else {
        let _ = writeln!(out, "\nNo packages installed yet.");
        write_connection(&mut out, connection.as_ref());
        return Ok(out);
    };
    if let Some(desired) = &journal.desired {
        let _ = writeln!(
            out,
            "Desired:         revision {} ({} package{})",
            desired.revision,
            desired.packages.len(),
            if desired.packages.len() == 1 { "" } else { "s" }
        );
    }

    let _ = writeln!(out, "\nInstalled:");
    if journal.packages.is_empty() {
        let _ = writeln!(out, "  (none)");
    } else {
        let rows: Vec<[String; 5]> = journal
            .packages
            .iter()
            .map(|(name, record)| {
                [
                    name.clone(),
                    record.active_version().unwrap_or("-").to_owned(),
                    record
                        .previous
                        .as_ref()
                        .map_or("-".to_owned(), |previous| previous.version.clone()),
                    record.state.to_string(),
                    record.since.to_string(),
                ]
            })
            .collect();
        let header = ["PACKAGE", "ACTIVE", "PREVIOUS", "STATE", "SINCE"];
        let mut widths = header.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        let mut line = |cells: &[&str]| {
            let mut text = String::from("  ");
            for (cell, width) in cells.iter().zip(widths) {
                let _ = write!(text, "{cell:<width$}  ");
            }
            let _ = writeln!(out, "{}", text.trim_end());
        };
        line(&header);
        for row in &rows {
            line(&row.each_ref().map(String::as_str));
        }
    }

    let mut pending = Vec::new();
    if let Some(desired) = &journal.desired {
        for package in &desired.packages {
            let record = journal.packages.get(&package.name);
            if record.and_then(|record| record.active_version()) == Some(&package.version) {
                continue;
            }
            let mut text = format!("install {} {}", package.name, package.version);
            if let Some(record) = record {
                if let Some(active) = record.active_version() {
                    let _ = write!(text, " (replacing {active})");
                }
                text.push_str(&staged_note(record, &package.name));
                if record.state == PackageState::Failed {
                    let _ = write!(text, ": failed");
                    if let Some(failure) = &record.failure {
                        let _ = write!(text, " {} time(s)", failure.attempts);
                        let this_release = failure.is_install_of(
                            &package.version,
                            &package.sha256,
                            package.attempt,
                        );
                        match failure.retry_after() {
                            None if this_release => {
                                let _ = write!(
                                    text,
                                    ", not tried again until its assignment changes or an admin retries it"
                                );
                            }
                            Some(at) if this_release && at > now => {
                                let _ = write!(text, ", next attempt at {at}");
                            }
                            _ => {}
                        }
                    }
                    if let Some(message) = &record.message {
                        let _ = write!(text, ": {message}");
                    }
                }
            }
            pending.push(text);
        }
        for (name, record) in &journal.packages {
            if desired.packages.iter().all(|package| &package.name != name) {
                let mut text = format!("remove {name}");
                text.push_str(&staged_note(record, name));
                if record.state == PackageState::Failed
                    && let Some(message) = &record.message
                {
                    let _ = write!(text, ": failed: {message}");
                }
                pending.push(text);
            }
        }
    }
    let _ = writeln!(out, "\nPending:");
    if pending.is_empty() {
        let _ = writeln!(out, "  (nothing)");
    }
    for text in pending {
        let _ = writeln!(out, "  {text}");
    }

    let _ = writeln!(out);
    match &journal.last_error {
        Some(error) => {
            let _ = writeln!(out, "Last error:      {} {}", error.at, error.message);
        }
        None => {
            let _ = writeln!(out, "Last error:      none");
        }
    }
    write_connection(&mut out, connection.as_ref());
    Ok(out)
}

fn write_connection(out: &mut String, connection: Option<&ConnectionStatus>) {
    match connection.and_then(|status| status.last_error.as_ref()) {
        Some(error) => {
            let _ = writeln!(
                out,
                "Controller:      failing since {}: {}",
                error.at, error.message
            );
        }
        None => {
            let _ = writeln!(out, "Controller:      no error recorded");
        }
    }
}

/// What a staged change waits for (empty when the change is not staged).
fn staged_note(record: &crate::state::PackageRecord, name: &str) -> String {
    use tc_proto::activation::StagedWait;
    let Some(staged) = record.report(name).staged else {
        return String::new();
    };
    let waits = match (staged.waiting_for, staged.activates_at) {
        (StagedWait::Reboot, _) => "the next boot".to_owned(),
        (_, Some(at)) => format!("a maintenance window (opens at {at})"),
        (_, None) => "a maintenance window (none known yet)".to_owned(),
    };
    format!(": staged since {}, waits for {waits}", staged.since)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{
        ErrorRecord, FailedAction, Failure, FailureCause, PackageRecord, VersionRecord,
    };
    use tc_proto::{DesiredPackage, DesiredState};

    fn version(version: &str) -> VersionRecord {
        VersionRecord {
            version: version.into(),
            sha256: "a".repeat(64),
            hooks: Default::default(),
            hooks_unknown: false,
        }
    }

    fn desired_package(name: &str, version: &str) -> DesiredPackage {
        DesiredPackage {
            name: name.into(),
            version: version.into(),
            sha256: "b".repeat(64),
            size: 10,
            url: "/blobs/sha256/b".into(),
            hooks: Default::default(),
            attempt: 0,
            signature: None,
        }
    }

    #[test]
    fn status_shows_installed_pending_and_errors() {
        let temp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(temp.path());
        let now = Timestamp::from_unix_millis(1_800_000_000_000);
        let mut journal = Journal::default();
        let mut browser = PackageRecord::new("1.0.0", now);
        browser.active = Some(version("1.0.0"));
        browser.previous = Some(version("0.9.0"));
        browser.state = PackageState::Failed;
        browser.version = "2.0.0".into();
        browser.message = Some("healthCheck failed; rolled back to 1.0.0".into());
        browser.failure = Some(Failure {
            action: FailedAction::Install,
            version: "2.0.0".into(),
            sha256: "b".repeat(64),
            attempt: 0,
            cause: FailureCause::Download,
            attempts: 2,
            retry_at: now.plus(std::time::Duration::from_secs(60)),
        });
        journal.packages.insert("browser".into(), browser);
        let mut kiosk = PackageRecord::new("5.0.0", now);
        kiosk.state = PackageState::Failed;
        kiosk.message = Some("postInstall failed; no version is active".into());
        kiosk.failure = Some(Failure {
            action: FailedAction::Install,
            version: "5.0.0".into(),
            sha256: "b".repeat(64),
            attempt: 0,
            cause: FailureCause::Package,
            attempts: 1,
            retry_at: now.plus(std::time::Duration::from_secs(60)),
        });
        journal.packages.insert("kiosk".into(), kiosk);
        let mut old = PackageRecord::new("3.0.0", now);
        old.active = Some(version("3.0.0"));
        old.state = PackageState::Installed;
        journal.packages.insert("old-tool".into(), old);
        journal.desired = Some(DesiredState {
            activation: Default::default(),
            revision: 4,
            packages: vec![
                desired_package("browser", "2.0.0"),
                desired_package("kiosk", "5.0.0"),
                desired_package("vpn", "1.0.0"),
            ],
            decommission: false,
        });
        journal.last_error = Some(ErrorRecord {
            message: "browser 2.0.0: healthCheck failed".into(),
            at: now,
        });
        journal.save(&dir).unwrap();
        crate::state::write_json(
            &dir.connection(),
            &ConnectionStatus {
                server: "http://controller:7130/".into(),
                last_error: Some(ErrorRecord {
                    message: "connection refused".into(),
                    at: now,
                }),
            },
            0o644,
        )
        .unwrap();

        let text = render(&dir, now).unwrap();
        assert!(text.contains("not enrolled"), "{text}");
        assert!(text.contains("revision 4 (3 packages)"), "{text}");
        assert!(
            text.lines().any(|line| line.contains("browser")
                && line.contains("1.0.0")
                && line.contains("0.9.0")
                && line.contains("Failed")),
            "{text}"
        );
        assert!(
            text.contains(
                "install browser 2.0.0 (replacing 1.0.0): failed 2 time(s), next attempt at"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "install kiosk 5.0.0: failed 1 time(s), not tried again until its assignment changes or an admin retries it: postInstall failed"
            ),
            "{text}"
        );
        assert!(text.contains("install vpn 1.0.0"), "{text}");
        assert!(text.contains("remove old-tool"), "{text}");
        assert!(text.contains("Last error:      2027-"), "{text}");
        assert!(text.contains("browser 2.0.0: healthCheck failed"), "{text}");
        assert!(
            text.contains(
                "Controller:      failing since 2027-01-15T08:00:00.000Z: connection refused"
            ),
            "{text}"
        );
    }

    #[test]
    fn status_shows_what_a_staged_change_waits_for() {
        use crate::engine::StagedChange;
        use tc_proto::activation::StagedWait;
        let temp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(temp.path());
        let now = Timestamp::from_unix_millis(1_800_000_000_000);
        let opens = now.plus(std::time::Duration::from_secs(3600));
        let mut journal = Journal::default();
        let mut kiosk = PackageRecord::new("2.0.0", now);
        kiosk.active = Some(version("1.0.0"));
        kiosk.staged = Some(StagedChange {
            version: Some("2.0.0".into()),
            sha256: "b".repeat(64),
            waiting_for: StagedWait::Window,
            activates_at: Some(opens),
            since: now,
            boot_id: None,
        });
        journal.packages.insert("kiosk".into(), kiosk);
        let mut old = PackageRecord::new("3.0.0", now);
        old.active = Some(version("3.0.0"));
        old.state = PackageState::Removing;
        old.staged = Some(StagedChange {
            version: None,
            sha256: String::new(),
            waiting_for: StagedWait::Reboot,
            activates_at: None,
            since: now,
            boot_id: Some("boot-1".into()),
        });
        journal.packages.insert("old-tool".into(), old);
        journal.desired = Some(DesiredState {
            activation: Default::default(),
            revision: 2,
            packages: vec![desired_package("kiosk", "2.0.0")],
            decommission: false,
        });
        journal.save(&dir).unwrap();

        let text = render(&dir, now).unwrap();
        assert!(
            text.contains(&format!(
                "install kiosk 2.0.0 (replacing 1.0.0): staged since {now}, waits for a maintenance window (opens at {opens})"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "remove old-tool: staged since {now}, waits for the next boot"
            )),
            "{text}"
        );
    }

    #[test]
    fn status_of_a_missing_state_directory_says_so() {
        let temp = tempfile::tempdir().unwrap();
        let missing = temp.path().join("nowhere");
        let error = render(&StateDir::new(&missing), Timestamp::now()).unwrap_err();
        assert!(
            matches!(error, StatusError::MissingStateDir { .. }),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            format!(
                "state directory {} does not exist; pass the --state-dir or --config the agent runs with",
                missing.display()
            )
        );
        let file = temp.path().join("file");
        std::fs::write(&file, "").unwrap();
        let error = render(&StateDir::new(&file), Timestamp::now()).unwrap_err();
        assert!(
            matches!(error, StatusError::NotADirectory { .. }),
            "{error}"
        );
    }

    #[test]
    fn status_of_an_empty_state_directory() {
        let temp = tempfile::tempdir().unwrap();
        let text = render(&StateDir::new(temp.path()), Timestamp::now()).unwrap();
        assert!(text.contains("not enrolled"), "{text}");
        assert!(text.contains("No packages installed yet."), "{text}");
    }
}
