//! Attack: stealing a session token from somewhere other than the victim's cookie jar: from
//! URLs (Location headers, referrers, history), response bodies (XSS-readable JSON or HTML),
//! the upstream application (which may log or leak its request headers), the gateway's logs,
//! or a dump of Redis or Postgres; and planting a cookie from a sibling subdomain (cookie
//! tossing) in a Secure deployment.
//!
//! Guarantee (contract §4): the token travels only in the cookie (`HttpOnly`, `SameSite=Lax`,
//! `Path=/`; with `secure_cookie = true` also `Secure` and named `__Host-authgate_session`, so
//! no other host can set it); it is removed from the Cookie header forwarded upstream (other
//! cookies pass); it appears in no Location, no response body and no log line; and the
//! stores keep only its SHA-256: nothing in a store dump opens a session.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::json;

const SECURE_COOKIE: &str = "__Host-authgate_session";

fn secure_cookie_on(text: String) -> String {
    assert!(
        text.contains("secure_cookie = false"),
        "harness config changed: no `secure_cookie = false` in\n{text}"
    );
    text.replacen("secure_cookie = false", "secure_cookie = true", 1)
}

async fn csrf_token(gateway: &Gateway, cookie_name: &str) -> String {
    let page = gateway.get("/auth/login", None).await;
    set_cookies(&page)
        .into_iter()
        .find(|c| c.name == cookie_name)
        .unwrap_or_else(|| panic!("the sign-in page sets no {cookie_name} cookie"))
        .value
}

