//! What a client can send wrong to `/auth` (contract §3): every malformed body gets a 4xx with
//! the JSON error shape (never a 500), a 400 names the offending field, and nothing is
//! created on the way: the same e-mail can still be registered afterwards.

mod common;

use common::*;
use serde_json::{json, Value};

const INVALID_INPUT_CODES: &[&str] = &["invalid_request", "invalid_field"];

/// POSTs `body` to `path` and asserts the refusal: `status`, the error shape, and for a 400
/// an `invalid_request`/`invalid_field` code whose message names `field`.
async fn assert_rejected(
    gateway: &Gateway,
    path: &str,
    content_type: &str,
    body: impl Into<Vec<u8>>,
    status: u16,
    field: Option<&str>,
) -> Value {
    let response = gateway.post_raw(path, content_type, body).await;
    assert!(
        session_cookie(&response).is_none(),
        "a refused request must not set a session cookie"
    );
    let error = if status == 400 {
        assert_json_error_any(response, 400, INVALID_INPUT_CODES).await
    } else {
        assert_json_error_status(response, status).await
    };
    if let Some(field) = field {
        let message = error["message"].as_str().unwrap().to_ascii_lowercase();
        assert!(
            message.contains(field),
            "the message should name {field:?}: {error}"
        );
    }
    error
}

async fn assert_register_rejected(gateway: &Gateway, body: &Value, field: &str) {
    assert_rejected(
        gateway,
        "/auth/register",
        "application/json",
        serde_json::to_vec(body).unwrap(),
        400,
        Some(field),
    )
    .await;
}

/// The refused registration created nothing: the address is still free.
async fn assert_still_unregistered(gateway: &Gateway, email: &str) {
    gateway.register(email, &strong_password()).await;
}

