//! Behaviour of the redb store through the `Store` trait.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tc_api::{
    API_VERSION, Artifact, Client, ClientGroup, ClientGroupSpec, ClientGroupStatus, ClientPhase,
    ClientSpec, Event, EventType, Kind, Object, ObjectMeta, ObjectRef, PackageRelease,
    PackageReleaseSpec, Timestamp,
};
use tc_store::{
    EventFilter, Liveness, MACHINE_ID_KIND, RedbStore, Store, StoreError, Write, WriteOutcome,
};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Fixtures

fn db_path(dir: &TempDir) -> PathBuf {
    // A missing parent directory: `open` creates it.
    dir.path().join("data").join("thinfleet.redb")
}

fn open(dir: &TempDir) -> RedbStore {
    RedbStore::open(&db_path(dir)).expect("open store")
}

fn at(millis: u64) -> Timestamp {
    Timestamp::from_unix_millis(millis)
}

fn group(name: &str, priority: i32) -> Object {
    Object::ClientGroup(ClientGroup {
        api_version: API_VERSION.into(),
        kind: "ClientGroup".into(),
        metadata: ObjectMeta::named(name),
        spec: ClientGroupSpec {
            priority,
            ..Default::default()
        },
        status: None,
    })
}

fn release(name: &str, version: &str) -> Object {
    Object::PackageRelease(PackageRelease {
        api_version: API_VERSION.into(),
        kind: "PackageRelease".into(),
        metadata: ObjectMeta::named(name),
        spec: PackageReleaseSpec {
            package: "kiosk".into(),
            version: version.into(),
            artifact: Artifact {
                sha256: Some("ab".repeat(32)),
                ..Default::default()
            },
            hooks: Default::default(),
        },
        status: None,
    })
}

fn with_labels(mut object: Object, labels: &[(&str, &str)]) -> Object {
    object.meta_mut().labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    object
}

fn with_rv(mut object: Object, rv: &str) -> Object {
    object.meta_mut().resource_version = Some(rv.to_string());
    object
}

fn with_group_status(object: Object, desired: u32) -> Object {
    match object {
        Object::ClientGroup(mut group) => {
            group.status = Some(ClientGroupStatus {
                observed_generation: 1,
                desired,
                ..Default::default()
            });
            Object::ClientGroup(group)
        }
        other => other,
    }
}

fn group_status(object: &Object) -> Option<ClientGroupStatus> {
    match object {
        Object::ClientGroup(group) => group.status.clone(),
        Object::PackageRelease(_) => None,
    }
}

fn apply(object: Object, manager: &str) -> Write {
    Write::Apply {
        object,
        manager: manager.into(),
    }
}

fn delete(kind: Kind, name: &str, precondition: Option<&str>) -> Write {
    Write::Delete {
        kind,
        name: name.into(),
        precondition: precondition.map(str::to_string),
    }
}

fn write_one(store: &RedbStore, write: Write) -> Result<WriteOutcome, StoreError> {
    let mut outcomes = store.write(vec![write], at(1_000))?;
    assert_eq!(outcomes.len(), 1);
    Ok(outcomes.remove(0))
}

/// The object an outcome carries (panics for `Missing`).
fn carried(outcome: &WriteOutcome) -> &Object {
    match outcome {
        WriteOutcome::Created(object)
        | WriteOutcome::Configured(object)
        | WriteOutcome::Unchanged(object)
        | WriteOutcome::Deleted(object) => object,
        WriteOutcome::Missing => panic!("outcome carries no object"),
    }
}

fn outcome_name(outcome: &WriteOutcome) -> &'static str {
    match outcome {
        WriteOutcome::Created(_) => "created",
        WriteOutcome::Configured(_) => "configured",
        WriteOutcome::Unchanged(_) => "unchanged",
        WriteOutcome::Deleted(_) => "deleted",
        WriteOutcome::Missing => "missing",
    }
}

fn rv(object: &Object) -> String {
    object
        .meta()
        .resource_version
        .clone()
        .expect("stored objects have a resourceVersion")
}

fn client(name: &str, machine_id: &str) -> Client {
    Client::new(
        name,
        ClientSpec {
            machine_id: machine_id.into(),
            agent_labels: BTreeMap::from([("site".to_string(), "berlin".to_string())]),
            admin_labels: BTreeMap::new(),
        },
    )
}

fn event(kind: Kind, name: &str, reason: &str) -> Event {
    Event::new(
        at(5),
        ObjectRef::new(kind, name),
        EventType::Normal,
        reason,
        format!("{reason} happened to {name}"),
    )
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|event| event.seq).collect()
}

// ---------------------------------------------------------------------------------------------
// Durability

