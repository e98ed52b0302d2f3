//! Moving a redb store into PostgreSQL (`copy_redb_to_pg`): every read answers alike on both
//! stores afterwards, metadata and sequence numbers included, and the target goes on from the
//! source's counters; a target holding anything is refused and left as it was.

use std::collections::BTreeMap;

use tc_api::task::{Task, TaskActionKind, TaskClientState, TaskResult, TaskSpec, TaskTargets};
use tc_api::{
    API_VERSION, AuditEntry, AuditObject, AuditOutcome, Client, ClientGroup, ClientGroupSpec,
    ClientPhase, ClientSpec, ClientStatus, Event, EventType, Inventory, Kind, Object, ObjectMeta,
    ObjectRef, PackageRelease, PackageReleaseSpec, Role, Timestamp,
};
use tc_proto::history::{LoadHistory, Sample};
use tc_proto::task::TaskAction;
use tc_store::{
    AuditFilter, AuditRetention, ClientStatusEntry, Counters, EventFilter, Liveness, PgStore,
    RedbStore, Store, StoreError, StoredHistory, StoredTaskRun, StoredTaskTarget, Write,
    WriteOutcome, copy_redb_to_pg,
};
use tc_testkit::postgres::TestPostgres;

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

fn release(name: &str) -> Object {
    Object::PackageRelease(PackageRelease {
        api_version: API_VERSION.into(),
        kind: "PackageRelease".into(),
        metadata: ObjectMeta::named(name),
        spec: PackageReleaseSpec {
            package: "kiosk".into(),
            version: "1.0.0".into(),
            artifact: tc_api::Artifact {
                sha256: Some("ab".repeat(32)),
                ..Default::default()
            },
            hooks: Default::default(),
        },
        status: None,
    })
}

fn task(name: &str) -> Object {
    Object::Task(Task {
        api_version: API_VERSION.into(),
        kind: "Task".into(),
        metadata: ObjectMeta::named(name),
        spec: TaskSpec {
            targets: TaskTargets {
                clients: vec!["kiosk-a".into()],
                ..Default::default()
            },
            action: TaskActionKind::Reboot,
            deadline_seconds: 600,
            ..Default::default()
        },
        status: None,
    })
}

fn apply(object: Object) -> Write {
    Write::Apply {
        object,
        manager: "tcadm".into(),
    }
}

fn client(name: &str, machine_id: &str, key: &str) -> Client {
    Client::new(
        name,
        ClientSpec {
            machine_id: machine_id.into(),
            public_key: key.into(),
            agent_labels: BTreeMap::from([("site".to_string(), "berlin".to_string())]),
            ..Default::default()
        },
    )
}

fn inventory(host: &str) -> Inventory {
    Inventory {
        hostname: host.into(),
        os_name: "Debian GNU/Linux".into(),
        cpu_cores: 4,
        agent_version: "0.1.0".into(),
        ..Default::default()
    }
}

fn audit(user: &str, name: &str, time: u64) -> AuditEntry {
    AuditEntry {
        seq: 0,
        time: at(time),
        user: user.into(),
        role: Some(Role::Admin),
        break_glass: false,
        source: "127.0.0.1:40000".into(),
        action: "apply".into(),
        request: "POST /apis/thinfleet.io/v1/apply".into(),
        objects: vec![AuditObject::new("ClientGroup", name).changed("created")],
        code: 200,
        outcome: AuditOutcome::Succeeded,
        message: None,
    }
}

fn run(task: &str, run: u64, targets: &[&str]) -> StoredTaskRun {
    StoredTaskRun {
        task: task.into(),
        task_uid: format!("uid-{task}"),
        run,
        started_at: at(run),
        deadline: at(run + 60_000),
        max_concurrent: 2,
        action: TaskAction::Reboot,
        targets: targets
            .iter()
            .map(|client| StoredTaskTarget {
                client: (*client).into(),
                wake: None,
            })
            .collect(),
    }
}

fn result(task: &str, run: u64, client: &str, state: TaskClientState) -> TaskResult {
    TaskResult {
        task: task.into(),
        run,
        client: client.into(),
        state,
        exit_code: Some(0),
        stdout: format!("{client} done"),
        ..Default::default()
    }
}

