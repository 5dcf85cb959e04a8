//! Attack: use the session and CSRF cookies' names to confuse the gateway or its users. An
//! upstream (compromised, or echoing attacker input into headers) sets the gateway's cookies
//! on the gateway's origin (session fixation through the app), or teaches the browser identity
//! headers; a client sends the session cookie twice (a cookie planted from a sibling subdomain
//! or with a narrower path comes first) so that "first wins" picks the attacker's session; a
//! prefixed spelling (`__Host-`, `__Secure-`) smuggles a token past the forwarded-cookie filter.
//!
//! Guarantee (contract §2 step 3, `session/cookie.rs`, `gateway.rs`): an upstream's `Set-Cookie`
//! for the gateway's session or CSRF cookie, in any prefix variant or case, and any identity
//! header are removed from its response; a request carrying the session cookie more than once
//! with different values is treated as signed out (401, or the sign-in redirect), never
//! resolved by "first wins"; upstreams never receive the gateway's cookies in any spelling.

mod common;

use common::*;

const PLANTED: &[&str] = &[
    "authgate_session=attacker; Path=/",
    "__Host-authgate_session=attacker; Path=/; Secure",
    "__Secure-authgate_session=attacker; Path=/; Secure",
    "__HOST-authgate_session=attacker; Path=/; Secure",
    "AUTHGATE_SESSION=attacker",
    "authgate_session=; Max-Age=0",
    "authgate_csrf=attacker; Path=/",
    "__Host-authgate_csrf=attacker; Path=/; Secure",
    " authgate_session =attacker",
    "authgate_session",
];

async fn upstream_response_with(
    gateway: &Gateway,
    path: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let planted: Vec<String> = PLANTED.iter().map(|c| format!("Set-Cookie: {c}")).collect();
    let mut headers: Vec<(&str, &str)> = planted
        .iter()
        .map(|line| (ECHO_RESPONSE_HEADER, line.as_str()))
        .collect();
    headers.push((ECHO_RESPONSE_HEADER, "Set-Cookie: app_theme=dark; Path=/"));
    for identity in [
        "X-User-Id: 00000000-0000-0000-0000-000000000001",
        "X-User-Email: root@example.com",
        "X-Session-Id: forged",
        "Remote-User: root",
        "X-Auth-Request-User: root",
        "X-Forwarded-User: root",
        "X-Authgate-Assertion: forged",
    ] {
        headers.push((ECHO_RESPONSE_HEADER, identity));
    }
    gateway.get_with(path, token, &headers).await
}

