//! A minimal HTTP/1.1 keep-alive client for load generation.
//!
//! A general-purpose client (reqwest) spends more CPU per request than a lean server needs to
//! answer one, so a load generator built on it measures itself. This client writes requests that
//! were serialized once (or into a reused buffer) and parses responses with `httparse` from one
//! reused buffer: one `write` and usually one `read` per exchange.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tls::{Stream, Tls};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Largest body collected into memory by [`Connection::request`]; streamed bodies have no limit.
const MAX_COLLECTED_BODY: usize = 64 * 1024 * 1024;

/// One keep-alive connection.
pub struct Connection {
    stream: Stream,
    /// Bytes read but not consumed yet (`buffer[start..end]`).
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// The server announced `Connection: close`; the connection must not be reused.
    closed: bool,
}

/// Status and headers of a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// HTTP status code.
    pub status: u16,
    /// The body length the server announced, if it did.
    pub content_length: Option<u64>,
}

/// A response with its body collected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// How the body of a response is delimited.
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl Connection {
    /// Connects with `TCP_NODELAY` (requests are written whole, so Nagle only adds delay).
    pub async fn connect(addr: SocketAddr) -> io::Result<Connection> {
        Self::connect_with(addr, None).await
    }

    /// [`Self::connect`], in TLS when `tls` is given (offer `http/1.1` in its ALPN).
    pub async fn connect_with(addr: SocketAddr, tls: Option<&Tls>) -> io::Result<Connection> {
        let stream = super::tls::connect(addr, tls).await?;
        Ok(Connection {
            stream,
            buffer: vec![0; 16 * 1024],
            start: 0,
            end: 0,
            closed: false,
        })
    }

    /// True when the server closed the connection or asked to; open a new one.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sends one complete request and collects the response body.
    pub async fn request(&mut self, request: &[u8]) -> io::Result<Response> {
        let mut body = Vec::new();
        let mut too_large = false;
        let head = self
            .exchange(request, &mut |chunk| {
                if body.len() + chunk.len() <= MAX_COLLECTED_BODY {
                    body.extend_from_slice(chunk);
                } else {
                    too_large = true;
                }
            })
            .await?;
        if too_large {
            return Err(io::Error::other("response body too large"));
        }
        Ok(Response {
            status: head.status,
            body,
        })
    }

    /// Sends one complete request and hands the response body to `on_body` chunk by chunk.
    pub async fn exchange(
        &mut self,
        request: &[u8],
        on_body: &mut (dyn FnMut(&[u8]) + Send),
    ) -> io::Result<Head> {
        if self.closed {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection was closed",
            ));
        }
        let head_request = request.starts_with(b"HEAD ");
        self.stream.write_all(request).await?;
        let (head, framing) = self.read_head(head_request).await?;
        match framing {
            Framing::None => {}
            Framing::Length(length) => self.read_length(length, on_body).await?,
            Framing::Chunked => self.read_chunked(on_body).await?,
            Framing::UntilClose => {
                self.closed = true;
                loop {
                    if self.start < self.end {
                        on_body(&self.buffer[self.start..self.end]);
                        self.start = self.end;
                    }
                    if self.fill().await? == 0 {
                        break;
                    }
                }
            }
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(head)
    }

    /// Reads more bytes after `end`; returns how many (0 at end of stream).
    /// [`Self::fill`], where the end of the stream is an error saying what ended early (the
    /// connection is then closed).
    async fn fill_or_eof(&mut self, what: &str) -> io::Result<()> {
        if self.fill().await? == 0 {
            self.closed = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                what.to_string(),
            ));
        }
        Ok(())
    }

    async fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buffer.len() {
            if self.start > 0 {
                self.buffer.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let grown = self.buffer.len() * 2;
                self.buffer.resize(grown, 0);
            }
        }
        let read = self.stream.read(&mut self.buffer[self.end..]).await?;
        self.end += read;
        Ok(read)
    }

    async fn read_head(&mut self, head_request: bool) -> io::Result<(Head, Framing)> {
        loop {
            let available = &self.buffer[self.start..self.end];
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(available) {
                Ok(httparse::Status::Complete(length)) => {
                    let status = response.code.unwrap_or(0);
                    let mut content_length = None;
                    let mut chunked = false;
                    for header in response.headers.iter() {
                        if header.name.eq_ignore_ascii_case("content-length") {
                            content_length = std::str::from_utf8(header.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<u64>().ok());
                        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = header
                                .value
                                .windows(7)
                                .any(|w| w.eq_ignore_ascii_case(b"chunked"));
                        } else if header.name.eq_ignore_ascii_case("connection")
                            && header.value.eq_ignore_ascii_case(b"close")
                        {
                            self.closed = true;
                        }
                    }
                    self.start += length;
                    let framing = if head_request || status == 204 || status == 304 {
                        Framing::None
                    } else if chunked {
                        Framing::Chunked
                    } else if let Some(length) = content_length {
                        Framing::Length(length)
                    } else {
                        Framing::UntilClose
                    };
                    return Ok((
                        Head {
                            status,
                            content_length,
                        },
                        framing,
                    ));
                }
                Ok(httparse::Status::Partial) => {
                    if available.len() >= MAX_HEAD {
                        return Err(io::Error::other("response head too large"));
                    }
                    self.fill_or_eof("the server closed the connection").await?;
                }
                Err(error) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad response head: {error}"),
                    ));
                }
            }
        }
    }

    async fn read_length(
        &mut self,
        length: u64,
        on_body: &mut (dyn FnMut(&[u8]) + Send),
    ) -> io::Result<()> {
        let mut remaining = length;
        while remaining > 0 {
            if self.start == self.end {
                self.fill_or_eof("the body ended early").await?;
            }
            let take =
                (self.end - self.start).min(usize::try_from(remaining).unwrap_or(usize::MAX));
            on_body(&self.buffer[self.start..self.start + take]);
            self.start += take;
            remaining -= take as u64;
        }
        Ok(())
    }

    /// Reads up to and including the next CRLF; returns the line without it.
    async fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(position) = self.buffer[self.start..self.end]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                let line = self.buffer[self.start..self.start + position].to_vec();
                self.start += position + 2;
                return Ok(line);
            }
            if self.end - self.start > MAX_HEAD {
                return Err(io::Error::other("chunk header too long"));
            }
            self.fill_or_eof("the chunked body ended early").await?;
        }
    }

    async fn read_chunked(&mut self, on_body: &mut (dyn FnMut(&[u8]) + Send)) -> io::Result<()> {
        loop {
            let line = self.read_line().await?;
            let size_text = line.split(|b| *b == b';').next().unwrap_or_default();
            let size = std::str::from_utf8(size_text)
                .ok()
                .and_then(|t| u64::from_str_radix(t.trim(), 16).ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(());
            }
            self.read_length(size, on_body).await?;
            if !self.read_line().await?.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "chunk without CRLF",
                ));
            }
        }
    }
}