/// A store with records in every table, counters well past their start, objects written more
/// than once (generation and resourceVersion apart), events and audit entries past the ring's
/// and the retention's first ones.
fn populate(store: &RedbStore) {
    let now = at(1_000_000);
    store
        .write(
            vec![apply(group("front-desk", 1)), apply(release("kiosk-1.0.0"))],
            now,
        )
        .unwrap();
    store
        .write(vec![apply(group("lab", 2)), apply(task("reboot-lab"))], now)
        .unwrap();
    // A new spec moves the generation; a status write moves the resourceVersion only.
    store
        .write(vec![apply(group("front-desk", 5))], at(1_000_500))
        .unwrap();
    let stored = store.get(Kind::ClientGroup, "lab").unwrap().unwrap();
    let Object::ClientGroup(mut lab) = stored else {
        panic!("lab is a ClientGroup");
    };
    lab.status = Some(tc_api::ClientGroupStatus {
        desired: 7,
        ..Default::default()
    });
    store
        .write(
            vec![Write::Status {
                object: Object::ClientGroup(lab),
            }],
            at(1_000_600),
        )
        .unwrap();
    // Deleted objects leave versions behind that must not be handed out again.
    store
        .write(vec![apply(group("gone", 3))], at(1_000_700))
        .unwrap();
    store
        .write(
            vec![Write::Delete {
                kind: Kind::ClientGroup,
                name: "gone".into(),
                precondition: None,
            }],
            at(1_000_800),
        )
        .unwrap();

    // Two clients of one machine id (a cloned machine), one with an inventory and a heartbeat,
    // one without a key, one updated after enrolment.
    let mut first = client("kiosk-a", "machine-1", "key-a");
    first.status.inventory = Some(inventory("kiosk-a"));
    first.status.last_heartbeat = Some(at(1_001_000));
    store.create_client(first, now).unwrap();
    store
        .create_clients(
            vec![
                client("kiosk-b", "machine-1", "key-b"),
                client("kiosk-c", "machine-2", ""),
            ],
            now,
        )
        .unwrap();
    let mut updated = store.get_client("kiosk-c").unwrap().unwrap();
    updated
        .metadata
        .labels
        .insert("room".into(), "lobby".into());
    store.put_clients(vec![updated]).unwrap();
    store
        .put_client_status(vec![ClientStatusEntry {
            name: "kiosk-b".into(),
            status: ClientStatus {
                phase: ClientPhase::Online,
                inventory_hash: "hash-b".into(),
                observed_revision: 3,
                desired_revision: 3,
                inventory: Some(inventory("kiosk-b")),
                ..Default::default()
            },
        }])
        .unwrap();
    let load = tc_proto::Load {
        cpu_percent: 42.0,
        ..Default::default()
    };
    store
        .put_liveness(vec![Liveness {
            name: "kiosk-b".into(),
            last_heartbeat: at(1_002_000),
            load,
        }])
        .unwrap();
    store
        .put_history(
            "kiosk-a",
            &StoredHistory {
                collected: at(1_003_000),
                history: LoadHistory {
                    interval_seconds: 60,
                    end: at(1_002_000),
                    samples: vec![Sample::GAP, Sample::measured(12.0, 20.0, 30.0, Some(50.0))],
                },
            },
        )
        .unwrap();

    let events: Vec<Event> = (0..15)
        .map(|i| {
            Event::new(
                at(1_000_000 + i),
                ObjectRef::new(Kind::Client, "kiosk-a"),
                EventType::Normal,
                "Heartbeat",
                format!("heartbeat {i}"),
            )
        })
        .collect();
    store.append_events(events).unwrap();
    // Retention keeps the newest two: the next audit sequence number is not the last one + 1
    // of the entries the store starts with.
    let retention = AuditRetention {
        max_entries: 2,
        ..AuditRetention::default()
    };
    store
        .append_audit(
            vec![
                audit("alice", "front-desk", 1_000_000),
                audit("bob", "lab", 1_000_100),
                audit("alice", "gone", 1_000_200),
            ],
            &retention,
            at(1_000_300),
        )
        .unwrap();

    for (key, value) in [
        ("bootstrapToken/site-a", "{\"hash\":\"h1\"}"),
        ("credential/helpdesk", "{\"role\":\"viewer\"}"),
        ("refusedMachine/machine-9", "refused"),
        ("legacyClientToken/kiosk-old", "proof"),
        ("manifestSource", "{\"applied\":true}"),
    ] {
        store.put_setting(key, Some(value)).unwrap();
    }

    store
        .put_task_run(&run("reboot-lab", 1_000, &["kiosk-a", "kiosk-b"]))
        .unwrap();
    store
        .put_task_run(&run("collect", 2_000, &["kiosk-a"]))
        .unwrap();
    store
        .put_task_results(
            &[
                result("reboot-lab", 1_000, "kiosk-a", TaskClientState::Succeeded),
                result("reboot-lab", 1_000, "kiosk-b", TaskClientState::Failed),
                result("collect", 2_000, "kiosk-a", TaskClientState::Succeeded),
            ],
            &[(2, "journal lines\n".into())],
        )
        .unwrap();
}

