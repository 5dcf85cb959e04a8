//! Attack: session fixation. The attacker plants a session cookie he knows in the victim's
//! browser (his own live session, or a value he made up) and waits for the victim to sign in,
//! hoping the victim's session ends up under a token he holds.
//!
//! Guarantee (contract §4): every sign-in issues a new random token (≥ 128 bits); a session
//! cookie presented at sign-in is revoked, and a made-up value is never adopted.

mod common;

use common::*;
use serde_json::json;

/// Signs in as `email` carrying `planted` as the session cookie; returns the new token.
async fn login_with_planted_cookie(
    gateway: &Gateway,
    email: &str,
    password: &str,
    planted: &str,
) -> String {
    let response = gateway
        .request(
            "POST",
            "/auth/login",
            Some(planted),
            &[],
            Some((
                "application/json",
                serde_json::to_vec(&json!({"email": email, "password": password})).unwrap(),
            )),
        )
        .await;
    let status = response.status();
    let cookie = session_cookie(&response);
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "login with a planted cookie: {body}");
    cookie.expect("login set no session cookie").value
}

async fn user_id_behind(gateway: &Gateway, token: &str) -> Option<String> {
    let response = gateway.get("/app", Some(token)).await;
    if response.status() != 200 {
        return None;
    }
    echoed(response)
        .await
        .header("x-user-id")
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_session_cookie_is_revoked_when_the_victim_signs_in() {
    let gateway = Gateway::start().await;
    // The attacker's own, live session, planted in the victim's browser.
    let attacker = gateway.signed_in_user().await;
    let victim_email = unique_email();
    let victim_password = strong_password();
    let victim = gateway.register(&victim_email, &victim_password).await;
    let victim_id = victim["id"].as_str().unwrap();

    let issued =
        login_with_planted_cookie(&gateway, &victim_email, &victim_password, &attacker.token).await;
    assert_ne!(issued, attacker.token, "the planted token was kept");
    assert_eq!(
        user_id_behind(&gateway, &issued).await.as_deref(),
        Some(victim_id),
        "the new token is not the victim's session"
    );
    // The token the attacker holds is dead: neither the victim's nor his own any more.
    assert_eq!(
        gateway.get("/app", Some(&attacker.token)).await.status(),
        401
    );
    assert_eq!(
        gateway
            .get("/auth/user/me", Some(&attacker.token))
            .await
            .status(),
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_victims_earlier_session_presented_at_sign_in_is_replaced_not_reused() {
    let gateway = Gateway::start().await;
    // The attacker learnt the victim's current token (e.g. on a shared computer) and expects
    // it to stay valid after the victim signs in again.
    let victim = gateway.signed_in_user().await;
    let issued =
        login_with_planted_cookie(&gateway, &victim.email, &victim.password, &victim.token).await;
    assert_ne!(issued, victim.token);
    assert_eq!(gateway.get("/app", Some(&victim.token)).await.status(), 401);
    assert_eq!(gateway.get("/app", Some(&issued)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_up_token_is_never_adopted() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;

    let invented = [
        "a".repeat(68),                                        // the shape of a real token
        format!("{}{}", "0123", "0123456789abcdef".repeat(4)), // likewise
        "a".repeat(64),                                        // a token from before slot tags
        "00000000-0000-4000-8000-000000000000".to_string(),    // a UUID
        "attacker-chosen".to_string(),
    ];
    for planted in &invented {
        let issued = login_with_planted_cookie(&gateway, &email, &password, planted).await;
        assert_ne!(&issued, planted, "the invented token was adopted");
        assert_eq!(
            gateway.get("/app", Some(planted)).await.status(),
            401,
            "the invented token {planted:?} opens a session"
        );
        assert_eq!(gateway.get("/app", Some(&issued)).await.status(), 200);
    }
    // Nothing under the invented values' hashes was stored either (Redis keys and values,
    // database rows and, on the embedded pair, the SQLite file's bytes).
    let dump = gateway.store_dump().await;
    for planted in &invented {
        let digest = sha256_hex(planted);
        for (place, text) in &dump {
            assert!(
                !text.contains(&digest) && !text.contains(planted.as_str()),
                "the invented token {planted:?} is stored in {place}: {text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_in_form_also_revokes_a_planted_cookie() {
    let gateway = Gateway::start().await;
    let attacker = gateway.signed_in_user().await;
    let victim_email = unique_email();
    let victim_password = strong_password();
    gateway.register(&victim_email, &victim_password).await;

    let page = gateway.get("/auth/login", None).await;
    let csrf = set_cookies(&page)
        .into_iter()
        .find(|c| c.name == "authgate_csrf")
        .expect("CSRF cookie")
        .value;
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf_token", &csrf)
        .append_pair("email", &victim_email)
        .append_pair("password", &victim_password)
        .finish();
    let cookie = format!("authgate_csrf={csrf}; {}", cookie_header(&attacker.token));
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
    let issued = session_cookie(&response)
        .expect("a new session cookie")
        .value;
    assert_ne!(issued, attacker.token);
    assert_eq!(
        gateway.get("/app", Some(&attacker.token)).await.status(),
        401
    );
    assert_eq!(gateway.get("/app", Some(&issued)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sign_in_gets_a_fresh_unguessable_token() {
    let gateway = GatewayOptions::new()
        .login_protection(1000, "15m", "15m", 1000)
        .max_sessions_per_user(100, "evict_oldest")
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..25 {
        let token = gateway.login(&email, &password).await;
        // ≥ 128 bits: at least 32 hex digits (or 22 base64 characters) of randomness.
        assert!(
            token.len() >= 32 && token.chars().all(|c| c.is_ascii_alphanumeric()),
            "token {token:?} is too short or oddly shaped"
        );
        assert!(seen.insert(token.clone()), "a token was issued twice");
    }
}
