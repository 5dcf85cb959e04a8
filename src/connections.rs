//! Connection-level defences of the public listener: the layer between pingora's accept loop
//! and its HTTP/1 proxy (`HttpProxy<Gateway>`).
//!
//! It owns:
//! - admission: how many connections one client address (`server.max_connections_per_ip`;
//!   IPv4-mapped IPv6 peers count as IPv4, IPv6 by /64 like the rate limiter) and all clients together (`server.max_connections`) may hold open; over a cap the
//!   connection gets one complete 429 / 503 JSON response and is closed;
//! - reading each request head itself, under one total deadline (`server.header_timeout`),
//!   because pingora applies its keep-alive timeout per read while reading a head, so a client
//!   trickling a byte every few seconds (slowloris) was never cut off. Late: 408 and close;
//!   larger than [`MAX_HEAD_BYTES`]: 431 and close;
//! - the keep-alive idle limit between requests (`server.keepalive_timeout`);
//! - the metrics of all of that (`authgate_connections_refused_total{reason}`,
//!   `authgate_open_connections`).
//!
//! The complete head is then handed to pingora as the session's first bytes
//! (`set_pipelined_prefix`), and pingora parses and serves it as before.
//!
//! It must not interpret requests beyond finding where the head ends: routing, header size
//! rules, authentication and every response of an admitted request stay in `gateway.rs`. It
//! must not enable HTTP/1.1 pipelining or h2c: a pipelined prefix carried over by pingora
//! would collide with the head handed over here (the TCP listener is plain HTTP/1).

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::auth::ApiError;
use crate::error::ConnectionCap;
use crate::gateway::{Gateway, InFlight};
use crate::limits::ip_rate::client_bucket;
use crate::telemetry::{ConnectionRefusal, Metrics};

/// A request head (request line and headers) larger than this gets 431. Above the gateway's
/// own 32 KiB header rule (which answers smaller oversized heads), far below pingora's 1 MiB.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// As many headers as pingora parses, so "complete" here means complete there.
const MAX_HEADERS: usize = 256;
/// How long writing one of our own refusals may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// After a refusal, what the client still sends is read and dropped for this long (at most
/// [`LINGER_BYTES`]) before closing, so the kernel does not reset the connection over unread
/// bytes and destroy the response before the client has read it.
const LINGER: Duration = Duration::from_millis(500);
/// Once a shutdown begins, how long an idle or half-sent connection still gets to deliver a
/// request head.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// The validated `[server]` connection settings.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections_per_ip: u32,
    pub max_connections: u32,
    /// `Strict-Transport-Security` for the refusals written here, when `server.hsts` is set.
    pub hsts: Option<String>,
}

/// The public listener's application: admission and head reading, then pingora's proxy.
pub struct ConnectionGuard {
    proxy: Arc<HttpProxy<Gateway>>,
    limits: ConnectionLimits,
    counts: Arc<Counts>,
    metrics: Arc<Metrics>,
    /// Requests and connections in progress (see `server::exit_when_idle`).
    in_flight: Arc<AtomicUsize>,
}

impl ConnectionGuard {
    fn hsts(&self) -> Option<&str> {
        self.limits.hsts.as_deref()
    }