/// Everything the store answers: every read of every record (clients by name, machine id and key
/// as listed; tasks of `populate`).
fn reads(store: &dyn Store) -> Vec<String> {
    let mut reads = vec![format!("revision {}", store.revision().unwrap())];
    for kind in [Kind::ClientGroup, Kind::PackageRelease, Kind::Task] {
        reads.push(format!("{kind}: {:?}", store.list(kind).unwrap()));
        for object in store.list(kind).unwrap() {
            reads.push(format!(
                "get: {:?}",
                store.get(kind, object.name()).unwrap()
            ));
        }
    }
    let clients = store.list_clients().unwrap();
    reads.push(format!("clients: {clients:?}"));
    let mut scanned = vec![];
    store
        .scan_clients(&mut |client| scanned.push(client))
        .unwrap();
    reads.push(format!("scanned: {scanned:?}"));
    let mut inventories = vec![];
    store
        .scan_inventories(&mut |name, inventory| inventories.push((name.to_owned(), inventory)))
        .unwrap();
    reads.push(format!("inventories: {inventories:?}"));
    for client in &clients {
        let name = &client.metadata.name;
        reads.push(format!("client: {:?}", store.get_client(name).unwrap()));
        reads.push(format!(
            "inventory: {:?}",
            store.client_inventory(name).unwrap()
        ));
        reads.push(format!("history: {:?}", store.get_history(name).unwrap()));
        let machine = &client.spec.machine_id;
        reads.push(format!(
            "machine {machine}: {:?}",
            store.clients_by_machine_id(machine).unwrap()
        ));
        let key = &client.spec.public_key;
        reads.push(format!(
            "key {key}: {:?}",
            store.client_by_public_key(key).unwrap()
        ));
    }
    reads.push(format!(
        "events: {:?}",
        store.list_events(&EventFilter::default()).unwrap()
    ));
    reads.push(format!(
        "audit: {:?}",
        store.list_audit(&AuditFilter::default()).unwrap()
    ));
    reads.push(format!("settings: {:?}", store.list_settings("").unwrap()));
    for (task, run) in [("reboot-lab", 1_000), ("collect", 2_000)] {
        reads.push(format!("runs: {:?}", store.task_runs(task).unwrap()));
        reads.push(format!(
            "results: {:?}",
            store.task_results(task, run).unwrap()
        ));
        for client in ["kiosk-a", "kiosk-b"] {
            reads.push(format!(
                "logs: {:?}",
                store.task_logs(task, run, client).unwrap()
            ));
        }
    }
    reads
}

/// Asserts that both stores answer every read alike.
fn assert_same_reads(source: &dyn Store, target: &dyn Store) {
    let expected = reads(source);
    let copied = reads(target);
    assert_eq!(expected.len(), copied.len());
    for (expected, copied) in expected.iter().zip(&copied) {
        assert_eq!(expected, copied);
    }
}

fn largest_version(store: &dyn Store) -> u64 {
    let objects = [Kind::ClientGroup, Kind::PackageRelease, Kind::Task]
        .into_iter()
        .flat_map(|kind| store.list(kind).unwrap())
        .map(|object| object.meta().resource_version.clone());
    let clients = store
        .list_clients()
        .unwrap()
        .into_iter()
        .map(|client| client.metadata.resource_version);
    objects
        .chain(clients)
        .map(|version| version.unwrap().parse::<u64>().unwrap())
        .max()
        .unwrap()
}

