//! Attack: send the headers upstream frameworks trust for the client's address
//! (`True-Client-IP`, `CF-Connecting-IP`, ...), for the request URL (`X-Original-URL`,
//! `X-Rewrite-URL`, which IIS and Symfony route by, after the gateway's route check), or for
//! the user, as other authentication gateways set them (`Remote-User`, `X-Forwarded-Groups`,
//! `X-WEBAUTH-USER`, `X-Auth-Request-Email`, ...).
//!
//! Guarantee (contract §2 step 3, `identity.rs`): every such header is removed from every request,
//! on public and protected routes, in any case and with `_` for `-`, before anything reads it;
//! `server.strip_headers` adds more.

mod common;

use common::*;

const SPOOFABLE: &[&str] = &[
    "X-Client-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "X-Cluster-Client-IP",
    "Fastly-Client-IP",
    "X-Original-URL",
    "X-Rewrite-URL",
    "Remote-User",
    "Remote-Groups",
    "Remote-Email",
    "Remote-Name",
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Access-Token",
    "X-WEBAUTH-USER",
    "X-WEBAUTH-EMAIL",
    "X-Webauth-Name",
    "X-User-Id",
    "X-User-Email",
    "X-Session-Id",
    "X-Authgate-Assertion",
];

fn spellings(name: &str) -> Vec<String> {
    vec![
        name.to_string(),
        name.to_ascii_lowercase(),
        name.to_ascii_uppercase(),
        name.replace('-', "_"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofable_headers_never_reach_the_upstream() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let mut sent: Vec<(String, String)> = Vec::new();
    for name in SPOOFABLE {
        for spelling in spellings(name) {
            sent.push((spelling, "/admin/secret".to_string()));
        }
    }
    let headers: Vec<(&str, &str)> = sent
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    for (path, token) in [("/public/x", None), ("/app/x", Some(user.token.as_str()))] {
        let seen = echoed(gateway.get_with(path, token, &headers).await).await;
        for (name, _) in &seen.header_list {
            let canonical = name.to_ascii_lowercase().replace('_', "-");
            let forbidden = SPOOFABLE
                .iter()
                .any(|spoofable| spoofable.eq_ignore_ascii_case(&canonical));
            if forbidden && canonical != "x-user-id" {
                panic!("{path}: the upstream received {name}");
            }
        }
        assert!(
            seen.header_list
                .iter()
                .all(|(_, value)| value != "/admin/secret"),
            "{path}: a spoofed value reached the upstream: {:?}",
            seen.header_list
        );
        match token {
            Some(_) => assert_eq!(seen.header_count("x-user-id"), 1),
            None => assert_eq!(seen.header_count("x-user-id"), 0),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_cannot_pass_identity_or_url_overrides_either() {
    let gateway = GatewayOptions::new()
        .trusted_proxies(&["127.0.0.1/32"])
        .start()
        .await;
    let seen = echoed(
        gateway
            .get_with(
                "/public/x",
                None,
                &[
                    ("X-Forwarded-For", "203.0.113.9"),
                    ("X-Original-URL", "/admin/secret"),
                    ("Remote-User", "root"),
                    ("X-Forwarded-User", "root"),
                ],
            )
            .await,
    )
    .await;
    assert_eq!(seen.header("x-forwarded-for"), Some("203.0.113.9"));
    for name in ["x-original-url", "remote-user", "x-forwarded-user"] {
        assert_eq!(seen.header(name), None, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let spoofed = [
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Prefix", "/admin"),
        ("X-Forwarded-Port", "443"),
        ("X-Forwarded-Server", "evil"),
        ("X-Forwarded-Scheme", "https"),
        ("X-Forwarded-Ssl", "on"),
        ("Client-IP", "6.6.6.6"),
        ("X-Original-Host", "evil.example"),
        ("X-Host", "evil.example"),
        ("Front-End-Https", "on"),
        ("X_Forwarded_Host", "evil.example"),
        ("X_Forwarded_For", "6.6.6.6"),
        ("X_Real_IP", "6.6.6.6"),
        ("X_Forwarded_Proto", "https"),
    ];
    let gateway = Gateway::start().await;
    let seen = echoed(gateway.get_with("/public/x", None, &spoofed).await).await;
    for (name, value) in &seen.header_list {
        assert!(
            !value.contains("evil") && !value.contains("6.6.6.6") && value != "/admin",
            "an untrusted client's {name}: {value} reached the upstream"
        );
        assert!(!name.contains('_'), "{name} reached the upstream");
    }
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));

    // A trusted proxy's dash-spelled headers pass; underscore spellings never do.
    let gateway = GatewayOptions::new()
        .trusted_proxies(&["127.0.0.1/32"])
        .start()
        .await;
    let seen = echoed(gateway.get_with("/public/x", None, &spoofed).await).await;
    assert_eq!(seen.header("x-forwarded-host"), Some("evil.example"));
    assert_eq!(seen.header("x-forwarded-prefix"), Some("/admin"));
    assert!(seen.header_list.iter().all(|(name, _)| !name.contains('_')));
}
