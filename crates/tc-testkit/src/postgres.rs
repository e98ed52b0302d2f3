//! A throwaway PostgreSQL server for tests: Debian's `postgresql` package, `initdb` into a
//! temporary directory, listening only on `127.0.0.1` (a free port) and on a unix socket in that
//! directory, stopped and deleted on drop.
//!
//! There is no skipping: when PostgreSQL is not installed, [`TestPostgres::start`] panics and
//! says what to install. Tests run as root and PostgreSQL refuses to run as root, so the server
//! runs as `nobody` then (through `setpriv`, which also ends it if the test process dies).

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The unprivileged user (and group) the server runs as when the tests run as root.
const UNPRIVILEGED_ID: u32 = 65534;

/// How long the server may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// How long a fast shutdown may take before the server is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// What went wrong starting a test server.
#[derive(Debug, thiserror::Error)]
pub enum TestPostgresError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "PostgreSQL is not installed: no /usr/lib/postgresql/<version>/bin/postgres and no \
         `pg_config --bindir`; install Debian's `postgresql` package (apt-get install -y \
         postgresql), as .ci/run does"
    )]
    NotInstalled,
    /// A step failed.
    #[error("test PostgreSQL: {step}: {message}")]
    Step {
        /// What was being done.
        step: String,
        /// What happened (with the server's log when there is one).
        message: String,
    },
}

