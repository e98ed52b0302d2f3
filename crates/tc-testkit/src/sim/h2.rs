//! A minimal HTTP/2 client (cleartext with prior knowledge, or TLS with ALPN `h2`) for load
//! generation: many body-less GET
//! requests as streams of one connection, written and read in batches.
//!
//! The simulator's long-polls used hyper's HTTP/2 client, which spends about as much CPU per
//! exchange as the server it measures (a task, a channel message and a socket write per request),
//! so a benchmark on one machine measured its load generator as much as the controller. This
//! client is one object per connection, driven by one task: requests that become due together
//! leave in one write, and one read takes in every answer that arrived.
//!
//! It speaks as much of RFC 9113 as that needs. It announces a header table of size 0, so that
//! the server encodes response headers without its dynamic table (RFC 7541 §4.2) and they can be
//! read without keeping one; of the response headers only `:status` is decoded. Request headers
//! are literals that the server does not index. The client never sends data, so it ignores the
//! server's flow-control windows; it opens its own receive windows as wide as allowed and
//! replenishes the connection window as data arrives.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tls::{Stream, Tls};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_ENABLE_PUSH: u16 = 0x2;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

/// The largest flow-control window (2^31 - 1).
const MAX_WINDOW: u32 = 0x7fff_ffff;
/// The connection window every connection starts with.
const DEFAULT_WINDOW: u32 = 65_535;
/// Received data is acknowledged to the server in steps of this much.
const WINDOW_STEP: u32 = 16 * 1024 * 1024;
/// Largest frame accepted (the default SETTINGS_MAX_FRAME_SIZE, which this client keeps).
const MAX_FRAME: usize = 16_384;
/// Largest response body collected.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// The last stream id a client may use.
const LAST_STREAM_ID: u32 = 0x7fff_ffff;

/// A finished exchange: the request's tag, and the status and body or why there is none.
#[derive(Debug)]
pub struct Answer {
    /// What the caller tagged the request with.
    pub tag: usize,
    /// The status and body, or the error that ended the stream.
    pub result: io::Result<(u16, Vec<u8>)>,
}

/// A stream waiting for its answer.
struct Pending {
    tag: usize,
    /// When the request was queued.
    sent: Instant,
    /// `:status`, once the response headers arrived (0 when it could not be decoded).
    status: Option<u16>,
    body: Vec<u8>,
}

/// One HTTP/2 connection.
pub struct Connection {
    stream: Stream,
    authority: String,
    /// `:scheme` is `https`.
    https: bool,
    /// Frames read but not handled yet (`input[start..]`).
    input: Vec<u8>,
    start: usize,
    /// Frames to write with the next [`Connection::flush`].
    output: Vec<u8>,
    next_stream: u32,
    pending: HashMap<u32, Pending>,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until it says).
    max_streams: usize,
    /// Data received since the connection window was last replenished.
    unacknowledged: u32,
    /// A header block being received: its stream, whether it ends the stream, and its bytes.
    headers: Option<(u32, bool, Vec<u8>)>,
    /// The server said GOAWAY or the connection failed: no new streams.
    closed: bool,
}

impl Connection {
    /// Connects and sends the connection preface and this client's settings.
    pub async fn connect(server: SocketAddr) -> io::Result<Connection> {
        Self::connect_with(server, None).await
    }

    /// [`Self::connect`], in TLS when `tls` is given (with ALPN `h2`, whatever `tls` offers).
    pub async fn connect_with(server: SocketAddr, tls: Option<&Tls>) -> io::Result<Connection> {
        let tls = tls.map(|tls| tls.with_alpn(&[b"h2"]));
        let stream = super::tls::connect(server, tls.as_ref()).await?;
        if let super::tls::Stream::Tls(stream) = &stream
            && stream.get_ref().1.alpn_protocol() != Some(b"h2")
        {
            return Err(io::Error::other("the server did not agree to h2 by ALPN"));
        }
        let mut connection = Connection {
            stream,
            authority: server.to_string(),
            https: tls.is_some(),
            input: Vec::with_capacity(64 * 1024),
            start: 0,
            output: Vec::with_capacity(16 * 1024),
            next_stream: 1,
            pending: HashMap::new(),
            max_streams: usize::MAX,
            unacknowledged: 0,
            headers: None,
            closed: false,
        };
        connection.output.extend_from_slice(PREFACE);
        let settings = [
            (SETTINGS_HEADER_TABLE_SIZE, 0),
            (SETTINGS_ENABLE_PUSH, 0),
            (SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW),
        ];
        frame_header(&mut connection.output, 6 * settings.len(), SETTINGS, 0, 0);
        for (id, value) in settings {
            connection.output.extend_from_slice(&id.to_be_bytes());
            connection.output.extend_from_slice(&value.to_be_bytes());
        }
        window_update(&mut connection.output, 0, MAX_WINDOW - DEFAULT_WINDOW);
        connection.flush().await?;
        Ok(connection)
    }

