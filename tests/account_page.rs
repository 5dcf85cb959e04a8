//! The account page (`/auth/devices`): changing the password there, and the link back to the
//! application.
//!
//! - The change-password form posts to `/auth/devices/password` with the page's CSRF token; it
//!   is the password change of `POST /auth/user/password`: on success every other session
//!   ends, the new password signs in and the old one does not, and the page says so.
//! - A wrong current password, a too-short new one or two different new ones bring the page
//!   back with the problem at its field (never a 500), and change nothing.
//! - Without a valid CSRF token (or from another origin) the post gets the 403 "form refused"
//!   page like every other form.
//! - `branding.back_link_url` / `back_link_label` (default "/", "Back to the app") is the
//!   page's link back to the app; empty: no link.

mod common;

use common::*;
use serde_json::json;

const FORM: &str = "application/x-www-form-urlencoded";

/// The account page as the signed-in browser gets it: its CSRF token and its HTML.
async fn account_page(gateway: &Gateway, token: &str, path: &str) -> (String, String) {
    let page = gateway.get(path, Some(token)).await;
    assert_eq!(page.status(), 200, "GET {path}");
    let csrf = set_cookies(&page)
        .into_iter()
        .find(|c| c.name == "authgate_csrf")
        .expect("the account page sets the CSRF cookie")
        .value;
    let html = page.text().await.unwrap();
    assert_eq!(
        hidden_field(&html, "csrf_token").as_deref(),
        Some(csrf.as_str()),
        "the page's forms carry its CSRF cookie's token"
    );
    (csrf, html)
}

/// The change-password form posted by the signed-in browser: `csrf_cookie` and `fields` as
/// given (a genuine post has `csrf_token` in both), from `origin`.
async fn post_password_form(
    gateway: &Gateway,
    token: &str,
    csrf_cookie: Option<&str>,
    origin: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut body = form_urlencoded::Serializer::new(String::new());
    for (name, value) in fields {
        body.append_pair(name, value);
    }
    let mut cookie = cookie_header(token);
    if let Some(csrf) = csrf_cookie {
        cookie.push_str(&format!("; authgate_csrf={csrf}"));
    }
    gateway
        .request(
            "POST",
            "/auth/devices/password",
            None,
            &[("Cookie", cookie.as_str()), ("Origin", origin)],
            Some((FORM, body.finish().into_bytes())),
        )
        .await
}

async fn signed_in(gateway: &Gateway, token: &str) -> bool {
    match gateway
        .get("/auth/user/me", Some(token))
        .await
        .status()
        .as_u16()
    {
        200 => true,
        401 => false,
        other => panic!("GET /auth/user/me: {other}"),
    }
}

