//! Attack: a login in flight across a password change or a revoke-all. Someone holding an old
//! password (a phished one, say) starts a login; while its bcrypt check runs, the owner changes
//! the password, or signs out everywhere else. The login's check was made against the old
//! credentials, yet it would finish afterwards and keep a live session.
//!
//! Guarantee (issue 8.7): a login creates its session only if the credentials it verified are
//! still current at that moment, in one atomic step. Each user has a credential epoch in Redis;
//! revoke-all (used by "sign out other sessions" and by a password change) bumps it in the same
//! script that ends the sessions, a password change does so before and again after it stores
//! the new hash, and session creation refuses (409 `credentials_changed`) when the epoch the
//! login read before its bcrypt check is no longer current. A login also re-reads the account
//! after the check and refuses when the hash changed meanwhile. So such a login either fails or
//! its session is already dead: never a live session from a superseded password or from before
//! a revoke-all.
//!
//! The race is made likely, not left to luck: bcrypt cost 10 (a check takes a measurable
//! while), the victim's own request and a train of logins with the old password staggered over
//! the whole length of the change, several rounds; the test asserts that the race window was hit.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// bcrypt cost 10 on a 4-slot pool: every check takes long enough to land requests inside it.
fn slow_hashing(text: String) -> String {
    assert!(
        text.contains("bcrypt_cost = 4"),
        "harness config changed: no `bcrypt_cost = 4` in\n{text}"
    );
    text.replacen(
        "bcrypt_cost = 4",
        "bcrypt_cost = 10\nmax_concurrent_hashes = 4\nhash_queue_timeout = \"30s\"",
        1,
    )
}

/// Generous login limits (the test logs in a lot from 127.0.0.1) and a session cap that never
/// evicts the victim's own session.
fn options() -> GatewayOptions {
    GatewayOptions::new()
        .login_protection(100_000, "15m", "15m", 100_000)
        .max_sessions_per_user(500, "evict_oldest")
}

async fn start() -> Gateway {
    Gateway::start_with_edited(options(), slow_hashing).await
}

/// What became of one login with the old password.
#[derive(Debug)]
struct Attempt {
    sent: Instant,
    answered: Instant,
    status: u16,
    code: Option<String>,
    token: Option<String>,
}

/// A JSON login sent at `sent_after` from now, on its own task and connection.
fn spawn_login(
    gateway: &Gateway,
    email: &str,
    password: &str,
    sent_after: Duration,
) -> tokio::task::JoinHandle<Attempt> {
    let client = gateway.client.clone();
    let url = gateway.url("/auth/login");
    let body = json!({"email": email, "password": password});
    tokio::spawn(async move {
        tokio::time::sleep(sent_after).await;
        let sent = Instant::now();
        let response = client
            .post(url)
            .json(&body)
            .send()
            .await
            .expect("login request");
        let answered = Instant::now();
        let status = response.status().as_u16();
        let token = session_cookie(&response).map(|cookie| cookie.value);
        let text = response.text().await.unwrap();
        let code = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|value| value["error"]["code"].as_str().map(str::to_string));
        Attempt {
            sent,
            answered,
            status,
            code,
            token,
        }
    })
}

/// Whether a session token still gets through to a protected route.
async fn alive(gateway: &Gateway, token: &str) -> bool {
    let status = gateway
        .get("/app/private", Some(token))
        .await
        .status()
        .as_u16();
    assert!(
        status == 200 || status == 401,
        "protected route answered {status}"
    );
    status == 200
}

/// How long one login takes here (bcrypt cost 10, debug build, shared cores): the unit the
/// staggering is measured in.
async fn login_duration(gateway: &Gateway, email: &str, password: &str) -> Duration {
    let mut fastest = Duration::MAX;
    for _ in 0..2 {
        let started = Instant::now();
        gateway.login(email, password).await;
        fastest = fastest.min(started.elapsed());
    }
    fastest
}

/// Asserts what every login with the old password may end in once the change or revoke-all has
/// answered: refused, or a session that is dead now.
async fn assert_no_live_session(gateway: &Gateway, attempts: &[Attempt], what: &str) {
    for attempt in attempts {
        match attempt.status {
            200 => {
                let token = attempt.token.as_deref().expect("a 200 login sets a cookie");
                assert!(
                    !alive(gateway, token).await,
                    "{what}: a login with the old password, sent {:?} before the end, kept a \
                     live session: {attempt:?}",
                    attempt.answered - attempt.sent
                );
            }
            401 => assert_eq!(attempt.code.as_deref(), Some("invalid_credentials")),
            409 => assert_eq!(attempt.code.as_deref(), Some("credentials_changed")),
            other => panic!("{what}: unexpected answer {other} to a login: {attempt:?}"),
        }
    }
}

