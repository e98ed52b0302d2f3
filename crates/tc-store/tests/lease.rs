//! The leader lease of replicas sharing one PostgreSQL database, and the fence that keeps a
//! replica that lost it from writing; and a server that goes away answered as "unavailable".

mod common;

use std::time::{Duration, Instant};

use common::{LONG, group, take};
use tc_api::{Kind, Timestamp};
use tc_store::{LeaseState, PgStore, Store, StoreError, Write};
use tc_testkit::postgres::TestPostgres;

fn put(store: &PgStore, name: &str) -> Result<u64, StoreError> {
    let outcome = store.write(
        vec![Write::Apply {
            object: group(name),
            manager: "test".into(),
        }],
        Timestamp::now(),
    )?;
    let version = match &outcome[0] {
        tc_store::WriteOutcome::Created(object) | tc_store::WriteOutcome::Configured(object) => {
            object.meta().resource_version.clone()
        }
        other => panic!("{other:?}"),
    };
    Ok(version.unwrap().parse().unwrap())
}

#[test]
fn one_holder_at_a_time_and_the_epoch_grows_with_each_new_holder() {
    let server = TestPostgres::start();
    let url = server.create_database();
    let (a, b) = (
        PgStore::connect(&url).unwrap(),
        PgStore::connect(&url).unwrap(),
    );
    assert_eq!(
        a.acquire_lease("a", LONG).unwrap(),
        LeaseState::Held { epoch: 1 }
    );
    match b.acquire_lease("b", LONG).unwrap() {
        LeaseState::HeldBy { holder, expires_in } => {
            assert_eq!(holder, "a");
            assert!(
                expires_in <= LONG && expires_in > Duration::from_secs(50),
                "{expires_in:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Renewing keeps the epoch.
    assert_eq!(
        a.acquire_lease("a", Duration::from_millis(300)).unwrap(),
        LeaseState::Held { epoch: 1 }
    );
    // Once a's lease expires, b takes it, one epoch on; a then finds it held by b.
    assert_eq!(take(&b, "b", LONG), 2);
    assert!(matches!(
        a.acquire_lease("a", LONG).unwrap(),
        LeaseState::HeldBy { holder, .. } if holder == "b"
    ));
    // Given up, it is free at once.
    b.release_lease("b").unwrap();
    assert_eq!(
        a.acquire_lease("a", LONG).unwrap(),
        LeaseState::Held { epoch: 3 }
    );
    // Giving up a lease one does not hold changes nothing.
    b.release_lease("b").unwrap();
    assert!(matches!(
        b.acquire_lease("b", LONG).unwrap(),
        LeaseState::HeldBy { holder, .. } if holder == "a"
    ));
    assert!(matches!(
        a.acquire_lease("", LONG),
        Err(StoreError::Database(message)) if message.contains("name")
    ));
}

#[test]
fn a_replica_that_lost_the_lease_writes_nothing_after_the_takeover() {
    let server = TestPostgres::start();
    let url = server.create_database();
    let (a, b) = (
        PgStore::connect(&url).unwrap(),
        PgStore::connect(&url).unwrap(),
    );
    let epoch = take(&a, "a", Duration::from_millis(500));
    a.fence("a", epoch);
    put(&a, "before").unwrap();
    // a keeps writing, never renewing (as a paused or cut-off leader would), while b waits for
    // the lease to expire, takes it and writes.
    let writer = std::thread::spawn(move || {
        let mut versions = Vec::new();
        for n in 0.. {
            match put(&a, &format!("a-{n}")) {
                Ok(version) => versions.push((format!("a-{n}"), version)),
                Err(StoreError::NotLeader(message)) => return (a, versions, message),
                Err(other) => panic!("{other}"),
            }
        }
        unreachable!()
    });
    let epoch_b = take(&b, "b", LONG);
    assert_eq!(epoch_b, epoch + 1);
    b.fence("b", epoch_b);
    let marker = put(&b, "b-marker").unwrap();
    let (a, versions, message) = writer.join().unwrap();
    assert!(
        message.contains("no longer leads") && message.contains("b took"),
        "{message}"
    );
    // Every write a committed came before the takeover; the one refused left nothing.
    for (_, version) in &versions {
        assert!(
            *version < marker,
            "a wrote version {version} after b's {marker}"
        );
    }
    let refused = format!("a-{}", versions.len());
    assert_eq!(b.get(Kind::ClientGroup, &refused).unwrap(), None);
    // Reads still work for the fenced replica; writes keep failing.
    assert!(a.get(Kind::ClientGroup, "b-marker").unwrap().is_some());
    assert!(matches!(
        a.put_setting("k", Some("v")),
        Err(StoreError::NotLeader(_))
    ));
    assert_eq!(b.get_setting("k").unwrap(), None);
}

#[test]
fn a_stopped_server_is_unavailable_and_the_store_resumes_when_it_is_back() {
    let mut server = TestPostgres::start();
    let url = server.create_database();
    let store = PgStore::connect(&url).unwrap();
    store.put_setting("k", Some("1")).unwrap();
    server.stop();
    let error = store.put_setting("k", Some("2")).unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(matches!(
        store.get_setting("k"),
        Err(StoreError::Unavailable(_))
    ));
    server.restart();
    // Each connection notices its loss at its next use and connects again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.put_setting("k", Some("3")) {
            Ok(()) => break,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(store.get_setting("k").unwrap().as_deref(), Some("3"));
}
