//! The `/auth` API's happy paths and its documented refusals (contract §3): register, login,
//! logout, who-am-I, and what each returns.

mod common;

use common::*;
use serde_json::{json, Value};

/// The user fields contract §3 promises, and nothing that looks like a password.
fn assert_public_user(user: &Value, email: &str) {
    for field in [
        "id",
        "email",
        "username",
        "full_name",
        "created_at",
        "last_login",
    ] {
        assert!(
            user.get(field).is_some(),
            "user object lacks {field:?}: {user}"
        );
    }
    let id = user["id"].as_str().expect("user.id is a string");
    uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("user.id {id:?} is not a UUID: {e}"));
    assert_eq!(user["email"], email, "user.email");
    assert_no_password_material(user);
}

fn assert_no_password_material(value: &Value) {
    let text = value.to_string();
    assert!(
        !text.to_ascii_lowercase().contains("password"),
        "response mentions a password field: {text}"
    );
    for bcrypt_prefix in ["$2a$", "$2b$", "$2y$"] {
        assert!(
            !text.contains(bcrypt_prefix),
            "response contains a bcrypt hash: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_returns_201_with_the_public_user_and_no_password_hash() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let response = gateway
        .post_json(
            "/auth/register",
            &json!({
                "email": email,
                "password": strong_password(),
                "username": format!("u{}", random_hex(4)),
                "full_name": "Ada Lovelace",
            }),
            None,
        )
        .await;
    assert_eq!(response.status(), 201);
    let body = json_body(response).await;
    assert_public_user(&body["user"], &email);
    assert_eq!(body["user"]["full_name"], "Ada Lovelace");
    assert_no_password_material(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_normalises_the_email_to_trimmed_lower_case() {
    let gateway = Gateway::start().await;
    let local = format!("Mixed.Case-{}", random_hex(4));
    let response = gateway
        .post_json(
            "/auth/register",
            &json!({"email": format!("  {local}@Example.COM "), "password": strong_password()}),
            None,
        )
        .await;
    assert_eq!(response.status(), 201);
    let body = json_body(response).await;
    assert_eq!(
        body["user"]["email"],
        format!("{}@example.com", local.to_lowercase())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_email_is_rejected_with_409_email_taken_even_with_other_case_or_spaces() {
    let gateway = Gateway::start().await;
    let local = format!("dup-{}", random_hex(4));
    let email = format!("{local}@example.com");
    gateway.register(&email, &strong_password()).await;

    for variant in [
        email.clone(),
        email.to_uppercase(),
        format!("  {email}   "),
        format!("{}@EXAMPLE.com", local.to_uppercase()),
    ] {
        let response = gateway
            .post_json(
                "/auth/register",
                &json!({"email": variant, "password": strong_password()}),
                None,
            )
            .await;
        assert_json_error(response, 409, "email_taken").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_is_trimmed_of_any_whitespace_before_it_is_validated() {
    // contract §3: "email normalised (trim, lower-case), validated" — normalising comes first, so
    // a trailing tab or newline (e.g. pasted from a spreadsheet) is trimmed, not refused.
    let gateway = Gateway::start().await;
    let email = unique_email();
    gateway.register(&email, &strong_password()).await;
    for variant in [format!("{email}\t"), format!("\t{email}\r\n")] {
        let response = gateway
            .post_json(
                "/auth/register",
                &json!({"email": variant, "password": strong_password()}),
                None,
            )
            .await;
        assert_json_error(response, 409, "email_taken").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_username_is_rejected_with_409() {
    let gateway = Gateway::start().await;
    let username = format!("name{}", random_hex(4));
    let first = gateway
        .post_json(
            "/auth/register",
            &json!({"email": unique_email(), "password": strong_password(), "username": username}),
            None,
        )
        .await;
    assert_eq!(first.status(), 201);
    let second = gateway
        .post_json(
            "/auth/register",
            &json!({"email": unique_email(), "password": strong_password(), "username": username}),
            None,
        )
        .await;
    let status = second.status();
    let error = json_body(second).await;
    assert_eq!(status, 409, "{error}");
    assert!(
        error["error"]["code"].is_string(),
        "409 body has no error code: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_returns_user_and_session_and_sets_an_httponly_lax_cookie() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let password = strong_password();
    let user = gateway.register(&email, &password).await;

    let response = gateway
        .post_json(
            "/auth/login",
            &json!({"email": email, "password": password}),
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
    let cookie = session_cookie(&response).expect("login sets the session cookie");
    let body = json_body(response).await;

    assert_public_user(&body["user"], &email);
    assert_eq!(body["user"]["id"], user["id"]);
    let session = &body["session"];
    for field in ["id", "created_at", "expires_at"] {
        assert!(
            session.get(field).is_some(),
            "session lacks {field}: {body}"
        );
    }
    uuid::Uuid::parse_str(session["id"].as_str().expect("session.id string"))
        .expect("session.id is a UUID");
    assert_ne!(
        session["id"].as_str().unwrap(),
        cookie.value,
        "the public session id must not be the secret token"
    );
    assert!(
        !body.to_string().contains(&cookie.value),
        "the token appears in the body: {body}"
    );

    assert!(
        cookie.value.len() >= 22,
        "token too short: {:?}",
        cookie.value
    );
    assert!(cookie.attribute("httponly").is_some(), "{}", cookie.raw);
    assert_eq!(
        cookie.attribute("samesite").map(str::to_ascii_lowercase),
        Some("lax".into()),
        "{}",
        cookie.raw
    );
    assert_eq!(cookie.attribute("path"), Some("/"), "{}", cookie.raw);
    assert!(cookie.attribute("domain").is_none(), "{}", cookie.raw);
    assert!(
        cookie.attribute("secure").is_none(),
        "secure_cookie = false, yet: {}",
        cookie.raw
    );
    let max_age = cookie.max_age().expect("Max-Age");
    assert!(
        (3595..=3600).contains(&max_age),
        "Max-Age {max_age} should be the 1h idle timeout: {}",
        cookie.raw
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_accepts_the_email_in_any_case() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    gateway
        .login(&format!(" {} ", email.to_uppercase()), &password)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_login_issues_a_different_token() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let first = gateway.login(&email, &password).await;
    let second = gateway.login(&email, &password).await;
    assert_ne!(first, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_email_get_the_same_401_invalid_credentials() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    gateway.register(&email, &strong_password()).await;

    let wrong_password = gateway
        .post_json(
            "/auth/login",
            &json!({"email": email, "password": "definitely-wrong-1"}),
            None,
        )
        .await;
    assert!(
        session_cookie(&wrong_password).is_none(),
        "no cookie on failure"
    );
    let wrong_password_status = wrong_password.status();
    let wrong_password_body = wrong_password.text().await.unwrap();

    let unknown_email = gateway
        .post_json(
            "/auth/login",
            &json!({"email": unique_email(), "password": "definitely-wrong-1"}),
            None,
        )
        .await;
    let unknown_email_status = unknown_email.status();
    let unknown_email_body = unknown_email.text().await.unwrap();

    assert_eq!(wrong_password_status, 401);
    assert_eq!(unknown_email_status, 401);
    assert_eq!(
        wrong_password_body, unknown_email_body,
        "the bodies must not reveal whether the account exists"
    );
    let value: Value = serde_json::from_str(&wrong_password_body).unwrap();
    assert_eq!(value["error"]["code"], "invalid_credentials");
    assert!(value["error"]["message"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_returns_the_user_both_nested_and_at_top_level() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let response = gateway.get("/auth/user/me", Some(&user.token)).await;
    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_public_user(&body["user"], &user.email);
    assert_eq!(body["user"]["id"], user.id);
    assert_eq!(body["id"], user.id, "top-level id: {body}");
    assert_eq!(
        body["email"],
        user.email.as_str(),
        "top-level email: {body}"
    );
    assert_no_password_material(&body);
    assert!(!body.to_string().contains(&user.token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_without_a_cookie_is_401_unauthenticated() {
    let gateway = Gateway::start().await;
    let response = gateway.get("/auth/user/me", None).await;
    assert_json_error(response, 401, "unauthenticated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_with_a_forged_cookie_is_401_unauthenticated() {
    let gateway = Gateway::start().await;
    for forged in [
        uuid::Uuid::new_v4().to_string(),
        random_hex(32),
        "x".into(),
        "%00%0d%0a".into(),
    ] {
        let response = gateway.get("/auth/user/me", Some(&forged)).await;
        assert_json_error(response, 401, "unauthenticated").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_answers_204_and_clears_the_cookie() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let response = gateway.logout(Some(&user.token)).await;
    assert_eq!(response.status(), 204);
    let cookie = session_cookie(&response).expect("logout sends a clearing Set-Cookie");
    assert!(
        cookie.is_clearing(),
        "not a clearing cookie: {}",
        cookie.raw
    );
    assert_eq!(cookie.max_age(), Some(0), "{}", cookie.raw);
    assert_ne!(cookie.value, user.token, "{}", cookie.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_without_a_session_is_401_unauthenticated() {
    let gateway = Gateway::start().await;
    let response = gateway.logout(None).await;
    assert_json_error(response, 401, "unauthenticated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_requests_never_reach_the_upstream() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    gateway.get("/auth/user/me", Some(&user.token)).await;
    gateway.get("/auth/no-such-endpoint", None).await;
    gateway.logout(Some(&user.token)).await;
    assert_eq!(
        gateway.echo.request_count(),
        0,
        "upstream saw: {:?}",
        gateway.echo.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_auth_path_is_404_json() {
    let gateway = Gateway::start().await;
    for path in ["/auth/nope", "/auth/register/extra", "/auth/v2/login"] {
        let response = gateway.get(path, None).await;
        let status = response.status().as_u16();
        let body = json_body(response).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_logout_is_refused_with_403() {
    // contract §5: a state-changing /auth request must carry a matching Origin (or Referer), or be
    // JSON. A page on evil.example posting to /auth/logout carries neither.
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let response = gateway
        .request(
            "POST",
            "/auth/logout",
            Some(&user.token),
            &[("Origin", "http://evil.example")],
            None,
        )
        .await;
    assert_json_error_status(response, 403).await;
    let me = gateway.get("/auth/user/me", Some(&user.token)).await;
    assert_eq!(me.status(), 200, "the session must survive a forged logout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_form_login_is_refused_with_403() {
    // Login CSRF: an attacker signs the victim into the attacker's account.
    let gateway = Gateway::start().await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("email", &email)
        .append_pair("password", &password)
        .finish();
    let response = gateway
        .request(
            "POST",
            "/auth/login",
            None,
            &[("Origin", "http://evil.example")],
            Some(("application/x-www-form-urlencoded", body.into_bytes())),
        )
        .await;
    assert!(
        session_cookie(&response).is_none(),
        "a cross-site login set a cookie"
    );
    // 415 if forms are not accepted at all; either way no session.
    assert_refused(response, &[403, 415]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_origin_logout_by_referer_is_accepted() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let referer = format!("{}/auth/devices", gateway.public_origin());
    let response = gateway
        .request(
            "POST",
            "/auth/logout",
            Some(&user.token),
            &[("Referer", referer.as_str())],
            None,
        )
        .await;
    assert_eq!(response.status(), 204);
}
