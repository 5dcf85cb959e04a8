//! Managing one's own sessions (contract §3): list them, revoke one or all others, change the
//! password; and the CSRF rule that guards these state changes (contract §5).

mod common;

use common::*;
use serde_json::{json, Value};

const LAPTOP_UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const PHONE_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";

/// Logs in with a given User-Agent; returns (token, public session id).
async fn login_from(
    gateway: &Gateway,
    email: &str,
    password: &str,
    agent: &str,
) -> (String, String) {
    let response = gateway
        .request(
            "POST",
            "/auth/login",
            None,
            &[("User-Agent", agent)],
            Some((
                "application/json",
                json!({"email": email, "password": password})
                    .to_string()
                    .into_bytes(),
            )),
        )
        .await;
    assert_eq!(response.status(), 200);
    let token = session_cookie(&response).expect("cookie").value;
    let body = json_body(response).await;
    (token, body["session"]["id"].as_str().unwrap().to_string())
}

/// A same-origin request, as the built-in pages (or any careful client) would send it.
async fn same_origin(
    gateway: &Gateway,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let origin = gateway.public_origin();
    gateway
        .request(
            method,
            path,
            Some(token),
            &[("Origin", origin.as_str())],
            body.map(|b| ("application/json", b.to_string().into_bytes())),
        )
        .await
}

async fn status_of(gateway: &Gateway, token: &str) -> u16 {
    gateway
        .get("/auth/user/me", Some(token))
        .await
        .status()
        .as_u16()
}

struct Account {
    email: String,
    password: String,
    laptop: (String, String),
    phone: (String, String),
}

