//! How agents and `tcadm` trust the controller without a CA file being copied around.
//!
//! The join material an admin hands out carries the controller CA's fingerprint, in kubeadm's
//! format (`--discovery-token-ca-cert-hash`): `sha256:<lowercase hex of the SHA-256 of the CA
//! certificate's SubjectPublicKeyInfo>`. [`PinnedCaVerifier`] accepts a server only when one
//! certificate of the chain it presents has that fingerprint and the end-entity certificate
//! verifies (signature chain, validity, server name) against that certificate as the only trust
//! anchor. [`client_config`] builds a rustls client configuration (ring provider) from a pin or
//! from CA certificates in PEM.
//!
//! No tokio, no HTTP: the agent, `tcadm`, the test kit and the controller all link this.

pub mod der;
mod verifier;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

pub use crate::der::DerError;
pub use crate::verifier::{OnPinned, PinnedCaVerifier};

/// ALPN identifiers, for [`client_config`].
pub const ALPN_H2: &[u8] = b"h2";
/// HTTP/1.1 over TLS.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// What went wrong establishing trust.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A fingerprint that is not `sha256:` and 64 hex digits.
    #[error("invalid CA certificate hash `{given}`: expected sha256:<64 hex digits>")]
    InvalidHash {
        /// What was given.
        given: String,
    },
    /// A certificate that cannot be read.
    #[error(transparent)]
    Der(#[from] DerError),
    /// A PEM file that cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file without certificates, or with a broken one.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A CA fingerprint: SHA-256 of the certificate's SubjectPublicKeyInfo, written
/// `sha256:<lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaCertHash([u8; 32]);

impl CaCertHash {
    /// The fingerprint of a DER certificate.
    pub fn of_certificate(der: &[u8]) -> Result<CaCertHash, DerError> {
        let spki = der::subject_public_key_info(der)?;
        Ok(CaCertHash::of_spki(spki))
    }

    /// The fingerprint of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki: &[u8]) -> CaCertHash {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki);
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest.as_ref());
        CaCertHash(bytes)
    }

    /// The 32 bytes of the digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for CaCertHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CaCertHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for CaCertHash {
    type Err = TrustError;

    /// Parses `sha256:<64 hex digits>` (upper-case digits are accepted, as kubeadm does).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || TrustError::InvalidHash {
            given: text.to_owned(),
        };
        let hex = text.trim().strip_prefix("sha256:").ok_or_else(invalid)?;
        if hex.len() != 64 {
            return Err(invalid());
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| invalid())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| invalid())?;
        }
        Ok(CaCertHash(bytes))
    }
}

/// Whom a client trusts as the controller.
#[derive(Clone, Debug)]
pub enum Trust {
    /// A CA with one of these fingerprints (several while a CA is being replaced), found in the
    /// chain the server presents.
    Pinned(Vec<CaCertHash>),
    /// Exactly these CA certificates.
    CaCertificates(Vec<CertificateDer<'static>>),
}

impl Trust {
    /// Trust the CA certificates of a PEM file.
    pub fn from_pem_file(path: &Path) -> Result<Trust, TrustError> {
        Ok(Trust::CaCertificates(read_pem_certificates(path)?))
    }
}

/// The certificates of a PEM file (at least one).
pub fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let bytes = std::fs::read(path).map_err(|source| TrustError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_pem_certificates(&bytes).map_err(|message| TrustError::Pem {
        path: path.to_owned(),
        message,
    })
}

/// The certificates of PEM text (at least one).
pub fn parse_pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("not a PEM certificate file: {error}"))?;
    if certificates.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) found".to_owned());
    }
    for certificate in &certificates {
        der::subject_public_key_info(certificate).map_err(|error| error.to_string())?;
    }
    Ok(certificates)
}

/// One certificate as PEM text.
pub fn certificate_pem(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let value = chunk.iter().enumerate().fold(0u32, |value, (i, &byte)| {
            value | u32::from(byte) << (16 - 8 * i)
        });
        for i in 0..4 {
            if i <= chunk.len() {
                encoded.push(char::from(ALPHABET[(value >> (18 - 6 * i) & 63) as usize]));
            } else {
                encoded.push('=');
            }
        }
    }
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The ring crypto provider, as every thinfleet binary uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration that trusts `trust` and offers `alpn` (e.g. `[ALPN_HTTP1]`, or
/// `[ALPN_H2, ALPN_HTTP1]` for a client that speaks both). `on_pinned` is told the CA
/// certificate a pin matched, after the first handshake that verified with it.
pub fn client_config(
    trust: &Trust,
    alpn: &[&[u8]],
    on_pinned: Option<OnPinned>,
) -> Result<ClientConfig, TrustError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match trust {
        Trust::Pinned(pins) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(
                pins.clone(),
                provider,
                on_pinned,
            )))
            .with_no_client_auth(),
        Trust::CaCertificates(certificates) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates {
                roots.add(certificate.clone())?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_parse_and_print_in_kubeadm_format() {
        let text = format!("sha256:{}", "ab".repeat(32));
        let hash: CaCertHash = text.parse().unwrap();
        assert_eq!(hash.to_string(), text);
        let upper: CaCertHash = format!("sha256:{}", "AB".repeat(32)).parse().unwrap();
        assert_eq!(upper, hash);
        for bad in [
            "ab".repeat(32),
            format!("sha1:{}", "ab".repeat(32)),
            format!("sha256:{}", "ab".repeat(31)),
            format!("sha256:{}", "zz".repeat(32)),
            format!("sha256:{}é", "ab".repeat(31)),
        ] {
            let error = bad.parse::<CaCertHash>().unwrap_err().to_string();
            assert!(error.contains("sha256:<64 hex digits>"), "{bad}: {error}");
        }
    }

    #[test]
    fn pem_round_trip() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let pem = certificate_pem(&der);
        let parsed: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].as_ref(), &der[..]);
    }
}
