//! Attack: identity spoofing towards the upstream. The upstream trusts `X-User-Id` (and, when
//! enabled, `X-User-Email` / `X-Session-Id`) because only the gateway sets them; the attacker
//! sends them himself, in any letter case, repeated, among other auth-proxy conventions
//! (`X-Forwarded-User`, `Remote-User`, `X-Auth-Request-*`), on public and protected routes, or
//! tries to make the gateway drop the real one.
//!
//! Guarantee (contract §2.3): every such header a client sends is removed on every route, before
//! anything else reads it; on a protected route the upstream receives exactly one `X-User-Id`,
//! the signed-in user's; and none of them authenticates anyone to the gateway itself.

mod common;

use common::*;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// Header lines an attacker adds, in the casings a library would not produce.
const SPOOFED: &[(&str, &str)] = &[
    ("X-User-Id", "00000000-0000-0000-0000-000000000001"),
    ("x-user-id", "00000000-0000-0000-0000-000000000002"),
    ("X-USER-ID", "00000000-0000-0000-0000-000000000003"),
    ("x-UsEr-Id", "00000000-0000-0000-0000-000000000004"),
    ("X-User-Email", "admin@example.com"),
    ("x-user-email", "root@example.com"),
    ("X-Session-Id", "00000000-0000-0000-0000-00000000000a"),
    ("X-SESSION-ID", "00000000-0000-0000-0000-00000000000b"),
    ("X-Forwarded-User", "admin"),
    ("x-forwarded-user", "root"),
    ("X-Forwarded-Email", "admin@example.com"),
    ("X-Forwarded-Preferred-Username", "admin"),
    ("Remote-User", "admin"),
    ("REMOTE-USER", "root"),
    ("X-Auth-Request-User", "admin"),
    ("X-Auth-Request-Email", "admin@example.com"),
    ("x-auth-request-groups", "admins"),
    ("X-AUTH-REQUEST-ACCESS-TOKEN", "forged"),
    ("X-Auth-Request-Preferred-Username", "admin"),
    // The signed identity assertion (stripped even while the gateway signs none).
    ("X-Authgate-Assertion", "eyJhbGciOiJub25lIn0.e30."),
    ("x-AUTHGATE-assertion", "forged"),
];

/// Lower-case names of the headers the upstream must never get from a client.
fn identity_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "x-user-id",
        "x-user-email",
        "x-session-id",
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-preferred-username",
        "remote-user",
        "x-authgate-assertion",
    ]
    .contains(&name.as_str())
        || name.starts_with("x-auth-request-")
}

