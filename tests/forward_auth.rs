//! Forward-auth (`/auth/verify`, contract §3 and §9): authgate beside an existing proxy.
//!
//! - A live session gets 200 with the identity in response headers (any method), after the
//!   same checks as a protected route: sliding idle expiry, absolute lifetime, revocation.
//! - No or dead session: 401 JSON; a dead cookie is cleared.
//! - A browser's page load forwarded by a trusted proxy (`X-Forwarded-Method/-Proto/-Host/
//!   -Uri` + `Accept: text/html`) gets a 302 to the sign-in page with `rd` = the original full
//!   URL, only for hosts in `server.allowed_redirect_hosts`; the sign-in flow then returns the
//!   browser there. Any other host, and the same headers from an untrusted peer, never become
//!   a redirect target.
//! - `session.cookie_domain` shares the cookie with subdomains under the `__Secure-` prefix,
//!   and the CSRF and origin rules still hold.
//!
//! The nginx recipe (`docs/forward-auth.md`) has its own test: `tests/forward_auth_nginx.rs`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const APP_HOST: &str = "app.example.test";

fn beside_a_proxy() -> GatewayOptions {
    GatewayOptions::new()
        .trusted_proxies(&["127.0.0.1/32", "::1/128"])
        .server_setting(&format!(
            "allowed_redirect_hosts = [\"{APP_HOST}\", \"*.apps.example.test\"]"
        ))
        .login_protection(1000, "15m", "15m", 10_000)
}

/// What Traefik and Caddy send for a browser's page load of `host` + `uri`.
fn forwarded<'a>(host: &'a str, uri: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", host),
        ("X-Forwarded-Uri", uri),
        ("Accept", "text/html,application/xhtml+xml"),
    ]
}

