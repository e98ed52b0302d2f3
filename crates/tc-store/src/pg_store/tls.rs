//! TLS to the database server, on rustls with the ring provider (as every thinfleet connection).
//!
//! The store encrypts its connections when it is given the CA certificates that signed the
//! server's certificate ([`crate::PgSettings::ca_file`]): it then requires TLS (a server that
//! offers none is refused, never used in plain text) and verifies the server's certificate
//! chain and its name (the URL's host) on every connection, those of the pool and the change
//! feed's listener alike. Without them it connects in plain text, and a URL that asks for TLS
//! (`sslmode=require`, `verify-ca`, `verify-full`) is refused at open: TLS that trusts whichever
//! certificate a server presents would only look safe.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::config::SslMode;
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use postgres::{Client, Config, NoTls, Socket};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{Result, StoreError};

/// How the store's connections are made: where to, and with which TLS, if any.
#[derive(Clone)]
pub(super) struct Connector {
    config: Config,
    tls: Option<MakeRustls>,
}

impl Connector {
    /// The connector for `config`, whose `sslmode` was `mode` in the URL (`verify-ca` and
    /// `verify-full` are read as `require`, the parser knowing only `disable`, `prefer` and
    /// `require`), trusting the CA certificates in `ca_file`.
    pub(super) fn new(
        mut config: Config,
        mode: UrlSslMode,
        ca_file: Option<&Path>,
    ) -> Result<Connector> {
        let Some(ca_file) = ca_file else {
            if mode.wants_tls() {
                return Err(StoreError::Database(format!(
                    "the PostgreSQL URL asks for TLS (sslmode={}), but no CA certificate was \
                     given to verify the server with: give the CA that signed the server's \
                     certificate (tc-controller --store-ca-file FILE)",
                    mode.as_str()
                )));
            }
            return Ok(Connector { config, tls: None });
        };
        if mode == UrlSslMode::Disable {
            return Err(StoreError::Database(format!(
                "the PostgreSQL URL says sslmode=disable, but a CA certificate file ({}) was \
                 given for TLS: leave out one or the other",
                ca_file.display()
            )));
        }
        let trust = tc_trust::Trust::from_pem_file(ca_file)
            .map_err(|e| StoreError::Database(format!("PostgreSQL CA certificates: {e}")))?;
        let client = tc_trust::client_config(&trust, &[], None).map_err(|e| {
            StoreError::Database(format!(
                "PostgreSQL CA certificates {}: {e}",
                ca_file.display()
            ))
        })?;
        // Given a CA, TLS is required: `prefer` would go on in plain text with a server that
        // offers none.
        config.ssl_mode(SslMode::Require);
        Ok(Connector {
            config,
            tls: Some(MakeRustls(Arc::new(client))),
        })
    }

    /// Whether connections are encrypted.
    pub(super) fn encrypted(&self) -> bool {
        self.tls.is_some()
    }

    /// The first host that connections would reach in plain text over a network (not a unix
    /// socket, not a loopback address nor `localhost`), if any.
    pub(super) fn plain_text_host(&self) -> Option<String> {
        if self.encrypted() {
            return None;
        }
        let addrs = self.config.get_hostaddrs();
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .find_map(|(index, host)| match host {
                postgres::config::Host::Tcp(name) => {
                    let local = match addrs.get(index) {
                        Some(addr) => addr.is_loopback(),
                        None => {
                            name == "localhost"
                                || name
                                    .parse::<std::net::IpAddr>()
                                    .is_ok_and(|ip| ip.is_loopback())
                        }
                    };
                    (!local).then(|| name.clone())
                }
                _ => None,
            })
    }

    /// Opens a connection.
    pub(super) fn connect(&self) -> std::result::Result<Client, postgres::Error> {
        match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        }
    }
}