#[test]
fn reopen_keeps_objects_clients_tokens_events_settings_and_revision() {
    let dir = TempDir::new().unwrap();
    let (created, revision) = {
        let store = open(&dir);
        let outcomes = store
            .write(
                vec![
                    apply(group("front-desk", 1), "tcadm"),
                    apply(release("kiosk-1.0.0", "1.0.0"), "dir:/srv"),
                ],
                at(42),
            )
            .unwrap();
        store
            .create_client(client("kiosk-1", "machine-1"), "hash-1", at(43))
            .unwrap();
        store
            .append_events(vec![event(Kind::ClientGroup, "front-desk", "Created")])
            .unwrap();
        store.put_setting("bootstrap", Some("hash-b")).unwrap();
        (
            outcomes
                .iter()
                .map(|o| carried(o).clone())
                .collect::<Vec<_>>(),
            store.revision().unwrap(),
        )
    };
    assert_eq!(revision, 3, "two objects and one client were written");

    let store = open(&dir);
    assert_eq!(store.revision().unwrap(), revision);
    assert_eq!(
        store.get(Kind::ClientGroup, "front-desk").unwrap().as_ref(),
        Some(&created[0])
    );
    assert_eq!(
        store
            .get(Kind::PackageRelease, "kiosk-1.0.0")
            .unwrap()
            .as_ref(),
        Some(&created[1])
    );
    let stored = store.get_client("kiosk-1").unwrap().expect("client kept");
    assert_eq!(stored.metadata.creation_timestamp, Some(at(43)));
    assert_eq!(
        store
            .client_by_machine_id("machine-1")
            .unwrap()
            .map(|c| c.metadata.name),
        Some("kiosk-1".to_string())
    );
    assert_eq!(
        store.client_by_token_hash("hash-1").unwrap().as_deref(),
        Some("kiosk-1")
    );
    let events = store.list_events(&EventFilter::default()).unwrap();
    assert_eq!(seqs(&events), vec![1]);
    assert_eq!(events[0].reason, "Created");
    assert_eq!(
        store.get_setting("bootstrap").unwrap().as_deref(),
        Some("hash-b")
    );

    // The counter continues where it stopped rather than handing out a used version again.
    let outcome = write_one(&store, apply(group("lab", 0), "tcadm")).unwrap();
    assert_eq!(rv(carried(&outcome)), "4");
}

#[test]
fn open_refuses_a_file_that_is_not_a_database() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("garbage.redb");
    std::fs::write(
        &path,
        b"this is not a redb file, but it is long enough to look at",
    )
    .unwrap();
    match RedbStore::open(&path) {
        Err(StoreError::Database(message)) => {
            assert!(message.contains("garbage.redb"), "{message}")
        }
        other => panic!("expected a database error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The object write path

#[test]
fn failed_batch_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    store
        .write(
            vec![apply(group("a", 0), "tcadm"), apply(group("b", 0), "tcadm")],
            at(1),
        )
        .unwrap();
    let before_a = store.get(Kind::ClientGroup, "a").unwrap().unwrap();
    let before_b = store.get(Kind::ClientGroup, "b").unwrap().unwrap();
    let before_revision = store.revision().unwrap();

    let cases: Vec<(&str, Vec<Write>)> = vec![
        (
            "third write has a stale resourceVersion",
            vec![
                apply(group("a", 5), "tcadm"),
                apply(group("c", 0), "tcadm"),
                apply(with_rv(group("b", 5), "1"), "tcadm"),
            ],
        ),
        (
            "last write deletes a missing object with a precondition",
            vec![
                delete(Kind::ClientGroup, "a", None),
                apply(group("c", 0), "tcadm"),
                delete(Kind::ClientGroup, "gone", Some("7")),
            ],
        ),
        (
            "apply with a precondition on a missing object",
            vec![
                apply(group("c", 0), "tcadm"),
                apply(with_rv(group("d", 0), "1"), "tcadm"),
            ],
        ),
    ];
    for (case, writes) in cases {
        let error = store.write(writes, at(2)).expect_err(case);
        assert!(
            matches!(
                error,
                StoreError::Conflict { .. } | StoreError::NotFound { .. }
            ),
            "{case}: {error:?}"
        );
        assert_eq!(store.revision().unwrap(), before_revision, "{case}");
        assert_eq!(
            store.get(Kind::ClientGroup, "a").unwrap().as_ref(),
            Some(&before_a),
            "{case}"
        );
        assert_eq!(
            store.get(Kind::ClientGroup, "b").unwrap().as_ref(),
            Some(&before_b),
            "{case}"
        );
        assert_eq!(store.get(Kind::ClientGroup, "c").unwrap(), None, "{case}");
        assert_eq!(store.list(Kind::ClientGroup).unwrap().len(), 2, "{case}");
    }
}

#[test]
fn generation_rules() {
    struct Step {
        what: &'static str,
        object: Object,
        manager: &'static str,
        outcome: &'static str,
        generation: u64,
        rv_moves: bool,
    }
    let steps = [
        Step {
            what: "create",
            object: group("g", 1),
            manager: "tcadm",
            outcome: "created",
            generation: 1,
            rv_moves: true,
        },
        Step {
            what: "identical re-apply",
            object: group("g", 1),
            manager: "tcadm",
            outcome: "unchanged",
            generation: 1,
            rv_moves: false,
        },
        Step {
            what: "spec change",
            object: group("g", 2),
            manager: "tcadm",
            outcome: "configured",
            generation: 2,
            rv_moves: true,
        },
        Step {
            what: "labels-only change",
            object: with_labels(group("g", 2), &[("tier", "gold")]),
            manager: "tcadm",
            outcome: "configured",
            generation: 2,
            rv_moves: true,
        },
        Step {
            what: "annotations-only change",
            object: {
                let mut object = with_labels(group("g", 2), &[("tier", "gold")]);
                object
                    .meta_mut()
                    .annotations
                    .insert("note".into(), "x".into());
                object
            },
            manager: "tcadm",
            outcome: "configured",
            generation: 2,
            rv_moves: true,
        },
        Step {
            what: "manager change alone",
            object: {
                let mut object = with_labels(group("g", 2), &[("tier", "gold")]);
                object
                    .meta_mut()
                    .annotations
                    .insert("note".into(), "x".into());
                object
            },
            manager: "dir:/srv/manifests",
            outcome: "configured",
            generation: 2,
            rv_moves: true,
        },
        Step {
            what: "server-set metadata and status in the request are ignored",
            object: {
                let mut object = with_labels(group("g", 2), &[("tier", "gold")]);
                let meta = object.meta_mut();
                meta.annotations.insert("note".into(), "x".into());
                meta.uid = Some("forged".into());
                meta.generation = Some(99);
                meta.creation_timestamp = Some(at(7));
                meta.managed_by = Some("someone-else".into());
                with_group_status(object, 12)
            },
            manager: "dir:/srv/manifests",
            outcome: "unchanged",
            generation: 2,
            rv_moves: false,
        },
        Step {
            what: "removing labels and annotations",
            object: group("g", 2),
            manager: "dir:/srv/manifests",
            outcome: "configured",
            generation: 2,
            rv_moves: true,
        },
        Step {
            what: "second spec change",
            object: group("g", 3),
            manager: "dir:/srv/manifests",
            outcome: "configured",
            generation: 3,
            rv_moves: true,
        },
    ];

    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let mut previous: Option<Object> = None;
    for step in steps {
        let revision_before = store.revision().unwrap();
        let outcome = write_one(&store, apply(step.object.clone(), step.manager)).unwrap();
        assert_eq!(outcome_name(&outcome), step.outcome, "{}", step.what);
        let object = carried(&outcome).clone();
        let meta = object.meta();
        assert_eq!(meta.generation, Some(step.generation), "{}", step.what);
        assert_eq!(
            meta.managed_by.as_deref(),
            Some(step.manager),
            "{}",
            step.what
        );
        assert_eq!(meta.labels, step.object.meta().labels, "{}", step.what);
        assert_eq!(group_status(&object), None, "{}", step.what);
        assert_eq!(meta.creation_timestamp, Some(at(1_000)), "{}", step.what);
        if let Some(previous) = &previous {
            assert_eq!(meta.uid, previous.meta().uid, "{}: uid is fixed", step.what);
            assert_eq!(
                rv(&object) != rv(previous),
                step.rv_moves,
                "{}: resourceVersion",
                step.what
            );
        }
        let expected_revision = revision_before + u64::from(step.rv_moves);
        assert_eq!(
            store.revision().unwrap(),
            expected_revision,
            "{}",
            step.what
        );
        assert_eq!(rv(&object), expected_revision.to_string(), "{}", step.what);
        assert_eq!(
            store.get(Kind::ClientGroup, "g").unwrap().as_ref(),
            Some(&object),
            "{}: stored as returned",
            step.what
        );
        previous = Some(object);
    }
}

#[test]
fn uids_are_unique_and_survive_recreation_as_new_ones() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let outcomes = store
        .write(
            vec![
                apply(group("a", 0), "tcadm"),
                apply(group("b", 0), "tcadm"),
                apply(release("a", "1.0.0"), "tcadm"),
            ],
            at(9),
        )
        .unwrap();
    let mut uids: Vec<String> = outcomes
        .iter()
        .map(|o| carried(o).meta().uid.clone().unwrap())
        .collect();
    write_one(&store, delete(Kind::ClientGroup, "a", None)).unwrap();
    let recreated = store
        .write(vec![apply(group("a", 0), "tcadm")], at(9))
        .unwrap();
    uids.push(carried(&recreated[0]).meta().uid.clone().unwrap());
    let distinct: std::collections::BTreeSet<_> = uids.iter().collect();
    assert_eq!(distinct.len(), uids.len(), "{uids:?}");
}

