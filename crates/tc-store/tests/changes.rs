//! The PostgreSQL store's change feed: what each write records, in the writing transaction only;
//! listeners on other stores woken at commit; pruning seen by readers; the URL recorded with the
//! leader lease.

mod common;

use std::time::{Duration, Instant};

use common::{LONG, group, take};
use tc_api::{Client, ClientSpec, ClientStatus, Kind, Object, Timestamp};
use tc_store::{
    Change, ClientStatusEntry, LeaseState, Liveness, PgStore, Store, StoreError, Write,
    WriteOutcome,
};
use tc_testkit::postgres::TestPostgres;

fn apply(store: &PgStore, object: Object) -> Result<Vec<WriteOutcome>, StoreError> {
    store.write(
        vec![Write::Apply {
            object,
            manager: "test".into(),
        }],
        Timestamp::now(),
    )
}

fn client(name: &str) -> Client {
    Client::new(
        name,
        ClientSpec {
            machine_id: format!("machine-{name}"),
            public_key: format!("key-{name}"),
            ..Default::default()
        },
    )
}

/// The changes after `after` as (kind, name), checking the page is complete.
fn kinds_and_names(store: &PgStore, after: u64) -> Vec<(String, String)> {
    let page = store.changes_after(after, 1000).unwrap();
    assert!(page.complete, "{page:?}");
    page.changes
        .into_iter()
        .map(|change| (change.kind, change.name))
        .collect()
}

fn pair(kind: &str, name: &str) -> (String, String) {
    (kind.to_string(), name.to_string())
}

