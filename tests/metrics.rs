//! The metrics an operator scrapes (contract §8) and the deployment kit built on them: a live
//! `/metrics` scrape passes `promtool check metrics`, every known series exists at zero from the
//! start, each fact is counted by one counter, and the alert rules, their unit tests, the
//! Prometheus config and the Grafana dashboard in `deploy/` are valid and name only metrics the
//! gateway exports.
//!
//! promtool comes from Debian's `prometheus` package (`.ci/run` installs it). Without it these
//! tests fail and say so: a check that did not run must not look like one that passed.

mod common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

/// Series created by other parts of the deployment: Prometheus's own `up`, and the upstream
/// health gauge, which the upstream pools add.
const NOT_EXPORTED_HERE: [&str; 2] = ["up", "authgate_upstream_healthy"];

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs `promtool ARGS`, feeding `stdin`; its exit status and combined output.
fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run promtool ({error}): install it with `apt-get install prometheus` \
                 (Debian's package ships /usr/bin/promtool; .ci/run installs it when missing)"
            )
        });
    {
        let mut input = child.stdin.take().expect("promtool stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("write to promtool");
        }
    }
    let output = child.wait_with_output().expect("wait for promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The metric families declared (`# TYPE`) in an exposition.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The metric names a PromQL expression (or any text) mentions: `authgate_*` and `process_*`
/// words, histogram suffixes removed, plus `up`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("authgate_") || word.starts_with("process_") {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word);
            names.insert(base.to_string());
        }
    }
    names
}

