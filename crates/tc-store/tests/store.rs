//! Behaviour of the stores through the `Store` trait: every test generic over [`Backend`] runs
//! against each backend (see the `conformance!` list at the end); the tests of the redb file's
//! own layout and upgrades are redb's alone.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::redb::{Database, ReadableDatabase, TableDefinition};
use tc_api::{
    API_VERSION, Artifact, AssignedPackage, Client, ClientGroup, ClientGroupSpec,
    ClientGroupStatus, ClientPhase, ClientSpec, ClientStatus, Condition, ConditionStatus, Event,
    EventType, Inventory, Kind, Object, ObjectMeta, ObjectRef, PackageRelease, PackageReleaseSpec,
    PackageReport, PackageState, Timestamp,
};
use tc_store::{
    ClientStatusEntry, EventFilter, Liveness, PUBLIC_KEY_KIND, RedbStore, Store, StoreError, Write,
    WriteOutcome,
};
use tempfile::TempDir;

use common::Backend;

// ---------------------------------------------------------------------------------------------
// Fixtures

fn db_path(dir: &TempDir) -> PathBuf {
    // A missing parent directory: `open` creates it.
    common::redb_path(dir)
}

fn open_redb(dir: &TempDir) -> Box<dyn Store> {
    common::Redb::open(dir)
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
        _ => None,
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

fn write_one(store: &dyn Store, write: Write) -> Result<WriteOutcome, StoreError> {
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

/// A client whose public key is `key-NAME`.
fn client(name: &str, machine_id: &str) -> Client {
    keyed(name, machine_id, &format!("key-{name}"))
}

fn keyed(name: &str, machine_id: &str, public_key: &str) -> Client {
    Client::new(
        name,
        ClientSpec {
            machine_id: machine_id.into(),
            public_key: public_key.into(),
            agent_labels: BTreeMap::from([("site".to_string(), "berlin".to_string())]),
            ..Default::default()
        },
    )
}

/// The names of the clients enrolled with a machine id.
fn names_of_machine(store: &dyn Store, machine_id: &str) -> Vec<String> {
    store
        .clients_by_machine_id(machine_id)
        .unwrap()
        .into_iter()
        .map(|c| c.metadata.name)
        .collect()
}

/// The name of the client holding a key.
fn holder_of_key(store: &dyn Store, key: &str) -> Option<String> {
    store
        .client_by_public_key(key)
        .unwrap()
        .map(|c| c.metadata.name)
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

fn reopen_keeps_objects_clients_keys_events_settings_and_revision<B: Backend>() {
    let dir = B::place();
    let (created, revision) = {
        let store = B::open(&dir);
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
            .create_client(client("kiosk-1", "machine-1"), at(43))
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

    let store = B::open(&dir);
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
    assert_eq!(names_of_machine(&*store, "machine-1"), ["kiosk-1"]);
    assert_eq!(
        holder_of_key(&*store, "key-kiosk-1").as_deref(),
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
    let outcome = write_one(&*store, apply(group("lab", 0), "tcadm")).unwrap();
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

fn failed_batch_writes_nothing<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
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

fn generation_rules<B: Backend>() {
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

    let dir = B::place();
    let store = B::open(&dir);
    let mut previous: Option<Object> = None;
    for step in steps {
        let revision_before = store.revision().unwrap();
        let outcome = write_one(&*store, apply(step.object.clone(), step.manager)).unwrap();
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

fn uids_are_unique_and_survive_recreation_as_new_ones<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
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
    write_one(&*store, delete(Kind::ClientGroup, "a", None)).unwrap();
    let recreated = store
        .write(vec![apply(group("a", 0), "tcadm")], at(9))
        .unwrap();
    uids.push(carried(&recreated[0]).meta().uid.clone().unwrap());
    let distinct: std::collections::BTreeSet<_> = uids.iter().collect();
    assert_eq!(distinct.len(), uids.len(), "{uids:?}");
}

fn resource_version_preconditions<B: Backend>() {
    // (what, precondition to send, expected outcome or error)
    let cases: [(&str, Option<&str>, &str); 4] = [
        ("stale", Some("1"), "conflict"),
        ("not a number", Some("abc"), "conflict"),
        ("current", Some("CURRENT"), "configured"),
        ("none", None, "configured"),
    ];
    for (what, precondition, expected) in cases {
        let dir = B::place();
        let store = B::open(&dir);
        write_one(&*store, apply(group("filler", 0), "tcadm")).unwrap();
        let created = write_one(&*store, apply(group("g", 0), "tcadm")).unwrap();
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
        match (write_one(&*store, apply(object, "tcadm")), expected) {
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

fn precondition_on_a_missing_object_is_refused<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    match write_one(&*store, apply(with_rv(group("g", 0), "1"), "tcadm")) {
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

fn status_writes_keep_generation_and_survive_apply<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    let created = carried(&write_one(&*store, apply(group("g", 0), "tcadm")).unwrap()).clone();

    let outcome = write_one(
        &*store,
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
    let outcome = write_one(&*store, Write::Status { object: sneaky }).unwrap();
    let stored = carried(&outcome);
    assert_eq!(stored.spec_json(), created.spec_json());
    assert!(stored.meta().labels.is_empty());
    assert_eq!(stored.meta().generation, Some(1));
    assert_eq!(group_status(stored).map(|s| s.desired), Some(5));

    // An apply with a spec change keeps the stored status and ignores the one it carries.
    let outcome = write_one(
        &*store,
        apply(with_group_status(group("g", 1), 99), "tcadm"),
    )
    .unwrap();
    let applied = carried(&outcome);
    assert_eq!(outcome_name(&outcome), "configured");
    assert_eq!(applied.meta().generation, Some(2));
    assert_eq!(group_status(applied).map(|s| s.desired), Some(5));
    let stored = store.get(Kind::ClientGroup, "g").unwrap().unwrap();
    assert_eq!(group_status(&stored).map(|s| s.desired), Some(5));
}

fn status_write_of_missing_object_or_equal_status_writes_nothing<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    let created = carried(&write_one(&*store, apply(group("g", 0), "tcadm")).unwrap()).clone();
    let with_status = carried(
        &write_one(
            &*store,
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

fn deletes_with_and_without_precondition<B: Backend>() {
    // (what, object exists, precondition, expected)
    let cases: [(&str, bool, Option<&str>, &str); 5] = [
        ("existing, no precondition", true, None, "deleted"),
        ("existing, right precondition", true, Some("1"), "deleted"),
        ("existing, stale precondition", true, Some("0"), "conflict"),
        ("missing, no precondition", false, None, "missing"),
        ("missing, precondition", false, Some("1"), "not found"),
    ];
    for (what, exists, precondition, expected) in cases {
        let dir = B::place();
        let store = B::open(&dir);
        let mut created = None;
        if exists {
            created = Some(
                carried(&write_one(&*store, apply(release("r", "1.0.0"), "tcadm")).unwrap())
                    .clone(),
            );
        }
        let before = store.revision().unwrap();
        let result = write_one(&*store, delete(Kind::PackageRelease, "r", precondition));
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

fn a_batch_sees_its_own_earlier_writes<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
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

fn list_is_per_kind_and_sorted_by_name<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
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

fn client_kind_is_refused_by_the_object_write_path<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    store.create_client(client("kiosk-1", "m1"), at(1)).unwrap();
    let result = store.write(vec![delete(Kind::Client, "kiosk-1", None)], at(2));
    assert!(matches!(result, Err(StoreError::Database(_))), "{result:?}");
    assert!(store.get_client("kiosk-1").unwrap().is_some());
}

fn concurrent_writers_get_distinct_versions<B: Backend>() {
    let dir = B::place();
    let store = Arc::new(B::open(&dir));
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        let outcome =
                            write_one(&**store, apply(group(&format!("g-{thread}-{i}"), 0), "t"))
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

fn create_client_assigns_server_fields_and_refuses_duplicates<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    write_one(&*store, apply(group("g", 0), "tcadm")).unwrap();
    let created = store
        .create_client(client("kiosk-1", "machine-1"), at(77))
        .unwrap();
    assert_eq!(created.metadata.resource_version.as_deref(), Some("2"));
    assert_eq!(created.metadata.creation_timestamp, Some(at(77)));
    assert!(created.metadata.uid.is_some());
    assert_eq!(created.metadata.labels["site"], "berlin");
    assert_eq!(
        store.get_client("kiosk-1").unwrap().as_ref(),
        Some(&created)
    );

    // (what, client, expected AlreadyExists kind and name)
    let cases = [
        (
            "name taken",
            keyed("kiosk-1", "machine-2", "key-2"),
            ("Client", "kiosk-1"),
        ),
        (
            "key taken",
            keyed("kiosk-2", "machine-2", "key-kiosk-1"),
            (PUBLIC_KEY_KIND, "kiosk-1"),
        ),
    ];
    for (what, new, (kind, holder)) in cases {
        match store.create_client(new, at(78)) {
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
        assert_eq!(holder_of_key(&*store, "key-2"), None, "{what}");
        assert!(names_of_machine(&*store, "machine-2").is_empty(), "{what}");
    }

    // A machine id is not unique: a cloned image approved as a client of its own shares it.
    let clone = store
        .create_client(keyed("kiosk-1-clone", "machine-1", "key-clone"), at(79))
        .unwrap();
    assert_eq!(
        names_of_machine(&*store, "machine-1"),
        ["kiosk-1", "kiosk-1-clone"]
    );
    assert_eq!(store.clients_by_machine_id("machine-1").unwrap()[1], clone);
    // A machine id that is a prefix of another finds only its own clients.
    store
        .create_client(keyed("kiosk-9", "machine-10", "key-9"), at(80))
        .unwrap();
    assert!(names_of_machine(&*store, "machine-").is_empty());
    assert_eq!(names_of_machine(&*store, "machine-10"), ["kiosk-9"]);
    // A client without a key (enrolled before identities) is found by none.
    store
        .create_client(keyed("old", "machine-old", ""), at(81))
        .unwrap();
    assert_eq!(holder_of_key(&*store, ""), None);
    // A uid the client carries (a bulk import) is kept.
    let mut imported = client("imported", "machine-imported");
    imported.metadata.uid = Some("00000000-0000-0000-0000-000000000042".into());
    let imported = store.create_client(imported, at(82)).unwrap();
    assert_eq!(
        imported.metadata.uid.as_deref(),
        Some("00000000-0000-0000-0000-000000000042")
    );
}

fn create_clients_enrols_a_batch_in_one_transaction_or_nothing<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    store
        .create_client(client("kiosk-0", "machine-0"), at(1))
        .unwrap();
    let batch: Vec<Client> = (1..=500)
        .map(|i| client(&format!("kiosk-{i}"), &format!("machine-{i}")))
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
        holder_of_key(&*store, "key-kiosk-250").as_deref(),
        Some("kiosk-250")
    );
    assert_eq!(names_of_machine(&*store, "machine-500"), ["kiosk-500"]);
    assert!(store.create_clients(vec![], at(10)).unwrap().is_empty());
    assert_eq!(store.revision().unwrap(), 501);

    // A conflict with a stored client or with an earlier member of the same batch fails the
    // whole batch.
    let fresh = |i: usize| client(&format!("new-{i}"), &format!("new-machine-{i}"));
    // (what, batch, expected AlreadyExists kind and name)
    type Case<'a> = (&'a str, Vec<Client>, (&'a str, &'a str));
    let cases: Vec<Case> = vec![
        (
            "stored name",
            vec![fresh(1), keyed("kiosk-7", "new-machine-2", "new-key-2")],
            ("Client", "kiosk-7"),
        ),
        (
            "stored key",
            vec![fresh(1), keyed("new-2", "new-machine-2", "key-kiosk-7")],
            (PUBLIC_KEY_KIND, "kiosk-7"),
        ),
        (
            "name twice in the batch",
            vec![fresh(1), keyed("new-1", "new-machine-2", "new-key-2")],
            ("Client", "new-1"),
        ),
        (
            "key twice in the batch",
            vec![fresh(1), keyed("new-2", "new-machine-2", "key-new-1")],
            (PUBLIC_KEY_KIND, "new-1"),
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
        assert_eq!(holder_of_key(&*store, "key-new-1"), None, "{what}");
        assert!(
            names_of_machine(&*store, "new-machine-1").is_empty(),
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

fn liveness_is_recorded_apart_and_overlaid_on_reads<B: Backend>() {
    let dir = B::place();
    {
        let store = B::open(&dir);
        for (name, machine) in [("a", "ma"), ("b", "mb"), ("c", "mc")] {
            store.create_client(client(name, machine), at(1)).unwrap();
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
            seen(&store.clients_by_machine_id("mc").unwrap()[0]),
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
    let store = B::open(&dir);
    store.put_clients(vec![client("ghost", "mg")]).unwrap();
    assert_eq!(seen(&store.get_client("ghost").unwrap().unwrap()).0, None);
    drop(store);
    // Durable, and gone with the client.
    let store = B::open(&dir);
    assert_eq!(
        seen(&store.get_client("a").unwrap().unwrap()),
        (Some(at(5_000)), 12.5)
    );
    let deleted = store.delete_client("a").unwrap().unwrap();
    assert_eq!(seen(&deleted), (Some(at(5_000)), 12.5));
    store.create_client(client("a", "ma"), at(10)).unwrap();
    assert_eq!(seen(&store.get_client("a").unwrap().unwrap()), (None, 0.0));
}

fn a_replaced_key_moves_in_the_index_and_a_held_key_is_refused<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    let first = store
        .create_client(client("kiosk-1", "machine-1"), at(1))
        .unwrap();
    store
        .create_client(client("kiosk-2", "machine-2"), at(1))
        .unwrap();

    // An admin approves a re-imaged machine as the replacement of kiosk-1: new key, new
    // machine id, same client.
    let mut replaced = first.clone();
    replaced.spec.public_key = "key-new".into();
    replaced.spec.machine_id = "machine-new".into();
    replaced.spec.credential_generation = 1;
    store.put_clients(vec![replaced]).unwrap();
    assert_eq!(holder_of_key(&*store, "key-kiosk-1"), None);
    assert_eq!(
        holder_of_key(&*store, "key-new").as_deref(),
        Some("kiosk-1")
    );
    assert!(names_of_machine(&*store, "machine-1").is_empty());
    assert_eq!(names_of_machine(&*store, "machine-new"), ["kiosk-1"]);
    let stored = store.get_client("kiosk-1").unwrap().unwrap();
    assert_eq!(stored.spec.credential_generation, 1);
    assert_eq!(stored.metadata.uid, first.metadata.uid);

    // A key another client holds fails the batch and changes nothing.
    let mut stolen = stored.clone();
    stolen.spec.public_key = "key-kiosk-2".into();
    let result = store.put_clients(vec![client("kiosk-3", "machine-3"), stolen]);
    assert!(
        matches!(&result, Err(StoreError::AlreadyExists { kind, name }) if kind == PUBLIC_KEY_KIND && name == "kiosk-2"),
        "{result:?}"
    );
    assert_eq!(store.get_client("kiosk-3").unwrap(), None);
    assert_eq!(
        holder_of_key(&*store, "key-new").as_deref(),
        Some("kiosk-1")
    );
    assert_eq!(
        holder_of_key(&*store, "key-kiosk-2").as_deref(),
        Some("kiosk-2")
    );
}

fn delete_client_removes_it_and_its_indexes<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    let created = store
        .create_client(client("kiosk-1", "machine-1"), at(1))
        .unwrap();
    let other = store
        .create_client(keyed("kiosk-2", "machine-1", "key-2"), at(1))
        .unwrap();

    assert_eq!(store.delete_client("kiosk-1").unwrap(), Some(created));
    assert_eq!(store.get_client("kiosk-1").unwrap(), None);
    assert_eq!(
        store.clients_by_machine_id("machine-1").unwrap(),
        vec![other],
        "the other client of the machine id stays"
    );
    assert_eq!(holder_of_key(&*store, "key-kiosk-1"), None);
    assert_eq!(store.delete_client("kiosk-1").unwrap(), None);

    // The name and the key are free again.
    let again = store
        .create_client(client("kiosk-1", "machine-1"), at(2))
        .unwrap();
    assert_eq!(
        store.client_by_public_key("key-kiosk-1").unwrap().as_ref(),
        Some(&again)
    );
}

fn put_clients_upserts_a_large_batch_in_one_call<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    let created = store
        .create_client(client("kiosk-0000", "machine-0000"), at(1))
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
    assert_eq!(names_of_machine(&*store, "machine-1234"), ["kiosk-1234"]);
    assert_eq!(
        holder_of_key(&*store, "key-kiosk-0000").as_deref(),
        Some("kiosk-0000")
    );
    assert_eq!(store.put_clients(Vec::new()).unwrap(), Vec::new());
    assert_eq!(store.revision().unwrap(), 2_001);
}

fn put_clients_moves_a_changed_machine_id_in_the_index<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    store.create_client(client("a", "ma"), at(1)).unwrap();
    store.create_client(client("b", "mb"), at(1)).unwrap();

    // A new client may share a machine id.
    store
        .put_clients(vec![client("c", "mc"), client("d", "ma")])
        .unwrap();
    assert_eq!(names_of_machine(&*store, "ma"), ["a", "d"]);

    // A changed machine id moves the index entry (the old one no longer finds the client).
    store.put_clients(vec![client("b", "mb2")]).unwrap();
    assert!(names_of_machine(&*store, "mb").is_empty());
    assert_eq!(names_of_machine(&*store, "mb2"), ["b"]);
}

fn settings_are_listed_by_prefix<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    for key in ["token/a", "token/b", "tokens", "other/x", "token"] {
        store.put_setting(key, Some(&format!("v-{key}"))).unwrap();
    }
    let listed = store.list_settings("token/").unwrap();
    assert_eq!(
        listed,
        [
            ("token/a".to_string(), "v-token/a".to_string()),
            ("token/b".to_string(), "v-token/b".to_string())
        ]
    );
    assert!(store.list_settings("none/").unwrap().is_empty());
    assert_eq!(store.list_settings("").unwrap().len(), 5);
}

// ---------------------------------------------------------------------------------------------
// Events

fn event_ring_keeps_the_newest_and_sequence_continues_after_reopen<B: Backend>() {
    let dir = B::place();
    {
        let store = B::open_with_event_capacity(&dir, 5);
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
    let store = B::open_with_event_capacity(&dir, 5);
    let appended = store
        .append_events(vec![event(Kind::Client, "k", "After")])
        .unwrap();
    assert_eq!(seqs(&appended), vec![13]);
    let kept = store.list_events(&EventFilter::default()).unwrap();
    assert_eq!(seqs(&kept), vec![9, 10, 11, 12, 13]);
    assert_eq!(kept[4].reason, "After");

    // A store reopened with a smaller capacity trims on its next append.
    drop(store);
    let store = B::open_with_event_capacity(&dir, 2);
    store
        .append_events(vec![event(Kind::Client, "k", "Small")])
        .unwrap();
    assert_eq!(
        seqs(&store.list_events(&EventFilter::default()).unwrap()),
        vec![13, 14]
    );
}

fn event_filters_and_limit<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
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

fn empty_event_append_writes_nothing<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    assert!(store.append_events(Vec::new()).unwrap().is_empty());
    let appended = store
        .append_events(vec![event(Kind::Client, "k", "X")])
        .unwrap();
    assert_eq!(seqs(&appended), vec![1]);
}

// ---------------------------------------------------------------------------------------------
// Settings

fn settings_are_set_replaced_and_removed<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
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

// ---------------------------------------------------------------------------------------------
// Clients in parts: object, status, inventory, liveness

fn inventory(host: &str) -> Inventory {
    Inventory {
        hostname: host.into(),
        os_name: "Debian GNU/Linux".into(),
        os_version: "12".into(),
        kernel_version: "6.1.0-18-amd64".into(),
        arch: "x86_64".into(),
        cpu_model: "Intel(R) Atom(TM) x5-E3940".into(),
        cpu_cores: 4,
        memory_total_bytes: 2 << 30,
        disks: vec![tc_proto::Disk {
            name: "/dev/mmcblk0p2".into(),
            mount_point: "/".into(),
            file_system: "ext4".into(),
            total_bytes: 32 << 30,
            available_bytes: 20 << 30,
        }],
        boot_time: Some(at(1)),
        agent_version: "0.1.0".into(),
        ..Default::default()
    }
}

/// A reported status (no inventory, no heartbeat) with one package at `version`.
fn reported(version: &str, desired_revision: u64) -> ClientStatus {
    ClientStatus {
        phase: ClientPhase::Online,
        inventory_hash: format!("inventory-{version}"),
        packages: vec![PackageReport {
            staged: None,
            name: "kiosk".into(),
            version: version.into(),
            state: PackageState::Installed,
            active_version: Some(version.into()),
            message: None,
            since: at(100),
        }],
        observed_revision: desired_revision,
        desired: vec![AssignedPackage {
            name: "kiosk".into(),
            version: version.into(),
            attempt: 0,
        }],
        desired_revision,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: ConditionStatus::True,
            reason: "Heartbeating".into(),
            message: String::new(),
            last_transition_time: at(100),
            observed_generation: None,
        }],
        ..Default::default()
    }
}

fn heard(mut status: ClientStatus, millis: u64, cpu: f32) -> ClientStatus {
    let recorded = liveness("", millis, cpu);
    status.last_heartbeat = Some(recorded.last_heartbeat);
    status.load = recorded.load;
    status
}

fn with_inventory(mut status: ClientStatus, host: &str) -> ClientStatus {
    status.inventory = Some(inventory(host));
    status
}

fn client_with(name: &str, machine_id: &str, status: ClientStatus) -> Client {
    let mut client = client(name, machine_id);
    client.status = status;
    client.refresh_labels();
    client
}

fn entry(name: &str, status: ClientStatus) -> ClientStatusEntry {
    ClientStatusEntry {
        name: name.into(),
        status,
    }
}

fn get(store: &dyn Store, name: &str) -> Client {
    store
        .get_client(name)
        .unwrap()
        .unwrap_or_else(|| panic!("client {name} stored"))
}

fn scan(store: &dyn Store) -> Vec<Client> {
    let mut visited = Vec::new();
    store
        .scan_clients(&mut |client| visited.push(client))
        .unwrap();
    visited
}

fn without_inventory(mut client: Client) -> Client {
    client.status.inventory = None;
    client
}

fn status_is_recorded_apart_from_the_object_without_resource_versions<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    // A running fleet seeded through bulk enrolment: heartbeat, load and inventory read back.
    let created = store
        .create_clients(
            vec![
                client("a", "ma"),
                client_with(
                    "b",
                    "mb",
                    with_inventory(heard(reported("1.0.0", 1), 1_000, 5.0), "b"),
                ),
            ],
            at(1),
        )
        .unwrap();
    assert_eq!(get(&*store, "a"), created[0]);
    assert_eq!(get(&*store, "b"), created[1]);
    assert_eq!(
        created[1].status,
        with_inventory(heard(reported("1.0.0", 1), 1_000, 5.0), "b")
    );
    assert_eq!(created[1].metadata.labels["thinfleet.io/hostname"], "b");
    let revision = store.revision().unwrap();

    let a_status = with_inventory(heard(reported("1.1.0", 2), 2_000, 10.0), "a");
    let written = store
        .put_client_status(vec![
            entry("b", reported("1.2.0", 3)),
            entry("a", a_status.clone()),
        ])
        .unwrap();
    assert_eq!(written, 2);
    assert_eq!(
        store.revision().unwrap(),
        revision,
        "status takes no version"
    );
    let a = get(&*store, "a");
    assert_eq!(a.status, a_status);
    assert_eq!(
        a.metadata, created[0].metadata,
        "the object is not rewritten"
    );
    let b = get(&*store, "b");
    assert_eq!(
        b.status,
        with_inventory(heard(reported("1.2.0", 3), 1_000, 5.0), "b"),
        "the new status with the recorded inventory and liveness"
    );
    assert_eq!(b.metadata, created[1].metadata);

    store
        .put_liveness(vec![liveness("a", 3_000, 30.0)])
        .unwrap();
    let a = get(&*store, "a");
    assert_eq!(seen(&a), (Some(at(3_000)), 30.0));
    assert_eq!(
        a.metadata.resource_version,
        created[0].metadata.resource_version
    );
    assert_eq!(
        store.revision().unwrap(),
        revision,
        "liveness takes no version"
    );

    // Every way of reading a client puts it together the same way.
    assert_eq!(store.list_clients().unwrap(), vec![a.clone(), b.clone()]);
    assert_eq!(store.clients_by_machine_id("ma").unwrap(), vec![a.clone()]);
    assert_eq!(store.clients_by_machine_id("mb").unwrap(), vec![b.clone()]);
    assert_eq!(
        scan(&*store),
        vec![without_inventory(a), without_inventory(b)]
    );

    // Writing the object takes a version; status writes after it do not.
    let mut relabelled = get(&*store, "b");
    relabelled
        .spec
        .admin_labels
        .insert("room".into(), "12".into());
    relabelled.refresh_labels();
    let stored = store.put_clients(vec![relabelled]).unwrap();
    assert_eq!(store.revision().unwrap(), revision + 1);
    let version = stored[0].metadata.resource_version.clone();
    assert_eq!(version, Some((revision + 1).to_string()));
    store
        .put_client_status(vec![entry("b", reported("1.3.0", 4))])
        .unwrap();
    assert_eq!(get(&*store, "b").metadata.resource_version, version);
    assert_eq!(store.revision().unwrap(), revision + 1);
}

fn create_keeps_load_only_with_a_heartbeat_and_returns_what_reads_return<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    let mut status = reported("1.0.0", 1);
    status.load.cpu_percent = 42.0;
    let created = store
        .create_client(client_with("a", "ma", status.clone()), at(1))
        .unwrap();
    status.load = Default::default();
    assert_eq!(created.status, status);
    assert_eq!(get(&*store, "a"), created);
}

fn status_writes_skip_clients_that_are_not_stored_and_the_later_entry_of_a_name_wins<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    store.create_client(client("a", "ma"), at(1)).unwrap();
    store.create_client(client("b", "mb"), at(1)).unwrap();
    store.delete_client("b").unwrap();
    let revision = store.revision().unwrap();

    let written = store
        .put_client_status(vec![
            entry(
                "a",
                heard(with_inventory(reported("1.0.0", 1), "a1"), 2_000, 20.0),
            ),
            entry(
                "ghost",
                with_inventory(heard(reported("1.0.0", 1), 1_000, 1.0), "g"),
            ),
            entry(
                "b",
                with_inventory(heard(reported("1.0.0", 1), 1_000, 1.0), "b"),
            ),
            entry("a", reported("2.0.0", 2)),
        ])
        .unwrap();
    assert_eq!(written, 1, "only a, once");
    let a = get(&*store, "a");
    assert_eq!(a.status.desired_revision, 2, "the later entry of a wins");
    assert_eq!(
        a.status.inventory, None,
        "the earlier entry of a was not written"
    );
    assert_eq!(a.status.last_heartbeat, None);
    assert_eq!(store.get_client("ghost").unwrap(), None);
    assert_eq!(store.get_client("b").unwrap(), None);
    assert_eq!(store.client_inventory("ghost").unwrap(), None);
    assert_eq!(store.list_clients().unwrap(), vec![a]);
    assert_eq!(store.revision().unwrap(), revision);
    assert_eq!(store.put_client_status(Vec::new()).unwrap(), 0);

    // Nothing was recorded for them: clients enrolled later under these names start clean, also
    // from liveness recorded for a name without a client.
    store
        .put_liveness(vec![liveness("ghost", 8_000, 8.0)])
        .unwrap();
    for (name, machine) in [("ghost", "mg"), ("b", "mb")] {
        let created = store.create_client(client(name, machine), at(2)).unwrap();
        assert_eq!(created.status, ClientStatus::default(), "{name}");
        assert_eq!(get(&*store, name), created, "{name}");
        assert_eq!(store.client_inventory(name).unwrap(), None, "{name}");
    }
}

fn inventory_is_kept_by_none_and_replaced_by_some<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    store
        .create_client(
            client_with("a", "ma", with_inventory(reported("1.0.0", 1), "first")),
            at(1),
        )
        .unwrap();
    store.create_client(client("c", "mc"), at(1)).unwrap();
    assert_eq!(
        store.client_inventory("a").unwrap(),
        Some(inventory("first"))
    );
    assert_eq!(store.client_inventory("c").unwrap(), None);
    assert_eq!(store.client_inventory("nobody").unwrap(), None);

    // put_client_status
    store
        .put_client_status(vec![entry("a", reported("1.1.0", 2))])
        .unwrap();
    assert_eq!(get(&*store, "a").status.inventory, Some(inventory("first")));
    assert_eq!(get(&*store, "a").status.desired_revision, 2);
    store
        .put_client_status(vec![entry(
            "a",
            with_inventory(reported("1.1.0", 2), "second"),
        )])
        .unwrap();
    assert_eq!(
        get(&*store, "a").status.inventory,
        Some(inventory("second"))
    );
    assert_eq!(
        store.client_inventory("a").unwrap(),
        Some(inventory("second"))
    );

    // put_clients, with a copy of the client that lacks the inventory (as scan_clients gives)
    let scanned = scan(&*store).remove(0);
    assert_eq!(scanned.status.inventory, None);
    let stored = store.put_clients(vec![scanned]).unwrap();
    assert_eq!(stored[0].status.inventory, Some(inventory("second")));
    assert_eq!(
        get(&*store, "a"),
        stored[0],
        "put_clients returns what reads return"
    );
    let mut replaced = get(&*store, "a");
    replaced.status.inventory = Some(inventory("third"));
    store.put_clients(vec![replaced]).unwrap();
    assert_eq!(get(&*store, "a").status.inventory, Some(inventory("third")));
    assert_eq!(
        store.client_inventory("a").unwrap(),
        Some(inventory("third"))
    );

    // A client new to put_clients has only what it carries.
    let stored = store.put_clients(vec![client("d", "md")]).unwrap();
    assert_eq!(stored[0].status.inventory, None);
    assert_eq!(store.client_inventory("d").unwrap(), None);
    assert_eq!(get(&*store, "d"), stored[0]);
}

fn liveness_only_moves_forward_through_status_and_object_writes<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    store
        .create_client(
            client_with("a", "ma", heard(reported("1.0.0", 1), 5_000, 50.0)),
            at(1),
        )
        .unwrap();
    assert_eq!(seen(&get(&*store, "a")), (Some(at(5_000)), 50.0));
    // (what, heartbeat and cpu written, expected heartbeat and cpu read)
    let cases = [
        ("older", Some((4_000, 40.0)), (5_000, 50.0)),
        ("equal", Some((5_000, 45.0)), (5_000, 50.0)),
        ("none", None, (5_000, 50.0)),
        ("newer", Some((6_000, 60.0)), (6_000, 60.0)),
    ];
    for (what, written, (millis, cpu)) in cases {
        let mut status = reported("1.0.0", 1);
        if let Some((written_millis, written_cpu)) = written {
            status = heard(status, written_millis, written_cpu);
        }
        store.put_client_status(vec![entry("a", status)]).unwrap();
        let a = get(&*store, "a");
        assert_eq!(seen(&a), (Some(at(millis)), cpu), "{what}");
        assert_eq!(a.status.load.memory_used_bytes, millis * 10, "{what}");
    }

    let mut older = get(&*store, "a");
    older.status = heard(older.status, 5_500, 55.0);
    let stored = store.put_clients(vec![older]).unwrap();
    assert_eq!(seen(&stored[0]), (Some(at(6_000)), 60.0));
    assert_eq!(seen(&get(&*store, "a")), (Some(at(6_000)), 60.0));
    let mut newer = get(&*store, "a");
    newer.status = heard(newer.status, 7_000, 70.0);
    let stored = store.put_clients(vec![newer]).unwrap();
    assert_eq!(seen(&stored[0]), (Some(at(7_000)), 70.0));
    assert_eq!(seen(&scan(&*store)[0]), (Some(at(7_000)), 70.0));
}

fn scan_clients_visits_every_client_in_name_order_without_inventory<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    let mut visited = 0;
    store.scan_clients(&mut |_| visited += 1).unwrap();
    assert_eq!(visited, 0);

    // Enrolled in reverse order; some with inventory and heartbeat, some without.
    let batch: Vec<Client> = (0..300u64)
        .rev()
        .map(|i| {
            let name = format!("kiosk-{i:03}");
            let mut status = reported("1.0.0", 1);
            if i % 2 == 0 {
                status = with_inventory(heard(status, 1_000 + i, 1.0), &name);
            }
            client_with(&name, &format!("machine-{i}"), status)
        })
        .collect();
    store.create_clients(batch, at(1)).unwrap();
    store
        .put_client_status(
            (0..300u64)
                .filter(|i| i % 3 == 0)
                .map(|i| entry(&format!("kiosk-{i:03}"), reported("2.0.0", 2)))
                .collect(),
        )
        .unwrap();
    store
        .put_liveness(
            (0..300u64)
                .filter(|i| i % 5 == 0)
                .map(|i| liveness(&format!("kiosk-{i:03}"), 9_000 + i, 9.0))
                .collect(),
        )
        .unwrap();

    let listed = store.list_clients().unwrap();
    let scanned = scan(&*store);
    let names: Vec<String> = scanned.iter().map(|c| c.metadata.name.clone()).collect();
    let expected: Vec<String> = (0..300).map(|i| format!("kiosk-{i:03}")).collect();
    assert_eq!(names, expected);
    assert_eq!(
        listed
            .iter()
            .filter(|c| c.status.inventory.is_some())
            .count(),
        150
    );
    assert!(scanned.iter().all(|c| c.status.inventory.is_none()));
    assert_eq!(
        scanned,
        listed
            .into_iter()
            .map(without_inventory)
            .collect::<Vec<_>>()
    );
    // Status, inventory hash and liveness come through.
    let k0 = &scanned[0];
    assert_eq!(k0.status.desired_revision, 2);
    assert_eq!(k0.status.inventory_hash, "inventory-2.0.0");
    assert_eq!(seen(k0), (Some(at(9_000)), 9.0));
    let k2 = &scanned[2];
    assert_eq!(k2.status.desired_revision, 1);
    assert_eq!(k2.status.inventory_hash, "inventory-1.0.0");
    assert_eq!(seen(k2), (Some(at(1_002)), 1.0));
    assert_eq!(scanned[1].status.last_heartbeat, None);
}

fn delete_client_removes_its_status_inventory_and_liveness<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    store
        .create_client(
            client_with(
                "a",
                "ma",
                with_inventory(heard(reported("1.0.0", 1), 1_000, 10.0), "a"),
            ),
            at(1),
        )
        .unwrap();
    store
        .put_client_status(vec![entry("a", reported("1.1.0", 2))])
        .unwrap();
    store
        .put_liveness(vec![liveness("a", 2_000, 20.0)])
        .unwrap();
    let before = get(&*store, "a");
    assert_eq!(
        before.status,
        with_inventory(heard(reported("1.1.0", 2), 2_000, 20.0), "a")
    );

    assert_eq!(store.delete_client("a").unwrap(), Some(before));
    assert_eq!(store.client_inventory("a").unwrap(), None);
    assert_eq!(
        store
            .put_client_status(vec![entry("a", reported("1.2.0", 3))])
            .unwrap(),
        0
    );
    assert!(scan(&*store).is_empty());

    let again = store.create_client(client("a", "ma"), at(3)).unwrap();
    assert_eq!(again.status, ClientStatus::default());
    assert_eq!(get(&*store, "a"), again);
    assert_eq!(store.client_inventory("a").unwrap(), None);
    assert_eq!(scan(&*store), vec![again]);
}

fn client_parts_survive_reopen<B: Backend>() {
    let dir = B::place();
    let (listed, revision) = {
        let store = B::open(&dir);
        store
            .create_clients(
                vec![
                    client_with(
                        "a",
                        "ma",
                        with_inventory(heard(reported("1.0.0", 1), 1_000, 1.0), "a"),
                    ),
                    client("b", "mb"),
                    client("c", "mc"),
                ],
                at(1),
            )
            .unwrap();
        store
            .put_client_status(vec![
                entry("a", reported("1.1.0", 2)),
                entry(
                    "b",
                    with_inventory(heard(reported("1.1.0", 2), 2_000, 2.0), "b"),
                ),
            ])
            .unwrap();
        store.put_liveness(vec![liveness("c", 3_000, 3.0)]).unwrap();
        let mut c = get(&*store, "c");
        c.spec.admin_labels.insert("room".into(), "12".into());
        c.refresh_labels();
        store.put_clients(vec![c]).unwrap();
        (store.list_clients().unwrap(), store.revision().unwrap())
    };
    assert_eq!(
        listed
            .iter()
            .map(|c| (c.status.desired_revision, seen(c)))
            .collect::<Vec<_>>(),
        vec![
            (2, (Some(at(1_000)), 1.0)),
            (2, (Some(at(2_000)), 2.0)),
            (0, (Some(at(3_000)), 3.0)),
        ]
    );
    let store = B::open(&dir);
    assert_eq!(store.list_clients().unwrap(), listed);
    assert_eq!(store.revision().unwrap(), revision);
    assert_eq!(
        scan(&*store),
        listed
            .iter()
            .cloned()
            .map(without_inventory)
            .collect::<Vec<_>>()
    );
    assert_eq!(store.client_inventory("a").unwrap(), Some(inventory("a")));
    assert_eq!(store.client_inventory("b").unwrap(), Some(inventory("b")));
}

// A file of layout 1, as a build before the split wrote it: each client's whole status (inventory
// and heartbeat included) in its `clients` record.

const V1_CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("clients");
const V1_MACHINE_IDS: TableDefinition<&str, &str> = TableDefinition::new("client_machine_ids");
const V1_TOKENS: TableDefinition<&str, &str> = TableDefinition::new("client_tokens");
const V1_TOKEN_OF: TableDefinition<&str, &str> = TableDefinition::new("client_token_of");
const V1_LIVENESS: TableDefinition<&str, &[u8]> = TableDefinition::new("client_liveness");
const V1_META: TableDefinition<&str, u64> = TableDefinition::new("meta");

fn write_layout_1_file(path: &Path, clients: &[(&Client, &str)], records: &[Liveness]) {
    write_legacy_file(path, 1, clients, records);
}

/// A file of layout 1 or 2: both had the unique machine id index and the client token tables.
fn write_legacy_file(path: &Path, layout: u64, clients: &[(&Client, &str)], records: &[Liveness]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(V1_CLIENTS).unwrap();
        let mut machine_ids = txn.open_table(V1_MACHINE_IDS).unwrap();
        let mut tokens = txn.open_table(V1_TOKENS).unwrap();
        let mut token_of = txn.open_table(V1_TOKEN_OF).unwrap();
        for (client, token) in clients {
            let name = client.metadata.name.as_str();
            let json = serde_json::to_vec(client).unwrap();
            table.insert(name, json.as_slice()).unwrap();
            machine_ids
                .insert(client.spec.machine_id.as_str(), name)
                .unwrap();
            tokens.insert(*token, name).unwrap();
            token_of.insert(name, *token).unwrap();
        }
        let mut liveness = txn.open_table(V1_LIVENESS).unwrap();
        for record in records {
            // Last heartbeat (ms), CPU %, memory used, uptime; little-endian.
            let mut bytes = Vec::new();
            bytes.extend(record.last_heartbeat.unix_millis().to_le_bytes());
            bytes.extend(record.load.cpu_percent.to_le_bytes());
            bytes.extend(record.load.memory_used_bytes.to_le_bytes());
            bytes.extend(record.load.uptime_seconds.to_le_bytes());
            liveness
                .insert(record.name.as_str(), bytes.as_slice())
                .unwrap();
        }
        let mut meta = txn.open_table(V1_META).unwrap();
        meta.insert("schemaVersion", layout).unwrap();
        meta.insert("revision", clients.len() as u64).unwrap();
    }
    txn.commit().unwrap();
}

fn schema_version(path: &Path) -> Option<u64> {
    let db = Database::create(path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(V1_META).unwrap();
    meta.get("schemaVersion").unwrap().map(|v| v.value())
}

fn legacy(name: &str, machine_id: &str, version: u64, status: ClientStatus) -> Client {
    let mut client = client_with(name, machine_id, status);
    client.metadata.uid = Some(format!("uid-{name}"));
    client.metadata.creation_timestamp = Some(at(10));
    client.metadata.resource_version = Some(version.to_string());
    // Clients of those layouts had no key.
    client.spec.public_key = String::new();
    client
}

#[test]
fn a_layout_1_file_is_read_upgraded_and_written() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    // a: everything embedded. b: a liveness record newer than its embedded heartbeat. c: an
    // embedded heartbeat newer than its liveness record.
    let a = legacy(
        "a",
        "ma",
        1,
        with_inventory(heard(reported("1.0.0", 1), 5_000, 20.0), "a"),
    );
    let b = legacy("b", "mb", 2, heard(reported("1.0.0", 1), 4_000, 40.0));
    let c = legacy(
        "c",
        "mc",
        3,
        with_inventory(heard(reported("1.0.0", 1), 7_000, 70.0), "c"),
    );
    write_layout_1_file(
        &path,
        &[(&a, "ta"), (&b, "tb"), (&c, "tc")],
        &[liveness("b", 9_000, 90.0), liveness("c", 3_000, 30.0)],
    );

    let store = open_redb(&dir);
    let mut b_read = b.clone();
    b_read.status = heard(b.status.clone(), 9_000, 90.0);
    assert_eq!(get(&*store, "a"), a);
    assert_eq!(get(&*store, "b"), b_read);
    assert_eq!(get(&*store, "c"), c);
    assert_eq!(
        store.list_clients().unwrap(),
        vec![a.clone(), b_read.clone(), c.clone()]
    );
    assert_eq!(
        scan(&*store),
        vec![
            without_inventory(a.clone()),
            b_read.clone(),
            without_inventory(c.clone())
        ]
    );
    assert_eq!(store.client_inventory("a").unwrap(), Some(inventory("a")));
    assert_eq!(store.client_inventory("b").unwrap(), None);
    assert_eq!(store.clients_by_machine_id("ma").unwrap(), vec![a.clone()]);
    assert_eq!(
        store.get_setting("legacyClientToken/b").unwrap().as_deref(),
        Some("tb")
    );
    assert_eq!(store.revision().unwrap(), 3);

    // A status record shadows the embedded status, but not its inventory or heartbeat.
    assert_eq!(
        store
            .put_client_status(vec![entry("a", reported("1.1.0", 2))])
            .unwrap(),
        1
    );
    let mut a_read = a.clone();
    a_read.status = with_inventory(heard(reported("1.1.0", 2), 5_000, 20.0), "a");
    assert_eq!(get(&*store, "a"), a_read);
    assert_eq!(scan(&*store)[0], without_inventory(a_read.clone()));
    store
        .put_client_status(vec![entry("a", heard(reported("1.1.0", 2), 6_000, 30.0))])
        .unwrap();
    a_read.status = heard(a_read.status, 6_000, 30.0);
    assert_eq!(get(&*store, "a"), a_read);
    assert_eq!(store.revision().unwrap(), 3);
    store
        .put_client_status(vec![entry("a", with_inventory(reported("1.1.0", 2), "a2"))])
        .unwrap();
    assert_eq!(store.client_inventory("a").unwrap(), Some(inventory("a2")));
    store
        .put_client_status(vec![entry("a", with_inventory(reported("1.1.0", 2), "a"))])
        .unwrap();
    assert_eq!(get(&*store, "a"), a_read);

    // Rewriting legacy objects (copies without inventory and heartbeat) keeps what they embedded.
    let rewrite: Vec<Client> = [&a_read, &b_read, &c]
        .into_iter()
        .map(|client| {
            let mut client = client.clone();
            client.spec.admin_labels.insert("room".into(), "12".into());
            client.status.inventory = None;
            client.status.last_heartbeat = None;
            client.status.load = Default::default();
            client
        })
        .collect();
    let stored = store.put_clients(rewrite).unwrap();
    assert_eq!(store.revision().unwrap(), 6);
    assert_eq!(
        stored
            .iter()
            .map(|c| (c.status.inventory.clone(), seen(c)))
            .collect::<Vec<_>>(),
        vec![
            (Some(inventory("a")), (Some(at(6_000)), 30.0)),
            (None, (Some(at(9_000)), 90.0)),
            (Some(inventory("c")), (Some(at(7_000)), 70.0)),
        ]
    );
    assert_eq!(store.list_clients().unwrap(), stored);
    assert_eq!(stored[0].metadata.uid.as_deref(), Some("uid-a"));
    assert_eq!(stored[0].spec.admin_labels["room"], "12");

    // Reopened: still the same, and recorded as layout 3.
    drop(store);
    assert_eq!(schema_version(&path), Some(3));
    let store = open_redb(&dir);
    assert_eq!(store.list_clients().unwrap(), stored);
    assert_eq!(store.delete_client("c").unwrap(), Some(stored[2].clone()));
    assert_eq!(store.client_inventory("c").unwrap(), None);
}

#[test]
fn a_layout_1_file_without_clients_is_upgraded() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    write_layout_1_file(&path, &[], &[]);
    drop(open_redb(&dir));
    assert_eq!(schema_version(&path), Some(3));
    let store = open_redb(&dir);
    assert!(store.list_clients().unwrap().is_empty());
}

#[test]
fn a_layout_2_file_keeps_its_machine_ids_and_token_hashes_for_the_upgrade() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let a = legacy("a", "ma", 1, reported("1.0.0", 1));
    let b = legacy("b", "mb", 2, reported("1.0.0", 1));
    write_legacy_file(&path, 2, &[(&a, "hash-a"), (&b, "hash-b")], &[]);

    let store = open_redb(&dir);
    assert_eq!(store.clients_by_machine_id("ma").unwrap(), vec![a.clone()]);
    assert_eq!(
        store.list_settings("legacyClientToken/").unwrap(),
        [
            ("legacyClientToken/a".to_string(), "hash-a".to_string()),
            ("legacyClientToken/b".to_string(), "hash-b".to_string())
        ]
    );
    // Another key may now enrol with the same machine id, and a keyed client is indexed.
    store
        .create_client(keyed("a-clone", "ma", "key-clone"), at(3))
        .unwrap();
    assert_eq!(names_of_machine(&*store, "ma"), ["a", "a-clone"]);
    drop(store);
    assert_eq!(schema_version(&path), Some(3));
    // The old tables are gone.
    let db = Database::create(&path).unwrap();
    let txn = db.begin_read().unwrap();
    assert!(txn.open_table(V1_TOKEN_OF).is_err());
    assert!(txn.open_table(V1_MACHINE_IDS).is_err());
}

fn a_large_append_keeps_exactly_the_newest_capacity_events<B: Backend>() {
    let dir = B::place();
    let batch = |from: usize, to: usize| -> Vec<Event> {
        (from..to)
            .map(|i| event(Kind::Client, &format!("k{i}"), &format!("E{i}")))
            .collect()
    };
    let reasons =
        |events: &[Event]| -> Vec<String> { events.iter().map(|e| e.reason.clone()).collect() };
    let names =
        |from: usize, to: usize| -> Vec<String> { (from..to).map(|i| format!("E{i}")).collect() };
    {
        let store = B::open_with_event_capacity(&dir, 100);
        store.append_events(batch(0, 30)).unwrap();
        // Far more than the capacity at once: every event comes back with its seq, only the
        // newest 100 are kept.
        let appended = store.append_events(batch(30, 1_030)).unwrap();
        assert_eq!(seqs(&appended), (31..=1_030).collect::<Vec<_>>());
        assert_eq!(reasons(&appended), names(30, 1_030));
        let kept = store.list_events(&EventFilter::default()).unwrap();
        assert_eq!(seqs(&kept), (931..=1_030).collect::<Vec<_>>());
        assert_eq!(reasons(&kept), names(930, 1_030));
        assert_eq!(kept[0].object.name, "k930");

        // Exactly the capacity replaces everything; one more drops its own first event.
        let appended = store.append_events(batch(1_030, 1_130)).unwrap();
        assert_eq!(seqs(&appended), (1_031..=1_130).collect::<Vec<_>>());
        let kept = store.list_events(&EventFilter::default()).unwrap();
        assert_eq!(seqs(&kept), (1_031..=1_130).collect::<Vec<_>>());
        let appended = store.append_events(batch(1_130, 1_231)).unwrap();
        assert_eq!(seqs(&appended), (1_131..=1_231).collect::<Vec<_>>());
        let kept = store.list_events(&EventFilter::default()).unwrap();
        assert_eq!(seqs(&kept), (1_132..=1_231).collect::<Vec<_>>());
        assert_eq!(reasons(&kept), names(1_131, 1_231));
    }
    let store = B::open_with_event_capacity(&dir, 100);
    let appended = store.append_events(batch(1_231, 1_232)).unwrap();
    assert_eq!(seqs(&appended), vec![1_232]);
    let kept = store.list_events(&EventFilter::default()).unwrap();
    assert_eq!(seqs(&kept), (1_133..=1_232).collect::<Vec<_>>());
}

#[test]
fn scan_clients_does_not_decode_inventories() {
    const INVENTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("client_inventory");
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    // b embeds an inventory the way layout 1 did, but one that no longer decodes.
    let b = legacy("b", "mb", 2, reported("1.0.0", 1));
    write_layout_1_file(&path, &[(&b, "tb")], &[]);
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(V1_CLIENTS).unwrap();
            let mut json: serde_json::Value = serde_json::to_value(&b).unwrap();
            json["status"]["inventory"] = serde_json::json!({"cpuCores": "many"});
            let bytes = serde_json::to_vec(&json).unwrap();
            table.insert("b", bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = open_redb(&dir);
    store
        .create_client(
            client_with("a", "ma", with_inventory(reported("1.0.0", 1), "a")),
            at(1),
        )
        .unwrap();
    drop(store);
    // a's inventory record no longer decodes either.
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(INVENTORY)
            .unwrap()
            .insert("a", b"{not json".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = open_redb(&dir);
    for name in ["a", "b"] {
        assert!(
            matches!(store.get_client(name), Err(StoreError::Corrupt { .. })),
            "{name}"
        );
        assert!(
            matches!(
                store.client_inventory(name),
                Err(StoreError::Corrupt { .. })
            ),
            "{name}"
        );
    }
    assert!(matches!(
        store.list_clients(),
        Err(StoreError::Corrupt { .. })
    ));
    let scanned = scan(&*store);
    assert_eq!(
        scanned
            .iter()
            .map(|c| (c.metadata.name.as_str(), c.status.desired_revision))
            .collect::<Vec<_>>(),
        vec![("a", 1), ("b", 1)]
    );
    assert!(scanned.iter().all(|c| c.status.inventory.is_none()));
    assert_eq!(scanned[1], without_inventory(b));
}

// ---------------------------------------------------------------------------------------------
// The audit trail

fn audit(user: &str, kind: &str, name: &str, time: u64) -> tc_api::AuditEntry {
    tc_api::AuditEntry {
        seq: 0,
        time: at(time),
        user: user.into(),
        role: Some(tc_api::Role::Admin),
        break_glass: false,
        source: "127.0.0.1:40000".into(),
        action: "apply".into(),
        request: "POST /apis/thinfleet.io/v1/apply".into(),
        objects: vec![tc_api::AuditObject::new(kind, name).changed("created")],
        code: 200,
        outcome: tc_api::AuditOutcome::Succeeded,
        message: None,
    }
}

fn audit_entries_survive_any_number_of_events_and_a_reopen<B: Backend>() {
    let dir = B::place();
    let retention = tc_store::AuditRetention::default();
    {
        let store = B::open_with_event_capacity(&dir, 10);
        let stored = store
            .append_audit(
                vec![
                    audit("alice", "ClientGroup", "kiosk", 1_000),
                    audit("bob", "PackageRelease", "browser-1.0.0", 2_000),
                ],
                &retention,
                at(2_000),
            )
            .unwrap();
        assert_eq!(stored.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        // An agent flooding events far beyond the ring's capacity evicts events only.
        for round in 0..50 {
            let events = (0..20)
                .map(|i| {
                    Event::new(
                        at(3_000 + round * 20 + i),
                        ObjectRef {
                            kind: "Client".into(),
                            name: "noisy".into(),
                        },
                        EventType::Warning,
                        "Flood",
                        "x",
                    )
                })
                .collect();
            store.append_events(events).unwrap();
        }
    }
    let store = B::open_with_event_capacity(&dir, 10);
    let all = store.list_audit(&Default::default()).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].user, "alice");
    let next = store
        .append_audit(
            vec![audit("alice", "ClientGroup", "lab", 4_000)],
            &retention,
            at(4_000),
        )
        .unwrap();
    assert_eq!(next[0].seq, 3, "sequence numbers continue after a reopen");

    let by = |filter: tc_store::AuditFilter| {
        store
            .list_audit(&filter)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>()
    };
    let alice = tc_store::AuditFilter {
        user: Some("alice".into()),
        ..Default::default()
    };
    assert_eq!(by(alice.clone()), vec![1, 3]);
    assert_eq!(
        by(tc_store::AuditFilter {
            kind: Some("clientgroup".into()),
            name: Some("kiosk".into()),
            ..Default::default()
        }),
        vec![1]
    );
    assert_eq!(
        by(tc_store::AuditFilter {
            limit: Some(1),
            ..alice.clone()
        }),
        vec![3],
        "a limit keeps the newest"
    );
    assert_eq!(
        by(tc_store::AuditFilter {
            limit: Some(1),
            oldest_first: true,
            after_seq: Some(1),
            ..Default::default()
        }),
        vec![2],
        "oldest_first pages forward"
    );
    assert_eq!(
        by(tc_store::AuditFilter {
            action: Some("delete".into()),
            ..Default::default()
        }),
        Vec::<u64>::new()
    );
}

fn audit_retention_drops_by_count_and_by_age<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    let day = 24 * 3600 * 1000;
    let retention = tc_store::AuditRetention {
        max_entries: 3,
        max_age: std::time::Duration::from_secs(2 * 24 * 3600),
    };
    let entries = (0..5)
        .map(|i| audit("alice", "ClientGroup", &format!("g{i}"), 10 * day + i))
        .collect();
    store
        .append_audit(entries, &retention, at(10 * day + 5))
        .unwrap();
    let names = |store: &dyn Store| {
        store
            .list_audit(&Default::default())
            .unwrap()
            .iter()
            .map(|e| e.objects[0].name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&*store),
        vec!["g2", "g3", "g4"],
        "the newest 3 are kept"
    );
    // A day later nothing is old enough; three days later all are, and the next append keeps
    // only itself.
    assert_eq!(store.prune_audit(&retention, at(11 * day)).unwrap(), 0);
    assert_eq!(names(&*store).len(), 3);
    store
        .append_audit(
            vec![audit("bob", "ClientGroup", "late", 13 * day)],
            &retention,
            at(13 * day),
        )
        .unwrap();
    assert_eq!(names(&*store), vec!["late"]);
    assert_eq!(store.prune_audit(&retention, at(16 * day)).unwrap(), 1);
    assert!(names(&*store).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Load histories

fn history(collected: u64, cpu: f32) -> tc_store::StoredHistory {
    use tc_proto::history::{LoadHistory, Sample};
    tc_store::StoredHistory {
        collected: at(collected),
        history: LoadHistory {
            interval_seconds: 60,
            end: at(collected - 1000),
            samples: vec![Sample::GAP, Sample::measured(cpu, 20.0, 30.0, Some(50.0))],
        },
    }
}

fn a_load_history_is_replaced_kept_across_reopening_and_deleted_with_its_client<B: Backend>() {
    let dir = B::place();
    {
        let store = B::open(&dir);
        store
            .create_client(client("kiosk-1", "machine-1"), at(1))
            .unwrap();
        assert_eq!(store.get_history("kiosk-1").unwrap(), None);
        store.put_history("kiosk-1", &history(10_000, 5.0)).unwrap();
        store.put_history("kiosk-1", &history(20_000, 6.0)).unwrap();
    }
    let store = B::open(&dir);
    assert_eq!(
        store.get_history("kiosk-1").unwrap(),
        Some(history(20_000, 6.0))
    );
    store.delete_client("kiosk-1").unwrap();
    assert_eq!(store.get_history("kiosk-1").unwrap(), None);
    // A new client of the same name starts without the old one's history.
    store
        .create_client(client("kiosk-1", "machine-1"), at(2))
        .unwrap();
    assert_eq!(store.get_history("kiosk-1").unwrap(), None);
}

fn a_load_history_of_no_client_is_refused_and_not_written<B: Backend>() {
    let dir = B::place();
    let store = B::open(&dir);
    let error = store
        .put_history("ghost", &history(10_000, 5.0))
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
    assert_eq!(store.get_history("ghost").unwrap(), None);
}

conformance!(
    reopen_keeps_objects_clients_keys_events_settings_and_revision,
    failed_batch_writes_nothing,
    generation_rules,
    uids_are_unique_and_survive_recreation_as_new_ones,
    resource_version_preconditions,
    precondition_on_a_missing_object_is_refused,
    status_writes_keep_generation_and_survive_apply,
    status_write_of_missing_object_or_equal_status_writes_nothing,
    deletes_with_and_without_precondition,
    a_batch_sees_its_own_earlier_writes,
    list_is_per_kind_and_sorted_by_name,
    client_kind_is_refused_by_the_object_write_path,
    concurrent_writers_get_distinct_versions,
    create_client_assigns_server_fields_and_refuses_duplicates,
    create_clients_enrols_a_batch_in_one_transaction_or_nothing,
    liveness_is_recorded_apart_and_overlaid_on_reads,
    a_replaced_key_moves_in_the_index_and_a_held_key_is_refused,
    delete_client_removes_it_and_its_indexes,
    put_clients_upserts_a_large_batch_in_one_call,
    put_clients_moves_a_changed_machine_id_in_the_index,
    settings_are_listed_by_prefix,
    event_ring_keeps_the_newest_and_sequence_continues_after_reopen,
    event_filters_and_limit,
    empty_event_append_writes_nothing,
    settings_are_set_replaced_and_removed,
    status_is_recorded_apart_from_the_object_without_resource_versions,
    create_keeps_load_only_with_a_heartbeat_and_returns_what_reads_return,
    status_writes_skip_clients_that_are_not_stored_and_the_later_entry_of_a_name_wins,
    inventory_is_kept_by_none_and_replaced_by_some,
    liveness_only_moves_forward_through_status_and_object_writes,
    scan_clients_visits_every_client_in_name_order_without_inventory,
    delete_client_removes_its_status_inventory_and_liveness,
    client_parts_survive_reopen,
    a_large_append_keeps_exactly_the_newest_capacity_events,
    audit_entries_survive_any_number_of_events_and_a_reopen,
    audit_retention_drops_by_count_and_by_age,
    a_load_history_is_replaced_kept_across_reopening_and_deleted_with_its_client,
    a_load_history_of_no_client_is_refused_and_not_written,
);