#[test]
fn resource_version_preconditions() {
    // (what, precondition to send, expected outcome or error)
    let cases: [(&str, Option<&str>, &str); 4] = [
        ("stale", Some("1"), "conflict"),
        ("not a number", Some("abc"), "conflict"),
        ("current", Some("CURRENT"), "configured"),
        ("none", None, "configured"),
    ];
    for (what, precondition, expected) in cases {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        write_one(&store, apply(group("filler", 0), "tcadm")).unwrap();
        let created = write_one(&store, apply(group("g", 0), "tcadm")).unwrap();
        let current = rv(carried(&created));
        assert_eq!(current, "2");
        let mut object = group("g", 1);
        object.meta_mut().resource_version = precondition.map(|p| {
            if p == "CURRENT" {
                current.clone()
            } else {
                p.to_string()
            }
        });
        match (write_one(&store, apply(object, "tcadm")), expected) {
            (Ok(outcome), "configured") => {
                assert_eq!(outcome_name(&outcome), "configured", "{what}");
                assert_eq!(rv(carried(&outcome)), "3", "{what}");
            }
            (
                Err(StoreError::Conflict {
                    kind,
                    name,
                    expected: sent,
                    actual,
                }),
                "conflict",
            ) => {
                assert_eq!(
                    (kind.as_str(), name.as_str()),
                    ("ClientGroup", "g"),
                    "{what}"
                );
                assert_eq!(Some(sent.as_str()), precondition, "{what}");
                assert_eq!(actual, current, "{what}");
                assert_eq!(store.revision().unwrap(), 2, "{what}");
                let stored = store.get(Kind::ClientGroup, "g").unwrap().unwrap();
                assert_eq!(&stored, carried(&created), "{what}");
            }
            (other, _) => panic!("{what}: expected {expected}, got {other:?}"),
        }
    }
}

#[test]
fn precondition_on_a_missing_object_is_refused() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    match write_one(&store, apply(with_rv(group("g", 0), "1"), "tcadm")) {
        Err(StoreError::Conflict {
            actual, expected, ..
        }) => {
            assert_eq!(actual, "none");
            assert_eq!(expected, "1");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.get(Kind::ClientGroup, "g").unwrap(), None);
    assert_eq!(store.revision().unwrap(), 0);
}

