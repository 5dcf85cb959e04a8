//! Attack: look-alike and invisible email addresses. An attacker registers
//! `ａｌｉｃｅ@ｅｘａｍｐｌｅ.ｃｏｍ` (full-width), `ﬁnn@…` (a ligature), `𝐚𝐥𝐢𝐜𝐞@…` or
//! `al<U+200B>ice@…` (a zero-width space) next to the real `alice@example.com`, so that people
//! and upstream apps reading the address (`X-User-Email`) take one account for the other; or
//! spells the victim's address differently on every guess to dodge the lockout counter; or
//! hides bidi controls that make an address display as another.
//!
//! Guarantee (issue 8.9): emails are trimmed, NFKC-normalised and lower-cased before they are
//! compared, counted or stored, so every compatibility spelling of an address *is* that
//! address (register: 409 `email_taken`; login: the same account; lockout: the same counter).
//! Invisible and control characters (general category C: zero-width characters, joiners, BOM,
//! soft hyphen, bidi controls, …; plus the Hangul fillers, variation selectors, combining
//! grapheme joiner, Braille blank) are refused with 400 naming `email`, in JSON and form posts.

mod common;

use common::*;
use serde_json::{json, Value};

/// `max_registrations_per_ip` high enough for one test's registrations from 127.0.0.1.
fn options() -> GatewayOptions {
    GatewayOptions::new().login_protection(5, "15m", "15m", 10_000)
}

async fn start() -> Gateway {
    start_with(options()).await
}

async fn start_with(options: GatewayOptions) -> Gateway {
    Gateway::start_with_edited(options, |text| {
        let anchor = "[login_protection]\n";
        assert!(text.contains(anchor), "no [login_protection] in\n{text}");
        text.replacen(
            anchor,
            &format!("{anchor}max_registrations_per_ip = 10000\n"),
            1,
        )
    })
    .await
}

async fn register_json(gateway: &Gateway, email: &str, password: &str) -> reqwest::Response {
    gateway
        .post_json(
            "/auth/register",
            &json!({"email": email, "password": password}),
            None,
        )
        .await
}

