//! Attack: exhausting the gateway with connections instead of requests. A slowloris client
//! opens connections and trickles each request head a byte at a time (or sends part of a head
//! and stops), so every connection stays open for as long as the server waits; an idle client
//! parks kept-alive connections; one address opens hundreds of connections to use up the
//! server's capacity, so that nobody else is served.
//!
//! Guarantee (`src/connections.rs`, `[server]` keys `header_timeout`, `keepalive_timeout`,
//! `max_connections_per_ip`, `max_connections`): the whole request head must arrive within
//! `header_timeout` (total, not per read), else 408 and the connection is closed; a kept-alive
//! connection idle for `keepalive_timeout` is closed; one address holds at most
//! `max_connections_per_ip` connections (more get 429 and are closed) and everyone together
//! at most `max_connections` (503); other clients are served meanwhile; every refusal is
//! counted in `authgate_connections_refused_total{reason}`.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

const CLIENT_A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const CLIENT_B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A TCP connection to the gateway from `source` (any 127.0.0.0/8 address works on Linux).
async fn connect_from(source: IpAddr, gateway: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .unwrap_or_else(|e| panic!("cannot bind {source}: {e}"));
    socket
        .connect(gateway)
        .await
        .unwrap_or_else(|e| panic!("cannot connect from {source} to {gateway}: {e}"))
}

fn head(gateway: &Gateway, path: &str, connection: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: slow-client-test\r\nConnection: {connection}\r\n\r\n",
        gateway.listen
    )
}

/// A connection from `source` that sent the start of a request head and nothing more.
async fn half_open(gateway: &Gateway, source: IpAddr) -> TcpStream {
    let mut socket = connect_from(source, gateway.listen).await;
    socket
        .write_all(format!("GET /public/x HTTP/1.1\r\nHost: {}\r\n", gateway.listen).as_bytes())
        .await
        .expect("write a partial head");
    socket
}

/// `GET /public/x` from `source` on a fresh connection, answered within `limit`.
async fn get_public_from(gateway: &Gateway, source: IpAddr, limit: Duration) -> RawResponse {
    let started = Instant::now();
    let exchange = async {
        let mut socket = connect_from(source, gateway.listen).await;
        socket
            .write_all(head(gateway, "/public/x", "close").as_bytes())
            .await
            .ok()?;
        read_raw_response(&mut socket).await
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Some(response)) => response,
        Ok(None) => panic!("{source}: connection closed without an answer"),
        Err(_) => panic!(
            "{source}: no answer within {limit:?} (waited {:?})",
            started.elapsed()
        ),
    }
}

/// Everything the peer sends until it closes, and when it closed (measured from `since`);
/// `None` for the time if it was still open after `limit`.
async fn read_until_closed(
    socket: &mut TcpStream,
    since: Instant,
    limit: Duration,
) -> (Vec<u8>, Option<Duration>) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .ok();
    (received, closed)
}

/// Status and JSON body of a raw response (`None` if nothing was sent).
fn parse_answer(bytes: &[u8]) -> Option<(u16, Value)> {
    if bytes.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    Some((status, json))
}

/// Waits until `reason`'s refusal counter reaches `at_least`.
async fn refusals_reach(gateway: &Gateway, reason: &str, at_least: f64) -> f64 {
    eventually(
        Duration::from_secs(5),
        &format!("authgate_connections_refused_total{{reason=\"{reason}\"}} >= {at_least}"),
        || async {
            let text = gateway.metrics().await;
            metric_value(
                &text,
                "authgate_connections_refused_total",
                &[("reason", reason)],
            )
            .filter(|value| *value >= at_least)
        },
    )
    .await
}

/// Waits until the gateway has admitted at least `at_least` connections (accepting is
/// asynchronous: a connect() returns before the gateway has counted the connection).
async fn open_connections_reach(gateway: &Gateway, at_least: f64) {
    eventually(
        Duration::from_secs(5),
        &format!("authgate_open_connections >= {at_least}"),
        || async {
            let text = gateway.metrics().await;
            metric_value(&text, "authgate_open_connections", &[]).filter(|open| *open >= at_least)
        },
    )
    .await;
}