#[test]
fn status_writes_keep_generation_and_survive_apply() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let created = carried(&write_one(&store, apply(group("g", 0), "tcadm")).unwrap()).clone();

    let outcome = write_one(
        &store,
        Write::Status {
            object: with_group_status(created.clone(), 4),
        },
    )
    .unwrap();
    assert_eq!(outcome_name(&outcome), "configured");
    let with_status = carried(&outcome).clone();
    assert_eq!(with_status.meta().generation, Some(1));
    assert_eq!(rv(&with_status), "2");
    assert_eq!(group_status(&with_status).map(|s| s.desired), Some(4));
    assert_eq!(
        store.get(Kind::ClientGroup, "g").unwrap().as_ref(),
        Some(&with_status)
    );

    // A status write only replaces the status: labels and spec in it are not taken.
    let mut sneaky = with_group_status(with_labels(group("g", 9), &[("x", "y")]), 5);
    sneaky.meta_mut().generation = Some(40);
    let outcome = write_one(&store, Write::Status { object: sneaky }).unwrap();
    let stored = carried(&outcome);
    assert_eq!(stored.spec_json(), created.spec_json());
    assert!(stored.meta().labels.is_empty());
    assert_eq!(stored.meta().generation, Some(1));
    assert_eq!(group_status(stored).map(|s| s.desired), Some(5));

    // An apply with a spec change keeps the stored status and ignores the one it carries.
    let outcome = write_one(&store, apply(with_group_status(group("g", 1), 99), "tcadm")).unwrap();
    let applied = carried(&outcome);
    assert_eq!(outcome_name(&outcome), "configured");
    assert_eq!(applied.meta().generation, Some(2));
    assert_eq!(group_status(applied).map(|s| s.desired), Some(5));
    let stored = store.get(Kind::ClientGroup, "g").unwrap().unwrap();
    assert_eq!(group_status(&stored).map(|s| s.desired), Some(5));
}

#[test]
fn status_write_of_missing_object_or_equal_status_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let created = carried(&write_one(&store, apply(group("g", 0), "tcadm")).unwrap()).clone();
    let with_status = carried(
        &write_one(
            &store,
            Write::Status {
                object: with_group_status(created, 3),
            },
        )
        .unwrap(),
    )
    .clone();
    let revision = store.revision().unwrap();

    let outcomes = store
        .write(
            vec![
                Write::Status {
                    object: with_group_status(group("g", 0), 3),
                },
                Write::Status {
                    object: with_group_status(group("gone", 0), 3),
                },
                // A resourceVersion is not a precondition for status writes.
                Write::Status {
                    object: with_rv(with_group_status(group("g", 0), 3), "1"),
                },
            ],
            at(5),
        )
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            WriteOutcome::Unchanged(with_status.clone()),
            WriteOutcome::Missing,
            WriteOutcome::Unchanged(with_status),
        ]
    );
    assert_eq!(store.revision().unwrap(), revision);
    assert_eq!(store.get(Kind::ClientGroup, "gone").unwrap(), None);
}

#[test]
fn deletes_with_and_without_precondition() {
    // (what, object exists, precondition, expected)
    let cases: [(&str, bool, Option<&str>, &str); 5] = [
        ("existing, no precondition", true, None, "deleted"),
        ("existing, right precondition", true, Some("1"), "deleted"),
        ("existing, stale precondition", true, Some("0"), "conflict"),
        ("missing, no precondition", false, None, "missing"),
        ("missing, precondition", false, Some("1"), "not found"),
    ];
    for (what, exists, precondition, expected) in cases {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let mut created = None;
        if exists {
            created = Some(
                carried(&write_one(&store, apply(release("r", "1.0.0"), "tcadm")).unwrap()).clone(),
            );
        }
        let before = store.revision().unwrap();
        let result = write_one(&store, delete(Kind::PackageRelease, "r", precondition));
        match (result, expected) {
            (Ok(WriteOutcome::Deleted(last)), "deleted") => {
                assert_eq!(Some(last), created, "{what}");
                assert_eq!(
                    store.get(Kind::PackageRelease, "r").unwrap(),
                    None,
                    "{what}"
                );
                assert_eq!(store.revision().unwrap(), before + 1, "{what}");
            }
            (Ok(WriteOutcome::Missing), "missing") => {
                assert_eq!(store.revision().unwrap(), before, "{what}");
            }
            (Err(StoreError::Conflict { actual, .. }), "conflict") => {
                assert_eq!(actual, "1", "{what}");
                assert_eq!(
                    store.get(Kind::PackageRelease, "r").unwrap(),
                    created,
                    "{what}"
                );
            }
            (Err(StoreError::NotFound { kind, name }), "not found") => {
                assert_eq!(
                    (kind.as_str(), name.as_str()),
                    ("PackageRelease", "r"),
                    "{what}"
                );
            }
            (other, _) => panic!("{what}: expected {expected}, got {other:?}"),
        }
    }
}

#[test]
fn a_batch_sees_its_own_earlier_writes() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let outcomes = store
        .write(
            vec![
                apply(group("g", 0), "tcadm"),
                apply(with_rv(group("g", 1), "1"), "tcadm"),
                Write::Status {
                    object: with_group_status(group("g", 1), 2),
                },
                apply(release("r", "1.0.0"), "tcadm"),
                delete(Kind::PackageRelease, "r", Some("4")),
                delete(Kind::PackageRelease, "r", None),
            ],
            at(3),
        )
        .unwrap();
    let names: Vec<_> = outcomes.iter().map(outcome_name).collect();
    assert_eq!(
        names,
        [
            "created",
            "configured",
            "configured",
            "created",
            "deleted",
            "missing"
        ]
    );
    let stored = store.get(Kind::ClientGroup, "g").unwrap().unwrap();
    assert_eq!(stored.meta().generation, Some(2));
    assert_eq!(rv(&stored), "3");
    assert_eq!(group_status(&stored).map(|s| s.desired), Some(2));
    assert_eq!(store.revision().unwrap(), 5);
}