    /// Streams waiting for their answer.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// When the longest-waiting stream was sent, if any is waiting.
    pub fn oldest(&self) -> Option<Instant> {
        self.pending.values().map(|pending| pending.sent).min()
    }

    /// Whether another stream may be opened now.
    pub fn can_send(&self) -> bool {
        !self.closed
            && self.pending.len() < self.max_streams
            && self.next_stream <= LAST_STREAM_ID - 2
    }

    /// Queues `GET path` with a bearer token (written by the next [`Connection::flush`]); its
    /// answer will carry `tag`. Check [`Connection::can_send`] first.
    pub fn get(&mut self, path: &str, token: &str, tag: usize) {
        let id = self.next_stream;
        self.next_stream += 2;
        let at = self.output.len();
        frame_header(&mut self.output, 0, HEADERS, END_STREAM | END_HEADERS, id);
        let block = self.output.len();
        // :method GET and :scheme http or https are entries 2 and 6 or 7 of the static table.
        self.output
            .extend_from_slice(&[0x82, if self.https { 0x87 } else { 0x86 }]);
        // Literals without indexing, named by static entries 4 (:path) and 1 (:authority); the
        // token is never indexed (entry 23, authorization).
        literal(&mut self.output, 0x00, 4, &[path.as_bytes()]);
        let authority = std::mem::take(&mut self.authority);
        literal(&mut self.output, 0x00, 1, &[authority.as_bytes()]);
        self.authority = authority;
        literal(&mut self.output, 0x10, 23, &[b"Bearer ", token.as_bytes()]);
        let length = self.output.len() - block;
        self.output[at..at + 3].copy_from_slice(&(length as u32).to_be_bytes()[1..]);
        self.pending.insert(
            id,
            Pending {
                tag,
                sent: Instant::now(),
                status: None,
                body: vec![],
            },
        );
    }

