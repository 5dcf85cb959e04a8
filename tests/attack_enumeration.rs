//! Attack: account enumeration through `/auth/login`: telling registered e-mails from unknown
//! ones by the status, body, headers, lockout behaviour or response time of a failed login.
//!
//! Guarantee (contract §5): an unknown e-mail and a wrong password get the same status (401), the
//! same body and the same headers, lock out the same way, and take the same time within noise
//! (an unknown e-mail is verified against a dummy bcrypt hash).

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The headers of a response that could differ between two answers, minus the ones that
/// legitimately vary per response (`date`, `x-request-id`).
fn comparable_headers(response: &reqwest::Response) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        // Different on every response by design, whoever asks.
        .filter(|(name, _)| !matches!(name.as_str(), "date" | "x-request-id"))
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                value.to_str().unwrap_or("<binary>").to_string(),
            )
        })
        .collect();
    headers.sort();
    headers
}

/// Replaces `bcrypt_cost = 4` in the rendered config, so bcrypt dominates a login's time.
fn bcrypt_cost(cost: u32) -> impl FnOnce(String) -> String {
    move |text: String| {
        assert!(
            text.contains("bcrypt_cost = 4"),
            "harness config changed: no `bcrypt_cost = 4` in\n{text}"
        );
        text.replacen("bcrypt_cost = 4", &format!("bcrypt_cost = {cost}"), 1)
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_email_and_wrong_password_get_identical_answers() {
    let gateway = GatewayOptions::new()
        .login_protection(1000, "15m", "15m", 1000)
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let unknown = unique_email();

    for guess in ["wrong-password-1", "' OR 1=1 --", &password] {
        let existing = login_attempt(&gateway, &email, &format!("{guess}x")).await;
        let missing = login_attempt(&gateway, &unknown, &format!("{guess}x")).await;
        assert_eq!(existing.status(), 401, "wrong password status");
        assert_eq!(missing.status(), 401, "unknown e-mail status");
        assert_eq!(
            comparable_headers(&existing),
            comparable_headers(&missing),
            "the headers tell a registered e-mail from an unknown one"
        );
        let existing_body = existing.text().await.unwrap();
        let missing_body = missing.text().await.unwrap();
        assert_eq!(
            existing_body, missing_body,
            "the bodies tell a registered e-mail from an unknown one"
        );
        assert!(
            existing_body.contains("invalid_credentials"),
            "body: {existing_body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_email_and_wrong_password_look_alike_on_the_sign_in_form() {
    let gateway = GatewayOptions::new()
        .login_protection(1000, "15m", "15m", 1000)
        .start()
        .await;
    let email = unique_email();
    gateway.register(&email, &strong_password()).await;
    let unknown = unique_email();

    // A browser: the sign-in page's CSRF cookie and token, then the form post.
    let page = gateway.get("/auth/login", None).await;
    let csrf = set_cookies(&page)
        .into_iter()
        .find(|c| c.name == "authgate_csrf")
        .expect("the sign-in page sets the CSRF cookie")
        .value;
    let existing = sign_in_form(&gateway, &csrf, &email, "not-the-password").await;
    let missing = sign_in_form(&gateway, &csrf, &unknown, "not-the-password").await;
    assert_eq!(existing.status(), 401);
    assert_eq!(missing.status(), 401);
    assert_eq!(comparable_headers(&existing), comparable_headers(&missing));
    // The page echoes the typed e-mail back; apart from that it must be the same page.
    let existing_page = existing.text().await.unwrap().replace(&email, "EMAIL");
    let missing_page = missing.text().await.unwrap().replace(&unknown, "EMAIL");
    assert_eq!(existing_page, missing_page);
    assert!(existing_page.contains("Wrong email or password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lockout_does_not_reveal_which_emails_exist() {
    let gateway = GatewayOptions::new()
        .login_protection(3, "15m", "15m", 1000)
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let unknown = unique_email();

    for i in 1..=3 {
        let existing = login_attempt(&gateway, &email, &format!("guess-{i}-wrong")).await;
        let missing = login_attempt(&gateway, &unknown, &format!("guess-{i}-wrong")).await;
        assert_eq!(existing.status(), 401);
        assert_eq!(missing.status(), 401);
        assert_eq!(
            existing.text().await.unwrap(),
            missing.text().await.unwrap()
        );
    }
    // Both are now locked, in exactly the same words.
    let existing = login_attempt(&gateway, &email, &password).await;
    let missing = login_attempt(&gateway, &unknown, &password).await;
    assert_eq!(existing.status(), 429, "a registered e-mail was not locked");
    assert_eq!(missing.status(), 429, "an unknown e-mail was not locked");
    assert!(header(&existing, "retry-after").is_some());
    assert!(header(&missing, "retry-after").is_some());
    let existing_error = assert_json_error(existing, 429, "account_locked").await;
    let missing_error = assert_json_error(missing, 429, "account_locked").await;
    // The messages name the remaining wait, which may differ by the second that passed.
    let shape = |text: &str| {
        text.chars()
            .filter(|c| !c.is_ascii_digit())
            .collect::<String>()
    };
    assert_eq!(
        shape(existing_error["message"].as_str().unwrap()),
        shape(missing_error["message"].as_str().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_email_and_wrong_password_take_the_same_time() {
    // A realistic bcrypt cost, so a missing dummy verification would show as a gap of tens of
    // milliseconds; no lockout or per-IP limit in the way of the 2 × ROUNDS attempts.
    const ROUNDS: usize = 21;
    let gateway = Gateway::start_with_edited(
        GatewayOptions::new().login_protection(10_000, "15m", "15m", 10_000),
        bcrypt_cost(8),
    )
    .await;
    let email = unique_email();
    gateway.register(&email, &strong_password()).await;

    // Warm up connections and the hashing pool.
    for _ in 0..2 {
        login_attempt(&gateway, &email, "warm-up-wrong").await;
        login_attempt(&gateway, &unique_email(), "warm-up-wrong").await;
    }
    let mut wrong_password = Vec::new();
    let mut unknown_email = Vec::new();
    for i in 0..ROUNDS {
        // Interleaved, so drift in machine load hits both series alike.
        let started = Instant::now();
        let response = login_attempt(&gateway, &email, &format!("wrong-password-{i}")).await;
        assert_eq!(response.status(), 401);
        wrong_password.push(started.elapsed());

        let started = Instant::now();
        let response =
            login_attempt(&gateway, &unique_email(), &format!("wrong-password-{i}")).await;
        assert_eq!(response.status(), 401);
        unknown_email.push(started.elapsed());
    }
    let wrong = median(&mut wrong_password);
    let unknown = median(&mut unknown_email);
    eprintln!("median login time: wrong password {wrong:?}, unknown e-mail {unknown:?}");
    let (small, large) = if wrong < unknown {
        (wrong, unknown)
    } else {
        (unknown, wrong)
    };
    // Without bcrypt dominating, the comparison would prove nothing.
    assert!(
        wrong >= Duration::from_millis(10),
        "a wrong-password login took only {wrong:?}: bcrypt cost 8 did not take effect"
    );
    let ratio = small.as_secs_f64() / large.as_secs_f64();
    assert!(
        ratio >= 0.5,
        "login time tells the accounts apart: wrong password {wrong:?} vs unknown e-mail \
         {unknown:?} (median of {ROUNDS})"
    );
}
