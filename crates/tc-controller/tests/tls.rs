//! HTTPS by default, certificate reloads, and the limits that let the controller survive hostile
//! connections: idle sockets, half-sent huge headers, more connections than the cap.
//!
//! Every wait has a deadline; the assertions are on what the server does to the connection
//! (closed, 431), never on timings or memory.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use reqwest::StatusCode;
use tc_controller::TlsMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for the server to act on a connection.
const DEADLINE: Duration = Duration::from_secs(10);

/// Reads until the peer closes the connection or `DEADLINE` passes; returns what was read and
/// whether the connection was closed.
async fn read_until_closed(stream: &mut (impl AsyncReadExt + Unpin)) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + DEADLINE;
    let mut received = vec![];
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (received, true),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => return (received, false),
        }
    }
}

fn tls_client(controller: &TestController) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(
        controller
            .tls_client_config(&[b"http/1.1"])
            .expect("an HTTPS controller"),
    )
}

async fn tls_connect(
    controller: &TestController,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = TcpStream::connect(controller.addr()).await?;
    let name = rustls::pki_types::ServerName::IpAddress(controller.addr().ip().into());
    tls_client(controller).connect(name, stream).await
}

async fn request_over(
    stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin),
    addr: SocketAddr,
    path: &str,
) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = vec![0u8; 16 * 1024];
    let read = tokio::time::timeout(DEADLINE, stream.read(&mut buffer))
        .await
        .expect("an answer in time")
        .unwrap();
    String::from_utf8_lossy(&buffer[..read]).into_owned()
}

#[tokio::test]
async fn https_by_default_and_plain_http_only_when_asked_for() {
    let controller = TestController::start().await;
    assert!(
        controller.url().starts_with("https://"),
        "{}",
        controller.url()
    );
    let api = Api::admin(&controller);
    let (status, version) = api.get("/version").await;
    assert_eq!(status, StatusCode::OK);
    let hash = controller.ca_cert_hash().unwrap();
    assert_eq!(version["caCertHash"], hash.as_str(), "{version}");

    // The PKI on disk: keys 0600, the directory 0700, the fingerprint of ca.crt is the one served.
    use std::os::unix::fs::PermissionsExt;
    let pki = controller.data_dir().join("pki");
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&pki), 0o700);
    assert_eq!(mode(&pki.join("ca.key")), 0o600);
    assert_eq!(mode(&pki.join("server.key")), 0o600);
    let ca = tc_trust::read_pem_certificates(&pki.join("ca.crt")).unwrap();
    assert_eq!(
        tc_trust::CaCertHash::of_certificate(&ca[0])
            .unwrap()
            .to_string(),
        hash
    );
    let server = tc_trust::read_pem_certificates(&pki.join("server.crt")).unwrap();
    let names = tc_trust::der::subject_alt_names(&server[0]).unwrap();
    for name in ["localhost", "127.0.0.1", "::1"] {
        assert!(names.iter().any(|n| n == name), "{names:?}");
    }

    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let mut plain = TcpStream::connect(controller.addr()).await.unwrap();
    plain
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut plain).await;
    assert!(closed, "the HTTPS port kept a plain-HTTP connection open");
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "{answer:?}"
    );

    // With the flag: plain HTTP, no PKI, no fingerprint.
    let insecure = TestController::start_insecure().await;
    assert!(insecure.url().starts_with("http://"));
    assert!(!insecure.data_dir().join("pki").exists());
    let (status, version) = Api::admin(&insecure).get("/version").await;
    assert_eq!(status, StatusCode::OK);
    assert!(version.get("caCertHash").is_none(), "{version}");
}

#[tokio::test]
async fn the_ca_survives_a_restart_and_the_server_certificate_is_kept() {
    let controller = TestController::start().await;
    let hash = controller.ca_cert_hash().unwrap();
    let server_crt = std::fs::read(controller.data_dir().join("pki/server.crt")).unwrap();
    let (data, _temp) = controller.stop_keep_data().await;
    let restarted = TestController::start_in(&data, |_| {}).await;
    assert_eq!(restarted.ca_cert_hash().unwrap(), hash);
    assert_eq!(
        std::fs::read(data.join("pki/server.crt")).unwrap(),
        server_crt,
        "a valid server certificate is not issued again"
    );
}

