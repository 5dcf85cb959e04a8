//! Attack: resource exhaustion and parser abuse with oversized or malformed requests: huge or
//! endless `/auth` bodies (declared or chunked), slow bodies, giant Cookie or header blocks,
//! CR/LF header injection, invalid UTF-8, NUL bytes, JSON nesting bombs, SQL metacharacters,
//! absurdly long fields.
//!
//! Guarantee (contract §3, §5): `/auth` bodies over 16 KiB → 413; a wrong content type → 415 (a
//! form-capable one → 403); a Cookie header over 8 KiB or headers over 32 KiB in total → 431;
//! header values with CR/LF never reach an upstream; everything else a client can send gets a
//! clean 4xx, never a 5xx; and none of it changes the database: a pre-existing user can still
//! sign in and no row appears.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// A gateway with a known user, and the user count before the attack.
struct Target {
    gateway: Gateway,
    user_id: String,
    email: String,
    password: String,
    users_before: i64,
}

impl Target {
    async fn new() -> Self {
        let gateway = GatewayOptions::new()
            .login_protection(10_000, "15m", "15m", 10_000)
            .start()
            .await;
        let email = unique_email();
        let password = strong_password();
        let user = gateway.register(&email, &password).await;
        let users_before = user_count(&gateway).await;
        Target {
            gateway,
            user_id: user["id"].as_str().expect("user.id").to_string(),
            email,
            password,
            users_before,
        }
    }

    /// The database is as it was, and the existing user can still sign in.
    async fn assert_untouched(&self) {
        assert_eq!(
            user_count(&self.gateway).await,
            self.users_before,
            "the attack created or removed users"
        );
        let tables = self.gateway.db().await.tables().await;
        for table in [
            "users",
            "sessions",
            "auth_events",
            "devices",
            "ip_addresses",
        ] {
            assert!(
                tables.iter().any(|t| t == table),
                "table {table} disappeared: {tables:?}"
            );
        }
        self.gateway.login(&self.email, &self.password).await;
    }
}

async fn user_count(gateway: &Gateway) -> i64 {
    gateway.count("SELECT count(*) FROM users", &[]).await
}

/// Asserts a 4xx with the JSON error shape (or the HTML page for a form post).
async fn assert_clean_4xx(response: reqwest::Response, what: &str) -> u16 {
    let status = response.status().as_u16();
    let content_type = header(&response, "content-type")
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.unwrap();
    assert!(
        (400..500).contains(&status),
        "{what}: want a 4xx, got {status}: {text}"
    );
    if !content_type.starts_with("text/html") {
        let value: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: {status} body is not JSON ({e}): {text:?}"));
        assert!(value["error"]["code"].is_string(), "{what}: {text}");
    }
    status
}