/// A form post to `path` as the gateway's own page sends it (CSRF token and Origin).
async fn form_post(gateway: &Gateway, path: &str, pairs: &[(&str, &str)]) -> reqwest::Response {
    let csrf = csrf_token(gateway).await;
    let mut body = form_urlencoded::Serializer::new(String::new());
    body.append_pair("csrf_token", &csrf);
    for (name, value) in pairs {
        body.append_pair(name, value);
    }
    let cookie = format!("authgate_csrf={csrf}");
    let origin = gateway.public_origin();
    gateway
        .request(
            "POST",
            path,
            None,
            &[("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
            Some((
                "application/x-www-form-urlencoded",
                body.finish().into_bytes(),
            )),
        )
        .await
}

/// Every `users.email` stored.
async fn stored_emails(gateway: &Gateway) -> Vec<String> {
    gateway
        .texts("SELECT email FROM users ORDER BY email", &[])
        .await
}

/// A fresh ASCII local part, so parallel tests never collide.
fn local() -> String {
    format!("alice{}", random_hex(4))
}

/// The full-width spelling of an ASCII address (letters, digits, `@` and `.`).
fn full_width(ascii: &str) -> String {
    ascii
        .chars()
        .map(|c| match c {
            '!'..='~' => char::from_u32(u32::from(c) - 0x21 + 0xFF01).unwrap(),
            other => other,
        })
        .collect()
}

/// Mathematical bold small letters for an ASCII lower-case word.
fn math_bold(ascii: &str) -> String {
    ascii
        .chars()
        .map(|c| match c {
            'a'..='z' => char::from_u32(0x1D41A + (u32::from(c) - u32::from('a'))).unwrap(),
            '0'..='9' => char::from_u32(0x1D7CE + (u32::from(c) - u32::from('0'))).unwrap(),
            other => other,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_width_look_alike_is_the_same_address() {
    let gateway = start().await;
    let ascii = format!("{}@example.com", local());
    let wide = full_width(&ascii);
    assert_ne!(wide, ascii);
    let password = strong_password();
    let user = gateway.register(&ascii, &password).await;

    // Registering the look-alike is registering the same address again.
    let response = register_json(&gateway, &wide, &strong_password()).await;
    assert_json_error(response, 409, "email_taken").await;
    let response = register_json(&gateway, &wide.to_uppercase(), &strong_password()).await;
    assert_json_error(response, 409, "email_taken").await;

    // Signing in works with either spelling and reaches the same account.
    for spelling in [&ascii, &wide] {
        let login = gateway.login_full(spelling, &password).await;
        assert_eq!(login.body["user"]["id"], user["id"], "{spelling}");
        assert_eq!(login.body["user"]["email"], json!(ascii));
    }
    assert_eq!(stored_emails(&gateway).await, vec![ascii.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_look_alike_registered_first_is_stored_in_its_normal_form() {
    let gateway = start().await;
    let ascii = format!("{}@example.com", local());
    let wide = full_width(&ascii).to_uppercase();
    let password = strong_password();
    let user = gateway.register(&wide, &password).await;
    assert_eq!(
        user["email"],
        json!(ascii),
        "the answer shows the stored form"
    );
    assert_eq!(stored_emails(&gateway).await, vec![ascii.clone()]);
    let response = register_json(&gateway, &ascii, &strong_password()).await;
    assert_json_error(response, 409, "email_taken").await;
    let token = gateway.login(&ascii, &password).await;
    let me = json_body(gateway.get("/auth/user/me", Some(&token)).await).await;
    assert_eq!(me["email"], json!(ascii));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compatibility_forms_of_an_address_are_all_that_address() {
    let gateway = start().await;
    let password = strong_password();
    let tag = random_hex(4);
    // (look-alike, the address it is) pairs: ligatures, mathematical, circled, superscript,
    // modifier letters, Kelvin sign, Roman numerals, long s, decomposed accents, full-width @.
    let cases: Vec<(String, String)> = vec![
        (
            format!("ﬁnn{tag}@example.com"),
            format!("finn{tag}@example.com"),
        ),
        (
            format!("oﬀice{tag}@example.com"),
            format!("office{tag}@example.com"),
        ),
        (
            format!("ﬄow{tag}@example.com"),
            format!("fflow{tag}@example.com"),
        ),
        (
            format!("{}@example.com", math_bold(&format!("bob{tag}"))),
            format!("bob{tag}@example.com"),
        ),
        (
            format!("ⓒarol{tag}@example.com"),
            format!("carol{tag}@example.com"),
        ),
        (
            format!("ᵈave{tag}@example.com"),
            format!("dave{tag}@example.com"),
        ),
        (
            format!("ᴱve{tag}@example.com"),
            format!("eve{tag}@example.com"),
        ),
        (
            format!("\u{212A}ate{tag}@example.com"),
            format!("kate{tag}@example.com"),
        ),
        (
            format!("\u{2163}-{tag}@example.com"),
            format!("iv-{tag}@example.com"),
        ),
        (
            format!("ſam{tag}@example.com"),
            format!("sam{tag}@example.com"),
        ),
        (
            format!("jose\u{0301}{tag}@example.com"),
            format!("jos\u{00E9}{tag}@example.com"),
        ),
        (
            format!("mallory{tag}＠example．com"),
            format!("mallory{tag}@example.com"),
        ),
        (
            format!("trent{tag}@𝐞𝐱𝐚𝐦𝐩𝐥𝐞.com"),
            format!("trent{tag}@example.com"),
        ),
    ];
    for (look_alike, address) in &cases {
        let user = gateway.register(address, &password).await;
        let response = register_json(&gateway, look_alike, &strong_password()).await;
        assert_json_error(response, 409, "email_taken").await;
        let login = gateway.login_full(look_alike, &password).await;
        assert_eq!(
            login.body["user"]["id"], user["id"],
            "{look_alike:?} signed in to another account"
        );
    }
    let stored = stored_emails(&gateway).await;
    assert_eq!(stored.len(), cases.len(), "{stored:?}");
    for (_, address) in &cases {
        assert!(
            stored.contains(address),
            "{address} not stored as is: {stored:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_look_alike_spellings_make_one_account() {
    let gateway = start().await;
    let ascii = format!("{}@example.com", local());
    let spellings = vec![
        ascii.clone(),
        ascii.to_uppercase(),
        full_width(&ascii),
        full_width(&ascii).to_uppercase(),
        format!("  {ascii}\u{3000}"),
        ascii.replacen('a', "\u{FF41}", 1),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for spelling in spellings {
        let client = gateway.client.clone();
        let url = gateway.url("/auth/register");
        tasks.spawn(async move {
            client
                .post(url)
                .json(&json!({"email": spelling, "password": strong_password()}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, vec![201, 409, 409, 409, 409, 409]);
    assert_eq!(stored_emails(&gateway).await, vec![ascii]);
}

/// Invisible and control characters, each named by what it is.
const INVISIBLE: &[(char, &str)] = &[
    ('\u{200B}', "zero width space"),
    ('\u{200C}', "zero width non-joiner"),
    ('\u{200D}', "zero width joiner"),
    ('\u{2060}', "word joiner"),
    ('\u{2062}', "invisible times"),
    ('\u{FEFF}', "byte order mark"),
    ('\u{00AD}', "soft hyphen"),
    ('\u{200E}', "left-to-right mark"),
    ('\u{200F}', "right-to-left mark"),
    ('\u{061C}', "arabic letter mark"),
    ('\u{202A}', "left-to-right embedding"),
    ('\u{202B}', "right-to-left embedding"),
    ('\u{202C}', "pop directional formatting"),
    ('\u{202D}', "left-to-right override"),
    ('\u{202E}', "right-to-left override"),
    ('\u{2066}', "left-to-right isolate"),
    ('\u{2067}', "right-to-left isolate"),
    ('\u{2068}', "first strong isolate"),
    ('\u{2069}', "pop directional isolate"),
    ('\u{180E}', "mongolian vowel separator"),
    ('\u{034F}', "combining grapheme joiner"),
    ('\u{115F}', "hangul choseong filler"),
    ('\u{1160}', "hangul jungseong filler"),
    ('\u{3164}', "hangul filler"),
    ('\u{FFA0}', "halfwidth hangul filler"),
    ('\u{FE0F}', "variation selector 16"),
    ('\u{E0100}', "variation selector 17"),
    ('\u{E0041}', "tag latin capital a"),
    ('\u{1D173}', "musical symbol begin beam"),
    ('\u{2800}', "braille pattern blank"),
    ('\u{0007}', "bell"),
    ('\u{001B}', "escape"),
    ('\u{007F}', "delete"),
    ('\u{0085}', "next line"),
    ('\u{E000}', "private use"),
];

fn hidden_in(c: char) -> Vec<String> {
    let address = format!("{}@example.com", local());
    vec![
        format!("al{c}{}", &address[2..]),
        address.replacen("@example", &format!("@exa{c}mple"), 1),
        address.replacen('@', &format!("{c}@"), 1),
    ]
}

async fn assert_names_email(response: reqwest::Response, what: &str) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(status, 400, "{what}: {text}");
    let value: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    assert_eq!(value["error"]["code"], json!("invalid_request"), "{what}");
    let message = value["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("email"), "{what}: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_and_bidi_characters_are_refused_in_json() {
    let gateway = start().await;
    let password = strong_password();
    for (c, name) in INVISIBLE {
        for email in hidden_in(*c) {
            let what = format!("{name} (U+{:04X}) in {email:?}", u32::from(*c));
            assert_names_email(register_json(&gateway, &email, &password).await, &what).await;
            assert_names_email(login_attempt(&gateway, &email, &password).await, &what).await;
        }
    }
    assert!(
        stored_emails(&gateway).await.is_empty(),
        "an address with an invisible character was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_characters_next_to_an_existing_address_reach_nothing() {
    // The victim exists; the attacker tries the victim's address with a hidden character, to
    // register a twin or to sign in with a spelling the lockout does not count.
    let gateway = start().await;
    let victim = format!("{}@example.com", local());
    let password = strong_password();
    gateway.register(&victim, &password).await;
    for (c, name) in INVISIBLE {
        let twin = victim.replacen('@', &format!("{c}@"), 1);
        let what = format!("{name} next to an existing address");
        assert_names_email(register_json(&gateway, &twin, &password).await, &what).await;
        assert_names_email(login_attempt(&gateway, &twin, &password).await, &what).await;
    }
    assert_eq!(stored_emails(&gateway).await, vec![victim]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_up_and_sign_in_forms_apply_the_same_rules() {
    let gateway = start().await;
    let ascii = format!("{}@example.com", local());
    let password = strong_password();
    // A full-width sign-up through the form is stored in the normal form.
    let response = form_post(
        &gateway,
        "/auth/register",
        &[("email", &full_width(&ascii)), ("password", &password)],
    )
    .await;
    assert_eq!(response.status(), 303, "form sign-up");
    assert_eq!(stored_emails(&gateway).await, vec![ascii.clone()]);
    // The ASCII spelling is taken.
    let response = form_post(
        &gateway,
        "/auth/register",
        &[("email", &ascii), ("password", &strong_password())],
    )
    .await;
    assert_eq!(response.status(), 409, "form sign-up of the same address");
    // Signing in through the form with the look-alike reaches the account.
    let csrf = csrf_token(&gateway).await;
    let response = sign_in_form(&gateway, &csrf, &full_width(&ascii), &password).await;
    assert_eq!(response.status(), 303, "form sign-in with the look-alike");
    assert!(session_cookie(&response).is_some());
    // Invisible characters: the page again, 400, the problem shown at the email field.
    for (c, name) in INVISIBLE.iter().take(12) {
        let hidden = ascii.replacen('@', &format!("{c}@"), 1);
        let response = form_post(
            &gateway,
            "/auth/register",
            &[("email", &hidden), ("password", &strong_password())],
        )
        .await;
        assert_eq!(response.status(), 400, "form sign-up with {name}");
        let page = response.text().await.unwrap();
        assert!(
            page.contains("invisible or control characters"),
            "the sign-up page does not explain the {name}: {page}"
        );
        let csrf = csrf_token(&gateway).await;
        let response = sign_in_form(&gateway, &csrf, &hidden, &password).await;
        assert_eq!(response.status(), 400, "form sign-in with {name}");
        assert!(session_cookie(&response).is_none());
    }
    assert_eq!(stored_emails(&gateway).await, vec![ascii]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_spellings_share_one_lockout_counter() {
    let gateway = start().await;
    let ascii = format!("{}@example.com", local());
    let password = strong_password();
    gateway.register(&ascii, &password).await;
    let spellings = [
        full_width(&ascii),
        full_width(&ascii).to_uppercase(),
        ascii.replacen('a', "\u{FF41}", 1),
        format!(
            "{}@example.com",
            math_bold(ascii.split('@').next().unwrap())
        ),
        ascii.replacen('@', "\u{FF20}", 1),
    ];
    for (i, spelling) in spellings.iter().enumerate() {
        let response = login_attempt(&gateway, spelling, &format!("wrong-guess-{i}")).await;
        assert_json_error(response, 401, "invalid_credentials").await;
    }
    // Five failures (max_failures 5), whatever the spelling: the account is locked.
    assert_refused_429(
        login_attempt(&gateway, &ascii, &password).await,
        "account_locked",
        15 * 60,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_get_the_address_as_registered_whatever_was_typed_at_sign_in() {
    let gateway = start_with(options().session_setting("inject_user_email = true")).await;
    let ascii = format!("{}@example.com", local());
    let password = strong_password();
    gateway
        .register(&full_width(&ascii).to_uppercase(), &password)
        .await;
    let token = gateway.login(&full_width(&ascii), &password).await;
    let echoed = echoed(gateway.get("/app", Some(&token)).await).await;
    assert_eq!(echoed.header("x-user-email"), Some(ascii.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_ascii_address_reaches_the_upstream_as_utf8() {
    let gateway = start_with(options().session_setting("inject_user_email = true")).await;
    let address = format!("jos\u{00E9}{}@b\u{00FC}cher.example", random_hex(4));
    let password = strong_password();
    // Typed decomposed (e + combining acute) and upper-case: stored composed, lower-case.
    gateway
        .register(
            &address.to_uppercase().replace('\u{00C9}', "E\u{0301}"),
            &password,
        )
        .await;
    let token = gateway.login(&address, &password).await;
    let response = gateway.get("/app", Some(&token)).await;
    assert_eq!(
        response.status(),
        200,
        "a proxied request of a non-ASCII address"
    );
    let echoed = echoed(response).await;
    assert_eq!(echoed.header("x-user-email"), Some(address.as_str()));
}
