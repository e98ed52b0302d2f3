//! The store backends the conformance tests run against: every test is written once, generic
//! over [`Backend`], and [`conformance!`] instantiates it as a `#[test]` per backend.

// Each test file uses the part of this module it needs.
#![allow(dead_code, unused_macros)]

use std::time::{Duration, Instant};

use tc_api::{API_VERSION, ClientGroup, ClientGroupSpec, Object, ObjectMeta};
use tc_store::{LeaseState, PgStore, RedbStore, Store};
use tc_testkit::postgres::TestPostgres;
use tempfile::TempDir;

/// A kind of store, and where a test keeps one: opening the same place again is a reopen
/// (a restarted controller).
pub trait Backend {
    /// Where the store lives (a directory, a database); dropping it removes everything.
    type Place;

    /// A new, empty place.
    fn place() -> Self::Place;

    /// Opens the store of `place` with the default event capacity.
    fn open(place: &Self::Place) -> Box<dyn Store>;

    /// Opens the store of `place`, keeping at most `capacity` events.
    fn open_with_event_capacity(place: &Self::Place, capacity: usize) -> Box<dyn Store>;
}

/// The embedded redb store, in a temporary directory (whose `data/` `open` creates).
pub struct Redb;

/// The redb file of a place.
pub fn redb_path(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("data").join("thinfleet.redb")
}

impl Backend for Redb {
    type Place = TempDir;

    fn place() -> TempDir {
        TempDir::new().expect("create a temporary directory")
    }

    fn open(place: &TempDir) -> Box<dyn Store> {
        Box::new(RedbStore::open(&redb_path(place)).expect("open the redb store"))
    }

    fn open_with_event_capacity(place: &TempDir, capacity: usize) -> Box<dyn Store> {
        Box::new(
            RedbStore::open_with_event_capacity(&redb_path(place), capacity)
                .expect("open the redb store"),
        )
    }
}

/// The PostgreSQL store, in a database of a server of its own (started from Debian's
/// `postgresql` package; the test fails when it is not installed).
pub struct Postgres;

/// A test's PostgreSQL server and the URL of its database.
pub struct PostgresPlace {
    url: String,
    // Dropped last: the stores of a test are dropped before its place.
    _server: TestPostgres,
}

impl Backend for Postgres {
    type Place = PostgresPlace;

    fn place() -> PostgresPlace {
        let server = TestPostgres::start();
        PostgresPlace {
            url: server.create_database(),
            _server: server,
        }
    }

    fn open(place: &PostgresPlace) -> Box<dyn Store> {
        Box::new(PgStore::connect(&place.url).expect("open the PostgreSQL store"))
    }

    fn open_with_event_capacity(place: &PostgresPlace, capacity: usize) -> Box<dyn Store> {
        Box::new(PgStore::connect_with(&place.url, capacity, 2).expect("open the PostgreSQL store"))
    }
}

/// Instantiates generic tests (`fn name<B: Backend>()`) for every backend: `conformance!(a, b)`
/// makes `mod redb { #[test] fn a() ... }` and `mod postgres { ... }`.
macro_rules! conformance {
    (@backend $module:ident: $backend:ty => [$($test:ident),*]) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    super::$test::<$backend>()
                }
            )*
        }
    };
    ($($test:ident),* $(,)?) => {
        conformance!(@backend redb: crate::common::Redb => [$($test),*]);
        conformance!(@backend postgres: crate::common::Postgres => [$($test),*]);
    };
}

/// Takes the lease for `holder`, waiting (bounded) for another holder's to expire.
pub fn take(store: &PgStore, holder: &str, ttl: Duration) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.acquire_lease(holder, ttl).unwrap() {
            LeaseState::Held { epoch } => return epoch,
            LeaseState::HeldBy { .. } if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => panic!("{holder} never got the lease: {other:?}"),
        }
    }
}

/// A lease that outlasts any test.
pub const LONG: Duration = Duration::from_secs(60);

/// An empty ClientGroup named `name`.
pub fn group(name: &str) -> Object {
    Object::ClientGroup(ClientGroup {
        api_version: API_VERSION.into(),
        kind: "ClientGroup".into(),
        metadata: ObjectMeta::named(name),
        spec: ClientGroupSpec::default(),
        status: None,
    })
}
