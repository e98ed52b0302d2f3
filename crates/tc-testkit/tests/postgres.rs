//! The throwaway PostgreSQL server: it accepts connections on 127.0.0.1, creates databases, and
//! is gone (process and directory) after drop.

use std::net::TcpStream;

use tc_testkit::postgres::TestPostgres;

#[test]
fn a_test_server_serves_databases_and_is_gone_after_drop() {
    let server = TestPostgres::start();
    let port = server.port();
    let dir = server.socket_dir().to_path_buf();
    assert_eq!(server.psql(&server.url(), "SELECT 40 + 2"), "42");
    let url = server.create_database();
    server.psql(&url, "CREATE TABLE t (v int); INSERT INTO t VALUES (7)");
    assert_eq!(server.psql(&url, "SELECT v FROM t"), "7");
    // fsync is off: the tests' servers trade durability for speed.
    assert_eq!(server.psql(&url, "SHOW fsync"), "off");
    assert!(dir.join("data").join("PG_VERSION").is_file());
    drop(server);
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still accepts connections"
    );
}
