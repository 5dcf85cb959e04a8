//! The local session cache (`session.cache_ttl`, production pair on a standalone Redis): most
//! protected requests are answered without a Redis round trip, and nothing is given up for it.
//!
//! - A revocation through one instance (logout, revoking one session, signing out every other
//!   session, an eviction by the per-user cap) is honoured by every other instance within
//!   100 ms, and by the instance that made it at once.
//! - The cache really answers: a burst of requests costs a handful of Redis touches.
//! - With its invalidation channel cut (Redis unreachable), the cache is off: protected
//!   requests fail closed (503) and never pass on a cached session; when Redis is back the
//!   cache comes back by itself.
//! - Idle and absolute timeouts hold to the second while the cache answers (the activity is
//!   written behind, at the time of the request).

mod common;

use std::time::{Duration, Instant};

use common::*;

/// What the issue promises: a revocation anywhere is honoured everywhere this fast.
const REVOCATION_BOUND: Duration = Duration::from_millis(100);

fn production_only(what: &str) -> bool {
    require_backend(Backend::Production, what)
}

async fn status_of(gateway: &Gateway, token: &str) -> u16 {
    gateway
        .get_with("/app", Some(token), &[("Accept", "application/json")])
        .await
        .status()
        .as_u16()
}

/// Uses the session on `gateway` a few times, so its cache holds it.
async fn warm(gateway: &Gateway, token: &str) {
    for _ in 0..3 {
        assert_eq!(status_of(gateway, token).await, 200, "a live session");
    }
}

