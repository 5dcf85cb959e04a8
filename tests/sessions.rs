//! Session lifetime and storage (contract §4): sliding idle expiry, absolute lifetime, logout,
//! fixation, the per-user cap, and what the stores are allowed to remember about a token.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

async fn status_of(gateway: &Gateway, path: &str, token: &str) -> u16 {
    gateway
        .get_with(path, Some(token), &[("Accept", "application/json")])
        .await
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_keeps_a_session_alive_past_the_idle_timeout_and_idleness_ends_it() {
    let gateway = GatewayOptions::new().idle_timeout("2s").start().await;
    let user = gateway.signed_in_user().await;

    // Active for 4 s, twice the idle timeout: every request slides the expiry.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let response = gateway.get("/keepalive", Some(&user.token)).await;
        assert_eq!(
            response.status(),
            200,
            "an active session expired after {:?}",
            started.elapsed()
        );
        let cookie = session_cookie(&response).expect("refreshed cookie");
        let max_age = cookie.max_age().expect("Max-Age");
        assert!(
            (1..=2).contains(&max_age),
            "Max-Age {max_age} should track the 2 s idle timeout: {}",
            cookie.raw
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    // Idle for well over 2 s.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let response = gateway
        .get_with(
            "/keepalive",
            Some(&user.token),
            &[("Accept", "application/json")],
        )
        .await;
    assert_json_error(response, 401, "unauthenticated").await;
    let me = gateway.get("/auth/user/me", Some(&user.token)).await;
    assert_json_error(me, 401, "unauthenticated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_me_also_slides_the_idle_expiry() {
    let gateway = GatewayOptions::new().idle_timeout("2s").start().await;
    let user = gateway.signed_in_user().await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let status = gateway
            .get("/auth/user/me", Some(&user.token))
            .await
            .status();
        assert_eq!(status, 200, "expired after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

/// Logs in and keeps the session busy (a request every 300 ms): it must work for the first
/// 2 s, then end soon after the 3 s absolute lifetime (by 6 s at the latest) and stay ended.
async fn assert_absolute_lifetime_of_3s_ends_a_busy_session(gateway: &Gateway) {
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let logged_in_at = Instant::now();
    let token = gateway.login(&email, &password).await;

    while logged_in_at.elapsed() < Duration::from_millis(2000) {
        assert_eq!(
            status_of(gateway, "/busy", &token).await,
            200,
            "ended early, {:?} after login",
            logged_in_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    loop {
        let status = status_of(gateway, "/busy", &token).await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            logged_in_at.elapsed() < Duration::from_secs(6),
            "the session outlived its 3 s absolute timeout while active"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(status_of(gateway, "/busy", &token).await, 401);
    let me = gateway.get("/auth/user/me", Some(&token)).await;
    assert_json_error(me, 401, "unauthenticated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_absolute_timeout_ends_even_an_active_session() {
    // Idle as long as the lifetime: only the absolute limit can end a session used every 300 ms.
    let gateway = GatewayOptions::new()
        .idle_timeout("3s")
        .absolute_timeout("3s")
        .start()
        .await;
    assert_absolute_lifetime_of_3s_ends_a_busy_session(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_timeout_shorter_than_the_idle_timeout_is_honoured() {
    // e.g. "sign in again every 8 h, however active" with a 24 h idle timeout.
    let gateway = GatewayOptions::new()
        .idle_timeout("1h")
        .absolute_timeout("3s")
        .start()
        .await;
    assert_absolute_lifetime_of_3s_ends_a_busy_session(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_logout_the_old_cookie_is_refused_everywhere() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    assert_eq!(status_of(&gateway, "/inbox", &user.token).await, 200);

    let logout = gateway.logout(Some(&user.token)).await;
    assert_eq!(logout.status(), 204);

    let me = gateway.get("/auth/user/me", Some(&user.token)).await;
    assert_json_error(me, 401, "unauthenticated").await;
    let proxied = gateway
        .get_with(
            "/inbox",
            Some(&user.token),
            &[("Accept", "application/json")],
        )
        .await;
    assert_json_error(proxied, 401, "unauthenticated").await;
    let again = gateway.logout(Some(&user.token)).await;
    assert_json_error(again, 401, "unauthenticated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_only_that_session() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let laptop = gateway.login(&email, &password).await;
    let phone = gateway.login(&email, &password).await;

    let logout = gateway.logout(Some(&laptop)).await;
    assert_eq!(logout.status(), 204);
    assert_eq!(status_of(&gateway, "/inbox", &laptop).await, 401);
    assert_eq!(status_of(&gateway, "/inbox", &phone).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_token_is_never_stored_only_its_sha256() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    assert_eq!(status_of(&gateway, "/anything", &user.token).await, 200);

    if only_on(
        Backend::Production,
        "the live session's Redis keys (the embedded pair keeps live sessions in the process)",
    ) {
        let redis = gateway.redis_dump().await;
        assert!(
            !redis.is_empty(),
            "no Redis keys under {}: are live sessions kept in Redis?",
            gateway.redis_prefix
        );
        for (key, value) in &redis {
            assert!(!key.contains(&user.token), "token in Redis key {key}");
            assert!(
                !value.contains(&user.token),
                "token in Redis value of {key}: {value}"
            );
        }
    }

    // Every database row, and on the embedded pair the SQLite file's bytes.
    for (place, text) in gateway.store_dump().await {
        assert!(
            !text.contains(&user.token),
            "token stored in {place}: {text}"
        );
    }

    let sessions = gateway
        .query(
            "SELECT token_hash, status FROM sessions WHERE user_id = $1",
            &[uuid_bind(&user.id)],
        )
        .await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].text("token_hash"), sha256_hex(&user.token));
    assert_eq!(sessions[0].text("status"), "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_marks_the_session_record_logged_out() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let logout = gateway.logout(Some(&user.token)).await;
    assert_eq!(logout.status(), 204);

    let token_hash = sha256_hex(&user.token);
    let row = eventually(
        Duration::from_secs(5),
        "the session record for the token to be 'logged_out'",
        || async {
            let row = gateway
                .query_opt(
                    "SELECT status, user_id FROM sessions WHERE token_hash = $1",
                    &[token_hash.as_str().into()],
                )
                .await?;
            (row.text("status") == "logged_out").then_some(row)
        },
    )
    .await;
    assert_eq!(row.text("user_id"), user.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_removes_the_live_session_from_redis() {
    if !require_backend(
        Backend::Production,
        "reads Redis (the embedded pair keeps live sessions in the process, where a logout's \
         effect is what the other logout tests check)",
    ) {
        return;
    }
    let gateway = Gateway::start().await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let login = gateway.login_full(&email, &password).await;
    let public_id = login.body["session"]["id"].as_str().unwrap().to_string();
    let hash = sha256_hex(&login.token);
    // The live session is found by its token's SHA-256 and/or its public id.
    let mentions_session = |dump: &[(String, String)]| {
        dump.iter().any(|(key, value)| {
            key.contains(&hash)
                || value.contains(&hash)
                || key.contains(&public_id)
                || value.contains(&public_id)
        })
    };
    let before = gateway.redis_dump().await;
    assert!(
        mentions_session(&before),
        "no Redis entry mentions the session (hash {hash}, id {public_id}): {before:?}"
    );
    let logout = gateway.logout(Some(&login.token)).await;
    assert_eq!(logout.status(), 204);
    let after = gateway.redis_dump().await;
    assert!(
        !mentions_session(&after),
        "the session survives in Redis after logout: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_a_presented_cookie_revokes_it_and_issues_a_new_token() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let old = gateway.login(&email, &password).await;

    let response = gateway
        .post_json(
            "/auth/login",
            &json!({"email": email, "password": password}),
            Some(&old),
        )
        .await;
    assert_eq!(response.status(), 200);
    let new = session_cookie(&response).expect("new cookie").value;
    assert_ne!(new, old, "session fixation: the token did not change");
    assert_eq!(status_of(&gateway, "/inbox", &new).await, 200);
    assert_eq!(
        status_of(&gateway, "/inbox", &old).await,
        401,
        "the cookie presented at login must be revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_beyond_the_session_cap_evicts_the_oldest_session() {
    let gateway = GatewayOptions::new()
        .max_sessions_per_user(2, "evict_oldest")
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let first = gateway.login(&email, &password).await;
    let second = gateway.login(&email, &password).await;
    // Make `second` the more recently active of the two.
    assert_eq!(status_of(&gateway, "/x", &first).await, 200);
    assert_eq!(status_of(&gateway, "/x", &second).await, 200);
    let third = gateway.login(&email, &password).await;

    assert_eq!(status_of(&gateway, "/x", &third).await, 200);
    assert_eq!(status_of(&gateway, "/x", &second).await, 200);
    assert_eq!(
        status_of(&gateway, "/x", &first).await,
        401,
        "the least recently active session should have been evicted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_beyond_the_session_cap_is_refused_with_409_under_the_reject_policy() {
    let gateway = GatewayOptions::new()
        .max_sessions_per_user(1, "reject")
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let first = gateway.login(&email, &password).await;
    let response = gateway
        .post_json(
            "/auth/login",
            &json!({"email": email, "password": password}),
            None,
        )
        .await;
    assert!(session_cookie(&response).is_none());
    assert_json_error_status(response, 409).await;
    assert_eq!(status_of(&gateway, "/x", &first).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_works_on_every_gateway_sharing_the_stores_and_revocation_is_immediate() {
    if !require_backend(Backend::Production, "several instances share Redis") {
        return;
    }
    let a = Gateway::start().await;
    let b = GatewayOptions::new().sharing_stores_with(&a).start().await;
    let user = a.signed_in_user().await;

    let on_b = echoed(b.get("/x", Some(&user.token)).await).await;
    assert_eq!(on_b.header("x-user-id"), Some(user.id.as_str()));

    let logout = b.logout(Some(&user.token)).await;
    assert_eq!(logout.status(), 204);
    assert_eq!(status_of(&a, "/x", &user.token).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_with_separate_stores_do_not_share_sessions() {
    // Guards the isolation the rest of the suite relies on.
    let a = Gateway::start().await;
    let b = Gateway::start().await;
    let user = a.signed_in_user().await;
    assert_eq!(status_of(&a, "/x", &user.token).await, 200);
    assert_eq!(status_of(&b, "/x", &user.token).await, 401);
}

/// A restart keeps accounts and session records on both pairs. Live sessions survive it only
/// where they live outside the process (Redis); on the embedded pair a session open at the
/// restart is gone: its cookie gets the same 401 as an expired one, the user signs in again,
/// and the record is marked expired by the expiry job rather than left `active`. Login
/// lockouts live beside the sessions and go the same way (README, differences between pairs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_accounts_and_records_and_live_sessions_only_outside_the_process() {
    let mut gateway = GatewayOptions::new()
        .login_protection(3, "15m", "15m", 1000)
        .session_setting("expiry_check_interval = \"500ms\"")
        .start()
        .await;
    let user = gateway.signed_in_user().await;
    let session_id = json_body(gateway.get("/auth/user/me", Some(&user.token)).await).await
        ["session"]["id"]
        .as_str()
        .expect("session.id")
        .to_string();
    let locked = unique_email();
    let locked_password = strong_password();
    gateway.register(&locked, &locked_password).await;
    for i in 0..3 {
        let response = login_attempt(&gateway, &locked, &format!("wrong-guess-{i}")).await;
        assert_json_error(response, 401, "invalid_credentials").await;
    }
    assert_refused_429(
        login_attempt(&gateway, &locked, &locked_password).await,
        "account_locked",
        15 * 60,
    )
    .await;

    gateway.restart().await;

    // Accounts are durable on both pairs.
    let fresh = gateway.login(&user.email, &user.password).await;
    assert_eq!(status_of(&gateway, "/x", &fresh).await, 200);
    match backend() {
        Backend::Production => {
            assert_eq!(
                status_of(&gateway, "/x", &user.token).await,
                200,
                "a live session in Redis survives a restart"
            );
            assert_refused_429(
                login_attempt(&gateway, &locked, &locked_password).await,
                "account_locked",
                15 * 60,
            )
            .await;
        }
        Backend::Embedded => {
            let response = gateway
                .get_with("/x", Some(&user.token), &[("Accept", "application/json")])
                .await;
            assert_json_error(response, 401, "unauthenticated").await;
            let row = eventually(
                Duration::from_secs(15),
                "the record of the session lost at the restart to be marked expired",
                || async {
                    let row = gateway
                        .query_one(
                            "SELECT status, end_reason, ended_at FROM sessions WHERE id = $1",
                            &[uuid_bind(&session_id)],
                        )
                        .await;
                    (row.text("status") != "active").then_some(row)
                },
            )
            .await;
            // The expiry job cannot tell a restart from idleness: the record was live, the
            // session is gone before its absolute expiry.
            assert_eq!(row.text("status"), "expired", "{row:?}");
            assert_eq!(row.opt_text("end_reason").as_deref(), Some("idle_timeout"));
            assert!(row.opt_time("ended_at").is_some(), "{row:?}");
            // The lockout was in the process too.
            gateway.login(&locked, &locked_password).await;
        }
    }
    // Either way the session list shows what works now, and the fresh session's record is
    // active.
    let list = json_body(gateway.get("/auth/user/sessions", Some(&fresh)).await).await;
    let expected = backend().pick(2, 1);
    assert_eq!(list["total_active_sessions"], expected, "{list}");
    let active = gateway
        .count(
            "SELECT count(*) FROM sessions WHERE user_id = $1 AND status = 'active'",
            &[uuid_bind(&user.id)],
        )
        .await;
    assert_eq!(active, expected, "active session records after the restart");
}

/// The in-process session store is bounded by `storage.max_sessions`; one more sign-in gets
/// 503 `session_store_full` and leaves no session behind, the open sessions keep working, and
/// a logout makes room. Redis has no such setting (its own memory bounds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_session_store_refuses_sign_ins_beyond_storage_max_sessions() {
    if !require_backend(
        Backend::Embedded,
        "storage.max_sessions bounds the in-process session store only",
    ) {
        return;
    }
    let gateway = Gateway::start_with_edited(GatewayOptions::new(), |config| {
        config.replacen("[storage]\n", "[storage]\nmax_sessions = 2\n", 1)
    })
    .await;
    let first = gateway.signed_in_user().await;
    let second = gateway.signed_in_user().await;
    let response = login_attempt(&gateway, &first.email, &first.password).await;
    assert!(
        session_cookie(&response).is_none(),
        "a refused sign-in set a session cookie"
    );
    assert_json_error(response, 503, "session_store_full").await;
    assert_eq!(status_of(&gateway, "/x", &first.token).await, 200);
    assert_eq!(status_of(&gateway, "/x", &second.token).await, 200);
    assert_eq!(
        gateway.count("SELECT count(*) FROM sessions", &[]).await,
        2,
        "the refused sign-in left a session record"
    );

    assert_eq!(gateway.logout(Some(&second.token)).await.status(), 204);
    let again = gateway.login(&first.email, &first.password).await;
    assert_eq!(status_of(&gateway, "/x", &again).await, 200);
}
