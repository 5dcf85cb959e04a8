//! The one harness for authgate's black-box tests.
//!
//! Every test starts its own gateway process (`authgate --config <file>`) on free ports,
//! against real stores, isolated from every other test. `AUTHGATE_TEST_BACKEND` picks the
//! backend pair for the whole run ([`pair`]):
//!
//! - `production` (the default): Postgres, a fresh database `authgate_t_<hex>` per gateway,
//!   dropped (best effort) on Drop (base URL `postgres://postgres@127.0.0.1:5432/test`, or
//!   `AUTHGATE_TEST_DATABASE_URL`); and Redis, a random key prefix `authgate_t_<hex>:` per
//!   gateway whose keys are deleted on Drop (URL `redis://127.0.0.1:6379`, or
//!   `AUTHGATE_TEST_REDIS_URL`).
//! - `embedded`: a fresh SQLite file `authgate.db` in the gateway's temp dir and
//!   `redis_url = ""` (the in-process session store and login guard); Postgres and Redis are
//!   not touched.
//! - Upstream: an in-process echo app ([`EchoServer`]) that answers every request with a JSON
//!   description of what it received, so a test sees exactly which headers were forwarded.
//!
//! Tests read the database through [`Gateway::db`] / [`Gateway::query`] (see [`db`]), which
//! work on both pairs. A test that only makes sense on one pair says so with
//! [`require_backend`] (or [`only_on`] for one check), which prints a line in the output.
//!
//! An unreachable store is a panic naming the URL, never a silent skip: a test that did not
//! run must not look like a test that passed.
//!
//! The gateway's stdout and stderr go to `gateway.log` in the gateway's temp dir; tests read it
//! through [`Gateway::logs`], and a failing test prints its tail on Drop.

#![allow(dead_code)]

pub mod db;
pub mod pair;
pub mod topology;

// Not every test file uses every helper.
#[allow(unused_imports)]
pub use db::{sqlite_time, uuid_bind, Bind, Cell, Db, Row};
#[allow(unused_imports)]
pub use pair::{backend, on_pair, only_on, require_backend, Backend, BACKEND_VAR};

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::AbortHandle;

pub const COOKIE_NAME: &str = "authgate_session";
/// A request header the echo upstream turns into a response header (`Name: value`).
pub const ECHO_RESPONSE_HEADER: &str = "x-echo-response-header";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// How long a gateway gets to become healthy after it is spawned.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

pub fn base_database_url() -> String {
    std::env::var("AUTHGATE_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into())
}

pub fn base_redis_url() -> String {
    std::env::var("AUTHGATE_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.into())
}

/// `n` random bytes as lower-case hex.
pub fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::thread_rng().gen()).collect();
    hex::encode(bytes)
}

/// Ports this test process has handed out (to a gateway, a Redis, ...) or listens on itself.
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// Records `port` as taken; false when it already was.
fn claim_port(port: u16) -> bool {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    if handed_out.contains(&port) {
        return false;
    }
    handed_out.push(port);
    true
}

/// A listener on a 127.0.0.1 port no other part of this test process has been handed. Bind :0
/// alone is not enough: the OS may give back a port [`free_port`] just handed to a gateway that
/// has not bound it yet, and the test would then talk to this listener in the gateway's place.
/// A port that is taken stays bound while the next one is tried, so the OS cannot return it.
pub fn listen_on_free_port() -> TcpListener {
    let mut taken = Vec::new();
    loop {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        if claim_port(listener.local_addr().unwrap().port()) {
            listener
                .set_nonblocking(true)
                .expect("non-blocking listener");
            return TcpListener::from_std(listener).expect("tokio listener");
        }
        taken.push(listener);
    }
}

/// A port that was free a moment ago (bind :0, read the port, drop the listener). Nothing
/// listens on it afterwards, which also makes it a good "dead upstream". A port is never
/// returned twice in one test process, nor one a listener of [`listen_on_free_port`] holds (a
/// gateway's listen and admin ports must differ, and must not be its echo upstream's).
pub fn free_port() -> u16 {
    loop {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        if claim_port(listener.local_addr().unwrap().port()) {
            return listener.local_addr().unwrap().port();
        }
    }
}

/// A port free on both 127.0.0.1 and ::1 a moment ago, for programs that listen on both
/// loopbacks (chromedriver). Falls back to an IPv4-only free port when IPv6 is unavailable.
pub fn free_port_dual_stack() -> u16 {
    let ipv6 = StdTcpListener::bind("[::1]:0").is_ok();
    loop {
        let port = free_port();
        if !ipv6 || StdTcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
}

/// A unique, valid e-mail address for one test.
pub fn unique_email() -> String {
    format!("user-{}@example.com", random_hex(6))
}

/// A password that satisfies the policy (≥ 8 chars, ≤ 72 bytes, not the email) and is unique
/// enough to be searched for in logs.
pub fn strong_password() -> String {
    format!("Pw-{}-correct-horse", random_hex(8))
}

/// SHA-256 of `s`, lower-case hex: what the stores are allowed to keep instead of a token.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// `Cookie:` header value carrying a session token.
pub fn cookie_header(token: &str) -> String {
    format!("{COOKIE_NAME}={token}")
}

/// Replaces the database name in a Postgres URL (keeps credentials, host and query string).
fn with_database(url: &str, database: &str) -> String {
    let (without_query, query) = match url.find('?') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let scheme_end = without_query.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match without_query[scheme_end..].find('/') {
        Some(i) => &without_query[..scheme_end + i],
        None => without_query,
    };
    format!("{base}/{database}{query}")
}

/// `host:port` of a `postgres://` URL (default port 5432).
fn postgres_host_port(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    }
}

/// The same URL with its `host[:port]` replaced (credentials, path and query kept).
fn with_host_port(url: &str, host_port: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let credentials = authority
        .rsplit_once('@')
        .map(|(c, _)| format!("{c}@"))
        .unwrap_or_default();
    format!("{scheme}://{credentials}{host_port}{tail}")
}

/// `host:port` of a `redis://` URL (credentials and database index dropped).
fn redis_host_port(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    let host_port = rest.split('/').next().unwrap_or(rest);
    if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:6379")
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Stores
// ---------------------------------------------------------------------------------------------

async fn connect_postgres(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection as _;
    match tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(url)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "cannot reach Postgres at {url}: {e}. Start it, or point AUTHGATE_TEST_DATABASE_URL at one."
        ),
        Err(_) => panic!(
            "cannot reach Postgres at {url}: connect timed out. Start it, or point AUTHGATE_TEST_DATABASE_URL at one."
        ),
    }
}

pub async fn connect_redis(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url)
        .unwrap_or_else(|e| panic!("invalid Redis URL {url}: {e} (AUTHGATE_TEST_REDIS_URL)"));
    match tokio::time::timeout(
        Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "cannot reach Redis at {url}: {e}. Start it, or point AUTHGATE_TEST_REDIS_URL at one."
        ),
        Err(_) => panic!(
            "cannot reach Redis at {url}: connect timed out. Start it, or point AUTHGATE_TEST_REDIS_URL at one."
        ),
    }
}