/// Serializes a request: request line, `Host`, optional bearer token and content type,
/// `Content-Length`, then the body.
pub fn build_request(
    method: &str,
    path: &str,
    host: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let mut request = Vec::with_capacity(160 + body.len());
    write_request(&mut request, method, path, host, token, content_type, body);
    request
}

/// [`build_request`] into a reused buffer (cleared first).
pub fn write_request(
    out: &mut Vec<u8>,
    method: &str,
    path: &str,
    host: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(token) = token {
        out.extend_from_slice(b"Authorization: Bearer ");
        out.extend_from_slice(token.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(content_type) = content_type {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Serves canned responses, one per request head received, on one connection.
    async fn serve_canned(responses: Vec<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            for response in responses {
                let mut buf = [0u8; 4096];
                while !received.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = socket.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    received.extend_from_slice(&buf[..n]);
                }
                let end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                received.drain(..end);
                socket.write_all(response).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_length_chunked_and_empty_bodies_on_one_connection() {
        let addr = serve_canned(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n",
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno",
        ])
        .await;
        let mut connection = Connection::connect(addr).await.unwrap();
        let get = build_request("GET", "/", "h", Some("t"), None, b"");
        let cases: [(u16, &[u8]); 4] = [(200, b"hello"), (200, b"abcde"), (304, b""), (401, b"no")];
        for (status, body) in cases {
            let response = connection.request(&get).await.unwrap();
            assert_eq!((response.status, response.body.as_slice()), (status, body));
        }
        assert!(connection.is_closed());
        assert!(connection.request(&get).await.is_err());
    }

    #[test]
    fn requests_carry_token_type_and_length() {
        let request = build_request(
            "POST",
            "/p",
            "h:1",
            Some("abc"),
            Some("application/json"),
            b"{}",
        );
        assert_eq!(
            String::from_utf8(request).unwrap(),
            "POST /p HTTP/1.1\r\nHost: h:1\r\nAuthorization: Bearer abc\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
    }
}
