//! Attack: make a browser sniff one of the gateway's own answers as HTML or script, strip
//! transport security, or frame a request body two ways with a `Content-Length` list
//! (`3, 3`, or `3` and `4`) so the gateway and the upstream disagree where the body ends.
//!
//! Guarantee (contract §2, `respond.rs`, `target.rs`): everything the gateway answers itself
//! carries `X-Content-Type-Options: nosniff`; with `server.hsts` every response carries
//! `Strict-Transport-Security`; a repeated `Content-Length` is forwarded as one value when all
//! values agree and refused with 400 otherwise.

mod common;

use common::*;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

async fn with_hsts(value: &str) -> Gateway {
    let line = format!("[server]\nhsts = {value}\n");
    Gateway::start_with_edited(
        GatewayOptions::new().routes(vec![
            RouteSpec::required("/", Upstream::Echo),
            RouteSpec::public("/public/", Upstream::Echo),
            RouteSpec::public(
                "/down/",
                Upstream::Addr(format!("127.0.0.1:{}", free_port())),
            ),
        ]),
        move |config| config.replacen("[server]\n", &line, 1),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_of_the_gateway_says_nosniff_and_hsts() {
    let gateway = with_hsts("true").await;
    let user = gateway.signed_in_user().await;
    let answers = [
        gateway.get("/app/x", None).await,
        gateway
            .get_with("/app/x", None, &[("Accept", "text/html")])
            .await,
        gateway.get("/auth/user/me", None).await,
        gateway.get("/auth/user/me", Some(&user.token)).await,
        gateway.get("/auth/login", None).await,
        gateway.get("/auth/assets/style.css", None).await,
        gateway.get("/auth/nope", None).await,
        gateway.get("/public/..%2f", None).await,
        gateway.get("/down/x", None).await,
        gateway
            .post_json("/auth/login", &serde_json::json!({"email": "x"}), None)
            .await,
    ];
    for response in answers {
        let url = response.url().to_string();
        assert_eq!(
            header(&response, "x-content-type-options"),
            Some("nosniff"),
            "{url} ({})",
            response.status()
        );
        assert_eq!(
            header(&response, "strict-transport-security"),
            Some("max-age=31536000"),
            "{url}"
        );
    }
    // Proxied answers get HSTS too.
    let response = gateway.get("/public/x", None).await;
    assert_eq!(
        header(&response, "strict-transport-security"),
        Some("max-age=31536000")
    );
    // The admin listener's answers are the gateway's too.
    let metrics = gateway.admin_get("/metrics").await;
    assert_eq!(header(&metrics, "x-content-type-options"), Some("nosniff"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_is_off_by_default_and_takes_a_written_value() {
    let gateway = Gateway::start().await;
    let response = gateway.get("/app/x", None).await;
    assert_eq!(header(&response, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&response, "strict-transport-security"), None);

    let gateway = with_hsts("\"max-age=600; includeSubDomains\"").await;
    let response = gateway.get("/public/x", None).await;
    assert_eq!(
        header(&response, "strict-transport-security"),
        Some("max-age=600; includeSubDomains")
    );
    let refused = run_check(
        "[server]\nhsts = \"forever\"\n[[route]]\nprefix = \"/\"\nupstreams = [\"127.0.0.1:1\"]\n",
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("server.hsts"));
}

async fn post_with_lengths(gateway: &Gateway, lengths: &str) -> Option<RawResponse> {
    let mut socket = TcpStream::connect(gateway.listen).await.unwrap();
    let request = format!(
        "POST /public/upload HTTP/1.1\r\nHost: {}\r\n{lengths}\r\nConnection: close\r\n\r\nabcdef",
        gateway.listen
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    read_raw_response(&mut socket).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_lists_are_collapsed_or_refused() {
    let gateway = Gateway::start().await;
    for agreeing in [
        "Content-Length: 3, 3",
        "Content-Length: 3,3",
        "Content-Length: 3\r\nContent-Length: 3",
        "Content-Length: 3, 3\r\nContent-Length: 3",
    ] {
        let before = gateway.echo.request_count();
        let response = post_with_lengths(&gateway, agreeing).await.unwrap();
        assert_eq!(response.status, 200, "{agreeing:?}");
        let seen = &gateway.echo.requests()[before];
        assert_eq!(seen.header_count("content-length"), 1, "{agreeing:?}");
        assert_eq!(seen.header("content-length"), Some("3"), "{agreeing:?}");
        assert_eq!(seen.body, "abc", "{agreeing:?}");
    }
    let before = gateway.echo.request_count();
    for disagreeing in [
        "Content-Length: 3, 4",
        "Content-Length: 3\r\nContent-Length: 4",
        "Content-Length: 3, x",
        "Content-Length: -3",
        "Content-Length: 3,",
    ] {
        let response = post_with_lengths(&gateway, disagreeing).await;
        let status = response.map(|r| r.status);
        assert_eq!(status, Some(400), "{disagreeing:?}");
    }
    assert_eq!(gateway.echo.request_count(), before);
}
