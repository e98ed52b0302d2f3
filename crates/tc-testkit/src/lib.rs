//! Test support for thinfleet: a real controller in-process on `127.0.0.1:0` with a throwaway
//! data directory (HTTPS with its own CA by default, as in production), fixtures (zip packages built on the fly), the fleet simulator ([`sim`]),
//! checks of the deployment files ([`deploy`]) and a throwaway PostgreSQL server ([`postgres`]).

pub mod browser;
pub mod deploy;
pub mod postgres;
pub mod protocol;
pub mod sim;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use tc_controller::{Config, TlsMode};

/// A controller running in this process on a loopback port, with its own temporary data
/// directory. Dropping it stops the server.
///
/// It serves HTTPS with the CA it creates in its data directory, unless the settings ask for
/// plain HTTP ([`TestController::start_insecure`]); [`TestController::http_client`] and
/// [`TestController::sim_tls`] trust that CA.
pub struct TestController {
    addr: SocketAddr,
    /// The CA the controller's certificate chains to; `None` for plain HTTP.
    ca: Option<TestCa>,
    admin_token: String,
    bootstrap_token: String,
    data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), tc_controller::ServeError>>>,
}

impl TestController {
    /// Starts a controller with test-friendly settings (no watched directory, fast resync,
    /// enrolment rate limits a test's burst of enrolments from one address stays within).
    pub async fn start() -> TestController {
        Self::start_with(|_| {}).await
    }

    /// Starts a controller serving plain HTTP/1.1 and h2c (`--insecure-http`).
    pub async fn start_insecure() -> TestController {
        Self::start_with(|config| config.tls = TlsMode::Disabled).await
    }

    /// Starts a controller after letting `adjust` change the settings.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestController {
        let temp = tempfile::tempdir().expect("temporary directory");
        let data_dir = temp.path().join("data");
        let mut controller = Self::start_in(&data_dir, adjust).await;
        controller._temp = Some(temp);
        controller
    }

    /// Starts a controller on an existing data directory (to test restarts).
    pub async fn start_in(data_dir: &Path, adjust: impl FnOnce(&mut Config)) -> TestController {
        let mut config = Config::new(data_dir);
        config.resync_interval = Duration::from_secs(2);
        config.liveness_flush_interval = Duration::from_millis(200);
        config.watch_debounce = Duration::from_millis(100);
        config.enroll_rate = tc_controller::ratelimit::RateLimit::new(10_000.0, 100_000);
        config.enroll_rate_per_source = tc_controller::ratelimit::RateLimit::new(10_000.0, 100_000);
        adjust(&mut config);
        let tls_mode = config.tls.clone();
        std::fs::create_dir_all(data_dir).expect("data directory");
        let (admin_token, _) = tc_controller::tokens::load_or_create(&data_dir.join("admin.token"))
            .expect("admin token");
        let (bootstrap_token, _) =
            tc_controller::tokens::load_or_create(&data_dir.join("bootstrap.token"))
                .expect("bootstrap token");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tc_controller::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        let mut controller = TestController {
            addr,
            ca: None,
            admin_token,
            bootstrap_token,
            data_dir: data_dir.to_path_buf(),
            _temp: None,
            stop: Some(stop),
            task: Some(task),
        };
        controller.wait_ready(&tls_mode).await;
        controller
    }

    /// Waits until the CA exists (over HTTPS) and `/readyz` answers 200.
    async fn wait_ready(&mut self, mode: &TlsMode) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let ca_path = match mode {
            TlsMode::Disabled => None,
            TlsMode::Generated { .. } => Some(self.data_dir.join("pki/ca.crt")),
            TlsMode::Files { cert, .. } => Some(cert.clone()),
        };
        loop {
            if self.ca.is_none()
                && let Some(path) = &ca_path
                && let Ok(certificates) = tc_trust::read_pem_certificates(path)
            {
                let ca = certificates.last().expect("at least one").clone();
                self.ca = Some(TestCa::new(ca, self.addr));
            }
            if ca_path.is_none() || self.ca.is_some() {
                let request = format!(
                    "GET /readyz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    self.addr
                );
                let tls = self.sim_tls();
                if let Ok(mut connection) =
                    sim::http::Connection::connect_with(self.addr, tls.as_ref()).await
                    && let Ok(response) = connection.request(request.as_bytes()).await
                    && response.status == 200
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the controller did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `https://127.0.0.1:PORT` (`http://` with plain HTTP).
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA's fingerprint, `sha256:<hex>` (what agents get as `--ca-cert-hash`); `None` with
    /// plain HTTP.
    pub fn ca_cert_hash(&self) -> Option<String> {
        self.ca.as_ref().map(|ca| ca.hash.to_string())
    }

    /// The CA certificate as PEM; `None` with plain HTTP.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca
            .as_ref()
            .map(|ca| tc_trust::certificate_pem(&ca.certificate))
    }

    /// A rustls client configuration that trusts the controller's CA and offers `alpn`.
    pub fn tls_client_config(&self, alpn: &[&[u8]]) -> Option<Arc<rustls::ClientConfig>> {
        let ca = self.ca.as_ref()?;
        let trust = tc_trust::Trust::CaCertificates(vec![ca.certificate.clone()]);
        Some(Arc::new(
            tc_trust::client_config(&trust, alpn, None).expect("client configuration"),
        ))
    }

    /// TLS for the simulator's clients (HTTP/1.1; [`sim::h2`] asks for h2 itself).
    pub fn sim_tls(&self) -> Option<sim::Tls> {
        self.ca.as_ref().map(|ca| ca.sim.clone())
    }

    /// A reqwest client that trusts the controller's CA (no proxy, 60 s timeout); also fine for
    /// plain HTTP.
    pub fn http_client(&self) -> reqwest::Client {
        tc_controller::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60));
        if let Some(config) = self.tls_client_config(&[tc_trust::ALPN_HTTP1]) {
            builder = builder.use_preconfigured_tls((*config).clone());
        }
        builder.build().expect("HTTP client")
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The bootstrap token agents enrol with.
    pub fn bootstrap_token(&self) -> &str {
        &self.bootstrap_token
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the server and waits until it has shut down cleanly.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("controller task")
                .expect("controller stopped cleanly");
        }
    }

    /// Stops the server but keeps the data directory, returning it (for restart tests).
    pub async fn stop_keep_data(mut self) -> (PathBuf, Option<tempfile::TempDir>) {
        self.shutdown().await;
        (self.data_dir.clone(), self._temp.take())
    }
}

