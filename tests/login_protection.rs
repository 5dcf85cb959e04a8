//! Brute-force protection (contract §5): repeated failures lock an account, known or not, for a
//! while, even against the right password; a single IP can only try so many logins.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failed_logins_lock_the_account_even_against_the_right_password() {
    let gateway = GatewayOptions::new()
        .login_protection(5, "15m", "15m", 100)
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    for i in 1..=5 {
        let response = login_attempt(&gateway, &email, &format!("wrong-password-{i}")).await;
        assert_json_error(response, 401, "invalid_credentials").await;
    }
    assert_refused_429(
        login_attempt(&gateway, &email, &password).await,
        "account_locked",
        15 * 60,
    )
    .await;
    // The lock is per normalised e-mail.
    assert_refused_429(
        login_attempt(&gateway, &format!(" {} ", email.to_uppercase()), &password).await,
        "account_locked",
        15 * 60,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_emails_lock_exactly_like_real_ones() {
    // Otherwise the lockout itself would reveal which accounts exist.
    let gateway = GatewayOptions::new()
        .login_protection(5, "15m", "15m", 100)
        .start()
        .await;
    let ghost = unique_email();
    for i in 1..=5 {
        let response = login_attempt(&gateway, &ghost, &format!("wrong-password-{i}")).await;
        assert_json_error(response, 401, "invalid_credentials").await;
    }
    assert_refused_429(
        login_attempt(&gateway, &ghost, "wrong-password-6").await,
        "account_locked",
        15 * 60,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_account_does_not_lock_anyone_else() {
    let gateway = GatewayOptions::new()
        .login_protection(3, "15m", "15m", 100)
        .start()
        .await;
    let victim = unique_email();
    gateway.register(&victim, &strong_password()).await;
    let bystander = unique_email();
    let bystander_password = strong_password();
    gateway.register(&bystander, &bystander_password).await;
    for _ in 0..3 {
        login_attempt(&gateway, &victim, "wrong-password").await;
    }
    assert_refused_429(
        login_attempt(&gateway, &victim, "wrong-password").await,
        "account_locked",
        15 * 60,
    )
    .await;
    gateway.login(&bystander, &bystander_password).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lockout_ends_after_its_duration() {
    let gateway = GatewayOptions::new()
        .login_protection(2, "15m", "2s", 100)
        .start()
        .await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    for _ in 0..2 {
        login_attempt(&gateway, &email, "wrong-password").await;
    }
    assert_refused_429(
        login_attempt(&gateway, &email, &password).await,
        "account_locked",
        2,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = eventually(Duration::from_secs(4), "the lockout to end", || async {
        let response = login_attempt(&gateway, &email, &password).await;
        (response.status() == 200).then_some(response.status())
    })
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ip_gets_only_max_attempts_per_ip_failed_logins() {
    let gateway = GatewayOptions::new()
        .login_protection(100, "15m", "15m", 3)
        .start()
        .await;
    // Different accounts each time: only the per-IP counter can stop this.
    for _ in 0..3 {
        let response = login_attempt(&gateway, &unique_email(), "wrong-password").await;
        assert_json_error(response, 401, "invalid_credentials").await;
    }
    assert_refused_429(
        login_attempt(&gateway, &unique_email(), "wrong-password").await,
        "rate_limited",
        15 * 60,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_says_which_limit_refused_it() {
    let gateway = GatewayOptions::new()
        .login_protection(2, "15m", "15m", 3)
        .start()
        .await;
    let user = gateway.signed_in_user().await;
    for _ in 0..2 {
        login_attempt(&gateway, &user.email, "wrong-password").await;
    }
    let locked = json_body(login_attempt(&gateway, &user.email, "wrong-password").await).await;
    let message = locked["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(locked["error"]["code"], "account_locked");
    assert!(message.contains("this account"), "{message}");
    // The address has used its three attempts: the next one names the per-address limit.
    let other = json_body(login_attempt(&gateway, &unique_email(), "wrong-password").await).await;
    let message = other["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(other["error"]["code"], "rate_limited");
    assert!(
        message.contains("your network") && message.contains("max_attempts_per_ip"),
        "{message}"
    );
}
