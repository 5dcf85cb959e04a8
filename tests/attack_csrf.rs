//! Attack: cross-site request forgery against `/auth`: a page on another site makes the
//! victim's browser (which attaches the victim's session cookie) sign out, revoke sessions,
//! change the password, register, or sign in to the attacker's account (login CSRF), with HTML
//! forms (url-encoded, multipart, text/plain carrying JSON) or scripted requests.
//!
//! Guarantee (contract §5): a state-changing `/auth` request (POST/DELETE) whose `Origin` (or, with
//! no Origin, `Referer`) is not the configured public origin gets 403 `csrf_failed`; a form
//! post needs a `csrf_token` field equal to the `authgate_csrf` cookie (double submit), or it
//! gets the 403 "This form was refused" page, which says why; and a refused request changes nothing.

mod common;

use common::*;
use serde_json::{json, Value};

const EVIL: &str = "https://evil.example";
const FORM: &str = "application/x-www-form-urlencoded";

/// Header, cookie or form-field pairs.
type Pairs<'a> = Vec<(&'a str, &'a str)>;
/// Borrowed form fields.
type Fields<'a> = &'a [(&'a str, &'a str)];
/// An optional (content type, body).
type Body<'a> = Option<(&'a str, Vec<u8>)>;

/// The sign-in page's CSRF token, as a browser on the real site gets it.
async fn csrf_token(gateway: &Gateway) -> String {
    let page = gateway.get("/auth/login", None).await;
    assert_eq!(page.status(), 200);
    set_cookies(&page)
        .into_iter()
        .find(|c| c.name == "authgate_csrf")
        .expect("the sign-in page sets the CSRF cookie")
        .value
}

fn form_body(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in fields {
        serializer.append_pair(name, value);
    }
    serializer.finish().into_bytes()
}

/// A request with the victim's cookies (session and, optionally, CSRF) attached, as the
/// browser attaches them whoever made the page.
async fn send(
    gateway: &Gateway,
    method: &str,
    path: &str,
    cookies: &[(&str, &str)],
    headers: &[(&str, &str)],
    body: Option<(&str, Vec<u8>)>,
) -> reqwest::Response {
    let cookie = cookies
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if !cookie.is_empty() {
        all.push(("Cookie", cookie.as_str()));
    }
    gateway.request(method, path, None, &all, body).await
}

/// Asserts the HTML "form refused" page a browser sees for a forged form post.
async fn assert_form_refused(response: reqwest::Response, what: &str) {
    let status = response.status().as_u16();
    let content_type = header(&response, "content-type")
        .unwrap_or_default()
        .to_string();
    assert!(
        session_cookie(&response).is_none(),
        "{what}: a refused form post set a session cookie"
    );
    let body = response.text().await.unwrap();
    assert_eq!(status, 403, "{what}: want 403, got {status}: {body}");
    assert!(
        content_type.starts_with("text/html"),
        "{what}: content-type {content_type}"
    );
    assert!(
        body.contains("This form was refused"),
        "{what}: not the form-expired page: {body}"
    );
}

async fn assert_csrf_failed(response: reqwest::Response, what: &str) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(
        status, 403,
        "{what}: want 403 csrf_failed, got {status}: {text}"
    );
    let value: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {text}"));
    assert_eq!(value["error"]["code"], "csrf_failed", "{what}: {text}");
}

async fn assert_signed_in(gateway: &Gateway, token: &str, what: &str) {
    let response = gateway.get("/app/after-attack", Some(token)).await;
    assert_eq!(
        response.status(),
        200,
        "{what}: the victim's session no longer works"
    );
}