/// Creates `authgate_t_<hex>` on the base server and returns its URL.
async fn create_test_database() -> (String, String) {
    use sqlx::Executor as _;
    let base = base_database_url();
    let mut conn = connect_postgres(&base).await;
    let name = format!("authgate_t_{}", random_hex(8));
    let mut attempts = 0;
    loop {
        match conn
            .execute(sqlx::raw_sql(&format!("CREATE DATABASE {name}")))
            .await
        {
            Ok(_) => break,
            // Older servers refuse concurrent copies of template1; retry a little.
            Err(e) if attempts < 20 && e.to_string().contains("being accessed") => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot create test database {name} on {base}: {e}"),
        }
    }
    (name.clone(), with_database(&base, &name))
}

fn drop_test_database(name: &str) {
    let base = base_database_url();
    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    run_blocking(async move {
        use sqlx::Connection as _;
        use sqlx::Executor as _;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&base).await {
            let _ = conn.execute(sqlx::raw_sql(&sql)).await;
        }
    });
}

/// Every key under `prefix`, found with SCAN (fine in tests; the gateway itself must not).
pub async fn redis_keys(redis_url: &str, prefix: &str) -> Vec<String> {
    let mut conn = connect_redis(redis_url).await;
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys
}

fn delete_redis_prefix(redis_url: &str, prefix: &str) {
    let url = redis_url.to_string();
    let prefix = prefix.to_string();
    run_blocking(async move {
        let Ok(client) = redis::Client::open(url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return;
        };
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, batch)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
            else {
                return;
            };
            if !batch.is_empty() {
                let _: redis::RedisResult<()> =
                    redis::cmd("DEL").arg(&batch).query_async(&mut conn).await;
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    });
}

/// Runs a future to completion on a private runtime in its own thread: usable from Drop, even
/// inside a tokio worker.
fn run_blocking<F>(future: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), future).await;
            });
        }
    })
    .join();
}

// ---------------------------------------------------------------------------------------------
// Echo upstream
// ---------------------------------------------------------------------------------------------

/// One request as the echo upstream saw it.
///
/// `headers` maps lower-case names to values; a repeated header is joined with ", " in arrival
/// order. `header_list` keeps every header line as received (lower-cased name, value), so a
/// test can count duplicates.
#[derive(Debug, Clone)]
pub struct EchoedRequest {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub header_list: Vec<(String, String)>,
    pub body: String,
}

impl EchoedRequest {
    pub fn from_json(value: &Value) -> Self {
        let headers = value["headers"]
            .as_object()
            .unwrap_or_else(|| panic!("echo body has no headers object: {value}"))
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        let header_list = value["header_list"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|pair| {
                        (
                            pair[0].as_str().unwrap_or_default().to_string(),
                            pair[1].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        EchoedRequest {
            method: value["method"].as_str().unwrap_or_default().to_string(),
            path: value["path"].as_str().unwrap_or_default().to_string(),
            headers,
            header_list,
            body: value["body"].as_str().unwrap_or_default().to_string(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// How many header lines with this name reached the upstream.
    pub fn header_count(&self, name: &str) -> usize {
        let name = name.to_ascii_lowercase();
        self.header_list.iter().filter(|(n, _)| *n == name).count()
    }
}

/// A tiny HTTP/1.1 upstream with keep-alive: every request gets `200 application/json`
/// `{"path", "method", "headers", "header_list", "body"}`.
pub struct EchoServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<EchoedRequest>>>,
    accept_task: AbortHandle,
}

impl EchoServer {
    pub async fn start() -> Self {
        Self::start_delayed(Duration::ZERO).await
    }

    /// An echo upstream that waits `delay` after reading each request before it answers (a
    /// slow backend). The request is recorded as soon as it has been read.
    pub async fn start_delayed(delay: Duration) -> Self {
        Self::serve(listen_on_free_port(), delay)
    }

    /// An echo upstream on `addr` (e.g. one a dropped echo upstream had: it "comes back").
    pub async fn start_on(addr: SocketAddr) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = socket.bind(addr) {
            assert!(Instant::now() < deadline, "echo cannot bind {addr}: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self::serve(socket.listen(128).expect("echo listen"), Duration::ZERO)
    }

    fn serve(listener: TcpListener, delay: Duration) -> Self {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_in_task = seen.clone();
        let accept_task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let seen = seen_in_task.clone();
                tokio::spawn(async move {
                    let _ = serve_echo_connection(socket, seen, delay).await;
                });
            }
        })
        .abort_handle();
        EchoServer {
            addr,
            seen,
            accept_task,
        }
    }

    /// Every request the upstream has received so far.
    pub fn requests(&self) -> Vec<EchoedRequest> {
        self.seen.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

fn find_subsequence(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads from `socket` until `buf` holds at least `n` bytes. `false` on EOF.
async fn fill_to(socket: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> std::io::Result<bool> {
    let mut chunk = [0u8; 8192];
    while buf.len() < n {
        let read = socket.read(&mut chunk).await?;
        if read == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..read]);
    }
    Ok(true)
}

/// Reads until `buf` contains `delimiter`; returns its position, `None` on EOF.
async fn fill_until(
    socket: &mut TcpStream,
    buf: &mut Vec<u8>,
    delimiter: &[u8],
) -> std::io::Result<Option<usize>> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(pos) = find_subsequence(buf, delimiter) {
            return Ok(Some(pos));
        }
        let read = socket.read(&mut chunk).await?;
        if read == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..read]);
    }
}

async fn serve_echo_connection(
    mut socket: TcpStream,
    seen: Arc<Mutex<Vec<EchoedRequest>>>,
    delay: Duration,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Some(head_end) = fill_until(&mut socket, &mut buf, b"\r\n\r\n").await? else {
            return Ok(());
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end + 4);

        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let header_list: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &header_list {
            headers
                .entry(name.clone())
                .and_modify(|existing| {
                    existing.push_str(", ");
                    existing.push_str(value);
                })
                .or_insert_with(|| value.clone());
        }

        // Body: Content-Length or chunked; anything else has none.
        let mut body = Vec::new();
        if let Some(len) = headers
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            if !fill_to(&mut socket, &mut buf, len).await? {
                return Ok(());
            }
            body = buf.drain(..len).collect();
        } else if headers
            .get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            loop {
                let Some(line_end) = fill_until(&mut socket, &mut buf, b"\r\n").await? else {
                    return Ok(());
                };
                let size_line = String::from_utf8_lossy(&buf[..line_end]).to_string();
                buf.drain(..line_end + 2);
                let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                    .unwrap_or(0);
                if size == 0 {
                    // Trailers (usually none) end with an empty line.
                    loop {
                        let Some(end) = fill_until(&mut socket, &mut buf, b"\r\n").await? else {
                            return Ok(());
                        };
                        buf.drain(..end + 2);
                        if end == 0 {
                            break;
                        }
                    }
                    break;
                }
                if !fill_to(&mut socket, &mut buf, size + 2).await? {
                    return Ok(());
                }
                body.extend(buf.drain(..size));
                buf.drain(..2);
            }
        }

        let body_text = String::from_utf8_lossy(&body).to_string();
        let echoed = json!({
            "path": path,
            "method": method,
            "headers": headers,
            "header_list": header_list.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
            "body": body_text,
        });
        seen.lock().unwrap().push(EchoedRequest::from_json(&echoed));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }

        let payload = serde_json::to_vec(&echoed).unwrap();
        let close = headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        // `X-Echo-Response-Header: Name: value` asks for that header on the response.
        let extra: String = header_list
            .iter()
            .filter(|(name, _)| name == ECHO_RESPONSE_HEADER)
            .map(|(_, value)| format!("{value}\r\n"))
            .collect();
        let mut response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}{extra}\r\n",
            payload.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes();
        if method != "HEAD" {
            response.extend_from_slice(&payload);
        }
        socket.write_all(&response).await?;
        if close {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TCP forwarder (a Redis "cable" a test can unplug)
// ---------------------------------------------------------------------------------------------

/// Forwards TCP connections from a local port to `target`. `stop` closes the listener and cuts
/// every open connection (the store "goes down"); `start` listens on the same port again.
pub struct TcpForwarder {
    pub addr: SocketAddr,
    target: String,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl TcpForwarder {
    pub async fn start(target: &str) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let forwarder = TcpForwarder {
            addr,
            target: target.to_string(),
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        forwarder.resume().await;
        forwarder
    }

    /// A forwarder to the test Postgres server.
    pub async fn to_postgres() -> Self {
        let url = base_database_url();
        drop(connect_postgres(&url).await);
        Self::start(&postgres_host_port(&url)).await
    }

    /// A forwarder to the test Redis server.
    pub async fn to_redis() -> Self {
        let url = base_redis_url();
        // Fail loudly now if Redis itself is down, rather than later through the gateway.
        drop(connect_redis(&url).await);
        Self::start(&redis_host_port(&url)).await
    }

    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Unplugs: no new connections, and every open one is cut.
    pub fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Plugs back in on the same port.
    pub async fn resume(&self) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match socket.bind(self.addr) {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("forwarder cannot bind {}: {e}", self.addr),
            }
        }
        let listener = socket.listen(128).expect("forwarder listen");
        let target = self.target.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                })
                .abort_handle();
                tasks.lock().unwrap().push(handle);
            }
        })
        .abort_handle();
        self.tasks.lock().unwrap().push(accept);
    }
}

