//! The pinned-CA verifier and the fingerprint, on certificates made with rcgen.

use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tc_trust::{CaCertHash, PinnedCaVerifier, Trust, client_config, der};

struct Ca {
    certificate: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    key_spki: Vec<u8>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let certificate = params.self_signed(&key).unwrap().der().clone();
    let key_spki = key.subject_public_key_info();
    Ca {
        certificate,
        issuer: Issuer::new(params, key),
        key_spki,
    }
}

fn ca_hash(name: &str) -> CaCertHash {
    CaCertHash::of_certificate(&ca(name).certificate).unwrap()
}

fn leaf(ca: &Ca, names: &[&str], expired: bool) -> CertificateDer<'static> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.use_authority_key_identifier_extension = true;
    if expired {
        params.not_before = time::OffsetDateTime::from_unix_timestamp(1_000_000_000).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(1_100_000_000).unwrap();
    }
    params.signed_by(&key, &ca.issuer).unwrap().der().clone()
}

fn verify(
    pin: CaCertHash,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    name: &str,
) -> Result<(), String> {
    verify_any(vec![pin], end_entity, intermediates, name)
}

fn verify_any(
    pins: Vec<CaCertHash>,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    name: &str,
) -> Result<(), String> {
    let verifier = PinnedCaVerifier::new(pins, tc_trust::provider(), None);
    verifier
        .verify_server_cert(
            end_entity,
            intermediates,
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|error| error.to_string())
}

#[test]
fn fingerprint_is_the_sha256_of_the_subject_public_key_info() {
    let ca = ca("fingerprint");
    assert_eq!(
        der::subject_public_key_info(&ca.certificate).unwrap(),
        &ca.key_spki[..]
    );
    let hash = CaCertHash::of_certificate(&ca.certificate).unwrap();
    assert_eq!(hash, CaCertHash::of_spki(&ca.key_spki));
    let text = hash.to_string();
    assert!(
        text.starts_with("sha256:") && text.len() == 7 + 64,
        "{text}"
    );
    assert_eq!(text.parse::<CaCertHash>().unwrap(), hash);
    let not_after = der::not_after(&ca.certificate).unwrap();
    assert!(not_after > 1_700_000_000, "{not_after}");
}

#[test]
fn the_pinned_ca_in_the_chain_is_accepted() {
    let ca = ca("good");
    let server = leaf(&ca, &["localhost", "127.0.0.1", "::1"], false);
    assert_eq!(
        der::subject_alt_names(&server).unwrap(),
        ["localhost", "127.0.0.1", "::1"]
    );
    assert!(der::subject_alt_names(&ca.certificate).unwrap().is_empty());
    let pin = CaCertHash::of_certificate(&ca.certificate).unwrap();
    verify(
        pin,
        &server,
        std::slice::from_ref(&ca.certificate),
        "localhost",
    )
    .unwrap();
    verify(
        pin,
        &server,
        std::slice::from_ref(&ca.certificate),
        "127.0.0.1",
    )
    .unwrap();
}

#[test]
fn a_wrong_fingerprint_is_refused_naming_both() {
    let ca = ca("presented");
    let other = ca_hash("other");
    let server = leaf(&ca, &["localhost"], false);
    let error = verify(
        other,
        &server,
        std::slice::from_ref(&ca.certificate),
        "localhost",
    )
    .unwrap_err();
    let presented = CaCertHash::of_certificate(&ca.certificate).unwrap();
    assert!(error.contains(&other.to_string()), "{error}");
    assert!(error.contains(&presented.to_string()), "{error}");
    assert!(
        error.contains("does not match the pinned fingerprint"),
        "{error}"
    );
}

#[test]
fn the_pinned_certificate_must_also_have_issued_the_server_certificate() {
    // An attacker presents the real CA certificate next to a server certificate of its own CA.
    let real = ca("real");
    let attacker = ca("attacker");
    let forged = leaf(&attacker, &["localhost"], false);
    let pin = CaCertHash::of_certificate(&real.certificate).unwrap();
    let error = verify(
        pin,
        &forged,
        std::slice::from_ref(&real.certificate),
        "localhost",
    )
    .unwrap_err();
    assert!(error.contains("invalid peer certificate"), "{error}");
}

