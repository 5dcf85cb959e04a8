//! Attack: make the gateway's route check and the upstream disagree about the request target.
//! In the common layout (a public site at `/`, a protected area at `/admin/`), the attacker
//! writes targets the gateway would route as public but an upstream would read as
//! `/admin/...`: targets that are not paths (`x:/admin/secret`, `admin/secret`), encoded
//! slashes (`/admin%2Fsecret`), `;` parameters (`/admin;x/secret`), double encoding, case and
//! trailing-dot tricks for IIS-style upstreams, and `/auth` spelled so the gateway forwards it.
//!
//! Guarantee (contract §2 step 0, `target.rs`, `path.rs`, `routes.rs`): only origin-form and
//! absolute-form targets are accepted; the path is normalised once and the upstream is sent
//! that normalised target, rebuilt; every reading an upstream may make of it (percent-decoded
//! repeatedly, `;params` stripped, folded as case-insensitive servers read paths) is routed
//! with the same protection, or the request is refused; `/auth` in any spelling is answered by
//! the gateway or refused, never forwarded.
//!
//! The property test generates spellings from building blocks and checks the invariant against
//! what the echo upstream actually received.

mod common;

use common::*;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// Sends `GET <target>` verbatim, with `Host: <host>`; `None` if the connection closed unanswered.
async fn send(gateway: &Gateway, target: &[u8], cookie: Option<&str>) -> Option<RawResponse> {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    let cookie = cookie
        .map(|token| format!("Cookie: {}\r\n", cookie_header(token)))
        .unwrap_or_default();
    request.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: {}\r\n{cookie}Connection: close\r\n\r\n",
            gateway.listen
        )
        .as_bytes(),
    );
    let mut socket = TcpStream::connect(gateway.listen).await.unwrap();
    socket.write_all(&request).await.unwrap();
    read_raw_response(&mut socket).await
}

/// A public site with a protected admin area, both on the echo upstream. `/files/` opts in to
/// encoded slashes. With `case_insensitive`, the admin route is marked for an IIS-style upstream.
async fn public_site_with_admin_area(case_insensitive: bool) -> Gateway {
    let mut admin = RouteSpec::required("/admin/", Upstream::Echo);
    if case_insensitive {
        admin = admin.with("case_insensitive = true");
    }
    GatewayOptions::new()
        .routes(vec![
            RouteSpec::public("/", Upstream::Echo),
            admin,
            RouteSpec::public("/files/", Upstream::Echo).with("allow_encoded_slash = true"),
        ])
        .start()
        .await
}