impl Drop for TcpForwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway configuration
// ---------------------------------------------------------------------------------------------

/// Where a route sends its traffic.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// The harness's echo app.
    Echo,
    /// Any `host:port` (e.g. a port nobody listens on).
    Addr(String),
    /// A pool of several `host:port`.
    Pool(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub prefix: String,
    pub upstream: Upstream,
    pub auth: String,
    /// Extra `key = value` lines for this `[[route]]`.
    pub extra: Vec<String>,
}

impl RouteSpec {
    pub fn required(prefix: &str, upstream: Upstream) -> Self {
        RouteSpec {
            prefix: prefix.into(),
            upstream,
            auth: "required".into(),
            extra: Vec::new(),
        }
    }

    /// Adds a `key = value` line to this route (e.g. `case_insensitive = true`).
    pub fn with(mut self, line: &str) -> Self {
        self.extra.push(line.into());
        self
    }

    pub fn public(prefix: &str, upstream: Upstream) -> Self {
        RouteSpec {
            prefix: prefix.into(),
            upstream,
            auth: "public".into(),
            extra: Vec::new(),
        }
    }
}

/// Builder for a test gateway's `gateway.toml`. Defaults: idle 1h, absolute 1d, rate limit
/// 1000/s burst 1000, bcrypt cost 4, JSON logs, routes `/` (required) and `/public/` (public)
/// to the echo upstream.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub idle_timeout: String,
    pub absolute_timeout: String,
    pub requests_per_second: u32,
    pub burst: u32,
    pub redis_url: Option<String>,
    pub routes: Vec<RouteSpec>,
    pub max_sessions_per_user: Option<u32>,
    pub on_limit: Option<String>,
    pub shutdown_grace: String,
    /// Extra `key = value` lines appended to `[session]`.
    pub session_extra: Vec<String>,
    /// Extra `key = value` lines appended to `[server]`.
    pub server_extra: Vec<String>,
    /// Extra `key = value` lines appended to `[storage]` (e.g. `redis_cluster_urls`).
    pub storage_extra: Vec<String>,
    /// Use another gateway's database and Redis prefix instead of fresh ones (a scaled-out
    /// deployment). The other gateway owns and cleans them up.
    pub shared_stores: Option<SharedStores>,
    /// `server.trusted_proxies` (CIDRs); empty by default, so every peer is the client.
    pub trusted_proxies: Vec<String>,
    /// `[login_protection]`, when set.
    pub login_protection: Option<LoginProtection>,
    /// `login_protection.max_registrations_per_ip`, when set.
    pub max_registrations_per_ip: Option<u32>,
    /// `geoip.database` (path to a .mmdb), when set.
    pub geoip_database: Option<String>,
    /// `geoip.country_header` (e.g. "CF-IPCountry"), when set.
    pub geoip_country_header: Option<String>,
    /// Start-up waits for `/readyz` (stores reachable, schema migrated) unless a test
    /// deliberately starts the gateway with a store down; then `/healthz` is enough.
    pub wait_for_ready: bool,
    /// Reach Postgres through this forwarder (see [`TcpForwarder::to_postgres`]) instead of
    /// directly, so a test can cut the database off.
    pub database_through: Option<SocketAddr>,
}

/// The `[login_protection]` section.
#[derive(Debug, Clone)]
pub struct LoginProtection {
    pub max_failures: u32,
    pub window: String,
    pub lockout: String,
    pub max_attempts_per_ip: u32,
}

/// The stores of a running gateway, for a second instance to share.
#[derive(Debug, Clone)]
pub struct SharedStores {
    pub database_url: String,
    pub redis_prefix: String,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            idle_timeout: "1h".into(),
            absolute_timeout: "1d".into(),
            requests_per_second: 1000,
            burst: 1000,
            redis_url: None,
            routes: vec![
                RouteSpec::required("/", Upstream::Echo),
                RouteSpec::public("/public/", Upstream::Echo),
            ],
            max_sessions_per_user: None,
            on_limit: None,
            shutdown_grace: "1s".into(),
            session_extra: Vec::new(),
            server_extra: Vec::new(),
            storage_extra: Vec::new(),
            shared_stores: None,
            trusted_proxies: Vec::new(),
            login_protection: None,
            max_registrations_per_ip: None,
            geoip_database: None,
            geoip_country_header: None,
            wait_for_ready: true,
            database_through: None,
        }
    }
}

/// The concrete, per-run values a config is rendered with.
#[derive(Debug, Clone)]
pub struct RenderTarget {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub echo: SocketAddr,
    pub database_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
}

impl RenderTarget {
    /// Free ports and this pair's stores, for configs that are only validated, never run
    /// (`authgate check` opens no store; the SQLite path is never created).
    pub fn for_check() -> Self {
        let (database_url, redis_url) = match backend() {
            Backend::Production => (base_database_url(), base_redis_url()),
            Backend::Embedded => ("sqlite://authgate-check.db".to_string(), String::new()),
        };
        RenderTarget {
            listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            admin: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            echo: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            database_url,
            redis_url,
            redis_prefix: format!("authgate_t_{}:", random_hex(6)),
        }
    }
}

fn toml_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

