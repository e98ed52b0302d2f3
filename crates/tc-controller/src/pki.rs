//! The controller's own PKI, made at first start in `<data>/pki/`: a CA (`ca.crt`, `ca.key`,
//! ECDSA P-256, 10 years) and a server certificate it signs (`server.crt`, `server.key`, 1 year).
//!
//! The server certificate is issued again when less than 30 days remain (at start, and while
//! running by [`crate::tls::maintain`]) or, at start, when the names it should carry changed (`localhost`, `127.0.0.1`, `::1`, the machine's host name, the
//! listen address when it is a specific IP, and every `--tls-san`). The CA is never replaced:
//! agents pin its fingerprint. Every file is mode 0600 (the data directory is private as a whole), `pki/` 0700.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tc_trust::CaCertHash;

/// Validity of the CA.
const CA_DAYS: i64 = 3650;
/// Validity of a server certificate.
const SERVER_DAYS: i64 = 365;
/// A server certificate with less than this left is issued again at start.
pub const RENEW_BEFORE_DAYS: i64 = 30;
const DAY: i64 = 86_400;
/// The next CA of a rotation (`tc-controller ca prepare`).
const NEXT_CA_CERT: &str = "next-ca.crt";
const NEXT_CA_KEY: &str = "next-ca.key";
/// The CA's common name (also its issuer name in every server certificate it signs).
const CA_NAME: &str = "thinfleet controller CA";

/// What went wrong with the PKI directory.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not what it should be.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// One of the CA's two files is missing: making a new CA would lock every agent out.
    #[error(
        "{present} exists but {missing} does not; restore it from a backup (a new CA would need a new fingerprint on every agent), or remove both to start a new CA"
    )]
    HalfCa {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// rcgen could not make a key or a certificate.
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The certificate chain and key the controller serves, with the CA's fingerprint.
pub struct ServerIdentity {
    /// Server certificate first, then the CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The server certificate's key.
    pub key: PrivateKeyDer<'static>,
    /// The CA certificate.
    pub ca: CertificateDer<'static>,
    /// The CA's fingerprint.
    pub ca_hash: CaCertHash,
    /// The server certificate was issued by this start.
    pub issued: bool,
}

/// The names every generated server certificate carries, plus `extra` (host names or IPs):
/// `localhost`, `127.0.0.1`, `::1`, the host name, and `listen` when it is a specific address.
pub fn server_names(extra: &[String], listen: Option<IpAddr>) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Some(host) = hostname() {
        names.push(host);
    }
    if let Some(ip) = listen.filter(|ip| !ip.is_unspecified()) {
        names.push(ip.to_string());
    }
    names.extend(extra.iter().map(|name| name.trim().to_string()));
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|name| !name.is_empty() && seen.insert(name.to_ascii_lowercase()));
    names
}

fn hostname() -> Option<String> {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_str().ok()?.trim().to_string();
    (!name.is_empty() && name != "(none)").then_some(name)
}