impl Drop for TestController {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One file of a test package.
pub struct PackageFile<'a> {
    /// Path inside the zip.
    pub path: &'a str,
    /// Content.
    pub content: &'a [u8],
    /// Unix mode (0o755 for scripts).
    pub mode: u32,
}

/// Builds a zip in memory from files, with fixed timestamps so the bytes (and sha256) are stable.
pub fn build_zip(files: &[PackageFile<'_>]) -> Vec<u8> {
    let mut buffer = std::io::Cursor::new(Vec::new());
    {
        let mut writer = zip::ZipWriter::new(&mut buffer);
        for file in files {
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .last_modified_time(zip::DateTime::default())
                .unix_permissions(file.mode);
            writer.start_file(file.path, options).expect("zip entry");
            writer.write_all(file.content).expect("zip write");
        }
        writer.finish().expect("zip finish");
    }
    buffer.into_inner()
}

/// Lowercase hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The CA of a test controller, with the client settings that trust it.
struct TestCa {
    certificate: rustls::pki_types::CertificateDer<'static>,
    hash: tc_trust::CaCertHash,
    sim: sim::Tls,
}

impl TestCa {
    fn new(certificate: rustls::pki_types::CertificateDer<'static>, addr: SocketAddr) -> TestCa {
        tc_controller::install_crypto_provider();
        let hash = tc_trust::CaCertHash::of_certificate(&certificate).expect("a CA certificate");
        let trust = tc_trust::Trust::CaCertificates(vec![certificate.clone()]);
        let config = tc_trust::client_config(&trust, &[tc_trust::ALPN_HTTP1], None)
            .expect("client configuration");
        TestCa {
            certificate,
            hash,
            sim: sim::Tls::new(Arc::new(config), addr),
        }
    }
}