#[test]
fn every_client_object_and_setting_write_records_its_changes_in_commit_order() {
    let server = TestPostgres::start();
    let store = PgStore::connect(&server.create_database()).unwrap();
    assert_eq!(store.latest_change().unwrap(), 0);
    let empty = store.changes_after(0, 10).unwrap();
    assert_eq!(
        (empty.changes.len(), empty.complete, empty.latest),
        (0, true, 0)
    );

    store
        .create_client(client("alpha"), Timestamp::now())
        .unwrap();
    store
        .create_clients(vec![client("beta"), client("gamma")], Timestamp::now())
        .unwrap();
    let recorded = store
        .put_client_status(vec![
            ClientStatusEntry {
                name: "gamma".into(),
                status: ClientStatus::default(),
            },
            ClientStatusEntry {
                name: "beta".into(),
                status: ClientStatus::default(),
            },
            // Not enrolled: nothing recorded, no change.
            ClientStatusEntry {
                name: "ghost".into(),
                status: ClientStatus::default(),
            },
        ])
        .unwrap();
    assert_eq!(recorded, 2);
    // Liveness alone is not a change.
    store
        .put_liveness(vec![Liveness {
            name: "alpha".into(),
            last_heartbeat: Timestamp::now(),
            load: tc_proto::Load::default(),
        }])
        .unwrap();
    let mut alpha = store.get_client("alpha").unwrap().unwrap();
    alpha
        .spec
        .agent_labels
        .insert("site".into(), "paris".into());
    store.put_clients(vec![alpha]).unwrap();
    apply(&store, group("front-desk")).unwrap();
    // Applying the same again writes nothing: no change.
    apply(&store, group("front-desk")).unwrap();
    store.put_setting("theme", Some("dark")).unwrap();
    // Deleting a setting that is not there changes nothing.
    store.put_setting("missing", None).unwrap();
    store.put_setting("theme", None).unwrap();
    store
        .write(
            vec![Write::Delete {
                kind: Kind::ClientGroup,
                name: "front-desk".into(),
                precondition: None,
            }],
            Timestamp::now(),
        )
        .unwrap();
    store.delete_client("beta").unwrap();
    // Deleting a client that is not there changes nothing.
    assert!(store.delete_client("beta").unwrap().is_none());
    store
        .announce("wake", &["alpha".to_string(), "gamma".to_string()])
        .unwrap();
    store.announce("wake", &[]).unwrap();

    let expected = vec![
        pair("client", "alpha"),
        pair("client", "beta"),
        pair("client", "gamma"),
        // A batch of statuses in name order, as it is written.
        pair("status", "beta"),
        pair("status", "gamma"),
        pair("client", "alpha"),
        pair("object", "ClientGroup/front-desk"),
        pair("setting", "theme"),
        pair("setting", "theme"),
        pair("object", "ClientGroup/front-desk"),
        pair("client", "beta"),
        pair("wake", "alpha"),
        pair("wake", "gamma"),
    ];
    assert_eq!(kinds_and_names(&store, 0), expected);
    // A status change carries the desired revision it recorded; no other kind has one.
    let revisions: Vec<(String, Option<u64>)> = store
        .changes_after(0, 1000)
        .unwrap()
        .changes
        .into_iter()
        .filter(|change| change.revision.is_some() || change.kind == "status")
        .map(|change| (change.name, change.revision))
        .collect();
    assert_eq!(
        revisions,
        [
            ("beta".to_string(), Some(0)),
            ("gamma".to_string(), Some(0))
        ]
    );

    // Numbers grow; the latest is the last one; reading after a number gives what follows it,
    // a limit the oldest first.
    let page = store.changes_after(0, 1000).unwrap();
    let seqs: Vec<u64> = page.changes.iter().map(|change| change.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(page.latest, *seqs.last().unwrap());
    assert_eq!(store.latest_change().unwrap(), page.latest);
    let after_fourth = store.changes_after(seqs[3], 2).unwrap();
    assert_eq!(
        after_fourth.changes,
        page.changes[4..6].to_vec(),
        "{after_fourth:?}"
    );
    assert!(after_fourth.complete);
    assert_eq!(after_fourth.latest, page.latest);
    let none = store.changes_after(page.latest, 10).unwrap();
    assert!(none.changes.is_empty() && none.complete);
}

#[test]
fn a_transaction_that_fails_records_no_change() {
    let server = TestPostgres::start();
    let url = server.create_database();
    let (a, b) = (
        PgStore::connect(&url).unwrap(),
        PgStore::connect(&url).unwrap(),
    );
    a.create_client(client("alpha"), Timestamp::now()).unwrap();
    let before = a.latest_change().unwrap();

    // Refused by the store: the name is taken, a precondition does not hold.
    assert!(matches!(
        a.create_clients(vec![client("beta"), client("alpha")], Timestamp::now()),
        Err(StoreError::AlreadyExists { .. })
    ));
    let mut stale = group("front-desk");
    if let Object::ClientGroup(group) = &mut stale {
        group.metadata.resource_version = Some("999".into());
    }
    assert!(matches!(apply(&a, stale), Err(StoreError::Conflict { .. })));
    assert!(kinds_and_names(&a, before).is_empty());

    // Fenced: a writes nothing, changes included, once b took the lease.
    let epoch = take(&a, "a", Duration::from_millis(300));
    a.fence("a", epoch);
    a.put_setting("k", Some("a")).unwrap();
    let fenced_ok = a.latest_change().unwrap();
    assert_eq!(
        kinds_and_names(&a, before),
        vec![pair("setting", "k")],
        "a fenced store that holds the lease records its changes"
    );
    let epoch_b = take(&b, "b", LONG);
    b.fence("b", epoch_b);
    assert!(matches!(
        a.put_setting("k", Some("late")),
        Err(StoreError::NotLeader(_))
    ));
    assert!(matches!(
        apply(&a, group("late")),
        Err(StoreError::NotLeader(_))
    ));
    assert!(matches!(
        a.announce("wake", &["alpha".to_string()]),
        Err(StoreError::NotLeader(_))
    ));
    assert!(kinds_and_names(&b, fenced_ok).is_empty());
    b.put_setting("k", Some("b")).unwrap();
    assert_eq!(kinds_and_names(&a, fenced_ok), vec![pair("setting", "k")]);
}

#[test]
fn a_listener_on_another_store_wakes_at_each_commit_and_times_out_when_nothing_is_written() {
    let server = TestPostgres::start();
    let url = server.create_database();
    let (writer, follower) = (
        PgStore::connect(&url).unwrap(),
        PgStore::connect(&url).unwrap(),
    );
    let mut listener = follower.listen().unwrap();
    let started = Instant::now();
    assert!(!listener.wait(Duration::from_millis(300)).unwrap());
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A write committed while the listener waits wakes it.
    let waiting = std::thread::spawn(move || {
        let started = Instant::now();
        let woke = listener.wait(Duration::from_secs(10)).unwrap();
        (listener, woke, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    let committed = Instant::now();
    writer.put_setting("k", Some("1")).unwrap();
    let (mut listener, woke, _) = waiting.join().unwrap();
    assert!(woke);
    assert!(
        committed.elapsed() < Duration::from_secs(1),
        "woken {:?} after the commit",
        committed.elapsed()
    );
    assert_eq!(
        kinds_and_names(&follower, 0),
        vec![pair("setting", "k")],
        "the follower reads what woke it"
    );

    // A write committed between waits is not lost: the next wait returns at once, once for
    // any number of commits.
    writer.put_setting("k", Some("2")).unwrap();
    writer
        .create_client(client("alpha"), Timestamp::now())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    assert!(listener.wait(Duration::from_secs(1)).unwrap());
    assert!(Instant::now() < deadline);
    // Writes that record no change notify nobody.
    writer
        .put_liveness(vec![Liveness {
            name: "alpha".into(),
            last_heartbeat: Timestamp::now(),
            load: tc_proto::Load::default(),
        }])
        .unwrap();
    writer.put_setting("missing", None).unwrap();
    // (The two commits above may have been heard as two notifications: drain the second.)
    let _ = listener.wait(Duration::from_millis(300)).unwrap();
    assert!(!listener.wait(Duration::from_millis(300)).unwrap());
    // A failed transaction notifies nobody either.
    assert!(
        writer
            .create_client(client("alpha"), Timestamp::now())
            .is_err()
    );
    assert!(!listener.wait(Duration::from_millis(300)).unwrap());
}

#[test]
fn pruned_changes_make_readers_behind_them_resync() {
    let server = TestPostgres::start();
    let store = PgStore::connect(&server.create_database()).unwrap();
    store.put_setting("a", Some("1")).unwrap();
    store.put_setting("b", Some("1")).unwrap();
    let first = store.changes_after(0, 1).unwrap().changes[0].seq;
    // Nothing is older than an hour.
    assert_eq!(store.prune_changes(Duration::from_secs(3600)).unwrap(), 0);
    assert!(store.changes_after(0, 10).unwrap().complete);

    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(store.prune_changes(Duration::ZERO).unwrap(), 2);
    let latest = store.latest_change().unwrap();
    assert!(
        latest > first,
        "the latest is kept when everything is pruned"
    );
    for after in [0, first] {
        let page = store.changes_after(after, 10).unwrap();
        assert!(!page.complete, "after {after}: {page:?}");
        assert!(page.changes.is_empty());
        assert_eq!(page.latest, latest);
    }
    let page = store.changes_after(latest, 10).unwrap();
    assert!(page.complete && page.changes.is_empty(), "{page:?}");

    // A reader that resynced goes on from the latest and misses nothing after it.
    store.put_setting("c", Some("1")).unwrap();
    let page = store.changes_after(latest, 10).unwrap();
    assert!(page.complete);
    assert_eq!(
        page.changes,
        vec![Change {
            seq: page.latest,
            kind: "setting".into(),
            name: "c".into(),
            revision: None,
        }]
    );
}

#[test]
fn a_listener_fails_when_its_server_stops_and_a_new_one_works_after_the_restart() {
    let mut server = TestPostgres::start();
    let url = server.create_database();
    let (writer, follower) = (
        PgStore::connect(&url).unwrap(),
        PgStore::connect(&url).unwrap(),
    );
    let mut listener = follower.listen().unwrap();
    server.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        match listener.wait(Duration::from_millis(500)) {
            Ok(false) if Instant::now() < deadline => {}
            Ok(other) => panic!("the listener never noticed the server stopped ({other})"),
            Err(error) => break error,
        }
    };
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    // It stays failed.
    assert!(matches!(
        listener.wait(Duration::from_millis(10)),
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(follower.listen(), Err(StoreError::Unavailable(_))));

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut listener = loop {
        match follower.listen() {
            Ok(listener) => break listener,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(other) => panic!("{other}"),
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match writer.put_setting("k", Some("after")) {
            Ok(()) => break,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert!(listener.wait(Duration::from_secs(5)).unwrap());
    assert_eq!(kinds_and_names(&follower, 0), vec![pair("setting", "k")]);
}

#[test]
fn the_lease_holder_records_where_it_serves_and_releasing_clears_it() {
    let server = TestPostgres::start();
    let url = server.create_database();
    let (a, b) = (
        PgStore::connect(&url).unwrap(),
        PgStore::connect(&url).unwrap(),
    );
    assert_eq!(b.leader().unwrap(), None);
    assert_eq!(
        a.acquire_lease_serving("a", Some("https://a.example:8443"), LONG)
            .unwrap(),
        LeaseState::Held { epoch: 1 }
    );
    assert_eq!(
        b.leader().unwrap(),
        Some(("a".to_string(), Some("https://a.example:8443".to_string())))
    );
    // Another replica trying to take it records nothing.
    assert!(matches!(
        b.acquire_lease_serving("b", Some("https://b.example:8443"), LONG)
            .unwrap(),
        LeaseState::HeldBy { holder, .. } if holder == "a"
    ));
    assert_eq!(
        a.leader().unwrap(),
        Some(("a".to_string(), Some("https://a.example:8443".to_string())))
    );
    // Renewing without a URL: the URL is unknown.
    assert_eq!(
        a.acquire_lease("a", LONG).unwrap(),
        LeaseState::Held { epoch: 1 }
    );
    assert_eq!(b.leader().unwrap(), Some(("a".to_string(), None)));
    a.acquire_lease_serving("a", Some("https://a.example:8443"), LONG)
        .unwrap();
    a.release_lease("a").unwrap();
    assert_eq!(b.leader().unwrap(), None);
    // b takes it and records its own; an expired lease has no leader.
    assert_eq!(
        b.acquire_lease_serving(
            "b",
            Some("https://b.example:8443"),
            Duration::from_millis(200)
        )
        .unwrap(),
        LeaseState::Held { epoch: 2 }
    );
    assert_eq!(
        a.leader().unwrap(),
        Some(("b".to_string(), Some("https://b.example:8443".to_string())))
    );
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(a.leader().unwrap(), None);
}

#[test]
fn a_reader_following_concurrent_writers_misses_no_change() {
    let server = TestPostgres::start();
    let url = server.create_database();
    let reader = PgStore::connect(&url).unwrap();
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let store = PgStore::connect(&url).unwrap();
            std::thread::spawn(move || {
                for n in 0..50 {
                    store
                        .put_setting(&format!("w{writer}-{n}"), Some("1"))
                        .unwrap();
                }
            })
        })
        .collect();
    // The reader goes on from the last number it read, as a follower does: numbers handed out
    // in commit order mean it never moves past a change that commits later.
    let mut seen = Vec::new();
    let mut after = 0;
    let mut read = |seen: &mut Vec<String>| {
        let page = reader.changes_after(after, 7).unwrap();
        assert!(page.complete);
        for change in page.changes {
            assert!(change.seq > after);
            after = change.seq;
            seen.push(change.name);
        }
    };
    while writers.iter().any(|writer| !writer.is_finished()) {
        read(&mut seen);
    }
    for writer in writers {
        writer.join().unwrap();
    }
    for _ in 0..100 {
        read(&mut seen);
    }
    seen.sort();
    let mut expected: Vec<String> = (0..4)
        .flat_map(|writer| (0..50).map(move |n| format!("w{writer}-{n}")))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[test]
fn followers_read_the_clients_and_desired_revisions_a_page_names_in_one_go() {
    let server = TestPostgres::start();
    let store = PgStore::connect(&server.create_database()).unwrap();
    store
        .create_clients(vec![client("beta"), client("alpha")], Timestamp::now())
        .unwrap();
    let status = ClientStatus {
        desired_revision: 7,
        ..ClientStatus::default()
    };
    let before = store.latest_change().unwrap();
    store
        .put_client_status(vec![ClientStatusEntry {
            name: "beta".into(),
            status,
        }])
        .unwrap();
    // The change itself says which revision beta was given.
    let page = store.changes_after(before, 10).unwrap();
    let recorded: Vec<(&str, &str, Option<u64>)> = page
        .changes
        .iter()
        .map(|c| (c.kind.as_str(), c.name.as_str(), c.revision))
        .collect();
    assert_eq!(recorded, [("status", "beta", Some(7))]);
    let names = ["beta", "ghost", "alpha"].map(String::from);
    let clients = store.clients_named(&names).unwrap();
    let found: Vec<(&str, u64)> = clients
        .iter()
        .map(|c| (c.metadata.name.as_str(), c.status.desired_revision))
        .collect();
    assert_eq!(found, [("alpha", 0), ("beta", 7)]);
    assert!(clients.iter().all(|c| c.metadata.uid.is_some()));
    // Unknown names are left out.
    assert_eq!(
        store.desired_revisions(&names).unwrap(),
        [("alpha".to_string(), 0), ("beta".to_string(), 7)]
    );
    assert!(store.clients_named(&[]).unwrap().is_empty());
}
