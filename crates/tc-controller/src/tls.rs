//! The controller's TLS: which certificate it serves (its own PKI, or the admin's files reloaded
//! when they change) and the rustls server configuration (ring, ALPN `h2` and `http/1.1`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tc_trust::CaCertHash;

use crate::pki;

/// How the controller serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// HTTPS with the controller's own CA and server certificate in `<data>/pki/`; the server
    /// certificate also names these host names or IPs (`--tls-san`).
    Generated {
        /// Names besides the defaults (see [`pki::server_names`]).
        extra_names: Vec<String>,
    },
    /// HTTPS with the admin's PEM chain and key, reloaded when the files change.
    Files {
        /// The certificate chain, server certificate first (`--tls-cert`).
        cert: PathBuf,
        /// Its private key (`--tls-key`).
        key: PathBuf,
    },
    /// Plain HTTP/1.1 and h2c (`--insecure-http`).
    Disabled,
}

/// What went wrong setting TLS up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The generated PKI.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The admin's files.
    #[error("{0}")]
    Files(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A certificate being served, with the fingerprint of the CA agents pin for it.
struct Served {
    certified: Arc<CertifiedKey>,
    ca_hash: CaCertHash,
}

/// Hands every handshake the current certificate; a reload swaps it atomically.
pub struct CertResolver {
    current: RwLock<Arc<Served>>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver")
            .field("ca_hash", &self.ca_hash())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().certified.clone())
    }
}

impl CertResolver {
    fn new(served: Served) -> CertResolver {
        CertResolver {
            current: RwLock::new(Arc::new(served)),
        }
    }

    fn current(&self) -> Arc<Served> {
        self.current.read().expect("resolver lock").clone()
    }

    fn swap(&self, served: Served) {
        *self.current.write().expect("resolver lock") = Arc::new(served);
    }

    /// The fingerprint of the CA of the certificate being served.
    pub fn ca_hash(&self) -> CaCertHash {
        self.current().ca_hash
    }

    /// The certificate chain being served.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current().certified.cert.clone()
    }
}

/// The TLS side of a running controller.
pub struct ServerTls {
    /// Chooses the certificate of each handshake.
    pub resolver: Arc<CertResolver>,
    /// The rustls configuration every connection uses.
    pub config: Arc<ServerConfig>,
    /// The admin's files, watched for changes; `None` for the generated PKI.
    pub files: Option<(PathBuf, PathBuf)>,
    /// The generated PKI's directory and the names of its server certificate, to issue it again
    /// before it expires; `None` for the admin's files.
    pub generated: Option<(PathBuf, Vec<String>)>,
}

impl ServerTls {
    /// Sets TLS up for `mode`: loads or makes the PKI in `<data_dir>/pki`, or loads the admin's
    /// files. `None` for [`TlsMode::Disabled`].
    pub fn setup(
        mode: &TlsMode,
        data_dir: &Path,
        listen: Option<IpAddr>,
    ) -> Result<Option<ServerTls>, TlsError> {
        let (served, files, generated) = match mode {
            TlsMode::Disabled => return Ok(None),
            TlsMode::Generated { extra_names } => {
                let names = pki::server_names(extra_names, listen);
                let dir = data_dir.join("pki");
                let served = load_generated(&dir, &names, unix_now())?;
                (served, None, Some((dir, names)))
            }
            TlsMode::Files { cert, key } => (
                load_files(cert, key).map_err(TlsError::Files)?,
                Some((cert.clone(), key.clone())),
                None,
            ),
        };
        let resolver = Arc::new(CertResolver::new(served));
        let config = Arc::new(server_config(resolver.clone())?);
        Ok(Some(ServerTls {
            resolver,
            config,
            files,
            generated,
        }))
    }
}

/// The generated PKI, made or loaded (a server certificate close to its end is issued again).
fn load_generated(dir: &Path, names: &[String], now: i64) -> Result<Served, TlsError> {
    let identity = pki::load_or_create(dir, names, now)?;
    let certified = certified_key(identity.chain, identity.key)
        .map_err(|e| TlsError::Files(format!("the generated server key: {e}")))?;
    Ok(Served {
        certified,
        ca_hash: identity.ca_hash,
    })
}