fn decode_once(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

/// Every way a lenient upstream may read a path it received: decoded up to four times,
/// `;params` dropped before or after, backslashes as slashes, dot segments resolved; and each
/// of those folded as case-insensitive servers read paths (Express, IIS, Java's
/// `equalsIgnoreCase`): lower case, `ſ`/`ı` as `s`/`i`, trailing dots and spaces of segments
/// and NTFS stream suffixes dropped.
fn upstream_readings(path: &str) -> Vec<String> {
    let strip = |p: &str| {
        p.split('/')
            .map(|s| s.split(';').next().unwrap_or(s))
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut readings = Vec::new();
    for base in [path.to_string(), strip(path)] {
        let mut current = base;
        for _ in 0..5 {
            readings.push(current.clone());
            readings.push(strip(&current));
            current = decode_once(&current);
        }
    }
    let mut readings: Vec<String> = readings.iter().map(|r| resolve(r)).collect();
    let folded: Vec<String> = readings
        .iter()
        .map(|r| {
            let lower = r
                .to_lowercase()
                .replace(['\u{17f}'], "s")
                .replace(['\u{131}'], "i");
            resolve(
                &lower
                    .split('/')
                    .map(|s| {
                        s.split("::$")
                            .next()
                            .unwrap_or(s)
                            .trim_end_matches(['.', ' '])
                    })
                    .collect::<Vec<_>>()
                    .join("/"),
            )
        })
        .collect();
    readings.extend(folded);
    readings
}

fn resolve(path: &str) -> String {
    let path = path.replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    let mut resolved = format!("/{}", out.join("/"));
    if path.ends_with('/') && resolved.len() > 1 {
        resolved.push('/');
    }
    resolved
}

/// `/admin/` (and the folder itself, `/admin`) is the protected area. The readings are
/// already folded where a server would fold them, so compare as written.
fn is_protected(reading: &str) -> bool {
    reading.starts_with("/admin/") || reading == "/admin"
}

fn is_auth(reading: &str) -> bool {
    let lower = reading.to_ascii_lowercase();
    lower == "/auth" || lower.starts_with("/auth/")
}

/// Building blocks of the generated spellings.
const FIRST_SEGMENTS: &[&str] = &[
    "admin",
    "ADMIN",
    "Admin",
    "%61dmin",
    "%2561dmin",
    "adm%69n",
    "admin.",
    "admin%2e",
    "admin%20",
    "admin;x",
    "admin;",
    "admin%3B",
    "admin%3bx=1",
    "admin%2F",
    "admin%2f..",
    "x/..",
    "x/%2e%2e",
    "x/%252e%252e",
    "x/..%2F",
    "x/..%252F",
    "x%2F..",
    "x/..;",
    "x\\..",
    "x%5C..",
    "x%255C..",
    "x/%25252e%25252e",
    "admin::$DATA",
    "adm%C4%B1n",
    "%C5%BFecure/../admin",
    "aDmIn",
    "files/..%2F",
    "files/%2e%2e%2F",
    "files/%252E%252E%252F",
    "files/..%252Fadmin%252F..",
    "",
    "auth",
    "AUTH",
    "Auth",
    "auth;x",
    "%2561uth",
    "au%74h",
];
const JOINS: &[&str] = &["/", "//", "%2F", "%2f", ";/", "/./"];
const TAILS: &[&str] = &[
    "secret",
    "SECRET",
    "secret;jsessionid=1",
    "secret?next=/admin/",
    "user/me",
    "login",
    "",
];

/// The invariant of point 1, for one target sent without a session.
async fn assert_invariant(gateway: &Gateway, target: &[u8]) {
    let shown = String::from_utf8_lossy(target).to_string();
    let before = gateway.echo.request_count();
    let response = send(gateway, target, None).await;
    let forwarded: Vec<EchoedRequest> = gateway.echo.requests().into_iter().skip(before).collect();
    let Some(response) = response else {
        assert!(forwarded.is_empty(), "{shown}: no answer, yet forwarded");
        return;
    };
    assert!(
        response.status < 500,
        "{shown}: a client's spelling must never cause a {}",
        response.status
    );
    if forwarded.is_empty() {
        // Refused, or answered by the gateway itself (an `/auth` page).
        return;
    }
    assert_eq!(forwarded.len(), 1, "{shown}: forwarded more than once");
    let received = &forwarded[0].path;
    let path = received.split('?').next().unwrap_or(received);
    assert!(
        path.starts_with('/'),
        "{shown}: the upstream received {received:?}, which is not origin-form"
    );
    assert!(
        !path.contains("//"),
        "{shown}: the upstream received an unnormalised {received:?}"
    );
    assert!(
        forwarded[0].header("x-user-id").is_none(),
        "{shown}: forwarded with an identity, without a session"
    );
    for reading in upstream_readings(path) {
        assert!(
            !is_protected(&reading),
            "{shown}: forwarded without a session as {received:?}, which an upstream reads as \
             {reading:?} (protected)"
        );
        assert!(
            !is_auth(&reading),
            "{shown}: forwarded as {received:?}, which an upstream reads as {reading:?} (/auth)"
        );
    }
}

fn generated_targets() -> Vec<Vec<u8>> {
    let mut targets = Vec::new();
    for first in FIRST_SEGMENTS {
        for join in JOINS {
            for tail in TAILS {
                targets.push(format!("/{first}{join}{tail}").into_bytes());
            }
        }
    }
    targets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_reaches_the_admin_area_or_auth_without_a_session() {
    let gateway = public_site_with_admin_area(false).await;
    let targets = generated_targets();
    assert!(targets.len() > 1000);
    for target in &targets {
        assert_invariant(&gateway, target).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_reaches_a_case_insensitive_admin_area_without_a_session() {
    let gateway = public_site_with_admin_area(true).await;
    for target in &generated_targets() {
        assert_invariant(&gateway, target).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_that_are_not_paths_or_http_urls_are_refused() {
    let gateway = public_site_with_admin_area(false).await;
    let host = gateway.listen.to_string();
    for target in [
        "x:/admin/secret".to_string(),
        "admin/secret".to_string(),
        "admin".to_string(),
        "*".to_string(),
        "ftp://{host}/admin/secret".replace("{host}", &host),
        "javascript://{host}/admin/secret".replace("{host}", &host),
        "http:/admin/secret".to_string(),
        "http:admin/secret".to_string(),
        "a:b:/admin/secret".to_string(),
        "foo:bar://host/admin/secret".to_string(),
        format!("{host}/admin/secret"),
    ] {
        let response = send(&gateway, target.as_bytes(), None).await;
        let status = response.as_ref().map(|r| r.status);
        assert_eq!(status, Some(400), "{target}: expected 400, got {status:?}");
        // Targets pingora itself cannot parse get its own (empty) 400 before the gateway runs.
        if let Some(response) = response.filter(|r| !r.body.is_empty()) {
            assert_eq!(
                response.json()["error"]["code"],
                "invalid_request_target",
                "{target}"
            );
        }
    }
    assert_eq!(gateway.echo.request_count(), 0, "nothing may be forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_targets_are_routed_by_their_path_and_rebuilt() {
    let gateway = public_site_with_admin_area(false).await;
    let host = gateway.listen.to_string();
    for target in [
        format!("http://{host}/admin/secret"),
        format!("HTTP://{host}/%61dmin/secret"),
        format!("http://{host}//admin//secret"),
        format!("https://{host}/admin/secret"),
    ] {
        let response = send(&gateway, target.as_bytes(), None).await.unwrap();
        assert_eq!(response.status, 401, "{target}: must need a session");
    }
    let user = gateway.signed_in_user().await;
    let before = gateway.echo.request_count();
    let response = send(
        &gateway,
        format!("http://{host}/%61dmin//secret?q=%2F").as_bytes(),
        Some(&user.token),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200);
    let seen = &gateway.echo.requests()[before];
    assert_eq!(
        seen.path, "/admin/secret?q=%2F",
        "the upstream gets the rebuilt target"
    );
    assert_eq!(seen.header("x-user-id"), Some(user.id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_receives_the_normalised_target_not_the_raw_bytes() {
    let gateway = public_site_with_admin_area(false).await;
    let user = gateway.signed_in_user().await;
    for (sent, expected) in [
        ("/%61dmin/%7Euser", "/admin/~user"),
        ("//admin///x", "/admin/x"),
        ("/admin/caf\u{e9}", "/admin/caf%C3%A9"),
        ("/admin/a%3fb?x=%2f", "/admin/a%3Fb?x=%2f"),
        ("/admin/a?b=c d", "/admin/a?b=c%20d"),
    ] {
        let before = gateway.echo.request_count();
        let response = send(&gateway, sent.as_bytes(), Some(&user.token))
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{sent}");
        assert_eq!(gateway.echo.requests()[before].path, expected, "{sent}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_are_refused_unless_the_route_opts_in() {
    let gateway = public_site_with_admin_area(false).await;
    for target in ["/admin%2Fsecret", "/admin%2fsecret", "/docs/a%2Fb"] {
        let response = send(&gateway, target.as_bytes(), None).await.unwrap();
        assert_eq!(response.status, 400, "{target}");
        assert_eq!(response.json()["error"]["code"], "invalid_path", "{target}");
    }
    let before = gateway.echo.request_count();
    let response = send(&gateway, b"/files/a%2fb.txt", None).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(gateway.echo.requests()[before].path, "/files/a%2Fb.txt");
    // Opting in does not open a way around the admin area.
    let response = send(&gateway, b"/files/..%252Fadmin%252Fsecret", None)
        .await
        .unwrap();
    assert_eq!(response.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_insensitive_routes_protect_every_case() {
    let gateway = public_site_with_admin_area(true).await;
    for target in ["/ADMIN/secret", "/Admin/secret", "/aDmIn/x", "/%41dmin/x"] {
        let response = send(&gateway, target.as_bytes(), None).await.unwrap();
        assert_eq!(response.status, 401, "{target}");
    }
    for target in ["/Admin./secret", "/ADMIN%20/secret"] {
        let response = send(&gateway, target.as_bytes(), None).await.unwrap();
        assert_eq!(response.status, 400, "{target}");
    }
    assert_eq!(gateway.echo.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_in_any_spelling_is_answered_or_refused_never_forwarded() {
    let gateway = public_site_with_admin_area(false).await;
    for target in [
        "/AUTH/user/me",
        "/Auth/login",
        "/auth;x/user/me",
        "/auth;/login",
        "/auth%2Fuser%2Fme",
        "/auth%2flogin",
        "/%2561uth/user/me",
        "/auth%3B/login",
        "//auth/user/me",
        "/au%74h/user/me",
        "/%61%75%74%68/login",
    ] {
        let response = send(&gateway, target.as_bytes(), None).await;
        let status = response.map(|r| r.status);
        assert!(
            matches!(status, Some(400 | 401 | 404) | None) || status == Some(200),
            "{target}: {status:?}"
        );
    }
    assert_eq!(
        gateway.echo.request_count(),
        0,
        "an /auth spelling reached the upstream"
    );
}
