//! Unit tests of the engine's pure parts.

use super::*;

fn package(name: &str, version: &str, sha256: &str) -> DesiredPackage {
    DesiredPackage {
        name: name.into(),
        version: version.into(),
        sha256: sha256.into(),
        size: 1,
        url: "/blobs/sha256/x".into(),
        hooks: Default::default(),
        attempt: 0,
        signature: None,
    }
}

#[test]
fn validation_refuses_what_would_escape_the_state_directory() {
    let sha = "a".repeat(64);
    assert_eq!(validate(&package("kiosk", "1.4.2+build.7", &sha)), Ok(()));
    for (name, version, sha256) in [
        ("../etc", "1.0.0", sha.as_str()),
        ("kiosk", "../../x", sha.as_str()),
        ("kiosk", "current", sha.as_str()),
        ("kiosk", ".hidden", sha.as_str()),
        ("kiosk", "", sha.as_str()),
        ("kiosk", "1.0.0", "../../../etc/passwd"),
        ("a/b", "1.0.0", sha.as_str()),
    ] {
        assert!(
            validate(&package(name, version, sha256)).is_err(),
            "{name} {version} {sha256}"
        );
    }
}

#[test]
fn download_failures_back_off_release_failures_wait_for_a_new_attempt_and_crashes_retry_at_once_a_few_times()
 {
    let now = Timestamp::from_unix_millis(1_000_000);
    let retry = Backoff::new(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_secs(3600),
    );
    let target = VersionRecord {
        version: "2.0.0".into(),
        sha256: "b".repeat(64),
        hooks: Default::default(),
        hooks_unknown: false,
    };
    let record_install = |record: &mut PackageRecord, attempt, cause| {
        record_failure(
            record,
            FailedAction::Install,
            &target,
            attempt,
            cause,
            retry,
            now,
        );
        record.failure.clone().unwrap()
    };

    let mut download = PackageRecord::new("2.0.0", now);
    let failure = record_install(&mut download, 0, FailureCause::Download);
    assert_eq!(failure.attempts, 1);
    assert!(failure.retry_at >= now.plus(std::time::Duration::from_secs(15)));
    assert_eq!(failure.retry_after(), Some(failure.retry_at));
    assert!(waiting(&download, FailedAction::Install, now));
    assert!(!waiting(&download, FailedAction::Remove, now));

    let mut broken = PackageRecord::new("2.0.0", now);
    let failure = record_install(&mut broken, 0, FailureCause::Package);
    assert_eq!(
        failure.retry_after(),
        None,
        "a failed release is not retried"
    );
    assert!(
        failure.retry_at > now,
        "older agents reading the journal still back off"
    );
    let failure = record_install(&mut broken, 0, FailureCause::Package);
    assert_eq!(failure.attempts, 2);
    let failure = record_install(&mut broken, 1, FailureCause::Package);
    assert_eq!(failure.attempts, 1, "a new attempt counts from one");
    assert_eq!(failure.attempt, 1);

    let mut crashed = PackageRecord::new("2.0.0", now);
    for attempt in 1..=IMMEDIATE_RETRIES_AFTER_CRASH {
        let failure = record_install(&mut crashed, 0, FailureCause::Interrupted);
        assert_eq!(failure.attempts, attempt);
        assert_eq!(failure.cause, FailureCause::Interrupted);
        assert_eq!(failure.retry_after(), Some(now));
    }
    let failure = record_install(&mut crashed, 0, FailureCause::Interrupted);
    assert_eq!(failure.cause, FailureCause::Package);
    assert_eq!(failure.retry_after(), None);

    let mut removal = PackageRecord::new("2.0.0", now);
    record_failure(
        &mut removal,
        FailedAction::Remove,
        &target,
        0,
        FailureCause::Package,
        retry,
        now,
    );
    assert!(
        removal.failure.unwrap().retry_after().is_some(),
        "a failed removal is retried"
    );
}