/// One round: the victim changes the password through `victim_token` while logins with the old
/// password are sent every `step` from the start. Returns the logins and when the change
/// was answered.
async fn password_change_round(
    gateway: &Gateway,
    email: &str,
    old_password: &str,
    new_password: &str,
    victim_token: &str,
    step: Duration,
    logins: u32,
) -> (Vec<Attempt>, Instant) {
    let attempts: Vec<_> = (0..logins)
        .map(|i| spawn_login(gateway, email, old_password, step * i))
        .collect();
    let response = gateway
        .post_json(
            "/auth/user/password",
            &json!({"current_password": old_password, "new_password": new_password}),
            Some(victim_token),
        )
        .await;
    let changed = Instant::now();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(status, 204, "password change: {body}");
    let mut results = Vec::new();
    for attempt in attempts {
        results.push(attempt.await.expect("login task"));
    }
    (results, changed)
}

/// Logins that verified the old password (200 or 409) but were answered after the password
/// change was: the ones that finished across it.
fn across(attempts: &[Attempt], end: Instant) -> usize {
    attempts
        .iter()
        .filter(|a| a.answered > end && (a.status == 200 || a.status == 409))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_verified_against_the_old_password_keeps_no_session_after_a_password_change() {
    let gateway = start().await;
    let email = unique_email();
    let mut password = strong_password();
    gateway.register(&email, &password).await;
    let unit = login_duration(&gateway, &email, &password).await;
    eprintln!("one login at bcrypt cost 10 takes {unit:?}");

    let mut raced = 0;
    let mut refused = 0;
    // Rounds until the race has been hit (timing varies with the machine's load), at most 12.
    for round in 0..12 {
        if round >= 4 && raced > 0 {
            break;
        }
        let victim = gateway.login(&email, &password).await;
        let new_password = format!("{}-{round}", strong_password());
        // A change is two bcrypt runs (check, then hash); logins every third of a check cover
        // it from before its start to past its end.
        let (attempts, changed) = password_change_round(
            &gateway,
            &email,
            &password,
            &new_password,
            &victim,
            unit / 3,
            9,
        )
        .await;
        assert_no_live_session(&gateway, &attempts, &format!("round {round}")).await;
        raced += across(&attempts, changed);
        refused += attempts.iter().filter(|a| a.status == 409).count();
        eprintln!(
            "round {round}: {:?}",
            attempts
                .iter()
                .map(|a| (a.status, a.answered > changed))
                .collect::<Vec<_>>()
        );
        // The victim's own session survives its change; the new password works and stays.
        assert!(
            alive(&gateway, &victim).await,
            "the victim's own session died"
        );
        password = new_password;
        let fresh = gateway.login(&email, &password).await;
        assert!(alive(&gateway, &fresh).await);
    }
    assert!(
        raced > 0,
        "no login with the old password finished across a password change in 12 rounds: the \
         race was never exercised (timing unit {unit:?})"
    );
    eprintln!("{raced} logins verified the old password and finished across the change; {refused} were refused with 409");

    // Every refusal is metered and audited as such.
    if refused > 0 {
        let metrics = gateway.metrics().await;
        let counted = metric_value(
            &metrics,
            "authgate_logins_total",
            &[("outcome", "credentials_changed")],
        )
        .unwrap_or(0.0);
        assert_eq!(
            counted as usize, refused,
            "logins_total{{outcome=credentials_changed}}"
        );
        let gateway = &gateway;
        eventually(
            Duration::from_secs(15),
            "a login_credentials_changed audit event per refusal",
            || async move {
                let count = gateway
                    .count(
                        "SELECT count(*) FROM auth_events WHERE kind = 'login_credentials_changed'",
                        &[],
                    )
                    .await;
                (usize::try_from(count).unwrap() == refused).then_some(())
            },
        )
        .await;
    }
}

/// The same race through the sign-in form (the browser flow shares the login logic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_form_in_flight_across_a_password_change_keeps_no_session() {
    let gateway = start().await;
    let email = unique_email();
    let mut password = strong_password();
    gateway.register(&email, &password).await;
    let unit = login_duration(&gateway, &email, &password).await;
    let csrf = csrf_token(&gateway).await;
    let mut raced = 0;
    // Rounds until the race has been hit (timing varies with the machine's load), at most 12.
    for round in 0..12 {
        if round >= 3 && raced > 0 {
            break;
        }
        let victim = gateway.login(&email, &password).await;
        let new_password = format!("{}-form-{round}", strong_password());
        let forms: Vec<_> = (0..9u32)
            .map(|i| {
                let gateway_url = gateway.url("/auth/login");
                let client = gateway.client.clone();
                let origin = gateway.public_origin();
                let body: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("csrf_token", &csrf)
                    .append_pair("email", &email)
                    .append_pair("password", &password)
                    .finish();
                let cookie = format!("authgate_csrf={csrf}");
                let delay = unit / 3 * i;
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let response = client
                        .post(gateway_url)
                        .header("Cookie", cookie)
                        .header("Origin", origin)
                        .header("Content-Type", "application/x-www-form-urlencoded")
                        .body(body)
                        .send()
                        .await
                        .expect("form post");
                    let answered = Instant::now();
                    (
                        response.status().as_u16(),
                        session_cookie(&response).map(|c| c.value),
                        answered,
                    )
                })
            })
            .collect();
        let response = gateway
            .post_json(
                "/auth/user/password",
                &json!({"current_password": password, "new_password": new_password}),
                Some(&victim),
            )
            .await;
        let changed = Instant::now();
        assert_eq!(response.status(), 204);
        for form in forms {
            let (status, token, answered) = form.await.unwrap();
            match (status, token) {
                // Signed in: redirected with a cookie that must be dead by now.
                (303, Some(token)) => {
                    assert!(
                        !alive(&gateway, &token).await,
                        "round {round}: a sign-in form with the old password kept a live session"
                    );
                    if answered > changed {
                        raced += 1;
                    }
                }
                // Refused: the page again, with the problem explained (401 wrong password,
                // 409 credentials changed).
                (409, None) => raced += 1,
                (401, None) => {}
                other => panic!("round {round}: unexpected form answer {other:?}"),
            }
        }
        password = new_password;
    }
    assert!(raced > 0, "the race was never exercised (unit {unit:?})");
}

