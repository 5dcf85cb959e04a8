//! Attack: path confusion between the gateway and the upstream. With a public prefix
//! (`/public/`) in front of a protected default route (`/`), the attacker writes paths that the
//! gateway matches as public but the upstream resolves to a protected resource
//! (`/public/../secret`, encoded dots, encoded prefixes, doubled slashes, backslashes,
//! absolute-form targets), or that dodge route matching altogether. Sent as raw request lines,
//! because HTTP client libraries normalise such paths before sending.
//!
//! Guarantee (contract §2 and `path.rs`): the path is normalised before route matching: percent-
//! escapes of unreserved characters are decoded, repeated slashes merged, and dot-segments
//! (also encoded) and backslashes (also encoded) refused with 400. The normalised path is the
//! one matched and the one forwarded, so without a session no trick reaches a protected
//! resource.

mod common;

use common::*;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// Sends `GET <target>` verbatim (with `extra` header lines) and returns the status, or
/// `None` if the gateway closed the connection without answering.
async fn raw_get(gateway: &Gateway, target: &[u8], extra: &str) -> Option<RawResponse> {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: {}\r\n{extra}Connection: close\r\n\r\n",
            gateway.listen
        )
        .as_bytes(),
    );
    let mut socket = TcpStream::connect(gateway.listen).await.unwrap();
    socket.write_all(&request).await.unwrap();
    read_raw_response(&mut socket).await
}