/// Writes `head`, then streams `body` (ignoring write errors: the gateway may answer and
/// close early), and returns the response, if any arrived.
async fn send_streaming(gateway: &Gateway, head: String, body: Vec<u8>) -> Option<RawResponse> {
    let mut socket = TcpStream::connect(gateway.listen).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = socket.into_split();
    let writer_task = tokio::spawn(async move {
        for chunk in body.chunks(64 * 1024) {
            if writer.write_all(chunk).await.is_err() {
                return;
            }
        }
        let _ = writer.flush().await;
        // Keep the write half open until the reader is done.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let response = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            use tokio::io::AsyncReadExt as _;
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let status = head.split(' ').nth(1)?.parse().ok()?;
                let headers = head
                    .split("\r\n")
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                    .collect();
                return Some(RawResponse {
                    status,
                    headers,
                    body: buf[end + 4..].to_vec(),
                });
            }
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("no response within 20 s");
    writer_task.abort();
    response
}

fn chunked(body: &[u8], chunk_size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(chunk_size) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A JSON login body padded to `size` bytes.
fn padded_login(size: usize) -> Vec<u8> {
    let mut body =
        br#"{"email":"someone@example.com","password":"whatever-password","pad":""#.to_vec();
    body.resize(size - 2, b'a');
    body.extend_from_slice(b"\"}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_auth_bodies_are_refused_with_413() {
    let target = Target::new().await;
    let gateway = &target.gateway;
    let limit = 16 * 1024;

    // Just over the limit, with Content-Length.
    for path in ["/auth/login", "/auth/register"] {
        let response = gateway
            .post_raw(path, "application/json", padded_login(limit + 1))
            .await;
        assert_json_error(response, 413, "payload_too_large").await;
    }
    // Exactly at the limit is read (and judged on its content).
    let response = gateway
        .post_raw("/auth/login", "application/json", padded_login(limit))
        .await;
    assert_eq!(response.status(), 401, "a 16 KiB body should be accepted");

    // Chunked, no Content-Length: the gateway counts as it reads.
    let head = format!(
        "POST /auth/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        gateway.listen
    );
    let response = send_streaming(gateway, head, chunked(&padded_login(limit + 100), 1000))
        .await
        .expect("an answer to a chunked 16 KiB + 100 body");
    assert_eq!(response.status, 413, "{response:?}");

    // 10 MB declared: refused without reading it.
    let started = Instant::now();
    let head = format!(
        "POST /auth/register HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 10000000\r\nConnection: close\r\n\r\n",
        gateway.listen
    );
    let response = send_streaming(gateway, head, vec![b'{'; 10_000_000])
        .await
        .expect("an answer to a 10 MB body");
    assert_eq!(response.status, 413, "{response:?}");
    // 10 MB chunked, an endless-looking stream.
    let head = format!(
        "POST /auth/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        gateway.listen
    );
    let response = send_streaming(gateway, head, chunked(&vec![b' '; 10_000_000], 64 * 1024))
        .await
        .expect("an answer to a chunked 10 MB body");
    assert_eq!(response.status, 413, "{response:?}");
    eprintln!("10 MB bodies refused in {:?}", started.elapsed());

    target.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_finishes_is_cut_off_and_does_not_block_others() {
    let target = Target::new().await;
    let gateway = &target.gateway;
    let mut socket = TcpStream::connect(gateway.listen).await.unwrap();
    socket
        .write_all(
            format!(
                "POST /auth/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                 Content-Length: 1000\r\nConnection: close\r\n\r\n{{\"email\":",
                gateway.listen
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Meanwhile everyone else is served.
    for _ in 0..5 {
        assert_eq!(gateway.get("/public/x", None).await.status(), 200);
    }
    target.gateway.login(&target.email, &target.password).await;
    // The slow body ends with a 4xx (or a closed connection), never a 5xx, within the
    // gateway's body timeout (10 s) plus margin.
    let response = tokio::time::timeout(Duration::from_secs(25), read_raw_response(&mut socket))
        .await
        .expect("the stalled request was never cut off");
    if let Some(response) = response {
        assert!(
            (400..500).contains(&response.status),
            "a stalled body got {}",
            response.status
        );
    }
    target.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_types_are_refused_with_4xx() {
    let target = Target::new().await;
    let gateway = &target.gateway;
    let email = unique_email();
    let body = serde_json::to_vec(&json!({"email": email, "password": strong_password()})).unwrap();
    for content_type in ["application/xml", "application/jsonx", "image/png", "json"] {
        let response = gateway
            .post_raw("/auth/register", content_type, body.clone())
            .await;
        assert_json_error(response, 415, "unsupported_media_type").await;
    }
    // A cross-site-form content type is refused by the CSRF rule instead.
    for content_type in ["text/plain", "multipart/form-data; boundary=x"] {
        let response = gateway
            .post_raw("/auth/register", content_type, body.clone())
            .await;
        assert_clean_4xx(response, content_type).await;
    }
    let response = gateway
        .request("POST", "/auth/register", None, &[], None)
        .await;
    assert_clean_4xx(response, "no content type").await;
    target.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giant_cookie_and_header_blocks_are_refused_with_431() {
    let target = Target::new().await;
    let gateway = &target.gateway;
    let token = gateway.login(&target.email, &target.password).await;

    let big_cookie = format!("{}; junk={}", cookie_header(&token), "c".repeat(9 * 1024));
    for path in ["/app", "/public/x", "/auth/user/me"] {
        let response = gateway
            .get_with(path, None, &[("Cookie", big_cookie.as_str())])
            .await;
        assert_json_error(response, 431, "headers_too_large").await;
    }
    let filler = "h".repeat(7 * 1024);
    let many: Vec<(String, String)> = (0..5)
        .map(|i| (format!("X-Filler-{i}"), filler.clone()))
        .collect();
    let headers: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    for path in ["/app", "/public/x", "/auth/login"] {
        let response = gateway.get_with(path, Some(&token), &headers).await;
        assert_json_error(response, 431, "headers_too_large").await;
    }
    assert_eq!(
        gateway.echo.request_count(),
        0,
        "an oversized request reached the upstream"
    );
    // A normal request on a fresh connection still works.
    assert_eq!(gateway.get("/app", Some(&token)).await.status(), 200);
    target.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cr_lf_in_header_values_cannot_inject_headers_upstream() {
    let target = Target::new().await;
    let gateway = &target.gateway;
    let cookie = cookie_header(&gateway.login(&target.email, &target.password).await);

    // Ways to smuggle "X-User-Id: evil" (or another header) inside one header's value.
    let payloads: [&[u8]; 6] = [
        b"X-Foo: a\r\nX-User-Id: evil\r\n",
        b"X-Foo: a\nX-User-Id: evil\r\n",
        b"X-Foo: a\rX-User-Id: evil\r\n",
        b"X-Foo: a\r\n X-User-Id: evil\r\n",
        b"X-Foo: a\r\n\tX-User-Id: evil\r\n",
        b"X-Foo: a%0d%0aX-User-Id: evil\r\n",
    ];
    for (path, session) in [("/public/x", None), ("/app", Some(cookie.as_str()))] {
        for payload in payloads {
            let before = gateway.echo.request_count();
            let mut request =
                format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", gateway.listen).into_bytes();
            if let Some(cookie) = session {
                request.extend_from_slice(format!("Cookie: {cookie}\r\n").as_bytes());
            }
            request.extend_from_slice(payload);
            request.extend_from_slice(b"Connection: close\r\n\r\n");
            let what = format!("{path} with {:?}", String::from_utf8_lossy(payload));
            let mut socket = TcpStream::connect(gateway.listen).await.unwrap();
            socket.write_all(&request).await.unwrap();
            let response = read_raw_response(&mut socket).await;
            eprintln!(
                "{what}: {:?}, {} request(s) upstream",
                response.as_ref().map(|r| r.status),
                gateway.echo.request_count() - before
            );
            if let Some(response) = &response {
                assert!(
                    response.status < 500,
                    "{what}: {} {:?}",
                    response.status,
                    String::from_utf8_lossy(&response.body)
                );
            }
            for seen in gateway.echo.requests().iter().skip(before) {
                for (name, value) in &seen.header_list {
                    assert!(
                        !value.contains('\r') && !value.contains('\n'),
                        "{what}: upstream header {name} holds CR/LF: {value:?}"
                    );
                    assert!(
                        !(name == "x-user-id" && value.contains("evil")),
                        "{what}: the injected X-User-Id reached the upstream"
                    );
                }
                assert!(
                    seen.header_count("x-user-id") <= 1,
                    "{what}: {:?}",
                    seen.header_list
                );
                if session.is_some() {
                    assert_eq!(
                        seen.header("x-user-id"),
                        Some(target.user_id.as_str()),
                        "{what}"
                    );
                }
            }
        }
    }
    target.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_login_and_registration_bodies_get_clean_4xx() {
    let target = Target::new().await;
    let gateway = &target.gateway;
    let nesting_bomb = format!("{}{}", "[".repeat(15_000), "]".repeat(1_000));
    let object_bomb = format!("{}1{}", "{\"a\":".repeat(3_000), "}".repeat(3_000));
    let long_email = format!("{}@example.com", "a".repeat(10_000));
    let long_domain = format!("user@{}.com", "d".repeat(10_000));
    let long_password = "p".repeat(10_000);
    let mut invalid_utf8 = br#"{"email":"a@example.com","password":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28, 0xed, 0xa0, 0x80]);
    invalid_utf8.extend_from_slice(br#""}"#);
    let mut raw_nul = br#"{"email":"a@example.com","password":"pass"#.to_vec();
    raw_nul.extend_from_slice(&[0, 0, 0]);
    raw_nul.extend_from_slice(br#"word123"}"#);

    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("invalid UTF-8", invalid_utf8),
        ("raw NUL bytes", raw_nul),
        (
            "escaped NUL in email",
            serde_json::to_vec(&json!({"email": "a\u{0}@example.com", "password": "password123"}))
                .unwrap(),
        ),
        (
            "escaped NUL in password",
            serde_json::to_vec(&json!({"email": target.email, "password": "pass\u{0}word-123"}))
                .unwrap(),
        ),
        ("array nesting bomb", nesting_bomb.into_bytes()),
        ("object nesting bomb", object_bomb.into_bytes()),
        ("lone surrogate", br#"{"email":"\ud800@example.com","password":"password123"}"#.to_vec()),
        ("truncated", br#"{"email":"a@example.com","pass"#.to_vec()),
        ("number overflow", br#"{"email":1e999999,"password":"x"}"#.to_vec()),
        ("empty", Vec::new()),
        ("not an object", b"\"just a string\"".to_vec()),
        ("duplicate keys", br#"{"email":"a@example.com","email":["x"],"password":"p"}"#.to_vec()),
        (
            "very long email",
            serde_json::to_vec(&json!({"email": long_email, "password": "password123"})).unwrap(),
        ),
        (
            "very long domain",
            serde_json::to_vec(&json!({"email": long_domain, "password": "password123"})).unwrap(),
        ),
        (
            "very long password",
            serde_json::to_vec(&json!({"email": target.email, "password": long_password}))
                .unwrap(),
        ),
        (
            "SQL in email",
            serde_json::to_vec(&json!({"email": "' OR 1=1 --", "password": "' OR 1=1 --"}))
                .unwrap(),
        ),
        (
            "SQL stacked query in email",
            serde_json::to_vec(
                &json!({"email": "x@example.com'; DROP TABLE users; --", "password": "password123"}),
            )
            .unwrap(),
        ),
        (
            "SQL in password of a real account",
            serde_json::to_vec(&json!({"email": target.email, "password": "' OR '1'='1' --"}))
                .unwrap(),
        ),
        (
            "SQL in username",
            serde_json::to_vec(&json!({
                "email": unique_email(),
                "password": "password123",
                "username": "x'; DROP TABLE users; --"
            }))
            .unwrap(),
        ),
    ];
    for path in ["/auth/login", "/auth/register"] {
        for (what, body) in &bodies {
            let response = gateway
                .post_raw(path, "application/json", body.clone())
                .await;
            assert_clean_4xx(response, &format!("{path} {what}")).await;
        }
    }
    target.assert_untouched().await;
    // The login path's SQL never matched anyone: the real user has no session but the one
    // assert_untouched just made.
    let sessions = gateway.count("SELECT count(*) FROM sessions", &[]).await;
    assert_eq!(sessions, 1, "an injected login created a session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_metacharacters_that_pass_validation_are_stored_as_plain_data() {
    let target = Target::new().await;
    let gateway = &target.gateway;
    // Valid e-mail and name syntax, hostile to string-built SQL.
    let email = format!("o'brien-{}@example.com", random_hex(4));
    let sneaky = format!("x'or'1'='1-{}@example.com", random_hex(4));
    let password = strong_password();
    let full_name = "Robert'); DROP TABLE users;--";
    let response = gateway
        .post_json(
            "/auth/register",
            &json!({"email": email, "password": password, "full_name": full_name}),
            None,
        )
        .await;
    assert_eq!(response.status(), 201);
    gateway.register(&sneaky, &password).await;
    assert_eq!(user_count(gateway).await, target.users_before + 2);

    let token = gateway.login(&email, &password).await;
    let me = json_body(gateway.get("/auth/user/me", Some(&token)).await).await;
    assert_eq!(me["email"], email.as_str());
    assert_eq!(me["full_name"], full_name);
    // The quote-laden address matches only itself, with only its own password.
    let response = gateway
        .post_json(
            "/auth/login",
            &json!({"email": sneaky, "password": target.password}),
            None,
        )
        .await;
    assert_eq!(response.status(), 401);
    let response = gateway
        .post_json(
            "/auth/login",
            &json!({"email": "x'or'1'='1@example.com", "password": password}),
            None,
        )
        .await;
    assert_eq!(response.status(), 401);
    gateway.login(&sneaky, &password).await;
    gateway.login(&target.email, &target.password).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_lines_get_4xx_never_5xx() {
    let target = Target::new().await;
    let gateway = &target.gateway;
    let long_path = format!("/public/{}", "a".repeat(64 * 1024));
    let requests: Vec<Vec<u8>> = vec![
        format!("GET {long_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes(),
        b"GET /public/\x00x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /public/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /auth/user/me HTTP/1.1\r\nHost: x\r\nCookie: authgate_session=\xff\xfe\r\nConnection: close\r\n\r\n".to_vec(),
        b"G\x00T /public/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /public/x HTTP/9.9\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 50\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{}{}{".to_vec(),
        b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n".to_vec(),
        b"POST /auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec(),
    ];
    for request in &requests {
        let what = String::from_utf8_lossy(&request[..request.len().min(80)]).to_string();
        let mut socket = TcpStream::connect(gateway.listen).await.unwrap();
        let _ = socket.write_all(request).await;
        // A closed connection is an acceptable refusal; a 5xx is not.
        if let Some(response) = read_raw_response(&mut socket).await {
            assert!(
                response.status < 500,
                "{what:?}: {} {:?}",
                response.status,
                String::from_utf8_lossy(&response.body)
            );
        }
    }
    target.assert_untouched().await;
}
