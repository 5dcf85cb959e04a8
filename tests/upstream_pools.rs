//! Upstream pools (contract §2 step 8): how a route spreads requests over its upstreams, takes a
//! failing one out and brings it back, retries a failed connect elsewhere (idempotent requests
//! only), and talks TLS to an upstream.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A port nobody listens on.
fn dead_upstream() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn pool(echoes: &[&EchoServer]) -> Upstream {
    Upstream::Pool(echoes.iter().map(|echo| echo.addr.to_string()).collect())
}

async fn upstream_gauge(gateway: &Gateway, route: &str, upstream: &str) -> Option<f64> {
    metric_value(
        &gateway.metrics().await,
        "authgate_upstream_healthy",
        &[("route", route), ("upstream", upstream)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_over_every_upstream() {
    let (a, b) = (EchoServer::start().await, EchoServer::start().await);
    let gateway = GatewayOptions::new()
        .routes(vec![RouteSpec::public("/", pool(&[&a, &b]))])
        .start()
        .await;
    for i in 0..10 {
        let response = gateway.get(&format!("/item/{i}"), None).await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(a.request_count(), 5, "round robin alternates");
    assert_eq!(b.request_count(), 5, "round robin alternates");
    // Both upstreams are exported as healthy.
    for echo in [&a, &b] {
        let value = upstream_gauge(&gateway, "/", &echo.addr.to_string()).await;
        assert_eq!(value, Some(1.0), "{}", gateway.metrics().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_new_requests_to_the_idle_upstream() {
    let slow = EchoServer::start_delayed(Duration::from_secs(5)).await;
    let fast = EchoServer::start().await;
    let gateway = Arc::new(
        GatewayOptions::new()
            .routes(vec![RouteSpec::public("/", pool(&[&slow, &fast]))
                .with("balance = \"least_connections\"")])
            .start()
            .await,
    );
    // Park one request on the slow upstream (a request that lands on the fast one is simply
    // answered; then the next one goes to the slow one).
    let mut parked = None;
    while parked.is_none() {
        let before = fast.request_count();
        let gateway_in_task = gateway.clone();
        let request =
            tokio::spawn(async move { gateway_in_task.get("/held", None).await.status() });
        eventually(
            Duration::from_secs(10),
            "the request reaches an upstream",
            || async { (slow.request_count() == 1 || fast.request_count() > before).then_some(()) },
        )
        .await;
        if slow.request_count() == 1 {
            parked = Some(request);
        } else {
            assert_eq!(request.await.unwrap(), 200);
        }
    }
    // While it is held there, every new request goes to the idle upstream, whether its answer
    // has a body or not (a HEAD's answer ends with its header).
    for method in ["GET", "HEAD", "GET", "HEAD", "HEAD", "GET"] {
        let response = gateway.request(method, "/next", None, &[], None).await;
        assert_eq!(response.status(), 200, "{method}");
    }
    assert_eq!(
        slow.request_count(),
        1,
        "the busy upstream got more requests"
    );
    assert_eq!(parked.unwrap().await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_each_user_on_one_upstream() {
    let echoes = [
        EchoServer::start().await,
        EchoServer::start().await,
        EchoServer::start().await,
    ];
    let gateway = GatewayOptions::new()
        .routes(vec![RouteSpec::required(
            "/",
            pool(&echoes.iter().collect::<Vec<_>>()),
        )
        .with("balance = \"consistent_hash\"")])
        .start()
        .await;
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(gateway.signed_in_user().await);
    }
    for _ in 0..5 {
        for user in &users {
            let response = gateway.get("/mine", Some(&user.token)).await;
            assert_eq!(response.status(), 200);
        }
    }
    for user in &users {
        let serving: Vec<usize> = echoes
            .iter()
            .map(|echo| {
                echo.requests()
                    .iter()
                    .filter(|r| r.header("x-user-id") == Some(user.id.as_str()))
                    .count()
            })
            .collect();
        assert_eq!(
            serving.iter().filter(|count| **count > 0).count(),
            1,
            "user {} was served by several upstreams: {serving:?}",
            user.id
        );
        assert_eq!(serving.iter().sum::<usize>(), 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_a_dead_upstream_out_and_bring_it_back() {
    let steady = EchoServer::start().await;
    let flaky = EchoServer::start().await;
    let flaky_addr = flaky.addr;
    let gateway = GatewayOptions::new()
        .routes(vec![RouteSpec::public("/", pool(&[&steady, &flaky]))
            .with("health_check_interval = \"200ms\"")
            .with("healthy_threshold = 1")
            .with("unhealthy_threshold = 1")
            .with("max_connect_failures = 0")])
        .start()
        .await;
    let flaky_label = flaky_addr.to_string();

    drop(flaky);
    eventually(
        Duration::from_secs(15),
        "the dead upstream is marked down",
        || async { (upstream_gauge(&gateway, "/", &flaky_label).await == Some(0.0)).then_some(()) },
    )
    .await;
    let before = steady.request_count();
    for _ in 0..6 {
        assert_eq!(gateway.get("/while-down", None).await.status(), 200);
    }
    assert_eq!(
        steady.request_count(),
        before + 6,
        "all to the live upstream"
    );

    let back = EchoServer::start_on(flaky_addr).await;
    eventually(
        Duration::from_secs(15),
        "the upstream is back in rotation",
        || async { (upstream_gauge(&gateway, "/", &flaky_label).await == Some(1.0)).then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "requests reach it again",
        || async {
            assert_eq!(gateway.get("/after", None).await.status(), 200);
            (back.request_count() > 0).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_checks_use_the_path_and_want_2xx_or_3xx() {
    let echo = EchoServer::start().await;
    let gateway = GatewayOptions::new()
        .routes(vec![RouteSpec::public("/", pool(&[&echo]))
            .with("health_check = \"http\"")
            .with("health_check_path = \"/healthz?deep=1\"")
            .with("health_check_interval = \"200ms\"")])
        .start()
        .await;
    eventually(
        Duration::from_secs(15),
        "the upstream is probed",
        || async {
            echo.requests()
                .iter()
                .any(|r| r.method == "GET" && r.path == "/healthz?deep=1")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        upstream_gauge(&gateway, "/", &echo.addr.to_string()).await,
        Some(1.0)
    );
    assert_eq!(gateway.get("/x", None).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_retried_on_another_upstream_for_idempotent_requests() {
    let live = EchoServer::start().await;
    let pool = Upstream::Pool(vec![dead_upstream(), live.addr.to_string()]);
    let gateway = GatewayOptions::new()
        .routes(vec![
            // Passive detection off, so every other request really meets the dead upstream.
            RouteSpec::public("/", pool.clone()).with("max_connect_failures = 0"),
        ])
        .start()
        .await;
    for method in [
        "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "GET", "GET", "GET",
    ] {
        let response = gateway.request(method, "/again", None, &[], None).await;
        assert_eq!(response.status(), 200, "{method} was not retried elsewhere");
    }
    assert_eq!(live.request_count(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_to_a_dead_upstream_is_not_retried() {
    let live = EchoServer::start().await;
    let pool = Upstream::Pool(vec![dead_upstream(), live.addr.to_string()]);
    let gateway = GatewayOptions::new()
        .routes(vec![
            RouteSpec::public("/", pool).with("max_connect_failures = 0")
        ])
        .start()
        .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = gateway
            .request(
                "POST",
                "/orders",
                None,
                &[("Accept", "application/json")],
                Some(("application/json", b"{\"n\":1}".to_vec())),
            )
            .await;
        statuses.push(response.status().as_u16());
    }
    let delivered = statuses.iter().filter(|status| **status == 200).count();
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(delivered, 2, "{statuses:?}");
    assert_eq!(
        live.request_count(),
        delivered,
        "each POST reached at most one upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_detection_takes_an_upstream_out_after_failed_connects() {
    let live = EchoServer::start().await;
    let dead = dead_upstream();
    let gateway = GatewayOptions::new()
        .routes(vec![RouteSpec::public(
            "/",
            Upstream::Pool(vec![dead.clone(), live.addr.to_string()]),
        )
        .with("health_check_interval = \"0s\"")
        .with("max_connect_failures = 2")
        .with("failure_cooldown = \"1h\"")])
        .start()
        .await;
    for _ in 0..8 {
        assert_eq!(gateway.get("/x", None).await.status(), 200);
    }
    assert_eq!(upstream_gauge(&gateway, "/", &dead).await, Some(0.0));
    let fails = gateway
        .logs()
        .matches("upstream taken out of rotation")
        .count();
    assert_eq!(fails, 1, "{}", gateway.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_route_read_timeouts_apply_to_their_route_only() {
    let slow = EchoServer::start_delayed(Duration::from_millis(1500)).await;
    let gateway = GatewayOptions::new()
        .routes(vec![
            RouteSpec::public("/impatient/", Upstream::Addr(slow.addr.to_string()))
                .with("read_timeout = \"300ms\"")
                .with("write_timeout = \"1s\"")
                .with("connect_timeout = \"1s\"")
                .with("idle_timeout = \"30s\""),
            RouteSpec::public("/patient/", Upstream::Addr(slow.addr.to_string()))
                .with("read_timeout = \"10s\""),
        ])
        .start()
        .await;
    let response = gateway
        .get_with("/impatient/x", None, &[("Accept", "application/json")])
        .await;
    assert_json_error(response, 504, "upstream_timeout").await;
    assert_eq!(gateway.get("/patient/x", None).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let counting = counting_upstream().await;
    let gateway = GatewayOptions::new()
        .routes(vec![RouteSpec::public(
            "/",
            Upstream::Addr(counting.addr.to_string()),
        )
        .with("health_check_interval = \"0s\"")])
        .start()
        .await;
    for _ in 0..5 {
        assert_eq!(gateway.get("/k", None).await.status(), 200);
    }
    assert_eq!(counting.count(), 1, "one pooled upstream connection");
}

// ---------------------------------------------------------------------------------------------
// Route options
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_forwards_the_path_without_the_matched_prefix() {
    let gateway = GatewayOptions::new()
        .routes(vec![
            RouteSpec::public("/app/", Upstream::Echo).with("strip_prefix = true"),
            RouteSpec::public("/", Upstream::Echo),
        ])
        .start()
        .await;
    for (sent, forwarded) in [
        ("/app/x?y=1", "/x?y=1"),
        ("/app/", "/"),
        ("/app", "/"),
        ("/app/a/../b", "/b"),
        ("/other/x", "/other/x"),
    ] {
        let response = gateway.get(sent, None).await;
        assert_eq!(response.status(), 200, "{sent}");
        assert_eq!(echoed(response).await.path, forwarded, "{sent}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_request_headers_are_set_and_replace_what_the_client_sent() {
    let gateway = GatewayOptions::new()
        .routes(vec![RouteSpec::required("/", Upstream::Echo).with(
            "add_request_headers = { \"X-Tenant\" = \"acme\", \"X-Env\" = \"prod\" }",
        )])
        .start()
        .await;
    let user = gateway.signed_in_user().await;
    let response = gateway
        .get_with("/x", Some(&user.token), &[("X-Tenant", "evil")])
        .await;
    let seen = echoed(response).await;
    assert_eq!(seen.header("x-tenant"), Some("acme"));
    assert_eq!(seen.header_count("x-tenant"), 1);
    assert_eq!(seen.header("x-env"), Some("prod"));
    assert_eq!(seen.header("x-user-id"), Some(user.id.as_str()));
}

#[test]
fn add_request_headers_cannot_set_identity_or_framing_headers() {
    for (line, named) in [
        (
            "add_request_headers = { \"X-User-Id\" = \"1\" }",
            "X-User-Id",
        ),
        (
            "add_request_headers = { \"X-Forwarded-User\" = \"admin\" }",
            "X-Forwarded-User",
        ),
        (
            "add_request_headers = { \"Remote-User\" = \"admin\" }",
            "Remote-User",
        ),
        (
            "add_request_headers = { \"X-Forwarded-For\" = \"1.2.3.4\" }",
            "X-Forwarded-For",
        ),
        ("add_request_headers = { \"Host\" = \"x\" }", "Host"),
        (
            "add_request_headers = { \"X-Request-Id\" = \"fixed\" }",
            "X-Request-Id",
        ),
        (
            "add_request_headers = { \"Expect\" = \"100-continue\" }",
            "Expect",
        ),
        ("add_request_headers = { \"bad name\" = \"x\" }", "bad name"),
    ] {
        let output = run_check(&format!(
            "[[route]]\nprefix = \"/\"\nupstreams = [\"127.0.0.1:3000\"]\n{line}\n"
        ));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{line} was accepted");
        assert!(
            stderr.contains("route[0].add_request_headers") && stderr.contains(named),
            "{stderr}"
        );
    }
}

#[test]
fn strip_prefix_needs_a_whole_segment_prefix_and_tls_pools_one_name() {
    // "/api" would also match "/apiadmin" and forward it as "/admin".
    let output = run_check(
        "[[route]]\nprefix = \"/api\"\nupstreams = [\"127.0.0.1:3000\"]\nstrip_prefix = true\n",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "strip_prefix on /api was accepted"
    );
    assert!(stderr.contains("route[0].strip_prefix"), "{stderr}");

    // Each address is verified against one name: two names need an explicit sni.
    let output = run_check(
        "[[route]]\nprefix = \"/\"\nupstreams = [\"a.internal:443\", \"b.internal:443\"]\ntls = true\n",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a two-name TLS pool was accepted");
    assert!(
        stderr.contains("route[0].sni") && stderr.contains("a.internal, b.internal"),
        "{stderr}"
    );
    let output = run_check(
        "[[route]]\nprefix = \"/\"\nupstreams = [\"a.internal:443\", \"b.internal:443\"]\ntls = true\nsni = \"app.internal\"\n",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn pool_keys_are_validated_by_name() {
    for (line, key) in [
        ("balance = \"random\"", "balance"),
        ("health_check = \"icmp\"", "health_check"),
        (
            "health_check = \"http\"\nhealth_check_path = \"healthz\"",
            "route[0].health_check_path",
        ),
        ("unhealthy_threshold = 0", "route[0].unhealthy_threshold"),
        ("write_timeout = \"0s\"", "route[0].write_timeout"),
        ("sni = \"app.internal\"", "route[0].sni"),
        (
            "tls = true\ntls_ca_file = \"/nonexistent/ca.pem\"",
            "route[0].tls_ca_file",
        ),
        (
            "rate_limit = { requests_per_second = 0, burst = 1 }",
            "route[0].rate_limit",
        ),
    ] {
        let output = run_check(&format!(
            "[[route]]\nprefix = \"/\"\nupstreams = [\"127.0.0.1:3000\"]\n{line}\n"
        ));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{line} was accepted");
        assert!(stderr.contains(key), "{line}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_rate_limit_refuses_like_the_global_one_on_that_route_only() {
    let gateway = GatewayOptions::new()
        .routes(vec![
            RouteSpec::public("/limited/", Upstream::Echo)
                .with("rate_limit = { requests_per_second = 1, burst = 2 }"),
            RouteSpec::public("/", Upstream::Echo),
        ])
        .start()
        .await;
    for _ in 0..2 {
        assert_eq!(gateway.get("/limited/x", None).await.status(), 200);
    }
    // The burst is spent; one token comes back per second, so a refusal follows at once (or,
    // on a very slow machine, within a few more requests).
    let mut passed = 2;
    let mut refused = None;
    for _ in 0..10 {
        let response = gateway.get("/limited/x", None).await;
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
        passed += 1;
    }
    let refused = refused.expect("the route's limit refuses past its burst");
    assert_eq!(header(&refused, "ratelimit-limit"), Some("2"));
    assert_eq!(header(&refused, "ratelimit-remaining"), Some("0"));
    assert!(header(&refused, "ratelimit-reset").is_some());
    assert_refused_429(refused, "rate_limited", 2).await;
    assert_eq!(gateway.get("/elsewhere", None).await.status(), 200);
    let forwarded = gateway
        .echo
        .requests()
        .iter()
        .filter(|r| r.path == "/limited/x")
        .count();
    assert_eq!(forwarded, passed, "a refused request was forwarded");
}

// ---------------------------------------------------------------------------------------------
// TLS to upstreams
// ---------------------------------------------------------------------------------------------

/// A private CA and an HTTPS upstream whose certificate (for `localhost`) it signed. The
/// upstream answers every request with `200` and the request line as the body.
struct TlsUpstream {
    addr: SocketAddr,
    ca_file: std::path::PathBuf,
    _dir: TempDir,
    task: tokio::task::AbortHandle,
}

impl TlsUpstream {
    async fn start() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let dir = TempDir::new();
        let ca_file = dir.path.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let config = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der())
                    .unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = listen_on_free_port();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match tls.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let body = text.lines().next().unwrap_or_default().to_string();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        })
        .abort_handle();
        TlsUpstream {
            addr,
            ca_file,
            _dir: dir,
            task,
        }
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstreams_are_verified_by_default_and_trusted_through_tls_ca_file() {
    let upstream = TlsUpstream::start().await;
    let addr = upstream.addr.to_string();
    let ca_file = upstream.ca_file.display().to_string();
    let gateway = GatewayOptions::new()
        .routes(vec![
            RouteSpec::public("/default/", Upstream::Addr(addr.clone()))
                .with("tls = true")
                .with("sni = \"localhost\""),
            RouteSpec::public("/private-ca/", Upstream::Addr(addr.clone()))
                .with("tls = true")
                .with("sni = \"localhost\"")
                .with(&format!("tls_ca_file = \"{ca_file}\"")),
            RouteSpec::public("/wrong-name/", Upstream::Addr(addr.clone()))
                .with("tls = true")
                .with("sni = \"other.example\"")
                .with(&format!("tls_ca_file = \"{ca_file}\"")),
            RouteSpec::public("/unverified/", Upstream::Addr(addr.clone()))
                .with("tls = true")
                .with("tls_verify = false"),
        ])
        .start()
        .await;

    let refused = gateway
        .get_with("/default/x", None, &[("Accept", "application/json")])
        .await;
    assert_eq!(refused.status(), 502, "an unknown CA must be refused");
    let wrong_name = gateway
        .get_with("/wrong-name/x", None, &[("Accept", "application/json")])
        .await;
    assert_eq!(
        wrong_name.status(),
        502,
        "the certificate is not for this SNI"
    );

    let trusted = gateway.get("/private-ca/x", None).await;
    assert_eq!(trusted.status(), 200);
    assert_eq!(trusted.text().await.unwrap(), "GET /private-ca/x HTTP/1.1");
    let unverified = gateway.get("/unverified/y", None).await;
    assert_eq!(unverified.status(), 200);
}

// ---------------------------------------------------------------------------------------------
// WebSocket upgrades
// ---------------------------------------------------------------------------------------------

/// A WebSocket echo upstream; `count()` is the upgrades it accepted.
async fn websocket_echo() -> CountingServer {
    use futures::{SinkExt as _, StreamExt as _};
    CountingServer::start(|socket, counted| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(socket).await else {
            return;
        };
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// A WebSocket upgrade of `/ws/chat` through the gateway, with the session cookie of `token`.
async fn upgrade(
    gateway: &Gateway,
    token: Option<&str>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let socket = tokio::net::TcpStream::connect(gateway.listen)
        .await
        .unwrap();
    let mut request = format!("ws://{}/ws/chat", gateway.listen)
        .into_client_request()
        .unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("cookie", cookie_header(token).parse().unwrap());
    }
    tokio_tungstenite::client_async(request, socket).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_for_signed_in_users_only() {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let upstream = websocket_echo().await;
    let gateway = GatewayOptions::new()
        .routes(vec![RouteSpec::required(
            "/",
            Upstream::Addr(upstream.addr.to_string()),
        )])
        .start()
        .await;

    // Without a session: 401, and the upstream never sees the upgrade.
    match upgrade(&gateway, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!(
            "an unauthenticated upgrade got through: {:?}",
            other.map(|_| ())
        ),
    }
    assert_eq!(upstream.count(), 0);

    // Signed in: the upgrade reaches the upstream and messages flow both ways.
    let user = gateway.signed_in_user().await;
    let (mut ws, response) = upgrade(&gateway, Some(&user.token))
        .await
        .expect("the upgrade succeeds");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hello through the gateway"))
        .await
        .expect("send through the tunnel");
    let answer = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an answer within 10 s")
        .expect("the tunnel stays open")
        .expect("a message");
    assert_eq!(
        answer.into_text().unwrap().as_str(),
        "hello through the gateway"
    );
    assert!(upstream.count() >= 1);
}

/// Every one of many fresh upgrades must carry a message. Published pingora-proxy 0.9.1 ends
/// the tunnel when the upstream's 101 is read before the upgrade request's own empty "body
/// done" task (cloudflare/pingora#946): about one upgrade in seven here. authgate builds with
/// the patched copy in `vendor/pingora-proxy` (see vendor/README.md); this test proves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_websocket_upgrade_carries_messages() {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    const UPGRADES: usize = 50;
    let upstream = websocket_echo().await;
    let gateway = GatewayOptions::new()
        .routes(vec![RouteSpec::required(
            "/",
            Upstream::Addr(upstream.addr.to_string()),
        )])
        .start()
        .await;
    let user = gateway.signed_in_user().await;
    let mut cut = Vec::new();
    for attempt in 0..UPGRADES {
        let (mut ws, response) = upgrade(&gateway, Some(&user.token))
            .await
            .expect("the upgrade succeeds");
        assert_eq!(response.status(), 101);
        let text = format!("hello through the gateway #{attempt}");
        let answer = match ws.send(Message::text(text.clone())).await {
            Ok(()) => tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("an answer or a closed tunnel"),
            Err(error) => Some(Err(error)),
        };
        match answer {
            Some(Ok(message)) => assert_eq!(message.into_text().unwrap().as_str(), text),
            other => cut.push(format!("#{attempt}: {other:?}")),
        }
        let _ = ws.close(None).await;
    }
    assert!(
        cut.is_empty(),
        "{} of {UPGRADES} upgraded tunnels were cut before a message got through: {cut:#?}",
        cut.len()
    );
    assert_eq!(upstream.count(), UPGRADES);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A test upstream on a free port: `serve` handles each accepted connection and counts in
/// the counter what the test wants counted. Stops when dropped.
struct CountingServer {
    addr: SocketAddr,
    count: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::AbortHandle,
}

impl CountingServer {
    async fn start<F, Fut>(serve: F) -> Self
    where
        F: Fn(tokio::net::TcpStream, Arc<std::sync::atomic::AtomicUsize>) -> Fut
            + Send
            + Sync
            + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = listen_on_free_port();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = count.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, counted.clone()));
            }
        })
        .abort_handle();
        CountingServer { addr, count, task }
    }

    fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/1.1 upstream with keep-alive answering `200 ok`; `count()` is the TCP connections
/// it accepted.
async fn counting_upstream() -> CountingServer {
    CountingServer::start(|mut socket, counted| async move {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            buf.drain(..end);
            let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            if socket.write_all(response).await.is_err() {
                return;
            }
        }
    })
    .await
}
