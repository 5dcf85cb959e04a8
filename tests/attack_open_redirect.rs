//! Attack: open redirect through the sign-in flow. A phishing link
//! `https://gateway/auth/login?rd=//evil.com` (or an `rd` field in the form post) makes the
//! real sign-in page send a freshly signed-in user to the attacker's site, or injects headers
//! into the redirect.
//!
//! Guarantee (contract §5): after a successful sign-in (and on the sign-in page for someone already
//! signed in) the 303 `Location` is `rd` only when `rd` is a local path; anything else
//! (`//host`, schemes, backslashes, their percent-encoded, double-encoded and
//! whitespace-padded forms) becomes `/`. The 302 from a protected route to the sign-in page
//! carries the original path, url-encoded, in `rd`.

mod common;

use common::*;
use serde_json::json;

/// Targets a browser would resolve to another host (or a script).
const OFF_SITE: &[&str] = &[
    "//evil.com",
    "///evil.com",
    "////evil.com/",
    "https://evil.com",
    "http://evil.com/path",
    "https:evil.com",
    "HTTPS://EVIL.COM",
    "/\\evil.com",
    "\\\\evil.com",
    "\\/evil.com",
    "/\\/evil.com",
    "%2F%2Fevil.com",
    "/%2F/evil.com",
    "/%2f%2fevil.com",
    "%2F%5Cevil.com",
    "/%5Cevil.com",
    "/%5cevil.com",
    "/%252F%252Fevil.com",
    "/%09/evil.com",
    "/\t/evil.com",
    "/\n/evil.com",
    "/%0d%0a/evil.com",
    " //evil.com",
    "%20//evil.com",
    "javascript:alert(1)",
    "JavaScript:alert(document.cookie)",
    "data:text/html,<script>alert(1)</script>",
    "evil.com",
    "@evil.com",
    "/x\r\nSet-Cookie: injected=1",
    "/x%0d%0aSet-Cookie:%20injected=1",
];

/// Local targets that must survive unchanged (the feature still works).
const LOCAL: &[&str] = &["/", "/app/page?x=1&y=2", "/a%20b", "/reports/2024#summary"];

fn query_rd(rd: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(rd.as_bytes()).collect();
    format!("/auth/login?rd={encoded}")
}

/// Where a browser on the gateway's origin ends up following `location`.
fn resolve(gateway: &Gateway, location: &str) -> reqwest::Url {
    reqwest::Url::parse(&format!("{}/", gateway.public_origin()))
        .unwrap()
        .join(location)
        .unwrap_or_else(|e| panic!("Location {location:?} does not resolve: {e}"))
}

/// Asserts a 303 whose Location is exactly `want`, stays on the gateway's host and injects
/// nothing.
fn assert_redirect(gateway: &Gateway, response: &reqwest::Response, rd: &str, want: &str) {
    assert_eq!(response.status(), 303, "rd {rd:?}: not a 303");
    let locations: Vec<&str> = response
        .headers()
        .get_all("location")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        locations.len(),
        1,
        "rd {rd:?}: Location headers {locations:?}"
    );
    let location = locations[0];
    assert_eq!(location, want, "rd {rd:?}: redirected to {location:?}");
    let target = resolve(gateway, location);
    assert_eq!(
        target.host_str(),
        Some("127.0.0.1"),
        "rd {rd:?}: Location {location:?} leaves the site ({target})"
    );
    assert_eq!(target.port(), Some(gateway.listen.port()));
    assert!(
        set_cookies(response)
            .iter()
            .all(|cookie| cookie.name != "injected"),
        "rd {rd:?}: a header was injected"
    );
}

fn expected_for(rd: &str) -> &str {
    if LOCAL.contains(&rd) {
        rd
    } else {
        "/"
    }
}