async fn login_status(gateway: &Gateway, email: &str, password: &str) -> u16 {
    login_attempt(gateway, email, password)
        .await
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_password_on_the_account_page_ends_other_sessions_and_the_new_one_works() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let elsewhere = gateway.login(&user.email, &user.password).await;
    let (csrf, html) = account_page(&gateway, &user.token, "/auth/devices").await;
    assert!(
        html.contains("action=\"/auth/devices/password\""),
        "no change-password form: {html}"
    );
    for field in ["current_password", "new_password", "confirm_password"] {
        assert!(html.contains(&format!("name=\"{field}\"")), "no {field}");
    }

    let new_password = strong_password();
    let response = post_password_form(
        &gateway,
        &user.token,
        Some(&csrf),
        &gateway.public_origin(),
        &[
            ("csrf_token", &csrf),
            ("current_password", &user.password),
            ("new_password", &new_password),
            ("confirm_password", &new_password),
        ],
    )
    .await;
    assert_eq!(response.status(), 303, "{}", gateway.logs());
    let location = header(&response, "location")
        .unwrap_or_default()
        .to_string();
    assert!(
        location.starts_with("/auth/devices?password=changed"),
        "{location}"
    );

    // This session goes on; the other one is over.
    assert!(signed_in(&gateway, &user.token).await);
    assert!(
        !signed_in(&gateway, &elsewhere).await,
        "the other session survived"
    );
    let (_, html) = account_page(&gateway, &user.token, &location).await;
    assert!(
        html.contains("Your password was changed. Every other session was signed out."),
        "{html}"
    );

    assert_eq!(
        login_status(&gateway, &user.email, &user.password).await,
        401
    );
    assert_eq!(
        login_status(&gateway, &user.email, &new_password).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_form_problems_are_shown_at_their_field_and_change_nothing() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let elsewhere = gateway.login(&user.email, &user.password).await;
    let (csrf, _) = account_page(&gateway, &user.token, "/auth/devices").await;
    let new_password = strong_password();
    let wrong = format!("{}-wrong", user.password);
    // (current, new, confirm) → status, field, message.
    let cases = [
        (
            wrong.as_str(),
            new_password.as_str(),
            new_password.as_str(),
            400,
            "current_password",
            "Current password is not correct.",
        ),
        (
            user.password.as_str(),
            "short",
            "short",
            400,
            "new_password",
            "New password must be at least 8 characters.",
        ),
        (
            user.password.as_str(),
            new_password.as_str(),
            "something-else-entirely",
            400,
            "confirm_password",
            "The two new passwords are not the same.",
        ),
        (
            "",
            new_password.as_str(),
            new_password.as_str(),
            400,
            "current_password",
            "Current password is required.",
        ),
    ];
    for (current, new, confirm, status, field, message) in cases {
        let response = post_password_form(
            &gateway,
            &user.token,
            Some(&csrf),
            &gateway.public_origin(),
            &[
                ("csrf_token", &csrf),
                ("current_password", current),
                ("new_password", new),
                ("confirm_password", confirm),
            ],
        )
        .await;
        assert_eq!(response.status(), status, "{field}");
        assert!(
            header(&response, "content-type").is_some_and(|t| t.starts_with("text/html")),
            "{field}: the page again, not JSON"
        );
        let html = response.text().await.unwrap();
        assert!(
            html.contains(&format!(
                "<p class=\"field-error\" id=\"{field}-error\">{message}</p>"
            )),
            "{field}: {html}"
        );
        assert!(
            html.contains(&format!(
                "id=\"{field}\" name=\"{field}\" type=\"password\""
            )) && html.contains("aria-invalid=\"true\""),
            "{field}: {html}"
        );
        assert!(
            !html.contains(current) || current.is_empty(),
            "a typed password is echoed back"
        );
    }
    // Nothing changed: both sessions live, the old password still signs in.
    assert!(signed_in(&gateway, &user.token).await);
    assert!(signed_in(&gateway, &elsewhere).await);
    assert_eq!(
        login_status(&gateway, &user.email, &user.password).await,
        200
    );
    assert_eq!(
        login_status(&gateway, &user.email, &new_password).await,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_form_without_a_valid_csrf_token_is_refused() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let (csrf, _) = account_page(&gateway, &user.token, "/auth/devices").await;
    let new_password = strong_password();
    let origin = gateway.public_origin();
    let attacker_token = "a".repeat(csrf.len());
    let with_token = |token: &str| {
        vec![
            ("csrf_token".to_string(), token.to_string()),
            ("current_password".to_string(), user.password.clone()),
            ("new_password".to_string(), new_password.clone()),
            ("confirm_password".to_string(), new_password.clone()),
        ]
    };
    // (CSRF cookie, form fields, Origin)
    let attempts = [
        (
            Some(csrf.as_str()),
            with_token("")[1..].to_vec(),
            origin.as_str(),
        ),
        (
            Some(csrf.as_str()),
            with_token(&attacker_token),
            origin.as_str(),
        ),
        (None, with_token(&csrf), origin.as_str()),
        (
            Some(csrf.as_str()),
            with_token(&csrf),
            "https://evil.example",
        ),
    ];
    for (index, (cookie, fields, from)) in attempts.iter().enumerate() {
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let response = post_password_form(&gateway, &user.token, *cookie, from, &fields).await;
        assert_eq!(response.status(), 403, "attempt #{index}");
        let html = response.text().await.unwrap();
        assert!(
            html.contains("This form was refused"),
            "attempt #{index}: {html}"
        );
    }
    assert_eq!(
        login_status(&gateway, &user.email, &user.password).await,
        200
    );
    assert_eq!(
        login_status(&gateway, &user.email, &new_password).await,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_form_without_a_session_goes_to_sign_in() {
    let gateway = Gateway::start().await;
    let csrf = csrf_token(&gateway).await;
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf_token", &csrf)
        .append_pair("current_password", "whatever-it-was")
        .append_pair("new_password", "a-new-password")
        .finish();
    let cookie = format!("authgate_csrf={csrf}");
    let response = gateway
        .request(
            "POST",
            "/auth/devices/password",
            None,
            &[
                ("Cookie", cookie.as_str()),
                ("Origin", gateway.public_origin().as_str()),
            ],
            Some((FORM, body.into_bytes())),
        )
        .await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        header(&response, "location"),
        Some("/auth/login?rd=%2Fauth%2Fdevices")
    );
    // And JSON to that path is no API.
    let response = gateway
        .post_json("/auth/devices/password", &json!({}), None)
        .await;
    assert_json_error(response, 405, "method_not_allowed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_page_links_back_to_the_app() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let (_, html) = account_page(&gateway, &user.token, "/auth/devices").await;
    assert!(
        html.contains("<a href=\"/\"><span aria-hidden=\"true\">&larr; </span>Back to the app</a>"),
        "default back link: {html}"
    );
    drop(gateway);

    let gateway = Gateway::start_with_edited(GatewayOptions::new(), |text| {
        format!(
            "{text}\n[branding]\nback_link_url = \"https://app.example.com/home?tab=1&x=2\"\n\
             back_link_label = \"Back to <Example>\"\n"
        )
    })
    .await;
    let user = gateway.signed_in_user().await;
    let (_, html) = account_page(&gateway, &user.token, "/auth/devices").await;
    assert!(
        html.contains(
            "<a href=\"https://app.example.com/home?tab=1&amp;x=2\"><span aria-hidden=\"true\">\
             &larr; </span>Back to &lt;Example&gt;</a>"
        ),
        "configured back link: {html}"
    );
    drop(gateway);

    let gateway = Gateway::start_with_edited(GatewayOptions::new(), |text| {
        format!("{text}\n[branding]\nback_link_url = \"\"\n")
    })
    .await;
    let user = gateway.signed_in_user().await;
    let (_, html) = account_page(&gateway, &user.token, "/auth/devices").await;
    assert!(!html.contains("&larr;"), "no back link wanted: {html}");
}