#[test]
fn list_is_per_kind_and_sorted_by_name() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    store
        .write(
            vec![
                apply(group("b", 0), "tcadm"),
                apply(group("a-b", 0), "tcadm"),
                apply(group("ab", 0), "tcadm"),
                apply(group("a", 0), "tcadm"),
                apply(release("a", "1.0.0"), "tcadm"),
                apply(release("0", "1.0.0"), "tcadm"),
            ],
            at(1),
        )
        .unwrap();
    let names = |kind| -> Vec<String> {
        store
            .list(kind)
            .unwrap()
            .iter()
            .map(|o| o.name().to_string())
            .collect()
    };
    assert_eq!(names(Kind::ClientGroup), ["a", "a-b", "ab", "b"]);
    assert_eq!(names(Kind::PackageRelease), ["0", "a"]);
    assert!(store.list(Kind::Client).unwrap().is_empty());
    assert!(matches!(
        store.get(Kind::PackageRelease, "a").unwrap(),
        Some(Object::PackageRelease(_))
    ));
    assert_eq!(store.get(Kind::PackageRelease, "b").unwrap(), None);
}

#[test]
fn client_kind_is_refused_by_the_object_write_path() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    store
        .create_client(client("kiosk-1", "m1"), "h1", at(1))
        .unwrap();
    let result = store.write(vec![delete(Kind::Client, "kiosk-1", None)], at(2));
    assert!(matches!(result, Err(StoreError::Database(_))), "{result:?}");
    assert!(store.get_client("kiosk-1").unwrap().is_some());
}

#[test]
fn concurrent_writers_get_distinct_versions() {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(open(&dir));
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        let outcome =
                            write_one(&store, apply(group(&format!("g-{thread}-{i}"), 0), "t"))
                                .unwrap();
                        rv(carried(&outcome))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut versions: Vec<u64> = threads
        .into_iter()
        .flat_map(|thread| thread.join().unwrap())
        .map(|version| version.parse().unwrap())
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=40).collect::<Vec<u64>>());
    assert_eq!(store.revision().unwrap(), 40);
}

// ---------------------------------------------------------------------------------------------
// Clients