#[test]
fn a_redb_store_is_copied_into_postgresql_as_it_is_and_goes_on_from_its_counters() {
    let dir = tempfile::tempdir().unwrap();
    let source = RedbStore::open(&dir.path().join("thinfleet.redb")).unwrap();
    populate(&source);
    let server = TestPostgres::start();
    let target = PgStore::connect(&server.create_database()).unwrap();

    let report = copy_redb_to_pg(&source, &target).unwrap();

    assert_same_reads(&source, &target);
    assert_eq!(source.list_clients().unwrap().len(), 3);
    let counters = source.counters().unwrap();
    assert_eq!(report.counters, counters);
    assert_eq!(target.counters().unwrap(), counters);
    assert_eq!(counters.next_audit_seq, 4, "{counters:?}");
    assert_eq!(counters.next_event_seq, 16, "{counters:?}");
    let tables = report.tables;
    assert_eq!(
        (tables.objects, tables.clients, tables.client_inventory),
        (4, 3, 2)
    );
    assert_eq!((tables.events, tables.audit, tables.settings), (15, 2, 5));
    assert_eq!(
        (tables.task_runs, tables.task_results, tables.task_logs),
        (2, 3, 1)
    );
    assert_eq!((tables.client_liveness, tables.client_history), (2, 1));
    assert_eq!(report.tables, target.table_counts().unwrap());
    assert!(
        report.to_string().contains("client_inventory  2"),
        "{report}"
    );

    // The copy goes on: versions and sequence numbers above every copied one.
    let largest = largest_version(&target);
    assert_eq!(largest, counters.revision);
    let outcome = target
        .write(vec![apply(group("new", 9))], at(2_000_000))
        .unwrap();
    let WriteOutcome::Created(created) = &outcome[0] else {
        panic!("expected a creation: {outcome:?}");
    };
    let version: u64 = created
        .meta()
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(version, largest + 1);
    let appended = target
        .append_events(vec![Event::new(
            at(2_000_000),
            ObjectRef::new(Kind::ClientGroup, "new"),
            EventType::Normal,
            "Created",
            "created",
        )])
        .unwrap();
    assert_eq!(appended[0].seq, counters.next_event_seq);
    let audited = target
        .append_audit(
            vec![audit("carol", "new", 2_000_000)],
            &AuditRetention::default(),
            at(2_000_000),
        )
        .unwrap();
    assert_eq!(audited[0].seq, counters.next_audit_seq);
    // The keys stay unique in the target.
    let taken = target
        .create_client(client("kiosk-z", "machine-3", "key-a"), at(2_000_000))
        .unwrap_err();
    assert!(matches!(taken, StoreError::AlreadyExists { .. }), "{taken}");
}

