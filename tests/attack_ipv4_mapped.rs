//! Attack: reach a gateway listening on `[::]` over IPv4, so that the peer appears as
//! `::ffff:a.b.c.d`, and hope the address is read as IPv6: outside `trusted_proxies` written
//! for IPv4, in a different rate-limit or login bucket than the same client's plain IPv4
//! address, recorded differently in the audit trail.
//!
//! Guarantee (contract §2 step 0, `client_ip.rs`): IPv4-mapped peers (and forwarded addresses)
//! count as the IPv4 address they are everywhere: trusted proxies, rate-limit and login
//! buckets, audit rows, IP history and location.

mod common;

use std::time::Duration;

use common::*;

/// A gateway on `[::]:<port>` (dual-stack), reached by the harness over 127.0.0.1.
async fn dual_stack_gateway(options: GatewayOptions) -> Gateway {
    Gateway::start_with_edited(options, |config| {
        let listen = config
            .lines()
            .find(|line| line.starts_with("listen = "))
            .unwrap()
            .to_string();
        let port = listen
            .trim_end_matches('"')
            .rsplit(':')
            .next()
            .unwrap()
            .to_string();
        config.replacen(&listen, &format!("listen = \"[::]:{port}\""), 1)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_peers_are_plain_ipv4_for_upstreams_history_and_audit() {
    let gateway = dual_stack_gateway(GatewayOptions::new()).await;
    let seen = echoed(gateway.get("/public/x", None).await).await;
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("forwarded"), Some("for=127.0.0.1;proto=http"));

    let user = gateway.signed_in_user().await;
    let ips = json_body(gateway.get("/auth/user/ips", Some(&user.token)).await).await;
    assert_eq!(ips["ips"][0]["address"], "127.0.0.1", "{ips}");
    assert_eq!(ips["ips"][0]["location"], "Local", "{ips}");
    let sessions = json_body(gateway.get("/auth/user/sessions", Some(&user.token)).await).await;
    assert_eq!(sessions["sessions"][0]["ip"], "127.0.0.1", "{sessions}");

    let ips: Vec<String> = eventually(Duration::from_secs(10), "audit rows", || async {
        let ips = gateway
            .texts("SELECT ip FROM auth_events WHERE ip IS NOT NULL", &[])
            .await;
        (!ips.is_empty()).then_some(ips)
    })
    .await;
    assert!(ips.iter().all(|ip| ip == "127.0.0.1"), "{ips:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_peers_match_ipv4_trusted_proxies_in_either_spelling() {
    for cidr in [
        "127.0.0.1/32",
        "::ffff:127.0.0.1/128",
        "::ffff:127.0.0.0/104",
    ] {
        let gateway = dual_stack_gateway(GatewayOptions::new().trusted_proxies(&[cidr])).await;
        let seen = echoed(
            gateway
                .get_with("/public/x", None, &[("X-Forwarded-For", "203.0.113.7")])
                .await,
        )
        .await;
        assert_eq!(
            seen.header("x-forwarded-for"),
            Some("203.0.113.7"),
            "trusted_proxies = [{cidr}]"
        );
    }
}

fn wrong_login() -> (&'static str, Vec<u8>) {
    let body = serde_json::json!({"email": unique_email(), "password": "wrong-password"});
    ("application/json", body.to_string().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_and_plain_addresses_share_one_login_bucket() {
    let gateway = dual_stack_gateway(
        GatewayOptions::new()
            .trusted_proxies(&["127.0.0.1/32"])
            .login_protection(100, "15m", "15m", 3),
    )
    .await;
    // Two attempts from the mapped spelling, one from the plain one: the fourth is refused.
    for forwarded in ["::ffff:198.51.100.4", "::ffff:198.51.100.4", "198.51.100.4"] {
        let response = gateway
            .request(
                "POST",
                "/auth/login",
                None,
                &[("X-Forwarded-For", forwarded)],
                Some(wrong_login()),
            )
            .await;
        assert_eq!(response.status(), 401, "{forwarded}");
    }
    let response = gateway
        .request(
            "POST",
            "/auth/login",
            None,
            &[("X-Forwarded-For", "198.51.100.4")],
            Some(wrong_login()),
        )
        .await;
    assert_eq!(response.status(), 429);
    if !only_on(
        Backend::Production,
        "no login bucket is keyed by the mapped spelling (the in-process guard's buckets \
         cannot be read)",
    ) {
        return;
    }
    let keys = redis_keys(&gateway.redis_url, &gateway.redis_prefix).await;
    assert!(
        keys.iter().all(|key| !key.contains("ffff")),
        "a bucket keyed by the mapped spelling: {keys:?}"
    );
}
