//! TLS to the database server: with the CA that signed its certificate the store encrypts every
//! connection (the pool's and the change feed's listener) and verifies the server's chain and
//! name; a wrong CA, a wrong name, a server without TLS or a URL that asks for TLS without a CA
//! to verify with is refused at open, saying why.

use std::path::Path;
use std::time::Duration;

use tc_store::{PgSettings, PgStore, Store, StoreError};
use tc_testkit::postgres::TestPostgres;

fn open(url: &str, ca_file: Option<&Path>) -> Result<PgStore, StoreError> {
    PgStore::open(&PgSettings {
        ca_file: ca_file.map(Path::to_path_buf),
        ..PgSettings::new(url)
    })
}

fn refused(url: &str, ca_file: Option<&Path>) -> String {
    match open(url, ca_file) {
        Ok(_) => panic!("{url} with {ca_file:?} was opened"),
        Err(e) => e.to_string(),
    }
}

/// A database on a server that takes TCP connections over TLS only: its plain URL (by
/// address), the same by the certificate's name, and the CA file.
fn tls_server() -> (TestPostgres, String, String, std::path::PathBuf) {
    let mut server = TestPostgres::start();
    let url = server.create_database();
    let ca_file = server.require_tls();
    let name = url.rsplit('/').next().unwrap().to_string();
    let by_name = format!(
        "postgres://postgres@localhost:{}/{name}?hostaddr=127.0.0.1",
        server.port()
    );
    (server, url, by_name, ca_file)
}

#[test]
fn with_the_ca_every_connection_is_encrypted_and_the_server_verified() {
    let (server, url, by_name, ca_file) = tls_server();
    for mode in [
        "",
        "&sslmode=require",
        "&sslmode=verify-ca",
        "&sslmode=verify-full",
    ] {
        let store = open(&format!("{by_name}{mode}"), Some(&ca_file))
            .unwrap_or_else(|e| panic!("sslmode {mode}: {e}"));
        assert!(store.encrypted());
        assert_eq!(store.plain_text_host(), None);
        store.put_setting("k", Some(mode)).unwrap();
        assert_eq!(store.get_setting("k").unwrap().as_deref(), Some(mode));
    }
    // The change feed's listener has a connection of its own, encrypted too.
    let store = open(&by_name, Some(&ca_file)).unwrap();
    let mut listener = store.listen().unwrap();
    store.put_setting("k", Some("heard")).unwrap();
    assert!(
        listener.wait(Duration::from_secs(5)).unwrap(),
        "the change is heard"
    );
    let (all, plain) = (
        server.psql(
            &url,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'thinfleet'",
        ),
        server.psql(
            &url,
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'thinfleet' AND NOT s.ssl",
        ),
    );
    assert_ne!(all, "0", "the store's connections are seen");
    assert_eq!(plain, "0", "none of the {all} connections is in plain text");
}

#[test]
fn a_server_that_cannot_be_verified_or_that_offers_no_tls_is_refused() {
    let (mut server, url, by_name, ca_file) = tls_server();

    // Another CA than the one that signed the server's certificate.
    let mut other = TestPostgres::start();
    let other_ca = other.require_tls();
    let error = refused(&by_name, Some(&other_ca));
    assert!(error.contains("certificate"), "{error}");

    // The right CA, but the server reached by an address its certificate does not name.
    let error = refused(&format!("{url}?sslmode=verify-full"), Some(&ca_file));
    assert!(error.contains("certificate"), "{error}");

    // Plain text to a server that requires TLS: the server's refusal is what is said.
    let error = refused(&url, None);
    assert!(error.contains("no encryption"), "{error}");

    // A URL that asks for TLS without a CA to verify the server with.
    for mode in ["require", "verify-ca", "verify-full"] {
        let error = refused(&format!("{by_name}&sslmode={mode}"), None);
        assert!(
            error.contains(&format!("sslmode={mode}")) && error.contains("--store-ca-file"),
            "{error}"
        );
    }
    // A CA with sslmode=disable contradicts itself.
    let error = refused(&format!("{by_name}&sslmode=disable"), Some(&ca_file));
    assert!(error.contains("sslmode=disable"), "{error}");
    // A CA file that is not one.
    let not_a_ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_a_ca.path(), "not a certificate").unwrap();
    let error = refused(&by_name, Some(not_a_ca.path()));
    assert!(error.contains("PostgreSQL CA certificates"), "{error}");

    // A server without TLS, given a CA: TLS is required, never given up for plain text.
    drop(other);
    let plain = TestPostgres::start();
    let plain_url = format!(
        "postgres://postgres@localhost:{}/postgres?hostaddr=127.0.0.1",
        plain.port()
    );
    let error = refused(&plain_url, Some(&ca_file));
    assert!(
        error.to_lowercase().contains("tls") || error.contains("SSL"),
        "{error}"
    );
    // Without the CA the same server is used in plain text, and loopback is not warned about.
    let store = open(&plain_url, None).unwrap();
    assert!(!store.encrypted());
    assert_eq!(store.plain_text_host(), None);
    drop(store);

    // Nothing was written by any refused open; the server is still good.
    server.stop();
    server.restart();
    assert!(open(&by_name, Some(&ca_file)).is_ok());
}