    /// Writes what was queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.output.is_empty() {
            let result = self.stream.write_all(&self.output).await;
            self.output.clear();
            result?;
        }
        Ok(())
    }

    /// Waits for data from the server and reads what arrived (cancel-safe: nothing read is lost
    /// when the future is dropped). Then call [`Connection::answers`].
    pub async fn read(&mut self) -> io::Result<()> {
        if self.start > 0 && self.start == self.input.len() {
            self.input.clear();
            self.start = 0;
        }
        if self.input.capacity() - self.input.len() < MAX_FRAME {
            self.input.drain(..self.start);
            self.start = 0;
            self.input.reserve(64 * 1024);
        }
        let read = self.stream.read_buf(&mut self.input).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        Ok(())
    }

    /// Handles every complete frame read so far, appending the finished exchanges to `out` and
    /// queueing acknowledgements (flush afterwards). An error means the connection is unusable;
    /// [`Connection::fail`] then ends its streams.
    pub fn answers(&mut self, out: &mut Vec<Answer>) -> io::Result<()> {
        // Taken out while its frames are handled (they borrow it), and put back whatever happens.
        let input = std::mem::take(&mut self.input);
        let result = self.frames(&input, out);
        self.input = input;
        result
    }

    fn frames(&mut self, input: &[u8], out: &mut Vec<Answer>) -> io::Result<()> {
        while input.len() - self.start >= 9 {
            let head = &input[self.start..self.start + 9];
            let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & LAST_STREAM_ID;
            if length > MAX_FRAME {
                return Err(protocol(format!("a frame of {length} bytes")));
            }
            if input.len() - self.start < 9 + length {
                break;
            }
            let payload = &input[self.start + 9..self.start + 9 + length];
            self.start += 9 + length;
            self.frame(kind, flags, stream, payload, out)?;
        }
        Ok(())
    }

    /// Ends every stream with `error` and closes the connection to new streams.
    pub fn fail(&mut self, error: &io::Error, out: &mut Vec<Answer>) {
        self.closed = true;
        for (_, pending) in self.pending.drain() {
            out.push(Answer {
                tag: pending.tag,
                result: Err(io::Error::new(error.kind(), error.to_string())),
            });
        }
    }

    fn frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        out: &mut Vec<Answer>,
    ) -> io::Result<()> {
        if let Some((expected, _, _)) = &self.headers
            && (kind != CONTINUATION || stream != *expected)
        {
            return Err(protocol("a header block was interrupted".into()));
        }
        match kind {
            DATA => {
                self.unacknowledged = self.unacknowledged.saturating_add(payload.len() as u32);
                if self.unacknowledged >= WINDOW_STEP {
                    window_update(&mut self.output, 0, self.unacknowledged);
                    self.unacknowledged = 0;
                }
                let data = unpad(flags, payload)?;
                if let Some(pending) = self.pending.get_mut(&stream) {
                    if pending.body.len() + data.len() > MAX_BODY {
                        self.pending.remove(&stream);
                        return Err(protocol(format!("stream {stream}: body too large")));
                    }
                    pending.body.extend_from_slice(data);
                }
                if flags & END_STREAM != 0 {
                    self.finish(stream, out);
                }
            }
            HEADERS => {
                let mut block = unpad(flags, payload)?;
                if flags & PRIORITY != 0 {
                    block = block
                        .get(5..)
                        .ok_or_else(|| protocol("a short HEADERS frame".into()))?;
                }
                let ends = flags & END_STREAM != 0;
                if flags & END_HEADERS != 0 {
                    self.header_block(stream, ends, block, out)?;
                } else {
                    self.headers = Some((stream, ends, block.to_vec()));
                }
            }
            CONTINUATION => {
                let Some((_, _, block)) = self.headers.as_mut() else {
                    return Err(protocol("CONTINUATION without HEADERS".into()));
                };
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    let (stream, ends, block) = self.headers.take().expect("header block");
                    self.header_block(stream, ends, &block, out)?;
                }
            }
            RST_STREAM => {
                if let Some(pending) = self.pending.remove(&stream) {
                    let code = payload
                        .get(..4)
                        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    out.push(Answer {
                        tag: pending.tag,
                        result: Err(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            format!("stream reset by the server (error code {code})"),
                        )),
                    });
                }
            }
            SETTINGS if flags & ACK == 0 => {
                for setting in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([setting[0], setting[1]]);
                    let value =
                        u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                    if id == SETTINGS_MAX_CONCURRENT_STREAMS {
                        self.max_streams = value as usize;
                    }
                }
                frame_header(&mut self.output, 0, SETTINGS, ACK, 0);
            }
            PING if flags & ACK == 0 => {
                frame_header(&mut self.output, payload.len(), PING, ACK, 0);
                self.output.extend_from_slice(payload);
            }
            GOAWAY => {
                self.closed = true;
                let last = payload.get(..4).map_or(0, |b| {
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & LAST_STREAM_ID
                });
                // Streams above `last` were not processed and never will be.
                let refused: Vec<u32> = self
                    .pending
                    .keys()
                    .copied()
                    .filter(|&id| id > last)
                    .collect();
                for id in refused {
                    let pending = self.pending.remove(&id).expect("pending stream");
                    out.push(Answer {
                        tag: pending.tag,
                        result: Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "the server went away before answering",
                        )),
                    });
                }
            }
            // SETTINGS and PING acknowledgements, WINDOW_UPDATE (this client sends no data),
            // PRIORITY and unknown frame types need nothing.
            _ => {}
        }
        Ok(())
    }

    fn header_block(
        &mut self,
        stream: u32,
        ends: bool,
        block: &[u8],
        out: &mut Vec<Answer>,
    ) -> io::Result<()> {
        let status = decode_status(block)?;
        if let Some(pending) = self.pending.get_mut(&stream) {
            // Informational (1xx) heads precede the final one; trailers keep the status.
            if pending.status.is_none_or(|s| (100..200).contains(&s)) {
                pending.status = status;
            }
        }
        if ends {
            self.finish(stream, out);
        }
        Ok(())
    }

    fn finish(&mut self, stream: u32, out: &mut Vec<Answer>) {
        if let Some(pending) = self.pending.remove(&stream) {
            out.push(Answer {
                tag: pending.tag,
                result: match pending.status {
                    Some(status) => Ok((status, pending.body)),
                    None => Err(protocol(format!("stream {stream} ended without a status"))),
                },
            });
        }
    }
}

fn protocol(message: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 protocol: {message}"),
    )
}