/// Everything a client can read back after signing in, with the token attached.
async fn readable_responses(gateway: &Gateway, token: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for path in [
        "/auth/user/me",
        "/auth/user/sessions",
        "/auth/user/devices",
        "/auth/user/ips",
        "/auth/devices",
        "/auth/login",
        "/auth/login?rd=%2Fapp",
        "/auth/register",
        "/app/page?x=1",
        "/public/page",
    ] {
        let response = gateway
            .get_with(path, Some(token), &[("Accept", "text/html")])
            .await;
        let location = header(&response, "location")
            .unwrap_or_default()
            .to_string();
        let headers: Vec<String> = response
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str() != "set-cookie")
            .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("")))
            .collect();
        let body = response.text().await.unwrap();
        out.push((format!("{path} Location"), location));
        out.push((format!("{path} headers"), headers.join("\n")));
        out.push((format!("{path} body"), body));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_deployment_cookie_is_host_prefixed_secure_and_http_only() {
    let gateway = Gateway::start_with_edited(GatewayOptions::new(), secure_cookie_on).await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let response = gateway
        .post_json(
            "/auth/login",
            &json!({"email": email, "password": password}),
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
    let cookies = set_cookies(&response);
    let cookie = cookies
        .iter()
        .find(|c| c.name == SECURE_COOKIE)
        .unwrap_or_else(|| panic!("no {SECURE_COOKIE} cookie in {cookies:?}"));
    for flag in ["secure", "httponly"] {
        assert!(
            cookie.attribute(flag).is_some(),
            "no {flag}: {}",
            cookie.raw
        );
    }
    assert_eq!(
        cookie
            .attribute("samesite")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("lax")
    );
    assert_eq!(cookie.attribute("path"), Some("/"), "{}", cookie.raw);
    assert!(cookie.attribute("domain").is_none(), "{}", cookie.raw);
    assert!(
        cookies.iter().all(|c| c.name != COOKIE_NAME),
        "an unprefixed session cookie was set too: {cookies:?}"
    );
    let token = cookie.value.clone();
    let body = response.text().await.unwrap();
    assert!(!body.contains(&token), "the login body holds the token");

    // The cookie works under its __Host- name...
    let secure = format!("{SECURE_COOKIE}={token}");
    let response = gateway
        .get_with("/app", None, &[("Cookie", secure.as_str())])
        .await;
    let seen = echoed(response).await;
    // ...and is not forwarded.
    assert!(
        !seen.header("cookie").unwrap_or_default().contains(&token),
        "the upstream saw the token: {:?}",
        seen.header("cookie")
    );

    // Cookie tossing: a sibling subdomain can set `authgate_session` (no prefix) for the
    // parent domain, but never a __Host- cookie. The unprefixed name must not be honoured.
    let tossed = cookie_header(&token);
    let response = gateway
        .get_with("/app", None, &[("Cookie", tossed.as_str())])
        .await;
    assert_eq!(
        response.status(),
        401,
        "the unprefixed cookie name was accepted in a secure deployment"
    );

    // The sign-in page's CSRF cookie is __Host- prefixed and Secure as well.
    let page = gateway.get("/auth/login", None).await;
    let csrf = set_cookies(&page)
        .into_iter()
        .find(|c| c.name == "__Host-authgate_csrf")
        .expect("a __Host-authgate_csrf cookie");
    assert!(csrf.attribute("secure").is_some() && csrf.attribute("httponly").is_some());
    assert!(csrf.attribute("domain").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_appears_in_urls_headers_or_bodies() {
    let gateway = GatewayOptions::new()
        .session_setting("inject_user_email = true")
        .session_setting("inject_session_id = true")
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let login = gateway.login_full(&email, &password).await;
    let token = login.token.clone();
    assert!(!login.body.to_string().contains(&token), "login body");

    let mut leaks = Vec::new();
    for (what, text) in readable_responses(&gateway, &token).await {
        if text.contains(&token) {
            leaks.push(what);
        }
    }
    // The form sign-in's redirect.
    let csrf = csrf_token(&gateway, "authgate_csrf").await;
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf_token", &csrf)
        .append_pair("email", &email)
        .append_pair("password", &password)
        .append_pair("rd", "/app/next")
        .finish();
    let cookie = format!("authgate_csrf={csrf}");
    let origin = gateway.public_origin();
    let response = gateway
        .request(
            "POST",
            "/auth/login",
            None,
            &[("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
            Some(("application/x-www-form-urlencoded", body.into_bytes())),
        )
        .await;
    assert_eq!(response.status(), 303);
    let form_token = session_cookie(&response).expect("a session cookie").value;
    let location = header(&response, "location")
        .unwrap_or_default()
        .to_string();
    if location.contains(&form_token) || location.contains(&token) {
        leaks.push(format!("form sign-in Location {location}"));
    }
    if response.text().await.unwrap().contains(&form_token) {
        leaks.push("form sign-in body".to_string());
    }
    assert!(leaks.is_empty(), "the session token appears in: {leaks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_never_sees_the_session_token() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let token = user.token.as_str();
    let cookie_variants = [
        format!("a=1; {COOKIE_NAME}={token}; b=2"),
        format!("{COOKIE_NAME}={token}"),
        format!("{COOKIE_NAME}=\"{token}\"; theme=dark"),
        format!("theme=dark;{COOKIE_NAME}={token}"),
        format!("{COOKIE_NAME} = {token} ; theme=dark"),
        format!("{COOKIE_NAME}={token}; {COOKIE_NAME}={token}; theme=dark"),
    ];
    for path in ["/app/x", "/public/x"] {
        for cookie in &cookie_variants {
            let response = gateway
                .get_with(
                    path,
                    None,
                    &[("Cookie", cookie.as_str()), ("Cookie", "c=3")],
                )
                .await;
            let seen = echoed(response).await;
            let forwarded = seen.header("cookie").unwrap_or_default().to_string();
            let everything = format!("{:?} {}", seen.header_list, seen.body);
            assert!(
                !everything.contains(token),
                "{path} with Cookie {cookie:?}: the upstream saw the token: {forwarded:?}"
            );
            assert!(
                !forwarded.contains(COOKIE_NAME),
                "{path} with Cookie {cookie:?}: the upstream saw the session cookie: {forwarded:?}"
            );
            // Everyone else's cookies still arrive.
            assert!(forwarded.contains("c=3"), "{path}: {forwarded:?}");
            if cookie.contains("theme=dark") {
                assert!(forwarded.contains("theme=dark"), "{path}: {forwarded:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_never_hold_a_token_or_a_password() {
    let gateway = GatewayOptions::new()
        .login_protection(3, "15m", "15m", 1000)
        .start()
        .await;
    let user = gateway.signed_in_user().await;
    let second = gateway.login(&user.email, &user.password).await;
    let secrets = [user.token.clone(), second.clone(), user.password.clone()];

    // A busy life: proxied requests, API calls, failures, odd requests, a lockout, logout.
    for path in [
        "/app",
        "/public/x",
        "/auth/user/me",
        "/auth/user/sessions",
        "/auth/devices",
    ] {
        gateway.get(path, Some(&user.token)).await;
    }
    // A token pasted into a URL by mistake is the client's leak, but a 401 for a wrong or
    // expired token must not log the value it was given.
    let wrong_password = format!("{}-wrong", user.password);
    gateway
        .post_json(
            "/auth/login",
            &json!({"email": user.email, "password": wrong_password}),
            None,
        )
        .await;
    let dead = "f".repeat(68);
    gateway.get("/app", Some(&dead)).await;
    gateway
        .get_with(
            "/app",
            None,
            &[("Cookie", &format!("{COOKIE_NAME}=\"{}\"", user.token))],
        )
        .await;
    gateway.logout(Some(&second)).await;
    gateway.get("/app", Some(&second)).await; // a revoked token
                                              // The password change comes before the lockout: a locked account cannot change it.
    let new_password = strong_password();
    let response = gateway
        .post_json(
            "/auth/user/password",
            &json!({"current_password": user.password, "new_password": new_password}),
            Some(&user.token),
        )
        .await;
    assert_eq!(response.status(), 204);
    for i in 0..3 {
        gateway
            .post_json(
                "/auth/login",
                &json!({"email": user.email, "password": format!("{wrong_password}{i}")}),
                None,
            )
            .await;
    }
    gateway
        .post_json(
            "/auth/login",
            &json!({"email": user.email, "password": new_password}),
            None,
        )
        .await; // locked, with the right password

    // Let the write-behind and access logs catch up.
    eventually(
        std::time::Duration::from_secs(10),
        "access log lines for the requests",
        || async {
            let logs = gateway.logs();
            (logs.matches("\"request\"").count() >= 12).then_some(())
        },
    )
    .await;
    let logs = gateway.logs();
    for (i, secret) in secrets.iter().chain([&new_password, &dead]).enumerate() {
        assert!(
            !logs.contains(secret.as_str()),
            "secret #{i} appears in the gateway log"
        );
    }
}

/// Every string in a store dump that could be a credential: runs of token-ish characters.
fn candidate_strings(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .filter(|word| word.len() >= 16)
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_store_dump_opens_no_session() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let second = gateway.login(&user.email, &user.password).await;
    let ended = gateway.login(&user.email, &user.password).await;
    gateway.logout(Some(&ended)).await;
    let tokens = [user.token.clone(), second.clone(), ended.clone()];
    // Activity, so last-seen data and audit events are written.
    gateway.get("/app", Some(&user.token)).await;
    eventually(
        std::time::Duration::from_secs(10),
        "the audit trail of the logins",
        || async {
            let events = gateway
                .count(
                    "SELECT count(*) FROM auth_events WHERE kind IN ('login_ok', 'logout')",
                    &[],
                )
                .await;
            (events >= 4).then_some(())
        },
    )
    .await;

    // Production: every Redis key and value under the gateway's prefix and every Postgres
    // row. Embedded: every row of the SQLite file, and the file's and WAL's raw bytes (the
    // live sessions are in the process, where no dump reaches).
    let dump = gateway.store_dump().await;
    assert!(
        dump.iter()
            .any(|(_, text)| text.contains(&sha256_hex(&user.token))),
        "the token's SHA-256 is nowhere: the dump is not what the gateway stores"
    );
    for (where_, text) in &dump {
        for (i, token) in tokens.iter().enumerate() {
            assert!(
                !text.contains(token.as_str()),
                "token #{i} in {where_}: {text}"
            );
        }
        assert!(!text.contains(&user.password), "the password in {where_}");
    }

    // Whatever the thief tries from the dump as a cookie, nothing opens a session.
    let candidates: BTreeSet<String> = dump
        .iter()
        .flat_map(|(_, text)| candidate_strings(text))
        .collect();
    assert!(!candidates.is_empty());
    for candidate in &candidates {
        let response = gateway.get("/app", Some(candidate)).await;
        assert_ne!(
            response.status(),
            200,
            "{candidate:?} from the store dump works as a session cookie"
        );
    }
    // (The real tokens still do: the check above could have succeeded.)
    assert_eq!(gateway.get("/app", Some(&second)).await.status(), 200);
}