fn encoded(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

async fn verify(
    gateway: &Gateway,
    method: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    gateway
        .request(method, "/auth/verify", token, headers, None)
        .await
}

async fn assert_unauthenticated(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 401, "{what}");
    assert!(response.headers().get("location").is_none(), "{what}");
    assert!(response.headers().get("x-user-id").is_none(), "{what}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated", "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_is_answered_with_its_identity_and_a_dead_one_with_401() {
    let gateway = Gateway::start_with(
        beside_a_proxy()
            .session_setting("inject_user_email = true")
            .session_setting("inject_session_id = true"),
    )
    .await;
    let user = gateway.signed_in_user().await;

    for method in ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"] {
        let response = verify(&gateway, method, Some(&user.token), &[]).await;
        assert_eq!(response.status(), 200, "{method}");
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(header("x-user-id").as_deref(), Some(user.id.as_str()));
        assert_eq!(header("x-user-email").as_deref(), Some(user.email.as_str()));
        assert!(header("x-session-id").is_some_and(|id| id.len() == 36));
        assert_eq!(response.headers().get_all("x-user-id").iter().count(), 1);
    }

    // A forged identity header sent to the check is not echoed back as the answer.
    let forged = verify(&gateway, "GET", None, &[("X-User-Id", "attacker")]).await;
    assert_unauthenticated(forged, "no cookie, forged X-User-Id").await;

    // No cookie, a junk cookie (cleared), then the session after logout.
    assert_unauthenticated(verify(&gateway, "GET", None, &[]).await, "no cookie").await;
    let junk = verify(&gateway, "GET", Some("not-a-session-token"), &[]).await;
    let cleared = set_cookies(&junk)
        .into_iter()
        .find(|c| c.name == "authgate_session")
        .expect("a dead cookie is cleared");
    assert_eq!(
        cleared.attributes.get("max-age").map(String::as_str),
        Some("0")
    );
    assert_unauthenticated(junk, "junk cookie").await;

    let logout = gateway.logout(Some(&user.token)).await;
    assert_eq!(logout.status(), 204);
    assert_unauthenticated(
        verify(&gateway, "GET", Some(&user.token), &[]).await,
        "after logout",
    )
    .await;

    // Forward-auth never reaches an upstream.
    assert_eq!(gateway.echo.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_session_elsewhere_ends_it_for_the_check_at_once() {
    let gateway = Gateway::start_with(beside_a_proxy()).await;
    let user = gateway.signed_in_user().await;
    let other = gateway.login(&user.email, &user.password).await;
    assert_eq!(
        verify(&gateway, "GET", Some(&user.token), &[])
            .await
            .status(),
        200
    );

    // "Sign out everywhere else" from the other session.
    let revoked = gateway
        .request("DELETE", "/auth/user/sessions", Some(&other), &[], None)
        .await;
    assert_eq!(revoked.status(), 200);
    assert_unauthenticated(
        verify(&gateway, "GET", Some(&user.token), &[]).await,
        "revoked session",
    )
    .await;
    assert_eq!(
        verify(&gateway, "GET", Some(&other), &[]).await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_slides_the_idle_expiry_and_stops_at_the_absolute_lifetime() {
    let gateway =
        Gateway::start_with(beside_a_proxy().idle_timeout("2s").absolute_timeout("5s")).await;
    let user = gateway.signed_in_user().await;
    let started = Instant::now();

    // Used every 700 ms, the session outlives its 2 s idle timeout...
    while started.elapsed() < Duration::from_millis(3500) {
        let response = verify(&gateway, "GET", Some(&user.token), &[]).await;
        assert_eq!(
            response.status(),
            200,
            "used every 700 ms, refused after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // ...but not its 5 s absolute lifetime, however often it is used.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(started.elapsed())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_unauthenticated(
        verify(&gateway, "GET", Some(&user.token), &[]).await,
        "past the absolute lifetime",
    )
    .await;

    // A session left alone for longer than the idle timeout is gone too.
    let idle = gateway.login(&user.email, &user.password).await;
    assert_eq!(
        verify(&gateway, "GET", Some(&idle), &[]).await.status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_unauthenticated(
        verify(&gateway, "GET", Some(&idle), &[]).await,
        "idle past the timeout",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_out_browser_is_sent_to_sign_in_only_for_allowed_hosts() {
    let gateway = Gateway::start_with(beside_a_proxy()).await;
    let origin = gateway.public_origin();

    for (host, uri, original) in [
        (
            APP_HOST,
            "/reports/2024?q=a%20b&x=1",
            "https://app.example.test/reports/2024?q=a%20b&x=1",
        ),
        ("APP.example.test", "/", "https://app.example.test/"),
        (
            "x.apps.example.test:8443",
            "/a",
            "https://x.apps.example.test:8443/a",
        ),
    ] {
        let response = verify(&gateway, "GET", None, &forwarded(host, uri)).await;
        assert_eq!(response.status(), 302, "{host}{uri}");
        let location = response.headers()["location"].to_str().unwrap().to_string();
        assert_eq!(
            location,
            format!("{origin}/auth/login?rd={}", encoded(original)),
            "{host}{uri}"
        );
    }

    // Hosts not listed (or dressed up as listed ones) are never a redirect target.
    for host in [
        "evil.test",
        "apps.example.test",
        "app.example.test.evil.test",
        "evil.test@app.example.test",
        "app.example.test@evil.test",
        "app.example.test%2F@evil.test",
        "[::1]",
        "",
    ] {
        let response = verify(&gateway, "GET", None, &forwarded(host, "/")).await;
        assert_unauthenticated(response, &format!("forwarded host {host:?}")).await;
    }

    // Not a page load: an API call, a form post, a request without the forwarded host.
    let mut api = forwarded(APP_HOST, "/api");
    api.retain(|(name, _)| *name != "Accept");
    api.push(("Accept", "application/json"));
    assert_unauthenticated(verify(&gateway, "GET", None, &api).await, "API call").await;
    let mut post = forwarded(APP_HOST, "/form");
    post[0] = ("X-Forwarded-Method", "POST");
    assert_unauthenticated(verify(&gateway, "GET", None, &post).await, "forwarded POST").await;
    let mut hostless = forwarded(APP_HOST, "/");
    hostless.retain(|(name, _)| *name != "X-Forwarded-Host");
    assert_unauthenticated(verify(&gateway, "GET", None, &hostless).await, "no host").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_an_untrusted_peer_never_make_a_redirect() {
    // The same allowed host, but the peer (the test) is not a trusted proxy: its
    // X-Forwarded-* headers are stripped before the check reads them.
    let gateway = Gateway::start_with(
        GatewayOptions::new().server_setting(&format!("allowed_redirect_hosts = [\"{APP_HOST}\"]")),
    )
    .await;
    let response = verify(&gateway, "GET", None, &forwarded(APP_HOST, "/x")).await;
    assert_unauthenticated(response, "untrusted peer").await;
}

/// The rendered `gateway.toml` with `server.public_origin` set to `origins(the current value)`.
fn with_public_origins(text: String, origins: impl FnOnce(&str) -> String) -> String {
    let line = text
        .lines()
        .find(|line| line.starts_with("public_origin = "))
        .expect("a public_origin line")
        .to_string();
    let current = line.trim_start_matches("public_origin = ");
    text.replace(&line, &format!("public_origin = {}", origins(current)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_in_flow_returns_the_browser_to_the_original_url() {
    let gateway = Gateway::start_with(beside_a_proxy()).await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;

    // The forward-auth redirect, followed by a browser...
    let response = verify(
        &gateway,
        "GET",
        None,
        &forwarded(APP_HOST, "/deep/page?id=7"),
    )
    .await;
    assert_eq!(response.status(), 302);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let path = location
        .strip_prefix(&gateway.public_origin())
        .expect("the sign-in page is on the gateway's origin");
    let original = "https://app.example.test/deep/page?id=7";

    // ...shows the sign-in page carrying the original URL...
    let (csrf, rd) = sign_in_page(&gateway, path).await;
    assert_eq!(rd, original);

    // ...and the form post sends the signed-in browser back there.
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("csrf_token", &csrf);
    form.append_pair("email", &email);
    form.append_pair("password", &password);
    form.append_pair("rd", &rd);
    let cookie = format!("authgate_csrf={csrf}");
    let origin = gateway.public_origin();
    let signed_in = gateway
        .request(
            "POST",
            "/auth/login",
            None,
            &[("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
            Some((
                "application/x-www-form-urlencoded",
                form.finish().into_bytes(),
            )),
        )
        .await;
    assert_eq!(signed_in.status(), 303);
    assert_eq!(signed_in.headers()["location"], original);
    let token = set_cookies(&signed_in)
        .into_iter()
        .find(|c| c.name == "authgate_session")
        .expect("signed in")
        .value;

    // Signed in, the sign-in page goes straight back; the check now passes.
    let again = gateway
        .get(
            &format!("/auth/login?rd={}", encoded(original)),
            Some(&token),
        )
        .await;
    assert_eq!(again.status(), 303);
    assert_eq!(again.headers()["location"], original);
    assert_eq!(
        verify(
            &gateway,
            "GET",
            Some(&token),
            &forwarded(APP_HOST, "/deep/page?id=7")
        )
        .await
        .status(),
        200
    );

    // A full URL on a host that is not allowed is still refused as a target.
    for rd in ["https://evil.test/", "https://app.example.test.evil.test/"] {
        let response = gateway
            .get(&format!("/auth/login?rd={}", encoded(rd)), Some(&token))
            .await;
        assert_eq!(response.status(), 303);
        assert_eq!(response.headers()["location"], "/", "{rd}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_redirect_hosts_are_checked_and_reloaded() {
    let refused = run_check(
        &GatewayOptions::new()
            .server_setting("allowed_redirect_hosts = [\"https://app.example.test/\"]")
            .render(&RenderTarget::for_check()),
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("server.allowed_redirect_hosts[0]") && stderr.contains("no scheme"),
        "{stderr}"
    );

    // Adding a host by editing the file applies without a restart.
    let gateway = Gateway::start_with(
        GatewayOptions::new()
            .trusted_proxies(&["127.0.0.1/32"])
            .server_setting("allowed_redirect_hosts = []"),
    )
    .await;
    let before = verify(&gateway, "GET", None, &forwarded("new.example.test", "/")).await;
    assert_eq!(before.status(), 401);
    gateway.rewrite_config(|text| {
        text.replace(
            "allowed_redirect_hosts = []",
            "allowed_redirect_hosts = [\"new.example.test\"]",
        )
    });
    gateway.signal("HUP");
    eventually(
        Duration::from_secs(10),
        "the new host is allowed",
        || async {
            let response = verify(&gateway, "GET", None, &forwarded("new.example.test", "/")).await;
            (response.status() == 302).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_domain_shares_a_secure_prefixed_cookie_and_keeps_the_origin_rules() {
    let gateway = Gateway::start_with_edited(beside_a_proxy(), |text| {
        with_public_origins(text, |_| "\"https://login.example.test\"".to_string()).replace(
            "secure_cookie = false",
            "secure_cookie = true\ncookie_domain = \".example.test\"",
        )
    })
    .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;

    // Signing in sets `__Secure-` (a `__Host-` cookie may not carry a Domain) for the domain.
    let login = gateway
        .post_json(
            "/auth/login",
            &json!({"email": email, "password": password}),
            None,
        )
        .await;
    assert_eq!(login.status(), 200);
    let cookie = set_cookies(&login)
        .into_iter()
        .find(|c| c.name == "__Secure-authgate_session")
        .expect("a __Secure- session cookie");
    assert_eq!(
        cookie.attributes.get("domain").map(String::as_str),
        Some("example.test")
    );
    for flag in ["secure", "httponly"] {
        assert!(
            cookie.attributes.contains_key(flag),
            "{flag}: {}",
            cookie.raw
        );
    }
    let session_cookie = format!("__Secure-authgate_session={}", cookie.value);

    // The shared cookie works for the check and for a protected route...
    let checked = verify(
        &gateway,
        "GET",
        None,
        &[("Cookie", session_cookie.as_str())],
    )
    .await;
    assert_eq!(checked.status(), 200);
    let proxied = gateway
        .get_with("/app/x", None, &[("Cookie", session_cookie.as_str())])
        .await;
    assert_eq!(proxied.status(), 200);
    // ...the old host-only spelling does not.
    let host_only = format!("__Host-authgate_session={}", cookie.value);
    assert_eq!(
        verify(&gateway, "GET", None, &[("Cookie", host_only.as_str())])
            .await
            .status(),
        401
    );

    // A sibling subdomain shares the cookie, not the right to post: only the configured
    // origin may make state-changing calls.
    let cross = gateway
        .request(
            "POST",
            "/auth/logout",
            None,
            &[
                ("Cookie", session_cookie.as_str()),
                ("Origin", "https://evil.example.test"),
            ],
            None,
        )
        .await;
    assert_eq!(cross.status(), 403);
    let same = gateway
        .request(
            "POST",
            "/auth/logout",
            None,
            &[
                ("Cookie", session_cookie.as_str()),
                ("Origin", "https://login.example.test"),
            ],
            None,
        )
        .await;
    assert_eq!(same.status(), 204);
    let cleared = set_cookies(&same)
        .into_iter()
        .find(|c| c.name == "__Secure-authgate_session")
        .expect("logout clears the shared cookie");
    assert_eq!(
        cleared.attributes.get("domain").map(String::as_str),
        Some("example.test"),
        "clearing must name the same Domain or the browser keeps the cookie"
    );

    // The CSRF cookie of the pages stays host-only (`__Host-`): a sibling cannot plant one.
    let page = gateway.get("/auth/login", None).await;
    let csrf = set_cookies(&page)
        .into_iter()
        .find(|c| c.name.ends_with("authgate_csrf"))
        .expect("a CSRF cookie");
    assert_eq!(csrf.name, "__Host-authgate_csrf");
    assert!(!csrf.attributes.contains_key("domain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_domain_must_cover_the_gateway_origin() {
    let output = run_check(
        &GatewayOptions::new()
            .session_setting("cookie_domain = \".example.test\"")
            .render(&RenderTarget::for_check()),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("session.cookie_domain") && stderr.contains("server.public_origin"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_in_page_is_on_the_public_origin_of_the_forwarded_scheme_and_host() {
    // The proxy routes /auth/ to authgate on the app's host, over both schemes.
    let gateway = Gateway::start_with_edited(beside_a_proxy(), |text| {
        with_public_origins(text, |own| {
            format!(
                "[{own}, \"http://{APP_HOST}\", \"https://{APP_HOST}\", \
                 \"https://other.apps.example.test\"]"
            )
        })
    })
    .await;
    let location =
        |response: &reqwest::Response| response.headers()["location"].to_str().unwrap().to_string();

    let secure = verify(&gateway, "GET", None, &forwarded(APP_HOST, "/a")).await;
    assert_eq!(secure.status(), 302);
    assert!(
        location(&secure).starts_with(&format!("https://{APP_HOST}/auth/login?rd=")),
        "{}",
        location(&secure)
    );

    let mut plain = forwarded(APP_HOST, "/a");
    plain[1] = ("X-Forwarded-Proto", "http");
    let plain = verify(&gateway, "GET", None, &plain).await;
    assert!(
        location(&plain).starts_with(&format!("http://{APP_HOST}/auth/login?rd=")),
        "{}",
        location(&plain)
    );

    // An allowed host that is no public origin signs in at the first public origin.
    let elsewhere = verify(
        &gateway,
        "GET",
        None,
        &forwarded("x.apps.example.test", "/"),
    )
    .await;
    assert!(
        location(&elsewhere).starts_with(&format!("{}/auth/login?rd=", gateway.public_origin())),
        "{}",
        location(&elsewhere)
    );
}