/// Loads the PKI in `dir`, making what is missing: the CA at first start, the server certificate
/// when it is missing, expires within [`RENEW_BEFORE_DAYS`] or lacks one of `names`.
pub fn load_or_create(dir: &Path, names: &[String], now: i64) -> Result<ServerIdentity, PkiError> {
    create_private_dir(dir)?;
    let (ca_cert_path, ca_key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    let (ca, ca_key) = match (ca_cert_path.exists(), ca_key_path.exists()) {
        (true, true) => (
            read_certificate(&ca_cert_path)?,
            read_key_pair(&ca_key_path)?,
        ),
        (false, false) => {
            let made = make_ca(&ca_cert_path, &ca_key_path, now)?;
            tracing::info!(path = %ca_cert_path.display(), "created the controller's CA");
            made
        }
        (true, false) => {
            return Err(PkiError::HalfCa {
                present: ca_cert_path,
                missing: ca_key_path,
            });
        }
        (false, true) => {
            return Err(PkiError::HalfCa {
                present: ca_key_path,
                missing: ca_cert_path,
            });
        }
    };
    let invalid = |path: &Path, message: String| PkiError::Invalid {
        path: path.to_owned(),
        message,
    };
    let ca_hash =
        CaCertHash::of_certificate(&ca).map_err(|e| invalid(&ca_cert_path, e.to_string()))?;
    if CaCertHash::of_spki(&rcgen::PublicKeyData::subject_public_key_info(&ca_key)) != ca_hash {
        return Err(invalid(
            &ca_key_path,
            format!("is not the key of {}", ca_cert_path.display()),
        ));
    }

    let (server_cert_path, server_key_path) = (dir.join("server.crt"), dir.join("server.key"));
    let current = current_server(&server_cert_path, &server_key_path, names, now)
        .filter(|(server, _)| issued_by(server, &ca, &server_cert_path, now));
    let (server, key, issued) = match current {
        Some((server, key)) => (server, key, false),
        None => {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, "thinfleet controller");
            params.subject_alt_names = names
                .iter()
                .map(|name| match name.parse::<IpAddr>() {
                    Ok(ip) => Ok(SanType::IpAddress(ip)),
                    Err(_) => name.clone().try_into().map(SanType::DnsName),
                })
                .collect::<Result<_, _>>()?;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.use_authority_key_identifier_extension = true;
            params.not_before = timestamp(now - DAY);
            params.not_after = timestamp(now + SERVER_DAYS * DAY);
            let issuer = Issuer::new(ca_params(), ca_key);
            let certificate = params.signed_by(&key, &issuer)?;
            write_private(&server_key_path, key.serialize_pem().as_bytes())?;
            write_file(&server_cert_path, certificate.pem().as_bytes(), 0o600)?;
            tracing::info!(path = %server_cert_path.display(), names = ?names, "issued the server certificate");
            let key = PrivateKeyDer::try_from(key.serialize_der())
                .map_err(|e| invalid(&server_key_path, e.to_string()))?;
            (certificate.der().clone(), key, true)
        }
    };
    Ok(ServerIdentity {
        chain: vec![server, ca.clone()],
        key,
        ca,
        ca_hash,
        issued,
    })
}

/// The server certificate and key on disk, if they are usable as they are.
fn current_server(
    cert_path: &Path,
    key_path: &Path,
    names: &[String],
    now: i64,
) -> Option<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let certificate = read_certificate(cert_path).ok()?;
    let key = PrivateKeyDer::from_pem_file(key_path).ok()?;
    let not_after = tc_trust::der::not_after(&certificate).ok()?;
    if not_after - now < RENEW_BEFORE_DAYS * DAY {
        tracing::info!(path = %cert_path.display(), "the server certificate expires soon; issuing a new one");
        return None;
    }
    let present = tc_trust::der::subject_alt_names(&certificate).ok()?;
    let missing: Vec<_> = names
        .iter()
        .filter(|name| !present.iter().any(|p| p.eq_ignore_ascii_case(name)))
        .collect();
    if !missing.is_empty() {
        tracing::info!(path = %cert_path.display(), missing = ?missing, "the server certificate lacks names; issuing a new one");
        return None;
    }
    Some((certificate, key))
}

/// Makes a CA (`cert_path`, `key_path`).
fn make_ca(
    cert_path: &Path,
    key_path: &Path,
    now: i64,
) -> Result<(CertificateDer<'static>, KeyPair), PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = ca_params();
    params.not_before = timestamp(now - DAY);
    params.not_after = timestamp(now + CA_DAYS * DAY);
    let certificate = params.self_signed(&key)?;
    write_private(key_path, key.serialize_pem().as_bytes())?;
    write_file(cert_path, certificate.pem().as_bytes(), 0o600)?;
    Ok((certificate.der().clone(), key))
}

/// Whether `server` verifies against `ca` alone (as agents pinning `ca` check it); a server
/// certificate of another CA (the CA was replaced) is issued again.
fn issued_by(server: &CertificateDer<'_>, ca: &CertificateDer<'_>, path: &Path, now: i64) -> bool {
    use rustls::client::danger::ServerCertVerifier;
    let mut roots = rustls::RootCertStore::empty();
    if roots.add(ca.clone().into_owned()).is_err() {
        return false;
    }
    let Ok(verifier) = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        tc_trust::provider(),
    )
    .build() else {
        return false;
    };
    let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now).unwrap_or(0),
    ));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
    let verified = verifier
        .verify_server_cert(server, &[], &name, &[], at)
        .is_ok();
    if !verified {
        tracing::info!(path = %path.display(), "the server certificate is not the CA's; issuing a new one");
    }
    verified
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