#[test]
fn a_target_holding_anything_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let source = RedbStore::open(&dir.path().join("thinfleet.redb")).unwrap();
    populate(&source);
    let server = TestPostgres::start();

    // A single setting is enough to refuse.
    let target = PgStore::connect(&server.create_database()).unwrap();
    target.put_setting("note", Some("mine")).unwrap();
    let before = reads(&target);
    let error = copy_redb_to_pg(&source, &target).unwrap_err();
    assert!(
        matches!(error, StoreError::TargetNotEmpty { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("settings (1)"), "{error}");
    assert_eq!(reads(&target), before);
    assert_eq!(target.counters().unwrap(), Counters::default());

    // So are moved counters without records (everything written was deleted).
    let target = PgStore::connect(&server.create_database()).unwrap();
    target.write(vec![apply(group("g", 1))], at(1)).unwrap();
    target
        .write(
            vec![Write::Delete {
                kind: Kind::ClientGroup,
                name: "g".into(),
                precondition: None,
            }],
            at(2),
        )
        .unwrap();
    let error = copy_redb_to_pg(&source, &target).unwrap_err();
    assert!(error.to_string().contains("revision 2"), "{error}");
    assert_eq!(target.table_counts().unwrap(), Default::default());

    // A copy into an empty database still works after both refusals.
    let target = PgStore::connect(&server.create_database()).unwrap();
    copy_redb_to_pg(&source, &target).unwrap();
    // And a second copy into it is refused.
    let again = copy_redb_to_pg(&source, &target).unwrap_err();
    assert!(
        matches!(again, StoreError::TargetNotEmpty { .. }),
        "{again}"
    );
}

#[test]
fn a_failing_source_leaves_the_target_empty() {
    let server = TestPostgres::start();
    let target = PgStore::connect(&server.create_database()).unwrap();
    let error = target
        .import(Counters::default(), &mut |sink| {
            sink.setting("first", "written")?;
            sink.object(&group("g", 1))?;
            Err(StoreError::Database("the source broke".into()))
        })
        .unwrap_err();
    assert!(error.to_string().contains("the source broke"), "{error}");
    assert_eq!(target.table_counts().unwrap(), Default::default());
    assert_eq!(target.get_setting("first").unwrap(), None);
}

/// A file of layout 1, as builds before clients were split into parts wrote it: each client's
/// whole status (inventory and heartbeat included) in its `clients` record, token hashes in
/// tables of their own. Opening it upgrades the layout but leaves the records as they are.
fn write_layout_1_file(path: &std::path::Path, clients: &[(&Client, &str)]) {
    use redb::TableDefinition;
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn
            .open_table(TableDefinition::<&str, &[u8]>::new("clients"))
            .unwrap();
        let mut machine_ids = txn
            .open_table(TableDefinition::<&str, &str>::new("client_machine_ids"))
            .unwrap();
        let mut tokens = txn
            .open_table(TableDefinition::<&str, &str>::new("client_tokens"))
            .unwrap();
        let mut token_of = txn
            .open_table(TableDefinition::<&str, &str>::new("client_token_of"))
            .unwrap();
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
        let mut meta = txn
            .open_table(TableDefinition::<&str, u64>::new("meta"))
            .unwrap();
        meta.insert("schemaVersion", 1).unwrap();
        meta.insert("revision", clients.len() as u64).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn clients_of_a_layout_1_file_are_copied_in_parts_and_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("thinfleet.redb");
    let legacy = |name: &str, version: u64, heartbeat: u64, inventory: Option<Inventory>| {
        let mut client = client(name, &format!("machine-{name}"), "");
        client.metadata.uid = Some(format!("uid-{name}"));
        client.metadata.creation_timestamp = Some(at(10));
        client.metadata.resource_version = Some(version.to_string());
        client.status = ClientStatus {
            phase: ClientPhase::Online,
            inventory_hash: format!("hash-{name}"),
            last_heartbeat: Some(at(heartbeat)),
            load: tc_proto::Load {
                cpu_percent: 25.0,
                ..Default::default()
            },
            inventory,
            ..Default::default()
        };
        client
    };
    // a embeds its inventory and heartbeat; b gets a newer liveness record once opened.
    let a = legacy("a", 1, 5_000, Some(inventory("a")));
    let b = legacy("b", 2, 4_000, None);
    write_layout_1_file(&path, &[(&a, "ta"), (&b, "tb")]);
    let source = RedbStore::open(&path).unwrap();
    source
        .put_liveness(vec![Liveness {
            name: "b".into(),
            last_heartbeat: at(9_000),
            load: tc_proto::Load::default(),
        }])
        .unwrap();
    assert_eq!(source.get_client("a").unwrap().unwrap(), a);
    let server = TestPostgres::start();
    let target = PgStore::connect(&server.create_database()).unwrap();

    let report = copy_redb_to_pg(&source, &target).unwrap();

    // Every read alike but one: the copy records an embedded inventory in the inventory table
    // (as the redb store does when it next writes the client), so the scan of recorded
    // inventories, which skips embedded ones, now finds it.
    let without_scanned_inventories = |store: &dyn Store| {
        reads(store)
            .into_iter()
            .filter(|read| !read.starts_with("inventories:"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        without_scanned_inventories(&source),
        without_scanned_inventories(&target)
    );
    let scanned = |store: &dyn Store| {
        let mut names = vec![];
        store
            .scan_inventories(&mut |name, inventory| names.push((name.to_owned(), inventory)))
            .unwrap();
        names
    };
    assert_eq!(scanned(&source), []);
    assert_eq!(scanned(&target), [("a".to_owned(), inventory("a"))]);
    assert_eq!(target.get_client("a").unwrap().unwrap(), a);
    assert_eq!(
        target
            .get_client("b")
            .unwrap()
            .unwrap()
            .status
            .last_heartbeat,
        Some(at(9_000))
    );
    // The token hashes an upgraded agent proves once are settings, copied with the rest.
    assert_eq!(
        target
            .get_setting("legacyClientToken/a")
            .unwrap()
            .as_deref(),
        Some("ta")
    );
    assert_eq!(report.counters.revision, 2);
}
