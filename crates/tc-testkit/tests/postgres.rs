//! The throwaway PostgreSQL server: it accepts connections on 127.0.0.1, creates databases, and
//! is gone (process and directory) after drop.

use std::net::TcpStream;
use std::process::Command;

use tc_testkit::postgres::TestPostgres;

fn psql(server: &TestPostgres, url: &str, sql: &str) -> String {
    let output = Command::new(server.bindir().join("psql"))
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn a_test_server_serves_databases_and_is_gone_after_drop() {
    let server = TestPostgres::start();
    let port = server.port();
    let dir = server.socket_dir().to_path_buf();
    assert_eq!(psql(&server, &server.url(), "SELECT 40 + 2"), "42");
    let url = server.create_database();
    psql(
        &server,
        &url,
        "CREATE TABLE t (v int); INSERT INTO t VALUES (7)",
    );
    assert_eq!(psql(&server, &url, "SELECT v FROM t"), "7");
    // fsync is off: the tests' servers trade durability for speed.
    assert_eq!(psql(&server, &url, "SHOW fsync"), "off");
    assert!(dir.join("data").join("PG_VERSION").is_file());
    drop(server);
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still accepts connections"
    );
}