impl GatewayOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn idle_timeout(mut self, value: &str) -> Self {
        self.idle_timeout = value.into();
        self
    }

    pub fn absolute_timeout(mut self, value: &str) -> Self {
        self.absolute_timeout = value.into();
        self
    }

    pub fn rate_limit(mut self, requests_per_second: u32, burst: u32) -> Self {
        self.requests_per_second = requests_per_second;
        self.burst = burst;
        self
    }

    /// The per-IP request budget out of the way (100 000/s, burst 100 000), for a test whose
    /// clients on 127.0.0.1 send as fast as the machine allows (past the default 1000/s on a
    /// fast one): a 429 there would be the budget, not a failure of what is tested.
    pub fn unmetered(self) -> Self {
        self.rate_limit(100_000, 100_000)
    }

    pub fn redis_url(mut self, url: &str) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// Connects the gateway to Postgres through `forwarder` (production pair only).
    pub fn database_through(mut self, forwarder: &TcpForwarder) -> Self {
        self.database_through = Some(forwarder.addr);
        self
    }

    /// For a gateway started with a store down: start-up waits for `/healthz` only.
    pub fn expect_not_ready(mut self) -> Self {
        self.wait_for_ready = false;
        self
    }

    pub fn routes(mut self, routes: Vec<RouteSpec>) -> Self {
        self.routes = routes;
        self
    }

    pub fn max_sessions_per_user(mut self, cap: u32, on_limit: &str) -> Self {
        self.max_sessions_per_user = Some(cap);
        self.on_limit = Some(on_limit.into());
        self
    }

    /// A second instance on `other`'s database and Redis prefix. Production pair only (the
    /// embedded pair runs one instance per SQLite file): guard the test with
    /// [`require_backend`].
    pub fn sharing_stores_with(mut self, other: &Gateway) -> Self {
        assert_eq!(
            backend(),
            Backend::Production,
            "sharing_stores_with: the embedded pair runs one instance per SQLite file; guard \
             the test with require_backend(Backend::Production, ...)"
        );
        self.shared_stores = Some(SharedStores {
            database_url: other.database_url.clone(),
            redis_prefix: other.redis_prefix.clone(),
        });
        self
    }

    pub fn trusted_proxies(mut self, cidrs: &[&str]) -> Self {
        self.trusted_proxies = cidrs.iter().map(|c| c.to_string()).collect();
        self
    }

    pub fn login_protection(
        mut self,
        max_failures: u32,
        window: &str,
        lockout: &str,
        max_attempts_per_ip: u32,
    ) -> Self {
        self.login_protection = Some(LoginProtection {
            max_failures,
            window: window.into(),
            lockout: lockout.into(),
            max_attempts_per_ip,
        });
        self
    }

    /// `login_protection.max_registrations_per_ip`: room for a test's many sign-ups from
    /// 127.0.0.1 (the default is 10 per window).
    pub fn max_registrations_per_ip(mut self, budget: u32) -> Self {
        self.max_registrations_per_ip = Some(budget);
        self
    }

    pub fn session_setting(mut self, line: &str) -> Self {
        self.session_extra.push(line.into());
        self
    }

    /// A `key = value` line for `[storage]`, e.g. `redis_cluster_urls = [...]`.
    pub fn storage_setting(mut self, line: &str) -> Self {
        self.storage_extra.push(line.into());
        self
    }

    /// Sessions and login counters on this Redis Cluster (production pair only) instead of
    /// the shared standalone Redis.
    pub fn redis_cluster(self, cluster: &topology::RedisCluster) -> Self {
        self.redis_url("")
            .storage_setting(&format!("redis_cluster_urls = {}", cluster.urls_toml()))
    }

    /// Sessions and login counters on this Sentinel group's master (production pair only).
    pub fn redis_sentinels(self, group: &topology::RedisSentinels) -> Self {
        self.redis_url("")
            .storage_setting(&format!("redis_sentinel_urls = {}", group.urls_toml()))
            .storage_setting(&format!(
                "redis_sentinel_master = {}",
                toml_string(&group.master_name)
            ))
    }

    /// A `key = value` line for `[server]`, e.g. `header_timeout = "1s"`.
    pub fn server_setting(mut self, line: &str) -> Self {
        self.server_extra.push(line.into());
        self
    }

    /// `geoip.database`: a MaxMind-format file (absolute path).
    pub fn geoip_database(mut self, path: &str) -> Self {
        self.geoip_database = Some(path.into());
        self
    }

    /// `geoip.country_header`: a CDN header believed from trusted proxies.
    pub fn geoip_country_header(mut self, name: &str) -> Self {
        self.geoip_country_header = Some(name.into());
        self
    }

    /// The `gateway.toml` text for these options.
    pub fn render(&self, target: &RenderTarget) -> String {
        let mut out = String::new();
        let listen = target.listen;
        out.push_str(&format!(
            "[server]\n\
             listen = \"{listen}\"\n\
             admin_listen = \"{}\"\n\
             threads = 2\n\
             trusted_proxies = [{}]\n\
             public_origin = \"http://{listen}\"\n\
             shutdown_grace = {}\n",
            target.admin,
            self.trusted_proxies
                .iter()
                .map(|c| toml_string(c))
                .collect::<Vec<_>>()
                .join(", "),
            toml_string(&self.shutdown_grace),
        ));
        for line in &self.server_extra {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        let redis_url = self.redis_url.as_deref().unwrap_or(&target.redis_url);
        out.push_str(&format!(
            "[storage]\n\
             database_url = {}\n\
             database_max_connections = 5\n\
             redis_url = {}\n\
             redis_key_prefix = {}\n\n",
            toml_string(&target.database_url),
            toml_string(redis_url),
            toml_string(&target.redis_prefix),
        ));
        if !self.storage_extra.is_empty() {
            // Back into [storage], after its blank line.
            out.pop();
            for line in &self.storage_extra {
                out.push_str(line);
                out.push('\n');
            }
            out.push('\n');
        }
        out.push_str(&format!(
            "[session]\n\
             cookie_name = \"{COOKIE_NAME}\"\n\
             idle_timeout = {}\n\
             absolute_timeout = {}\n\
             secure_cookie = false\n",
            toml_string(&self.idle_timeout),
            toml_string(&self.absolute_timeout),
        ));
        if let Some(cap) = self.max_sessions_per_user {
            out.push_str(&format!("max_sessions_per_user = {cap}\n"));
        }
        if let Some(policy) = &self.on_limit {
            out.push_str(&format!("on_limit = {}\n", toml_string(policy)));
        }
        for line in &self.session_extra {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        out.push_str("[password]\nbcrypt_cost = 4\n\n");
        out.push_str(&format!(
            "[rate_limit]\nrequests_per_second = {}\nburst = {}\n\n",
            self.requests_per_second, self.burst
        ));
        if self.login_protection.is_some() || self.max_registrations_per_ip.is_some() {
            out.push_str("[login_protection]\n");
            if let Some(protection) = &self.login_protection {
                out.push_str(&format!(
                    "max_failures = {}\nwindow = {}\nlockout = {}\nmax_attempts_per_ip = {}\n",
                    protection.max_failures,
                    toml_string(&protection.window),
                    toml_string(&protection.lockout),
                    protection.max_attempts_per_ip,
                ));
            }
            if let Some(budget) = self.max_registrations_per_ip {
                out.push_str(&format!("max_registrations_per_ip = {budget}\n"));
            }
            out.push('\n');
        }
        if self.geoip_database.is_some() || self.geoip_country_header.is_some() {
            out.push_str("[geoip]\n");
            if let Some(path) = &self.geoip_database {
                out.push_str(&format!("database = {}\n", toml_string(path)));
            }
            if let Some(name) = &self.geoip_country_header {
                out.push_str(&format!("country_header = {}\n", toml_string(name)));
            }
            out.push('\n');
        }
        out.push_str("[log]\nformat = \"json\"\nlevel = \"info\"\n\n");
        for route in &self.routes {
            let upstreams = match &route.upstream {
                Upstream::Echo => toml_string(&target.echo.to_string()),
                Upstream::Addr(addr) => toml_string(addr),
                Upstream::Pool(addrs) => addrs
                    .iter()
                    .map(|addr| toml_string(addr))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            out.push_str(&format!(
                "[[route]]\nprefix = {}\nupstreams = [{}]\nauth = {}\n",
                toml_string(&route.prefix),
                upstreams,
                toml_string(&route.auth),
            ));
            for line in &route.extra {
                out.push_str(line);
                out.push('\n');
            }
            out.push('\n');
        }
        out
    }

    pub async fn start(self) -> Gateway {
        Gateway::start_with(self).await
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------------------------

/// A private scratch directory removed on Drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("authgate-test-{}", random_hex(8)));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn gateway_binary() -> &'static str {
    env!("CARGO_BIN_EXE_authgate")
}

/// A `Command` for the gateway binary with the store/log env overrides removed (they would
/// override the file under test).
pub fn gateway_command() -> Command {
    let mut command = Command::new(gateway_binary());
    command
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("RUST_LOG");
    command
}

/// Runs `authgate check --config <file>` on `config_text`.
pub fn run_check(config_text: &str) -> std::process::Output {
    let dir = TempDir::new();
    let path = dir.path.join("gateway.toml");
    std::fs::write(&path, config_text).unwrap();
    gateway_command()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run authgate check")
}

/// Starts `authgate --config <config>` in `dir`, appending its output to `log`.
fn spawn_gateway(config: &Path, dir: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
    gateway_command()
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", gateway_binary()))
}

/// One running gateway with its own database, Redis prefix, echo upstream and ports.
pub struct Gateway {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub echo: EchoServer,
    /// The pair it runs on.
    pub backend: Backend,
    /// `postgres://…/authgate_t_<hex>` or `sqlite://<temp dir>/authgate.db`.
    pub database_url: String,
    /// The Redis it uses; empty on the embedded pair.
    pub redis_url: String,
    /// Its Redis key prefix (meaningless on the embedded pair).
    pub redis_prefix: String,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub client: reqwest::Client,
    /// The database this gateway created (and drops); `None` when sharing another's.
    owned_database: Option<String>,
    child: Option<Child>,
    dir: TempDir,
}

impl Gateway {
    /// A gateway with the default options.
    pub async fn start() -> Self {
        Self::start_with(GatewayOptions::default()).await
    }

    pub async fn start_with(options: GatewayOptions) -> Self {
        Self::start_with_edited(options, |text| text).await
    }

    /// [`Gateway::start_with`], with the rendered `gateway.toml` passed through `edit` first:
    /// for keys the options do not cover (e.g. `bcrypt_cost`, `secure_cookie`).
    pub async fn start_with_edited(
        options: GatewayOptions,
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        pair::announce_once();
        let backend = backend();
        let dir = TempDir::new();
        let (owned_database, database_url, redis_url, redis_prefix) = match backend {
            Backend::Production => {
                // Fail fast (and clearly) when a store is down; the redis_url option may
                // deliberately point at a dead port, so only the real one is checked here.
                drop(connect_redis(&base_redis_url()).await);
                match &options.shared_stores {
                    Some(shared) => (
                        None,
                        shared.database_url.clone(),
                        base_redis_url(),
                        shared.redis_prefix.clone(),
                    ),
                    None => {
                        let (name, url) = create_test_database().await;
                        (
                            Some(name),
                            url,
                            base_redis_url(),
                            format!("authgate_t_{}:", random_hex(6)),
                        )
                    }
                }
            }
            // A fresh file per gateway, gone with its temp dir; no Redis at all.
            Backend::Embedded => (
                None,
                format!("sqlite://{}", dir.path.join("authgate.db").display()),
                String::new(),
                format!("authgate_t_{}:", random_hex(6)),
            ),
        };
        let echo = EchoServer::start().await;
        let target = RenderTarget {
            listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            admin: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            echo: echo.addr,
            database_url: match options.database_through {
                Some(addr) => with_host_port(&database_url, &addr.to_string()),
                None => database_url.clone(),
            },
            redis_url,
            redis_prefix,
        };
        let config_path = dir.path.join("gateway.toml");
        let log_path = dir.path.join("gateway.log");
        std::fs::write(&config_path, edit(options.render(&target))).unwrap();
        std::fs::File::create(&log_path).unwrap();
        let child = spawn_gateway(&config_path, &dir.path, &log_path);

        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();

        let mut gateway = Gateway {
            listen: target.listen,
            admin: target.admin,
            echo,
            backend,
            database_url,
            redis_url: options.redis_url.clone().unwrap_or(target.redis_url),
            redis_prefix: target.redis_prefix,
            config_path,
            log_path,
            client,
            owned_database,
            child: Some(child),
            dir,
        };
        gateway.wait_until_up(options.wait_for_ready, true).await;
        if options.wait_for_ready && options.redis_url.is_none() {
            gateway.assert_runs_on_its_pair().await;
        }
        gateway
    }

    /// `/readyz` names the session store and database the pair is made of: a harness that
    /// rendered the wrong storage section must not pass for the other pair.
    async fn assert_runs_on_its_pair(&self) {
        let ready = json_body(self.admin_get("/readyz").await).await;
        let (sessions, database) = self
            .backend
            .pick(("redis", "postgres"), ("memory", "sqlite"));
        assert!(
            ready["session_store_backend"] == sessions && ready["database_backend"] == database,
            "the {} pair wants session store {sessions:?} and database {database:?}; /readyz \
             says {ready}\nconfig:\n{}",
            self.backend.name(),
            std::fs::read_to_string(&self.config_path).unwrap_or_default()
        );
    }

    /// Polls `/healthz` (or `/readyz`) until 200 and the public listener accepts connections.
    /// With `may_move`, a first start that found one of its ports taken (by a process outside
    /// this test binary, between [`free_port`] and the gateway's bind: `authgate` refuses to
    /// start then) is tried again on other ports, up to three times.
    async fn wait_until_up(&mut self, ready: bool, may_move: bool) {
        let mut deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut moves = 0;
        loop {
            let healthz = self.admin_url(if ready { "/readyz" } else { "/healthz" });
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let refusals = self.logs().matches("authgate: cannot listen on").count();
                if may_move && moves < 3 && refusals > moves {
                    moves += 1;
                    self.move_to_free_ports();
                    deadline = Instant::now() + STARTUP_TIMEOUT;
                    continue;
                }
                panic!(
                    "authgate exited during start-up ({status}).\nconfig:\n{}\nlog:\n{}",
                    std::fs::read_to_string(&self.config_path).unwrap_or_default(),
                    self.logs()
                );
            }
            let healthy = matches!(
                self.client.get(&healthz).timeout(Duration::from_secs(2)).send().await,
                Ok(r) if r.status() == 200
            );
            if healthy && TcpStream::connect(self.listen).await.is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "authgate did not become healthy within {STARTUP_TIMEOUT:?} (GET {healthz}).\nconfig:\n{}\nlog:\n{}",
                    std::fs::read_to_string(&self.config_path).unwrap_or_default(),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Rewrites the config with new listen and admin ports and starts the gateway again.
    fn move_to_free_ports(&mut self) {
        let (listen, admin) = (self.listen, self.admin);
        self.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        self.admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut config = std::fs::read_to_string(&self.config_path).unwrap();
        // An address ends at a quote or a path (`"…:P"`, `"http://…:P/…"`), never inside
        // a longer port number.
        for (old, new) in [(listen, self.listen), (admin, self.admin)] {
            for end in ['"', '/'] {
                config = config.replace(&format!("{old}{end}"), &format!("{new}{end}"));
            }
        }
        std::fs::write(&self.config_path, config).unwrap();
        self.child = Some(spawn_gateway(
            &self.config_path,
            &self.dir.path,
            &self.log_path,
        ));
    }

    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// Stops the gateway with SIGTERM (it writes out what it holds, then exits) and starts it
    /// again with the same config: same ports, same database, same Redis prefix. The log
    /// goes on in the same file.
    pub async fn restart(&mut self) {
        self.signal("TERM");
        let exit = self.wait_for_exit(Duration::from_secs(15)).await;
        assert!(
            exit.is_some(),
            "authgate still running 15 s after SIGTERM\nlog:\n{}",
            self.logs()
        );
        self.child = Some(spawn_gateway(
            &self.config_path,
            &self.dir.path,
            &self.log_path,
        ));
        self.wait_until_up(true, false).await;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends `signal` (e.g. "HUP", "TERM") to the gateway process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// The running gateway's `gateway.toml`.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config_path).expect("read gateway.toml")
    }

    /// Replaces `gateway.toml` with `edit(current text)` the way deploy tools do: written
    /// beside it, then renamed over it (the gateway never sees a half-written file).
    pub fn rewrite_config(&self, edit: impl FnOnce(String) -> String) {
        let text = edit(self.config_text());
        let staged = self
            .dir
            .path
            .join(format!(".gateway.toml.{}", random_hex(4)));
        std::fs::write(&staged, text).expect("write the new gateway.toml");
        std::fs::rename(&staged, &self.config_path).expect("rename over gateway.toml");
    }

    /// Waits until `authgate_config_reloads_total{result}` reaches `count`.
    pub async fn wait_for_reloads(&self, result: &str, count: u32) {
        let what = format!("authgate_config_reloads_total{{result=\"{result}\"}} to reach {count}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = metric_value(
                &self.metrics().await,
                "authgate_config_reloads_total",
                &[("result", result)],
            )
            .unwrap_or(0.0);
            if seen >= f64::from(count) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} (now {seen})\nlog:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to `timeout` for the process to exit; its status if it did.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the gateway wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listen, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn public_origin(&self) -> String {
        format!("http://{}", self.listen)
    }

    // --- plain requests ---------------------------------------------------------------------

    /// GET `path`, with the session cookie when `token` is given.
    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        self.get_with(path, token, &[]).await
    }

    /// GET `path` with extra headers (added with `append`, so names may repeat).
    pub async fn get_with(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        self.request("GET", path, token, headers, None).await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> reqwest::Response {
        let mut map = HeaderMap::new();
        if let Some(token) = token {
            map.append(
                reqwest::header::COOKIE,
                HeaderValue::from_str(&cookie_header(token)).unwrap(),
            );
        }
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let mut builder = self
            .client
            .request(method.parse().unwrap(), self.url(path))
            .headers(map);
        if let Some((content_type, bytes)) = body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        builder
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e:?}\nlog:\n{}", self.logs()))
    }

    /// POST a JSON value.
    pub async fn post_json(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> reqwest::Response {
        self.request(
            "POST",
            path,
            token,
            &[],
            Some(("application/json", serde_json::to_vec(body).unwrap())),
        )
        .await
    }

    /// POST raw bytes with the given Content-Type.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<Vec<u8>>,
    ) -> reqwest::Response {
        self.request("POST", path, None, &[], Some((content_type, body.into())))
            .await
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.admin_url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET admin {path} failed: {e}\nlog:\n{}", self.logs()))
    }

    /// The Prometheus text from the admin listener.
    pub async fn metrics(&self) -> String {
        let response = self.admin_get("/metrics").await;
        assert_eq!(response.status(), 200, "GET /metrics");
        response.text().await.unwrap()
    }

    // --- the /auth API ----------------------------------------------------------------------

    /// Registers a user; asserts 201 and returns the `user` object.
    pub async fn register(&self, email: &str, password: &str) -> Value {
        let response = self
            .post_json(
                "/auth/register",
                &json!({"email": email, "password": password}),
                None,
            )
            .await;
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 201, "register {email}: {body}");
        let value: Value = serde_json::from_str(&body).unwrap();
        value["user"].clone()
    }

    /// POST /auth/logout as a same-origin browser `fetch` sends it (with `Origin`, no body),
    /// which the CSRF rule (contract §5) must let through. The token may be absent.
    pub async fn logout(&self, token: Option<&str>) -> reqwest::Response {
        let origin = self.public_origin();
        self.request(
            "POST",
            "/auth/logout",
            token,
            &[("Origin", origin.as_str())],
            None,
        )
        .await
    }

    /// Logs in; asserts 200 and returns the session token from `Set-Cookie`.
    pub async fn login(&self, email: &str, password: &str) -> String {
        self.login_full(email, password).await.token
    }

    /// Logs in; asserts 200 and returns token, cookie attributes and body.
    pub async fn login_full(&self, email: &str, password: &str) -> LoginResult {
        self.login_full_with(email, password, &[]).await
    }

    /// Logs in with extra request headers (e.g. `User-Agent`, `X-Forwarded-For`); asserts 200
    /// and returns token, cookie attributes and body.
    pub async fn login_full_with(
        &self,
        email: &str,
        password: &str,
        headers: &[(&str, &str)],
    ) -> LoginResult {
        let response = self
            .request(
                "POST",
                "/auth/login",
                None,
                headers,
                Some((
                    "application/json",
                    serde_json::to_vec(&json!({"email": email, "password": password})).unwrap(),
                )),
            )
            .await;
        let status = response.status();
        let cookie = session_cookie(&response);
        let body = response.text().await.unwrap();
        assert_eq!(status, 200, "login {email}: {body}");
        let cookie = cookie.unwrap_or_else(|| panic!("login set no {COOKIE_NAME} cookie: {body}"));
        assert!(!cookie.value.is_empty(), "empty session cookie");
        LoginResult {
            token: cookie.value.clone(),
            cookie,
            body: serde_json::from_str(&body).unwrap(),
        }
    }

    /// Registers a fresh user and logs in: (user id, email, password, token).
    pub async fn signed_in_user(&self) -> SignedIn {
        let email = unique_email();
        let password = strong_password();
        let user = self.register(&email, &password).await;
        let token = self.login(&email, &password).await;
        SignedIn {
            id: user["id"].as_str().expect("user.id").to_string(),
            email,
            password,
            token,
        }
    }

    // --- stores -----------------------------------------------------------------------------

    /// A connection to this gateway's own database (Postgres or its SQLite file).
    pub async fn db(&self) -> Db {
        Db::connect(&self.database_url).await
    }

    /// [`Db::query`] on a fresh connection to this gateway's database.
    pub async fn query(&self, sql: &str, binds: &[Bind]) -> Vec<Row> {
        self.db().await.query(sql, binds).await
    }

    /// [`Db::query_one`] on a fresh connection.
    pub async fn query_one(&self, sql: &str, binds: &[Bind]) -> Row {
        self.db().await.query_one(sql, binds).await
    }

    /// [`Db::query_opt`] on a fresh connection.
    pub async fn query_opt(&self, sql: &str, binds: &[Bind]) -> Option<Row> {
        self.db().await.query_opt(sql, binds).await
    }

    /// [`Db::count`] on a fresh connection: the integer a `SELECT count(*) …` returns.
    pub async fn count(&self, sql: &str, binds: &[Bind]) -> i64 {
        self.db().await.count(sql, binds).await
    }

    /// [`Db::texts`] on a fresh connection: the first column of every row, as text.
    pub async fn texts(&self, sql: &str, binds: &[Bind]) -> Vec<String> {
        self.db().await.texts(sql, binds).await
    }

    /// The SQLite file on the embedded pair.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.database_url
            .strip_prefix("sqlite://")
            .map(PathBuf::from)
    }

    /// Every row of every table in this gateway's database, as `(table, JSON text)`.
    pub async fn database_dump(&self) -> Vec<(String, String)> {
        self.db().await.dump().await
    }

    /// Everything this gateway keeps outside its process, as `(where, text)`: every Redis key
    /// under its prefix with its value (production pair), every database row, and on the
    /// embedded pair the raw bytes of the SQLite file and its WAL (free pages included), read
    /// as text. What a thief who copied the stores would have.
    pub async fn store_dump(&self) -> Vec<(String, String)> {
        let mut dump: Vec<(String, String)> = Vec::new();
        if self.backend == Backend::Production {
            dump.extend(
                self.redis_dump()
                    .await
                    .into_iter()
                    .map(|(key, value)| (format!("redis {key}"), format!("{key} {value}"))),
            );
        }
        dump.extend(
            self.database_dump()
                .await
                .into_iter()
                .map(|(table, row)| (format!("database {table}"), row)),
        );
        if let Some(path) = self.sqlite_path() {
            for suffix in ["", "-wal"] {
                let mut file = path.clone().into_os_string();
                file.push(suffix);
                if let Ok(bytes) = std::fs::read(&file) {
                    dump.push((
                        format!("file {}", PathBuf::from(&file).display()),
                        String::from_utf8_lossy(&bytes).to_string(),
                    ));
                }
            }
        }
        dump
    }

    /// Every key under this gateway's prefix with a textual dump of its value, whatever the
    /// type. Production pair only: the embedded pair keeps live sessions in the process.
    pub async fn redis_dump(&self) -> Vec<(String, String)> {
        assert_eq!(
            self.backend,
            Backend::Production,
            "redis_dump: the embedded pair has no Redis; guard the check with only_on or \
             require_backend(Backend::Production, ...)"
        );
        let url = base_redis_url();
        let keys = redis_keys(&url, &self.redis_prefix).await;
        let mut conn = connect_redis(&url).await;
        let mut out = Vec::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            let command = match kind.as_str() {
                "string" => redis::cmd("GET").arg(&key).clone(),
                "hash" => redis::cmd("HGETALL").arg(&key).clone(),
                "set" => redis::cmd("SMEMBERS").arg(&key).clone(),
                "zset" => redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .clone(),
                "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).clone(),
                "stream" => redis::cmd("XRANGE").arg(&key).arg("-").arg("+").clone(),
                _ => continue,
            };
            let value: redis::Value = command
                .query_async(&mut conn)
                .await
                .unwrap_or(redis::Value::Nil);
            out.push((key, redis_value_text(&value)));
        }
        out
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            let _ = writeln!(
                std::io::stderr(),
                "---- authgate log (last {} lines, {}) ----\n{}\n---- end of log ----",
                tail.len(),
                self.log_path.display(),
                tail.join("\n")
            );
        }
        if let Some(database) = &self.owned_database {
            drop_test_database(database);
            delete_redis_prefix(&base_redis_url(), &self.redis_prefix);
        }
    }
}