fn assert_only_ours(response: &reqwest::Response, token: Option<&str>) {
    let set_cookies: Vec<&str> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    assert!(
        set_cookies.iter().any(|c| c.starts_with("app_theme=dark")),
        "the upstream's own cookie must pass: {set_cookies:?}"
    );
    for cookie in &set_cookies {
        let lower = cookie.to_ascii_lowercase();
        if lower.contains("authgate_") {
            assert!(
                token.is_some_and(|token| cookie.starts_with(&format!("{COOKIE_NAME}={token}"))),
                "an upstream's Set-Cookie for the gateway's cookie reached the client: {cookie:?}"
            );
        }
    }
    for name in [
        "x-user-id",
        "x-user-email",
        "x-session-id",
        "remote-user",
        "x-auth-request-user",
        "x-forwarded-user",
        "x-authgate-assertion",
    ] {
        assert!(
            response.headers().get(name).is_none(),
            "identity header {name} reached the client"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cannot_set_the_gateways_cookies_or_identity_headers() {
    let gateway = Gateway::start().await;
    let response = upstream_response_with(&gateway, "/public/page", None).await;
    assert_eq!(response.status(), 200);
    assert_only_ours(&response, None);

    let user = gateway.signed_in_user().await;
    let response = upstream_response_with(&gateway, "/app/page", Some(&user.token)).await;
    assert_eq!(response.status(), 200);
    assert_only_ours(&response, Some(&user.token));
    // The gateway's own sliding refresh is still there, exactly once.
    let ours = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter(|c| c.to_str().unwrap().starts_with(COOKIE_NAME))
        .count();
    assert_eq!(ours, 1);
    // And the session still works afterwards.
    assert_eq!(gateway.get("/app/x", Some(&user.token)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_session_cookies_count_as_signed_out() {
    let gateway = Gateway::start().await;
    let alice = gateway.signed_in_user().await;
    let mallory = gateway.signed_in_user().await;
    let before = gateway.echo.request_count();
    for cookie in [
        format!(
            "{COOKIE_NAME}={}; {COOKIE_NAME}={}",
            mallory.token, alice.token
        ),
        format!(
            "{COOKIE_NAME}={}; {COOKIE_NAME}={}",
            alice.token, mallory.token
        ),
        format!("{COOKIE_NAME}={}; {COOKIE_NAME}=garbage", alice.token),
        format!("{COOKIE_NAME}=; {COOKIE_NAME}={}", alice.token),
    ] {
        let response = gateway
            .get_with("/app/x", None, &[("Cookie", cookie.as_str())])
            .await;
        assert_eq!(response.status(), 401, "{cookie}");
        let response = gateway
            .get_with("/auth/user/me", None, &[("Cookie", cookie.as_str())])
            .await;
        assert_eq!(response.status(), 401, "{cookie}");
        // Split over two Cookie headers too.
        let (first, second) = cookie.split_once("; ").unwrap();
        let response = gateway
            .get_with("/app/x", None, &[("Cookie", first), ("Cookie", second)])
            .await;
        assert_eq!(response.status(), 401, "{cookie} in two headers");
        // A browser is sent to sign in, not let in as either user.
        let response = gateway
            .get_with(
                "/app/x",
                None,
                &[("Cookie", cookie.as_str()), ("Accept", "text/html")],
            )
            .await;
        assert_eq!(response.status(), 302, "{cookie}");
    }
    assert_eq!(gateway.echo.request_count(), before, "forwarded as someone");
    // The same cookie twice is still that one session.
    let same = format!(
        "{COOKIE_NAME}={}; {COOKIE_NAME}={}",
        alice.token, alice.token
    );
    let response = gateway
        .get_with("/app/x", None, &[("Cookie", same.as_str())])
        .await;
    assert_eq!(
        echoed(response).await.header("x-user-id"),
        Some(alice.id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_never_receive_the_gateways_cookies_in_any_spelling() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let token = user.token.as_str();
    let cookie = format!(
        "{COOKIE_NAME}={token}; __Host-{COOKIE_NAME}={token}; __Secure-{COOKIE_NAME}={token}; \
         __host-{COOKIE_NAME}={token}; AUTHGATE_SESSION={token}; authgate_csrf=x; \
         __Host-authgate_csrf=y; keep=1"
    );
    for path in ["/app/x", "/public/x"] {
        let response = gateway
            .get_with(path, None, &[("Cookie", cookie.as_str())])
            .await;
        let seen = echoed(response).await;
        let forwarded = seen.header("cookie").unwrap_or_default();
        assert_eq!(forwarded, "keep=1", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_ascii_cookie_neither_signs_out_nor_drops_the_apps_cookies() {
    use tokio::io::AsyncWriteExt as _;
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    // Browsers send UTF-8 cookie values as raw bytes; reqwest will not, so write it raw.
    let mut socket = tokio::net::TcpStream::connect(gateway.listen)
        .await
        .unwrap();
    let request = format!(
        "GET /app/x HTTP/1.1\r\nHost: {}\r\nCookie: pref=caf\u{e9}; {COOKIE_NAME}={}; app=1\r\nConnection: close\r\n\r\n",
        gateway.listen, user.token
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let response = read_raw_response(&mut socket).await.unwrap();
    assert_eq!(
        response.status, 200,
        "a non-ASCII cookie signed the user out"
    );
    let seen = EchoedRequest::from_json(&response.json());
    assert_eq!(seen.header("x-user-id"), Some(user.id.as_str()));
    let forwarded = seen.header("cookie").unwrap_or_default();
    assert!(
        forwarded.contains("app=1") && forwarded.contains("pref=caf"),
        "{forwarded}"
    );
    assert!(!forwarded.contains(&user.token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_names_other_readers_fold_to_ours_are_not_forwarded_or_set() {
    let gateway = Gateway::start().await;
    let cookie = "authgate%5Fsession=x; authgate.session=y; authgate session=z; keep=1";
    let seen = echoed(
        gateway
            .get_with("/public/x", None, &[("Cookie", cookie)])
            .await,
    )
    .await;
    assert_eq!(seen.header("cookie"), Some("keep=1"));
    let response = gateway
        .get_with(
            "/public/x",
            None,
            &[
                (ECHO_RESPONSE_HEADER, "Set-Cookie: =authgate_session=evil"),
                (ECHO_RESPONSE_HEADER, "Set-Cookie: authgate.session=evil"),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        set_cookies(&response).len(),
        0,
        "a nameless or folded Set-Cookie passed"
    );
}
