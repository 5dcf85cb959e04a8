//! Running authgate (contract §7, §8): metrics, health and readiness, failing closed when Redis is
//! gone and recovering when it returns, what the logs may and must contain, `authgate check`,
//! and SIGTERM.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

// --- metrics ---------------------------------------------------------------------------------

/// Waits until `name{labels}` is at least `at_least` (metrics may be recorded after the
/// response is sent); panics with the series of that name otherwise.
async fn metric_at_least(gateway: &Gateway, name: &str, labels: &[(&str, &str)], at_least: f64) {
    let what = format!("{name}{labels:?} >= {at_least}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let last_text = loop {
        let text = gateway.metrics().await;
        if metric_value(&text, name, labels).is_some_and(|v| v >= at_least) {
            return;
        }
        if std::time::Instant::now() >= deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let related: Vec<&str> = last_text
        .lines()
        .filter(|l| l.starts_with(name.trim_end_matches("_count")))
        .collect();
    panic!(
        "metric {what} not reached; value {:?}; series with that name:\n{}",
        metric_value(&last_text, name, labels),
        related.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_decisions_logins_and_upstream_latency() {
    let gateway = GatewayOptions::new().rate_limit(1, 6).start().await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let token = gateway.login(&email, &password).await;
    let bad_login = gateway
        .post_json(
            "/auth/login",
            &json!({"email": email, "password": "not-the-password"}),
            None,
        )
        .await;
    assert_eq!(bad_login.status(), 401);

    let allowed = gateway.get("/dashboard", Some(&token)).await;
    assert_eq!(allowed.status(), 200);
    let unauthenticated = gateway
        .get_with("/dashboard", None, &[("Accept", "application/json")])
        .await;
    assert_eq!(unauthenticated.status(), 401);
    let mut limited = false;
    for _ in 0..30 {
        if gateway.get("/dashboard", Some(&token)).await.status() == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "never rate limited");

    metric_at_least(
        &gateway,
        "authgate_http_requests_total",
        &[("route", "/"), ("status_class", "2xx")],
        1.0,
    )
    .await;
    metric_at_least(
        &gateway,
        "authgate_http_requests_total",
        &[("route", "/"), ("status_class", "4xx")],
        1.0,
    )
    .await;
    for decision in ["allowed", "unauthenticated", "rate_limited"] {
        metric_at_least(
            &gateway,
            "authgate_auth_decisions_total",
            &[("decision", decision)],
            1.0,
        )
        .await;
    }
    for outcome in ["success", "failure"] {
        metric_at_least(
            &gateway,
            "authgate_logins_total",
            &[("outcome", outcome)],
            1.0,
        )
        .await;
    }
    metric_at_least(
        &gateway,
        "authgate_upstream_latency_seconds_count",
        &[("route", "/")],
        1.0,
    )
    .await;

    // The counts are exact, not merely present: one failed login so far.
    let text = gateway.metrics().await;
    assert_eq!(
        metric_value(&text, "authgate_logins_total", &[("outcome", "failure")]),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&text, "authgate_logins_total", &[("outcome", "success")]),
        Some(1.0)
    );
    // The latency histogram is a real histogram.
    assert!(
        metric_value(
            &text,
            "authgate_upstream_latency_seconds_bucket",
            &[("route", "/"), ("le", "+Inf")]
        )
        .is_some_and(|v| v >= 1.0),
        "no +Inf bucket for route /"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_prometheus_text_with_help_and_type() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    gateway.get("/dashboard", Some(&user.token)).await;
    gateway.get("/public/x", None).await;
    let response = gateway.admin_get("/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = header(&response, "content-type")
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain"),
        "content-type {content_type:?}"
    );
    let text = response.text().await.unwrap();
    let samples = parse_metrics(&text);
    assert!(!samples.is_empty());

    let declared = |kind: &str, family: &str| {
        text.lines()
            .any(|l| l.starts_with(&format!("# {kind} {family} ")))
    };
    let mut seen = std::collections::BTreeSet::new();
    for sample in &samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = sample.name.strip_suffix(suffix)?;
                declared("TYPE", base).then_some(base)
            })
            .unwrap_or(&sample.name);
        assert!(declared("TYPE", family), "no # TYPE for {}", sample.name);
        assert!(declared("HELP", family), "no # HELP for {}", sample.name);
        assert!(
            seen.insert(format!("{}{:?}", sample.name, sample.labels)),
            "duplicate series {} {:?}",
            sample.name,
            sample.labels
        );
    }
    for family in [
        "authgate_http_requests_total",
        "authgate_auth_decisions_total",
        "authgate_logins_total",
        "authgate_upstream_latency_seconds_count",
    ] {
        assert!(
            samples.iter().any(|s| s.name == family),
            "no {family} series after traffic"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_not_served_on_the_public_listener() {
    let gateway = GatewayOptions::new()
        .routes(vec![RouteSpec::public("/", Upstream::Echo)])
        .start()
        .await;
    let response = gateway.get("/metrics", None).await;
    // Whatever answers, it is not the gateway's own exposition.
    let text = response.text().await.unwrap();
    assert!(!text.contains("authgate_http_requests_total"), "{text}");
}

// --- health and readiness --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_are_200_when_both_stores_are_up() {
    let gateway = Gateway::start().await;
    assert_eq!(gateway.admin_get("/healthz").await.status(), 200);
    let ready = eventually(Duration::from_secs(10), "/readyz 200", || async {
        let response = gateway.admin_get("/readyz").await;
        if response.status() != 200 {
            return None;
        }
        Some(json_body(response).await)
    })
    .await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["session_store"], "ok", "{ready}");
    assert_eq!(ready["database"], "ok", "{ready}");
    // /readyz names the backends of the pair the gateway runs on.
    let (sessions, database) = on_pair(("redis", "postgres"), ("memory", "sqlite"));
    assert_eq!(ready["session_store_backend"], sessions, "{ready}");
    assert_eq!(ready["database_backend"], database, "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_unreachable_the_gateway_starts_but_is_not_ready_and_fails_closed() {
    if !require_backend(
        Backend::Production,
        "cuts Redis off (the embedded pair's session store is in the process)",
    ) {
        return;
    }
    // A cookie exactly like a real one, minted by a healthy gateway.
    let donor = Gateway::start().await;
    let real_shaped_token = donor.signed_in_user().await.token;

    let dead_redis = format!("redis://127.0.0.1:{}", free_port());
    let gateway = GatewayOptions::new()
        .redis_url(&dead_redis)
        .expect_not_ready()
        .start()
        .await;

    assert_eq!(gateway.admin_get("/healthz").await.status(), 200);
    assert_eq!(gateway.admin_get("/readyz").await.status(), 503);

    let response = gateway
        .get_with(
            "/dashboard",
            Some(&real_shaped_token),
            &[("Accept", "application/json")],
        )
        .await;
    assert_fails_closed(response).await;
    // A cookie that cannot be a token may be refused without asking the store; either way it
    // is refused.
    for junk in [uuid::Uuid::new_v4().to_string(), "x".to_string()] {
        let status = gateway
            .get_with("/dashboard", Some(&junk), &[("Accept", "application/json")])
            .await
            .status();
        assert!(status == 401 || status == 503, "{junk}: {status}");
    }
    let public = gateway.get("/public/still-works", None).await;
    assert_eq!(public.status(), 200, "public routes do not need Redis");
    assert_eq!(
        gateway.echo.request_count(),
        1,
        "only the public request got through"
    );
}

async fn assert_fails_closed(response: reqwest::Response) {
    let retry_after = header(&response, "retry-after").map(str::to_string);
    let error = assert_json_error_status(response, 503).await;
    let retry_after = retry_after.unwrap_or_else(|| panic!("503 without Retry-After: {error}"));
    assert!(
        retry_after.trim().parse::<u64>().is_ok_and(|s| s >= 1),
        "Retry-After {retry_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_fails_closed_and_its_return_recovers_without_a_restart() {
    if !require_backend(
        Backend::Production,
        "cuts Redis off (the embedded pair's session store is in the process)",
    ) {
        return;
    }
    let redis = TcpForwarder::to_redis().await;
    let gateway = GatewayOptions::new()
        .redis_url(&redis.redis_url())
        .start()
        .await;
    let user = gateway.signed_in_user().await;
    assert_eq!(gateway.get("/inbox", Some(&user.token)).await.status(), 200);
    eventually(Duration::from_secs(10), "/readyz 200", || async {
        (gateway.admin_get("/readyz").await.status() == 200).then_some(())
    })
    .await;

    redis.stop();
    eventually(
        Duration::from_secs(10),
        "/readyz 503 with Redis down",
        || async { (gateway.admin_get("/readyz").await.status() == 503).then_some(()) },
    )
    .await;
    let response = eventually(Duration::from_secs(10), "protected 503", || async {
        let response = gateway
            .get_with(
                "/inbox",
                Some(&user.token),
                &[("Accept", "application/json")],
            )
            .await;
        match response.status().as_u16() {
            503 => Some(response),
            200 => panic!("a protected route was served without Redis"),
            _ => None,
        }
    })
    .await;
    assert_fails_closed(response).await;
    assert_eq!(
        gateway.get("/public/up", None).await.status(),
        200,
        "public routes keep working without Redis"
    );

    redis.resume().await;
    eventually(
        Duration::from_secs(10),
        "/readyz 200 after Redis returned",
        || async { (gateway.admin_get("/readyz").await.status() == 200).then_some(()) },
    )
    .await;
    let echo = eventually(
        Duration::from_secs(10),
        "the session to work again",
        || async {
            let response = gateway.get("/inbox", Some(&user.token)).await;
            if response.status() == 200 {
                Some(echoed(response).await)
            } else {
                None
            }
        },
    )
    .await;
    assert_eq!(echo.header("x-user-id"), Some(user.id.as_str()));
}

// --- logs ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_passwords_tokens_or_hashes() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;
    let token = gateway.login(&email, &password).await;
    gateway.get("/page", Some(&token)).await;
    gateway.get("/auth/user/me", Some(&token)).await;
    // A failed login and a bad registration log the attempt, never the secret.
    let wrong = format!("{password}-wrong");
    gateway
        .post_json(
            "/auth/login",
            &json!({"email": email, "password": wrong}),
            None,
        )
        .await;
    gateway
        .post_json(
            "/auth/register",
            &json!({"email": "no-at-sign", "password": wrong}),
            None,
        )
        .await;
    gateway.logout(Some(&token)).await;

    // Let the last request's line be written.
    eventually(
        Duration::from_secs(5),
        "a log line for /auth/logout",
        || async { gateway.logs().contains("/auth/logout").then_some(()) },
    )
    .await;
    let logs = gateway.logs();
    assert!(!logs.contains(&password), "the password is in the log");
    assert!(!logs.contains(&wrong), "a wrong password is in the log");
    assert!(!logs.contains(&token), "the session token is in the log");
    assert!(
        !logs.contains("password_hash"),
        "password_hash is in the log"
    );
    assert!(!logs.contains("$2b$"), "a bcrypt hash is in the log");
}

/// Whether any (key, value) in `line` is a status of `status`.
fn has_status(line: &Value, status: u64) -> bool {
    json_leaves(line).iter().any(|(key, value)| {
        key.to_ascii_lowercase().contains("status")
            && (value.as_u64() == Some(status) || value.as_str() == Some(&status.to_string()))
    })
}

fn mentions(line: &Value, needle: &str) -> bool {
    json_leaves(line)
        .iter()
        .any(|(_, value)| value.as_str().is_some_and(|s| s.contains(needle)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_json_log_line_with_path_status_and_client_ip() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let marker = format!("/logged/{}", random_hex(4));
    assert_eq!(gateway.get(&marker, Some(&user.token)).await.status(), 200);
    let unauthenticated = format!("/denied/{}", random_hex(4));
    assert_eq!(gateway.get(&unauthenticated, None).await.status(), 401);

    for (path, status) in [(&marker, 200), (&unauthenticated, 401)] {
        let lines = eventually(Duration::from_secs(5), "the request's log line", || async {
            let lines: Vec<Value> = json_log_lines(&gateway.logs())
                .into_iter()
                .filter(|line| mentions(line, path))
                .collect();
            (!lines.is_empty()).then_some(lines)
        })
        .await;
        let request_lines: Vec<&Value> = lines.iter().filter(|l| has_status(l, status)).collect();
        assert_eq!(
            request_lines.len(),
            1,
            "want exactly one line for {path} with status {status}: {lines:#?}"
        );
        assert!(
            mentions(request_lines[0], "127.0.0.1"),
            "no client ip in {}",
            request_lines[0]
        );
    }

    // The authenticated line names the user.
    let lines = json_log_lines(&gateway.logs());
    let line = lines
        .iter()
        .find(|l| mentions(l, &marker) && has_status(l, 200))
        .unwrap();
    assert!(mentions(line, &user.id), "no user id in {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_json_lines_when_format_is_json() {
    let gateway = Gateway::start().await;
    gateway.get("/public/a", None).await;
    eventually(
        Duration::from_secs(5),
        "a log line for /public/a",
        || async { gateway.logs().contains("/public/a").then_some(()) },
    )
    .await;
    let logs = gateway.logs();
    let non_json: Vec<&str> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| serde_json::from_str::<Value>(l).is_err())
        .collect();
    assert!(
        non_json.is_empty(),
        "log lines that are not JSON:\n{}",
        non_json.join("\n")
    );
}

// --- authgate check --------------------------------------------------------------------------

fn valid_config() -> String {
    GatewayOptions::new().render(&RenderTarget::for_check())
}

fn assert_check_rejects(config: &str, key: &str) -> String {
    let output = run_check(config);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(
        !output.status.success(),
        "check accepted an invalid file (stderr: {stderr}):\n{config}"
    );
    assert!(stderr.contains(key), "stderr should name {key:?}: {stderr}");
    stderr
}

#[test]
fn check_accepts_a_valid_config() {
    let config = valid_config();
    let output = run_check(&config);
    assert!(
        output.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}\nconfig:\n{config}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_accepts_the_shipped_gateway_toml() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml");
    let output = gateway_command()
        .args(["check", "--config", shipped])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_rejects_a_duration_that_does_not_parse_naming_the_key() {
    let config = valid_config().replace("idle_timeout = \"1h\"", "idle_timeout = \"abc\"");
    assert!(config.contains("\"abc\""));
    assert_check_rejects(&config, "idle_timeout");
}

#[test]
fn check_rejects_an_upstream_that_is_not_an_address_naming_the_key() {
    let config = format!(
        "{}[[route]]\nprefix = \"/broken/\"\nupstreams = [\"not an address\"]\nauth = \"public\"\n",
        valid_config()
    );
    assert_check_rejects(&config, "upstreams");
}

#[test]
fn check_rejects_an_unknown_key_naming_it() {
    let config = valid_config().replace("[session]\n", "[session]\nidel_timeout = \"1h\"\n");
    assert!(config.contains("idel_timeout"));
    assert_check_rejects(&config, "idel_timeout");
}

#[test]
fn check_rejects_an_unknown_auth_mode_naming_the_key() {
    let config = valid_config().replacen("auth = \"public\"", "auth = \"sometimes\"", 1);
    assert!(config.contains("sometimes"));
    let stderr = assert_check_rejects(&config, "auth");
    // "authgate" in the message does not count as naming the `auth` key.
    assert!(
        stderr.replace("authgate", "").contains("auth"),
        "stderr should name the auth key: {stderr}"
    );
}

#[test]
fn check_rejects_a_file_that_is_not_toml() {
    let output = run_check("[server\nlisten = ");
    assert!(!output.status.success());
    assert!(!output.stderr.is_empty(), "no explanation on stderr");
}

#[test]
fn check_rejects_a_missing_file() {
    let output = gateway_command()
        .args(["check", "--config", "/nonexistent/authgate/gateway.toml"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
}

#[test]
fn check_refuses_a_database_timeout_out_of_range() {
    let config = valid_config();
    assert!(
        config.contains("database_max_connections = 5\n"),
        "{config}"
    );
    for value in ["0s", "5ms", "2h"] {
        let with = config.replace(
            "database_max_connections = 5\n",
            &format!("database_max_connections = 5\ndatabase_timeout = \"{value}\"\n"),
        );
        assert_check_rejects(&with, "storage.database_timeout");
    }
}

#[test]
fn check_refuses_zero_lockout_and_window() {
    let with = |window: &str, lockout: &str| {
        GatewayOptions::new()
            .login_protection(5, window, lockout, 20)
            .render(&RenderTarget::for_check())
    };
    // The same section with sane durations passes, so it is the zero that is refused.
    let sane = with("15m", "15m");
    let output = run_check(&sane);
    assert!(
        output.status.success(),
        "stderr: {}\nconfig:\n{sane}",
        String::from_utf8_lossy(&output.stderr)
    );
    let zero_lockout = with("15m", "0s");
    assert!(zero_lockout.contains("lockout = \"0s\""));
    assert_check_rejects(&zero_lockout, "login_protection.lockout");
    let zero_window = with("0s", "15m");
    assert!(zero_window.contains("window = \"0s\""));
    assert_check_rejects(&zero_window, "login_protection.window");
}

/// Runs `authgate --config <path>` and waits up to `within` for it to exit: its status and
/// what it wrote to stderr, or `None` when it was still running (it is killed then).
async fn run_until_exit(
    path: &std::path::Path,
    within: Duration,
) -> Option<(std::process::ExitStatus, String)> {
    let mut child = gateway_command()
        .arg("--config")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + within;
    loop {
        if child.try_wait().unwrap().is_some() {
            let output = child.wait_with_output().unwrap();
            return Some((
                output.status,
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_to_start_with_an_invalid_config() {
    let config = valid_config().replace("idle_timeout = \"1h\"", "idle_timeout = \"abc\"");
    let dir = TempDir::new();
    let path = dir.path.join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let (status, _) = run_until_exit(&path, Duration::from_secs(15))
        .await
        .expect("authgate kept running with an invalid config");
    assert!(!status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_to_start_when_an_address_it_listens_on_is_taken() {
    // A second gateway on a running one's addresses, and one whose admin address another
    // program holds: each exits at once naming the address and its key, rather than retrying
    // for half a minute and then lingering "ready" with no public listener.
    let running = Gateway::start().await;
    let held = listen_on_free_port();
    let held_addr = held.local_addr().unwrap();
    let config = std::fs::read_to_string(&running.config_path).unwrap();
    let free = format!("127.0.0.1:{}", free_port());
    let cases = [
        (config.clone(), running.listen.to_string(), "server.listen"),
        (
            config
                .replace(&format!("\"{}\"", running.listen), &format!("\"{free}\""))
                .replace(
                    &format!("\"{}\"", running.admin),
                    &format!("\"{held_addr}\""),
                ),
            held_addr.to_string(),
            "server.admin_listen",
        ),
    ];
    for (config, address, key) in cases {
        let dir = TempDir::new();
        let path = dir.path.join("gateway.toml");
        std::fs::write(&path, &config).unwrap();
        let (status, stderr) = run_until_exit(&path, Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("authgate kept running with {key} = {address} taken"));
        assert!(!status.success(), "{key} taken, yet exit status {status}");
        assert!(
            stderr.contains(&format!("cannot listen on {address} ({key})")),
            "{key} = {address} taken; stderr does not name it:\n{stderr}"
        );
    }
    // The running gateway was not disturbed.
    assert_eq!(running.get("/public/a", None).await.status(), 200);
}

// --- shutdown --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_gateway_within_the_grace_period() {
    let mut gateway = Gateway::start().await;
    assert_eq!(gateway.get("/public/a", None).await.status(), 200);
    gateway.signal("TERM");
    // shutdown_grace = 1s in the harness; allow generous slack for the final drain.
    let exit = gateway.wait_for_exit(Duration::from_secs(8)).await;
    assert!(
        exit.is_some(),
        "authgate still running 8 s after SIGTERM with shutdown_grace = 1s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_postgres_keeps_existing_sessions_working_and_makes_login_503() {
    if !require_backend(
        Backend::Production,
        "cuts Postgres off (the embedded pair's database is a local file)",
    ) {
        return;
    }
    // contract §8: the proxied hot path never touches Postgres; login and register need it.
    let postgres = TcpForwarder::to_postgres().await;
    let gateway = GatewayOptions::new()
        .database_through(&postgres)
        .start()
        .await;
    let user = gateway.signed_in_user().await;

    postgres.stop();
    eventually(
        Duration::from_secs(15),
        "/readyz 503 with Postgres down",
        || async { (gateway.admin_get("/readyz").await.status() == 503).then_some(()) },
    )
    .await;
    let proxied = gateway.get("/inbox", Some(&user.token)).await;
    let echo = echoed(proxied).await;
    assert_eq!(echo.header("x-user-id"), Some(user.id.as_str()));

    let login = gateway
        .post_json(
            "/auth/login",
            &json!({"email": user.email, "password": user.password}),
            None,
        )
        .await;
    assert_fails_closed(login).await;
    let register = gateway
        .post_json(
            "/auth/register",
            &json!({"email": unique_email(), "password": strong_password()}),
            None,
        )
        .await;
    assert_fails_closed(register).await;

    postgres.resume().await;
    eventually(Duration::from_secs(15), "login to work again", || async {
        let response = gateway
            .post_json(
                "/auth/login",
                &json!({"email": user.email, "password": user.password}),
                None,
            )
            .await;
        (response.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_checked_as_postgres_goes_away_is_counted_once_it_is_back() {
    if !require_backend(
        Backend::Production,
        "cuts Postgres off (the embedded pair's database is a local file)",
    ) {
        return;
    }
    // §5: failures are mirrored into users.failed_login_attempts. Postgres is cut off after the
    // account was read and while its (deliberately slow) password check runs, so the count
    // cannot be written before the 401. It is queued, and written once when Postgres is back:
    // not lost, not counted twice.
    let postgres = TcpForwarder::to_postgres().await;
    let gateway =
        Gateway::start_with_edited(GatewayOptions::new().database_through(&postgres), |text| {
            text.replace("bcrypt_cost = 4", "bcrypt_cost = 14")
        })
        .await;
    let email = unique_email();
    gateway.register(&email, &strong_password()).await;

    let wrong = json!({"email": email, "password": "wrong-password-1"});
    let started = std::time::Instant::now();
    let guess = gateway.post_json("/auth/login", &wrong, None);
    // bcrypt at cost 14 takes seconds in a test build; the account is read within the first.
    let cut = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        postgres.stop();
    };
    let (response, ()) = tokio::join!(guess, cut);
    let took = started.elapsed();
    eprintln!("the wrong password was answered after {took:?} (Postgres cut off after 1 s)");
    assert_eq!(response.status(), 401, "{}", response.text().await.unwrap());
    let count = || async {
        gateway
            .count(
                "SELECT failed_login_attempts FROM users WHERE email = $1",
                &[email.as_str().into()],
            )
            .await
    };
    assert_eq!(
        count().await,
        0,
        "the count was written before Postgres was cut off (the check took {took:?}): the \
         test did not exercise what it is about"
    );
    assert!(
        gateway
            .logs()
            .contains("account stamp not written yet; queued"),
        "{}",
        gateway.logs()
    );

    postgres.resume().await;
    eventually(
        Duration::from_secs(20),
        "the queued failure to be counted",
        || async { (count().await == 1).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count().await, 1, "the failure was counted more than once");
}

/// The harness's routes plus a public `/slow/` route to `upstream`, with a long grace period.
fn with_slow_route(upstream: &EchoServer) -> GatewayOptions {
    let mut options = GatewayOptions::new().routes(vec![
        RouteSpec::required("/", Upstream::Echo),
        RouteSpec::public("/public/", Upstream::Echo),
        RouteSpec::public("/slow/", Upstream::Addr(upstream.addr.to_string())),
    ]);
    options.shutdown_grace = "30s".into();
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_promptly_when_idle_and_lets_in_flight_requests_finish() {
    let slow = EchoServer::start_delayed(Duration::from_secs(2)).await;

    // (a) Idle (a kept-alive connection open, no request in flight): out long before the 30 s
    // grace period is over, with success.
    let mut idle = with_slow_route(&slow).start().await;
    assert_eq!(idle.get("/public/a", None).await.status(), 200);
    let sent = std::time::Instant::now();
    idle.signal("TERM");
    let exit = idle.wait_for_exit(Duration::from_secs(8)).await;
    let took = sent.elapsed();
    let exit = exit.unwrap_or_else(|| {
        panic!("an idle authgate still running 8 s after SIGTERM (shutdown_grace = 30s)")
    });
    eprintln!("idle gateway exited {took:?} after SIGTERM: {exit}");
    assert!(exit.success(), "exit status {exit} after SIGTERM");
    assert!(
        took < Duration::from_secs(5),
        "an idle gateway took {took:?} to exit after SIGTERM (shutdown_grace = 30s)"
    );

    // (b) A request in flight when SIGTERM arrives is answered, then the process exits.
    let mut busy = with_slow_route(&slow).start().await;
    let in_flight = tokio::spawn({
        let client = busy.client.clone();
        let url = busy.url("/slow/report");
        async move { client.get(url).send().await }
    });
    eventually(
        Duration::from_secs(10),
        "the slow request to reach the upstream",
        || async {
            slow.requests()
                .iter()
                .any(|r| r.path == "/slow/report")
                .then_some(())
        },
    )
    .await;
    let sent = std::time::Instant::now();
    busy.signal("TERM");
    let response = in_flight
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the in-flight request failed after SIGTERM: {e:?}"));
    let echo = echoed(response).await;
    assert_eq!(echo.path, "/slow/report");
    let exit = busy.wait_for_exit(Duration::from_secs(12)).await;
    let took = sent.elapsed();
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "authgate still running {took:?} after SIGTERM, its only request long answered \
             (shutdown_grace = 30s)"
        )
    });
    eprintln!("busy gateway exited {took:?} after SIGTERM: {exit}");
    assert!(exit.success(), "exit status {exit} after SIGTERM");
    assert!(
        took < Duration::from_secs(8),
        "the gateway took {took:?} to exit after SIGTERM with a 2 s request in flight \
         (shutdown_grace = 30s)"
    );
}

// --- branding --------------------------------------------------------------------------------

const BRANDING: &str = "[branding]\nproduct_name = \"Acme Portal\"\naccent_color = \"#0f766e\"\n\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branding_sets_the_product_name_and_accent_colour_of_the_pages() {
    let gateway =
        Gateway::start_with_edited(GatewayOptions::new(), |toml| format!("{BRANDING}{toml}")).await;

    let page = gateway.get("/auth/login", None).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let title = html
        .split_once("<title>")
        .and_then(|(_, rest)| rest.split_once("</title>"))
        .map(|(title, _)| title)
        .unwrap_or_else(|| panic!("no <title> in the sign-in page:\n{html}"));
    assert!(
        title.contains("Acme Portal"),
        "<title>{title}</title> does not name the product"
    );
    let body = html.split_once("</title>").unwrap().1;
    assert!(
        body.contains("Acme Portal"),
        "the page body does not show the product name:\n{html}"
    );
    assert!(
        !title.contains("authgate"),
        "<title>{title}</title> still names the default product"
    );

    let css = gateway.get("/auth/assets/style.css", None).await;
    assert_eq!(css.status(), 200);
    let content_type = header(&css, "content-type").unwrap_or_default().to_string();
    assert!(content_type.starts_with("text/css"), "{content_type:?}");
    let css = css.text().await.unwrap();
    assert!(
        css.contains("--accent: #0f766e"),
        "the stylesheet does not use the configured accent:\n{css}"
    );
    assert!(
        !css.contains("#1d4ed8"),
        "the default accent is still in the stylesheet:\n{css}"
    );

    // A colour white button text would be unreadable on is refused by `authgate check`.
    let too_light = format!(
        "[branding]\nproduct_name = \"Acme Portal\"\naccent_color = \"#ffff00\"\n\n{}",
        valid_config()
    );
    assert_check_rejects(&too_light, "branding.accent_color");
    let output = run_check(&format!("{BRANDING}{}", valid_config()));
    assert!(
        output.status.success(),
        "check refused the readable accent: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
