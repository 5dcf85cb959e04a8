//! Per-IP rate limiting (contract §2.2): over the limit every route, `/auth` included, answers
//! 429 `rate_limited` with `Retry-After` and the `RateLimit-*` headers.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Sends requests back to back until one is refused; returns (accepted before it, the 429).
async fn hammer_until_limited(
    gateway: &Gateway,
    method: &str,
    path: &str,
    max: usize,
) -> (usize, reqwest::Response) {
    for accepted in 0..max {
        let response = gateway
            .request(method, path, None, &[("Accept", "application/json")], None)
            .await;
        if response.status() == 429 {
            return (accepted, response);
        }
    }
    panic!("{max} rapid requests to {path} were never rate limited");
}

/// Asserts the 429's headers and body; returns Retry-After in seconds.
async fn assert_rate_limited(response: reqwest::Response) -> u64 {
    let retry_after = header(&response, "retry-after")
        .expect("429 without Retry-After")
        .to_string();
    let retry_after: u64 = retry_after
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {retry_after:?} is not an integer of seconds"));
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    let limit = header(&response, "ratelimit-limit").expect("429 without RateLimit-Limit");
    assert!(
        limit
            .trim()
            .split([',', ';'])
            .next()
            .unwrap()
            .trim()
            .parse::<u64>()
            .is_ok(),
        "RateLimit-Limit {limit:?}"
    );
    assert!(
        header(&response, "ratelimit-remaining").is_some(),
        "429 without RateLimit-Remaining"
    );
    assert!(
        header(&response, "ratelimit-reset").is_some(),
        "429 without RateLimit-Reset"
    );
    assert_json_error(response, 429, "rate_limited").await;
    retry_after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_requests_beyond_the_burst_get_429_with_retry_after() {
    let gateway = GatewayOptions::new().rate_limit(1, 3).start().await;
    let (accepted, refused) = hammer_until_limited(&gateway, "GET", "/public/page", 20).await;
    assert!(
        (1..=5).contains(&accepted),
        "burst 3 at 1/s let {accepted} requests through"
    );
    assert_rate_limited(refused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_requests_never_reach_the_upstream() {
    let gateway = GatewayOptions::new().rate_limit(1, 3).start().await;
    let (accepted, _) = hammer_until_limited(&gateway, "GET", "/public/page", 20).await;
    for _ in 0..3 {
        let response = gateway.get("/public/page", None).await;
        assert_eq!(response.status(), 429);
    }
    assert_eq!(gateway.echo.request_count(), accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_api_is_rate_limited_too() {
    let gateway = GatewayOptions::new().rate_limit(1, 3).start().await;
    let (accepted, refused) = hammer_until_limited(&gateway, "GET", "/auth/user/me", 20).await;
    assert!((1..=5).contains(&accepted), "{accepted}");
    assert_rate_limited(refused).await;
    let login = gateway
        .post_json(
            "/auth/login",
            &serde_json::json!({"email": unique_email(), "password": strong_password()}),
            None,
        )
        .await;
    assert_rate_limited(login).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_recovers_after_retry_after() {
    let gateway = GatewayOptions::new().rate_limit(1, 3).start().await;
    let (_, refused) = hammer_until_limited(&gateway, "GET", "/public/page", 20).await;
    let retry_after = assert_rate_limited(refused).await;
    assert!(
        retry_after <= 5,
        "Retry-After {retry_after} for a 1/s limit"
    );
    let limited_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let status = eventually(
        Duration::from_secs(3),
        "the limit to let a request through",
        || async {
            let status = gateway.get("/public/page", None).await.status();
            (status == 200).then_some(status)
        },
    )
    .await;
    assert_eq!(status, 200);
    assert!(limited_at.elapsed() < Duration::from_secs(retry_after + 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_from_an_untrusted_peer_does_not_evade_the_limit() {
    // trusted_proxies = []: the TCP peer is the client, whatever the headers claim.
    let gateway = GatewayOptions::new().rate_limit(1, 3).start().await;
    let mut limited = false;
    for i in 0..20 {
        let forwarded = format!("203.0.113.{}", i + 1);
        let response = gateway
            .get_with(
                "/public/page",
                None,
                &[
                    ("X-Forwarded-For", forwarded.as_str()),
                    ("Forwarded", &format!("for={forwarded}")),
                ],
            )
            .await;
        if response.status() == 429 {
            limited = true;
            break;
        }
    }
    assert!(
        limited,
        "a forged X-Forwarded-For per request evaded the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_from_a_trusted_proxy_limits_each_client_separately() {
    let gateway = GatewayOptions::new()
        .rate_limit(1, 3)
        .trusted_proxies(&["127.0.0.1/32"])
        .start()
        .await;
    // Ten different clients behind the proxy, two requests each: nobody exceeds burst 3.
    for i in 0..10 {
        let client = format!("198.51.100.{}", i + 1);
        for _ in 0..2 {
            let response = gateway
                .get_with(
                    "/public/page",
                    None,
                    &[("X-Forwarded-For", client.as_str())],
                )
                .await;
            assert_eq!(response.status(), 200, "client {client} was limited");
        }
    }
    // One client hammering is still limited.
    let mut limited = false;
    for _ in 0..20 {
        let response = gateway
            .get_with(
                "/public/page",
                None,
                &[("X-Forwarded-For", "198.51.100.200")],
            )
            .await;
        if response.status() == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited);
}