/// Sends a GET with `lines` verbatim (so casing and repetition survive) and returns what the
/// upstream saw, or `None` if the request did not reach it.
async fn raw_get_with(
    gateway: &Gateway,
    path: &str,
    token: Option<&str>,
    lines: &[(&str, &str)],
) -> (u16, Option<EchoedRequest>) {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", gateway.listen);
    if let Some(token) = token {
        request.push_str(&format!("Cookie: {}\r\n", cookie_header(token)));
    }
    for (name, value) in lines {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    let before = gateway.echo.request_count();
    let mut socket = TcpStream::connect(gateway.listen).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let response = read_raw_response(&mut socket)
        .await
        .expect("the gateway answered");
    let seen = gateway.echo.requests().into_iter().nth(before);
    (response.status, seen)
}

fn assert_no_spoofed_identity(seen: &EchoedRequest, what: &str) {
    for (name, value) in &seen.header_list {
        if name == "x-user-id" {
            continue; // checked by the caller against the real user
        }
        assert!(
            !identity_header(name),
            "{what}: the upstream received {name}: {value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_never_reach_a_public_upstream() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    for token in [None, Some(user.token.as_str())] {
        let (status, seen) = raw_get_with(&gateway, "/public/x", token, SPOOFED).await;
        assert_eq!(status, 200);
        let seen = seen.expect("forwarded");
        let what = format!("public route, signed in: {}", token.is_some());
        assert_no_spoofed_identity(&seen, &what);
        assert_eq!(
            seen.header_count("x-user-id"),
            0,
            "{what}: {:?}",
            seen.header_list
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_protected_route_the_upstream_gets_exactly_the_real_identity() {
    let gateway = GatewayOptions::new()
        .session_setting("inject_user_email = true")
        .session_setting("inject_session_id = true")
        .start()
        .await;
    let user = gateway.signed_in_user().await;
    let session_id = json_body(gateway.get("/auth/user/me", Some(&user.token)).await).await
        ["session"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let (status, seen) = raw_get_with(&gateway, "/app/admin", Some(&user.token), SPOOFED).await;
    assert_eq!(status, 200);
    let seen = seen.expect("forwarded");
    for (name, want) in [
        ("x-user-id", user.id.as_str()),
        ("x-user-email", user.email.as_str()),
        ("x-session-id", session_id.as_str()),
    ] {
        assert_eq!(seen.header_count(name), 1, "{name}: {:?}", seen.header_list);
        assert_eq!(seen.header(name), Some(want), "{name}");
    }
    for (name, value) in &seen.header_list {
        if ["x-user-id", "x-user-email", "x-session-id"].contains(&name.as_str()) {
            continue;
        }
        assert!(
            !identity_header(name),
            "the upstream received {name}: {value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_do_not_authenticate() {
    let gateway = Gateway::start().await;
    let victim = gateway.signed_in_user().await;
    let claims: Vec<(&str, &str)> = vec![
        ("X-User-Id", victim.id.as_str()),
        ("X-User-Email", victim.email.as_str()),
        ("Remote-User", victim.email.as_str()),
        ("X-Forwarded-User", victim.email.as_str()),
        ("X-Auth-Request-User", victim.id.as_str()),
        ("Authorization", "Bearer forged"),
    ];
    // Not to a protected route...
    let (status, seen) = raw_get_with(&gateway, "/app/admin", None, &claims).await;
    assert_eq!(
        status, 401,
        "a protected route let a header-only identity in"
    );
    assert!(seen.is_none(), "the request reached the upstream");
    // ...and not to the gateway's own API.
    for path in ["/auth/user/me", "/auth/user/sessions", "/auth/devices"] {
        let (status, _) = raw_get_with(&gateway, path, None, &claims).await;
        assert!(
            status == 401 || status == 303,
            "{path} with identity headers and no cookie: {status}"
        );
    }
    assert_eq!(gateway.echo.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_x_user_id_as_hop_by_hop_does_not_drop_the_real_identity() {
    // `Connection: X-User-Id` asks a proxy to drop that header before forwarding. Applied after
    // injection it would strip the real identity (or a spoofed one could survive ordering
    // games); the upstream must still get exactly the signed-in user.
    // A refusal (4xx, nothing forwarded) is as good.
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    for nominated in [
        "X-User-Id",
        "keep-alive, x-user-id",
        "X-User-Id, X-User-Email, X-Session-Id",
        "Cookie, X-User-Id",
        "X-Forwarded-For",
    ] {
        let lines = [
            ("Connection", nominated),
            ("X-User-Id", "00000000-0000-0000-0000-000000000001"),
        ];
        let (status, seen) = raw_get_with(&gateway, "/app", Some(&user.token), &lines).await;
        match seen {
            Some(seen) => {
                assert_eq!(status, 200, "Connection: {nominated}");
                assert_eq!(
                    seen.header_count("x-user-id"),
                    1,
                    "Connection: {nominated}: {:?}",
                    seen.header_list
                );
                assert_eq!(
                    seen.header("x-user-id"),
                    Some(user.id.as_str()),
                    "Connection: {nominated}"
                );
            }
            None => assert!(
                (400..500).contains(&status),
                "Connection: {nominated}: {status}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_variants_of_identity_headers_never_reach_the_upstream() {
    // CGI-style upstreams (WSGI, Rack, PHP) map both `X-User-Id` and `X_User_Id` to
    // HTTP_X_USER_ID: an underscore variant that gets through is a spoofed identity there
    // (the reason nginx drops such headers and oauth2-proxy strips them).
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let lines = [
        ("X_User_Id", "00000000-0000-0000-0000-000000000001"),
        ("x_user_email", "admin@example.com"),
        ("Remote_User", "admin"),
        ("X_Forwarded_User", "admin"),
        ("X_Auth_Request_User", "admin"),
        ("X_Authgate_Assertion", "forged"),
    ];
    for (path, token) in [("/public/x", None), ("/app", Some(user.token.as_str()))] {
        let (status, seen) = raw_get_with(&gateway, path, token, &lines).await;
        if status != 200 {
            assert!((400..500).contains(&status), "{path}: {status}");
            continue;
        }
        let seen = seen.expect("forwarded");
        let smuggled: Vec<&(String, String)> = seen
            .header_list
            .iter()
            .filter(|(name, _)| identity_header(&name.replace('_', "-")) && name.contains('_'))
            .collect();
        assert!(
            smuggled.is_empty(),
            "{path}: the upstream received underscore identity headers {smuggled:?}"
        );
    }
}