/// "Sign out all other sessions" while logins are in flight: a login whose check was under way
/// when the revoke-all happened must not come out of it with a live session; one sent after it
/// is an ordinary login and stays.
async fn revoke_all_rounds(gateway: &Gateway, revoke: RevokeWith) {
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let unit = login_duration(gateway, &email, &password).await;
    let victim = gateway.login(&email, &password).await;
    let csrf = csrf_token(gateway).await;

    let mut in_flight = 0;
    let mut after = 0;
    for round in 0..4 {
        // Logins every quarter check from the start; the revoke-all one and a half checks in.
        let attempts: Vec<_> = (0..10)
            .map(|i| spawn_login(gateway, &email, &password, unit / 4 * i))
            .collect();
        tokio::time::sleep(unit * 3 / 2).await;
        let revoke_sent = Instant::now();
        let response = match revoke {
            RevokeWith::Api => {
                gateway
                    .request("DELETE", "/auth/user/sessions", Some(&victim), &[], None)
                    .await
            }
            RevokeWith::DevicePage => {
                let origin = gateway.public_origin();
                let cookie = format!("authgate_csrf={csrf}; {}", cookie_header(&victim));
                let body = format!("csrf_token={csrf}");
                gateway
                    .request(
                        "POST",
                        "/auth/devices/revoke-others",
                        None,
                        &[("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
                        Some(("application/x-www-form-urlencoded", body.into_bytes())),
                    )
                    .await
            }
        };
        let revoked = Instant::now();
        let status = response.status().as_u16();
        assert!(
            status == 200 || status == 303,
            "round {round}: revoke-others answered {status}"
        );
        let mut results = Vec::new();
        for attempt in attempts {
            results.push(attempt.await.unwrap());
        }
        // Sent well before the revoke-all (its check was under way) and answered after it. A
        // login reads the credential epoch once it has loaded the account, which on the
        // embedded pair can wait behind SQLite writes of the logins around it: only a login
        // sent a whole check before the revoke-all has surely read the epoch before it.
        let margin = unit;
        for attempt in &results {
            let sent_before = attempt.sent + margin < revoke_sent;
            if sent_before && attempt.answered > revoked {
                in_flight += 1;
            }
            if attempt.sent > revoked && attempt.status == 200 {
                after += 1;
                let token = attempt.token.as_deref().unwrap();
                assert!(
                    alive(gateway, token).await,
                    "round {round}: a login sent after the revoke-all lost its session"
                );
            }
        }
        let before: Vec<_> = results
            .into_iter()
            .filter(|a| a.sent + margin < revoke_sent)
            .collect();
        assert_no_live_session(gateway, &before, &format!("round {round}")).await;
        assert!(
            alive(gateway, &victim).await,
            "the session that asked kept itself"
        );
    }
    assert!(
        in_flight > 0,
        "no login was in flight across a revoke-all in 4 rounds (unit {unit:?})"
    );
    assert!(after > 0, "no login was sent after a revoke-all");
}

#[derive(Clone, Copy)]
enum RevokeWith {
    Api,
    DevicePage,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_in_flight_across_sign_out_everywhere_else_keeps_no_session() {
    let gateway = start().await;
    revoke_all_rounds(&gateway, RevokeWith::Api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_in_flight_across_the_device_pages_revoke_others_keeps_no_session() {
    let gateway = start().await;
    revoke_all_rounds(&gateway, RevokeWith::DevicePage).await;
}

/// Two instances sharing the stores: the login runs on one, the password change on the other.
/// The epoch lives in Redis, so the check holds across instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_holds_across_gateway_instances() {
    if !require_backend(Backend::Production, "several instances share Redis") {
        return;
    }
    let first = start().await;
    let second =
        Gateway::start_with_edited(options().sharing_stores_with(&first), slow_hashing).await;
    let email = unique_email();
    let mut password = strong_password();
    first.register(&email, &password).await;
    let unit = login_duration(&second, &email, &password).await;
    let mut raced = 0;
    // Rounds until the race has been hit (timing varies with the machine's load), at most 12.
    for round in 0..12 {
        if round >= 3 && raced > 0 {
            break;
        }
        let victim = first.login(&email, &password).await;
        let new_password = format!("{}-x-{round}", strong_password());
        let attempts: Vec<_> = (0..9)
            .map(|i| spawn_login(&second, &email, &password, unit / 3 * i))
            .collect();
        let response = first
            .post_json(
                "/auth/user/password",
                &json!({"current_password": password, "new_password": new_password}),
                Some(&victim),
            )
            .await;
        let changed = Instant::now();
        assert_eq!(response.status(), 204);
        let mut results = Vec::new();
        for attempt in attempts {
            results.push(attempt.await.unwrap());
        }
        assert_no_live_session(&second, &results, &format!("round {round}")).await;
        raced += across(&results, changed);
        password = new_password;
    }
    assert!(raced > 0, "the race was never exercised (unit {unit:?})");
}

/// The epoch key is bounded in time like everything else the gateway keeps in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_epoch_expires_and_advances_with_each_revoke_all() {
    if !require_backend(
        Backend::Production,
        "reads the epoch's Redis key (the in-process store's epoch is covered by \
         tests/session_store_contract.rs)",
    ) {
        return;
    }
    let gateway = GatewayOptions::new()
        .login_protection(100_000, "15m", "15m", 100_000)
        .absolute_timeout("2d")
        .start()
        .await;
    let user = gateway.signed_in_user().await;
    let key = format!(
        "{}{{{}}}user:{}:epoch",
        gateway.redis_prefix,
        authgate::session::SlotTag::of_user(user.id.parse().unwrap()).as_str(),
        user.id
    );
    let mut redis = redis::Client::open(base_redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis reachable");
    for expected in 1..=3 {
        let response = gateway
            .request(
                "DELETE",
                "/auth/user/sessions",
                Some(&user.token),
                &[],
                None,
            )
            .await;
        assert_eq!(response.status(), 200);
        let epoch: i64 = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap_or_else(|e| panic!("no credential epoch at {key}: {e}"));
        assert_eq!(epoch, expected, "each revoke-all advances the epoch by one");
        let ttl_ms: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let two_days = 2 * 86_400 * 1000;
        assert!(
            ttl_ms > two_days - 60_000 && ttl_ms <= two_days,
            "epoch TTL {ttl_ms} ms, want the absolute session lifetime (2d)"
        );
    }
    // A password change bumps it twice (before and after the new hash is stored).
    let response = gateway
        .post_json(
            "/auth/user/password",
            &json!({"current_password": user.password, "new_password": strong_password()}),
            Some(&user.token),
        )
        .await;
    assert_eq!(response.status(), 204);
    let epoch: i64 = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(epoch, 5);
    // Logins keep working with the current credentials, whatever the epoch.
    assert!(alive(&gateway, &user.token).await);
}
