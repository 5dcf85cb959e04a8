//! Hot reload of `gateway.toml` (SIGHUP and file changes), against the real binary.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// A public route to the echo upstream, as `gateway.toml` lines.
fn public_route(gateway: &Gateway, prefix: &str) -> String {
    format!(
        "\n[[route]]\nprefix = \"{prefix}\"\nupstreams = [\"{}\"]\nauth = \"public\"\n",
        gateway.echo.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_fails_no_request_and_new_routes_take_effect() {
    let gateway = Arc::new(Gateway::start_with(GatewayOptions::new().unmetered()).await);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    // Four keep-alive clients hammer a route that every version of the file keeps.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (gateway, stop, sent) = (gateway.clone(), stop.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match gateway.get("/public/steady", None).await.status().as_u16() {
                    200 => {}
                    status => failures.push(status),
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    let original = gateway.config_text();
    for round in 1..=6u32 {
        let prefix = format!("/round-{round}/");
        let route = public_route(&gateway, &prefix);
        // Odd rounds add a route, even rounds take the previous one away again.
        if round % 2 == 1 {
            gateway.rewrite_config(|text| text + &route);
        } else {
            gateway.rewrite_config(|_| original.clone());
        }
        gateway.wait_for_reloads("ok", round).await;
        let added = format!("/round-{}/page", round - (1 - round % 2));
        // Without its route the path falls to the protected `/` route: 401.
        let expected = if round % 2 == 1 { 200 } else { 401 };
        let status = gateway.get(&added, None).await.status();
        assert_eq!(
            status,
            expected,
            "after reload {round}, GET {added} (log:\n{})",
            gateway.logs()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.expect("client task"));
    }
    let total = sent.load(Ordering::Relaxed);
    assert!(total > 50, "the clients sent only {total} requests");
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed during reloads: {failures:?}",
        failures.len()
    );
    let reloads = metric_value(
        &gateway.metrics().await,
        "authgate_config_reloads_total",
        &[("result", "error")],
    );
    assert_eq!(reloads, Some(0.0), "no reload may have failed");
    eprintln!("{total} requests across 6 reloads, none failed");
}

#[tokio::test]
async fn an_invalid_file_is_rejected_whole_and_the_old_config_keeps_serving() {
    let gateway = Gateway::start().await;
    let valid = gateway.config_text();
    let new_route = public_route(&gateway, "/fresh/");

    // A syntax-level mistake next to a valid change: neither is applied.
    gateway.rewrite_config(|text| {
        text.replace("[rate_limit]\n", "[rate_limit]\nrequests_per_secnd = 1\n") + &new_route
    });
    gateway.wait_for_reloads("error", 1).await;
    // Not routed to /fresh/: the protected `/` route answers.
    assert_eq!(gateway.get("/fresh/x", None).await.status(), 401);
    assert_eq!(gateway.get("/public/x", None).await.status(), 200);
    let logs = gateway.logs();
    assert!(
        logs.contains("requests_per_secnd") && logs.contains("line "),
        "the rejection names the key and its line:\n{logs}"
    );

    // A value that parses but is invalid (an upstream without a port), with a valid change.
    gateway.rewrite_config(|_| {
        valid.replace(
            &format!("upstreams = [\"{}\"]", gateway.echo.addr),
            "upstreams = [\"no-port-here\"]",
        ) + &new_route
    });
    gateway.wait_for_reloads("error", 2).await;
    // Not routed to /fresh/: the protected `/` route answers.
    assert_eq!(gateway.get("/fresh/x", None).await.status(), 401);
    assert_eq!(gateway.get("/public/x", None).await.status(), 200);
    let logs = gateway.logs();
    assert!(
        logs.contains("upstreams[0]") && logs.contains("(line "),
        "the rejection names the key path and its line:\n{logs}"
    );

    // A deleted file is an error too; the gateway keeps serving.
    std::fs::remove_file(&gateway.config_path).unwrap();
    gateway.signal("HUP");
    gateway.wait_for_reloads("error", 3).await;
    assert_eq!(gateway.get("/public/x", None).await.status(), 200);

    // Fixed: the next reload applies it, and the counters say so.
    std::fs::write(&gateway.config_path, valid.clone() + &new_route).unwrap();
    gateway.wait_for_reloads("ok", 1).await;
    assert_eq!(gateway.get("/fresh/x", None).await.status(), 200);
    let metrics = gateway.metrics().await;
    // At least the three rejections above (the watcher may also have seen the deletion, or
    // the file half-written by the in-place write).
    let errors = metric_value(
        &metrics,
        "authgate_config_reloads_total",
        &[("result", "error")],
    );
    assert!(errors.is_some_and(|n| n >= 3.0), "{errors:?}");
    assert!(
        metric_value(
            &metrics,
            "authgate_config_last_reload_success_timestamp_seconds",
            &[]
        )
        .is_some_and(|t| t > 1.7e9),
        "last-success timestamp:\n{metrics}"
    );
}

/// Statuses of 8 quick requests.
async fn limited(gateway: &Gateway) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(gateway.get("/public/x", None).await.status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn sighup_reloads_a_rate_limit_change_and_does_not_end_the_process() {
    let mut gateway = Gateway::start_with(GatewayOptions::new().rate_limit(1, 3)).await;
    assert!(
        limited(&gateway).await.contains(&429),
        "burst 3 at 1/s limits 8 quick requests"
    );

    // SIGHUP with an unchanged file: a reload, and the process lives on (the default action
    // of SIGHUP is to end it).
    gateway.signal("HUP");
    gateway.wait_for_reloads("ok", 1).await;
    assert!(
        gateway
            .wait_for_exit(Duration::from_millis(300))
            .await
            .is_none(),
        "SIGHUP ended the gateway:\n{}",
        gateway.logs()
    );

    // Raise the limit in place (as an editor saving the file would) and signal.
    let text = gateway
        .config_text()
        .replace("burst = 3\n", "burst = 1000\n")
        .replace("requests_per_second = 1\n", "requests_per_second = 1000\n");
    std::fs::write(&gateway.config_path, text).unwrap();
    gateway.signal("HUP");
    gateway.wait_for_reloads("ok", 2).await;
    let statuses = eventually(Duration::from_secs(10), "the raised limit", || {
        let gateway = &gateway;
        async move {
            let statuses = limited(gateway).await;
            (!statuses.contains(&429)).then_some(statuses)
        }
    })
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    // And down again.
    gateway.rewrite_config(|text| {
        text.replace("burst = 1000\n", "burst = 2\n")
            .replace("requests_per_second = 1000\n", "requests_per_second = 1\n")
    });
    gateway.signal("HUP");
    eventually(Duration::from_secs(10), "the lowered limit", || {
        let gateway = &gateway;
        async move { limited(gateway).await.contains(&429).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn keys_that_need_a_restart_are_reported_and_keep_their_running_values() {
    let gateway = Gateway::start().await;
    let other_port = free_port();
    gateway.rewrite_config(|text| {
        text.replace(
            &format!("listen = \"{}\"", gateway.listen),
            &format!("listen = \"127.0.0.1:{other_port}\""),
        )
        .replace("threads = 2", "threads = 3")
    });
    gateway.wait_for_reloads("ok", 1).await;
    let logs = eventually(Duration::from_secs(5), "the restart warning", || {
        let logs = gateway.logs();
        async move { logs.contains("needs_restart").then_some(logs) }
    })
    .await;
    let line = json_log_lines(&logs)
        .into_iter()
        .find(|line| line.get("needs_restart").is_some())
        .expect("a JSON log line with needs_restart");
    let pending = line["needs_restart"].as_str().unwrap_or_default();
    assert!(
        pending.contains("server.listen") && pending.contains("server.threads"),
        "{line}"
    );
    assert_eq!(
        metric_value(
            &gateway.metrics().await,
            "authgate_config_restart_required",
            &[]
        ),
        Some(1.0)
    );
    // Still on the old address.
    assert_eq!(gateway.get("/public/x", None).await.status(), 200);
}

#[tokio::test]
async fn login_protection_strip_headers_branding_and_log_level_reload() {
    let gateway =
        Gateway::start_with(GatewayOptions::new().login_protection(5, "15m", "15m", 100)).await;
    let email = unique_email();
    let password = strong_password();
    gateway.register(&email, &password).await;

    gateway.rewrite_config(|text| {
        text.replace("max_failures = 5", "max_failures = 2")
            .replace(
                "[server]\n",
                "[server]\nstrip_headers = [\"X-Internal-Secret\"]\n",
            )
            .replace(
                "[log]\nformat = \"json\"\nlevel = \"info\"",
                "[log]\nformat = \"json\"\nlevel = \"warn\"",
            )
            + "\n[branding]\nproduct_name = \"Reloaded Portal\"\n"
    });
    gateway.wait_for_reloads("ok", 1).await;

    // Two wrong passwords now lock the account.
    for _ in 0..2 {
        let response = login_attempt(&gateway, &email, "wrong-password-123").await;
        assert_eq!(response.status(), 401);
    }
    let response = login_attempt(&gateway, &email, &password).await;
    assert_eq!(response.status(), 429, "locked after two failures");

    let echoed = echoed(
        gateway
            .get_with("/public/x", None, &[("X-Internal-Secret", "client value")])
            .await,
    )
    .await;
    assert_eq!(echoed.header("x-internal-secret"), None);

    let page = gateway.get("/auth/login", None).await.text().await.unwrap();
    assert!(page.contains("Reloaded Portal"), "{page}");

    // At level warn, requests write no access-log line.
    let marker = format!("/public/quiet-{}", random_hex(4));
    gateway.get(&marker, None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !gateway.logs().contains(&marker),
        "an info access line was written at level warn"
    );
}

#[tokio::test]
async fn a_replaced_route_table_stops_health_checking_its_upstreams() {
    // An upstream that only counts the connections it gets (health checks are TCP connects).
    let probed = listen_on_free_port();
    let probed_addr = probed.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = probed.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            drop(socket);
        }
    });
    let gateway = Gateway::start_with(GatewayOptions::new().routes(vec![
        RouteSpec::public("/", Upstream::Echo),
        RouteSpec::public("/probed/", Upstream::Addr(probed_addr.to_string()))
            .with("health_check_interval = \"100ms\""),
    ]))
    .await;
    eventually(
        Duration::from_secs(10),
        "health checks of the upstream",
        || {
            let seen = connections.load(Ordering::Relaxed);
            async move { (seen >= 3).then_some(()) }
        },
    )
    .await;

    gateway.rewrite_config(|text| {
        text.replace(
            &format!("upstreams = [\"{probed_addr}\"]"),
            &format!("upstreams = [\"{}\"]", gateway.echo.addr),
        )
    });
    gateway.wait_for_reloads("ok", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_reload = connections.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = connections.load(Ordering::Relaxed);
    assert_eq!(
        later, after_reload,
        "the replaced table's health checks went on probing {probed_addr}"
    );
    assert_eq!(gateway.get("/probed/x", None).await.status(), 200);
}

#[tokio::test]
async fn a_rejected_file_is_reported_without_its_secrets() {
    let gateway = Gateway::start().await;
    // A typo'd key holding a URL with a password: the error names the key and line, never
    // the line's text.
    gateway.rewrite_config(|text| {
        text.replace(
            "[storage]\n",
            "[storage]\ndatabse_url = \"postgres://app:SuperSecret-Pw1@db:5432/app\"\n",
        )
    });
    gateway.wait_for_reloads("error", 1).await;
    let logs = gateway.logs();
    assert!(logs.contains("databse_url"), "{logs}");
    assert!(
        !logs.contains("SuperSecret-Pw1"),
        "the password reached the log:\n{logs}"
    );

    let output = run_check(&gateway.config_text());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("databse_url") && stderr.contains("line "),
        "{stderr}"
    );
    assert!(!stderr.contains("SuperSecret-Pw1"), "{stderr}");
}

#[tokio::test]
async fn a_reload_whose_upstream_names_do_not_resolve_is_rejected() {
    let gateway = Gateway::start().await;
    let before = gateway.config_text();
    gateway.rewrite_config(|text| {
        text + "\n[[route]]\nprefix = \"/elsewhere/\"\nupstreams = [\"no-such-host.invalid:80\"]\nauth = \"public\"\n"
    });
    gateway.wait_for_reloads("error", 1).await;
    let logs = gateway.logs();
    assert!(
        logs.contains("/elsewhere/"),
        "the rejection names the route:\n{logs}"
    );
    // Nothing of that file was applied; the rest keeps serving.
    assert_eq!(gateway.get("/elsewhere/x", None).await.status(), 401);
    assert_eq!(gateway.get("/public/x", None).await.status(), 200);
    gateway.rewrite_config(|_| before.clone());
}

#[tokio::test]
async fn branding_reloads_keep_the_cookie_settings_in_force() {
    let gateway = Gateway::start().await;
    // secure_cookie is read at start-up only; a later branding change must not pick up the
    // file's new value (the CSRF cookie would no longer match the CSRF check).
    gateway.rewrite_config(|text| text.replace("secure_cookie = false", "secure_cookie = true"));
    gateway.wait_for_reloads("ok", 1).await;
    gateway.rewrite_config(|text| text + "\n[branding]\nproduct_name = \"Second Portal\"\n");
    gateway.wait_for_reloads("ok", 2).await;
    let response = gateway.get("/auth/login", None).await;
    let cookies: Vec<String> = set_cookies(&response)
        .iter()
        .map(|cookie| cookie.name.clone())
        .collect();
    let page = response.text().await.unwrap();
    assert!(page.contains("Second Portal"), "{page}");
    assert!(
        !cookies.iter().any(|name| name.starts_with("__Host-")),
        "the page set a Secure-only cookie on a plain-http gateway: {cookies:?}"
    );
    // And signing in through the form still works.
    let user = gateway.signed_in_user().await;
    assert_eq!(gateway.get("/x", Some(&user.token)).await.status(), 200);
}