fn redis_value_text(value: &redis::Value) -> String {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).to_string(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(i) => i.to_string(),
        redis::Value::Array(items) | redis::Value::Set(items) => items
            .iter()
            .map(redis_value_text)
            .collect::<Vec<_>>()
            .join(" "),
        redis::Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| format!("{} {}", redis_value_text(k), redis_value_text(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => format!("{other:?}"),
    }
}

pub struct LoginResult {
    pub token: String,
    pub cookie: SetCookie,
    pub body: Value,
}

pub struct SignedIn {
    pub id: String,
    pub email: String,
    pub password: String,
    pub token: String,
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// One parsed `Set-Cookie` header.
#[derive(Debug, Clone)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    /// Attribute names lower-cased; flag attributes (HttpOnly) map to "".
    pub attributes: BTreeMap<String, String>,
    pub raw: String,
}

impl SetCookie {
    pub fn parse(raw: &str) -> Option<Self> {
        let mut parts = raw.split(';');
        let (name, value) = parts.next()?.split_once('=')?;
        let attributes = parts
            .map(|attribute| match attribute.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_string()),
                None => (attribute.trim().to_ascii_lowercase(), String::new()),
            })
            .collect();
        Some(SetCookie {
            name: name.trim().to_string(),
            value: value.trim().to_string(),
            attributes,
            raw: raw.to_string(),
        })
    }

    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn max_age(&self) -> Option<i64> {
        self.attribute("max-age").and_then(|v| v.parse().ok())
    }

    /// Whether this cookie tells the browser to delete it.
    pub fn is_clearing(&self) -> bool {
        self.max_age().is_some_and(|age| age <= 0)
            || self
                .attribute("expires")
                .is_some_and(|e| e.contains("1970"))
    }
}

