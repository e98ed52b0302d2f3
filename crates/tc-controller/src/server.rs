//! The controller's accept loop: TCP, optionally TLS (tokio-rustls), then hyper's automatic
//! HTTP/1.1 + HTTP/2 server around the axum router — with the limits that let it survive
//! hostile connections.
//!
//! * At most [`Limits::max_connections`] connections are served; further ones are closed at
//!   once (counted in `thinfleet_connections_refused_total`).
//! * The TLS handshake must finish within [`Limits::handshake_timeout`].
//! * A connection must send its first bytes, and every HTTP/1 request head, within
//!   [`Limits::header_read_timeout`] (hyper's header-read timer runs from the moment it waits
//!   for a head, so it also ends HTTP/1 keep-alive connections idle for that long).
//! * A connection on which no byte moves either way for [`Limits::idle_timeout`] is closed; this
//!   is longer than the longest long-poll.
//! * A request head is at most [`Limits::max_header_bytes`] (HTTP/1's read buffer, answered
//!   with 431 beyond it; HTTP/2's header list).
//!
//! Shutdown: the loop stops accepting, every connection is asked to finish gracefully (requests
//! in flight are answered, idle connections close), and the loop returns once all are gone.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// Limits on connections. Defaults in [`crate::Config::new`]; tests shorten them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest TLS handshake.
    pub handshake_timeout: Duration,
    /// Longest wait for the first bytes of a connection and for each HTTP/1 request head.
    pub header_read_timeout: Duration,
    /// A connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head (HTTP/1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown` completes, then
/// shuts every connection down gracefully and returns when they are all closed.
pub async fn run(
    listener: &TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    metrics: Arc<ConnectionMetrics>,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(http_builder(&limits));
    let acceptor = tls.map(TlsAcceptor::from);
    let tracker = TaskTracker::new();
    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if !is_connection_error(&error) {
                        // Most likely out of file descriptors: wait for some to be closed.
                        tracing::error!(%error, "accept failed");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                            () = &mut shutdown => break,
                        }
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if tracker.len() >= limits.max_connections {
            metrics.refused.inc();
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            builder: builder.clone(),
            app: app.clone(),
            peer,
            limits,
            metrics: metrics.clone(),
            close: close_rx.clone(),
        };
        let acceptor = acceptor.clone();
        tracker.spawn(connection.serve(stream, acceptor));
    }
    let _ = close_tx.send(true);
    tracker.close();
    tracker.wait().await;
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// hyper's HTTP/1.1 + HTTP/2 server with the limits.
fn http_builder(limits: &Limits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper refuses buffers under 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .enable_connect_protocol();
    builder
}

/// Counters of the accept loop, registered with the controller's metrics.
#[derive(Default)]
pub struct ConnectionMetrics {
    /// Connections closed at once because the cap was reached.
    pub refused: prometheus_client::metrics::counter::Counter,
    /// TLS handshakes that failed or timed out.
    pub handshake_failures: prometheus_client::metrics::counter::Counter,
    /// Connections closed for sending nothing in time or for being idle.
    pub timed_out: prometheus_client::metrics::counter::Counter,
    /// Connections being served.
    pub open: prometheus_client::metrics::gauge::Gauge,
}

impl ConnectionMetrics {
    /// Registers the counters with the controller's registry.
    pub fn register(metrics: &mut Metrics) -> Arc<ConnectionMetrics> {
        let counters = Arc::new(ConnectionMetrics::default());
        metrics.register_connections(&counters);
        counters
    }
}

/// One accepted connection.
struct Connection {
    builder: Arc<Builder<TokioExecutor>>,
    app: Router,
    /// The peer's address, given to handlers as axum's `ConnectInfo` (the enrolment rate limit
    /// per source reads it).
    peer: SocketAddr,
    limits: Limits,
    metrics: Arc<ConnectionMetrics>,
    close: tokio::sync::watch::Receiver<bool>,
}

impl Connection {
    async fn serve(self, stream: TcpStream, acceptor: Option<TlsAcceptor>) {
        let metrics = self.metrics.clone();
        metrics.open.inc();
        let activity = Arc::new(AtomicU64::new(0));
        let stream = Tracked {
            inner: stream,
            activity: activity.clone(),
        };
        match acceptor {
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(self.limits.handshake_timeout, acceptor.accept(stream));
                match handshake.await {
                    Ok(Ok(stream)) => self.http(stream, activity).await,
                    Ok(Err(error)) => {
                        metrics.handshake_failures.inc();
                        tracing::debug!(%error, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics.handshake_failures.inc();
                        tracing::debug!("TLS handshake timed out");
                    }
                }
            }
            None => self.http(stream, activity).await,
        }
        metrics.open.dec();
    }

    async fn http<I>(mut self, io: I, activity: Arc<AtomicU64>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = ConnectInfo(self.peer);
        let service =
            self.app
                .clone()
                .map_request(move |mut request: axum::http::Request<Incoming>| {
                    request.extensions_mut().insert(peer);
                    request.map(Body::new)
                });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
        tokio::pin!(connection);
        let watchdog = watchdog(activity, self.limits);
        tokio::pin!(watchdog);
        let mut closing = *self.close.borrow();
        if closing {
            connection.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    return;
                }
                changed = self.close.changed(), if !closing => {
                    closing = true;
                    if changed.is_ok() {
                        connection.as_mut().graceful_shutdown();
                    } else {
                        return;
                    }
                }
                () = &mut watchdog => {
                    self.metrics.timed_out.inc();
                    tracing::debug!("closing a connection that sent nothing in time or went idle");
                    return;
                }
            }
        }
    }
}

/// Completes when the connection has moved no byte for the idle timeout, or has not sent its
/// first byte within the header-read timeout. `activity` counts reads and writes that moved
/// bytes; the first read sets its low bit.
async fn watchdog(activity: Arc<AtomicU64>, limits: Limits) {
    tokio::time::sleep(limits.header_read_timeout).await;
    if activity.load(Ordering::Relaxed) & 1 == 0 {
        return;
    }
    // Checked every half idle timeout: idle for at least the timeout and at most 1.5 times it.
    let step = limits.idle_timeout / 2;
    let mut last = activity.load(Ordering::Relaxed);
    let mut quiet_steps = 0;
    loop {
        tokio::time::sleep(step).await;
        let now = activity.load(Ordering::Relaxed);
        if now == last {
            quiet_steps += 1;
            if quiet_steps >= 2 {
                return;
            }
        } else {
            quiet_steps = 0;
            last = now;
        }
    }
}

/// A stream that counts the reads and writes that moved bytes.
struct Tracked<S> {
    inner: S,
    activity: Arc<AtomicU64>,
}

impl<S> Tracked<S> {
    fn moved(&self, read: bool) {
        // Bit 0: something was read; the rest counts operations.
        let before = self.activity.fetch_add(2, Ordering::Relaxed);
        if read && before & 1 == 0 {
            self.activity.fetch_or(1, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved(true);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(written)) if written > 0) {
            self.moved(false);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(written)) if written > 0) {
            self.moved(false);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