async fn post_sign_in_form(
    gateway: &Gateway,
    path: &str,
    csrf: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    serializer.append_pair("csrf_token", csrf);
    for (name, value) in fields {
        serializer.append_pair(name, value);
    }
    let cookie = format!("authgate_csrf={csrf}");
    let origin = gateway.public_origin();
    gateway
        .request(
            "POST",
            path,
            None,
            &[("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
            Some((
                "application/x-www-form-urlencoded",
                serializer.finish().into_bytes(),
            )),
        )
        .await
}

fn many_logins() -> GatewayOptions {
    // One sign-in per target: lift the per-IP login limit and the session cap out of the way.
    GatewayOptions::new()
        .login_protection(1000, "15m", "15m", 10_000)
        .max_sessions_per_user(1000, "evict_oldest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phishing_link_to_the_sign_in_page_never_redirects_a_signed_in_user_off_site() {
    let gateway = Gateway::start_with(many_logins()).await;
    let user = gateway.signed_in_user().await;
    for rd in OFF_SITE.iter().chain(LOCAL) {
        let response = gateway.get(&query_rd(rd), Some(&user.token)).await;
        assert_redirect(&gateway, &response, rd, expected_for(rd));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_form_never_redirects_off_site() {
    let gateway = Gateway::start_with(many_logins()).await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let credentials = [("email", email.as_str()), ("password", password.as_str())];

    for rd in OFF_SITE.iter().chain(LOCAL) {
        let want = expected_for(rd);
        // The page opened from the phishing link already neutralises the target...
        let (csrf, hidden_rd) = sign_in_page(&gateway, &query_rd(rd)).await;
        assert_eq!(hidden_rd, want, "rd {rd:?}: the page's hidden rd field");
        // ...and so does the post, whether rd comes in the form or only in the query.
        let mut fields = credentials.to_vec();
        fields.push(("rd", rd));
        let response = post_sign_in_form(&gateway, "/auth/login", &csrf, &fields).await;
        assert_redirect(&gateway, &response, rd, want);
        assert!(session_cookie(&response).is_some(), "rd {rd:?}: no sign-in");
        let response = post_sign_in_form(&gateway, &query_rd(rd), &csrf, &credentials).await;
        assert_redirect(&gateway, &response, rd, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_form_never_forwards_an_off_site_target() {
    let gateway = Gateway::start_with(many_logins()).await;
    for rd in [
        "//evil.com",
        "https://evil.com",
        "/%2F/evil.com",
        "/\\evil.com",
    ] {
        let (csrf, _) = sign_in_page(&gateway, &query_rd("/")).await;
        let email = unique_email();
        let password = strong_password();
        let response = post_sign_in_form(
            &gateway,
            "/auth/register",
            &csrf,
            &[("email", &email), ("password", &password), ("rd", rd)],
        )
        .await;
        // Signed in, and on to the neutralised rd only.
        assert_redirect(&gateway, &response, rd, "/");
        assert!(
            session_cookie(&response).is_some(),
            "rd {rd:?}: not signed in"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redirect_to_sign_in_carries_the_original_path_url_encoded() {
    let gateway = Gateway::start_with(many_logins()).await;
    let response = gateway
        .get_with(
            "/reports/q1?year=2024&format=pdf",
            None,
            &[("Accept", "text/html")],
        )
        .await;
    assert_eq!(response.status(), 302);
    assert_eq!(
        header(&response, "location"),
        Some("/auth/login?rd=%2Freports%2Fq1%3Fyear%3D2024%26format%3Dpdf")
    );
    assert_eq!(gateway.echo.request_count(), 0);

    // A navigation to `//evil.com/x` (raw request line) must not turn into an off-site rd.
    let raw = raw_http(
        gateway.listen,
        b"GET //evil.com/x HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/html\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw.status, 302, "{raw:?}");
    let location = raw.header("location").unwrap().to_string();
    let rd = location
        .strip_prefix("/auth/login?rd=")
        .unwrap_or_else(|| panic!("Location {location:?}"));
    let decoded: String = form_urlencoded::parse(format!("rd={rd}").as_bytes())
        .next()
        .unwrap()
        .1
        .into_owned();
    assert!(
        decoded.starts_with('/') && !decoded.starts_with("//"),
        "rd {decoded:?} is not a local path"
    );

    // Following the whole flow for it lands on the gateway.
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let (csrf, hidden) = sign_in_page(&gateway, &query_rd(&decoded)).await;
    let response = post_sign_in_form(
        &gateway,
        "/auth/login",
        &csrf,
        &[("email", &email), ("password", &password), ("rd", &hidden)],
    )
    .await;
    assert_eq!(response.status(), 303);
    let landed = resolve(&gateway, header(&response, "location").unwrap());
    assert_eq!(landed.host_str(), Some("127.0.0.1"), "landed on {landed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_login_ignores_rd_entirely() {
    // API clients get JSON, never a redirect, whatever rd they add.
    let gateway = Gateway::start_with(many_logins()).await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let response = gateway
        .post_json(
            "/auth/login?rd=%2F%2Fevil.com",
            &json!({"email": email, "password": password, "rd": "//evil.com"}),
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "location").is_none());
}