/// The `sslmode` a URL gives, as libpq reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum UrlSslMode {
    Disable,
    /// Also when the URL gives none, as with libpq.
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl UrlSslMode {
    fn wants_tls(self) -> bool {
        matches!(
            self,
            UrlSslMode::Require | UrlSslMode::VerifyCa | UrlSslMode::VerifyFull
        )
    }

    fn as_str(self) -> &'static str {
        match self {
            UrlSslMode::Disable => "disable",
            UrlSslMode::Prefer => "prefer",
            UrlSslMode::Require => "require",
            UrlSslMode::VerifyCa => "verify-ca",
            UrlSslMode::VerifyFull => "verify-full",
        }
    }

    /// The mode `url` gives, and the URL as the driver's parser takes it (`verify-ca` and
    /// `verify-full` become `require`; the store verifies the server whenever it uses TLS).
    pub(super) fn of(url: &str) -> (UrlSslMode, String) {
        const KEY: &str = "sslmode=";
        let mut mode = UrlSslMode::Prefer;
        let mut rewritten = String::with_capacity(url.len());
        let mut rest = url;
        while let Some(at) = rest.find(KEY) {
            // Only as a parameter of its own: after `?`, `&`, whitespace, or at the start.
            let before = rest[..at].chars().last().or(rewritten.chars().last());
            let own = before.is_none_or(|c| matches!(c, '?' | '&' | ' ' | '\t' | '\n'));
            let value_start = at + KEY.len();
            let value_end = rest[value_start..]
                .find(['&', ' ', '\t', '\n', '#'])
                .map_or(rest.len(), |end| value_start + end);
            let value = &rest[value_start..value_end];
            rewritten.push_str(&rest[..value_start]);
            if own {
                let (parsed, driver) = match value {
                    "disable" => (Some(UrlSslMode::Disable), value),
                    "prefer" | "allow" => (Some(UrlSslMode::Prefer), "prefer"),
                    "require" => (Some(UrlSslMode::Require), value),
                    "verify-ca" => (Some(UrlSslMode::VerifyCa), "require"),
                    "verify-full" => (Some(UrlSslMode::VerifyFull), "require"),
                    // Left to the driver's parser, which says what is wrong.
                    _ => (None, value),
                };
                mode = parsed.unwrap_or(mode);
                rewritten.push_str(driver);
            } else {
                rewritten.push_str(value);
            }
            rest = &rest[value_end..];
        }
        rewritten.push_str(rest);
        (mode, rewritten)
    }
}

/// Makes rustls connections for the driver.
#[derive(Clone)]
struct MakeRustls(Arc<rustls::ClientConfig>);

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(domain.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{domain}` is not a host name to verify a certificate for: {e}"),
            )
        })?;
        Ok(RustlsConnect {
            config: self.0.clone(),
            name,
        })
    }
}

/// One rustls connection about to be made.
struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            connector
                .connect(self.name, stream)
                .await
                .map(|stream| RustlsStream(Box::new(stream)))
        })
    }
}

/// A connection over rustls.
struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl TlsStream for RustlsStream {
    /// None: the password exchange (SCRAM) is not bound to the TLS channel; the server's
    /// certificate is verified instead.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::UrlSslMode;

    #[test]
    fn sslmode_is_read_from_either_form_and_rewritten_for_the_driver() {
        let cases = [
            ("postgres://u@h/db", UrlSslMode::Prefer, "postgres://u@h/db"),
            (
                "postgres://u@h/db?sslmode=verify-full",
                UrlSslMode::VerifyFull,
                "postgres://u@h/db?sslmode=require",
            ),
            (
                "postgres://u@h/db?application_name=x&sslmode=verify-ca&connect_timeout=3",
                UrlSslMode::VerifyCa,
                "postgres://u@h/db?application_name=x&sslmode=require&connect_timeout=3",
            ),
            (
                "host=h sslmode=disable dbname=d",
                UrlSslMode::Disable,
                "host=h sslmode=disable dbname=d",
            ),
            (
                "sslmode=require host=h",
                UrlSslMode::Require,
                "sslmode=require host=h",
            ),
            // Not a parameter of its own: a database named so is left alone.
            (
                "postgres://u@h/xsslmode=require",
                UrlSslMode::Prefer,
                "postgres://u@h/xsslmode=require",
            ),
            // Unknown values are the driver's to refuse.
            (
                "postgres://u@h/db?sslmode=bogus",
                UrlSslMode::Prefer,
                "postgres://u@h/db?sslmode=bogus",
            ),
        ];
        for (url, mode, rewritten) in cases {
            assert_eq!(UrlSslMode::of(url), (mode, rewritten.to_string()), "{url}");
        }
    }
}