#[test]
fn create_client_assigns_server_fields_and_refuses_duplicates() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    write_one(&store, apply(group("g", 0), "tcadm")).unwrap();
    let created = store
        .create_client(client("kiosk-1", "machine-1"), "hash-1", at(77))
        .unwrap();
    assert_eq!(created.metadata.resource_version.as_deref(), Some("2"));
    assert_eq!(created.metadata.creation_timestamp, Some(at(77)));
    assert!(created.metadata.uid.is_some());
    assert_eq!(created.metadata.labels["site"], "berlin");
    assert_eq!(
        store.get_client("kiosk-1").unwrap().as_ref(),
        Some(&created)
    );

    // (what, name, machine id, token hash, expected AlreadyExists kind and name)
    let cases = [
        (
            "name taken",
            "kiosk-1",
            "machine-2",
            "hash-2",
            ("Client", "kiosk-1"),
        ),
        (
            "machine id taken",
            "kiosk-2",
            "machine-1",
            "hash-2",
            (MACHINE_ID_KIND, "machine-1"),
        ),
        (
            "token hash taken",
            "kiosk-2",
            "machine-2",
            "hash-1",
            (tc_store::CLIENT_TOKEN_KIND, "kiosk-1"),
        ),
    ];
    for (what, name, machine_id, token, (kind, holder)) in cases {
        match store.create_client(client(name, machine_id), token, at(78)) {
            Err(StoreError::AlreadyExists { kind: k, name: n }) => {
                assert_eq!((k.as_str(), n.as_str()), (kind, holder), "{what}");
            }
            other => panic!("{what}: expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(store.revision().unwrap(), 2, "{what}");
        assert_eq!(
            store.list_clients().unwrap(),
            vec![created.clone()],
            "{what}"
        );
        assert_eq!(
            store.client_by_token_hash("hash-2").unwrap(),
            None,
            "{what}"
        );
        assert!(
            store.client_by_machine_id("machine-2").unwrap().is_none(),
            "{what}"
        );
    }
}

#[test]
fn create_clients_enrols_a_batch_in_one_transaction_or_nothing() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    store
        .create_client(client("kiosk-0", "machine-0"), "hash-0", at(1))
        .unwrap();
    let batch: Vec<(Client, String)> = (1..=500)
        .map(|i| {
            (
                client(&format!("kiosk-{i}"), &format!("machine-{i}")),
                format!("hash-{i}"),
            )
        })
        .collect();
    let created = store.create_clients(batch, at(9)).unwrap();
    assert_eq!(created.len(), 500);
    // One new resourceVersion per client, in batch order, after the one before the batch.
    let versions: Vec<String> = created
        .iter()
        .map(|c| c.metadata.resource_version.clone().unwrap())
        .collect();
    let expected: Vec<String> = (2..=501).map(|v| v.to_string()).collect();
    assert_eq!(versions, expected);
    assert!(
        created
            .iter()
            .all(|c| c.metadata.creation_timestamp == Some(at(9)))
    );
    assert_eq!(store.revision().unwrap(), 501);
    assert_eq!(store.list_clients().unwrap().len(), 501);
    assert_eq!(
        store.client_by_token_hash("hash-250").unwrap().as_deref(),
        Some("kiosk-250")
    );
    assert_eq!(
        store
            .client_by_machine_id("machine-500")
            .unwrap()
            .map(|c| c.metadata.name),
        Some("kiosk-500".to_string())
    );
    assert_eq!(store.client_token_hashes().unwrap().len(), 501);
    assert!(store.create_clients(vec![], at(10)).unwrap().is_empty());
    assert_eq!(store.revision().unwrap(), 501);

    // (what, batch, expected AlreadyExists kind and name): a conflict with a stored client or
    // with an earlier member of the same batch fails the whole batch.
    let fresh = |i: usize| {
        (
            client(&format!("new-{i}"), &format!("new-machine-{i}")),
            format!("new-hash-{i}"),
        )
    };
    // (what, batch, expected AlreadyExists kind and name)
    type Case<'a> = (&'a str, Vec<(Client, String)>, (&'a str, &'a str));
    let cases: Vec<Case> = vec![
        (
            "stored name",
            vec![
                fresh(1),
                (client("kiosk-7", "new-machine-2"), "new-hash-2".into()),
            ],
            ("Client", "kiosk-7"),
        ),
        (
            "stored machine id",
            vec![
                fresh(1),
                (client("new-2", "machine-7"), "new-hash-2".into()),
            ],
            (MACHINE_ID_KIND, "machine-7"),
        ),
        (
            "stored token hash",
            vec![
                fresh(1),
                (client("new-2", "new-machine-2"), "hash-7".into()),
            ],
            (tc_store::CLIENT_TOKEN_KIND, "kiosk-7"),
        ),
        (
            "name twice in the batch",
            vec![
                fresh(1),
                (client("new-1", "new-machine-2"), "new-hash-2".into()),
            ],
            ("Client", "new-1"),
        ),
        (
            "machine id twice in the batch",
            vec![
                fresh(1),
                (client("new-2", "new-machine-1"), "new-hash-2".into()),
            ],
            (MACHINE_ID_KIND, "new-machine-1"),
        ),
        (
            "token hash twice in the batch",
            vec![
                fresh(1),
                (client("new-2", "new-machine-2"), "new-hash-1".into()),
            ],
            (tc_store::CLIENT_TOKEN_KIND, "new-1"),
        ),
    ];
    for (what, batch, (kind, holder)) in cases {
        match store.create_clients(batch, at(11)) {
            Err(StoreError::AlreadyExists { kind: k, name: n }) => {
                assert_eq!((k.as_str(), n.as_str()), (kind, holder), "{what}");
            }
            other => panic!("{what}: expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(store.revision().unwrap(), 501, "{what}");
        assert_eq!(store.list_clients().unwrap().len(), 501, "{what}");
        assert!(store.get_client("new-1").unwrap().is_none(), "{what}");
        assert_eq!(
            store.client_by_token_hash("new-hash-1").unwrap(),
            None,
            "{what}"
        );
        assert!(
            store
                .client_by_machine_id("new-machine-1")
                .unwrap()
                .is_none(),
            "{what}"
        );
    }
}

fn liveness(name: &str, millis: u64, cpu: f32) -> Liveness {
    Liveness {
        name: name.into(),
        last_heartbeat: at(millis),
        load: tc_proto::Load {
            cpu_percent: cpu,
            memory_used_bytes: millis * 10,
            uptime_seconds: millis / 1000,
        },
    }
}

fn seen(client: &Client) -> (Option<Timestamp>, f32) {
    (client.status.last_heartbeat, client.status.load.cpu_percent)
}

#[test]
fn liveness_is_recorded_apart_and_overlaid_on_reads() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(&dir);
        for (name, machine) in [("a", "ma"), ("b", "mb"), ("c", "mc")] {
            store
                .create_client(client(name, machine), &format!("t{name}"), at(1))
                .unwrap();
        }
        let revision = store.revision().unwrap();
        let written = store
            .put_liveness(vec![
                liveness("a", 5_000, 12.5),
                liveness("c", 6_000, 50.0),
                liveness("ghost", 7_000, 1.0),
            ])
            .unwrap();
        assert_eq!(written, 3);
        assert_eq!(
            store.revision().unwrap(),
            revision,
            "liveness takes no resourceVersion"
        );
        let a = store.get_client("a").unwrap().unwrap();
        assert_eq!(seen(&a), (Some(at(5_000)), 12.5));
        assert_eq!(a.status.load.memory_used_bytes, 50_000);
        assert_eq!(a.metadata.resource_version.as_deref(), Some("1"));
        let listed: Vec<_> = store.list_clients().unwrap().iter().map(seen).collect();
        assert_eq!(
            listed,
            vec![
                (Some(at(5_000)), 12.5),
                (None, 0.0),
                (Some(at(6_000)), 50.0)
            ]
        );
        assert_eq!(
            seen(&store.client_by_machine_id("mc").unwrap().unwrap()),
            (Some(at(6_000)), 50.0)
        );

        // A client written with a newer heartbeat of its own shows its own.
        let mut c = store.get_client("c").unwrap().unwrap();
        c.status.last_heartbeat = Some(at(9_000));
        c.status.load.cpu_percent = 70.0;
        store.put_clients(vec![c]).unwrap();
        assert_eq!(
            seen(&store.get_client("c").unwrap().unwrap()),
            (Some(at(9_000)), 70.0)
        );
        assert!(store.put_liveness(vec![]).unwrap() == 0);
    }
    // The record of a name without a client is not read, and a client created under that
    // name does not inherit it.
    let store = open(&dir);
    store.put_clients(vec![client("ghost", "mg")]).unwrap();
    assert_eq!(seen(&store.get_client("ghost").unwrap().unwrap()).0, None);
    drop(store);
    // Durable, and gone with the client.
    let store = open(&dir);
    assert_eq!(
        seen(&store.get_client("a").unwrap().unwrap()),
        (Some(at(5_000)), 12.5)
    );
    let deleted = store.delete_client("a").unwrap().unwrap();
    assert_eq!(seen(&deleted), (Some(at(5_000)), 12.5));
    store
        .create_client(client("a", "ma"), "ta2", at(10))
        .unwrap();
    assert_eq!(seen(&store.get_client("a").unwrap().unwrap()), (None, 0.0));
}

