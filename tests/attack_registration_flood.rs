//! Attack: registration floods. Registering costs the gateway a bcrypt hash and a database row
//! and needs no account, so a flood of sign-ups can (a) fill the users table from one address
//! and (b) occupy every bcrypt slot so that real users' sign-ins queue until they time out.
//!
//! Guarantees (issue 8.8):
//! - `login_protection.max_registrations_per_ip` (default 10) registrations per client IP
//!   (IPv6: per /64) per `login_protection.window`, counted in Redis before any bcrypt work for
//!   every attempt that passes input validation; then 429 `rate_limited` with `Retry-After`
//!   (the seconds left in the window). Another address has its own budget; logins have theirs.
//! - Sign-ins keep priority over registrations for bcrypt: at most `max(1, slots - 1)`
//!   registrations use the hashing pool at once, so with two or more slots one is always left to
//!   sign-ins, and with one a sign-in waits for at most one registration.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Adds `max_registrations_per_ip` to the rendered `[login_protection]` (the options builder
/// renders that section when `login_protection(..)` is set).
fn registration_budget(text: String, budget: u32) -> String {
    let anchor = "[login_protection]\n";
    assert!(
        text.contains(anchor),
        "harness config changed: no [login_protection] in\n{text}"
    );
    text.replacen(
        anchor,
        &format!("{anchor}max_registrations_per_ip = {budget}\n"),
        1,
    )
}

/// bcrypt cost 10 on a pool of `slots`, waiting at most `QUEUE_TIMEOUT` for a slot.
fn expensive_hashing(text: String, slots: u32) -> String {
    assert!(
        text.contains("bcrypt_cost = 4"),
        "harness config changed: no `bcrypt_cost = 4` in\n{text}"
    );
    text.replacen(
        "bcrypt_cost = 4",
        &format!(
            "bcrypt_cost = 10\nmax_concurrent_hashes = {slots}\nhash_queue_timeout = \"{}ms\"",
            QUEUE_TIMEOUT.as_millis()
        ),
        1,
    )
}

fn generous_logins() -> GatewayOptions {
    GatewayOptions::new().login_protection(100_000, "15m", "15m", 100_000)
}

/// POST /auth/register as JSON, from `forwarded_for` when given (needs a trusted proxy).
async fn register_from(
    gateway: &Gateway,
    email: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let headers: Vec<(&str, &str)> = forwarded_for
        .map(|ip| vec![("X-Forwarded-For", ip)])
        .unwrap_or_default();
    gateway
        .request(
            "POST",
            "/auth/register",
            None,
            &headers,
            Some((
                "application/json",
                serde_json::to_vec(&json!({"email": email, "password": password})).unwrap(),
            )),
        )
        .await
}

async fn assert_created(response: reqwest::Response, what: &str) {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(status, 201, "{what}: {body}");
}

async fn user_exists(gateway: &Gateway, email: &str) -> bool {
    let count = gateway
        .count(
            "SELECT count(*) FROM users WHERE email = $1",
            &[email.into()],
        )
        .await;
    count > 0
}

