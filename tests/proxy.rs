//! The proxy pipeline (contract §2): who gets through to the upstream, what it sees, and what
//! everyone else gets instead.

mod common;

use std::time::Duration;

use common::*;

/// Every identity header a client might forge; the gateway must strip them all.
const SPOOFED_IDENTITY_HEADERS: &[(&str, &str)] = &[
    ("X-User-Id", "00000000-0000-0000-0000-000000000001"),
    ("X-Forwarded-User", "admin"),
    ("Remote-User", "admin"),
    ("X-Auth-Request-Email", "admin@example.com"),
    ("X-Auth-Request-User", "admin"),
    ("X-User-Email", "admin@example.com"),
    ("X-Session-Id", "00000000-0000-0000-0000-000000000002"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_route_without_a_cookie_is_401_unauthenticated_and_never_reaches_upstream() {
    let gateway = Gateway::start().await;
    let no_accept = gateway.get("/dashboard", None).await;
    assert_json_error(no_accept, 401, "unauthenticated").await;
    let api_client = gateway
        .get_with("/api/items?page=2", None, &[("Accept", "application/json")])
        .await;
    assert_json_error(api_client, 401, "unauthenticated").await;
    let post = gateway
        .request(
            "POST",
            "/api/items",
            None,
            &[("Accept", "text/html")],
            Some(("application/json", b"{}".to_vec())),
        )
        .await;
    assert_json_error(post, 401, "unauthenticated").await;
    assert_eq!(
        gateway.echo.request_count(),
        0,
        "{:?}",
        gateway.echo.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_navigation_without_a_cookie_is_redirected_to_login_with_the_original_path() {
    let gateway = Gateway::start().await;
    let original = "/reports/q3?team=ops&format=pdf";
    for method in ["GET", "HEAD"] {
        let response = gateway
            .request(
                method,
                original,
                None,
                &[(
                    "Accept",
                    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                )],
                None,
            )
            .await;
        assert_eq!(response.status(), 302, "{method}");
        let location = header(&response, "location")
            .expect("Location header")
            .to_string();
        let relative = location
            .strip_prefix(&gateway.public_origin())
            .unwrap_or(&location);
        let query = relative
            .strip_prefix("/auth/login?")
            .unwrap_or_else(|| panic!("{method}: Location {location:?} is not /auth/login?..."));
        let rd: Vec<String> = form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == "rd")
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(rd, vec![original.to_string()], "{method}: {location}");
        assert!(
            !query.contains('&') || query.contains("%26"),
            "the original query must be URL-encoded inside rd: {location}"
        );
    }
    assert_eq!(gateway.echo.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_cookie_is_401_and_cleared() {
    let gateway = Gateway::start().await;
    // Garbage, and a value shaped like a real token (68 hex) that no session has.
    for forged in [uuid::Uuid::new_v4().to_string(), random_hex(34)] {
        let response = gateway
            .get_with(
                "/dashboard",
                Some(&forged),
                &[("Accept", "application/json")],
            )
            .await;
        let cookie = session_cookie(&response)
            .unwrap_or_else(|| panic!("invalid cookie {forged:?} was not cleared"));
        assert!(cookie.is_clearing(), "{}", cookie.raw);
        assert_json_error(response, 401, "unauthenticated").await;
    }
    assert_eq!(gateway.echo.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_session_is_forwarded_with_x_user_id_and_a_refreshed_cookie() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let response = gateway
        .get("/app/orders?status=open&page=3", Some(&user.token))
        .await;
    let cookie = session_cookie(&response).expect("a proxied response re-issues the cookie");
    assert_eq!(cookie.value, user.token, "{}", cookie.raw);
    let max_age = cookie.max_age().expect("Max-Age");
    assert!(
        (3595..=3600).contains(&max_age),
        "Max-Age {max_age} should track the 1h idle timeout: {}",
        cookie.raw
    );
    assert!(cookie.attribute("httponly").is_some(), "{}", cookie.raw);
    assert_eq!(cookie.attribute("path"), Some("/"), "{}", cookie.raw);

    let echo = echoed(response).await;
    assert_eq!(echo.method, "GET");
    assert_eq!(echo.path, "/app/orders?status=open&page=3");
    assert_eq!(echo.header("x-user-id"), Some(user.id.as_str()));
    assert_eq!(echo.header_count("x-user-id"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_and_methods_are_forwarded_unchanged() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let payload = r#"{"item":"widget","quantity":3}"#;
    let response = gateway
        .request(
            "PUT",
            "/api/cart/7",
            Some(&user.token),
            &[("X-Custom-Header", "kept")],
            Some(("application/json", payload.as_bytes().to_vec())),
        )
        .await;
    let echo = echoed(response).await;
    assert_eq!(echo.method, "PUT");
    assert_eq!(echo.path, "/api/cart/7");
    assert_eq!(echo.body, payload);
    assert_eq!(echo.header("x-custom-header"), Some("kept"));
    assert_eq!(echo.header("x-user-id"), Some(user.id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_are_removed_on_public_routes() {
    let gateway = Gateway::start().await;
    let response = gateway
        .get_with("/public/page", None, SPOOFED_IDENTITY_HEADERS)
        .await;
    let echo = echoed(response).await;
    assert_eq!(echo.path, "/public/page");
    for (name, _) in SPOOFED_IDENTITY_HEADERS {
        assert_eq!(
            echo.header(name),
            None,
            "{name} reached the upstream: {:?}",
            echo.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_are_removed_on_public_routes_even_with_a_session() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let response = gateway
        .get_with("/public/page", Some(&user.token), SPOOFED_IDENTITY_HEADERS)
        .await;
    let echo = echoed(response).await;
    for (name, spoofed) in SPOOFED_IDENTITY_HEADERS {
        assert_ne!(
            echo.header(name),
            Some(*spoofed),
            "forged {name} reached the upstream: {:?}",
            echo.headers
        );
    }
    assert!(
        echo.header("x-forwarded-user").is_none()
            && echo.header("remote-user").is_none()
            && echo.header("x-auth-request-email").is_none(),
        "{:?}",
        echo.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_x_user_id_is_replaced_by_the_real_user_on_protected_routes() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let response = gateway
        .get_with("/profile", Some(&user.token), SPOOFED_IDENTITY_HEADERS)
        .await;
    let echo = echoed(response).await;
    assert_eq!(echo.header("x-user-id"), Some(user.id.as_str()));
    assert_eq!(echo.header_count("x-user-id"), 1, "{:?}", echo.header_list);
    for name in [
        "x-forwarded-user",
        "remote-user",
        "x-auth-request-email",
        "x-auth-request-user",
    ] {
        assert_eq!(echo.header(name), None, "{name}: {:?}", echo.headers);
    }
    // inject_user_email / inject_session_id are off by default: the forged values must not
    // survive either way.
    assert_ne!(echo.header("x-user-email"), Some("admin@example.com"));
    assert_ne!(
        echo.header("x-session-id"),
        Some("00000000-0000-0000-0000-000000000002")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_spoofed_x_user_id_headers_in_odd_casing_are_both_removed() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let request = format!(
        "GET /profile/raw HTTP/1.1\r\n\
         Host: {}\r\n\
         Cookie: {}\r\n\
         x-USER-id: 11111111-1111-1111-1111-111111111111\r\n\
         X-User-Id: 22222222-2222-2222-2222-222222222222\r\n\
         REMOTE-USER: root\r\n\
         x-auth-REQUEST-groups: admins\r\n\
         Connection: close\r\n\r\n",
        gateway.listen,
        cookie_header(&user.token),
    );
    let response = raw_http(gateway.listen, request.as_bytes()).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let echo = EchoedRequest::from_json(&response.json());
    assert_eq!(echo.header_count("x-user-id"), 1, "{:?}", echo.header_list);
    assert_eq!(echo.header("x-user-id"), Some(user.id.as_str()));
    assert_eq!(echo.header("remote-user"), None, "{:?}", echo.header_list);
    assert_eq!(
        echo.header("x-auth-request-groups"),
        None,
        "{:?}",
        echo.header_list
    );

    // And on a public route, with no session at all.
    let request = format!(
        "GET /public/raw HTTP/1.1\r\n\
         Host: {}\r\n\
         x-USER-id: 11111111-1111-1111-1111-111111111111\r\n\
         X-User-Id: 22222222-2222-2222-2222-222222222222\r\n\
         Connection: close\r\n\r\n",
        gateway.listen,
    );
    let response = raw_http(gateway.listen, request.as_bytes()).await;
    assert_eq!(response.status, 200);
    let echo = EchoedRequest::from_json(&response.json());
    assert_eq!(echo.header_count("x-user-id"), 0, "{:?}", echo.header_list);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_routes_are_forwarded_without_a_session() {
    let gateway = Gateway::start().await;
    let response = gateway.get("/public/logo.svg?v=2", None).await;
    let echo = echoed(response).await;
    assert_eq!(echo.path, "/public/logo.svg?v=2");
    assert_eq!(echo.header("x-user-id"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_matching_prefix_wins() {
    let gateway = GatewayOptions::new()
        .routes(vec![
            RouteSpec::required("/", Upstream::Echo),
            RouteSpec::public("/docs/", Upstream::Echo),
            RouteSpec::required("/docs/private/", Upstream::Echo),
        ])
        .start()
        .await;
    let public = gateway.get("/docs/intro", None).await;
    assert_eq!(public.status(), 200);
    let private = gateway.get("/docs/private/plan", None).await;
    assert_json_error(private, 401, "unauthenticated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_matches_no_route_is_404_json() {
    let gateway = GatewayOptions::new()
        .routes(vec![RouteSpec::public("/app/", Upstream::Echo)])
        .start()
        .await;
    for path in ["/", "/other", "/application", "/ap"] {
        let response = gateway.get(path, None).await;
        assert_json_error_status(response, 404).await;
    }
    let matched = gateway.get("/app/home", None).await;
    assert_eq!(matched.status(), 200);
    assert_eq!(gateway.echo.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_502_with_a_json_error() {
    let dead = format!("127.0.0.1:{}", free_port());
    let gateway = GatewayOptions::new()
        .routes(vec![
            RouteSpec::required("/", Upstream::Addr(dead.clone())),
            RouteSpec::public("/public/", Upstream::Addr(dead)),
        ])
        .start()
        .await;
    let user = gateway.signed_in_user().await;
    // Each on its own `Connection: close` connection: whether the gateway keeps a connection
    // usable after a 502 is a separate test below.
    for (path, cookie) in [
        ("/public/anything", String::new()),
        (
            "/dashboard",
            format!("Cookie: {}\r\n", cookie_header(&user.token)),
        ),
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n{cookie}Connection: close\r\n\r\n",
            gateway.listen
        );
        let response = raw_http(gateway.listen, request.as_bytes()).await;
        // contract §2.8 allows 502 or 503 (an upstream the health check already marked down).
        assert!(
            response.status == 502 || response.status == 503,
            "{path}: status {}",
            response.status
        );
        assert!(
            response
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{path}: {:?}",
            response.headers
        );
        let body = response.json();
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_stays_usable_after_a_502_or_the_gateway_says_connection_close() {
    let dead = format!("127.0.0.1:{}", free_port());
    let gateway = GatewayOptions::new()
        .routes(vec![
            RouteSpec::public("/down/", Upstream::Addr(dead)),
            RouteSpec::public("/", Upstream::Echo),
        ])
        .start()
        .await;
    let mut socket = tokio::net::TcpStream::connect(gateway.listen)
        .await
        .unwrap();
    let request = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\r\n",
            gateway.listen
        )
    };
    use tokio::io::AsyncWriteExt as _;
    socket
        .write_all(request("/down/x").as_bytes())
        .await
        .unwrap();
    let first = read_raw_response(&mut socket).await.expect("a response");
    assert!(
        first.status == 502 || first.status == 503,
        "{}",
        first.status
    );
    if first
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    {
        return; // Announced: a client will not reuse the connection.
    }
    // Not announced, so an HTTP/1.1 client reuses the connection: it must still work.
    let _ = socket.write_all(request("/up").as_bytes()).await;
    let second = read_raw_response(&mut socket).await;
    assert!(
        second.as_ref().is_some_and(|r| r.status == 200),
        "the gateway closed a keep-alive connection after a {} without `Connection: close` \
         (clients then fail their next request with a reset).\n502 headers: {:?}\nnext: {second:?}",
        first.status,
        first.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gets_504_upstream_timeout() {
    let slow = EchoServer::start_delayed(std::time::Duration::from_secs(3)).await;
    let gateway = Gateway::start_with_edited(
        GatewayOptions::new().routes(vec![
            RouteSpec::public("/slow/", Upstream::Addr(slow.addr.to_string())),
            RouteSpec::public("/", Upstream::Echo),
        ]),
        |toml| {
            let route = "prefix = \"/slow/\"\n";
            assert!(toml.contains(route), "{toml}");
            toml.replacen(route, &format!("{route}read_timeout = \"1s\"\n"), 1)
        },
    )
    .await;

    // Were the route's read_timeout ignored, the upstream's 200 would arrive after 3 s.
    let response = gateway
        .get_with("/slow/report", None, &[("Accept", "application/json")])
        .await;
    assert_json_error(response, 504, "upstream_timeout").await;
    assert!(
        slow.requests().iter().any(|r| r.path == "/slow/report"),
        "the request never reached the upstream (a connect failure, not a read timeout)"
    );
    // Other routes are unaffected.
    assert_eq!(gateway.get("/fast", None).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_host_names_are_resolved_at_run_time() {
    let echo = EchoServer::start().await;
    let upstream = format!("localhost:{}", echo.addr.port());
    let gateway = GatewayOptions::new()
        .routes(vec![RouteSpec::public("/", Upstream::Addr(upstream))])
        .start()
        .await;
    let response = eventually(Duration::from_secs(10), "the name is looked up", || async {
        let response = gateway.get("/x", None).await;
        (response.status() == 200).then_some(response)
    })
    .await;
    assert_eq!(echoed(response).await.path, "/x");
}

#[test]
fn check_needs_no_network_for_upstream_names() {
    let output =
        run_check("[[route]]\nprefix = \"/\"\nupstreams = [\"app.does-not-exist.invalid:8080\"]\n");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = run_check("[[route]]\nprefix = \"/\"\nupstreams = [\"http://127.0.0.1:3000\"]\n");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("without a scheme") && stderr.contains("route[0].upstreams[0]"),
        "{stderr}"
    );
}