#[test]
fn client_tokens_and_retokening() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    store
        .create_client(client("kiosk-1", "machine-1"), "old", at(1))
        .unwrap();
    store
        .create_client(client("kiosk-2", "machine-2"), "other", at(1))
        .unwrap();
    assert_eq!(
        store.client_by_token_hash("old").unwrap().as_deref(),
        Some("kiosk-1")
    );
    assert_eq!(store.client_by_token_hash("nope").unwrap(), None);

    store.set_client_token("kiosk-1", "new").unwrap();
    assert_eq!(store.client_by_token_hash("old").unwrap(), None);
    assert_eq!(
        store.client_by_token_hash("new").unwrap().as_deref(),
        Some("kiosk-1")
    );
    // Setting the same token again is harmless.
    store.set_client_token("kiosk-1", "new").unwrap();
    assert_eq!(
        store.client_by_token_hash("new").unwrap().as_deref(),
        Some("kiosk-1")
    );

    assert!(matches!(
        store.set_client_token("kiosk-1", "other"),
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(
        store.client_by_token_hash("new").unwrap().as_deref(),
        Some("kiosk-1")
    );
    assert_eq!(
        store.client_by_token_hash("other").unwrap().as_deref(),
        Some("kiosk-2")
    );
    assert!(matches!(
        store.set_client_token("ghost", "ghost-token"),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.client_by_token_hash("ghost-token").unwrap(), None);
    // Tokens are not part of the client object: no resourceVersion moves.
    assert_eq!(store.revision().unwrap(), 2);
}

#[test]
fn delete_client_removes_it_and_its_indexes() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let created = store
        .create_client(client("kiosk-1", "machine-1"), "first", at(1))
        .unwrap();
    store.set_client_token("kiosk-1", "second").unwrap();

    assert_eq!(store.delete_client("kiosk-1").unwrap(), Some(created));
    assert_eq!(store.get_client("kiosk-1").unwrap(), None);
    assert!(store.client_by_machine_id("machine-1").unwrap().is_none());
    assert_eq!(store.client_by_token_hash("first").unwrap(), None);
    assert_eq!(store.client_by_token_hash("second").unwrap(), None);
    assert_eq!(store.delete_client("kiosk-1").unwrap(), None);

    // The machine id, the name and the token are free again.
    let again = store
        .create_client(client("kiosk-1", "machine-1"), "second", at(2))
        .unwrap();
    assert_eq!(
        store.client_by_machine_id("machine-1").unwrap().as_ref(),
        Some(&again)
    );
    assert_eq!(
        store.client_by_token_hash("second").unwrap().as_deref(),
        Some("kiosk-1")
    );
}

#[test]
fn put_clients_upserts_a_large_batch_in_one_call() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let created = store
        .create_client(client("kiosk-0000", "machine-0000"), "t0", at(1))
        .unwrap();

    let mut batch: Vec<Client> = (0..2_000)
        .map(|i| {
            let mut c = client(&format!("kiosk-{i:04}"), &format!("machine-{i:04}"));
            c.status.phase = ClientPhase::Online;
            c.status.last_heartbeat = Some(at(1_000 + i));
            c
        })
        .collect();
    // The caller's copy of an existing client may lack server-set fields; they are kept.
    batch[0].metadata.uid = None;
    let stored = store.put_clients(batch).unwrap();
    assert_eq!(stored.len(), 2_000);
    assert_eq!(store.revision().unwrap(), 2_001);
    assert_eq!(stored[0].metadata.uid, created.metadata.uid);
    assert_eq!(stored[0].metadata.creation_timestamp, Some(at(1)));
    assert_eq!(stored[0].metadata.resource_version.as_deref(), Some("2"));
    assert_eq!(
        stored[1_999].metadata.resource_version.as_deref(),
        Some("2001")
    );
    assert!(stored.iter().all(|c| c.metadata.uid.is_some()));

    let listed = store.list_clients().unwrap();
    assert_eq!(listed, stored, "sorted by name and stored as returned");
    assert_eq!(
        store
            .client_by_machine_id("machine-1234")
            .unwrap()
            .map(|c| c.metadata.name),
        Some("kiosk-1234".to_string())
    );
    assert_eq!(
        store.client_by_token_hash("t0").unwrap().as_deref(),
        Some("kiosk-0000")
    );
    assert_eq!(store.put_clients(Vec::new()).unwrap(), Vec::new());
    assert_eq!(store.revision().unwrap(), 2_001);
}

#[test]
fn put_clients_keeps_machine_ids_unique() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    store.create_client(client("a", "ma"), "ta", at(1)).unwrap();
    store.create_client(client("b", "mb"), "tb", at(1)).unwrap();

    // A new client with a taken machine id aborts the whole batch.
    let result = store.put_clients(vec![client("c", "mc"), client("d", "ma")]);
    assert!(
        matches!(&result, Err(StoreError::AlreadyExists { kind, name }) if kind == MACHINE_ID_KIND && name == "ma"),
        "{result:?}"
    );
    assert_eq!(store.get_client("c").unwrap(), None);
    assert!(store.client_by_machine_id("mc").unwrap().is_none());
    assert_eq!(store.revision().unwrap(), 2);

    // A changed machine id moves the index entry (the old one no longer finds the client).
    store.put_clients(vec![client("b", "mb2")]).unwrap();
    assert!(store.client_by_machine_id("mb").unwrap().is_none());
    assert_eq!(
        store
            .client_by_machine_id("mb2")
            .unwrap()
            .map(|c| c.metadata.name),
        Some("b".to_string())
    );
}

