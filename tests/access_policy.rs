//! Who may create an account (`[access]`), and what a sign-up through the page leaves behind.
//!
//! - `registration = "closed"`: `POST /auth/register` gets 403 `registration_closed` (JSON and
//!   form posts), `GET /auth/register` says sign-up is closed and shows no form, and the
//!   sign-in page offers no "Create one" link.
//! - `allowed_email_domains`: an address at another domain gets 403 `email_domain_not_allowed`
//!   with a message naming the allowed domains; the address is compared in its stored form.
//! - Neither ever stops an existing account from signing in, and both reload with the file.
//! - A sign-up through the page ends signed in, exactly like a sign-in through the page (a
//!   session cookie, its record and audit event, then on to `rd`); the JSON API still answers
//!   201 without a session.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const FORM: &str = "application/x-www-form-urlencoded";

/// A gateway with `[access]` holding `lines`.
async fn gateway_with_access(lines: &str) -> Gateway {
    let lines = lines.to_string();
    Gateway::start_with_edited(GatewayOptions::new(), move |text| {
        format!("{text}\n[access]\n{lines}\n")
    })
    .await
}

/// The gateway's file with `[access]` replaced by `lines` (or added), applied by a reload.
async fn reload_access(gateway: &Gateway, lines: &str, reloads: u32) {
    gateway.rewrite_config(|text| {
        let base = match text.find("\n[access]\n") {
            Some(at) => text[..at].to_string(),
            None => text,
        };
        format!("{base}\n[access]\n{lines}\n")
    });
    gateway.wait_for_reloads("ok", reloads).await;
}

async fn register_json(gateway: &Gateway, email: &str, password: &str) -> reqwest::Response {
    gateway
        .post_json(
            "/auth/register",
            &json!({"email": email, "password": password}),
            None,
        )
        .await
}

/// The CSRF token (cookie = hidden field) of the page at `path`, and the page's HTML.
async fn page_token(gateway: &Gateway, path: &str) -> (String, String) {
    let page = gateway.get(path, None).await;
    let csrf = set_cookies(&page)
        .into_iter()
        .find(|c| c.name == "authgate_csrf")
        .unwrap_or_else(|| panic!("{path} sets no CSRF cookie"))
        .value;
    let html = page.text().await.unwrap();
    (csrf, html)
}

