//! Tests of the state directory, the credentials and the journal.

use super::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn credentials_are_written_mode_0600_and_read_back() {
    let temp = tempfile::tempdir().unwrap();
    let dir = StateDir::new(temp.path().join("state"));
    dir.create().unwrap();
    let credentials = Credentials {
        server: "http://127.0.0.1:7130".into(),
        machine_id: "abc".into(),
        client_name: "kiosk-1".into(),
        public_key: "key".into(),
        session: Some(Session {
            token: "secret".into(),
            expires_at: Timestamp::from_unix_millis(2),
        }),
        client_token: None,
        enrolled_at: Timestamp::from_unix_millis(1),
    };
    assert!(!format!("{credentials:?}").contains("secret"));
    credentials.save(&dir).unwrap();
    let mode = fs::metadata(dir.credentials())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(Credentials::load(&dir).unwrap(), Some(credentials));
    let root_mode = fs::metadata(dir.root()).unwrap().permissions().mode();
    assert_eq!(root_mode & 0o777, 0o700);
}

#[test]
fn credentials_of_agents_before_identities_are_read_with_their_client_token() {
    let temp = tempfile::tempdir().unwrap();
    let dir = StateDir::new(temp.path());
    fs::write(
        dir.credentials(),
        r#"{"server":"http://c/","machineId":"m","clientName":"k","clientToken":"old","enrolledAt":"2026-11-22T00:00:00Z"}"#,
    )
    .unwrap();
    let credentials = Credentials::load(&dir).unwrap().unwrap();
    assert_eq!(credentials.bearer(), Some("old"));
    assert!(credentials.public_key.is_empty());
}

#[test]
fn corrupt_credentials_are_set_aside_not_fatal() {
    let temp = tempfile::tempdir().unwrap();
    let dir = StateDir::new(temp.path());
    fs::write(dir.credentials(), b"{ not json").unwrap();
    assert!(Credentials::load(&dir).is_err());
    assert_eq!(Credentials::load_or_set_aside(&dir).unwrap(), None);
    assert!(!dir.credentials().exists());
    assert_eq!(
        fs::read(dir.credentials().with_extension("json.corrupt")).unwrap(),
        b"{ not json"
    );
}

#[test]
fn atomic_write_replaces_content_and_leaves_no_temporary_file() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("state.json");
    write_atomic(&path, b"one", 0o600).unwrap();
    write_atomic(&path, b"two", 0o600).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"two");
    let names: Vec<_> = fs::read_dir(temp.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
}

#[test]
fn journal_round_trips_with_an_operation_in_progress() {
    let temp = tempfile::tempdir().unwrap();
    let dir = StateDir::new(temp.path());
    let mut journal = Journal::default();
    let mut record = PackageRecord::new("1.0.0", Timestamp::from_unix_millis(5));
    record.operation = Some(Operation::Install {
        target: VersionRecord {
            version: "1.0.0".into(),
            sha256: "ab".into(),
            hooks: Hooks::default(),
            hooks_unknown: false,
        },
        step: InstallStep::Activate,
        reason: None,
        cause: None,
        attempt: 2,
    });
    journal.packages.insert("kiosk".into(), record);
    journal.save(&dir).unwrap();
    assert_eq!(Journal::load(&dir).unwrap(), Some(journal));
}

#[test]
fn journal_of_the_previous_agent_loads_with_its_failures_unrecorded() {
    // As the agent before failure causes and attempts wrote it: a failed install waiting
    // for its backoff, and another package in the middle of a rollback.
    let temp = tempfile::tempdir().unwrap();
    let dir = StateDir::new(temp.path());
    let sha = "c".repeat(64);
    fs::write(
        dir.journal(),
        format!(
            r#"{{
  "format": 1,
  "observedRevision": 3,
  "packages": {{
"kiosk": {{
  "active": {{ "version": "1.0.0", "sha256": "{sha}" }},
  "state": "Failed",
  "version": "2.0.0",
  "message": "healthCheck failed; rolled back to 1.0.0",
  "since": "2026-11-02T10:00:00.000Z",
  "failure": {{
    "action": "install",
    "version": "2.0.0",
    "sha256": "{sha}",
    "attempts": 2,
    "retryAt": "2026-11-02T10:01:00.000Z"
  }}
}},
"vpn": {{
  "state": "Installing",
  "version": "1.0.0",
  "since": "2026-11-02T10:00:00.000Z",
  "operation": {{
    "kind": "install",
    "target": {{ "version": "1.0.0", "sha256": "{sha}" }},
    "step": "roll-back",
    "reason": "postInstall failed"
  }}
}}
  }}
}}"#
        ),
    )
    .unwrap();
    let journal = Journal::load(&dir).unwrap().unwrap();
    let failure = journal.packages["kiosk"].failure.clone().unwrap();
    assert_eq!(failure.cause, FailureCause::Unrecorded);
    assert_eq!(failure.attempt, 0);
    assert_eq!(failure.attempts, 2);
    assert_eq!(
        failure.retry_after(),
        Some(failure.retry_at),
        "retried when its backoff ends"
    );
    assert!(failure.is_install_of("2.0.0", &sha, 0));
    assert!(!failure.is_install_of("2.0.0", &sha, 1));
    match &journal.packages["vpn"].operation {
        Some(Operation::Install {
            step,
            cause,
            attempt,
            ..
        }) => {
            assert_eq!(*step, InstallStep::RollBack);
            assert_eq!(*cause, None);
            assert_eq!(*attempt, 0);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn journal_from_a_newer_agent_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let dir = StateDir::new(temp.path());
    fs::write(dir.journal(), r#"{"format": 99}"#).unwrap();
    let error = Journal::load(&dir).unwrap_err();
    assert!(error.to_string().contains("format 99"), "{error}");
}

#[test]
fn set_state_moves_since_only_on_change() {
    let mut record = PackageRecord::new("1.0.0", Timestamp::from_unix_millis(1));
    record.set_state(
        PackageState::Installing,
        "1.0.0",
        None,
        Timestamp::from_unix_millis(2),
    );
    assert_eq!(record.since, Timestamp::from_unix_millis(1));
    record.set_state(
        PackageState::Installed,
        "1.0.0",
        None,
        Timestamp::from_unix_millis(3),
    );
    assert_eq!(record.since, Timestamp::from_unix_millis(3));
}
