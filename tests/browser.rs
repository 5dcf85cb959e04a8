//! Real-browser end-to-end tests: headless Chromium, driven through ChromeDriver, uses the
//! gateway's sign-in, sign-up and device pages the way a person would (contract §2.7, §3).
//!
//! Every test starts its own gateway (real binary, real Postgres and Redis, echo upstream) and
//! its own browser contexts. A failing test leaves screenshots in `target/browser-failures/`.
//! A passing run takes the README's screenshots, `sign-in.png` and `device-dashboard.png`:
//! into `docs/` when `AUTHGATE_UPDATE_SCREENSHOTS=1` (then commit them), else into
//! `target/browser-screens/`, so an ordinary test run leaves the work tree clean.
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install -y chromium chromium-driver`);
//! without them the tests fail, naming what to install.

mod browser_support;
mod common;

use browser_support::{browser_test, repo_root, Browser, BrowserOptions};
use common::{strong_password, unique_email, Gateway, GatewayOptions};
use fantoccini::key::Key;
use serde_json::{json, Value};

/// User agents for two different-looking devices (the dashboard labels sessions by them).
const FIREFOX_ON_WINDOWS: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0";
const CHROME_ON_LINUX: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The value of query parameter `name` in `url`.
fn query_param(url: &reqwest::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// From a protected page, through the sign-in form, back to that page.
async fn sign_in_through_the_form(
    browser: &Browser,
    gateway: &Gateway,
    email: &str,
    password: &str,
    protected_path: &str,
) {
    browser.goto(&gateway.url(protected_path)).await;
    let login = browser.wait_for_path("/auth/login").await;
    assert_eq!(
        query_param(&login, "rd").as_deref(),
        Some(protected_path),
        "[{}] the sign-in page should remember where the visitor was going: {login}",
        browser.name
    );
    browser.fill("#email", email).await;
    browser.fill("#password", password).await;
    browser.submit_with("Sign in").await;
    browser.wait_for_path(protected_path).await;
}

/// Presses Tab until the button or link reading `text` has the focus, then Enter on it.
async fn tab_to_and_press(browser: &Browser, text: &str) {
    for _ in 0..40 {
        let focused = browser.client.active_element().await.unwrap();
        focused.send_keys(&Key::Tab).await.unwrap();
        let now = browser
            .js(
                "return document.activeElement ? document.activeElement.textContent.trim() : '';",
                vec![],
            )
            .await;
        if now == json!(text) {
            let focused = browser.client.active_element().await.unwrap();
            browser
                .expect_new_page(&format!("pressing Enter on \"{text}\""), || async {
                    focused.send_keys(&Key::Enter).await.unwrap()
                })
                .await;
            return;
        }
    }
    panic!("Tab never reached \"{text}\"");
}

/// Every visible form control has a `<label for=…>` with text; every button has a name.
async fn assert_controls_are_labelled(browser: &Browser) {
    let problems = browser
        .js(
            r#"
            const problems = [];
            for (const input of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
                const label = input.id && document.querySelector(`label[for="${input.id}"]`);
                if (!label || !label.textContent.trim()) {
                    problems.push(`no label for ${input.outerHTML}`);
                }
            }
            for (const button of document.querySelectorAll('button')) {
                if (!(button.getAttribute('aria-label') || button.textContent).trim()) {
                    problems.push(`button without a name: ${button.outerHTML}`);
                }
            }
            if (!document.documentElement.lang) problems.push('no <html lang>');
            if (!document.title.trim()) problems.push('no <title>');
            if (document.querySelectorAll('h1').length !== 1) problems.push('not exactly one <h1>');
            return problems;
            "#,
            vec![],
        )
        .await;
    assert_eq!(
        problems,
        json!([]),
        "[{}] accessibility basics on {}",
        browser.name,
        browser.current_url().await
    );
}

/// Layout problems at the current viewport: horizontal scrolling, controls that are hidden,
/// cut off at the sides, or smaller than a 24 px touch target; and whether the stylesheet
/// was applied (the CSP allows it).
async fn layout_problems(browser: &Browser) -> Value {
    browser
        .js(
            r#"
            // The width content can use: the viewport less any vertical scrollbar.
            const root = document.documentElement;
            const vw = root.clientWidth;
            const problems = [];
            if (root.scrollWidth > vw || root.scrollWidth > window.innerWidth) {
                problems.push(`page is ${root.scrollWidth}px wide in a ${vw}px viewport (scrolls sideways)`);
            }
            const controls = document.querySelectorAll(
                'input:not([type=hidden]), button, label, h1, .alert, .field-error, ul.sessions li');
            if (controls.length === 0) problems.push('no controls found');
            for (const el of controls) {
                const r = el.getBoundingClientRect();
                const style = getComputedStyle(el);
                const what = el.outerHTML.slice(0, 90);
                if (r.width === 0 || r.height === 0 || style.visibility === 'hidden' || style.display === 'none') {
                    problems.push(`not visible: ${what}`);
                } else if (r.left < 0 || r.right > vw + 0.5) {
                    problems.push(`outside the viewport (${Math.round(r.left)}..${Math.round(r.right)} of ${vw}): ${what}`);
                }
                if ((el.tagName === 'INPUT' || el.tagName === 'BUTTON') && (r.height < 24 || r.width < 24)) {
                    problems.push(`smaller than 24x24 (${Math.round(r.width)}x${Math.round(r.height)}): ${what}`);
                }
            }
            const card = document.querySelector('.card');
            if (!card || getComputedStyle(card).borderTopWidth !== '1px') {
                problems.push('the stylesheet was not applied (.card has no border)');
            }
            return problems;
            "#,
            vec![],
        )
        .await
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitor_is_sent_to_sign_in_registers_signs_in_and_lands_on_the_original_page() {
    browser_test(
        "visitor_is_sent_to_sign_in_registers_signs_in_and_lands_on_the_original_page",
        |scene| async move {
            let gateway = Gateway::start_with(GatewayOptions::new()).await;
            let browser = scene.browser("visitor", BrowserOptions::new()).await;
            let email = unique_email();
            let password = strong_password();
            let original = "/app/reports?year=2026";

            // A page load without a session goes to sign-in, remembering where it was going.
            browser.goto(&gateway.url(original)).await;
            let login = browser.wait_for_path("/auth/login").await;
            assert_eq!(
                query_param(&login, "rd").as_deref(),
                Some(original),
                "{login}"
            );
            assert_eq!(browser.text("h1").await, "Sign in");
            let rd_field = browser
                .find("form[action='/auth/login'] input[name=rd]")
                .await;
            assert_eq!(
                browser.attr(&rd_field, "value").await.as_deref(),
                Some(original)
            );
            assert_controls_are_labelled(&browser).await;
            // The README's picture of the sign-in page: as a visitor first sees it, without
            // the focus ring the email field's autofocus draws.
            assert!(
                browser.find_all(".alert").await.is_empty(),
                "a fresh page has no alert"
            );
            browser
                .js(
                    "document.activeElement && document.activeElement.blur(); return true;",
                    vec![],
                )
                .await;
            browser
                .save_screenshot(&screenshot_path("sign-in.png"))
                .await;

            // "Create one" keeps the destination.
            let create = browser.link("Create one").await;
            browser
                .expect_new_page("following \"Create one\"", || async {
                    browser.click(&create, "the \"Create one\" link").await
                })
                .await;
            let register = browser.wait_for_path("/auth/register").await;
            assert_eq!(query_param(&register, "rd").as_deref(), Some(original));
            assert_eq!(browser.text("h1").await, "Create an account");
            assert_controls_are_labelled(&browser).await;

            browser.fill("#email", &email).await;
            browser.fill("#password", &password).await;
            browser.fill("#full_name", "Ada Lovelace").await;
            let username = format!("ada_{}", &email[5..11]);
            browser.fill("#username", &username).await;
            browser.submit_with("Create account").await;

            // Signed in at once: lands on the original page, query included, served by the
            // upstream as this user.
            let landed = browser.wait_for_path("/app/reports").await;
            assert_eq!(landed.query(), Some("year=2026"), "{landed}");
            let echoed = browser.body_json().await;
            assert_eq!(echoed["path"], json!(original), "{echoed}");
            let forwarded_user = echoed["headers"]["x-user-id"]
                .as_str()
                .unwrap_or_else(|| panic!("the upstream got no x-user-id: {echoed}"))
                .to_string();

            // The same id the gateway reports for this browser's session, and the stored one.
            browser.goto(&gateway.url("/auth/user/me")).await;
            browser.wait_for_path("/auth/user/me").await;
            let me = browser.body_json().await;
            assert_eq!(me["user"]["email"], json!(email), "{me}");
            assert_eq!(me["user"]["id"], json!(forwarded_user), "{me}");
            assert_eq!(me["user"]["username"], json!(username), "{me}");
            assert_eq!(me["user"]["full_name"], json!("Ada Lovelace"), "{me}");
            let stored = gateway
                .query_one("SELECT id FROM users WHERE email = $1", &[(&email).into()])
                .await
                .text("id");
            assert_eq!(stored, forwarded_user, "the registered user's stored id");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_dashboard_ends_another_browsers_session() {
    browser_test(
        "device_dashboard_ends_another_browsers_session",
        |scene| async move {
            let gateway = Gateway::start_with(GatewayOptions::new()).await;
            let email = unique_email();
            let password = strong_password();
            gateway.register(&email, &password).await;

            let laptop = scene
                .browser("laptop", BrowserOptions::new().user_agent(CHROME_ON_LINUX))
                .await;
            let other = scene
                .browser(
                    "other",
                    BrowserOptions::new().user_agent(FIREFOX_ON_WINDOWS),
                )
                .await;
            sign_in_through_the_form(&laptop, &gateway, &email, &password, "/app/home").await;
            sign_in_through_the_form(&other, &gateway, &email, &password, "/app/home").await;

            laptop.goto(&gateway.url("/auth/devices")).await;
            laptop.wait_for_path("/auth/devices").await;
            let heading = laptop.text("h1").await;
            assert_eq!(heading, "Your devices and sessions");
            assert_controls_are_labelled(&laptop).await;
            let items = laptop.find_all("ul.sessions > li").await;
            assert_eq!(
                items.len(),
                2,
                "two live sessions expected; the page says:\n{}",
                laptop.body_text().await
            );
            let current = laptop.find_all("ul.sessions > li .badge.current").await;
            assert_eq!(current.len(), 1, "exactly one \"This device\" badge");
            assert_eq!(current[0].text().await.unwrap(), "This device");

            // Which entry is which: the badge marks this browser; labels come from the UA.
            let entries = laptop
                .js(
                    "return [...document.querySelectorAll('ul.sessions > li')].map(li => ({\
                       current: !!li.querySelector('.badge.current'),\
                       what: li.querySelector('.what').innerText,\
                       meta: li.querySelector('.meta').innerText,\
                       button: li.querySelector('button').innerText.trim()}));",
                    vec![],
                )
                .await;
            let entries = entries.as_array().expect("session entries").clone();
            let this = entries
                .iter()
                .find(|e| e["current"] == json!(true))
                .unwrap();
            let that = entries
                .iter()
                .find(|e| e["current"] == json!(false))
                .unwrap();
            assert!(
                this["what"].as_str().unwrap().contains("Chrome"),
                "this device should be labelled from its user agent: {this}"
            );
            assert!(
                that["what"].as_str().unwrap().contains("Firefox"),
                "the other device should be labelled from its user agent: {that}"
            );
            assert_eq!(this["button"], json!("Sign out here"), "{this}");
            assert_eq!(that["button"], json!("End session"), "{that}");
            for entry in [this, that] {
                let meta = entry["meta"].as_str().unwrap();
                assert!(meta.contains("127.0.0.1"), "IP shown: {entry}");
                assert!(meta.contains("last used"), "last use shown: {entry}");
            }
            laptop.button("End all other sessions").await;
            laptop.button("Change password").await;
            let back = laptop.link("← Back to the app").await;
            assert_eq!(laptop.attr(&back, "href").await.as_deref(), Some("/"));

            laptop
                .save_full_page_screenshot(&screenshot_path("device-dashboard.png"), 1280)
                .await;

            // End the other browser's session from here.
            laptop.submit_with("End session").await;
            let after = laptop.wait_for_path("/auth/devices").await;
            assert_eq!(
                query_param(&after, "ended").as_deref(),
                Some("one"),
                "{after}"
            );
            assert_eq!(laptop.text(".alert.info").await, "The session was ended.");
            let items = laptop.find_all("ul.sessions > li").await;
            assert_eq!(
                items.len(),
                1,
                "one session left; the page says:\n{}",
                laptop.body_text().await
            );
            assert_eq!(
                laptop
                    .find_all("ul.sessions > li .badge.current")
                    .await
                    .len(),
                1,
                "the one left is this device"
            );

            // The other browser is signed out at its next page load; this one is not.
            other.goto(&gateway.url("/app/next?page=2")).await;
            let bounced = other.wait_for_path("/auth/login").await;
            assert_eq!(
                query_param(&bounced, "rd").as_deref(),
                Some("/app/next?page=2"),
                "{bounced}"
            );
            laptop.goto(&gateway.url("/app/still-here")).await;
            laptop.wait_for_path("/app/still-here").await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_changes_the_password_and_shows_a_wrong_one_at_its_field() {
    browser_test(
        "the_dashboard_changes_the_password_and_shows_a_wrong_one_at_its_field",
        |scene| async move {
            let gateway = Gateway::start_with(GatewayOptions::new()).await;
            let email = unique_email();
            let password = strong_password();
            gateway.register(&email, &password).await;
            let other_session = gateway.login(&email, &password).await;
            let browser = scene.browser("browser", BrowserOptions::new()).await;
            sign_in_through_the_form(&browser, &gateway, &email, &password, "/app").await;
            browser.goto(&gateway.url("/auth/devices")).await;
            browser.wait_for_path("/auth/devices").await;

            let new_password = strong_password();
            browser.fill("#current_password", "not-the-password").await;
            browser.fill("#new_password", &new_password).await;
            browser.fill("#confirm_password", &new_password).await;
            browser.submit_with("Change password").await;
            // The page again, as the answer to the post.
            browser.wait_for_path("/auth/devices/password").await;
            assert_eq!(
                browser.text("#current_password-error").await,
                "Current password is not correct."
            );
            assert_eq!(
                browser.focused_id().await,
                "current_password",
                "the field with the problem has the focus"
            );
            assert_controls_are_labelled(&browser).await;

            browser.fill("#current_password", &password).await;
            browser.fill("#new_password", &new_password).await;
            browser.fill("#confirm_password", &new_password).await;
            browser.submit_with("Change password").await;
            browser.wait_for_path("/auth/devices").await;
            assert_eq!(
                browser.text(".alert.info").await,
                "Your password was changed. Every other session was signed out."
            );
            assert_eq!(browser.find_all("ul.sessions > li").await.len(), 1);
            assert_eq!(
                gateway
                    .get("/auth/user/me", Some(&other_session))
                    .await
                    .status(),
                401,
                "the other session survived the password change"
            );
            gateway.login(&email, &new_password).await;

            // The link back to the app.
            let back = browser.link("← Back to the app").await;
            browser
                .expect_new_page("following \"Back to the app\"", || async {
                    browser.click(&back, "the back link").await
                })
                .await;
            browser.wait_for_path("/").await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_from_the_dashboard_makes_protected_pages_redirect_again() {
    browser_test(
        "signing_out_from_the_dashboard_makes_protected_pages_redirect_again",
        |scene| async move {
            let gateway = Gateway::start_with(GatewayOptions::new()).await;
            let email = unique_email();
            let password = strong_password();
            gateway.register(&email, &password).await;
            let browser = scene.browser("browser", BrowserOptions::new()).await;
            sign_in_through_the_form(&browser, &gateway, &email, &password, "/app/inbox").await;

            browser.goto(&gateway.url("/auth/devices")).await;
            browser.wait_for_path("/auth/devices").await;
            browser.submit_with("Sign out").await;

            let signed_out = browser.wait_for_path("/auth/login").await;
            assert_eq!(
                query_param(&signed_out, "signed_out").as_deref(),
                Some("1"),
                "{signed_out}"
            );
            assert_eq!(
                browser.text(".alert.info").await,
                "You have been signed out."
            );

            browser.goto(&gateway.url("/app/inbox")).await;
            let again = browser.wait_for_path("/auth/login").await;
            assert_eq!(query_param(&again, "rd").as_deref(), Some("/app/inbox"));
            browser.goto(&gateway.url("/auth/devices")).await;
            let dashboard = browser.wait_for_path("/auth/login").await;
            assert_eq!(
                query_param(&dashboard, "rd").as_deref(),
                Some("/auth/devices"),
                "the dashboard needs a session too: {dashboard}"
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_lockout_messages_are_shown_on_the_page() {
    browser_test(
        "wrong_password_and_lockout_messages_are_shown_on_the_page",
        |scene| async move {
            // The defaults: 5 failures within 15 minutes lock the account for 15 minutes.
            let gateway = Gateway::start_with(GatewayOptions::new()).await;
            let email = unique_email();
            let password = strong_password();
            gateway.register(&email, &password).await;
            let browser = scene.browser("browser", BrowserOptions::new()).await;
            browser.goto(&gateway.url("/app/settings")).await;
            browser.wait_for_path("/auth/login").await;

            for attempt in 1..=5 {
                browser.fill("#email", &email).await;
                browser
                    .fill("#password", &format!("not-the-password-{attempt}"))
                    .await;
                browser.submit_with("Sign in").await;
                browser.wait_for_path("/auth/login").await;
                let alert = browser.find(".alert.error").await;
                assert_eq!(
                    alert.text().await.unwrap(),
                    "Wrong email or password.",
                    "attempt {attempt}"
                );
                assert_eq!(
                    browser.attr(&alert, "role").await.as_deref(),
                    Some("alert"),
                    "the error is announced to screen readers"
                );
                // The email is kept, the password is not; the destination survives the retry.
                let email_field = browser.find("#email").await;
                assert_eq!(
                    email_field.prop("value").await.unwrap().as_deref(),
                    Some(email.as_str())
                );
                let password_field = browser.find("#password").await;
                assert_eq!(
                    password_field.prop("value").await.unwrap().as_deref(),
                    Some("")
                );
                let rd = browser.find("input[name=rd]").await;
                assert_eq!(
                    browser.attr(&rd, "value").await.as_deref(),
                    Some("/app/settings")
                );
            }

            // Locked: even the right password is refused, with the wait spelled out.
            browser.fill("#email", &email).await;
            browser.fill("#password", &password).await;
            browser.submit_with("Sign in").await;
            let message = browser.text(".alert.error").await;
            assert!(
                message.starts_with("Too many failed sign-in attempts")
                    && message.contains("Try again in 15 minutes"),
                "lockout message: {message:?}"
            );
            browser.goto(&gateway.url("/app/settings")).await;
            browser.wait_for_path("/auth/login").await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_errors_are_shown_next_to_the_field() {
    browser_test(
        "registration_errors_are_shown_next_to_the_field",
        |scene| async move {
            let gateway = Gateway::start_with(GatewayOptions::new()).await;
            let taken = unique_email();
            gateway.register(&taken, &strong_password()).await;
            let browser = scene.browser("browser", BrowserOptions::new()).await;
            browser.goto(&gateway.url("/auth/register?rd=%2Fapp")).await;
            browser.wait_for_path("/auth/register").await;

            // (email, password, username) → the field that must be marked.
            let fresh = unique_email();
            let cases = [
                (fresh.as_str(), "short", "new_user_1", "password", "at least 8"),
                (
                    taken.as_str(),
                    "a-perfectly-good-password",
                    "new_user_2",
                    "email",
                    "already registered",
                ),
                (
                    fresh.as_str(),
                    "a-perfectly-good-password",
                    "x",
                    "username",
                    "3 to",
                ),
            ];
            for (email, password, username, field, says) in cases {
                browser.fill("#email", email).await;
                browser.fill("#password", password).await;
                browser.fill("#username", username).await;
                browser.submit_with("Create account").await;
                let url = browser.wait_for_path("/auth/register").await;

                let input = browser.find(&format!("#{field}")).await;
                assert_eq!(
                    browser.attr(&input, "aria-invalid").await.as_deref(),
                    Some("true"),
                    "#{field} should be marked invalid ({url})"
                );
                assert_eq!(
                    browser.attr(&input, "aria-describedby").await.as_deref(),
                    Some(format!("{field}-error").as_str()),
                    "#{field} should point at its error"
                );
                let error = browser.text(&format!("#{field}-error.field-error")).await;
                assert!(error.contains(says), "#{field} error: {error:?}");
                // The error sits right under its field.
                let below = browser
                    .js(
                        "const input = document.getElementById(arguments[0]);\
                         const error = document.getElementById(arguments[0] + '-error');\
                         let next = input.nextElementSibling;\
                         while (next && next.classList.contains('hint')) next = next.nextElementSibling;\
                         return next === error && \
                           error.getBoundingClientRect().top >= input.getBoundingClientRect().bottom;",
                        vec![json!(field)],
                    )
                    .await;
                assert_eq!(below, json!(true), "#{field}-error is not right below #{field}");
                // Only that field is marked; what was typed (but the password) is kept.
                let marked = browser
                    .js(
                        "return [...document.querySelectorAll('[aria-invalid=true]')].map(e => e.id);",
                        vec![],
                    )
                    .await;
                assert_eq!(marked, json!([field]));
                let kept = browser.find("#email").await.prop("value").await.unwrap();
                assert_eq!(kept.as_deref(), Some(email));
                let rd = browser.find("input[name=rd]").await;
                assert_eq!(browser.attr(&rd, "value").await.as_deref(), Some("/app"));
                assert_controls_are_labelled(&browser).await;
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_with_the_optional_fields_left_blank_works() {
    browser_test(
        "registering_with_the_optional_fields_left_blank_works",
        |scene| async move {
            let gateway = Gateway::start_with(GatewayOptions::new()).await;
            let email = unique_email();
            let password = strong_password();
            let browser = scene.browser("browser", BrowserOptions::new()).await;
            browser
                .goto(&gateway.url("/auth/register?rd=%2Fapp%2Fwelcome"))
                .await;
            browser.wait_for_path("/auth/register").await;

            // "Full name (optional)" and "Username (optional)" stay empty; the browser still
            // sends them, as empty strings.
            browser.fill("#email", &email).await;
            browser.fill("#password", &password).await;
            browser.submit_with("Create account").await;
            let url = browser.current_url().await;
            assert_eq!(
                url.path(),
                "/app/welcome",
                "leaving the optional fields empty should create the account and sign in, but \
                 the browser is at {url}, saying:\n{}",
                browser.body_text().await
            );
            let echoed = browser.body_json().await;
            assert!(echoed["headers"]["x-user-id"].is_string(), "{echoed}");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_usable_at_phone_and_desktop_widths() {
    browser_test(
        "pages_are_usable_at_phone_and_desktop_widths",
        |scene| async move {
            let gateway = Gateway::start_with(GatewayOptions::new()).await;
            let email = unique_email();
            let password = strong_password();
            gateway.register(&email, &password).await;
            let browser = scene.browser("browser", BrowserOptions::new()).await;
            let sizes = [(375, 800), (1280, 900)];

            // Pictures of every checked state, for a person to look at (not committed).
            let screens = repo_root().join("target/browser-screens");
            let check = |page: &'static str, width: u32| {
                let browser = browser.clone();
                let picture = screens.join(format!(
                    "{}-{width}.png",
                    page.trim_start_matches("/auth/").replace([' ', '/'], "-")
                ));
                async move {
                    browser.save_screenshot(&picture).await;
                    let problems = layout_problems(&browser).await;
                    assert_eq!(
                        problems,
                        json!([]),
                        "{page} at {width}px wide has layout problems"
                    );
                    for css in ["form button[type=submit]"] {
                        for element in browser.find_all(css).await {
                            assert!(
                                element.is_displayed().await.unwrap(),
                                "{page} at {width}px: `{css}` is not displayed"
                            );
                        }
                    }
                }
            };

            for (width, height) in sizes {
                browser.resize(width, height).await;
                browser.goto(&gateway.url("/auth/login")).await;
                browser.wait_for_path("/auth/login").await;
                for css in ["#email", "#password"] {
                    assert!(browser.find(css).await.is_displayed().await.unwrap());
                }
                browser.button("Sign in").await;
                check("/auth/login", width).await;

                browser.goto(&gateway.url("/auth/register")).await;
                browser.wait_for_path("/auth/register").await;
                for css in ["#email", "#password", "#full_name", "#username"] {
                    assert!(browser.find(css).await.is_displayed().await.unwrap());
                }
                browser.button("Create account").await;
                check("/auth/register", width).await;

                // With errors shown, too.
                browser.fill("#email", "not-an-email").await;
                browser.submit_with("Create account").await;
                browser.find(".field-error").await;
                check("/auth/register with an error", width).await;
            }

            sign_in_through_the_form(&browser, &gateway, &email, &password, "/app").await;
            // A second session, so the list and the "End all other sessions" button are full.
            gateway.login(&email, &password).await;
            for (width, height) in sizes {
                browser.resize(width, height).await;
                browser.goto(&gateway.url("/auth/devices")).await;
                browser.wait_for_path("/auth/devices").await;
                browser.button("Sign out").await;
                browser.button("End all other sessions").await;
                assert_eq!(browser.find_all("ul.sessions > li").await.len(), 2);
                check("/auth/devices", width).await;
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_work_with_the_keyboard_alone() {
    browser_test("forms_work_with_the_keyboard_alone", |scene| async move {
        let gateway = Gateway::start_with(GatewayOptions::new()).await;
        let email = unique_email();
        let password = strong_password();
        let browser = scene.browser("browser", BrowserOptions::new()).await;

        // Sign-up by keyboard: Tab walks the fields in order, Enter submits.
        browser
            .goto(&gateway.url("/auth/register?rd=%2Fapp%2Fkeyboard"))
            .await;
        browser.wait_for_path("/auth/register").await;
        browser
            .js(
                "document.getElementById('email').focus(); return true;",
                vec![],
            )
            .await;
        let typed = [
            ("email", email.as_str()),
            ("password", password.as_str()),
            ("full_name", "Grace Hopper"),
            ("username", "grace.h"),
        ];
        for (index, (id, text)) in typed.iter().enumerate() {
            assert_eq!(
                browser.focused_id().await,
                *id,
                "focus order on /auth/register"
            );
            let focused = browser.client.active_element().await.unwrap();
            focused.send_keys(text).await.unwrap();
            if index + 1 < typed.len() {
                focused.send_keys(&Key::Tab).await.unwrap();
            }
        }
        let focused = browser.client.active_element().await.unwrap();
        browser
            .expect_new_page("pressing Enter in the sign-up form", || async {
                focused.send_keys(&Key::Enter).await.unwrap()
            })
            .await;
        // Signed up is signed in.
        let landed = browser.wait_for_path("/app/keyboard").await;
        let echoed = browser.body_json().await;
        assert!(
            echoed["headers"]["x-user-id"].is_string(),
            "{landed}: {echoed}"
        );

        // The dashboard's buttons are reachable with Tab and work with Enter.
        browser.goto(&gateway.url("/auth/devices")).await;
        browser.wait_for_path("/auth/devices").await;
        tab_to_and_press(&browser, "Sign out").await;
        browser.wait_for_path("/auth/login").await;
        assert_eq!(
            browser.text(".alert.info").await,
            "You have been signed out."
        );

        // Sign-in by keyboard: the email field has focus on arrival.
        browser
            .goto(&gateway.url("/auth/login?rd=%2Fapp%2Fkeyboard"))
            .await;
        browser.wait_for_path("/auth/login").await;
        assert_eq!(
            browser.focused_id().await,
            "email",
            "the sign-in page should put the focus in the email field"
        );
        let focused = browser.client.active_element().await.unwrap();
        focused.send_keys(&email).await.unwrap();
        focused.send_keys(&Key::Tab).await.unwrap();
        assert_eq!(browser.focused_id().await, "password", "Tab from email");
        let focused = browser.client.active_element().await.unwrap();
        focused.send_keys(&password).await.unwrap();
        browser
            .expect_new_page("pressing Enter in the sign-in form", || async {
                focused.send_keys(&Key::Enter).await.unwrap()
            })
            .await;
        let landed = browser.wait_for_path("/app/keyboard").await;
        let echoed = browser.body_json().await;
        assert!(
            echoed["headers"]["x-user-id"].is_string(),
            "{landed}: {echoed}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_send_security_headers() {
    let gateway = Gateway::start_with(GatewayOptions::new()).await;
    let user = gateway.signed_in_user().await;
    let html = [("Accept", "text/html")];
    for (path, token) in [
        ("/auth/login", None),
        ("/auth/register", None),
        ("/auth/devices", Some(user.token.as_str())),
    ] {
        let response = gateway.get_with(path, token, &html).await;
        assert_eq!(response.status(), 200, "GET {path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(
            header("content-type").starts_with("text/html"),
            "{path}: {}",
            header("content-type")
        );
        let csp = header("content-security-policy");
        for directive in [
            "default-src 'none'",
            "style-src 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(
                csp.contains(directive),
                "{path}: CSP {csp:?} lacks {directive:?}"
            );
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: CSP {csp:?}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert_eq!(header("referrer-policy"), "same-origin", "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        let body = response.text().await.unwrap();
        assert!(!body.contains("<script"), "{path}: pages need no script");
    }
    let css = gateway
        .get_with("/auth/assets/style.css", None, &[("Accept", "text/css")])
        .await;
    assert_eq!(css.status(), 200);
    assert!(common::header(&css, "content-type")
        .unwrap_or_default()
        .starts_with("text/css"));
}

/// Where a README screenshot goes: `docs/` when refreshing them on purpose, else `target/`.
fn screenshot_path(name: &str) -> std::path::PathBuf {
    let refresh = std::env::var("AUTHGATE_UPDATE_SCREENSHOTS").is_ok_and(|value| value == "1");
    let dir = if refresh {
        repo_root().join("docs")
    } else {
        repo_root().join("target/browser-screens")
    };
    if let Err(error) = std::fs::create_dir_all(&dir) {
        panic!("cannot create {}: {error}", dir.display());
    }
    dir.join(name)
}
