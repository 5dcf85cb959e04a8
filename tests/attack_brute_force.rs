//! Attack: online password guessing against one account (brute force, also concurrent, spread
//! over gateway instances, through the sign-in form or with re-cased e-mails), and credential
//! stuffing: many accounts tried from one IP.
//!
//! Guarantee (contract §5): `max_failures` failed logins for a normalised e-mail within `window`
//! lock it for `lockout`: 429 `account_locked` with `Retry-After`, even to the right password.
//! The count lives in Redis (atomic, shared by every instance) and is mirrored into
//! `users.failed_login_attempts`. More than `max_attempts_per_ip` login attempts from one IP
//! within `window` get 429 `rate_limited`, whichever accounts they target; IPv6 clients are
//! counted by their /64. A wrong `current_password` on a password change is a failed login
//! too, so a stolen session is no password oracle.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// `uSeR-...@eXaMpLe.CoM`: every other letter upper-cased.
fn mixed_case(email: &str) -> String {
    email
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

async fn failed_login_attempts(gateway: &Gateway, email: &str) -> i64 {
    gateway
        .count(
            "SELECT failed_login_attempts FROM users WHERE email = $1",
            &[email.into()],
        )
        .await
}

/// Asserts `users.failed_login_attempts` is `expected`. The request writes it before answering;
/// only when the database did not take the write then is it queued and written again, so the
/// value may take a moment to arrive, but must then be exact and stay so (never counted twice).
async fn assert_failed_login_attempts(gateway: &Gateway, email: &str, expected: i64, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut seen_since = None;
    loop {
        let count = failed_login_attempts(gateway, email).await;
        let now = std::time::Instant::now();
        if count == expected {
            let since = *seen_since.get_or_insert(now);
            if now - since >= Duration::from_millis(500) {
                return;
            }
        } else if seen_since.is_some() || now >= deadline || count > expected {
            let logs = gateway.logs();
            let store_trouble: Vec<&str> = logs
                .lines()
                .filter(|line| line.contains("database") || line.contains("account stamp"))
                .collect();
            panic!(
                "{what}: users.failed_login_attempts is {count}, expected {expected}\n\
                 the gateway's database warnings:\n{}",
                store_trouble.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(base_redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis reachable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_locks_the_account_even_against_the_right_password() {
    let gateway = GatewayOptions::new()
        .login_protection(5, "15m", "15m", 1000)
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;

    // The guesser varies the spelling of the e-mail to get a fresh counter each time.
    let spellings = [
        email.clone(),
        email.to_uppercase(),
        format!("  {email}"),
        mixed_case(&email),
        format!(" {email} "),
    ];
    for (i, spelling) in spellings.iter().enumerate() {
        let response = login_attempt(&gateway, spelling, &format!("guess-{i}-wrong")).await;
        assert_json_error(response, 401, "invalid_credentials").await;
    }
    assert_refused_429(
        login_attempt(&gateway, &email, &password).await,
        "account_locked",
        15 * 60,
    )
    .await;
    assert_refused_429(
        login_attempt(&gateway, &email.to_uppercase(), &password).await,
        "account_locked",
        15 * 60,
    )
    .await;
    assert_failed_login_attempts(
        &gateway,
        &email,
        5,
        "users.failed_login_attempts does not mirror the failures",
    )
    .await;
    // The locked account is still locked for the next guess, of course.
    assert_eq!(
        login_attempt(&gateway, &email, "guess-6-wrong")
            .await
            .status(),
        429
    );
}

/// Fires `GUESSES` wrong passwords for one account at once; returns (status, body) of each.
async fn concurrent_guesses(gateway: &Gateway, email: &str, guesses: usize) -> Vec<(u16, String)> {
    let attempts = (0..guesses).map(|i| async move {
        let response = login_attempt(gateway, email, &format!("parallel-guess-{i}")).await;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        (status, body)
    });
    let answers = futures_join_all(attempts).await;
    for (status, body) in &answers {
        assert!(
            *status == 401 || (*status == 429 && body.contains("account_locked")),
            "unexpected answer to a concurrent guess: {status} {body}"
        );
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guessing_still_ends_in_a_lockout_and_every_failure_is_counted() {
    let gateway = GatewayOptions::new()
        .login_protection(5, "15m", "15m", 1000)
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;

    let answers = concurrent_guesses(&gateway, &email, 20).await;
    let checked = answers.iter().filter(|(status, _)| *status == 401).count();
    eprintln!("20 concurrent guesses (max_failures 5): {checked} were checked and answered 401");
    assert!(checked >= 5, "only {checked} guesses were even checked");

    // However the race went, the account is locked now, and the database counted every
    // failure that was actually checked.
    assert_refused_429(
        login_attempt(&gateway, &email, &password).await,
        "account_locked",
        15 * 60,
    )
    .await;
    assert_failed_login_attempts(
        &gateway,
        &email,
        i64::try_from(checked).unwrap(),
        "the failures answered with 401 are not what the database counted",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_get_no_more_password_checks_than_max_failures() {
    // The limit is "5 guesses per account per window". An attacker who fires 20 at once must
    // not get 20 password checks: a guess is answered 401 (checked) or 429 (refused).
    let gateway = GatewayOptions::new()
        .login_protection(5, "15m", "15m", 1000)
        .start()
        .await;
    let email = unique_email();
    gateway.register(&email, &strong_password()).await;

    let answers = concurrent_guesses(&gateway, &email, 20).await;
    let checked = answers.iter().filter(|(status, _)| *status == 401).count();
    assert!(
        checked <= 5,
        "20 concurrent wrong passwords with max_failures = 5: {checked} were checked against \
         the account (401) instead of at most 5; the rest should have been 429 account_locked"
    );
}

/// `futures::future::join_all` without the dependency: spawn-free concurrent polling.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let futures: Vec<_> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let mut futures: Vec<Option<_>> = futures.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_spread_over_two_gateway_instances_share_one_lockout() {
    if !require_backend(Backend::Production, "several instances share Redis") {
        return;
    }
    let first = GatewayOptions::new()
        .login_protection(4, "15m", "15m", 1000)
        .start()
        .await;
    let second = GatewayOptions::new()
        .login_protection(4, "15m", "15m", 1000)
        .sharing_stores_with(&first)
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    first.register(&email, &password).await;

    for i in 0..4 {
        let instance = if i % 2 == 0 { &first } else { &second };
        let response = login_attempt(instance, &email, &format!("guess-{i}-wrong")).await;
        assert_json_error(response, 401, "invalid_credentials").await;
    }
    for instance in [&first, &second] {
        assert_refused_429(
            login_attempt(instance, &email, &password).await,
            "account_locked",
            15 * 60,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_through_the_sign_in_form_counts_towards_the_same_lockout() {
    let gateway = GatewayOptions::new()
        .login_protection(5, "15m", "15m", 1000)
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let csrf = csrf_token(&gateway).await;

    for i in 0..3 {
        let response = sign_in_form(&gateway, &csrf, &email, &format!("form-guess-{i}")).await;
        assert_eq!(response.status(), 401, "a wrong password on the form");
    }
    for i in 3..5 {
        let response = login_attempt(&gateway, &email, &format!("api-guess-{i}")).await;
        assert_json_error(response, 401, "invalid_credentials").await;
    }
    // Locked on both doors, the right password included.
    let form = sign_in_form(&gateway, &csrf, &email, &password).await;
    assert_eq!(form.status(), 429, "the form let a locked account in");
    assert!(
        header(&form, "retry-after").is_some(),
        "429 page without Retry-After"
    );
    assert!(
        session_cookie(&form).is_none(),
        "the form set a session cookie"
    );
    assert!(form
        .text()
        .await
        .unwrap()
        .contains("Too many failed sign-in attempts"));
    assert_refused_429(
        login_attempt(&gateway, &email, &password).await,
        "account_locked",
        15 * 60,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_signing_in_restarts_the_count_but_never_lifts_a_lock() {
    let gateway = GatewayOptions::new()
        .login_protection(5, "15m", "15m", 1000)
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;

    for i in 0..4 {
        assert_eq!(
            login_attempt(&gateway, &email, &format!("a-{i}-wrong"))
                .await
                .status(),
            401
        );
    }
    assert_failed_login_attempts(&gateway, &email, 4, "four failures before the sign-in").await;
    gateway.login(&email, &password).await;
    assert_failed_login_attempts(&gateway, &email, 0, "a successful sign-in resets the count")
        .await;
    // Four more failures after the successful sign-in: still below the limit.
    for i in 0..4 {
        assert_eq!(
            login_attempt(&gateway, &email, &format!("b-{i}-wrong"))
                .await
                .status(),
            401
        );
    }
    gateway.login(&email, &password).await;
    // Five in a row lock it, and the right password does not unlock it.
    for i in 0..5 {
        assert_eq!(
            login_attempt(&gateway, &email, &format!("c-{i}-wrong"))
                .await
                .status(),
            401
        );
    }
    for _ in 0..2 {
        assert_refused_429(
            login_attempt(&gateway, &email, &password).await,
            "account_locked",
            15 * 60,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_stuffing_from_one_ip_is_rate_limited() {
    const PER_IP: u32 = 8;
    let gateway = GatewayOptions::new()
        .login_protection(1000, "15m", "15m", PER_IP)
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;

    // A list of leaked (e-mail, password) pairs, one attempt each.
    for i in 0..PER_IP {
        let response =
            login_attempt(&gateway, &unique_email(), &format!("leaked-{i}-password")).await;
        assert_json_error(response, 401, "invalid_credentials").await;
    }
    // The next pair happens to be valid: too late, this IP is out of attempts.
    assert_refused_429(
        login_attempt(&gateway, &email, &password).await,
        "rate_limited",
        15 * 60,
    )
    .await;
    assert_refused_429(
        login_attempt(&gateway, &unique_email(), "another-leaked-password").await,
        "rate_limited",
        15 * 60,
    )
    .await;

    // The counter is the shared Redis key for this IP, expiring with the window.
    if !only_on(
        Backend::Production,
        "the per-IP counter's Redis key (the in-process guard has none to read)",
    ) {
        return;
    }
    let key = format!("{}login_attempts:127.0.0.1", gateway.redis_prefix);
    let mut redis = redis_connection().await;
    let attempts: Option<u64> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        attempts.is_some_and(|n| n > u64::from(PER_IP)),
        "{key} holds {attempts:?}"
    );
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        ttl_ms > 0 && ttl_ms <= Duration::from_secs(15 * 60).as_millis() as i64,
        "{key} PTTL {ttl_ms}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_does_not_give_a_stuffing_ip_fresh_attempts() {
    if !require_backend(Backend::Production, "several instances share Redis") {
        return;
    }
    const PER_IP: u32 = 6;
    let first = GatewayOptions::new()
        .login_protection(1000, "15m", "15m", PER_IP)
        .start()
        .await;
    let second = GatewayOptions::new()
        .login_protection(1000, "15m", "15m", PER_IP)
        .sharing_stores_with(&first)
        .start()
        .await;
    for i in 0..PER_IP {
        let instance = if i % 2 == 0 { &first } else { &second };
        let response = login_attempt(instance, &unique_email(), "leaked-password-x").await;
        assert_eq!(response.status(), 401);
    }
    for instance in [&first, &second] {
        assert_refused_429(
            login_attempt(instance, &unique_email(), "leaked-password-y").await,
            "rate_limited",
            15 * 60,
        )
        .await;
    }
}

/// `POST /auth/user/password` as the account page sends it (same origin, JSON).
async fn change_password(
    gateway: &Gateway,
    token: &str,
    current_password: &str,
    new_password: &str,
) -> reqwest::Response {
    let origin = gateway.public_origin();
    gateway
        .request(
            "POST",
            "/auth/user/password",
            Some(token),
            &[("Origin", origin.as_str())],
            Some((
                "application/json",
                json!({"current_password": current_password, "new_password": new_password})
                    .to_string()
                    .into_bytes(),
            )),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_guesses_count_towards_the_lockout() {
    // A stolen session must not be a password oracle: wrong current passwords on the
    // password-change endpoint lock the account exactly like wrong passwords on login.
    const LOCKOUT_SECS: u64 = 5;
    let gateway = GatewayOptions::new()
        .login_protection(3, "15m", &format!("{LOCKOUT_SECS}s"), 1000)
        .start()
        .await;
    let user = gateway.signed_in_user().await;
    let new_password = strong_password();

    for i in 0..3 {
        let response = change_password(
            &gateway,
            &user.token,
            &format!("stolen-session-guess-{i}"),
            &new_password,
        )
        .await;
        assert_json_error(response, 400, "invalid_request").await;
    }
    // Locked now: even the right current password is refused, before it is checked.
    assert_refused_429(
        change_password(&gateway, &user.token, &user.password, &new_password).await,
        "account_locked",
        LOCKOUT_SECS,
    )
    .await;
    // The lock is the account's, so the login door is shut too.
    assert_refused_429(
        login_attempt(&gateway, &user.email, &user.password).await,
        "account_locked",
        LOCKOUT_SECS,
    )
    .await;
    assert_failed_login_attempts(
        &gateway,
        &user.email,
        3,
        "users.failed_login_attempts does not count the password-change failures",
    )
    .await;

    // Once the lock expires the old password still works: the refused change changed nothing.
    eventually(
        Duration::from_secs(LOCKOUT_SECS + 20),
        "login with the old password after the lockout",
        || async {
            let response = login_attempt(&gateway, &user.email, &user.password).await;
            match response.status().as_u16() {
                200 => Some(()),
                429 => None,
                other => panic!(
                    "login with the unchanged password: {other} {}",
                    response.text().await.unwrap()
                ),
            }
        },
    )
    .await;
    assert_json_error(
        login_attempt(&gateway, &user.email, &new_password).await,
        401,
        "invalid_credentials",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_share_a_login_attempt_budget_per_slash_64() {
    // One host owns a whole /64; rotating through its addresses must not buy fresh attempts.
    const PER_IP: usize = 3;
    let gateway = GatewayOptions::new()
        .trusted_proxies(&["127.0.0.1/32"])
        .login_protection(1000, "15m", "15m", PER_IP as u32)
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;

    let from = |ip: &str, email: &str, password: &str| {
        let body = json!({"email": email, "password": password})
            .to_string()
            .into_bytes();
        let ip = ip.to_string();
        let gateway = &gateway;
        async move {
            gateway
                .request(
                    "POST",
                    "/auth/login",
                    None,
                    &[("X-Forwarded-For", ip.as_str())],
                    Some(("application/json", body)),
                )
                .await
        }
    };

    // A different address and a different account each time, so neither a per-address
    // counter nor the account lockout is what stops them.
    for i in 1..=6 {
        let ip = format!("2001:db8:1:2::{i}");
        let response = from(&ip, &unique_email(), "leaked-password-x").await;
        if i <= PER_IP {
            assert_json_error(response, 401, "invalid_credentials").await;
        } else {
            assert_refused_429(response, "rate_limited", 15 * 60).await;
        }
    }
    // A fresh address in the same /64 with valid credentials: too late.
    assert_refused_429(
        from("2001:db8:1:2:ffff:ffff:ffff:ffff", &email, &password).await,
        "rate_limited",
        15 * 60,
    )
    .await;
    // Another /64 has its own budget.
    let other = from("2001:db8:1:3::1", &unique_email(), "leaked-password-y").await;
    assert_json_error(other, 401, "invalid_credentials").await;
    let response = from("2001:db8:1:3::2", &email, &password).await;
    assert_eq!(
        response.status(),
        200,
        "valid login from another /64: {}",
        response.text().await.unwrap()
    );
}