/// A form post as the gateway's own page makes it, with extra cookies (`name=value`).
async fn form_post(
    gateway: &Gateway,
    path: &str,
    csrf: &str,
    extra_cookies: &[String],
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut body = form_urlencoded::Serializer::new(String::new());
    body.append_pair("csrf_token", csrf);
    for (name, value) in fields {
        body.append_pair(name, value);
    }
    let mut cookies = vec![format!("authgate_csrf={csrf}")];
    cookies.extend(extra_cookies.iter().cloned());
    let cookie = cookies.join("; ");
    let origin = gateway.public_origin();
    gateway
        .request(
            "POST",
            path,
            None,
            &[("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
            Some((FORM, body.finish().into_bytes())),
        )
        .await
}

async fn user_count(gateway: &Gateway) -> i64 {
    gateway.count("SELECT count(*) FROM users", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_registration_refuses_the_api_and_the_form_and_hides_the_sign_up_link() {
    let gateway = gateway_with_access("registration = \"closed\"").await;
    let email = unique_email();
    let password = strong_password();

    let body = assert_json_error(
        register_json(&gateway, &email, &password).await,
        403,
        "registration_closed",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("registration is closed")),
        "{body}"
    );
    // Closed whatever the body holds: no validation problem is reported instead.
    let response = gateway
        .post_json("/auth/register", &json!({"email": "not-an-email"}), None)
        .await;
    assert_json_error(response, 403, "registration_closed").await;

    // The sign-up page says so and has no form.
    let page = gateway.get("/auth/register?rd=%2Fapp", None).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Sign-up is closed"), "{html}");
    assert!(
        !html.contains("<form"),
        "the closed sign-up page has a form: {html}"
    );
    assert!(html.contains("href=\"/auth/login?rd=%2Fapp\""), "{html}");

    // A form post (from a page opened before the change) gets that page, 403.
    let (csrf, login_html) = page_token(&gateway, "/auth/login?rd=%2Fapp").await;
    let response = form_post(
        &gateway,
        "/auth/register",
        &csrf,
        &[],
        &[("email", &email), ("password", &password), ("rd", "/app")],
    )
    .await;
    assert_eq!(response.status(), 403);
    assert!(session_cookie(&response).is_none());
    assert!(header(&response, "content-type").is_some_and(|t| t.starts_with("text/html")));
    let html = response.text().await.unwrap();
    assert!(html.contains("Sign-up is closed"), "{html}");

    // The sign-in page offers no way to sign up.
    assert!(
        !login_html.contains("/auth/register") && !login_html.contains("Create one"),
        "the sign-in page still offers sign-up: {login_html}"
    );
    assert_eq!(user_count(&gateway).await, 0, "an account was created");
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "authgate_registrations_total",
            &[("outcome", "refused")]
        ),
        Some(3.0),
        "refusals by policy are counted as `refused`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_reloads_with_the_file_and_never_stops_existing_users_signing_in() {
    let gateway = gateway_with_access("registration = \"open\"").await;
    let elsewhere = format!("user-{}@other.test", random_hex(6));
    let password = strong_password();
    gateway.register(&elsewhere, &password).await;
    let login_html = gateway.get("/auth/login", None).await.text().await.unwrap();
    assert!(login_html.contains("Create one"), "{login_html}");

    // Closed: nobody new, but the existing account signs in through the API and the form.
    reload_access(&gateway, "registration = \"closed\"", 1).await;
    let response = register_json(&gateway, &unique_email(), &strong_password()).await;
    assert_json_error(response, 403, "registration_closed").await;
    let token = gateway.login(&elsewhere, &password).await;
    assert_eq!(gateway.get("/app", Some(&token)).await.status(), 200);
    let csrf = csrf_token(&gateway).await;
    let response = sign_in_form(&gateway, &csrf, &elsewhere, &password).await;
    assert_eq!(
        response.status(),
        303,
        "form sign-in while registration is closed"
    );
    assert!(session_cookie(&response).is_some());

    // Open to one domain only: the account at another domain still signs in.
    reload_access(
        &gateway,
        "registration = \"open\"\nallowed_email_domains = [\"example.com\"]",
        2,
    )
    .await;
    assert!(gateway
        .get("/auth/login", None)
        .await
        .text()
        .await
        .unwrap()
        .contains("Create one"));
    gateway.register(&unique_email(), &strong_password()).await;
    let response = register_json(
        &gateway,
        &format!("new-{}@other.test", random_hex(4)),
        &password,
    )
    .await;
    assert_json_error(response, 403, "email_domain_not_allowed").await;
    gateway.login(&elsewhere, &password).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_domains_admit_their_addresses_and_refuse_others_naming_the_rule() {
    let gateway = gateway_with_access(
        "allowed_email_domains = [\"Example.COM\", \"example.org\", \"*.corp.example.net\"]",
    )
    .await;
    let rule = "registration is limited to email addresses at example.com, example.org, any \
                subdomain of corp.example.net";
    let password = strong_password();
    let local = || format!("user-{}", random_hex(6));

    // Case and surrounding space do not matter: the address is compared as it is stored.
    for email in [
        format!("{}@example.com", local()),
        format!("  {}@EXAMPLE.com ", local()),
        format!("{}@Example.Org", local()),
        format!("{}@eu.corp.example.net", local()),
        format!("{}@a.b.CORP.example.net", local()),
    ] {
        let response = register_json(&gateway, &email, &password).await;
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 201, "{email:?}: {body}");
    }
    for email in [
        format!("{}@other.test", local()),
        format!("{}@corp.example.net", local()),
        format!("{}@sub.example.com", local()),
        format!("{}@example.com.evil.test", local()),
        format!("{}@notexample.com", local()),
        format!("{}@example.com@evil.test", local()),
    ] {
        let response = register_json(&gateway, &email, &password).await;
        let status = response.status().as_u16();
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        if email.matches('@').count() > 1 {
            // Not an address at all: the shape check answers first.
            assert_eq!(status, 400, "{email}: {body}");
            continue;
        }
        assert_eq!(status, 403, "{email}: {body}");
        assert_eq!(body["error"]["code"], "email_domain_not_allowed", "{email}");
        assert_eq!(body["error"]["message"], rule, "{email}");
    }
    assert_eq!(user_count(&gateway).await, 5);

    // The sign-up page names the domains, and a refused form post marks the email field.
    let (csrf, html) = page_token(&gateway, "/auth/register").await;
    assert!(
        html.contains(
            "Use an address at example.com, example.org, any subdomain of corp.example.net."
        ),
        "{html}"
    );
    let email = format!("{}@other.test", local());
    let response = form_post(
        &gateway,
        "/auth/register",
        &csrf,
        &[],
        &[("email", &email), ("password", &password)],
    )
    .await;
    assert_eq!(response.status(), 403);
    assert!(session_cookie(&response).is_none());
    let html = response.text().await.unwrap();
    assert!(
        html.contains(
            "id=\"email-error\">Registration is limited to email addresses at example.com"
        ),
        "{html}"
    );
    assert!(html.contains("aria-invalid=\"true\" aria-describedby=\"email-error\""));
    assert!(
        html.contains(&format!("value=\"{email}\"")),
        "the email is kept: {html}"
    );
    assert_eq!(user_count(&gateway).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_through_the_page_signs_the_user_in_and_honours_rd() {
    let gateway = Gateway::start().await;
    // Someone else is signed in in this browser: the sign-up replaces that session.
    let previous = gateway.signed_in_user().await;
    let email = unique_email();
    let password = strong_password();
    let (csrf, html) = page_token(&gateway, "/auth/register?rd=%2Fapp%2Fwelcome%3Fstep%3D1").await;
    assert_eq!(
        hidden_field(&html, "rd").as_deref(),
        Some("/app/welcome?step=1")
    );
    let response = form_post(
        &gateway,
        "/auth/register",
        &csrf,
        &[cookie_header(&previous.token)],
        &[
            ("email", &email),
            ("password", &password),
            ("full_name", ""),
            ("username", ""),
            ("rd", "/app/welcome?step=1"),
        ],
    )
    .await;
    assert_eq!(response.status(), 303, "{}", gateway.logs());
    assert_eq!(header(&response, "location"), Some("/app/welcome?step=1"));
    let cookie = session_cookie(&response).expect("signed in after sign-up");
    assert!(cookie.attributes.contains_key("httponly"), "{}", cookie.raw);
    let token = cookie.value;

    // The cookie works on a protected route, as the new user.
    let user_id = gateway
        .query_one("SELECT id FROM users WHERE email = $1", &[(&email).into()])
        .await
        .text("id");
    let echoed = gateway.get("/app/welcome?step=1", Some(&token)).await;
    assert_eq!(echoed.status(), 200);
    let echoed = EchoedRequest::from_json(&echoed.json().await.unwrap());
    assert_eq!(echoed.header("x-user-id"), Some(user_id.as_str()));

    // Recorded like any sign-in: the session, its device and IP, the audit trail.
    let sessions: Value = gateway
        .get("/auth/user/sessions", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(sessions["total_active_sessions"], 1, "{sessions}");
    assert_eq!(sessions["sessions"][0]["ip"], "127.0.0.1", "{sessions}");
    let uid = uuid_bind(&user_id);
    for (sql, what) in [
        (
            "SELECT count(*) FROM sessions WHERE user_id = $1",
            "session record",
        ),
        ("SELECT count(*) FROM devices WHERE user_id = $1", "device"),
        ("SELECT count(*) FROM ip_addresses WHERE user_id = $1", "IP"),
        (
            "SELECT count(*) FROM auth_events WHERE user_id = $1 AND kind = 'login_ok'",
            "login_ok event",
        ),
    ] {
        assert_eq!(
            gateway.count(sql, std::slice::from_ref(&uid)).await,
            1,
            "{what}"
        );
    }
    // The registration's own event is written behind the answer.
    eventually(
        Duration::from_secs(10),
        "the register audit event",
        || async {
            let sql = "SELECT count(*) FROM auth_events WHERE user_id = $1 AND kind = 'register'";
            (gateway.count(sql, std::slice::from_ref(&uid)).await == 1).then_some(())
        },
    )
    .await;
    // No session fixation: the session the browser came with is over.
    assert_eq!(
        gateway
            .get("/auth/user/me", Some(&previous.token))
            .await
            .status(),
        401
    );

    // The JSON API is unchanged: 201 with the user, and no session.
    let other = unique_email();
    let response = register_json(&gateway, &other, &password).await;
    assert_eq!(response.status(), 201);
    assert!(
        session_cookie(&response).is_none(),
        "the API signed the user in"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user"]["email"], json!(other), "{body}");
    assert!(body.get("session").is_none(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_through_the_page_never_redirects_off_site() {
    let gateway = Gateway::start().await;
    let (csrf, _) = page_token(&gateway, "/auth/register").await;
    let response = form_post(
        &gateway,
        "/auth/register",
        &csrf,
        &[],
        &[
            ("email", &unique_email()),
            ("password", &strong_password()),
            ("rd", "https://evil.example/steal"),
        ],
    )
    .await;
    assert_eq!(response.status(), 303);
    assert_eq!(header(&response, "location"), Some("/"));
    assert!(session_cookie(&response).is_some());
}