// ---------------------------------------------------------------------------------------------
// Events

#[test]
fn event_ring_keeps_the_newest_and_sequence_continues_after_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let store = RedbStore::open_with_event_capacity(&db_path(&dir), 5).unwrap();
        let first = store
            .append_events(
                (0..7)
                    .map(|i| event(Kind::Client, "k", &format!("E{i}")))
                    .collect(),
            )
            .unwrap();
        assert_eq!(seqs(&first), (1..=7).collect::<Vec<_>>());
        let second = store
            .append_events(
                (7..12)
                    .map(|i| event(Kind::Client, "k", &format!("E{i}")))
                    .collect(),
            )
            .unwrap();
        assert_eq!(seqs(&second), (8..=12).collect::<Vec<_>>());
        let kept = store.list_events(&EventFilter::default()).unwrap();
        assert_eq!(seqs(&kept), vec![8, 9, 10, 11, 12]);
        assert_eq!(kept[0].reason, "E7");
    }
    let store = RedbStore::open_with_event_capacity(&db_path(&dir), 5).unwrap();
    let appended = store
        .append_events(vec![event(Kind::Client, "k", "After")])
        .unwrap();
    assert_eq!(seqs(&appended), vec![13]);
    let kept = store.list_events(&EventFilter::default()).unwrap();
    assert_eq!(seqs(&kept), vec![9, 10, 11, 12, 13]);
    assert_eq!(kept[4].reason, "After");

    // A store reopened with a smaller capacity trims on its next append.
    drop(store);
    let store = RedbStore::open_with_event_capacity(&db_path(&dir), 2).unwrap();
    store
        .append_events(vec![event(Kind::Client, "k", "Small")])
        .unwrap();
    assert_eq!(
        seqs(&store.list_events(&EventFilter::default()).unwrap()),
        vec![13, 14]
    );
}

#[test]
fn event_filters_and_limit() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    // seq: 1 g/a, 2 client/a, 3 g/b, 4 g/a, 5 client/a, 6 g/a
    store
        .append_events(vec![
            event(Kind::ClientGroup, "a", "One"),
            event(Kind::Client, "a", "Two"),
            event(Kind::ClientGroup, "b", "Three"),
            event(Kind::ClientGroup, "a", "Four"),
            event(Kind::Client, "a", "Five"),
            event(Kind::ClientGroup, "a", "Six"),
        ])
        .unwrap();
    let filter = |kind: Option<&str>, name: Option<&str>, after: Option<u64>, limit| EventFilter {
        kind: kind.map(str::to_string),
        name: name.map(str::to_string),
        after_seq: after,
        limit,
    };
    let cases: Vec<(&str, EventFilter, Vec<u64>)> = vec![
        ("everything", EventFilter::default(), vec![1, 2, 3, 4, 5, 6]),
        (
            "by kind",
            filter(Some("Client"), None, None, None),
            vec![2, 5],
        ),
        (
            "by name",
            filter(None, Some("a"), None, None),
            vec![1, 2, 4, 5, 6],
        ),
        (
            "by kind and name",
            filter(Some("ClientGroup"), Some("a"), None, None),
            vec![1, 4, 6],
        ),
        ("after", filter(None, None, Some(4), None), vec![5, 6]),
        ("after the last", filter(None, None, Some(6), None), vec![]),
        (
            "after u64::MAX",
            filter(None, None, Some(u64::MAX), None),
            vec![],
        ),
        (
            "limit keeps the newest",
            filter(None, None, None, Some(2)),
            vec![5, 6],
        ),
        (
            "limit with filter",
            filter(Some("ClientGroup"), Some("a"), None, Some(2)),
            vec![4, 6],
        ),
        (
            "limit with after",
            filter(None, Some("a"), Some(1), Some(10)),
            vec![2, 4, 5, 6],
        ),
        ("limit zero", filter(None, None, None, Some(0)), vec![]),
        (
            "unknown kind",
            filter(Some("Nope"), None, None, None),
            vec![],
        ),
    ];
    for (what, filter, expected) in cases {
        let events = store.list_events(&filter).unwrap();
        assert_eq!(seqs(&events), expected, "{what}");
    }
}

#[test]
fn empty_event_append_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    assert!(store.append_events(Vec::new()).unwrap().is_empty());
    let appended = store
        .append_events(vec![event(Kind::Client, "k", "X")])
        .unwrap();
    assert_eq!(seqs(&appended), vec![1]);
}

// ---------------------------------------------------------------------------------------------
// Settings

#[test]
fn settings_are_set_replaced_and_removed() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    assert_eq!(store.get_setting("k").unwrap(), None);
    store.put_setting("k", Some("1")).unwrap();
    store.put_setting("k", Some("2")).unwrap();
    store.put_setting("other", Some("x")).unwrap();
    assert_eq!(store.get_setting("k").unwrap().as_deref(), Some("2"));
    store.put_setting("k", None).unwrap();
    store.put_setting("never-set", None).unwrap();
    assert_eq!(store.get_setting("k").unwrap(), None);
    assert_eq!(store.get_setting("other").unwrap().as_deref(), Some("x"));
    assert_eq!(
        store.revision().unwrap(),
        0,
        "settings are not versioned objects"
    );
}
