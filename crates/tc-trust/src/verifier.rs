//! The pinned-CA server certificate verifier.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};

use crate::CaCertHash;

/// Called with the CA certificate a pin matched, once, after the first handshake it verified.
pub type OnPinned = Box<dyn Fn(&CertificateDer<'static>) + Send + Sync>;

/// Accepts a server only if one certificate of the chain it presents has a pinned
/// SubjectPublicKeyInfo hash, and the end-entity certificate verifies (signature chain, validity,
/// server name) against that certificate as the only trust anchor. Several pins are accepted
/// alike: the old and the new CA while a CA is being replaced.
pub struct PinnedCaVerifier {
    pins: Vec<CaCertHash>,
    provider: Arc<CryptoProvider>,
    /// The certificate the pin matched and a verifier anchored on it, built on the first
    /// handshake and reused while the server presents the same CA.
    anchored: Mutex<Option<(CertificateDer<'static>, Arc<WebPkiServerVerifier>)>>,
    on_pinned: Mutex<Option<OnPinned>>,
}

impl std::fmt::Debug for PinnedCaVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedCaVerifier")
            .field("pins", &self.pins)
            .finish_non_exhaustive()
    }
}

/// A pin that matched no certificate of the chain. Its `Debug` is its message, since rustls
/// shows the cause of a certificate error with `Debug`.
#[derive(thiserror::Error)]
#[error(
    "the controller's CA does not match the pinned fingerprint: expected {expected}, the certificates presented have {presented}"
)]
pub struct PinMismatch {
    /// The pins, comma-separated.
    pub expected: String,
    /// The fingerprints of the chain presented, comma-separated.
    pub presented: String,
}

impl std::fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl PinnedCaVerifier {
    /// A verifier for `pins` (at least one).
    pub fn new(
        pins: Vec<CaCertHash>,
        provider: Arc<CryptoProvider>,
        on_pinned: Option<OnPinned>,
    ) -> PinnedCaVerifier {
        assert!(!pins.is_empty(), "a pinned verifier needs a pin");
        PinnedCaVerifier {
            pins,
            provider,
            anchored: Mutex::new(None),
            on_pinned: Mutex::new(on_pinned),
        }
    }

    /// The verifier anchored on `anchor`, reusing the last one for the same certificate.
    fn anchored_on(&self, anchor: &CertificateDer<'_>) -> Result<Arc<WebPkiServerVerifier>, Error> {
        let mut anchored = self.anchored.lock().expect("verifier lock");
        if let Some((certificate, verifier)) = anchored.as_ref()
            && certificate.as_ref() == anchor.as_ref()
        {
            return Ok(verifier.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|error| Error::General(error.to_string()))?;
        *anchored = Some((anchor.clone().into_owned(), verifier.clone()));
        Ok(verifier)
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let chain = std::iter::once(end_entity).chain(intermediates);
        let mut presented = vec![];
        let mut anchor = None;
        for certificate in chain {
            let hash = CaCertHash::of_certificate(certificate)
                .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
            if self.pins.contains(&hash) {
                anchor = Some(certificate);
                break;
            }
            presented.push(hash.to_string());
        }
        let Some(anchor) = anchor else {
            return Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch {
                    expected: self
                        .pins
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" or "),
                    presented: presented.join(", "),
                })),
            )));
        };
        let verified = self.anchored_on(anchor)?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if let Some(on_pinned) = self.on_pinned.lock().expect("verifier lock").take() {
            on_pinned(&anchor.clone().into_owned());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
