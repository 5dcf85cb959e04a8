//! Attack: IP spoofing with forwarding headers. A client sends `X-Forwarded-For` / `Forwarded`
//! (rotating the values) to get a fresh rate-limit bucket for every request, to hide or forge
//! the address recorded for its sessions, or to mislead the upstream about who is calling.
//!
//! Guarantee (contract §2.1): the client IP is the TCP peer unless the peer is in
//! `trusted_proxies`; only then are `X-Forwarded-For` / `Forwarded` believed, walked right to
//! left, and the rightmost hop that is not itself a trusted proxy is the client. That address
//! keys the login and request rate limits, is what `/auth/user/ips` records, and is the
//! `X-Forwarded-For` the upstream receives.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::json;

async fn login_attempt(
    gateway: &Gateway,
    email: &str,
    password: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    gateway
        .request(
            "POST",
            "/auth/login",
            None,
            headers,
            Some((
                "application/json",
                serde_json::to_vec(&json!({"email": email, "password": password})).unwrap(),
            )),
        )
        .await
}

/// The addresses `/auth/user/ips` lists for the signed-in user.
async fn recorded_ips(gateway: &Gateway, token: &str) -> BTreeSet<String> {
    let body = json_body(gateway.get("/auth/user/ips", Some(token)).await).await;
    body["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("no ips array: {body}"))
        .iter()
        .map(|ip| ip["address"].as_str().unwrap().to_string())
        .collect()
}

/// Every `login_attempts:<ip>` counter in Redis, by IP; `None` on the embedded pair, whose
/// login guard keeps its buckets in the process.
async fn login_attempt_buckets(gateway: &Gateway) -> Option<BTreeSet<String>> {
    if !only_on(
        Backend::Production,
        "which login buckets exist (Redis keys; the in-process guard's cannot be read)",
    ) {
        return None;
    }
    let prefix = format!("{}login_attempts:", gateway.redis_prefix);
    Some(
        redis_keys(&base_redis_url(), &prefix)
            .await
            .into_iter()
            .map(|key| key[prefix.len()..].to_string())
            .collect(),
    )
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A different documentation-range address for each `i`.
fn spoofed(i: u32) -> String {
    format!("203.0.113.{}", i % 250 + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_forwarding_headers_does_not_reset_the_login_limit() {
    const PER_IP: u32 = 5;
    // No trusted proxies: every peer is the client, whatever it claims.
    let gateway = GatewayOptions::new()
        .login_protection(1000, "15m", "15m", PER_IP)
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;

    for i in 0..PER_IP {
        let ip = spoofed(i);
        let forwarded = format!("for={}", spoofed(i + 100));
        let headers = [
            ("X-Forwarded-For", ip.as_str()),
            ("Forwarded", forwarded.as_str()),
            ("X-Real-IP", ip.as_str()),
        ];
        let response = login_attempt(&gateway, &unique_email(), "stuffed-password", &headers).await;
        assert_json_error(response, 401, "invalid_credentials").await;
    }
    let fresh = spoofed(200);
    let response = login_attempt(
        &gateway,
        &email,
        &password,
        &[("X-Forwarded-For", fresh.as_str())],
    )
    .await;
    assert_eq!(
        response.status(),
        429,
        "a new X-Forwarded-For value bought a fresh login bucket"
    );
    assert_json_error(response, 429, "rate_limited").await;
    if let Some(buckets) = login_attempt_buckets(&gateway).await {
        assert_eq!(
            buckets,
            set(&["127.0.0.1"]),
            "attempts were counted under a spoofed address"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_forwarding_headers_does_not_escape_the_request_rate_limit() {
    let gateway = GatewayOptions::new().rate_limit(1, 3).start().await;
    let mut limited = 0;
    for i in 0..12 {
        let ip = spoofed(i);
        let response = gateway
            .get_with(
                "/public/x",
                None,
                &[("X-Forwarded-For", ip.as_str()), ("X-Real-IP", ip.as_str())],
            )
            .await;
        if response.status() == 429 {
            limited += 1;
        }
    }
    assert!(
        limited >= 5,
        "12 rapid requests with rotating X-Forwarded-For (1/s, burst 3): only {limited} limited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_client_cannot_choose_its_recorded_ip() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let login = gateway
        .login_full_with(
            &email,
            &password,
            &[
                ("X-Forwarded-For", "198.51.100.23"),
                ("X-Forwarded-For", "198.51.100.24"),
                ("Forwarded", "for=192.0.2.60;proto=https"),
                ("X-Real-IP", "192.0.2.61"),
            ],
        )
        .await;
    assert_eq!(login.body["session"]["ip"], "127.0.0.1");
    assert_eq!(
        recorded_ips(&gateway, &login.token).await,
        set(&["127.0.0.1"])
    );
    let sessions = json_body(gateway.get("/auth/user/sessions", Some(&login.token)).await).await;
    for session in sessions["sessions"].as_array().unwrap() {
        assert_eq!(session["ip"], "127.0.0.1", "{session}");
    }
    // The durable records agree.
    let ips = gateway.texts("SELECT ip FROM sessions", &[]).await;
    assert_eq!(ips, vec!["127.0.0.1".to_string()]);
    let events: Vec<String> = eventually(
        Duration::from_secs(10),
        "the login_ok audit event",
        || async {
            let ips = gateway
                .texts("SELECT ip FROM auth_events WHERE kind = 'login_ok'", &[])
                .await;
            (!ips.is_empty()).then_some(ips)
        },
    )
    .await;
    assert_eq!(events, vec!["127.0.0.1".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_real_client_ip_not_the_spoofed_one() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    for (path, token) in [("/public/x", None), ("/app", Some(user.token.as_str()))] {
        let response = gateway
            .get_with(
                path,
                token,
                &[
                    ("X-Forwarded-For", "198.51.100.23"),
                    ("x-forwarded-for", "10.0.0.1"),
                ],
            )
            .await;
        let seen = echoed(response).await;
        assert_eq!(
            seen.header_count("x-forwarded-for"),
            1,
            "{path}: {:?}",
            seen.header_list
        );
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarded_and_real_ip_headers_do_not_reach_the_upstream() {
    // An upstream that reads RFC 7239 `Forwarded` or `X-Real-IP` must not be told the
    // attacker's choice either: the gateway vouches for X-Forwarded-For only.
    let gateway = Gateway::start().await;
    let response = gateway
        .get_with(
            "/public/x",
            None,
            &[
                ("Forwarded", "for=198.51.100.23;proto=https"),
                ("X-Real-IP", "198.51.100.24"),
            ],
        )
        .await;
    let seen = echoed(response).await;
    for (name, value) in &seen.header_list {
        assert!(
            !value.contains("198.51.100."),
            "the upstream received the spoofed client address in {name}: {value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() {
    let gateway = GatewayOptions::new()
        .trusted_proxies(&["127.0.0.1/32"])
        .login_protection(1000, "15m", "15m", 1000)
        .max_sessions_per_user(100, "evict_oldest")
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;

    // The client prepended 6.6.6.6 itself; our proxy appended the address it saw.
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("X-Forwarded-For", "6.6.6.6, 198.51.100.7")],
            "198.51.100.7",
        ),
        (
            &[("X-Forwarded-For", "1.1.1.1, 198.51.100.8, 127.0.0.1")],
            "198.51.100.8",
        ),
        (
            &[
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-For", "198.51.100.9"),
            ],
            "198.51.100.9",
        ),
        (
            &[("Forwarded", "for=6.6.6.6, for=\"[2001:db8::1]:4711\"")],
            "2001:db8::1",
        ),
    ];
    let mut token = String::new();
    for (headers, want) in cases {
        let login = gateway.login_full_with(&email, &password, headers).await;
        assert_eq!(login.body["session"]["ip"], want, "{headers:?}");
        token = login.token;
    }
    let recorded = recorded_ips(&gateway, &token).await;
    assert_eq!(
        recorded,
        set(&[
            "198.51.100.7",
            "198.51.100.8",
            "198.51.100.9",
            "2001:db8::1"
        ]),
        "spoofed leftmost entries were recorded"
    );

    // The upstream is told the resolved client, not the chain the client wrote.
    let response = gateway
        .get_with(
            "/app",
            Some(&token),
            &[("X-Forwarded-For", "6.6.6.6, 198.51.100.7")],
        )
        .await;
    assert_eq!(
        echoed(response).await.header("x-forwarded-for"),
        Some("198.51.100.7")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_rotating_the_leftmost_entries_keeps_one_bucket() {
    const PER_IP: u32 = 4;
    let gateway = GatewayOptions::new()
        .trusted_proxies(&["127.0.0.1/32"])
        .login_protection(1000, "15m", "15m", PER_IP)
        .start()
        .await;
    for i in 0..PER_IP {
        let chain = format!("{}, 198.51.100.7", spoofed(i));
        let response = login_attempt(
            &gateway,
            &unique_email(),
            "stuffed-password",
            &[("X-Forwarded-For", chain.as_str())],
        )
        .await;
        assert_eq!(response.status(), 401);
    }
    let chain = format!("{}, 198.51.100.7", spoofed(99));
    let response = login_attempt(
        &gateway,
        &unique_email(),
        "stuffed-password",
        &[("X-Forwarded-For", chain.as_str())],
    )
    .await;
    assert_json_error(response, 429, "rate_limited").await;
    // Another real client behind the same proxy is unaffected.
    let response = login_attempt(
        &gateway,
        &unique_email(),
        "some-password",
        &[("X-Forwarded-For", "198.51.100.99")],
    )
    .await;
    assert_eq!(response.status(), 401, "an innocent client was limited");
    if let Some(buckets) = login_attempt_buckets(&gateway).await {
        assert_eq!(buckets, set(&["198.51.100.7", "198.51.100.99"]));
    }
}