fn step_error(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestPostgresError {
    let step = step.into();
    move |e| TestPostgresError::Step {
        step,
        message: e.to_string(),
    }
}

/// A running server; stopped (and its directory removed) when dropped.
pub struct TestPostgres {
    child: Child,
    port: u16,
    /// Every commit on disk (fsync on), for benchmarks; tests run without.
    durable: bool,
    bindir: PathBuf,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPostgres")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// The directory of the newest installed PostgreSQL's server binaries: the newest
/// `/usr/lib/postgresql/<version>/bin`, else `pg_config --bindir`.
pub fn find_bindir() -> Result<PathBuf, TestPostgresError> {
    find_bindir_in(Path::new("/usr/lib/postgresql"), Path::new("pg_config"))
}

fn find_bindir_in(lib: &Path, pg_config: &Path) -> Result<PathBuf, TestPostgresError> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(lib)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let output = Command::new(pg_config).arg("--bindir").output();
    if let Ok(output) = output
        && output.status.success()
    {
        let bin = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if bin.join("postgres").is_file() && bin.join("initdb").is_file() {
            return Ok(bin);
        }
    }
    Err(TestPostgresError::NotInstalled)
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A command that runs `program` as the unprivileged user when this process is root, and is
/// ended by the kernel when the thread that started it goes away.
fn unprivileged(program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command.arg("--pdeathsig=TERM");
    if running_as_root() {
        command.args([
            format!("--reuid={UNPRIVILEGED_ID}"),
            format!("--regid={UNPRIVILEGED_ID}"),
            "--clear-groups".into(),
        ]);
    }
    command.arg("--").arg(program);
    command
}

fn free_port() -> Result<u16, TestPostgresError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(step_error("find a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(step_error("find a free port"))?
        .port())
}

impl TestPostgres {
    /// Starts a server, panicking with the reason when it cannot (PostgreSQL not installed
    /// included: tests that need it fail, they are never skipped).
    pub fn start() -> TestPostgres {
        match TestPostgres::try_start() {
            Ok(server) => server,
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts a server.
    pub fn try_start() -> Result<TestPostgres, TestPostgresError> {
        TestPostgres::try_start_with(false)
    }

    /// Starts a server that makes every commit durable (fsync, synchronous commit, full page
    /// writes: PostgreSQL's defaults), for measurements that compare with a store that syncs.
    pub fn try_start_durable() -> Result<TestPostgres, TestPostgresError> {
        TestPostgres::try_start_with(true)
    }

    fn try_start_with(durable: bool) -> Result<TestPostgres, TestPostgresError> {
        let bindir = find_bindir()?;
        let dir = tempfile::Builder::new()
            .prefix("tc-postgres-")
            .tempdir()
            .map_err(step_error("create the temporary directory"))?;
        if running_as_root() {
            std::os::unix::fs::chown(dir.path(), Some(UNPRIVILEGED_ID), Some(UNPRIVILEGED_ID))
                .map_err(step_error("hand the temporary directory to nobody"))?;
        }
        let data = dir.path().join("data");
        let output = unprivileged(&bindir.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(step_error("run initdb"))?;
        if !output.status.success() {
            return Err(TestPostgresError::Step {
                step: "initdb".into(),
                message: format!(
                    "{}: {}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        // A port found free can be taken by someone else before the server binds it: try again
        // with another one when the server exits early.
        let mut last = None;
        for _ in 0..3 {
            match TestPostgres::launch(&bindir, dir.path(), &data, durable) {
                Ok((child, port)) => {
                    return Ok(TestPostgres {
                        child,
                        port,
                        durable,
                        bindir,
                        dir,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("three attempts"))
    }

    fn launch(
        bindir: &Path,
        dir: &Path,
        data: &Path,
        durable: bool,
    ) -> Result<(Child, u16), TestPostgresError> {
        TestPostgres::launch_on(bindir, dir, data, free_port()?, durable)
    }

    fn launch_on(
        bindir: &Path,
        dir: &Path,
        data: &Path,
        port: u16,
        durable: bool,
    ) -> Result<(Child, u16), TestPostgresError> {
        let sync = if durable { "on" } else { "off" };
        let log = dir.join("postgres.log");
        let log_file = std::fs::File::create(&log).map_err(step_error("create the log"))?;
        if running_as_root() {
            std::os::unix::fs::chown(&log, Some(UNPRIVILEGED_ID), Some(UNPRIVILEGED_ID))
                .map_err(step_error("hand the log to nobody"))?;
        }
        let stderr = log_file
            .try_clone()
            .map_err(step_error("open the log twice"))?;
        let mut child = unprivileged(&bindir.join("postgres"))
            .arg("-D")
            .arg(data)
            .args(["-c", "listen_addresses=127.0.0.1", "-p", &port.to_string()])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args(["-c", &format!("fsync={sync}")])
            .args(["-c", &format!("synchronous_commit={sync}")])
            .args(["-c", &format!("full_page_writes={sync}")])
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            .spawn()
            .map_err(step_error("start postgres"))?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().map_err(step_error("wait for postgres"))? {
                return Err(TestPostgresError::Step {
                    step: "start postgres".into(),
                    message: format!(
                        "it exited ({status}) before accepting connections; its log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ),
                });
            }
            let ready = Command::new(bindir.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .args(["-t", "1", "-q"])
                .stdin(Stdio::null())
                .status()
                .map_err(step_error("run pg_isready"))?;
            if ready.success() {
                return Ok((child, port));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TestPostgresError::Step {
                    step: "start postgres".into(),
                    message: format!(
                        "not accepting connections after {START_DEADLINE:?}; its log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The directory of the server binaries in use (`psql`, `pg_dump`, ...).
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// A connection URL of database `postgres` as the superuser `postgres` (trust
    /// authentication, no password).
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// A connection URL of database `name`.
    pub fn url_of(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `sql` with `psql` on the database of `url` (of this server), and gives its output
    /// (unaligned, tuples only, trimmed); panics with psql's error when it fails.
    pub fn psql(&self, url: &str, sql: &str) -> String {
        let output = Command::new(self.bindir.join("psql"))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Creates a new empty database with a name unique in this server, and gives its URL.
    pub fn create_database(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let name = format!("test_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let output = Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &self.url()])
            .args(["-c", &format!("CREATE DATABASE {name}")])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "CREATE DATABASE {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.url_of(&name)
    }
}

impl TestPostgres {
    /// Stops the server (a fast shutdown: clients are disconnected) and waits for it, keeping
    /// its data, as a database that goes away for a while. [`TestPostgres::restart`] brings it
    /// back on the same port.
    pub fn stop(&mut self) {
        self.shut_down();
    }

    /// Makes the server accept TCP connections over TLS only, with a certificate for the name
    /// `localhost` (and no address) from a CA made for it, and restarts it; returns the CA
    /// certificate's PEM file. A plain-text TCP connection is then refused by `pg_hba.conf`
    /// (the unix socket stays open, for [`TestPostgres::psql`]). A client verifying the
    /// certificate must connect by the name `localhost` (`host=localhost hostaddr=127.0.0.1`).
    pub fn require_tls(&mut self) -> PathBuf {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("generate the test CA's key");
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "thinfleet test database CA");
        let ca = ca_params
            .self_signed(&ca_key)
            .expect("sign the test CA's certificate");
        let server_key = KeyPair::generate().expect("generate the server's key");
        let server = CertificateParams::new(vec!["localhost".to_string()])
            .expect("server certificate parameters")
            .signed_by(&server_key, &Issuer::new(ca_params, ca_key))
            .expect("sign the server's certificate");
        let data = self.dir.path().join("data");
        let write = |name: &str, text: &str| {
            let path = data.join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if running_as_root() {
                std::os::unix::fs::chown(&path, Some(UNPRIVILEGED_ID), Some(UNPRIVILEGED_ID))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        };
        write("server.crt", &server.pem());
        write("server.key", &server_key.serialize_pem());
        write(
            "pg_hba.conf",
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        );
        let conf = data.join("postgresql.auto.conf");
        let mut settings = std::fs::read_to_string(&conf).unwrap_or_default();
        settings.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        write("postgresql.auto.conf", &settings);
        let ca_file = self.dir.path().join("ca.crt");
        std::fs::write(&ca_file, ca.pem()).unwrap_or_else(|e| panic!("{}: {e}", ca_file.display()));
        self.stop();
        self.restart();
        ca_file
    }

    /// Starts the stopped server again, with its data, on the same port.
    pub fn restart(&mut self) {
        let data = self.dir.path().join("data");
        match TestPostgres::launch_on(
            &self.bindir,
            self.dir.path(),
            &data,
            self.port,
            self.durable,
        ) {
            Ok((child, _)) => self.child = child,
            Err(e) => panic!("restart PostgreSQL on port {}: {e}", self.port),
        }
    }

    fn shut_down(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGINT is PostgreSQL's fast shutdown: it disconnects clients and stops.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.shut_down();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_postgresql_is_an_error_that_says_what_to_install() {
        let empty = tempfile::tempdir().unwrap();
        let error = find_bindir_in(empty.path(), &empty.path().join("no-pg_config")).unwrap_err();
        assert!(matches!(error, TestPostgresError::NotInstalled));
        assert!(error.to_string().contains("apt-get install -y postgresql"));
    }

    #[test]
    fn the_newest_version_is_chosen() {
        let lib = tempfile::tempdir().unwrap();
        for version in ["9", "15", "13", "notes"] {
            let bin = lib.path().join(version).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("postgres"), "").unwrap();
        }
        let found = find_bindir_in(lib.path(), &lib.path().join("no-pg_config")).unwrap();
        assert_eq!(found, lib.path().join("15").join("bin"));
    }
}
