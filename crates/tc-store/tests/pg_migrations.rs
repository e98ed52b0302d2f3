//! The PostgreSQL store's migrations: applied once at open and recorded, a database of a newer
//! schema refused, a server that does not answer reported; and the store answering callers on
//! async runtime threads, and over a unix socket.

use tc_store::{PgStore, Store, StoreError};
use tc_testkit::postgres::TestPostgres;

#[test]
fn migrations_are_applied_once_and_recorded() {
    let server = TestPostgres::start();
    let url = server.create_database();
    let store = PgStore::connect(&url).unwrap();
    store.put_setting("k", Some("v")).unwrap();
    drop(store);
    assert_eq!(
        server.psql(
            &url,
            "SELECT version, name FROM schema_migrations ORDER BY version"
        ),
        "1|initial\n2|blobs\n3|leader\n4|changes\n5|room_for_updates\n6|change_revisions"
    );
    // Opening again applies nothing and keeps the data.
    let store = PgStore::connect(&url).unwrap();
    assert_eq!(store.get_setting("k").unwrap().as_deref(), Some("v"));
    assert_eq!(
        server.psql(&url, "SELECT count(*) FROM schema_migrations"),
        "6"
    );
    // The often rewritten tables leave room on their pages for the next version of a row.
    assert_eq!(
        server.psql(
            &url,
            "SELECT relname, reloptions FROM pg_class \
             WHERE relname IN ('client_status', 'client_liveness') ORDER BY relname"
        ),
        "client_liveness|{fillfactor=50}\nclient_status|{fillfactor=50}"
    );
}

/// A database of the first schema (a controller of before the blobs) gets the later tables at
/// open (blobs, the lease, the change feed), its data untouched.
#[test]
fn a_database_of_the_first_schema_gets_the_blob_tables() {
    let server = TestPostgres::start();
    let url = server.create_database();
    server.psql(
        &url,
        &format!(
            "BEGIN; {} CREATE TABLE schema_migrations (version integer PRIMARY KEY, \
             name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now()); \
             INSERT INTO schema_migrations (version, name) VALUES (1, 'initial'); \
             INSERT INTO settings (key, value) VALUES ('k', 'v'); COMMIT;",
            include_str!("../src/pg_store/migrations/0001_initial.sql")
        ),
    );
    let store = PgStore::connect(&url).unwrap();
    assert_eq!(store.get_setting("k").unwrap().as_deref(), Some("v"));
    assert_eq!(store.blob_size(&"a".repeat(64)).unwrap(), None);
    assert_eq!(
        server.psql(&url, "SELECT max(version) FROM schema_migrations"),
        "6"
    );
    // The change feed starts empty and records the writes after the upgrade.
    assert_eq!(store.latest_change().unwrap(), 0);
    store.put_setting("k", Some("w")).unwrap();
    let page = store.changes_after(0, 10).unwrap();
    assert!(page.complete);
    assert_eq!(page.changes.len(), 1);
    assert_eq!(page.changes[0].name, "k");
}

#[test]
fn a_database_of_a_newer_schema_is_refused_and_left_alone() {
    let server = TestPostgres::start();
    let url = server.create_database();
    drop(PgStore::connect(&url).unwrap());
    server.psql(
        &url,
        "INSERT INTO schema_migrations (version, name) VALUES (9999, 'from_the_future')",
    );
    match PgStore::connect(&url) {
        Err(StoreError::Database(message)) => {
            assert!(message.contains("version 9999"), "{message}");
            assert!(message.contains("newer"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        server.psql(&url, "SELECT max(version) FROM schema_migrations"),
        "9999"
    );
}

#[test]
fn a_server_that_does_not_answer_is_an_error_naming_postgresql() {
    let server = TestPostgres::start();
    let url = server.url();
    drop(server);
    match PgStore::connect(&url) {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("connect to PostgreSQL"), "{message}");
        }
        other => panic!("expected a connection error, got {other:?}"),
    }
}

#[test]
fn a_malformed_url_is_refused() {
    match PgStore::connect("postgres://user@host:notaport/db") {
        Err(StoreError::Database(message)) => {
            assert!(message.contains("PostgreSQL URL"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The synchronous `postgres` client panics when it is used on a thread that drives async tasks;
/// the store runs it on threads of its own, so that a caller on a runtime thread only waits, as
/// it would on the redb store.
#[test]
fn the_store_answers_callers_on_async_runtime_threads() {
    let server = TestPostgres::start();
    let url = server.create_database();
    let store = PgStore::connect(&url).unwrap();
    for runtime in [
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap(),
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap(),
    ] {
        runtime.block_on(async {
            store.put_setting("from", Some("async")).unwrap();
            assert_eq!(store.get_setting("from").unwrap().as_deref(), Some("async"));
        });
    }
    // And it connects from one too.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let again = runtime.block_on(async { PgStore::connect(&url) }).unwrap();
    assert_eq!(again.get_setting("from").unwrap().as_deref(), Some("async"));
}

#[test]
fn the_store_connects_over_a_unix_socket() {
    let server = TestPostgres::start();
    let tcp = server.create_database();
    let database = tcp.rsplit('/').next().unwrap();
    let socket_dir = server
        .socket_dir()
        .display()
        .to_string()
        .replace('/', "%2F");
    let url = format!(
        "postgres://postgres@{socket_dir}:{}/{database}",
        server.port()
    );
    let store = PgStore::connect(&url).unwrap();
    store.put_setting("over", Some("socket")).unwrap();
    drop(store);
    let store = PgStore::connect(&tcp).unwrap();
    assert_eq!(
        store.get_setting("over").unwrap().as_deref(),
        Some("socket")
    );
}