#[test]
fn name_and_validity_are_checked_against_the_pinned_anchor() {
    let ca = ca("checks");
    let pin = CaCertHash::of_certificate(&ca.certificate).unwrap();
    let server = leaf(&ca, &["localhost"], false);
    let wrong_name = verify(
        pin,
        &server,
        std::slice::from_ref(&ca.certificate),
        "example.org",
    )
    .unwrap_err();
    assert!(
        wrong_name.contains("certificate not valid for name"),
        "{wrong_name}"
    );
    let expired = leaf(&ca, &["localhost"], true);
    let error = verify(
        pin,
        &expired,
        std::slice::from_ref(&ca.certificate),
        "localhost",
    )
    .unwrap_err();
    assert!(error.contains("expired"), "{error}");
}

/// While a CA is being replaced, agents pin the old and the new CA: a server of either is
/// accepted, a server of a third is refused with every pin named.
#[test]
fn any_of_several_pins_is_accepted_and_only_those() {
    let (old, new, other) = (ca("old"), ca("new"), ca("other"));
    let pins = vec![
        CaCertHash::of_certificate(&old.certificate).unwrap(),
        CaCertHash::of_certificate(&new.certificate).unwrap(),
    ];
    for issuer in [&old, &new] {
        let server = leaf(issuer, &["localhost"], false);
        verify_any(
            pins.clone(),
            &server,
            std::slice::from_ref(&issuer.certificate),
            "localhost",
        )
        .unwrap();
    }
    let server = leaf(&other, &["localhost"], false);
    let error = verify_any(
        pins.clone(),
        &server,
        std::slice::from_ref(&other.certificate),
        "localhost",
    )
    .unwrap_err();
    for pin in &pins {
        assert!(error.contains(&pin.to_string()), "{error}");
    }
    // A pinned CA in the chain does not vouch for a server certificate another CA issued.
    let error = verify_any(
        pins,
        &server,
        &[other.certificate.clone(), old.certificate.clone()],
        "localhost",
    )
    .unwrap_err();
    assert!(!error.is_empty());
}

#[test]
fn the_matched_ca_is_reported_once() {
    let ca = ca("reported");
    let pin = CaCertHash::of_certificate(&ca.certificate).unwrap();
    let seen = Arc::new(Mutex::new(vec![]));
    let record = seen.clone();
    let verifier = PinnedCaVerifier::new(
        vec![pin],
        tc_trust::provider(),
        Some(Box::new(move |certificate: &CertificateDer<'static>| {
            record.lock().unwrap().push(certificate.clone())
        })),
    );
    let server = leaf(&ca, &["localhost"], false);
    let name = ServerName::try_from("localhost").unwrap();
    let wrong = leaf(&ca, &["elsewhere"], false);
    let chain = [ca.certificate.clone()];
    assert!(
        verifier
            .verify_server_cert(&wrong, &chain, &name, &[], UnixTime::now())
            .is_err()
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "a failed handshake pins nothing"
    );
    for _ in 0..2 {
        verifier
            .verify_server_cert(&server, &chain, &name, &[], UnixTime::now())
            .unwrap();
    }
    assert_eq!(*seen.lock().unwrap(), vec![ca.certificate.clone()]);
}

#[test]
fn client_configs_carry_the_alpn_asked_for() {
    let ca = ca("alpn");
    let pem = tc_trust::certificate_pem(&ca.certificate);
    let parsed = tc_trust::parse_pem_certificates(pem.as_bytes()).unwrap();
    assert_eq!(parsed, vec![ca.certificate.clone()]);
    let config = client_config(
        &Trust::CaCertificates(parsed),
        &[tc_trust::ALPN_H2, tc_trust::ALPN_HTTP1],
        None,
    )
    .unwrap();
    assert_eq!(
        config.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let pinned = client_config(
        &Trust::Pinned(vec![CaCertHash::of_certificate(&ca.certificate).unwrap()]),
        &[tc_trust::ALPN_HTTP1],
        None,
    )
    .unwrap();
    assert_eq!(pinned.alpn_protocols, vec![b"http/1.1".to_vec()]);
    let error = tc_trust::parse_pem_certificates(b"not pem").unwrap_err();
    assert!(error.contains("no PEM certificate"), "{error}");
}