fn frame_header(out: &mut Vec<u8>, length: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&(length as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

fn window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    frame_header(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&increment.to_be_bytes());
}

/// The payload of a DATA or HEADERS frame without its padding.
fn unpad(flags: u8, payload: &[u8]) -> io::Result<&[u8]> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let padding = *payload
        .first()
        .ok_or_else(|| protocol("a padded frame without its pad length".into()))?
        as usize;
    payload
        .get(1..payload.len().saturating_sub(padding))
        .filter(|_| padding < payload.len())
        .ok_or_else(|| protocol("more padding than payload".into()))
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn encode_int(out: &mut Vec<u8>, first: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A literal header field named by static entry `name`, its value the concatenation of `parts`
/// (not Huffman-coded). `kind` is 0x00 (without indexing) or 0x10 (never indexed).
fn literal(out: &mut Vec<u8>, kind: u8, name: usize, parts: &[&[u8]]) {
    encode_int(out, kind, 4, name);
    encode_int(out, 0, 7, parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Reads an HPACK integer with an `n`-bit prefix at `block[*at..]`.
fn decode_int(block: &[u8], at: &mut usize, n: u32) -> io::Result<usize> {
    let short = || protocol("a truncated header block".into());
    let max = (1usize << n) - 1;
    let mut value = (*block.get(*at).ok_or_else(short)? as usize) & max;
    *at += 1;
    if value < max {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let byte = *block.get(*at).ok_or_else(short)?;
        *at += 1;
        if shift > 28 {
            return Err(protocol("an oversized integer".into()));
        }
        value += ((byte & 0x7f) as usize) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// Reads a string literal at `block[*at..]`: whether it is Huffman-coded, and its bytes.
fn decode_string<'a>(block: &'a [u8], at: &mut usize) -> io::Result<(bool, &'a [u8])> {
    let huffman = block.get(*at).is_some_and(|b| b & 0x80 != 0);
    let length = decode_int(block, at, 7)?;
    let bytes = block
        .get(*at..*at + length)
        .ok_or_else(|| protocol("a truncated header block".into()))?;
    *at += length;
    Ok((huffman, bytes))
}

/// `:status` of a response header block encoded without a dynamic table: `Some(0)` when the
/// status is there but not a 3-digit number this decoder reads, `None` when there is none.
fn decode_status(block: &[u8]) -> io::Result<Option<u16>> {
    // Static entries 8 to 14 are `:status` 200, 204, 206, 304, 400, 404 and 500.
    const STATIC_STATUS: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
    let mut status = None;
    let mut at = 0;
    while at < block.len() {
        let byte = block[at];
        if byte & 0x80 != 0 {
            let index = decode_int(block, &mut at, 7)?;
            match index {
                8..=14 => status = Some(STATIC_STATUS[index - 8]),
                1..=61 => {}
                _ => return Err(protocol(format!("header table entry {index}"))),
            }
        } else if byte & 0xe0 == 0x20 {
            // A table size update: the table stays empty whatever its size.
            decode_int(block, &mut at, 5)?;
        } else {
            let prefix = if byte & 0x40 != 0 { 6 } else { 4 };
            let name = decode_int(block, &mut at, prefix)?;
            let is_status = match name {
                0 => decode_string(block, &mut at)? == (false, b":status".as_slice()),
                8..=14 => true,
                1..=61 => false,
                _ => return Err(protocol(format!("header table entry {name}"))),
            };
            let (huffman, value) = decode_string(block, &mut at)?;
            if is_status {
                status = Some(status_digits(huffman, value).unwrap_or(0));
            }
        }
    }
    Ok(status)
}

/// A status code from its (possibly Huffman-coded) digits.
fn status_digits(huffman: bool, value: &[u8]) -> Option<u16> {
    let digits = if huffman {
        huffman_digits(value)?
    } else {
        value.to_vec()
    };
    if digits.len() != 3 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Decodes a Huffman-coded string of decimal digits (RFC 7541 Appendix B: '0' to '2' have 5-bit
/// codes 0 to 2, '3' to '9' 6-bit codes 0x19 to 0x1f; padding is up to 7 one bits).
fn huffman_digits(coded: &[u8]) -> Option<Vec<u8>> {
    let bits = coded.len() * 8;
    let bit = |i: usize| (coded[i / 8] >> (7 - i % 8)) & 1;
    let read = |from: usize, count: usize| (from..from + count).fold(0u8, |v, i| v << 1 | bit(i));
    let mut digits = vec![];
    let mut at = 0;
    while at < bits {
        let rest = bits - at;
        if rest < 8 && (at..bits).all(|i| bit(i) == 1) {
            break;
        }
        if rest >= 5 && read(at, 5) <= 2 {
            digits.push(b'0' + read(at, 5));
            at += 5;
        } else if rest >= 6 && (0x19..=0x1f).contains(&read(at, 6)) {
            digits.push(b'3' + read(at, 6) - 0x19);
            at += 6;
        } else {
            return None;
        }
    }
    Some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_across_the_prefix_boundary() {
        for n in [4, 5, 6, 7] {
            for value in [0, 1, 14, 15, 30, 31, 62, 63, 126, 127, 128, 1337, 1 << 20] {
                let mut out = vec![];
                encode_int(&mut out, 0, n, value);
                let mut at = 0;
                assert_eq!(decode_int(&out, &mut at, n).unwrap(), value, "{n} {value}");
                assert_eq!(at, out.len());
            }
        }
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
        let mut out = vec![];
        encode_int(&mut out, 0, 5, 1337);
        assert_eq!(out, [31, 154, 10]);
    }

    #[test]
    fn statuses_are_read_from_indexed_and_literal_fields() {
        // Indexed :status 200 between other fields.
        assert_eq!(decode_status(&[0x5f, 0x01, b'x', 0x88]).unwrap(), Some(200));
        assert_eq!(decode_status(&[0x8d]).unwrap(), Some(404));
        // A literal named by entry 8 with a plain value, and after a table size update.
        assert_eq!(
            decode_status(&[0x20, 0x08, 0x03, b'4', b'0', b'1']).unwrap(),
            Some(401)
        );
        // The same with the value Huffman-coded: "401" is 011010 00000 00001.
        assert_eq!(
            decode_status(&[0x48, 0x82, 0b0110_1000, 0b0000_0001]).unwrap(),
            Some(401)
        );
        // "503": 011011 00000 011001, padded to 3 bytes.
        assert_eq!(
            decode_status(&[0x08, 0x83, 0b0110_1100, 0b0000_1100, 0b1111_1111]).unwrap(),
            Some(503)
        );
        // A literal name.
        assert_eq!(
            decode_status(&[
                0x00, 0x07, b':', b's', b't', b'a', b't', b'u', b's', 0x03, b'2', b'0', b'2'
            ])
            .unwrap(),
            Some(202)
        );
        // No status at all, an unreadable one, a dynamic-table reference, a truncated block.
        assert_eq!(decode_status(&[0x0f, 0x10, 0x01, b'x']).unwrap(), None);
        assert_eq!(decode_status(&[0x08, 0x02, b'o', b'k']).unwrap(), Some(0));
        assert!(decode_status(&[0xbe]).is_err());
        assert!(decode_status(&[0x08, 0x05, b'2']).is_err());
    }

    #[test]
    fn frames_split_across_reads_are_handled_once_whole() {
        let mut out = vec![];
        frame_header(&mut out, 1, HEADERS, END_HEADERS, 1);
        out.push(0x88);
        frame_header(&mut out, 5, DATA, END_STREAM, 1);
        out.extend_from_slice(b"hello");
        frame_header(&mut out, 8, PING, 0, 0);
        out.extend_from_slice(b"12345678");
        assert_eq!(unpad(PADDED, &[2, b'a', b'b', 0, 0]).unwrap(), b"ab");
        assert!(unpad(PADDED, &[9, b'a']).is_err());

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move { listener.accept().await.unwrap().0 });
            let mut connection = Connection::connect(addr).await.unwrap();
            let _server_side = server.await.unwrap();
            connection.output.clear();
            let before = Instant::now();
            connection.get("/x", "t", 7);
            assert_eq!(connection.in_flight(), 1);
            assert!(connection.oldest().is_some_and(|sent| sent >= before));
            connection.output.clear();
            let mut answers = vec![];
            // Fed a byte at a time, the exchange finishes exactly when its last frame is whole.
            for (i, byte) in out.iter().enumerate() {
                connection.input.push(*byte);
                connection.answers(&mut answers).unwrap();
                let whole = i + 1 >= 9 + 1 + 9 + 5;
                assert_eq!(answers.len(), usize::from(whole), "after byte {i}");
            }
            let answer = answers.pop().unwrap();
            assert_eq!(answer.tag, 7);
            assert_eq!(answer.result.unwrap(), (200, b"hello".to_vec()));
            assert_eq!(connection.in_flight(), 0);
            assert_eq!(connection.oldest(), None);
            // The PING was acknowledged.
            assert_eq!(&connection.output[3..5], &[PING, ACK]);
            assert_eq!(&connection.output[9..], b"12345678");
        });
    }
}