/// Percent-decodes once (what an upstream that decodes before resolving dots does).
fn decoded(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(value) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(value);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Segments a lenient upstream would treat as "go up" or "stay": `..`, `.`, and their
/// path-parameter forms (`..;x`, as Tomcat/Jetty read them), after one round of decoding and
/// with backslashes read as slashes.
fn has_dot_segment(path: &str) -> bool {
    let path = decoded(path.split('?').next().unwrap_or(path)).replace('\\', "/");
    path.split('/').any(|segment| {
        let bare = segment.split(';').next().unwrap_or(segment);
        bare == "." || bare == ".."
    })
}

/// The attack must end in a refusal (4xx, or a closed connection), or, if it reached the
/// upstream at all, only through the public route with a path the upstream cannot climb out
/// of. Returns the status, if any.
async fn assert_no_protected_access(gateway: &Gateway, target: &[u8]) -> Option<u16> {
    let shown = String::from_utf8_lossy(target).to_string();
    let before = gateway.echo.request_count();
    let response = raw_get(gateway, target, "").await;
    let forwarded: Vec<EchoedRequest> = gateway.echo.requests().into_iter().skip(before).collect();
    match &response {
        Some(response) if response.status == 200 => {
            assert_eq!(
                forwarded.len(),
                1,
                "{shown}: 200 without one upstream request"
            );
            let path = &forwarded[0].path;
            assert!(
                path == "/public" || path.starts_with("/public/"),
                "{shown}: reached the upstream as {path:?} without a session"
            );
            assert!(
                !has_dot_segment(path),
                "{shown}: forwarded as {path:?}, which an upstream that decodes escapes resolves \
                 outside /public/"
            );
        }
        Some(response) => {
            assert!(
                (400..500).contains(&response.status),
                "{shown}: got {}",
                response.status
            );
            assert!(
                forwarded.is_empty(),
                "{shown}: refused but forwarded anyway"
            );
        }
        None => assert!(forwarded.is_empty(), "{shown}: no answer but forwarded"),
    }
    response.map(|r| r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_cannot_climb_out_of_a_public_prefix() {
    let gateway = Gateway::start().await;
    let tricks: &[&[u8]] = &[
        b"/public/../secret",
        b"/public/./../secret",
        b"/public/%2e%2e/secret",
        b"/public/%2E%2E/secret",
        b"/public/.%2e/secret",
        b"/public/%2e./secret",
        b"/public/%2e/../secret",
        b"/public//../secret",
        b"/public/x/../../secret",
        b"/public/..",
        b"/public/%2e%2e",
        b"/%70ublic/../secret",
        b"/public/../secret?x=/public/",
    ];
    for trick in tricks {
        let status = assert_no_protected_access(&gateway, trick).await;
        assert_eq!(
            status,
            Some(400),
            "{}: a dot-segment should be refused with 400",
            String::from_utf8_lossy(trick)
        );
    }
    assert_eq!(gateway.echo.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backslashes_cannot_climb_out_of_a_public_prefix() {
    let gateway = Gateway::start().await;
    let tricks: &[&[u8]] = &[
        b"/public\\..\\secret",
        b"/public/..\\secret",
        b"/public\\secret",
        b"/public/%5c..%5csecret",
        b"/public/%5C..%5Csecret",
        b"/public/..%5csecret",
    ];
    for trick in tricks {
        let status = assert_no_protected_access(&gateway, trick).await;
        assert!(
            status.is_none_or(|s| s == 400),
            "{}: a backslash should be refused with 400, got {status:?}",
            String::from_utf8_lossy(trick)
        );
    }
    assert_eq!(gateway.echo.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_and_path_parameters_cannot_climb_out_of_a_public_prefix() {
    // `..%2f` and `..;/` are not dot-segments to an RFC 3986 parser, but upstreams that decode
    // %2F before resolving dots (several servers and frameworks), or strip `;params` from
    // segments (Tomcat, Jetty, Spring), read them as "go up" and serve /secret.
    let gateway = Gateway::start().await;
    let tricks: &[&[u8]] = &[
        b"/public/..%2fsecret",
        b"/public/..%2Fsecret",
        b"/public/%2e%2e%2fsecret",
        b"/public/%2e%2e%2Fsecret",
        b"/public/x/..%2f..%2fsecret",
        b"/public/..;/secret",
        b"/public/..;x=1/secret",
        b"/public/%2e%2e;/secret",
    ];
    let mut climbed = Vec::new();
    for trick in tricks {
        let before = gateway.echo.request_count();
        let response = raw_get(&gateway, trick, "").await;
        let status = response.as_ref().map(|r| r.status);
        for seen in gateway.echo.requests().iter().skip(before) {
            assert!(seen.path.starts_with("/public/"), "{:?}", seen.path);
            if has_dot_segment(&seen.path) {
                climbed.push(format!(
                    "{} -> {status:?}, upstream got {:?}",
                    String::from_utf8_lossy(trick),
                    seen.path
                ));
            }
        }
        assert!(status.is_none_or(|s| s < 500), "{status:?}");
    }
    assert!(
        climbed.is_empty(),
        "without a session, these reached the upstream through the public route with a path \
         that decodes to a dot-segment (refuse them with 400 instead):\n{}",
        climbed.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_and_doubled_prefixes_are_matched_after_normalisation() {
    let gateway = Gateway::start().await;
    // The public prefix, written differently, is still the public route, and the upstream
    // gets the normalised path (what was authorised is what is served).
    for (trick, forwarded) in [
        (&b"/%70ublic/x"[..], "/public/x"),
        (b"//public/x", "/public/x"),
        (b"/public//x", "/public/x"),
        (b"/%70%75%62%6c%69%63/x", "/public/x"),
        (b"///public///x?q=1", "/public/x?q=1"),
        // A prefix ending in `/` covers the folder itself.
        (b"/public", "/public"),
    ] {
        let shown = String::from_utf8_lossy(trick).to_string();
        let response = raw_get(&gateway, trick, "").await.expect("an answer");
        assert_eq!(response.status, 200, "{shown}");
        let seen = EchoedRequest::from_json(&response.json());
        assert_eq!(seen.path, forwarded, "{shown}");
    }
    // A protected path written with escapes or doubled slashes is still protected.
    for trick in [
        &b"/%73ecret"[..],
        b"//secret",
        b"/%2Fsecret",
        b"/%2fpublic/x",
        b"/PUBLIC/x",
        b"/Public/x",
        b"/publicx",
        b"/secret?/public/",
        b"/secret;/public/",
        b"/secret%3f/public/",
        b"/secret%23/public/",
    ] {
        let status = assert_no_protected_access(&gateway, trick).await;
        assert!(
            status.is_none_or(|s| (400..500).contains(&s)),
            "{}: {status:?}",
            String::from_utf8_lossy(trick)
        );
    }
    assert!(
        gateway
            .echo
            .requests()
            .iter()
            .all(|r| r.path == "/public" || r.path.starts_with("/public/")),
        "a protected path reached the upstream: {:?}",
        gateway
            .echo
            .requests()
            .iter()
            .map(|r| &r.path)
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_request_targets_do_not_bypass_authentication() {
    let gateway = Gateway::start().await;
    let port = gateway.listen.port();
    let absolute_dots = format!("http://127.0.0.1:{port}/public/../secret");
    let absolute_public_host = format!("http://127.0.0.1:{port}/secret");
    let tricks: Vec<&[u8]> = vec![
        b"http://evil.example/secret",
        absolute_public_host.as_bytes(),
        absolute_dots.as_bytes(),
        b"*",
        b"secret",
        b"public/x",
        b"/public/%zz/../secret",
        b"/public/%",
        b"/public/%2",
        b"/public/\xff/../secret",
        b"/secret#/public/",
    ];
    for trick in tricks {
        let status = assert_no_protected_access(&gateway, trick).await;
        assert!(
            status.is_none_or(|s| (400..500).contains(&s)),
            "{}: {status:?}",
            String::from_utf8_lossy(trick)
        );
    }
    assert!(
        gateway
            .echo
            .requests()
            .iter()
            .all(|r| r.path.starts_with("/public/")),
        "a protected path reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_against_auth_do_not_reach_an_upstream() {
    // `/auth/...` is answered by the gateway itself; tricks must not route it to an upstream
    // (where a catch-all route would forward it) or reach the API under another name.
    let gateway = Gateway::start().await;
    for trick in [
        &b"/public/../auth/user/me"[..],
        b"/auth/../public/x",
        b"/%61uth/user/me",
        b"//auth/user/me",
        b"/auth//user/me",
        b"/AUTH/user/me",
    ] {
        let shown = String::from_utf8_lossy(trick).to_string();
        let before = gateway.echo.request_count();
        let response = raw_get(&gateway, trick, "Accept: application/json\r\n")
            .await
            .expect("an answer");
        assert!(
            (400..500).contains(&response.status),
            "{shown}: {}",
            response.status
        );
        let forwarded = gateway.echo.request_count() - before;
        assert_eq!(forwarded, 0, "{shown}: forwarded to the upstream");
    }
}