/// The rustls server configuration of the controller: ring, TLS 1.2 and 1.3, ALPN `h2` then
/// `http/1.1`, certificates from `resolver`. (`tc-bench` puts its bare endpoint behind the same.)
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(tc_trust::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![tc_trust::ALPN_H2.to_vec(), tc_trust::ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// A certified key from a chain and its key; refuses a key that is not the certificate's.
fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, String> {
    let provider = tc_trust::provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unusable private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| format!("the key does not belong to the certificate: {e}"))?;
    Ok(Arc::new(certified))
}

/// Loads the admin's PEM chain and key. The CA fingerprint is that of the last certificate of
/// the chain (give the chain up to the CA agents should pin).
fn load_files(cert: &Path, key: &Path) -> Result<Served, String> {
    let chain = tc_trust::read_pem_certificates(cert).map_err(|e| e.to_string())?;
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: no usable PEM private key: {e}", key.display()))?;
    let ca_hash = CaCertHash::of_certificate(chain.last().expect("at least one certificate"))
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let certified = certified_key(chain, private_key)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    Ok(Served { certified, ca_hash })
}

/// What identifies a version of a file: size, modification time, inode.
type Stamp = Option<(u64, Option<SystemTime>, u64)>;

fn stamp(path: &Path) -> Stamp {
    let metadata = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
    #[cfg(not(unix))]
    let inode = 0;
    Some((metadata.len(), metadata.modified().ok(), inode))
}

/// How often a running controller checks whether its generated server certificate needs to be
/// issued again (it is at start too).
const RENEWAL_CHECK: Duration = Duration::from_secs(3600);

/// Keeps the served certificate current until `shutdown`: the admin's files are reloaded when
/// they change ([`watch_files`]); the generated server certificate is issued again, without a
/// restart, when less than [`pki::RENEW_BEFORE_DAYS`] remain (checked hourly).
pub async fn maintain(
    tls: Arc<ServerTls>,
    interval: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if tls.files.is_some() {
        watch_files(tls, interval, shutdown).await;
    } else {
        renew_generated(tls, RENEWAL_CHECK, shutdown).await;
    }
}

async fn renew_generated(
    tls: Arc<ServerTls>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Some((dir, names)) = tls.generated.clone() else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        let now = unix_now();
        let ends = tls
            .resolver
            .chain()
            .first()
            .and_then(|certificate| tc_trust::der::not_after(certificate).ok());
        if ends.is_some_and(|end| end - now >= pki::RENEW_BEFORE_DAYS * 86_400) {
            continue;
        }
        let (dir, names) = (dir.clone(), names.clone());
        match tokio::task::spawn_blocking(move || load_generated(&dir, &names, now)).await {
            Ok(Ok(served)) => {
                tls.resolver.swap(served);
                tracing::info!("serving the newly issued server certificate");
            }
            Ok(Err(error)) => tracing::error!(%error, "cannot issue the server certificate again"),
            Err(error) => tracing::error!(%error, "cannot issue the server certificate again"),
        }
    }
}

/// Reloads the admin's certificate and key when either file changes (checked every `interval`),
/// until `shutdown`. A reload that fails keeps the certificate being served and logs the error
/// once; the next change of the files is tried again.
pub async fn watch_files(
    tls: Arc<ServerTls>,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Some((cert, key)) = tls.files.clone() else {
        return;
    };
    let mut seen = (stamp(&cert), stamp(&key));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let now = (stamp(&cert), stamp(&key));
        if now == seen {
            continue;
        }
        seen = now;
        let (cert_path, key_path) = (cert.clone(), key.clone());
        let loaded = tokio::task::spawn_blocking(move || load_files(&cert_path, &key_path)).await;
        match loaded {
            Ok(Ok(served)) => {
                let ca_hash = served.ca_hash;
                tls.resolver.swap(served);
                tracing::info!(cert = %cert.display(), ca_cert_hash = %ca_hash, "reloaded the TLS certificate");
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot reload the TLS certificate; still serving the previous one");
            }
            Err(error) => tracing::error!(%error, "cannot reload the TLS certificate"),
        }
    }
}

fn unix_now() -> i64 {
    pki::unix_now()
}