/// The victim's two sessions: (current token, other token, other session id).
async fn victim_with_two_sessions(gateway: &Gateway) -> (SignedIn, String, String) {
    let victim = gateway.signed_in_user().await;
    let other = gateway.login(&victim.email, &victim.password).await;
    let sessions = json_body(
        gateway
            .get("/auth/user/sessions", Some(&victim.token))
            .await,
    )
    .await;
    let other_id = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == false)
        .expect("a second session")["id"]
        .as_str()
        .unwrap()
        .to_string();
    (victim, other, other_id)
}

async fn user_count(gateway: &Gateway) -> i64 {
    gateway.count("SELECT count(*) FROM users", &[]).await
}

/// Every session ever started: a login writes the session's record before it answers.
async fn session_count(gateway: &Gateway) -> i64 {
    gateway.count("SELECT count(*) FROM sessions", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_form_post_cannot_sign_the_victim_out() {
    let gateway = Gateway::start().await;
    let victim = gateway.signed_in_user().await;
    let session = (COOKIE_NAME, victim.token.as_str());

    // <form method=post action=http://gateway/auth/logout> on evil.example, auto-submitted.
    let forged = send(
        &gateway,
        "POST",
        "/auth/logout",
        &[session],
        &[("Origin", EVIL)],
        Some((FORM, Vec::new())),
    )
    .await;
    assert_form_refused(forged, "logout form from evil.example").await;
    // A browser that sends no Origin for it (and no Referer): still no token, still refused.
    let forged = send(
        &gateway,
        "POST",
        "/auth/logout",
        &[session],
        &[],
        Some((FORM, Vec::new())),
    )
    .await;
    assert_form_refused(forged, "logout form without Origin or token").await;
    assert_signed_in(&gateway, &victim.token, "after forged logouts").await;

    // The same form from the real page (same origin, token) does sign out: the check is not
    // simply refusing every form.
    let csrf = csrf_token(&gateway).await;
    let origin = gateway.public_origin();
    let genuine = send(
        &gateway,
        "POST",
        "/auth/logout",
        &[session, ("authgate_csrf", &csrf)],
        &[("Origin", &origin)],
        Some((FORM, form_body(&[("csrf_token", &csrf)]))),
    )
    .await;
    assert_eq!(genuine.status(), 303, "the genuine sign-out form");
    assert_eq!(gateway.get("/app", Some(&victim.token)).await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_form_post_cannot_revoke_sessions() {
    let gateway = Gateway::start().await;
    let (victim, other_token, other_id) = victim_with_two_sessions(&gateway).await;
    let session = (COOKIE_NAME, victim.token.as_str());
    let attacker_csrf = csrf_token(&gateway).await; // the attacker's own, from his browser
    let victim_csrf = csrf_token(&gateway).await; // in the victim's browser, unreadable to him

    let attempts: Vec<(&str, Pairs, Pairs, Pairs)> = vec![
        // (path, cookies, headers, form fields)
        (
            "/auth/devices/revoke-others",
            vec![session],
            vec![("Origin", EVIL)],
            vec![],
        ),
        (
            "/auth/devices/revoke",
            vec![session],
            vec![("Origin", EVIL)],
            vec![("session_id", other_id.as_str())],
        ),
        (
            "/auth/devices/revoke",
            vec![session],
            vec![("Referer", "https://evil.example/innocent-page")],
            vec![("session_id", other_id.as_str())],
        ),
        // No Origin and no Referer (privacy settings), no token.
        ("/auth/devices/revoke-others", vec![session], vec![], vec![]),
        // The attacker's own valid token, but the victim's browser holds another cookie.
        (
            "/auth/devices/revoke-others",
            vec![session, ("authgate_csrf", victim_csrf.as_str())],
            vec![],
            vec![("csrf_token", attacker_csrf.as_str())],
        ),
        // A token with no CSRF cookie to match.
        (
            "/auth/devices/revoke",
            vec![session],
            vec![],
            vec![
                ("csrf_token", attacker_csrf.as_str()),
                ("session_id", other_id.as_str()),
            ],
        ),
        // An empty token matching... nothing.
        (
            "/auth/devices/revoke-others",
            vec![session, ("authgate_csrf", "")],
            vec![],
            vec![("csrf_token", "")],
        ),
    ];
    for (i, (path, cookies, headers, fields)) in attempts.iter().enumerate() {
        let response = send(
            &gateway,
            "POST",
            path,
            cookies,
            headers,
            Some((FORM, form_body(fields))),
        )
        .await;
        assert_form_refused(response, &format!("forged revoke #{i} to {path}")).await;
    }
    assert_signed_in(&gateway, &victim.token, "current session").await;
    assert_signed_in(&gateway, &other_token, "other session").await;

    // The genuine dashboard form works.
    let origin = gateway.public_origin();
    let genuine = send(
        &gateway,
        "POST",
        "/auth/devices/revoke",
        &[session, ("authgate_csrf", &victim_csrf)],
        &[("Origin", &origin)],
        Some((
            FORM,
            form_body(&[("csrf_token", &victim_csrf), ("session_id", &other_id)]),
        )),
    )
    .await;
    assert_eq!(genuine.status(), 303, "the genuine revoke form");
    assert_eq!(gateway.get("/app", Some(&other_token)).await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_cross_site_requests_with_a_foreign_origin_are_refused() {
    let gateway = Gateway::start().await;
    let (victim, other_token, other_id) = victim_with_two_sessions(&gateway).await;
    let session = (COOKIE_NAME, victim.token.as_str());
    let new_password = strong_password();
    let change = serde_json::to_vec(
        &json!({"current_password": victim.password, "new_password": new_password}),
    )
    .unwrap();
    let other_path = format!("/auth/user/sessions/{other_id}");
    let calls: Vec<(&str, &str, Body)> = vec![
        ("DELETE", "/auth/user/sessions", None),
        ("DELETE", other_path.as_str(), None),
        ("POST", "/auth/logout", None),
        (
            "POST",
            "/auth/logout",
            Some(("application/json", b"{}".to_vec())),
        ),
        (
            "POST",
            "/auth/user/password",
            Some(("application/json", change.clone())),
        ),
    ];
    let sources: [(&str, &str); 3] = [
        ("Origin", EVIL),
        ("Origin", "null"), // sandboxed iframes, data: URLs
        ("Referer", "https://evil.example/attack.html"),
    ];
    for (method, path, body) in &calls {
        for source in sources {
            let response = send(&gateway, method, path, &[session], &[source], body.clone()).await;
            assert_csrf_failed(response, &format!("{method} {path} with {source:?}")).await;
        }
    }
    assert_signed_in(&gateway, &victim.token, "current session").await;
    assert_signed_in(&gateway, &other_token, "other session").await;
    // The password did not change.
    let check = gateway
        .post_json(
            "/auth/login",
            &json!({"email": victim.email, "password": new_password}),
            None,
        )
        .await;
    assert_eq!(
        check.status(),
        401,
        "the forged password change took effect"
    );
    gateway.login(&victim.email, &victim.password).await;

    // JSON without Origin (a non-browser client) passes: the refusals above were about origin.
    let response = send(&gateway, "DELETE", &other_path, &[session], &[], None).await;
    assert_eq!(response.status(), 204, "same-site API call");
    assert_eq!(gateway.get("/app", Some(&other_token)).await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_plain_form_smuggling_json_cannot_change_the_password() {
    let gateway = Gateway::start().await;
    let victim = gateway.signed_in_user().await;
    let new_password = strong_password();
    // <form enctype="text/plain"> with one field named `{"current_password":"…","new_password":"…","x":"`
    // and value `"}` sends exactly this body.
    let smuggled = format!(
        "{{\"current_password\":\"{}\",\"new_password\":\"{}\",\"x\":\"=\"}}",
        victim.password, new_password
    );
    for headers in [vec![("Origin", EVIL)], vec![]] {
        let response = send(
            &gateway,
            "POST",
            "/auth/user/password",
            &[(COOKIE_NAME, victim.token.as_str())],
            &headers,
            Some(("text/plain", smuggled.clone().into_bytes())),
        )
        .await;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(
            status, 403,
            "text/plain password change ({headers:?}): {body}"
        );
    }
    // multipart/form-data, even carrying a field named like the token, is refused too.
    let boundary = "----evilboundary";
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"current_password\"\r\n\r\n{}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"new_password\"\r\n\r\n{}\r\n--{boundary}--\r\n",
        victim.password, new_password
    );
    let response = send(
        &gateway,
        "POST",
        "/auth/user/password",
        &[(COOKIE_NAME, victim.token.as_str())],
        &[],
        Some((
            &format!("multipart/form-data; boundary={boundary}"),
            multipart.into_bytes(),
        )),
    )
    .await;
    assert_eq!(response.status(), 403, "multipart password change");

    let check = gateway
        .post_json(
            "/auth/login",
            &json!({"email": victim.email, "password": new_password}),
            None,
        )
        .await;
    assert_eq!(
        check.status(),
        401,
        "the forged password change took effect"
    );
    gateway.login(&victim.email, &victim.password).await;
    assert_signed_in(&gateway, &victim.token, "after forged password changes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_registration_form_creates_no_account() {
    let gateway = Gateway::start().await;
    let before = user_count(&gateway).await;
    let email = unique_email();
    let password = strong_password();
    let attacker_csrf = csrf_token(&gateway).await;
    let fields = [("email", email.as_str()), ("password", password.as_str())];
    let with_token = [
        ("email", email.as_str()),
        ("password", password.as_str()),
        ("csrf_token", attacker_csrf.as_str()),
    ];
    let attempts: Vec<(Pairs, Pairs, Fields)> = vec![
        (vec![], vec![("Origin", EVIL)], &fields),
        (vec![], vec![], &fields),
        (vec![], vec![("Origin", EVIL)], &with_token),
        (
            vec![("authgate_csrf", attacker_csrf.as_str())],
            vec![("Origin", EVIL)],
            &with_token,
        ),
    ];
    for (i, (cookies, headers, fields)) in attempts.iter().enumerate() {
        let response = send(
            &gateway,
            "POST",
            "/auth/register",
            cookies,
            headers,
            Some((FORM, form_body(fields))),
        )
        .await;
        assert_form_refused(response, &format!("forged registration #{i}")).await;
    }
    assert_eq!(user_count(&gateway).await, before, "an account was created");
    // The e-mail is still free.
    gateway.register(&email, &password).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_csrf_cannot_sign_the_victim_into_the_attackers_account() {
    let gateway = Gateway::start().await;
    let attacker_email = unique_email();
    let attacker_password = strong_password();
    gateway.register(&attacker_email, &attacker_password).await;
    let attacker_csrf = csrf_token(&gateway).await;
    let victim_csrf = csrf_token(&gateway).await;
    let sessions_before = session_count(&gateway).await;

    let credentials = [
        ("email", attacker_email.as_str()),
        ("password", attacker_password.as_str()),
    ];
    let with_attacker_token = [
        ("email", attacker_email.as_str()),
        ("password", attacker_password.as_str()),
        ("csrf_token", attacker_csrf.as_str()),
    ];
    let attempts: Vec<(Pairs, Pairs, Fields)> = vec![
        (vec![], vec![("Origin", EVIL)], &credentials),
        (vec![], vec![], &credentials),
        (vec![], vec![], &with_attacker_token),
        (
            vec![("authgate_csrf", victim_csrf.as_str())],
            vec![],
            &with_attacker_token,
        ),
        (
            vec![("authgate_csrf", attacker_csrf.as_str())],
            vec![("Origin", EVIL)],
            &with_attacker_token,
        ),
    ];
    for (i, (cookies, headers, fields)) in attempts.iter().enumerate() {
        let response = send(
            &gateway,
            "POST",
            "/auth/login",
            cookies,
            headers,
            Some((FORM, form_body(fields))),
        )
        .await;
        assert_form_refused(response, &format!("forged sign-in #{i}")).await;
    }
    // A JSON login from evil.example's script is refused as well (it would need CORS to read
    // the answer, but the cookie would be set all the same).
    let response = send(
        &gateway,
        "POST",
        "/auth/login",
        &[],
        &[("Origin", EVIL)],
        Some((
            "application/json",
            serde_json::to_vec(&json!({"email": attacker_email, "password": attacker_password}))
                .unwrap(),
        )),
    )
    .await;
    assert!(session_cookie(&response).is_none());
    assert_csrf_failed(response, "JSON sign-in from evil.example").await;
    assert_eq!(
        session_count(&gateway).await,
        sessions_before,
        "a forged sign-in created a session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_origins_and_referers_are_refused() {
    let gateway = Gateway::start().await;
    let victim = gateway.signed_in_user().await;
    let origin = gateway.public_origin(); // http://127.0.0.1:<port>
    let port = gateway.listen.port();
    let other_port = if port == 65535 { port - 1 } else { port + 1 };
    let look_alike_origins = [
        format!("{origin}.evil.example"),
        format!("{origin}@evil.example"),
        format!("https://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{other_port}"),
        "http://127.0.0.1".to_string(),
        format!("http://localhost:{port}"),
        format!("{origin}/"),
        format!("{origin} evil"),
        String::new(),
    ];
    let look_alike_referers = [
        format!("{origin}.evil.example/page"),
        format!("https://evil.example/{origin}/"),
        format!("https://evil.example/?r={origin}"),
        format!("http://evil.example#{origin}"),
        format!("//127.0.0.1:{port}/"),
        "garbage".to_string(),
    ];
    let session = (COOKIE_NAME, victim.token.as_str());
    for value in &look_alike_origins {
        let response = send(
            &gateway,
            "POST",
            "/auth/logout",
            &[session],
            &[("Origin", value)],
            None,
        )
        .await;
        assert_csrf_failed(response, &format!("Origin {value:?}")).await;
    }
    for value in &look_alike_referers {
        let response = send(
            &gateway,
            "POST",
            "/auth/logout",
            &[session],
            &[("Referer", value)],
            None,
        )
        .await;
        assert_csrf_failed(response, &format!("Referer {value:?}")).await;
    }
    // A matching Referer does not excuse a foreign Origin.
    let response = send(
        &gateway,
        "POST",
        "/auth/logout",
        &[session],
        &[("Origin", EVIL), ("Referer", &format!("{origin}/app"))],
        None,
    )
    .await;
    assert_csrf_failed(response, "foreign Origin with our Referer").await;
    assert_signed_in(&gateway, &victim.token, "after look-alike origins").await;

    // The real origin works (and signs out).
    let response = gateway.logout(Some(&victim.token)).await;
    assert_eq!(response.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_origin_is_named_with_the_expected_one() {
    let gateway = Gateway::start().await;
    for accept in ["application/json", "text/html"] {
        let response = gateway
            .request(
                "POST",
                "/auth/login",
                None,
                &[("Origin", "http://127.0.0.9:1234"), ("Accept", accept)],
                Some((
                    "application/x-www-form-urlencoded",
                    b"email=a%40b.c&password=whatever1".to_vec(),
                )),
            )
            .await;
        assert_eq!(response.status(), 403);
        let body = response.text().await.unwrap();
        assert!(
            body.contains("http://127.0.0.9:1234") && body.contains(&gateway.public_origin()),
            "the refusal names the origin received and the one expected: {body}"
        );
    }
    let logs = gateway.logs();
    assert!(
        logs.contains("http://127.0.0.9:1234"),
        "the log line names it too"
    );
}