/// Every `Set-Cookie` of a response.
pub fn set_cookies(response: &reqwest::Response) -> Vec<SetCookie> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(SetCookie::parse)
        .collect()
}

/// The session cookie a response sets, if any.
pub fn session_cookie(response: &reqwest::Response) -> Option<SetCookie> {
    set_cookies(response)
        .into_iter()
        .find(|c| c.name == COOKIE_NAME)
}

pub fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Reads a response body as JSON, panicking with the text when it is not.
pub async fn json_body(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text:?}"))
}

/// Reads the echo upstream's JSON from a proxied response (asserting 200).
pub async fn echoed(response: reqwest::Response) -> EchoedRequest {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "expected the echo upstream's 200, got: {text}");
    let value: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("echo body is not JSON ({e}): {text:?}"));
    EchoedRequest::from_json(&value)
}

/// Asserts `status` and the error shape `{"error":{"code":<one of codes>,"message":<non-empty>}}`
/// with a JSON Content-Type; returns the `error` object.
pub async fn assert_json_error_any(
    response: reqwest::Response,
    status: u16,
    codes: &[&str],
) -> Value {
    let actual = response.status().as_u16();
    let content_type = header(&response, "content-type")
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.unwrap();
    assert_eq!(actual, status, "unexpected status; body: {text}");
    assert!(
        content_type.starts_with("application/json"),
        "error content-type is {content_type:?}, want application/json; body: {text}"
    );
    let value: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text:?}"));
    let error = &value["error"];
    let code = error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code string in {text}"));
    assert!(
        codes.contains(&code),
        "error.code {code:?}, want one of {codes:?}; body: {text}"
    );
    assert!(
        code.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "error.code {code:?} is not snake_case"
    );
    let message = error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.message string in {text}"));
    assert!(!message.trim().is_empty(), "empty error.message in {text}");
    error.clone()
}

