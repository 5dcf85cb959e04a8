//! Attack: dodge a host-bound route by spelling the Host differently (`ADMIN.example.com`,
//! a trailing dot, a port), confuse the gateway and the upstream with a malformed Host (two
//! ports, a list, spaces, two Host headers, none at all), or name one host in an absolute-form
//! target and another in the Host header.
//!
//! Guarantee (contract §2 step 0, `target.rs`): the Host is lower-cased and its trailing dot and
//! port removed before matching; a malformed Host, a missing one on HTTP/1.1 or one that
//! disagrees with the target's authority is refused with 400 `invalid_host`; upstreams get the
//! normalised Host.

mod common;

use common::*;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// `admin.example.com` is protected; every other host gets the public site.
async fn gateway_with_admin_host() -> Gateway {
    Gateway::start_with_edited(
        GatewayOptions::new().routes(vec![RouteSpec::public("/", Upstream::Echo)]),
        |config| {
            let echo_line = config
                .lines()
                .find(|line| line.starts_with("upstreams = "))
                .unwrap()
                .to_string();
            format!(
                "{config}[[route]]\nprefix = \"/\"\nhost = \"admin.example.com\"\n{echo_line}\nauth = \"required\"\n"
            )
        },
    )
    .await
}

/// Sends a raw request head (`lines` joined with CRLF, then an empty line).
async fn send(gateway: &Gateway, head: &str) -> Option<RawResponse> {
    let mut socket = TcpStream::connect(gateway.listen).await.unwrap();
    socket
        .write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_raw_response(&mut socket).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_protected_host_is_protected() {
    let gateway = gateway_with_admin_host().await;
    for host in [
        "admin.example.com",
        "ADMIN.EXAMPLE.COM",
        "Admin.Example.Com",
        "admin.example.com.",
        "ADMIN.example.com.",
        "admin.example.com:80",
        "admin.example.com:8080",
        "admin.example.com.:8080",
        "admin.example.com:",
    ] {
        let response = send(&gateway, &format!("GET /secret HTTP/1.1\r\nHost: {host}"))
            .await
            .unwrap();
        assert_eq!(response.status, 401, "Host: {host}");
    }
    assert_eq!(gateway.echo.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_hosts_are_refused() {
    let gateway = gateway_with_admin_host().await;
    for host_lines in [
        "Host: admin.example.com:80:80",
        "Host: www.example.com:80:8080",
        "Host: www.example.com, admin.example.com",
        "Host: www.example.com,admin.example.com",
        "Host: www .example.com",
        "Host: www.example.com:http",
        "Host: www.example.com:99999",
        "Host: www..example.com",
        "Host: www.example.com..",
        "Host: user@admin.example.com",
        "Host: admin.example.com/x",
        "Host: admin.example.com\\x",
        "Host: [::1",
        "Host: [not-ipv6]:80",
        "Host: www.example.com\r\nHost: admin.example.com",
        "Host: admin.example.com\r\nHost: admin.example.com",
        "X-No-Host: 1",
    ] {
        let response = send(&gateway, &format!("GET /secret HTTP/1.1\r\n{host_lines}")).await;
        let status = response.as_ref().map(|r| r.status);
        assert_eq!(status, Some(400), "{host_lines:?}: got {status:?}");
        if let Some(response) = response.filter(|r| !r.body.is_empty()) {
            assert_eq!(
                response.json()["error"]["code"],
                "invalid_host",
                "{host_lines:?}"
            );
        }
    }
    assert_eq!(gateway.echo.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_target_must_agree_with_the_host() {
    let gateway = gateway_with_admin_host().await;
    for (target, host) in [
        ("http://www.example.com/secret", "admin.example.com"),
        ("http://admin.example.com/secret", "www.example.com"),
        ("http://admin.example.com:81/secret", "admin.example.com"),
        ("https://admin.example.com/secret", "admin.example.com:80"),
        ("http://user@admin.example.com/secret", "admin.example.com"),
    ] {
        let response = send(&gateway, &format!("GET {target} HTTP/1.1\r\nHost: {host}"))
            .await
            .unwrap();
        assert_eq!(response.status, 400, "{target} with Host: {host}");
    }
    for (target, host) in [
        ("http://admin.example.com/secret", "admin.example.com"),
        (
            "http://admin.example.com:8080/secret",
            "admin.example.com:8080",
        ),
        (
            "https://admin.example.com:443/secret",
            "admin.example.com:443",
        ),
    ] {
        let response = send(&gateway, &format!("GET {target} HTTP/1.1\r\nHost: {host}"))
            .await
            .unwrap();
        assert_eq!(response.status, 401, "{target} with Host: {host}");
    }
    // HTTP/1.0 may omit Host; the target's authority then names the host.
    let response = send(&gateway, "GET http://admin.example.com/secret HTTP/1.0")
        .await
        .unwrap();
    assert_eq!(response.status, 401);
    assert_eq!(gateway.echo.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_get_the_normalised_host() {
    let gateway = gateway_with_admin_host().await;
    for (sent, seen) in [
        ("WWW.Example.COM.", "www.example.com"),
        ("www.example.com.:8080", "www.example.com:8080"),
        ("[::1]:8080", "[::1]:8080"),
    ] {
        let before = gateway.echo.request_count();
        let response = send(&gateway, &format!("GET /page HTTP/1.1\r\nHost: {sent}"))
            .await
            .unwrap();
        assert_eq!(response.status, 200, "Host: {sent}");
        assert_eq!(gateway.echo.requests()[before].header("host"), Some(seen));
    }
    // HTTP/1.0 without a Host is refused: upstreams are spoken to in HTTP/1.1, which needs one.
    let response = send(&gateway, "GET /page HTTP/1.0").await.unwrap();
    assert_eq!(response.status, 400);
}