/// Polls `gateway` with `token` until it answers 401; how long that took from `since`.
async fn refused_after(gateway: &Gateway, token: &str, since: Instant) -> Duration {
    loop {
        match status_of(gateway, token).await {
            401 => return since.elapsed(),
            200 => {}
            other => panic!("a revoked session got {other}"),
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "the other instance still served a revoked session after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn metric(gateway: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&gateway.metrics().await, name, labels).unwrap_or(0.0)
}

async fn touches(gateway: &Gateway) -> f64 {
    metric(
        gateway,
        "authgate_store_latency_seconds_count",
        &[("store", "redis"), ("operation", "touch")],
    )
    .await
}

async fn cache_enabled(gateway: &Gateway) -> bool {
    metric(gateway, "authgate_session_cache_enabled", &[]).await == 1.0
}

/// Waits until the gateway's cache is subscribed to its invalidation channel.
async fn cache_turned_on(gateway: &Gateway) {
    eventually(Duration::from_secs(10), "the session cache on", || async {
        cache_enabled(gateway).await.then_some(())
    })
    .await;
}

/// Two instances on the same Redis and database, each with a warm cache.
async fn two_instances() -> (Gateway, Gateway) {
    let options = || {
        GatewayOptions::new()
            .max_sessions_per_user(2, "evict_oldest")
            .login_protection(5, "15m", "15m", 10_000)
            .max_registrations_per_ip(100)
    };
    let first = options().start().await;
    let second = options().sharing_stores_with(&first).start().await;
    for gateway in [&first, &second] {
        cache_turned_on(gateway).await;
    }
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_through_one_instance_is_honoured_by_the_other_within_100ms() {
    if !production_only("two instances share Redis; the embedded pair runs one instance") {
        return;
    }
    let (first, second) = two_instances().await;
    let origin = first.public_origin();
    let api = [("Accept", "application/json"), ("Origin", origin.as_str())];
    let mut worst = Duration::ZERO;
    for round in 0..5 {
        // Logout.
        let user = first.signed_in_user().await;
        warm(&first, &user.token).await;
        warm(&second, &user.token).await;
        assert!(first.logout(Some(&user.token)).await.status().is_success());
        let ended = Instant::now();
        assert_eq!(
            status_of(&first, &user.token).await,
            401,
            "round {round}: logout, same instance"
        );
        worst = worst.max(refused_after(&second, &user.token, ended).await);

        // Revoking every other session (one kept).
        let kept = first.login(&user.email, &user.password).await;
        let other = first.login(&user.email, &user.password).await;
        warm(&second, &other).await;
        let response = first
            .request("DELETE", "/auth/user/sessions", Some(&kept), &api, None)
            .await;
        assert_eq!(
            response.status(),
            200,
            "round {round}: sign out everywhere else"
        );
        let ended = Instant::now();
        assert_eq!(
            status_of(&first, &other).await,
            401,
            "round {round}: same instance"
        );
        worst = worst.max(refused_after(&second, &other, ended).await);
        assert_eq!(
            status_of(&second, &kept).await,
            200,
            "round {round}: the kept session"
        );

        // An eviction by the per-user cap (2): a third login ends the least recently used.
        warm(&second, &kept).await;
        let newer = first.login(&user.email, &user.password).await;
        warm(&second, &newer).await;
        let _newest = first.login(&user.email, &user.password).await;
        let ended = Instant::now();
        worst = worst.max(refused_after(&second, &kept, ended).await);
    }
    assert!(
        worst <= REVOCATION_BOUND,
        "a revocation took {worst:?} to reach the other instance (bound {REVOCATION_BOUND:?})"
    );
    eprintln!("slowest revocation seen by the other instance: {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_answers_most_requests_without_redis() {
    if !production_only("the embedded pair's session store is in the process (no cache)") {
        return;
    }
    let gateway = GatewayOptions::new().start().await;
    cache_turned_on(&gateway).await;
    let user = gateway.signed_in_user().await;
    let before = touches(&gateway).await;
    for _ in 0..50 {
        let response = gateway.get("/app", Some(&user.token)).await;
        assert_eq!(response.status(), 200);
        let echoed = EchoedRequest::from_json(&response.json().await.unwrap());
        assert_eq!(echoed.header("x-user-id"), Some(user.id.as_str()));
    }
    let used = touches(&gateway).await - before;
    assert!(
        (1.0..=10.0).contains(&used),
        "50 requests cost {used} Redis touches (the cache should answer most)"
    );
    assert!(metric(&gateway, "authgate_session_cache_hits_total", &[]).await >= 40.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_cut_off_the_cache_is_off_and_requests_fail_closed() {
    if !production_only("cuts Redis off (the embedded pair's session store is in the process)") {
        return;
    }
    let redis = TcpForwarder::to_redis().await;
    let gateway = GatewayOptions::new()
        .redis_url(&redis.redis_url())
        .start()
        .await;
    cache_turned_on(&gateway).await;
    let user = gateway.signed_in_user().await;
    warm(&gateway, &user.token).await;

    redis.stop();
    // The channel's connection was cut with the rest: the cache turns off within moments.
    let started = Instant::now();
    eventually(Duration::from_secs(2), "a protected 503", || async {
        (status_of(&gateway, &user.token).await == 503).then_some(())
    })
    .await;
    let off_after = started.elapsed();
    for n in 0..20 {
        assert_eq!(
            status_of(&gateway, &user.token).await,
            503,
            "request {n} with Redis cut off: a cached session must not pass"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!cache_enabled(&gateway).await, "the cache is off");
    eprintln!("cache off {off_after:?} after Redis was cut");

    redis.resume().await;
    eventually(
        Duration::from_secs(10),
        "the session to work again",
        || async { (status_of(&gateway, &user.token).await == 200).then_some(()) },
    )
    .await;
    cache_turned_on(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_absolute_timeouts_hold_while_the_cache_answers() {
    if !production_only("the embedded pair has no cache") {
        return;
    }
    let gateway = GatewayOptions::new()
        .idle_timeout("2s")
        .absolute_timeout("5s")
        .start()
        .await;
    cache_turned_on(&gateway).await;
    // Used every 300 ms for 3 s: far past one idle timeout, so the slides written behind
    // (not the touches) kept it alive.
    let user = gateway.signed_in_user().await;
    let login = Instant::now();
    while login.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            status_of(&gateway, &user.token).await,
            200,
            "an active session"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // 1.5 s unused: still within the idle timeout, counted from the last request.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        status_of(&gateway, &user.token).await,
        200,
        "1.5 s idle of 2 s"
    );
    // Past the absolute lifetime (5 s) however active.
    while login.elapsed() < Duration::from_millis(5300) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status_of(&gateway, &user.token).await,
        401,
        "past the absolute timeout"
    );

    // Idle: a fresh session, used, then left alone past the idle timeout.
    let other = gateway.login(&user.email, &user.password).await;
    warm(&gateway, &other).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(status_of(&gateway, &other).await, 401, "2.3 s idle of 2 s");
}