// --- not a JSON object -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_a_body_that_is_not_json() {
    let gateway = Gateway::start().await;
    assert_rejected(
        &gateway,
        "/auth/register",
        "application/json",
        "email=a@example.com&password=whatever1",
        400,
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_truncated_json_and_creates_nothing() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let body = format!(r#"{{"email":"{email}","password":"{}"#, strong_password());
    assert_rejected(
        &gateway,
        "/auth/register",
        "application/json",
        body,
        400,
        None,
    )
    .await;
    assert_still_unregistered(&gateway, &email).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_a_json_array_and_creates_nothing() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let body = json!([{"email": email, "password": strong_password()}]);
    assert_rejected(
        &gateway,
        "/auth/register",
        "application/json",
        body.to_string(),
        400,
        None,
    )
    .await;
    assert_still_unregistered(&gateway, &email).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_an_empty_body() {
    let gateway = Gateway::start().await;
    assert_rejected(
        &gateway,
        "/auth/register",
        "application/json",
        "",
        400,
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_a_bare_json_string() {
    let gateway = Gateway::start().await;
    assert_rejected(
        &gateway,
        "/auth/register",
        "application/json",
        r#""user@example.com""#,
        400,
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_deeply_nested_json_without_crashing() {
    let gateway = Gateway::start().await;
    let body = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    assert_rejected(
        &gateway,
        "/auth/register",
        "application/json",
        body,
        400,
        None,
    )
    .await;
    // Still alive and serving.
    assert_still_unregistered(&gateway, &unique_email()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_invalid_utf8() {
    let gateway = Gateway::start().await;
    let mut body = br#"{"email":"a"#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    body.extend_from_slice(br#"@example.com","password":"long-enough-pw"}"#);
    assert_rejected(
        &gateway,
        "/auth/register",
        "application/json",
        body,
        400,
        None,
    )
    .await;
}

// --- missing or mistyped fields --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_a_missing_email_naming_the_field() {
    let gateway = Gateway::start().await;
    assert_register_rejected(&gateway, &json!({"password": strong_password()}), "email").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_a_missing_password_naming_the_field_and_creates_nothing() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    assert_register_rejected(&gateway, &json!({"email": email}), "password").await;
    assert_still_unregistered(&gateway, &email).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_an_email_that_is_a_number() {
    let gateway = Gateway::start().await;
    assert_register_rejected(
        &gateway,
        &json!({"email": 12345, "password": strong_password()}),
        "email",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_a_null_email() {
    let gateway = Gateway::start().await;
    assert_register_rejected(
        &gateway,
        &json!({"email": null, "password": strong_password()}),
        "email",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_a_null_password_and_creates_nothing() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    assert_register_rejected(
        &gateway,
        &json!({"email": email, "password": null}),
        "password",
    )
    .await;
    assert_still_unregistered(&gateway, &email).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_a_password_that_is_an_array() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    assert_register_rejected(
        &gateway,
        &json!({"email": email, "password": ["long-enough-1", "long-enough-2"]}),
        "password",
    )
    .await;
    assert_still_unregistered(&gateway, &email).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_a_username_that_is_not_a_string() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    assert_register_rejected(
        &gateway,
        &json!({"email": email, "password": strong_password(), "username": 42}),
        "username",
    )
    .await;
    assert_still_unregistered(&gateway, &email).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_a_full_name_that_is_an_object() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    assert_register_rejected(
        &gateway,
        &json!({"email": email, "password": strong_password(), "full_name": {"first": "Ada"}}),
        "full_name",
    )
    .await;
    assert_still_unregistered(&gateway, &email).await;
}

// --- password policy -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_a_password_shorter_than_8_characters_and_creates_nothing() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    assert_register_rejected(
        &gateway,
        &json!({"email": email, "password": "Short7!"}),
        "password",
    )
    .await;
    let login = gateway
        .post_json(
            "/auth/login",
            &json!({"email": email, "password": "Short7!"}),
            None,
        )
        .await;
    assert_json_error(login, 401, "invalid_credentials").await;
    assert_still_unregistered(&gateway, &email).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_accepts_a_password_of_exactly_8_characters() {
    let gateway = Gateway::start().await;
    gateway.register(&unique_email(), "Exactly8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_a_password_equal_to_the_email() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    assert_register_rejected(
        &gateway,
        &json!({"email": email, "password": email}),
        "password",
    )
    .await;
    // The same in another case is still "the email".
    assert_register_rejected(
        &gateway,
        &json!({"email": email, "password": email.to_uppercase()}),
        "password",
    )
    .await;
    assert_still_unregistered(&gateway, &email).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_a_password_longer_than_72_bytes() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    assert_register_rejected(
        &gateway,
        &json!({"email": email, "password": "p".repeat(73)}),
        "password",
    )
    .await;
    // 25 characters but 75 bytes: the bcrypt limit is in bytes.
    assert_register_rejected(
        &gateway,
        &json!({"email": email, "password": "€".repeat(25)}),
        "password",
    )
    .await;
    assert_still_unregistered(&gateway, &email).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_accepts_a_password_of_exactly_72_bytes() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let password = "p".repeat(72);
    gateway.register(&email, &password).await;
    gateway.login(&email, &password).await;
}

// --- e-mail validation -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_an_email_without_an_at_sign() {
    let gateway = Gateway::start().await;
    assert_register_rejected(
        &gateway,
        &json!({"email": "not-an-email.example.com", "password": strong_password()}),
        "email",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_an_email_with_an_empty_local_part_or_domain() {
    let gateway = Gateway::start().await;
    for email in ["@example.com", "someone@", "@", "   "] {
        assert_register_rejected(
            &gateway,
            &json!({"email": email, "password": strong_password()}),
            "email",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_an_email_longer_than_254_characters() {
    let gateway = Gateway::start().await;
    let label = "d".repeat(60);
    let email = format!("user@{label}.{label}.{label}.{label}.example.com");
    assert!(email.len() > 254, "{}", email.len());
    assert_register_rejected(
        &gateway,
        &json!({"email": email, "password": strong_password()}),
        "email",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_a_nul_byte_in_the_email() {
    let gateway = Gateway::start().await;
    let clean = unique_email();
    let with_nul = clean.replacen('@', "\u{0}@", 1);
    assert_register_rejected(
        &gateway,
        &json!({"email": with_nul, "password": strong_password()}),
        "email",
    )
    .await;
    assert_still_unregistered(&gateway, &clean).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_control_characters_in_the_email() {
    let gateway = Gateway::start().await;
    let clean = unique_email();
    let with_newline = clean.replacen('@', "\r\n@", 1);
    assert_register_rejected(
        &gateway,
        &json!({"email": with_newline, "password": strong_password()}),
        "email",
    )
    .await;
    assert_still_unregistered(&gateway, &clean).await;
}

// --- content type, size, and paths -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_a_wrong_content_type_is_415_and_creates_nothing() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let body = json!({"email": email, "password": strong_password()}).to_string();
    for content_type in ["application/xml", "application/octet-stream"] {
        assert_rejected(
            &gateway,
            "/auth/register",
            content_type,
            body.clone(),
            415,
            None,
        )
        .await;
    }
    assert_still_unregistered(&gateway, &email).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_a_form_capable_content_type_is_refused_and_creates_nothing() {
    // text/plain and multipart are what a cross-site <form> can send: refusing them as a CSRF
    // risk (403) is as right as refusing the media type (415). Never created, never a 500.
    let gateway = Gateway::start().await;
    let email = unique_email();
    let body = json!({"email": email, "password": strong_password()}).to_string();
    for content_type in ["text/plain", "multipart/form-data; boundary=x"] {
        let response = gateway
            .post_raw("/auth/register", content_type, body.clone())
            .await;
        assert_refused(response, &[403, 415]).await;
    }
    assert_still_unregistered(&gateway, &email).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_without_a_content_type_is_415() {
    let gateway = Gateway::start().await;
    let body = json!({"email": unique_email(), "password": strong_password()}).to_string();
    let response = gateway
        .request("POST", "/auth/register", None, &[], None)
        .await;
    // No body at all, no content type.
    assert!(response.status().is_client_error(), "{}", response.status());
    let response = gateway
        .client
        .post(gateway.url("/auth/register"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_json_error_status(response, 415).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_accepts_json_with_a_charset_parameter() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let response = gateway
        .post_raw(
            "/auth/register",
            "application/json; charset=utf-8",
            json!({"email": email, "password": strong_password()}).to_string(),
        )
        .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_a_body_over_16_kib_is_413_and_creates_nothing() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let body = json!({
        "email": email,
        "password": strong_password(),
        "full_name": "x".repeat(17 * 1024),
    });
    assert_rejected(
        &gateway,
        "/auth/register",
        "application/json",
        body.to_string(),
        413,
        None,
    )
    .await;
    assert_still_unregistered(&gateway, &email).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_a_body_over_16_kib_is_413() {
    let gateway = Gateway::start().await;
    let body = json!({"email": unique_email(), "password": "x".repeat(20 * 1024)});
    assert_rejected(
        &gateway,
        "/auth/login",
        "application/json",
        body.to_string(),
        413,
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_rejects_malformed_bodies_with_400_naming_the_field() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;

    assert_rejected(
        &gateway,
        "/auth/login",
        "application/json",
        "{nope",
        400,
        None,
    )
    .await;
    assert_rejected(
        &gateway,
        "/auth/login",
        "application/json",
        json!({"email": email}).to_string(),
        400,
        Some("password"),
    )
    .await;
    assert_rejected(
        &gateway,
        "/auth/login",
        "application/json",
        json!({"password": password}).to_string(),
        400,
        Some("email"),
    )
    .await;
    assert_rejected(
        &gateway,
        "/auth/login",
        "application/json",
        json!({"email": 7, "password": password}).to_string(),
        400,
        Some("email"),
    )
    .await;
    assert_rejected(
        &gateway,
        "/auth/login",
        "application/xml",
        json!({"email": email, "password": password}).to_string(),
        415,
        None,
    )
    .await;
    // None of that locked or broke the account.
    gateway.login(&email, &password).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_auth_paths_are_404_json_for_any_method() {
    let gateway = Gateway::start().await;
    for (method, path) in [
        ("GET", "/auth/does-not-exist"),
        ("POST", "/auth/does-not-exist"),
        ("DELETE", "/auth/whatever/else"),
    ] {
        let response = gateway
            .request(
                method,
                path,
                None,
                &[],
                Some(("application/json", b"{}".to_vec())),
            )
            .await;
        assert_json_error_status(response, 404).await;
    }
}