async fn account_on_two_devices(gateway: &Gateway) -> Account {
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let laptop = login_from(gateway, &email, &password, LAPTOP_UA).await;
    let phone = login_from(gateway, &email, &password, PHONE_UA).await;
    Account {
        email,
        password,
        laptop,
        phone,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_lists_my_live_sessions_and_marks_the_current_one() {
    let gateway = Gateway::start().await;
    let account = account_on_two_devices(&gateway).await;

    let response = gateway
        .get("/auth/user/sessions", Some(&account.phone.0))
        .await;
    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    let sessions = body["sessions"].as_array().expect("sessions array");
    assert_eq!(sessions.len(), 2, "{body}");
    assert_eq!(body["total_active_sessions"], 2, "{body}");
    for session in sessions {
        for field in [
            "id",
            "user_agent",
            "ip",
            "created_at",
            "last_activity",
            "expires_at",
            "current",
        ] {
            assert!(
                session.get(field).is_some(),
                "session lacks {field}: {session}"
            );
        }
    }
    let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1, "{body}");
    assert_eq!(current[0]["id"], account.phone.1.as_str());
    assert_eq!(current[0]["user_agent"], PHONE_UA);
    let text = body.to_string();
    assert!(!text.contains(&account.phone.0) && !text.contains(&account.laptop.0));
    assert!(
        !text.contains(&sha256_hex(&account.phone.0)),
        "token hash exposed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_never_lists_another_users_sessions() {
    let gateway = Gateway::start().await;
    let mine = gateway.signed_in_user().await;
    let theirs = account_on_two_devices(&gateway).await;
    let body = json_body(gateway.get("/auth/user/sessions", Some(&mine.token)).await).await;
    assert_eq!(body["sessions"].as_array().map(Vec::len), Some(1), "{body}");
    let text = body.to_string();
    assert!(!text.contains(&theirs.laptop.1) && !text.contains(&theirs.phone.1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_one_session_ends_it_at_once_and_keeps_mine() {
    let gateway = Gateway::start().await;
    let account = account_on_two_devices(&gateway).await;
    let path = format!("/auth/user/sessions/{}", account.laptop.1);
    let response = same_origin(&gateway, "DELETE", &path, &account.phone.0, None).await;
    assert_eq!(response.status(), 204);
    assert_eq!(status_of(&gateway, &account.laptop.0).await, 401);
    assert_eq!(status_of(&gateway, &account.phone.0).await, 200);
    let proxied = gateway
        .get_with(
            "/app",
            Some(&account.laptop.0),
            &[("Accept", "application/json")],
        )
        .await;
    assert_json_error(proxied, 401, "unauthenticated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_another_users_session_is_404_and_changes_nothing() {
    let gateway = Gateway::start().await;
    let attacker = gateway.signed_in_user().await;
    let victim = account_on_two_devices(&gateway).await;
    for id in [victim.laptop.1.clone(), uuid::Uuid::new_v4().to_string()] {
        let path = format!("/auth/user/sessions/{id}");
        let response = same_origin(&gateway, "DELETE", &path, &attacker.token, None).await;
        assert_json_error_status(response, 404).await;
    }
    assert_eq!(status_of(&gateway, &victim.laptop.0).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_all_other_sessions_reports_the_count_and_keeps_mine() {
    let gateway = Gateway::start().await;
    let account = account_on_two_devices(&gateway).await;
    let third = login_from(&gateway, &account.email, &account.password, "curl/8.0").await;

    let response = same_origin(&gateway, "DELETE", "/auth/user/sessions", &third.0, None).await;
    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_eq!(body["revoked"], 2, "{body}");
    assert_eq!(status_of(&gateway, &account.laptop.0).await, 401);
    assert_eq!(status_of(&gateway, &account.phone.0).await, 401);
    assert_eq!(status_of(&gateway, &third.0).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_password_revokes_every_other_session() {
    let gateway = Gateway::start().await;
    let account = account_on_two_devices(&gateway).await;
    let new_password = strong_password();
    let response = same_origin(
        &gateway,
        "POST",
        "/auth/user/password",
        &account.phone.0,
        Some(json!({"current_password": account.password, "new_password": new_password})),
    )
    .await;
    assert_eq!(response.status(), 204);
    assert_eq!(status_of(&gateway, &account.laptop.0).await, 401);
    assert_eq!(status_of(&gateway, &account.phone.0).await, 200);

    let old = gateway
        .post_json(
            "/auth/login",
            &json!({"email": account.email, "password": account.password}),
            None,
        )
        .await;
    assert_json_error(old, 401, "invalid_credentials").await;
    gateway.login(&account.email, &new_password).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_password_needs_the_current_one() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let response = same_origin(
        &gateway,
        "POST",
        "/auth/user/password",
        &user.token,
        Some(json!({"current_password": "not-my-password", "new_password": strong_password()})),
    )
    .await;
    let status = response.status().as_u16();
    assert!((400..500).contains(&status), "{status}");
    assert_json_error_status(response, status).await;
    gateway.login(&user.email, &user.password).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_password_must_meet_the_policy() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let response = same_origin(
        &gateway,
        "POST",
        "/auth/user/password",
        &user.token,
        Some(json!({"current_password": user.password, "new_password": "short"})),
    )
    .await;
    let error = assert_json_error_any(response, 400, &["invalid_request", "invalid_field"]).await;
    assert!(
        error["message"].as_str().unwrap().contains("password"),
        "{error}"
    );
    gateway.login(&user.email, &user.password).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_and_ips_list_where_i_signed_in_from() {
    let gateway = Gateway::start().await;
    let account = account_on_two_devices(&gateway).await;

    let devices = gateway
        .get("/auth/user/devices", Some(&account.phone.0))
        .await;
    assert_eq!(devices.status(), 200);
    let devices = json_body(devices).await.to_string();
    assert!(devices.contains("iPhone"), "{devices}");
    assert!(devices.contains("Windows"), "{devices}");

    let ips = gateway.get("/auth/user/ips", Some(&account.phone.0)).await;
    assert_eq!(ips.status(), 200);
    let ips = json_body(ips).await.to_string();
    assert!(ips.contains("127.0.0.1"), "{ips}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_management_needs_a_session() {
    let gateway = Gateway::start().await;
    for (method, path) in [
        ("GET", "/auth/user/sessions"),
        ("DELETE", "/auth/user/sessions"),
        (
            "DELETE",
            "/auth/user/sessions/00000000-0000-4000-8000-000000000000",
        ),
        ("GET", "/auth/user/devices"),
        ("GET", "/auth/user/ips"),
    ] {
        let response = gateway
            .request(
                method,
                path,
                None,
                &[("Origin", gateway.public_origin().as_str())],
                None,
            )
            .await;
        assert_json_error(response, 401, "unauthenticated").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_request_cannot_revoke_sessions() {
    let gateway = Gateway::start().await;
    let account = account_on_two_devices(&gateway).await;
    // A browser on evil.example sends the victim's cookie along (SameSite=Lax does not cover
    // every case); without a JSON body the Origin must match.
    let response = gateway
        .request(
            "DELETE",
            "/auth/user/sessions",
            Some(&account.phone.0),
            &[("Origin", "http://evil.example")],
            None,
        )
        .await;
    assert_json_error_status(response, 403).await;
    let form = gateway
        .request(
            "POST",
            "/auth/user/password",
            Some(&account.phone.0),
            &[("Origin", "http://evil.example")],
            Some((
                "application/x-www-form-urlencoded",
                format!(
                    "current_password={}&new_password=attacker-chosen-1",
                    account.password
                )
                .into_bytes(),
            )),
        )
        .await;
    assert_refused(form, &[403, 415]).await;
    assert_eq!(status_of(&gateway, &account.laptop.0).await, 200);
    gateway.login(&account.email, &account.password).await;
}