    pub fn new(
        proxy: HttpProxy<Gateway>,
        limits: ConnectionLimits,
        metrics: Arc<Metrics>,
        in_flight: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            in_flight,
            proxy: Arc::new(proxy),
            counts: Arc::new(Counts::new(
                limits.max_connections_per_ip,
                limits.max_connections,
            )),
            limits,
            metrics,
        }
    }

    fn admit(&self, peer: Option<IpAddr>) -> Result<Slot, ConnectionCap> {
        // Trusted proxies are not exempt: one that carries many clients needs a higher
        // `max_connections_per_ip`, said in the README.
        let key = peer.map(client_bucket);
        self.counts.admit(key)?;
        self.metrics.connection_opened();
        Ok(Slot {
            counts: self.counts.clone(),
            metrics: self.metrics.clone(),
            key,
        })
    }

    /// Serves HTTP/1 requests on an admitted connection until it closes.
    async fn serve(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        // An open connection keeps the process up during a shutdown until it closes, which
        // happens within SHUTDOWN_LINGER once its current request is answered.
        let _open = InFlight::enter(&self.in_flight);
        // A new connection gets header_timeout from the accept for its whole first head.
        let mut wait = Wait::NewConnection(Instant::now() + self.limits.header_timeout);
        let mut carried: Option<HttpPersistentSettings> = None;
        loop {
            let head =
                match read_head(&mut stream, wait, self.limits.header_timeout, shutdown).await {
                    Head::Complete(head) => head,
                    Head::Closed => return,
                    Head::SilentTimeout => {
                        self.metrics
                            .connection_refused(ConnectionRefusal::HeaderTimeout);
                        return;
                    }
                    Head::TimedOut => {
                        self.metrics
                            .connection_refused(ConnectionRefusal::HeaderTimeout);
                        refuse(stream, &ApiError::RequestTimeout, self.hsts()).await;
                        return;
                    }
                    Head::TooLarge => {
                        self.metrics
                            .connection_refused(ConnectionRefusal::HeaderTooLarge);
                        let error = ApiError::HeadersTooLarge("request headers are too large");
                        refuse(stream, &error, self.hsts()).await;
                        return;
                    }
                };
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = carried.take() {
                settings.apply_to_session(&mut session);
            }
            if *shutdown.borrow() {
                // Shutting down: answer this request, then close.
                session.set_keepalive(None);
            } else {
                session.set_keepalive(Some(self.limits.keepalive_timeout.as_secs().max(1)));
            }
            session.set_pipelined_prefix(head);
            let Some(reused) = self.proxy.process_new_http(session, shutdown).await else {
                return;
            };
            let (next, settings) = reused.consume();
            stream = next;
            carried = settings;
            wait = Wait::KeptAlive(Instant::now() + self.limits.keepalive_timeout);
        }
    }
}

#[async_trait]
impl ServerApp for ConnectionGuard {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = peer_ip(&stream);
        match self.admit(peer) {
            Ok(_slot) => self.serve(stream, shutdown).await,
            Err(cap) => {
                self.metrics.connection_refused(match cap {
                    ConnectionCap::PerIp => ConnectionRefusal::PerIp,
                    ConnectionCap::Global => ConnectionRefusal::Global,
                });
                tracing::debug!(
                    peer = %peer.map(|ip| ip.to_string()).unwrap_or_default(),
                    ?cap,
                    "connection refused"
                );
                refuse(stream, &ApiError::TooManyConnections(cap), self.hsts()).await;
            }
        }
        // Every connection is served to its end here; nothing goes back to pingora's loop.
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

/// The TCP peer's address; IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as IPv4.
fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    let addr = digest.peer_addr()?.as_inet()?;
    Some(addr.ip().to_canonical())
}

/// Open connections per client key and in total. One short lock per connection opened or
/// closed (never per request); a key leaves the map when its count drops to zero, so the map
/// holds at most one entry per open connection.
struct Counts {
    max_per_key: u32,
    max_total: usize,
    state: Mutex<CountState>,
}

#[derive(Default)]
struct CountState {
    per_key: HashMap<IpAddr, u32>,
    total: usize,
}

impl Counts {
    fn new(max_per_key: u32, max_total: u32) -> Self {
        Self {
            max_per_key,
            max_total: usize::try_from(max_total).unwrap_or(usize::MAX),
            state: Mutex::new(CountState::default()),
        }
    }

    /// Counts one more connection for `key` (`None`: counted in the total only), or says
    /// which cap it would break. The per-address cap is checked first.
    fn admit(&self, key: Option<IpAddr>) -> Result<(), ConnectionCap> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let held = key.map_or(0, |key| state.per_key.get(&key).copied().unwrap_or(0));
        if key.is_some() && held >= self.max_per_key {
            return Err(ConnectionCap::PerIp);
        }
        if state.total >= self.max_total {
            return Err(ConnectionCap::Global);
        }
        state.total += 1;
        if let Some(key) = key {
            state.per_key.insert(key, held + 1);
        }
        Ok(())
    }

    fn release(&self, key: Option<IpAddr>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.total = state.total.saturating_sub(1);
        if let Some(key) = key {
            match state.per_key.get_mut(&key) {
                Some(count) if *count > 1 => *count -= 1,
                Some(_) => {
                    state.per_key.remove(&key);
                }
                None => {}
            }
        }
    }

    #[cfg(test)]
    fn tracked_keys(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .per_key
            .len()
    }
}

/// One admitted connection; counted until dropped.
struct Slot {
    counts: Arc<Counts>,
    metrics: Arc<Metrics>,
    key: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counts.release(self.key);
        self.metrics.connection_closed();
    }
}

/// How long to wait for the first byte of the next request head.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// A new connection: the whole head by this instant (accept + header_timeout).
    NewConnection(Instant),
    /// A kept-alive connection: the first byte by this instant (keepalive_timeout), then
    /// header_timeout for the head.
    KeptAlive(Instant),
}