fn refusal_count(text: &str, reason: &str) -> Option<f64> {
    metric_value(
        text,
        "authgate_connections_refused_total",
        &[("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_metrics_are_exported_at_zero_from_the_start() {
    let gateway = Gateway::start().await;
    let text = gateway.metrics().await;
    for reason in ["per_ip", "global", "header_timeout", "header_too_large"] {
        assert_eq!(
            refusal_count(&text, reason),
            Some(0.0),
            "authgate_connections_refused_total{{reason=\"{reason}\"}} missing or not zero"
        );
    }
    assert!(
        metric_value(&text, "authgate_open_connections", &[]).is_some(),
        "authgate_open_connections missing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_trickling_its_head_is_cut_off_at_header_timeout_with_408() {
    let gateway = GatewayOptions::new()
        .server_setting("header_timeout = \"1s\"")
        .start()
        .await;
    let request = head(&gateway, "/public/slow", "keep-alive");
    // A byte every 200 ms: the head would take this long to arrive in full.
    let full_head_time = Duration::from_millis(200) * request.len() as u32;
    assert!(full_head_time > Duration::from_secs(10));

    let started = Instant::now();
    let socket = connect_from(CLIENT_A, gateway.listen).await;
    let (mut reader, mut writer) = socket.into_split();
    let trickle = tokio::spawn(async move {
        for byte in request.into_bytes() {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed_after = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("a slowloris connection was still open after 8 s (header_timeout = 1s)")
    });
    trickle.abort();
    eprintln!("slowloris connection closed after {closed_after:?}");
    assert!(
        closed_after >= Duration::from_millis(900),
        "cut off after {closed_after:?}, before header_timeout"
    );
    assert!(
        closed_after < Duration::from_secs(4),
        "cut off only after {closed_after:?} (header_timeout = 1s; the head needs {full_head_time:?})"
    );
    if let Some((status, body)) = parse_answer(&received) {
        assert_eq!(status, 408, "{body}");
        assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    }
    assert_eq!(gateway.echo.request_count(), 0);
    refusals_reach(&gateway, "header_timeout", 1.0).await;
    // Others are served as usual.
    let response = get_public_from(&gateway, CLIENT_A, Duration::from_secs(5)).await;
    assert_eq!(response.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_head_that_stops_gets_408_and_a_silent_connection_is_closed() {
    let gateway = GatewayOptions::new()
        .server_setting("header_timeout = \"1s\"")
        .start()
        .await;

    let started = Instant::now();
    let mut stalled = half_open(&gateway, CLIENT_A).await;
    let mut silent = connect_from(CLIENT_A, gateway.listen).await;

    let (received, closed) = read_until_closed(&mut stalled, started, Duration::from_secs(6)).await;
    let closed = closed.expect("a stalled partial head was still open after 6 s");
    assert!(closed < Duration::from_secs(4), "closed after {closed:?}");
    let response = parse_answer(&received).expect("a 408 answer");
    assert_eq!(response.0, 408);
    assert_eq!(response.1["error"]["code"], "request_timeout");
    let text = String::from_utf8_lossy(&received).to_ascii_lowercase();
    assert!(text.contains("connection: close"), "{text}");
    assert!(text.contains("content-type: application/json"), "{text}");

    // A connection that never sent a byte is closed without an answer.
    let (received, closed) = read_until_closed(&mut silent, started, Duration::from_secs(6)).await;
    let closed = closed.expect("a silent connection was still open after 6 s");
    assert!(closed < Duration::from_secs(4), "closed after {closed:?}");
    assert!(
        received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    refusals_reach(&gateway, "header_timeout", 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_keepalive_timeout() {
    let gateway = GatewayOptions::new()
        .server_setting("keepalive_timeout = \"1s\"")
        .start()
        .await;
    let mut socket = connect_from(CLIENT_A, gateway.listen).await;
    socket
        .write_all(head(&gateway, "/public/a", "keep-alive").as_bytes())
        .await
        .unwrap();
    let response = read_raw_response(&mut socket).await.expect("a response");
    assert_eq!(response.status, 200);
    let answered = Instant::now();
    let (received, closed) = read_until_closed(&mut socket, answered, Duration::from_secs(6)).await;
    let closed = closed.expect("an idle kept-alive connection was still open after 6 s");
    eprintln!("idle kept-alive connection closed {closed:?} after its last response");
    assert!(
        closed >= Duration::from_millis(900),
        "closed after {closed:?}"
    );
    assert!(closed < Duration::from_secs(4), "closed after {closed:?}");
    assert!(
        received.is_empty(),
        "an idle connection is closed without an answer: {:?}",
        String::from_utf8_lossy(&received)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_that_sends_its_next_request_in_time_is_served() {
    // Idle time between requests is bounded by keepalive_timeout, not by header_timeout, and
    // the connection's age does not matter.
    let gateway = GatewayOptions::new()
        .server_setting("keepalive_timeout = \"3s\"")
        .server_setting("header_timeout = \"1s\"")
        .start()
        .await;
    let mut socket = connect_from(CLIENT_A, gateway.listen).await;
    for (i, pause) in [0u64, 1500, 1500, 1500].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        socket
            .write_all(head(&gateway, &format!("/public/{i}"), "keep-alive").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("request {i} after {pause} ms idle: {e}"));
        let response = read_raw_response(&mut socket)
            .await
            .unwrap_or_else(|| panic!("request {i} after {pause} ms idle: connection closed"));
        assert_eq!(response.status, 200, "request {i}");
    }
    assert_eq!(
        gateway.echo.request_count(),
        4,
        "one connection, four requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holding_half_open_connections_is_capped_while_another_is_served() {
    let gateway = GatewayOptions::new()
        .server_setting("max_connections_per_ip = 5")
        .server_setting("header_timeout = \"2s\"")
        .start()
        .await;
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(half_open(&gateway, CLIENT_A).await);
    }
    open_connections_reach(&gateway, 5.0).await;
    // Client B is served while A holds its five.
    let response = get_public_from(&gateway, CLIENT_B, Duration::from_secs(2)).await;
    assert_eq!(response.status, 200);

    // A's further connections are refused: 429 with Retry-After, or closed.
    let mut refused_with_429 = 0;
    for i in 0..10 {
        let mut socket = connect_from(CLIENT_A, gateway.listen).await;
        let _ = socket
            .write_all(head(&gateway, "/public/more", "close").as_bytes())
            .await;
        let (received, closed) =
            read_until_closed(&mut socket, Instant::now(), Duration::from_secs(3)).await;
        assert!(closed.is_some(), "extra connection {i} stayed open");
        if let Some((status, body)) = parse_answer(&received) {
            assert_eq!(status, 429, "extra connection {i}: {body}");
            assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
            let text = String::from_utf8_lossy(&received).to_ascii_lowercase();
            assert!(text.contains("retry-after: 1\r\n"), "{text}");
            assert!(text.contains("connection: close\r\n"), "{text}");
            refused_with_429 += 1;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the checks outlived header_timeout ({:?}); the result proves nothing",
        started.elapsed()
    );
    assert!(refused_with_429 > 0, "no refusal was answered with 429");
    assert_eq!(
        gateway.echo.request_count(),
        1,
        "only B's request reached the upstream"
    );
    // B is still served.
    let response = get_public_from(&gateway, CLIENT_B, Duration::from_secs(2)).await;
    assert_eq!(response.status, 200);
    refusals_reach(&gateway, "per_ip", 10.0).await;

    // Once header_timeout has closed A's half-open connections, A is served again.
    drop(held);
    eventually(Duration::from_secs(10), "client A served again", || async {
        let response = get_public_from(&gateway, CLIENT_A, Duration::from_secs(2)).await;
        (response.status == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_half_open_connections_from_one_address_do_not_slow_another() {
    // Under the default per-address cap (256): all 200 are admitted and held open.
    let gateway = Gateway::start().await;
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(half_open(&gateway, CLIENT_A).await);
    }
    open_connections_reach(&gateway, 200.0).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let response = get_public_from(&gateway, CLIENT_B, Duration::from_secs(2)).await;
        assert_eq!(response.status, 200);
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("with 200 half-open connections held, B's slowest request took {slowest:?}");
    // They are all still open (header_timeout is 10 s by default); the gateway is fine.
    assert!(gateway.echo.request_count() == 20);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_over_the_per_address_cap_are_refused_and_counted() {
    let gateway = GatewayOptions::new()
        .server_setting("max_connections_per_ip = 5")
        .server_setting("header_timeout = \"5s\"")
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(half_open(&gateway, CLIENT_A).await);
    }
    open_connections_reach(&gateway, 5.0).await;
    for _ in 0..10 {
        let response = get_public_from(&gateway, CLIENT_B, Duration::from_secs(2)).await;
        assert_eq!(response.status, 200);
    }
    let refused = refusals_reach(&gateway, "per_ip", 195.0).await;
    assert_eq!(refused, 195.0, "exactly the connections over the cap");
    assert_eq!(gateway.echo.request_count(), 10);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_connection_cap_refuses_with_503() {
    let gateway = GatewayOptions::new()
        .server_setting("max_connections = 3")
        .server_setting("header_timeout = \"5s\"")
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(half_open(&gateway, CLIENT_A).await);
    }
    open_connections_reach(&gateway, 3.0).await;
    let response = get_public_from(&gateway, CLIENT_B, Duration::from_secs(3)).await;
    assert_eq!(response.status, 503);
    assert_eq!(response.json()["error"]["code"], "too_many_connections");
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(
        response.header("connection").map(str::to_ascii_lowercase),
        Some("close".to_string())
    );
    refusals_reach(&gateway, "global", 1.0).await;

    // Closing the held connections frees their slots at once.
    drop(held);
    eventually(Duration::from_secs(5), "B served after A left", || async {
        let response = get_public_from(&gateway, CLIENT_B, Duration::from_secs(3)).await;
        (response.status == 200).then_some(())
    })
    .await;
    assert_eq!(gateway.echo.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_is_capped_like_any_client() {
    // The shipped default trusts 127.0.0.1; the cap still applies to it (the TCP peer).
    let gateway = GatewayOptions::new()
        .trusted_proxies(&["127.0.0.1/32"])
        .server_setting("max_connections_per_ip = 2")
        .start()
        .await;
    let held = [
        half_open(&gateway, CLIENT_A).await,
        half_open(&gateway, CLIENT_A).await,
    ];
    open_connections_reach(&gateway, 2.0).await;
    let response = get_public_from(&gateway, CLIENT_A, Duration::from_secs(3)).await;
    assert_eq!(response.status, 429, "a trusted proxy escaped the cap");
    // Another address is still served.
    let response = get_public_from(&gateway, CLIENT_B, Duration::from_secs(3)).await;
    assert_eq!(response.status, 200);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_without_end_over_64_kib_gets_431() {
    let gateway = Gateway::start().await;
    let mut socket = connect_from(CLIENT_A, gateway.listen).await;
    let mut request = format!("GET /public/x HTTP/1.1\r\nHost: {}\r\n", gateway.listen);
    while request.len() < 70 * 1024 {
        request.push_str(&format!(
            "X-Filler-{}: {}\r\n",
            request.len(),
            "f".repeat(1000)
        ));
    }
    let _ = socket.write_all(request.as_bytes()).await;
    let (received, closed) =
        read_until_closed(&mut socket, Instant::now(), Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "an oversized head kept its connection open"
    );
    if let Some((status, body)) = parse_answer(&received) {
        assert_eq!(status, 431, "{body}");
        assert_eq!(body["error"]["code"], "headers_too_large");
    }
    refusals_reach(&gateway, "header_too_large", 1.0).await;
    assert_eq!(gateway.echo.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_not_held_up_by_idle_or_half_open_connections() {
    let mut options = GatewayOptions::new();
    options.shutdown_grace = "30s".into();
    let mut gateway = options.start().await;
    let _half = half_open(&gateway, CLIENT_A).await;
    let _silent = connect_from(CLIENT_A, gateway.listen).await;
    let mut idle = connect_from(CLIENT_B, gateway.listen).await;
    idle.write_all(head(&gateway, "/public/a", "keep-alive").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_raw_response(&mut idle).await.unwrap().status, 200);

    gateway.signal("TERM");
    let started = Instant::now();
    let exit = gateway
        .wait_for_exit(Duration::from_secs(8))
        .await
        .expect("authgate still running 8 s after SIGTERM (shutdown_grace = 30s)");
    eprintln!("exited {:?} after SIGTERM: {exit}", started.elapsed());
    assert!(exit.success(), "exit status {exit}");
}
