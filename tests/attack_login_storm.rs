//! Attack: a login storm as a denial of service. bcrypt is deliberately expensive; a flood of
//! concurrent logins (a botnet guessing passwords, or just hammering `/auth/login`) tries to
//! eat every CPU and thread so that signed-in users' proxied requests stall.
//!
//! Guarantee (contract §5): bcrypt runs on a bounded pool (`[password] max_concurrent_hashes`),
//! never on the proxy's threads; logins beyond the queue wait up to `hash_queue_timeout` and
//! then get 503 (or 429 from the limits); meanwhile proxied traffic keeps flowing.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const STORM: usize = 100;

/// A realistic bcrypt cost on a one-slot pool (leaving a core to the proxy on a 2-core box).
fn expensive_bounded_hashing(text: String) -> String {
    assert!(
        text.contains("bcrypt_cost = 4"),
        "harness config changed: no `bcrypt_cost = 4` in\n{text}"
    );
    text.replacen(
        "bcrypt_cost = 4",
        "bcrypt_cost = 10\nmax_concurrent_hashes = 1\nhash_queue_timeout = \"3s\"",
        1,
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_storm_does_not_stall_proxied_traffic() {
    let gateway = Gateway::start_with_edited(
        GatewayOptions::new().login_protection(100_000, "15m", "15m", 100_000),
        expensive_bounded_hashing,
    )
    .await;
    let user = gateway.signed_in_user().await;
    assert_eq!(gateway.get("/app", Some(&user.token)).await.status(), 200);

    // The storm: STORM concurrent logins, half wrong passwords for a real account, half
    // unknown e-mails, each on its own connection.
    let storm_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let storm_running = Arc::new(AtomicBool::new(true));
    let storm_started = Instant::now();
    let mut storm = tokio::task::JoinSet::new();
    for i in 0..STORM {
        let client = storm_client.clone();
        let url = gateway.url("/auth/login");
        let email = if i % 2 == 0 {
            user.email.clone()
        } else {
            unique_email()
        };
        storm.spawn(async move {
            let response = client
                .post(url)
                .json(&json!({"email": email, "password": format!("storm-guess-{i}")}))
                .send()
                .await
                .map_err(|e| format!("login #{i} failed at the HTTP level: {e}"))?;
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            Ok::<_, String>((status, retry_after))
        });
    }
    let storm_done = storm_running.clone();
    let storm_task = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        while let Some(joined) = storm.join_next().await {
            outcomes.push(joined.expect("storm task"));
        }
        storm_done.store(false, Ordering::SeqCst);
        outcomes
    });

    // Meanwhile, the signed-in user browses.
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    while storm_running.load(Ordering::SeqCst) {
        let started = Instant::now();
        let response = gateway.get("/app/dashboard", Some(&user.token)).await;
        let status = response.status().as_u16();
        let _ = response.bytes().await;
        if status != 200 {
            failures.push(status);
        }
        if storm_running.load(Ordering::SeqCst) {
            latencies.push(started.elapsed());
        }
    }
    let storm_duration = storm_started.elapsed();
    let outcomes = storm_task.await.unwrap();

    latencies.sort();
    eprintln!(
        "login storm of {STORM} ({storm_duration:?}): {} proxied requests, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        latencies.get(latencies.len() / 2),
        (!latencies.is_empty()).then(|| percentile(&latencies, 0.99)),
        latencies.last()
    );
    let mut counts = std::collections::BTreeMap::new();
    for outcome in &outcomes {
        match outcome {
            Ok((status, retry_after)) => {
                *counts.entry(*status).or_insert(0) += 1;
                assert!(
                    [401, 429, 503].contains(status),
                    "a storm login got {status}"
                );
                if *status != 401 {
                    assert!(retry_after, "{status} without Retry-After");
                }
            }
            Err(error) => panic!("{error}"),
        }
    }
    eprintln!("storm logins by status: {counts:?}");

    assert!(
        failures.is_empty(),
        "proxied requests failed during the storm: {failures:?}"
    );
    assert!(
        storm_duration >= Duration::from_secs(1),
        "the storm lasted only {storm_duration:?}: bcrypt cost 10 did not take effect"
    );
    // The proxy kept serving: many requests went through while the storm lasted (a stalled
    // proxy would manage a handful, each waiting behind bcrypt work).
    assert!(
        latencies.len() >= 20,
        "only {} proxied requests completed during a {storm_duration:?} login storm",
        latencies.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_storm_does_not_lock_out_the_health_checks_or_other_users() {
    let gateway = Gateway::start_with_edited(
        GatewayOptions::new().login_protection(100_000, "15m", "15m", 100_000),
        expensive_bounded_hashing,
    )
    .await;
    let user = gateway.signed_in_user().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut storm = tokio::task::JoinSet::new();
    for i in 0..STORM {
        let client = client.clone();
        let url = gateway.url("/auth/login");
        storm.spawn(async move {
            client
                .post(url)
                .json(&json!({"email": unique_email(), "password": format!("storm-{i}")}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
    }
    // While it rages: the admin listener answers, public routes answer, the session API
    // (no bcrypt) answers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        assert_eq!(gateway.admin_get("/healthz").await.status(), 200);
        assert_eq!(gateway.get("/public/x", None).await.status(), 200);
        assert_eq!(
            gateway
                .get("/auth/user/me", Some(&user.token))
                .await
                .status(),
            200
        );
    }
    let mut statuses = Vec::new();
    while let Some(joined) = storm.join_next().await {
        statuses.push(
            joined
                .unwrap()
                .expect("storm login failed at the HTTP level"),
        );
    }
    assert!(
        statuses.iter().all(|s| [401, 429, 503].contains(s)),
        "{statuses:?}"
    );
    // Afterwards the legitimate user can sign in again.
    gateway.login(&user.email, &user.password).await;
}