#[derive(Debug)]
enum Head {
    /// A complete head (and whatever followed it in the same reads), or bytes pingora will
    /// refuse as malformed.
    Complete(BytesMut),
    /// The client closed, the connection failed, a kept-alive connection stayed idle, or the
    /// server is shutting down: close without an answer.
    Closed,
    /// A new connection sent nothing within header_timeout: close without an answer.
    SilentTimeout,
    /// Part of a head arrived, not all of it in time: 408.
    TimedOut,
    /// The head grew past [`MAX_HEAD_BYTES`]: 431.
    TooLarge,
}

/// Reads one request head within its deadline; see [`Wait`].
async fn read_head(
    stream: &mut Stream,
    wait: Wait,
    header_timeout: Duration,
    shutdown: &ShutdownWatch,
) -> Head {
    let mut deadline = match wait {
        Wait::NewConnection(deadline) | Wait::KeptAlive(deadline) => deadline,
    };
    let stopping = shutting_down(shutdown.clone());
    tokio::pin!(stopping);
    let mut stopped = false;
    let mut buf = BytesMut::with_capacity(4096);
    let mut scan = HeadScan::default();
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let was_empty = buf.is_empty();
        let read = tokio::select! {
            // Bytes already there win over a shutdown, as in pingora's own read.
            biased;
            read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)) => read,
            () = &mut stopping, if !stopped => {
                // Shutting down (SIGTERM, or a binary upgrade handing the listener over):
                // closing an idle kept-alive connection now would fail a request the client
                // may be sending at this very moment. A request that arrives within the
                // linger is served (with `Connection: close`); then the connection closes.
                stopped = true;
                deadline = deadline.min(Instant::now() + SHUTDOWN_LINGER);
                continue;
            }
        };
        match read {
            Err(_elapsed) if stopped => return Head::Closed,
            Err(_elapsed) if buf.is_empty() => {
                return match wait {
                    Wait::NewConnection(_) => Head::SilentTimeout,
                    Wait::KeptAlive(_) => Head::Closed,
                };
            }
            Err(_elapsed) => return Head::TimedOut,
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Closed,
            Ok(Ok(_)) => {}
        }
        if was_empty {
            if let Wait::KeptAlive(_) = wait {
                // The next request has begun: from now on its head has header_timeout.
                deadline = Instant::now() + header_timeout;
            }
        }
        match scan.status(&buf) {
            HeadStatus::Complete => return Head::Complete(buf),
            HeadStatus::Partial if buf.len() > MAX_HEAD_BYTES => return Head::TooLarge,
            HeadStatus::Partial => {}
        }
    }
}