/// The fingerprint of the CA in `dir`, when there is one.
pub fn ca_hash(dir: &Path) -> Option<CaCertHash> {
    hash_of_file(&dir.join("ca.crt"))
}

fn hash_of_file(path: &Path) -> Option<CaCertHash> {
    if !path.exists() {
        return None;
    }
    read_certificate(path)
        .ok()
        .and_then(|certificate| CaCertHash::of_certificate(&certificate).ok())
}

/// The next CA of a CA rotation, when one was prepared: `next-ca.crt` in the PKI directory.
pub fn next_ca_hash(dir: &Path) -> Option<CaCertHash> {
    hash_of_file(&dir.join(NEXT_CA_CERT))
}

/// First step of replacing the CA: makes the next CA (`next-ca.crt`, `next-ca.key`) unless it
/// exists, and answers its fingerprint. The controller keeps serving with its CA; agents are
/// given both fingerprints (the join material of new tokens has them) before the switch.
pub fn prepare_next_ca(dir: &Path, now: i64) -> Result<CaCertHash, PkiError> {
    create_private_dir(dir)?;
    let (cert_path, key_path) = (dir.join(NEXT_CA_CERT), dir.join(NEXT_CA_KEY));
    let certificate = match (cert_path.exists(), key_path.exists()) {
        (true, true) => read_certificate(&cert_path)?,
        (false, false) => make_ca(&cert_path, &key_path, now)?.0,
        (true, false) => {
            return Err(PkiError::HalfCa {
                present: cert_path,
                missing: key_path,
            });
        }
        (false, true) => {
            return Err(PkiError::HalfCa {
                present: key_path,
                missing: cert_path,
            });
        }
    };
    CaCertHash::of_certificate(&certificate).map_err(|e| PkiError::Invalid {
        path: cert_path,
        message: e.to_string(),
    })
}

/// Second step, with the controller stopped: the next CA becomes the CA (the old one is kept as
/// `previous-ca.crt`/`.key`), and the server certificate is issued by it at the next start.
/// Answers the old and the new fingerprint.
pub fn rotate_ca(dir: &Path) -> Result<(CaCertHash, CaCertHash), PkiError> {
    let (next_cert, next_key) = (dir.join(NEXT_CA_CERT), dir.join(NEXT_CA_KEY));
    if !next_cert.exists() || !next_key.exists() {
        return Err(PkiError::Invalid {
            path: next_cert,
            message: "no next CA: run `tc-controller ca prepare` first, and give agents its \
                      fingerprint"
                .into(),
        });
    }
    let hash_of = |path: &Path| -> Result<CaCertHash, PkiError> {
        CaCertHash::of_certificate(&read_certificate(path)?).map_err(|e| PkiError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })
    };
    let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let old = hash_of(&ca_cert)?;
    let new = hash_of(&next_cert)?;
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|source| PkiError::Io {
            path: from.to_owned(),
            source,
        })
    };
    rename(&ca_cert, &dir.join("previous-ca.crt"))?;
    rename(&ca_key, &dir.join("previous-ca.key"))?;
    rename(&next_key, &ca_key)?;
    rename(&next_cert, &ca_cert)?;
    for file in ["server.crt", "server.key"] {
        match std::fs::remove_file(dir.join(file)) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                return Err(PkiError::Io {
                    path: dir.join(file),
                    source,
                });
            }
            _ => {}
        }
    }
    Ok((old, new))
}

/// The CA's parameters. Server certificates are signed with these and the CA's key: the issuer
/// name and key identifier they carry are the CA certificate's own.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn timestamp(seconds: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(seconds).expect("a time within the year 9999")
}

fn read_certificate(path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    let certificates = tc_trust::read_pem_certificates(path).map_err(|e| PkiError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    Ok(certificates.into_iter().next().expect("at least one"))
}

fn read_key_pair(path: &Path) -> Result<KeyPair, PkiError> {
    let text = std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })?;
    KeyPair::from_pem(&text).map_err(|e| PkiError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Creates `dir` (mode 0700), or tightens its mode.
fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_file(path, bytes, 0o600)
}