/// Some traffic of every kind: a registration, a login, a failed login, an allowed, a public,
/// an unauthenticated and an unrouted request.
async fn exercise(gateway: &Gateway) {
    let user = gateway.signed_in_user().await;
    let failed = gateway
        .post_json(
            "/auth/login",
            &json!({"email": user.email, "password": "not-the-password"}),
            None,
        )
        .await;
    assert_eq!(failed.status(), 401);
    assert_eq!(gateway.get("/page", Some(&user.token)).await.status(), 200);
    assert_eq!(gateway.get("/public/x", None).await.status(), 200);
    let unauthenticated = gateway
        .get_with("/page", None, &[("Accept", "application/json")])
        .await;
    assert_eq!(unauthenticated.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_scrape_passes_promtool_check_metrics() {
    let gateway = Gateway::start().await;
    exercise(&gateway).await;
    let text = gateway.metrics().await;
    let (ok, output) = promtool(&["check", "metrics"], Some(&text));
    assert!(
        ok && output.trim().is_empty(),
        "promtool check metrics failed:\n{output}\n--- the scrape:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_build_info_and_every_known_series_exist_from_the_start() {
    let gateway = Gateway::start().await;
    // Before any traffic.
    let text = gateway.metrics().await;
    let value = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);

    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(value(family, &[]).is_some(), "no {family}:\n{text}");
    }
    // Every configured route's request counters and latency histogram, at zero.
    for route in ["/", "/public/"] {
        for class in ["2xx", "4xx", "5xx"] {
            assert_eq!(
                value(
                    "authgate_http_requests_total",
                    &[("route", route), ("status_class", class)]
                ),
                Some(0.0),
                "route {route} {class}:\n{text}"
            );
        }
        assert_eq!(
            value(
                "authgate_upstream_latency_seconds_count",
                &[("route", route)]
            ),
            Some(0.0),
            "route {route} latency:\n{text}"
        );
    }
    assert_eq!(
        value(
            "authgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "authgate_build_info{{version=\"{}\"}} is not 1",
        env!("CARGO_PKG_VERSION")
    );
    for result in ["ok", "error"] {
        assert_eq!(
            value("authgate_config_reloads_total", &[("result", result)]),
            Some(0.0)
        );
    }
    // The start-up load counts as a successful load.
    let loaded = value("authgate_config_last_reload_success_timestamp_seconds", &[])
        .expect("no authgate_config_last_reload_success_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        loaded > 1.6e9 && loaded <= now + 1.0,
        "last reload timestamp {loaded} is not a recent Unix time (now {now})"
    );

    for decision in [
        "allowed",
        "unauthenticated",
        "rate_limited",
        "public",
        "store_unavailable",
        "forbidden",
    ] {
        assert_eq!(
            value("authgate_auth_decisions_total", &[("decision", decision)]),
            Some(0.0),
            "decision {decision}"
        );
    }
    for outcome in [
        "success",
        "failure",
        "locked",
        "rate_limited",
        "session_limit",
        "credentials_changed",
        "invalid",
        "disabled",
        "unavailable",
    ] {
        assert_eq!(
            value("authgate_logins_total", &[("outcome", outcome)]),
            Some(0.0),
            "login outcome {outcome}"
        );
    }
    for outcome in [
        "created",
        "conflict",
        "rate_limited",
        "refused",
        "invalid",
        "unavailable",
    ] {
        assert_eq!(
            value("authgate_registrations_total", &[("outcome", outcome)]),
            Some(0.0),
            "registration outcome {outcome}"
        );
    }
    for reason in ["logout", "revoked", "evicted", "expired"] {
        assert_eq!(
            value("authgate_sessions_ended_total", &[("reason", reason)]),
            Some(0.0),
            "session end reason {reason}"
        );
    }
    for kind in ["ip_changed", "ua_changed"] {
        assert_eq!(
            value("authgate_session_anomalies_total", &[("kind", kind)]),
            Some(0.0)
        );
    }
    assert_eq!(value("authgate_lockouts_total", &[]), Some(0.0));

    // The stores of this pair: an error counter, latency series per operation, an up gauge.
    let (session_store, database) = gateway
        .backend
        .pick(("redis", "postgres"), ("memory", "sqlite"));
    assert_eq!(
        value("authgate_store_errors_total", &[("store", database)]),
        Some(0.0)
    );
    assert!(
        value(
            "authgate_store_latency_seconds_count",
            &[("store", database), ("operation", "insert_session")]
        )
        .is_some(),
        "no latency series for {database} insert_session:\n{text}"
    );
    if session_store == "redis" {
        assert!(value(
            "authgate_store_latency_seconds_count",
            &[("store", "redis"), ("operation", "touch")]
        )
        .is_some());
    }
    // The harness waited for /readyz, so the readiness gauges say up.
    let text = gateway.metrics().await;
    for store in [session_store, database] {
        assert_eq!(
            metric_value(&text, "authgate_store_up", &[("store", store)]),
            Some(1.0),
            "authgate_store_up{{store={store:?}}}"
        );
    }
    assert_eq!(metric_value(&text, "authgate_ready", &[]), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fact_is_counted_once_and_login_throttling_is_a_login_outcome() {
    let gateway = GatewayOptions::new()
        .login_protection(2, "15m", "15m", 100)
        .start()
        .await;
    let user = gateway.signed_in_user().await;
    let wrong = json!({"email": user.email, "password": "not-the-password"});
    for _ in 0..2 {
        let response = gateway.post_json("/auth/login", &wrong, None).await;
        assert_eq!(response.status(), 401);
    }
    // The second failure locked the account: even the right password is refused now.
    let locked = gateway
        .post_json(
            "/auth/login",
            &json!({"email": user.email, "password": user.password}),
            None,
        )
        .await;
    assert_json_error(locked, 429, "account_locked").await;

    let text = gateway.metrics().await;
    let value = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    assert_eq!(
        value("authgate_logins_total", &[("outcome", "failure")]),
        Some(2.0)
    );
    assert_eq!(
        value("authgate_logins_total", &[("outcome", "locked")]),
        Some(1.0)
    );
    assert_eq!(value("authgate_lockouts_total", &[]), Some(1.0));
    // Not counted a second time as a request decision, nor by a separate counter.
    assert_eq!(
        value(
            "authgate_auth_decisions_total",
            &[("decision", "rate_limited")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value("authgate_auth_decisions_total", &[("decision", "locked")]),
        None
    );
    assert!(
        !text.contains("authgate_rate_limited_total"),
        "authgate_rate_limited_total duplicates authgate_auth_decisions_total{{decision=\"rate_limited\"}}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_limiter_is_counted_once_as_a_decision() {
    let gateway = GatewayOptions::new().rate_limit(1, 2).start().await;
    let mut limited = 0;
    for _ in 0..10 {
        if gateway.get("/public/x", None).await.status() == 429 {
            limited += 1;
        }
    }
    assert!(limited > 0, "never rate limited");
    let text = gateway.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "authgate_auth_decisions_total",
            &[("decision", "rate_limited")]
        ),
        Some(f64::from(limited))
    );
    assert!(!text.contains("authgate_rate_limited_total"));
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let (ok, output) = promtool(&["check", "rules", "deploy/alerts.yml"], None);
    assert!(ok, "promtool check rules deploy/alerts.yml:\n{output}");
    let (ok, output) = promtool(&["test", "rules", "deploy/alerts.test.yml"], None);
    assert!(ok, "promtool test rules deploy/alerts.test.yml:\n{output}");
    let (ok, output) = promtool(&["check", "config", "deploy/prometheus.yml"], None);
    assert!(ok, "promtool check config deploy/prometheus.yml:\n{output}");
}

#[test]
fn the_alert_rules_cover_the_operational_failures() {
    let rules = std::fs::read_to_string(repo_path("deploy/alerts.yml")).unwrap();
    for needle in [
        "up{job=\"authgate\"} == 0",
        "status_class=\"5xx\"",
        "authgate_ready == 0",
        "authgate_store_up == 0",
        "authgate_logins_total{outcome=~\"failure",
        "authgate_lockouts_total",
        "authgate_config_reloads_total{result=\"error\"}",
        "authgate_upstream_healthy == 0",
    ] {
        assert!(
            rules.contains(needle),
            "deploy/alerts.yml has no rule on {needle}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_and_the_dashboard_use_only_metrics_the_gateway_exports() {
    let gateway = Gateway::start().await;
    exercise(&gateway).await;
    let exported = families(&gateway.metrics().await);

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("deploy/grafana/dashboards/authgate.json")).unwrap(),
    )
    .expect("deploy/grafana/dashboards/authgate.json is not JSON");
    let mut expressions = Vec::new();
    for panel in dashboard["panels"].as_array().expect("dashboard panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            expressions.push(target["expr"].as_str().expect("target expr").to_string());
        }
    }
    assert!(expressions.len() > 10, "the dashboard has few queries");
    let dashboard_names: BTreeSet<String> = expressions
        .iter()
        .flat_map(|expr| metric_names(expr))
        .collect();
    let alert_names =
        metric_names(&std::fs::read_to_string(repo_path("deploy/alerts.yml")).unwrap());

    for (file, names) in [
        ("deploy/grafana/dashboards/authgate.json", &dashboard_names),
        ("deploy/alerts.yml", &alert_names),
    ] {
        for name in names {
            assert!(
                exported.contains(name) || NOT_EXPORTED_HERE.contains(&name.as_str()),
                "{file} uses {name}, which /metrics does not export"
            );
        }
    }
    // The dashboard covers the main families.
    for family in [
        "authgate_http_requests_total",
        "authgate_upstream_latency_seconds",
        "authgate_auth_decisions_total",
        "authgate_logins_total",
        "authgate_active_sessions",
        "authgate_store_latency_seconds",
        "authgate_store_errors_total",
        "authgate_upstream_healthy",
        "authgate_config_reloads_total",
    ] {
        assert!(
            dashboard_names.contains(family),
            "the dashboard shows nothing of {family}"
        );
    }
}