// ---------------------------------------------------------------------------------------------
// The per-IP budget
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eleventh_registration_from_one_address_is_refused_by_default() {
    // No max_registrations_per_ip in the file: the default, 10 per window (15 minutes here).
    let gateway = GatewayOptions::new()
        .trusted_proxies(&["127.0.0.1/32"])
        .login_protection(100_000, "15m", "15m", 100_000)
        .start()
        .await;
    let attacker = "198.51.100.66";
    for i in 1..=10 {
        assert_created(
            register_from(
                &gateway,
                &unique_email(),
                &strong_password(),
                Some(attacker),
            )
            .await,
            &format!("registration #{i}"),
        )
        .await;
    }
    let email = unique_email();
    let response = register_from(&gateway, &email, &strong_password(), Some(attacker)).await;
    assert_refused_429(response, "rate_limited", 15 * 60).await;
    assert!(
        !user_exists(&gateway, &email).await,
        "a refused registration created its account"
    );
    // Also through the sign-up form, with its CSRF token: the same budget.
    let csrf = csrf_token(&gateway).await;
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf_token", &csrf)
        .append_pair("email", &unique_email())
        .append_pair("password", &strong_password())
        .finish();
    let cookie = format!("authgate_csrf={csrf}");
    let origin = gateway.public_origin();
    let form = gateway
        .request(
            "POST",
            "/auth/register",
            None,
            &[
                ("Cookie", cookie.as_str()),
                ("Origin", origin.as_str()),
                ("X-Forwarded-For", attacker),
            ],
            Some(("application/x-www-form-urlencoded", body.into_bytes())),
        )
        .await;
    assert_eq!(form.status(), 429, "the sign-up form over the budget");
    assert!(header(&form, "retry-after").is_some(), "no Retry-After");

    // Another address is unaffected, and so is signing in from the refused one.
    let email = unique_email();
    let password = strong_password();
    assert_created(
        register_from(&gateway, &email, &password, Some("198.51.100.67")).await,
        "another address",
    )
    .await;
    let login = gateway
        .request(
            "POST",
            "/auth/login",
            None,
            &[("X-Forwarded-For", attacker)],
            Some((
                "application/json",
                serde_json::to_vec(&json!({"email": email, "password": password})).unwrap(),
            )),
        )
        .await;
    assert_eq!(login.status(), 200, "signing in is a separate budget");

    let metrics = gateway.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "authgate_registrations_total",
            &[("outcome", "rate_limited")]
        )
        .unwrap_or(0.0)
            >= 2.0,
        "registrations_total{{outcome=rate_limited}} not counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_is_configurable_counts_taken_emails_and_not_malformed_requests() {
    let gateway =
        Gateway::start_with_edited(generous_logins(), |text| registration_budget(text, 3)).await;
    // Malformed attempts (refused before anything is counted) do not use the budget.
    for bad in [
        json!({"email": "not-an-email", "password": strong_password()}),
        json!({"email": unique_email(), "password": "short"}),
        json!({"email": unique_email()}),
        json!({"password": strong_password()}),
    ] {
        let response = gateway.post_json("/auth/register", &bad, None).await;
        assert_json_error(response, 400, "invalid_request").await;
    }
    let email = unique_email();
    gateway.register(&email, &strong_password()).await;
    // A taken email passes validation: it is an attempt (409) and counts.
    let taken = gateway
        .post_json(
            "/auth/register",
            &json!({"email": email, "password": strong_password()}),
            None,
        )
        .await;
    assert_json_error(taken, 409, "email_taken").await;
    gateway.register(&unique_email(), &strong_password()).await;
    // Three attempts used: the fourth is over.
    let over = gateway
        .post_json(
            "/auth/register",
            &json!({"email": unique_email(), "password": strong_password()}),
            None,
        )
        .await;
    assert_refused_429(over, "rate_limited", 15 * 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_share_a_registration_budget_per_slash_64() {
    let gateway = Gateway::start_with_edited(
        generous_logins().trusted_proxies(&["127.0.0.1/32"]),
        |text| registration_budget(text, 2),
    )
    .await;
    for ip in ["2001:db8:7:7::1", "2001:db8:7:7::2"] {
        assert_created(
            register_from(&gateway, &unique_email(), &strong_password(), Some(ip)).await,
            ip,
        )
        .await;
    }
    // A fresh address in the same /64: over.
    let response = register_from(
        &gateway,
        &unique_email(),
        &strong_password(),
        Some("2001:db8:7:7:ffff:ffff:ffff:ffff"),
    )
    .await;
    assert_refused_429(response, "rate_limited", 15 * 60).await;
    // IPv4-mapped IPv6 is the IPv4 address's budget, not a new one.
    for ip in ["192.0.2.9", "::ffff:192.0.2.9"] {
        let _ = register_from(&gateway, &unique_email(), &strong_password(), Some(ip)).await;
    }
    let response = register_from(
        &gateway,
        &unique_email(),
        &strong_password(),
        Some("::ffff:192.0.2.9"),
    )
    .await;
    assert_refused_429(response, "rate_limited", 15 * 60).await;
    // Another /64 has its own.
    assert_created(
        register_from(
            &gateway,
            &unique_email(),
            &strong_password(),
            Some("2001:db8:7:8::1"),
        )
        .await,
        "another /64",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_cannot_overshoot_the_budget() {
    let gateway =
        Gateway::start_with_edited(generous_logins(), |text| registration_budget(text, 5)).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let client = gateway.client.clone();
        let url = gateway.url("/auth/register");
        tasks.spawn(async move {
            client
                .post(url)
                .json(&json!({"email": unique_email(), "password": strong_password()}))
                .send()
                .await
                .expect("register")
                .status()
                .as_u16()
        });
    }
    let mut created = 0;
    let mut refused = 0;
    while let Some(status) = tasks.join_next().await {
        match status.unwrap() {
            201 => created += 1,
            429 => refused += 1,
            other => panic!("a concurrent registration got {other}"),
        }
    }
    assert_eq!((created, refused), (5, 25), "30 at once with a budget of 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_comes_back_after_the_window() {
    let gateway = Gateway::start_with_edited(
        GatewayOptions::new().login_protection(100_000, "2s", "15m", 100_000),
        |text| registration_budget(text, 1),
    )
    .await;
    gateway.register(&unique_email(), &strong_password()).await;
    let over = gateway
        .post_json(
            "/auth/register",
            &json!({"email": unique_email(), "password": strong_password()}),
            None,
        )
        .await;
    assert_refused_429(over, "rate_limited", 2).await;
    eventually(
        Duration::from_secs(10),
        "a registration allowed again once the 2 s window is over",
        || async {
            let response = gateway
                .post_json(
                    "/auth/register",
                    &json!({"email": unique_email(), "password": strong_password()}),
                    None,
                )
                .await;
            match response.status().as_u16() {
                201 => Some(()),
                429 => None,
                other => panic!("unexpected {other}"),
            }
        },
    )
    .await;
}

#[test]
fn a_zero_budget_is_refused_at_start_up() {
    let text = registration_budget(
        GatewayOptions::new()
            .login_protection(5, "15m", "15m", 20)
            .render(&RenderTarget::for_check()),
        0,
    );
    let output = run_check(&text);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "max_registrations_per_ip = 0 was accepted"
    );
    assert!(
        stderr.contains("login_protection.max_registrations_per_ip"),
        "the error does not name the key: {stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// bcrypt priority
// ---------------------------------------------------------------------------------------------

/// Concurrent registration loops: enough to keep the bcrypt queue longer than its timeout,
/// on a fast machine too (on a 2-core machine where a cost-10 hash takes ~145 ms, 40 loops
/// queued a registration for 5.9 s, just under the timeout, and none timed out).
const WORKERS: usize = 100;
/// `password.hash_queue_timeout` in these tests.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(6);

/// Keeps `WORKERS` registration loops going (distinct emails, a budget that never bites) at
/// bcrypt cost 10 on a pool of `slots`, waits until registrations are timing out in the
/// hashing queue (the flood is saturating bcrypt), then signs an existing user in again and
/// again: every sign-in must succeed, well within the queue timeout (without priority, a
/// sign-in queues behind the flood and needs about the whole timeout, or gets 503).
async fn sign_ins_survive_a_registration_flood(slots: u32) {
    let gateway = Gateway::start_with_edited(generous_logins(), |text| {
        expensive_hashing(registration_budget(text, 100_000), slots)
    })
    .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;

    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicUsize::new(WORKERS));
    let mut flood = tokio::task::JoinSet::new();
    let flood_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    for worker in 0..WORKERS {
        let client = flood_client.clone();
        let url = gateway.url("/auth/register");
        let (stop, running) = (stop.clone(), running.clone());
        flood.spawn(async move {
            let mut statuses = Vec::new();
            // Bounded: at most 30 registrations per loop, and only until told to stop.
            for i in 0..30 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let email = format!("flood-{worker}-{i}-{}", unique_email());
                let status = client
                    .post(&url)
                    .json(&json!({"email": email, "password": strong_password()}))
                    .send()
                    .await
                    .map(|response| response.status().as_u16())
                    .map_err(|e| format!("flood registration: {e}"));
                statuses.push(status);
            }
            running.fetch_sub(1, Ordering::SeqCst);
            statuses
        });
    }
    eventually(
        Duration::from_secs(30),
        "registrations timing out in the bcrypt queue (the flood saturating it)",
        || {
            let gateway = &gateway;
            async move {
                let metrics = gateway.metrics().await;
                let value = |outcome| {
                    metric_value(
                        &metrics,
                        "authgate_registrations_total",
                        &[("outcome", outcome)],
                    )
                    .unwrap_or(0.0)
                };
                (value("unavailable") >= 1.0 && value("created") >= 1.0).then_some(())
            }
        },
    )
    .await;

    let mut sign_ins = Vec::new();
    for round in 0..6 {
        let started = Instant::now();
        let response = login_attempt(&gateway, &email, &password).await;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        let took = started.elapsed();
        sign_ins.push((status, took));
        assert_eq!(
            status, 200,
            "sign-in #{round} during a registration flood ({slots} slot(s)): {body}; so far {sign_ins:?}"
        );
        assert!(
            took < QUEUE_TIMEOUT / 2,
            "sign-in #{round} took {took:?} during a registration flood ({slots} slot(s)): it \
             queued behind the registrations; so far {sign_ins:?}"
        );
    }
    let still_flooding = running.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);

    let mut outcomes = std::collections::BTreeMap::new();
    while let Some(joined) = flood.join_next().await {
        for status in joined.unwrap() {
            let status = status.unwrap_or_else(|e| panic!("{e}"));
            *outcomes.entry(status).or_insert(0) += 1;
        }
    }
    eprintln!("{slots} slot(s): sign-ins (status, time) {sign_ins:?}; flood outcomes {outcomes:?}");
    for status in outcomes.keys() {
        assert!(
            [201, 503].contains(status),
            "a flood registration got {status}"
        );
    }
    assert!(
        still_flooding > 0,
        "the flood was over before the sign-ins were: nothing was tested"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_keep_a_bcrypt_slot_during_a_registration_flood() {
    sign_ins_survive_a_registration_flood(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_bcrypt_slot_a_sign_in_waits_for_at_most_one_registration() {
    sign_ins_survive_a_registration_flood(1).await;
}