/// Asserts `status` and the error shape, whatever the (snake_case) code; returns the `error`.
pub async fn assert_json_error_status(response: reqwest::Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(actual, status, "unexpected status; body: {text}");
    let value: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text:?}"));
    let code = value["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code string in {text}"));
    assert!(
        !code.is_empty()
            && code
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "error.code {code:?} is not snake_case"
    );
    assert!(
        value["error"]["message"].is_string(),
        "no error.message string in {text}"
    );
    value["error"].clone()
}

/// Asserts a refusal with one of `statuses`. A JSON body must have the error shape; a form
/// post may instead get the built-in HTML error page (a browser flow). Returns the status.
pub async fn assert_refused(response: reqwest::Response, statuses: &[u16]) -> u16 {
    let status = response.status().as_u16();
    let content_type = header(&response, "content-type")
        .unwrap_or_default()
        .to_string();
    assert!(
        statuses.contains(&status),
        "status {status}, want one of {statuses:?}"
    );
    if content_type.starts_with("text/html") {
        let _ = response.text().await;
    } else {
        assert_json_error_status(response, status).await;
    }
    status
}

/// [`assert_json_error_any`] with a single expected code.
pub async fn assert_json_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_json_error_any(response, status, &[code]).await
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP (for what reqwest normalises away: header-name casing, odd bytes)
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends `request` bytes verbatim (it should say `Connection: close`) and reads the response.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    socket.write_all(request).await.unwrap();
    read_raw_response(&mut socket)
        .await
        .unwrap_or_else(|| panic!("connection closed before a response to {request:?}"))
}

