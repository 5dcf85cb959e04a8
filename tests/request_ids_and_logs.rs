//! Following one request (contract §8 logs): every response carries an `X-Request-Id`, the upstream
//! receives the same one, a client may not choose it unless it is a trusted proxy, and the
//! request's log line names it. Logs written to a file carry no terminal colour codes, and
//! pingora's own long messages are summarised.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// The response's `X-Request-Id`, checked to be a plain id (what the gateway generates is a
/// v4 UUID).
fn request_id(response: &reqwest::Response) -> String {
    let values: Vec<&str> = response
        .headers()
        .get_all("x-request-id")
        .iter()
        .map(|value| value.to_str().expect("ascii x-request-id"))
        .collect();
    assert_eq!(
        values.len(),
        1,
        "want exactly one X-Request-Id on a {} response, got {values:?}",
        response.status()
    );
    values[0].to_string()
}

fn is_uuid_v4(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && id.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
        && groups[2].starts_with('4')
}

/// Routes for these tests: a protected and a public route to the echo app, and a public
/// route to a port nobody listens on.
fn routes() -> Vec<RouteSpec> {
    vec![
        RouteSpec::required("/app/", Upstream::Echo),
        RouteSpec::public("/public/", Upstream::Echo),
        RouteSpec::public(
            "/down/",
            Upstream::Addr(format!("127.0.0.1:{}", free_port())),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_fresh_request_id_which_the_upstream_also_receives() {
    let gateway = GatewayOptions::new().routes(routes()).start().await;
    let user = gateway.signed_in_user().await;
    let mut seen = std::collections::BTreeSet::new();

    // Proxied, protected and public: the upstream got the id the client sees.
    for (path, token) in [
        ("/app/page", Some(user.token.as_str())),
        ("/public/a", None),
    ] {
        let response = gateway.get(path, token).await;
        assert_eq!(response.status(), 200, "{path}");
        let id = request_id(&response);
        assert!(is_uuid_v4(&id), "{path}: {id:?} is not a v4 UUID");
        let upstream = echoed(response).await;
        assert_eq!(upstream.header("x-request-id"), Some(id.as_str()), "{path}");
        assert_eq!(upstream.header_count("x-request-id"), 1, "{path}");
        assert!(seen.insert(id), "an id was handed out twice");
    }

    // The gateway's own answers: /auth, 401, 404, 502.
    let me = gateway.get("/auth/user/me", Some(&user.token)).await;
    assert_eq!(me.status(), 200);
    let login = gateway
        .post_json(
            "/auth/login",
            &json!({"email": user.email, "password": "not-the-password"}),
            None,
        )
        .await;
    assert_eq!(login.status(), 401);
    let unauthenticated = gateway
        .get_with("/app/page", None, &[("Accept", "application/json")])
        .await;
    assert_eq!(unauthenticated.status(), 401);
    let no_route = gateway.get("/nowhere", None).await;
    assert_eq!(no_route.status(), 404);
    let bad_gateway = gateway.get("/down/x", None).await;
    assert_eq!(bad_gateway.status(), 502);
    for response in [me, login, unauthenticated, no_route, bad_gateway] {
        let id = request_id(&response);
        assert!(is_uuid_v4(&id), "{}: {id:?}", response.status());
        assert!(seen.insert(id), "an id was handed out twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_request_gets_a_request_id_too() {
    let gateway = GatewayOptions::new().rate_limit(1, 1).start().await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = gateway.get("/public/x", None).await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(is_uuid_v4(&request_id(&response)));
            return;
        }
    }
    panic!("never rate limited: {statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_from_an_untrusted_client_is_replaced_everywhere() {
    let gateway = GatewayOptions::new().routes(routes()).start().await;
    let chosen = "client-chosen-id-123";
    let response = gateway
        .get_with("/public/a", None, &[("X-Request-Id", chosen)])
        .await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    assert_ne!(id, chosen);
    assert!(is_uuid_v4(&id));
    let upstream = echoed(response).await;
    assert_eq!(upstream.header("x-request-id"), Some(id.as_str()));
    assert_eq!(upstream.header_count("x-request-id"), 1);

    // On the gateway's own answers as well.
    let refused = gateway
        .get_with(
            "/app/x",
            None,
            &[("X-Request-Id", chosen), ("Accept", "application/json")],
        )
        .await;
    assert_eq!(refused.status(), 401);
    assert_ne!(request_id(&refused), chosen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_request_id_is_kept_unless_it_is_odd() {
    let gateway = GatewayOptions::new()
        .routes(routes())
        .trusted_proxies(&["127.0.0.1/32"])
        .start()
        .await;
    let from_proxy = "lb-7f3a:42.b_c";
    let response = gateway
        .get_with("/public/a", None, &[("X-Request-Id", from_proxy)])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(request_id(&response), from_proxy);
    let upstream = echoed(response).await;
    assert_eq!(upstream.header("x-request-id"), Some(from_proxy));
    assert_eq!(upstream.header_count("x-request-id"), 1);

    let refused = gateway
        .get_with(
            "/app/x",
            None,
            &[("X-Request-Id", from_proxy), ("Accept", "application/json")],
        )
        .await;
    assert_eq!(refused.status(), 401);
    assert_eq!(request_id(&refused), from_proxy);

    // Too long, or with characters that do not belong in an id: replaced.
    let too_long = "a".repeat(129);
    for odd in [
        too_long.as_str(),
        "has spaces in it",
        "semi;colon",
        "a\"quote",
    ] {
        let response = gateway
            .get_with("/public/a", None, &[("X-Request-Id", odd)])
            .await;
        assert_eq!(response.status(), 200);
        let id = request_id(&response);
        assert!(is_uuid_v4(&id), "{odd:?} gave {id:?}");
        let upstream = echoed(response).await;
        assert_eq!(upstream.header("x-request-id"), Some(id.as_str()));
    }
    // The longest accepted length is kept.
    let longest = "b".repeat(128);
    let response = gateway
        .get_with("/public/a", None, &[("X-Request-Id", longest.as_str())])
        .await;
    assert_eq!(request_id(&response), longest);
}

/// The JSON access-log line of the request with this id.
async fn access_line(gateway: &Gateway, id: &str) -> Value {
    eventually(
        Duration::from_secs(5),
        "the request's access-log line",
        || async {
            json_log_lines(&gateway.logs())
                .into_iter()
                .find(|line| line["target"] == "authgate::access" && line["request_id"] == id)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_lines_carry_the_request_id_and_a_rounded_latency() {
    let gateway = GatewayOptions::new().routes(routes()).start().await;
    let user = gateway.signed_in_user().await;
    for (path, token, status) in [
        ("/public/a", None, 200),
        ("/app/page", Some(user.token.as_str()), 200),
        ("/auth/user/me", Some(user.token.as_str()), 200),
        ("/nowhere", None, 404),
    ] {
        let response = gateway.get(path, token).await;
        assert_eq!(response.status(), status, "{path}");
        let id = request_id(&response);
        let line = access_line(&gateway, &id).await;
        assert_eq!(line["path"], path, "{line}");
        assert_eq!(line["status"], status, "{line}");
        let latency = line["latency_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("latency_ms is not a number: {line}"));
        assert!(latency >= 0.0, "{line}");
        assert!(
            ((latency * 10.0).round() - latency * 10.0).abs() < 1e-6,
            "latency_ms {latency} is not rounded to 0.1 ms: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_written_inside_a_request_name_its_id() {
    // With the session store gone, the session check logs a warning inside the request.
    require_backend(
        Backend::Production,
        "needs a Redis that can be cut off (the embedded pair has no store to lose)",
    );
    let forwarder = TcpForwarder::to_redis().await;
    let gateway = GatewayOptions::new()
        .routes(routes())
        .redis_url(&forwarder.redis_url())
        .start()
        .await;
    let user = gateway.signed_in_user().await;
    forwarder.stop();
    let response = gateway
        .get_with(
            "/app/page",
            Some(&user.token),
            &[("Accept", "application/json")],
        )
        .await;
    assert_eq!(response.status(), 503);
    let id = request_id(&response);
    access_line(&gateway, &id).await;
    let inside: Vec<Value> = json_log_lines(&gateway.logs())
        .into_iter()
        .filter(|line| line["target"] != "authgate::access")
        .filter(|line| line["span"]["request_id"] == id.as_str())
        .collect();
    assert!(
        !inside.is_empty(),
        "no log line besides the access line names request {id}:\n{}",
        gateway.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_written_to_a_file_have_no_colour_codes_and_name_the_request_id() {
    let gateway = Gateway::start_with_edited(GatewayOptions::new().routes(routes()), |config| {
        assert!(config.contains("format = \"json\""));
        config.replace("format = \"json\"", "format = \"text\"")
    })
    .await;
    let response = gateway.get("/public/text-log", None).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let line = eventually(
        Duration::from_secs(5),
        "the access line in the text log",
        || async {
            gateway
                .logs()
                .lines()
                .find(|line| line.contains("/public/text-log"))
                .map(str::to_string)
        },
    )
    .await;
    assert!(line.contains(&format!("request_id={id}")), "{line}");
    assert!(line.contains("latency_ms="), "{line}");
    let logs = gateway.logs();
    assert!(
        !logs.contains("\x1b["),
        "ANSI escape codes in a log written to a file:\n{logs}"
    );
    assert!(
        json_log_lines(&logs).is_empty(),
        "format = \"text\" wrote JSON lines"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingoras_long_messages_are_summarised() {
    // A failed upstream connection makes pingora log the whole peer, options and all (well
    // over a kilobyte); the gateway keeps the first 200 characters.
    let gateway = GatewayOptions::new().routes(routes()).start().await;
    assert_eq!(gateway.get("/down/x", None).await.status(), 502);
    let pingora_lines = eventually(
        Duration::from_secs(10),
        "pingora's log line about the failed upstream",
        || async {
            let lines: Vec<Value> = json_log_lines(&gateway.logs())
                .into_iter()
                .filter(|line| {
                    line["target"]
                        .as_str()
                        .is_some_and(|target| target.starts_with("pingora"))
                })
                .collect();
            lines
                .iter()
                .any(|line| {
                    line["message"]
                        .as_str()
                        .is_some_and(|message| message.contains("Fail to"))
                })
                .then_some(lines)
        },
    )
    .await;
    for line in &pingora_lines {
        // A cut message keeps the request id it ended with.
        let message = line["message"].as_str().unwrap_or_default();
        let message = message
            .rsplit_once(" request_id=")
            .map_or(message, |(cut, _)| cut);
        assert!(
            message.chars().count() <= 240,
            "a pingora message of {} characters was logged whole: {message}",
            message.chars().count()
        );
        assert!(!message.contains('\n'), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingoras_failure_lines_name_the_request_id_and_never_the_query() {
    let gateway = GatewayOptions::new().routes(routes()).start().await;
    let response = gateway.get("/down/x?token=QuerySecret123", None).await;
    assert_eq!(response.status(), 502);
    let id = request_id(&response);
    let line = eventually(Duration::from_secs(5), "pingora's failure line", || {
        let logs = gateway.logs();
        let id = id.clone();
        async move {
            json_log_lines(&logs).into_iter().find(|line| {
                line["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("pingora"))
                    && line["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(&format!("request_id={id}")))
            })
        }
    })
    .await;
    assert!(
        !gateway.logs().contains("QuerySecret123"),
        "the query string reached the log: {line}"
    );
}