/// Writes `bytes` to a temporary file with `mode` and renames it over `path`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&temporary).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io)?;
    }
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn the_server_certificate_is_issued_again_near_its_end_or_for_new_names() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("pki");
        let names = server_names(&["fleet.example".into(), "10.0.0.7".into()], None);
        let first = load_or_create(&dir, &names, NOW).unwrap();
        assert!(first.issued);
        let sans = tc_trust::der::subject_alt_names(&first.chain[0]).unwrap();
        for name in ["localhost", "127.0.0.1", "::1", "fleet.example", "10.0.0.7"] {
            assert!(sans.iter().any(|san| san == name), "{name}: {sans:?}");
        }
        let end = tc_trust::der::not_after(&first.chain[0]).unwrap();
        assert_eq!(end, NOW + SERVER_DAYS * DAY);

        // A start within the year keeps it.
        let kept = load_or_create(&dir, &names, NOW + 300 * DAY).unwrap();
        assert!(!kept.issued);
        assert_eq!(kept.chain[0], first.chain[0]);
        // Less than 30 days left: a new one, from the same CA.
        let renewed = load_or_create(&dir, &names, end - 29 * DAY).unwrap();
        assert!(renewed.issued);
        assert_eq!(renewed.ca_hash, first.ca_hash);
        assert_eq!(renewed.ca, first.ca);
        // A name that was not there: a new one too.
        let mut more = names.clone();
        more.push("kiosk-gateway.example".into());
        assert!(load_or_create(&dir, &more, end - 29 * DAY).unwrap().issued);
    }

    #[test]
    fn half_a_ca_is_an_error_not_a_new_ca() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("pki");
        load_or_create(&dir, &server_names(&[], None), NOW).unwrap();
        std::fs::remove_file(dir.join("ca.key")).unwrap();
        let error = load_or_create(&dir, &server_names(&[], None), NOW)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            error.contains("ca.key") && error.contains("restore"),
            "{error}"
        );
    }

    #[test]
    fn a_ca_is_replaced_in_two_steps_and_the_server_certificate_follows_it() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("pki");
        let names = server_names(&[], None);
        let first = load_or_create(&dir, &names, NOW).unwrap();
        assert_eq!(ca_hash(&dir), Some(first.ca_hash));
        assert_eq!(next_ca_hash(&dir), None);
        assert!(
            rotate_ca(&dir)
                .unwrap_err()
                .to_string()
                .contains("ca prepare")
        );

        // Prepared: the controller still serves with its CA; preparing again keeps the next CA.
        let next = prepare_next_ca(&dir, NOW).unwrap();
        assert_ne!(next, first.ca_hash);
        assert_eq!(prepare_next_ca(&dir, NOW).unwrap(), next);
        assert_eq!(next_ca_hash(&dir), Some(next));
        let still = load_or_create(&dir, &names, NOW).unwrap();
        assert!(!still.issued);
        assert_eq!(still.ca_hash, first.ca_hash);

        // Rotated: the next CA is the CA, the old one is kept, and the server certificate is
        // issued by the new CA.
        let old_server = (
            std::fs::read(dir.join("server.crt")).unwrap(),
            std::fs::read(dir.join("server.key")).unwrap(),
        );
        assert_eq!(rotate_ca(&dir).unwrap(), (first.ca_hash, next));
        assert_eq!(ca_hash(&dir), Some(next));
        assert_eq!(next_ca_hash(&dir), None);
        assert_eq!(
            hash_of_file(&dir.join("previous-ca.crt")),
            Some(first.ca_hash)
        );
        let rotated = load_or_create(&dir, &names, NOW).unwrap();
        assert!(rotated.issued);
        assert_eq!(rotated.ca_hash, next);
        assert!(issued_by(&rotated.chain[0], &rotated.ca, &dir, NOW));
        assert!(!issued_by(&rotated.chain[0], &first.ca, &dir, NOW));

        // A server certificate of another CA put back is not served: it is issued again.
        std::fs::write(dir.join("server.crt"), &old_server.0).unwrap();
        std::fs::write(dir.join("server.key"), &old_server.1).unwrap();
        let again = load_or_create(&dir, &names, NOW).unwrap();
        assert!(again.issued);
        assert!(issued_by(&again.chain[0], &again.ca, &dir, NOW));
    }
}