/// Reads one response (head plus a Content-Length body, or everything until EOF) from a
/// connection the caller may keep using. `None` if the peer closed before a response head.
pub async fn read_raw_response(socket: &mut TcpStream) -> Option<RawResponse> {
    let mut buf = Vec::new();
    let head_end = tokio::time::timeout(
        Duration::from_secs(10),
        fill_until(socket, &mut buf, b"\r\n\r\n"),
    )
    .await
    .expect("raw response timed out")
    .ok()??;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut rest: Vec<u8> = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let content_length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut chunk = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if content_length.is_some_and(|len| rest.len() >= len) {
                break;
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    if let Some(len) = content_length {
        rest.truncate(len);
    }
    Some(RawResponse {
        status,
        headers,
        body: rest,
    })
}

// ---------------------------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------------------------

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses every sample line; panics on a line that is not valid exposition format.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| parse_sample(line).unwrap_or_else(|| panic!("bad metrics line: {line:?}")))
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = line[..name_end].to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        let consumed = loop {
            // Skip separators.
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            let &(start, c) = chars.peek()?;
            if c == '}' {
                break start + 1;
            }
            let mut key = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c == '=' {
                    break;
                }
                key.push(c);
                chars.next();
            }
            chars.next(); // '='
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    other => value.push(other),
                }
            }
            labels.insert(key.trim().to_string(), value);
        };
        rest = &after_brace[consumed..];
    }
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The sum of every series of `name` whose labels include all of `labels` (other labels, such
/// as a `method`, may split one logical counter into several series). `None` if none exists.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = parse_metrics(text)
        .into_iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    if matching.is_empty() {
        None
    } else {
        Some(matching.iter().sum())
    }
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

/// Every log line that parses as a JSON object.
pub fn json_log_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
        .filter(Value::is_object)
        .collect()
}

/// Every (key, value) pair in a JSON document, at any depth (`fields.status` → `status`).
pub fn json_leaves(value: &Value) -> Vec<(String, Value)> {
    fn walk(key: &str, value: &Value, out: &mut Vec<(String, Value)>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    walk(k, v, out);
                }
            }
            Value::Array(items) => {
                for item in items {
                    walk(key, item, out);
                }
            }
            leaf => out.push((key.to_string(), leaf.clone())),
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out
}

// --- login helpers shared by the brute-force, lockout and enumeration suites ---------------

/// A JSON login attempt, whatever its outcome.
pub async fn login_attempt(gateway: &Gateway, email: &str, password: &str) -> reqwest::Response {
    gateway
        .post_json(
            "/auth/login",
            &json!({"email": email, "password": password}),
            None,
        )
        .await
}

/// Asserts a 429 with `code`, a Retry-After of 1..=`max_secs` seconds and no session cookie.
pub async fn assert_refused_429(response: reqwest::Response, code: &str, max_secs: u64) {
    assert!(
        session_cookie(&response).is_none(),
        "a refused login set a session cookie"
    );
    let retry_after = header(&response, "retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After"))
        .trim()
        .parse::<u64>()
        .expect("Retry-After in seconds");
    assert!(
        (1..=max_secs).contains(&retry_after),
        "Retry-After {retry_after}, want 1..={max_secs}"
    );
    assert_json_error(response, 429, code).await;
}

/// `value` of `<input ... name="{name}" value="...">`, HTML entities decoded.
pub fn hidden_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = start + html[start..].find('"')?;
    Some(
        html[start..end]
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// The sign-in page opened at `path` (`/auth/login?rd=...`): its CSRF token (the cookie, which
/// must equal the page's `csrf_token` field) and its hidden `rd` field.
pub async fn sign_in_page(gateway: &Gateway, path: &str) -> (String, String) {
    let page = gateway.get(path, None).await;
    assert_eq!(page.status(), 200, "sign-in page {path}");
    let csrf = set_cookies(&page)
        .into_iter()
        .find(|c| c.name == "authgate_csrf")
        .expect("the sign-in page sets the CSRF cookie")
        .value;
    let html = page.text().await.unwrap();
    let hidden = hidden_field(&html, "rd").unwrap_or_else(|| panic!("no rd field in {html}"));
    let token = hidden_field(&html, "csrf_token").expect("no csrf_token field");
    assert_eq!(token, csrf, "the page's token is not its cookie's");
    (csrf, hidden)
}

/// The sign-in page's CSRF token (cookie value = hidden field value).
pub async fn csrf_token(gateway: &Gateway) -> String {
    let page = gateway.get("/auth/login", None).await;
    set_cookies(&page)
        .into_iter()
        .find(|c| c.name == "authgate_csrf")
        .expect("the sign-in page sets the CSRF cookie")
        .value
}

/// A sign-in form post as a browser on the gateway's own page sends it.
pub async fn sign_in_form(
    gateway: &Gateway,
    csrf: &str,
    email: &str,
    password: &str,
) -> reqwest::Response {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf_token", csrf)
        .append_pair("email", email)
        .append_pair("password", password)
        .finish();
    let cookie = format!("authgate_csrf={csrf}");
    let origin = gateway.public_origin();
    gateway
        .request(
            "POST",
            "/auth/login",
            None,
            &[("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
            Some(("application/x-www-form-urlencoded", body.into_bytes())),
        )
        .await
}