/// Resolves once the server begins shutting down (never, if the signal is gone).
async fn shutting_down(mut shutdown: ShutdownWatch) {
    if shutdown.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Follows a head as it arrives without parsing it again on every read (a client sending a
/// byte per packet must not make the work quadratic): httparse runs on the first read, so
/// obvious garbage goes to pingora at once, and then only when a blank line has arrived after
/// the request line began, which is the only way a head can end.
#[derive(Debug, Default)]
struct HeadScan {
    /// Bytes already searched for a blank line.
    scanned: usize,
    /// Where the request line begins (empty lines before it are allowed and skipped).
    begin: Option<usize>,
    parsed: bool,
}

impl HeadScan {
    fn status(&mut self, buf: &[u8]) -> HeadStatus {
        let first = !std::mem::replace(&mut self.parsed, true);
        let scanned = self.scanned.min(buf.len());
        self.scanned = buf.len();
        let begin = match self.begin {
            Some(begin) => begin,
            None => match buf[scanned..]
                .iter()
                .position(|b| !matches!(b, b'\r' | b'\n'))
            {
                Some(offset) => *self.begin.insert(scanned + offset),
                None => return HeadStatus::Partial,
            },
        };
        // The common case, a head that arrived whole with nothing after it: once the request
        // line has begun, a blank line after it means httparse finds the head complete or
        // refuses it, and either way it goes to pingora ([`head_status`] says Complete).
        if buf.len() >= begin + 4 && buf.ends_with(b"\r\n\r\n") {
            return HeadStatus::Complete;
        }
        // A blank line is "\n\n" or "\n\r\n": look back two bytes across the read boundary.
        let from = scanned.saturating_sub(2).max(begin);
        let blank_line = buf[from..].windows(2).enumerate().any(|(i, pair)| {
            pair == b"\n\n" || (pair == b"\n\r" && buf.get(from + i + 2) == Some(&b'\n'))
        });
        if first || blank_line {
            head_status(buf)
        } else {
            HeadStatus::Partial
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum HeadStatus {
    /// Hand the bytes to pingora: the head is complete, or malformed in a way pingora refuses
    /// (400) without reading further.
    Complete,
    /// More bytes are needed.
    Partial,
}

/// Whether `buf` holds a whole request head, judged as pingora will judge it.
fn head_status(buf: &[u8]) -> HeadStatus {
    // Left uninitialised: filling 256 empty headers (8 KiB) on every request head cost more
    // than the parse itself.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    match request.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(_)) => HeadStatus::Complete,
        Ok(httparse::Status::Partial) => HeadStatus::Partial,
        // pingora percent-escapes a request line whose target has bytes httparse refuses
        // (spaces, quotes, control characters) and parses again, reading more if needed: for
        // such a line, wait for the end of the head, as pingora would.
        Err(httparse::Error::Token | httparse::Error::Version)
            if looks_like_request_line(buf) && !has_head_end(buf) =>
        {
            HeadStatus::Partial
        }
        Err(_) => HeadStatus::Complete,
    }
}

/// `METHOD target HTTP/<digit>` on the first line: the shape pingora tries to repair.
fn looks_like_request_line(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(buf);
    let Some(space) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    let method_ok = space > 0
        && line[..space]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    method_ok
        && line[space..]
            .windows(7)
            .any(|w| w.starts_with(b" HTTP/") && w[6].is_ascii_digit())
}

fn has_head_end(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n")
}

/// Writes `error` as a complete HTTP/1.1 response with `Connection: close`, then closes.
/// Write errors (the client is gone or never reads) are ignored.
async fn refuse(mut stream: Stream, error: &ApiError, hsts: Option<&str>) {
    let response = error_response(error, hsts);
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.flush().await?;
        AsyncWriteExt::shutdown(&mut stream).await
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        linger(&mut stream).await;
    }
}

/// The raw bytes of an error response, in the gateway's usual JSON shape.
fn error_response(error: &ApiError, hsts: Option<&str>) -> Vec<u8> {
    let body = error.body();
    let status = error.status();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("Error");
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         Cache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\n\
         X-Request-Id: {}\r\n\
         Connection: close\r\n",
        body.len(),
        crate::request_id::RequestId::generate(),
    );
    if let Some(seconds) = error.retry_after() {
        head.push_str(&format!("Retry-After: {seconds}\r\n"));
    }
    if let Some(hsts) = hsts {
        head.push_str(&format!("Strict-Transport-Security: {hsts}\r\n"));
    }
    head.push_str("\r\n");
    let mut response = head.into_bytes();
    response.extend_from_slice(&body);
    response
}

/// Reads and drops what the client still sends, briefly (see [`LINGER`]).
async fn linger(stream: &mut Stream) {
    let _ = tokio::time::timeout(LINGER, async {
        let mut scratch = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn per_address_cap_then_global_cap() {
        let counts = Counts::new(2, 3);
        assert!(counts.admit(ip("192.0.2.1")).is_ok());
        assert!(counts.admit(ip("192.0.2.1")).is_ok());
        assert_eq!(counts.admit(ip("192.0.2.1")), Err(ConnectionCap::PerIp));
        assert!(counts.admit(ip("192.0.2.2")).is_ok());
        assert_eq!(counts.admit(ip("192.0.2.3")), Err(ConnectionCap::Global));
        // Uncounted peers (trusted proxies) still count toward the total.
        assert_eq!(counts.admit(None), Err(ConnectionCap::Global));
        counts.release(ip("192.0.2.1"));
        assert!(counts.admit(None).is_ok());
    }

    #[test]
    fn released_addresses_leave_the_map() {
        let counts = Counts::new(5, 100);
        for _ in 0..3 {
            counts.admit(ip("192.0.2.1")).unwrap();
        }
        counts.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(counts.tracked_keys(), 2);
        for _ in 0..3 {
            counts.release(ip("192.0.2.1"));
        }
        counts.release(ip("192.0.2.2"));
        assert_eq!(counts.tracked_keys(), 0);
        assert_eq!(
            counts.state.lock().unwrap().total,
            0,
            "every release gives its slot back"
        );
    }

    #[test]
    fn ipv4_mapped_peers_count_as_ipv4() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            client_bucket(mapped.to_canonical()),
            ip("192.0.2.7").unwrap()
        );
    }

    #[test]
    fn head_is_complete_at_the_blank_line() {
        assert_eq!(
            head_status(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            HeadStatus::Partial
        );
        assert_eq!(head_status(b"GET / HTT"), HeadStatus::Partial);
        assert_eq!(head_status(b""), HeadStatus::Partial);
        assert_eq!(
            head_status(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            HeadStatus::Complete
        );
        assert_eq!(
            head_status(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            HeadStatus::Complete
        );
    }

    #[test]
    fn malformed_heads_go_to_pingora_at_once_unless_it_would_repair_them() {
        // Not HTTP at all: pingora answers 400 without reading further.
        assert_eq!(head_status(b"\x16\x03\x01\x02\x00"), HeadStatus::Complete);
        assert_eq!(
            head_status(b"GET / HTTP/1.1\r\nBad Name: x\r\n"),
            HeadStatus::Complete
        );
        // A request line pingora percent-escapes: wait for the rest of the head.
        assert_eq!(
            head_status(b"GET /a\"b HTTP/1.1\r\nHost: x\r\n"),
            HeadStatus::Partial
        );
        assert_eq!(
            head_status(b"GET /a\"b HTTP/1.1\r\nHost: x\r\n\r\n"),
            HeadStatus::Complete
        );
    }

    #[test]
    fn a_head_trickled_byte_by_byte_is_complete_exactly_at_its_blank_line() {
        let head = b"\r\nGET /x HTTP/1.1\r\nHost: x\r\nA: b\r\n\r\nbody";
        let end = head.len() - 4;
        let mut scan = HeadScan::default();
        for len in 1..end {
            assert_eq!(
                scan.status(&head[..len]),
                HeadStatus::Partial,
                "after {len} bytes"
            );
        }
        assert_eq!(scan.status(&head[..end]), HeadStatus::Complete);
        assert_eq!(HeadScan::default().status(head), HeadStatus::Complete);
        // Bare LF line ends too.
        let mut scan = HeadScan::default();
        assert_eq!(
            scan.status(b"GET / HTTP/1.1\nHost: x\n"),
            HeadStatus::Partial
        );
        assert_eq!(
            scan.status(b"GET / HTTP/1.1\nHost: x\n\n"),
            HeadStatus::Complete
        );
        // Garbage in the first read goes to pingora (which answers 400) at once.
        let mut scan = HeadScan::default();
        assert_eq!(scan.status(b"\x16\x03\x01\x02"), HeadStatus::Complete);
    }

    /// What the shortcut in [`HeadScan::status`] relies on: whatever precedes it, a buffer
    /// whose request line has begun and that ends with a blank line is Complete for httparse's
    /// judgement too (a whole head, or one pingora refuses).
    #[test]
    fn a_buffer_ending_in_a_blank_line_is_complete_for_the_parser_too() {
        let many_headers = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(300));
        let heads: [&[u8]; 12] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /a\"b HTTP/1.1\nHost: x\n\r\n\r\n",
            b"G\r\n\r\n",
            b"\x16\x03\x01\x02\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n folded\r\n\r\n",
            b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab\r\n\r\n",
            b"GET / HTTP/1.1\nHost: x\n\nrest\r\n\r\n",
            many_headers.as_bytes(),
        ];
        for head in heads {
            assert_eq!(
                head_status(head),
                HeadStatus::Complete,
                "{:?}",
                String::from_utf8_lossy(head)
            );
            assert_eq!(HeadScan::default().status(head), HeadStatus::Complete);
        }
    }

    #[test]
    fn refusals_are_complete_json_responses_that_close() {
        let response = error_response(&ApiError::TooManyConnections(ConnectionCap::PerIp), None);
        let text = String::from_utf8(response).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{head}"
        );
        for line in [
            "Content-Type: application/json",
            "Connection: close",
            "Retry-After: 1",
            "X-Content-Type-Options: nosniff",
            &format!("Content-Length: {}", body.len()),
        ] {
            assert!(head.contains(line), "{line} missing in {head}");
        }
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "too_many_connections");

        let global = error_response(&ApiError::TooManyConnections(ConnectionCap::Global), None);
        assert!(global.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"));
        let timeout = String::from_utf8(error_response(
            &ApiError::RequestTimeout,
            Some("max-age=60"),
        ))
        .unwrap();
        assert!(timeout.starts_with("HTTP/1.1 408 Request Timeout\r\n"));
        assert!(timeout.contains("\"request_timeout\""));
        assert!(!timeout.contains("Retry-After"));
    }
}