#[tokio::test]
async fn idle_unauthenticated_sockets_are_closed_after_the_header_timeout() {
    for insecure in [false, true] {
        let controller = TestController::start_with(|config| {
            if insecure {
                config.tls = TlsMode::Disabled;
            }
            config.handshake_timeout = Duration::from_millis(300);
            config.header_read_timeout = Duration::from_millis(300);
        })
        .await;
        let mut sockets = vec![];
        for _ in 0..20 {
            sockets.push(TcpStream::connect(controller.addr()).await.unwrap());
        }
        for socket in &mut sockets {
            let (_, closed) = read_until_closed(socket).await;
            assert!(closed, "an idle socket stayed open (insecure: {insecure})");
        }
        let metrics = controller_metrics(&controller).await;
        let counter = if insecure {
            "thinfleet_connections_timed_out_total"
        } else {
            "thinfleet_tls_handshake_failures_total"
        };
        assert!(metric(&metrics, counter) >= 20.0, "{counter}: {metrics}");
    }
}

#[tokio::test]
async fn a_connection_idle_after_its_handshake_or_its_request_is_closed() {
    let controller = TestController::start_with(|config| {
        config.header_read_timeout = Duration::from_millis(300);
        config.idle_timeout = Duration::from_millis(600);
        config.long_poll_max = Duration::from_millis(200);
    })
    .await;
    // A handshake, then nothing.
    let mut silent = tls_connect(&controller).await.unwrap();
    // A request answered, then nothing (keep-alive).
    let mut kept = tls_connect(&controller).await.unwrap();
    let answer = request_over(&mut kept, controller.addr(), "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_, closed) = read_until_closed(&mut silent).await;
    assert!(
        closed,
        "a connection silent after its handshake stayed open"
    );
    let (_, closed) = read_until_closed(&mut kept).await;
    assert!(closed, "an idle keep-alive connection stayed open");
}

#[tokio::test]
async fn half_sent_huge_headers_are_refused_with_431_and_closed() {
    for insecure in [false, true] {
        let controller = TestController::start_with(|config| {
            if insecure {
                config.tls = TlsMode::Disabled;
            }
        })
        .await;
        // 200 KB of one header, never finished: more than the 16 KiB a head may have.
        let mut head = format!(
            "GET /readyz HTTP/1.1\r\nHost: {}\r\nX-Big: ",
            controller.addr()
        );
        head.push_str(&"a".repeat(200 * 1024));
        let (answer, closed) = if insecure {
            let mut stream = TcpStream::connect(controller.addr()).await.unwrap();
            let _ = stream.write_all(head.as_bytes()).await;
            read_until_closed(&mut stream).await
        } else {
            let mut stream = tls_connect(&controller).await.unwrap();
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.flush().await;
            read_until_closed(&mut stream).await
        };
        let answer = String::from_utf8_lossy(&answer);
        assert!(closed, "the connection stayed open (insecure: {insecure})");
        assert!(
            answer.starts_with("HTTP/1.1 431"),
            "insecure: {insecure}: {answer}"
        );
        // The server is fine afterwards.
        let (status, _) = Api::admin(&controller).get("/healthz").await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn the_connection_cap_refuses_connection_n_plus_one() {
    let controller = TestController::start_with(|config| config.max_connections = 3).await;
    let mut open = vec![];
    for _ in 0..3 {
        let mut stream = tls_connect(&controller).await.unwrap();
        let answer = request_over(&mut stream, controller.addr(), "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        open.push(stream);
    }
    // The fourth is closed at once, before any TLS.
    let refused = tls_connect(&controller).await;
    assert!(refused.is_err(), "connection 4 of 3 was served");
    // The three keep working.
    for stream in &mut open {
        let answer = request_over(stream, controller.addr(), "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // Once one closes, a new connection is served again.
    drop(open.pop());
    let deadline = Instant::now() + DEADLINE;
    let mut stream = loop {
        if let Ok(stream) = tls_connect(&controller).await {
            break stream;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let answer = request_over(&mut stream, controller.addr(), "/metrics").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(stream);
    drop(open);
    let metrics = controller_metrics(&controller).await;
    assert!(
        metric(&metrics, "thinfleet_connections_refused_total") >= 1.0,
        "{metrics}"
    );
}

/// A CA and a server certificate for 127.0.0.1 it signs, as PEM: (chain, key, CA fingerprint).
fn admin_pki(name: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(DnType::CommonName, name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let hash = tc_trust::CaCertHash::of_certificate(ca.der())
        .unwrap()
        .to_string();
    (
        format!("{}{}", server.pem(), ca.pem()),
        key.serialize_pem(),
        hash,
    )
}

/// A client that trusts only the CA with `hash` (pinned).
fn pinned_client(hash: &str) -> reqwest::Client {
    tc_controller::install_crypto_provider();
    let config = tc_trust::client_config(
        &tc_trust::Trust::Pinned(vec![hash.parse().unwrap()]),
        &[tc_trust::ALPN_HTTP1],
        None,
    )
    .unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .use_preconfigured_tls(config)
        .timeout(DEADLINE)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_certificate_reload_takes_effect_without_a_restart() {
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    let (first_chain, first_key, first_hash) = admin_pki("first CA");
    std::fs::write(&cert, &first_chain).unwrap();
    std::fs::write(&key, &first_key).unwrap();
    let controller = TestController::start_with(|config| {
        config.tls = TlsMode::Files {
            cert: cert.clone(),
            key: key.clone(),
        };
        config.tls_reload_interval = Duration::from_millis(50);
    })
    .await;
    assert_eq!(controller.ca_cert_hash().unwrap(), first_hash);
    let url = format!("{}/version", controller.url());
    let version = |hash: String| {
        let url = url.clone();
        async move {
            let response = pinned_client(&hash).get(&url).send().await?;
            response.json::<serde_json::Value>().await
        }
    };
    assert_eq!(
        version(first_hash.clone()).await.unwrap()["caCertHash"],
        first_hash.as_str()
    );

    // New files: the next handshakes get the new certificate, the old pin is refused.
    let (second_chain, second_key, second_hash) = admin_pki("second CA");
    std::fs::write(&key, &second_key).unwrap();
    std::fs::write(&cert, &second_chain).unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(answer) = version(second_hash.clone()).await {
            assert_eq!(answer["caCertHash"], second_hash.as_str());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = version(first_hash.clone()).await.unwrap_err();
    let chain = error_chain(&refused);
    assert!(
        chain.contains("does not match the pinned fingerprint"),
        "{chain}"
    );

    // A broken file is not served: the previous certificate stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        version(second_hash.clone()).await.unwrap()["caCertHash"],
        second_hash.as_str()
    );
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

async fn controller_metrics(controller: &TestController) -> String {
    let response = controller
        .http_client()
        .get(format!("{}/metrics", controller.url()))
        .send()
        .await
        .unwrap();
    response.text().await.unwrap()
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn the_binary_serves_plain_http_only_with_insecure_http() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let binary = env!("CARGO_BIN_EXE_tc-controller");
    // The flag does not go with certificates.
    let conflicting = std::process::Command::new(binary)
        .args([
            "--insecure-http",
            "--tls-cert",
            "a.crt",
            "--tls-key",
            "a.key",
        ])
        .output()
        .unwrap();
    assert_eq!(conflicting.status.code(), Some(2));

    let mut child = std::process::Command::new(binary)
        .args(["--insecure-http", "--no-manifests", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(DEADLINE)
        .build()
        .unwrap();
    let deadline = Instant::now() + DEADLINE * 3;
    let version = loop {
        if let Ok(response) = http
            .get(format!("http://127.0.0.1:{port}/version"))
            .send()
            .await
            && response.status() == StatusCode::OK
        {
            break response.json::<serde_json::Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "no plain-HTTP answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(version.get("caCertHash").is_none(), "{version}");
    assert!(!data.join("pki").exists(), "no PKI is made for plain HTTP");
}
