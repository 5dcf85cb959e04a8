//! Operator control (contract §7, §9): the admin commands against a running gateway, per-route
//! allow lists, roles (`X-User-Roles`, the assertion's `roles`), on both backend pairs.
//!
//! The commands are the real binary run as an operator runs it (`authgate user … --config
//! FILE` in the gateway's directory), against the stores the running gateway uses: Redis and
//! Postgres directly on the production pair, the SQLite file and the gateway's control socket
//! on the embedded pair. "At once" is checked as the very next request after the command
//! exits, with no wait in between.

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::db::Bind;
use common::pair::{require_backend, Backend};
use common::*;
use serde_json::Value;

/// Runs `authgate ARGS --config <the gateway's config>` in the gateway's directory.
fn authgate(gateway: &Gateway, args: &[&str]) -> Output {
    authgate_with_stdin(gateway, args, None)
}

fn authgate_with_stdin(gateway: &Gateway, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write as _;
    let mut command = gateway_command();
    command
        .args(args)
        .arg("--config")
        .arg(&gateway.config_path)
        .current_dir(gateway.dir())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run authgate");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait for authgate")
}

/// Runs a command that must succeed; its stdout.
fn ok(gateway: &Gateway, args: &[&str]) -> String {
    let output = authgate(gateway, args);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "authgate {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `authgate user set-role|remove-role --email EMAIL --role ROLE`, which must succeed.
fn role_change(gateway: &Gateway, verb: &str, email: &str, role: &str) -> String {
    ok(gateway, &["user", verb, "--email", email, "--role", role])
}

/// Runs a command that must fail; its stderr.
fn fails(gateway: &Gateway, args: &[&str]) -> String {
    let output = authgate(gateway, args);
    assert!(
        !output.status.success(),
        "authgate {args:?} should have failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The audit events of this kind, newest last.
async fn admin_events(gateway: &Gateway, kind: &str) -> Vec<Value> {
    gateway
        .query(
            "SELECT detail FROM auth_events WHERE kind = $1 ORDER BY id",
            &[Bind::Text(Some(kind.to_string()))],
        )
        .await
        .iter()
        .map(|row| row.json("detail"))
        .collect()
}

async fn status_of(gateway: &Gateway, path: &str, token: &str) -> u16 {
    gateway.get(path, Some(token)).await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_list_and_revoke_act_on_the_running_gateway_at_once() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let second = gateway.login(&user.email, &user.password).await;
    let other = gateway.signed_in_user().await;

    let listed = json_of(&ok(
        &gateway,
        &["sessions", "list", "--email", &user.email, "--json"],
    ));
    let listed = listed.as_array().expect("an array of sessions");
    assert_eq!(listed.len(), 2, "{listed:?}");
    let mine: Value = gateway
        .get("/auth/user/sessions", Some(&user.token))
        .await
        .json()
        .await
        .unwrap();
    let mut api_ids: Vec<&str> = mine["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    let mut cli_ids: Vec<&str> = listed.iter().map(|s| s["id"].as_str().unwrap()).collect();
    api_ids.sort();
    cli_ids.sort();
    assert_eq!(cli_ids, api_ids);
    for session in listed {
        for field in ["device", "ip", "created_at", "last_activity", "expires_at"] {
            assert!(!session[field].is_null(), "{field} in {session}");
        }
    }
    // The table names the sessions too; the email's case does not matter.
    let table = ok(
        &gateway,
        &["sessions", "list", "--email", &user.email.to_uppercase()],
    );
    for id in &cli_ids {
        assert!(table.contains(id), "{table}");
    }

    let stdout = ok(&gateway, &["sessions", "revoke", "--email", &user.email]);
    assert!(stdout.contains("2 session(s)"), "{stdout}");
    // The very next request on either session is refused; the other user is untouched.
    assert_eq!(status_of(&gateway, "/x", &user.token).await, 401);
    assert_eq!(status_of(&gateway, "/x", &second).await, 401);
    assert_eq!(status_of(&gateway, "/x", &other.token).await, 200);
    let listed = json_of(&ok(
        &gateway,
        &["sessions", "list", "--email", &user.email, "--json"],
    ));
    assert_eq!(listed, Value::Array(Vec::new()));

    // Recorded and audited, naming the operator action.
    let events = admin_events(&gateway, "admin_sessions_revoke").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["email"], user.email.as_str());
    assert_eq!(events[0]["sessions_ended"], 2);
    assert!(events[0]["operator"]
        .as_str()
        .is_some_and(|o| !o.is_empty()));
    assert_eq!(admin_events(&gateway, "admin_sessions_list").await.len(), 3);
    eventually(
        Duration::from_secs(10),
        "revoked session records",
        || async {
            let ended = gateway
                .count(
                    "SELECT count(*) FROM sessions WHERE user_id = $1 AND status = 'revoked' \
                 AND end_reason = 'revoked_by_admin'",
                    &[db::uuid_bind(&user.id)],
                )
                .await;
            (ended == 2).then_some(())
        },
    )
    .await;

    // An unknown email is an error that says so, and changes nothing.
    let stderr = fails(
        &gateway,
        &["sessions", "revoke", "--email", "nobody@example.org"],
    );
    assert!(
        stderr.contains("no user with the email nobody@example.org"),
        "{stderr}"
    );
    assert_eq!(status_of(&gateway, "/x", &other.token).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_ends_every_session_and_refuses_sign_in_until_enabled() {
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let stdout = ok(&gateway, &["user", "disable", "--email", &user.email]);
    assert!(stdout.contains("disabled; 1 session(s) ended"), "{stdout}");
    assert_eq!(status_of(&gateway, "/x", &user.token).await, 401);

    let login = gateway
        .post_json(
            "/auth/login",
            &serde_json::json!({"email": user.email, "password": user.password}),
            None,
        )
        .await;
    assert_json_error(login, 403, "account_disabled").await;

    let users = json_of(&ok(&gateway, &["user", "list", "--json"]));
    let listed = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == user.email.as_str())
        .cloned()
        .expect("the user is listed");
    assert_eq!(listed["is_active"], false);
    assert_eq!(listed["id"], user.id.as_str());
    assert!(listed.get("password_hash").is_none());
    let table = ok(&gateway, &["user", "list"]);
    let line = table.lines().find(|l| l.contains(&user.email)).unwrap();
    assert!(line.contains("disabled"), "{table}");

    ok(&gateway, &["user", "enable", "--email", &user.email]);
    let token = gateway.login(&user.email, &user.password).await;
    assert_eq!(status_of(&gateway, "/x", &token).await, 200);

    let disabled = admin_events(&gateway, "admin_user_disable").await;
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0]["sessions_ended"], 1);
    assert_eq!(admin_events(&gateway, "admin_user_enable").await.len(), 1);
    assert_eq!(admin_events(&gateway, "admin_user_list").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_add_takes_a_password_from_stdin_or_prints_a_generated_one_once() {
    let gateway = Gateway::start().await;
    let email = unique_email();
    let password = strong_password();
    let output = authgate_with_stdin(
        &gateway,
        &[
            "user",
            "add",
            "--email",
            &email.to_uppercase(),
            "--password-stdin",
        ],
        Some(&format!("{password}\n")),
    );
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !stdout.contains(&password),
        "the password is never printed: {stdout}"
    );
    let token = gateway.login(&email, &password).await;
    assert_eq!(status_of(&gateway, "/x", &token).await, 200);

    let generated_for = unique_email();
    let stdout = ok(&gateway, &["user", "add", "--email", &generated_for]);
    let generated = stdout
        .lines()
        .find_map(|line| line.strip_prefix("password: "))
        .unwrap_or_else(|| panic!("no password printed: {stdout}"))
        .trim()
        .to_string();
    assert!(generated.len() >= 16, "{generated}");
    let token = gateway.login(&generated_for, &generated).await;
    assert_eq!(status_of(&gateway, "/x", &token).await, 200);
    // Only its hash is stored.
    let dump = format!("{:?}", gateway.database_dump().await);
    assert!(!dump.contains(&generated) && !dump.contains(&password));

    // Refusals name the problem and change nothing.
    let stderr = fails(&gateway, &["user", "add", "--email", &email]);
    assert!(stderr.contains("exists already"), "{stderr}");
    let stderr = fails(&gateway, &["user", "add", "--email", "not-an-email"]);
    assert!(stderr.contains("--email"), "{stderr}");
    let output = authgate_with_stdin(
        &gateway,
        &[
            "user",
            "add",
            "--email",
            &unique_email(),
            "--password-stdin",
        ],
        Some("short\n"),
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("password"));
    let users = json_of(&ok(&gateway, &["user", "list", "--json"]));
    assert_eq!(users.as_array().unwrap().len(), 2, "{users}");

    let added = admin_events(&gateway, "admin_user_add").await;
    assert_eq!(added.len(), 2, "{added:?}");
    assert_eq!(added[0]["email"], email.as_str());
    assert_eq!(added[0]["password"], "stdin");
    assert_eq!(added[1]["password"], "generated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_lists_serve_listed_emails_domains_and_roles_and_role_changes_apply_at_once() {
    let partner = format!("bob-{}@partner.org", random_hex(4));
    let gateway = Gateway::start_with(
        GatewayOptions::new()
            .session_setting("inject_user_roles = true")
            .routes(vec![
                RouteSpec::required("/admin/", Upstream::Echo).with("allow = [\"role:Admin\"]"),
                RouteSpec::required("/team/", Upstream::Echo)
                    .with(&format!("allow = [\"*@EXAMPLE.com\", \" {partner} \"]")),
                RouteSpec::required("/", Upstream::Echo),
            ]),
    )
    .await;
    let staff = gateway.signed_in_user().await; // @example.com
    gateway.register(&partner, &staff.password).await;
    let bob = gateway.login(&partner, &staff.password).await;
    let outsider_email = format!("eve-{}@other.org", random_hex(4));
    gateway.register(&outsider_email, &staff.password).await;
    let eve = gateway.login(&outsider_email, &staff.password).await;

    assert_eq!(status_of(&gateway, "/team/x", &staff.token).await, 200);
    assert_eq!(status_of(&gateway, "/team/x", &bob).await, 200);
    assert_eq!(status_of(&gateway, "/x", &eve).await, 200);
    let seen = gateway.echo.request_count();
    assert_json_error(
        gateway.get("/team/x", Some(&eve)).await,
        403,
        "access_denied",
    )
    .await;
    assert_json_error(
        gateway.get("/admin/", Some(&staff.token)).await,
        403,
        "access_denied",
    )
    .await;
    // A browser gets a page, not JSON; the session itself stays valid.
    let page = gateway
        .get_with("/admin/settings", Some(&bob), &[("Accept", "text/html")])
        .await;
    assert_eq!(page.status(), 403);
    assert!(page
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/html")));
    let body = page.text().await.unwrap();
    assert!(
        body.contains("Access denied") && body.contains(&partner),
        "{body}"
    );
    assert_eq!(
        gateway.echo.request_count(),
        seen,
        "the upstream saw a refused request"
    );
    assert_eq!(status_of(&gateway, "/x", &bob).await, 200);
    // Other spellings of a listed path are matched by the `/` route, but an upstream may read
    // them as the listed one (case-insensitively, without ;parameters, decoding twice): they
    // are refused, never forwarded without the allow list's check.
    for spelling in [
        "/ADMIN/x",
        "/Admin/x",
        "/admin;x/x",
        "/%2561dmin/x",
        "/TEAM/x",
        "/team;v=1/x",
    ] {
        let status = status_of(&gateway, spelling, &eve).await;
        assert!(status == 400 || status == 403, "{spelling}: {status}");
    }
    assert_eq!(
        gateway.echo.request_count(),
        seen + 1,
        "only /x reached the upstream"
    );

    // A role given is honoured on the very next request of the existing session, and taken
    // away the same way; upstreams see it in X-User-Roles, and nobody can send their own.
    let stdout = role_change(&gateway, "set-role", &outsider_email, "admin");
    assert!(stdout.contains("1 live session(s) updated"), "{stdout}");
    role_change(&gateway, "set-role", &outsider_email, "ops");
    let response = gateway
        .get_with(
            "/admin/x",
            Some(&eve),
            &[("X-User-Roles", "root"), ("x_user_roles", "root")],
        )
        .await;
    assert_eq!(response.status(), 200);
    let echoed = EchoedRequest::from_json(&response.json().await.unwrap());
    assert_eq!(echoed.header("x-user-roles"), Some("admin,ops"));
    assert_eq!(echoed.header_count("x-user-roles"), 1);
    assert_eq!(echoed.header_count("x_user_roles"), 0);
    let users = json_of(&ok(&gateway, &["user", "list", "--json"]));
    let eve_listed = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == outsider_email.as_str())
        .unwrap()
        .clone();
    assert_eq!(eve_listed["roles"], serde_json::json!(["admin", "ops"]));

    role_change(&gateway, "remove-role", &outsider_email, "ADMIN");
    assert_json_error(
        gateway.get("/admin/x", Some(&eve)).await,
        403,
        "access_denied",
    )
    .await;
    let response = gateway.get("/x", Some(&eve)).await;
    let echoed = EchoedRequest::from_json(&response.json().await.unwrap());
    assert_eq!(echoed.header("x-user-roles"), Some("ops"));
    // A new sign-in reads the roles from the database.
    role_change(&gateway, "set-role", &partner, "admin");
    let fresh = gateway.login(&partner, &staff.password).await;
    assert_eq!(status_of(&gateway, "/admin/x", &fresh).await, 200);
    // Without a role given, a user's X-User-Roles is empty (never absent-then-forged).
    let response = gateway.get("/x", Some(&staff.token)).await;
    let echoed = EchoedRequest::from_json(&response.json().await.unwrap());
    assert_eq!(echoed.header("x-user-roles"), Some(""));

    let stderr = fails(
        &gateway,
        &["user", "set-role", "--email", &partner, "--role", "a,b"],
    );
    assert!(stderr.contains("--role"), "{stderr}");
    let set = admin_events(&gateway, "admin_user_set_role").await;
    assert_eq!(set.len(), 3);
    assert_eq!(set[0]["role"], "admin");
    let removed = admin_events(&gateway, "admin_user_remove_role").await;
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["roles"], serde_json::json!(["ops"]));
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("decision=\"forbidden\""),
        "no forbidden decision counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_assertion_carries_the_roles_and_follows_a_change() {
    let gateway = Gateway::start_with_edited(GatewayOptions::new(), |text| {
        format!("{text}\n[assertion]\nenabled = true\n")
    })
    .await;
    let user = gateway.signed_in_user().await;
    let roles = |response: Value| -> Value {
        let echoed = EchoedRequest::from_json(&response);
        let token = echoed.header("x-authgate-assertion").expect("an assertion");
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        claims["roles"].clone()
    };
    let response = gateway
        .get("/x", Some(&user.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(roles(response), serde_json::json!([]));
    role_change(&gateway, "set-role", &user.email, "auditor");
    // Not a token kept from before the change.
    let response = gateway
        .get("/x", Some(&user.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(roles(response), serde_json::json!(["auditor"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_by_command_is_honoured_by_every_instance_at_once() {
    if !require_backend(Backend::Production, "several instances share one Redis") {
        return;
    }
    let first = Gateway::start().await;
    let second = Gateway::start_with(GatewayOptions::new().sharing_stores_with(&first)).await;
    let user = first.signed_in_user().await;
    // Both instances have the session in their local caches.
    for _ in 0..3 {
        assert_eq!(status_of(&first, "/x", &user.token).await, 200);
        assert_eq!(status_of(&second, "/x", &user.token).await, 200);
    }
    role_change(&first, "set-role", &user.email, "ops");
    ok(&second, &["sessions", "revoke", "--email", &user.email]);
    assert_eq!(status_of(&second, "/x", &user.token).await, 401);
    assert_eq!(status_of(&first, "/x", &user.token).await, 401);

    let token = first.login(&user.email, &user.password).await;
    assert_eq!(status_of(&second, "/x", &token).await, 200);
    ok(&first, &["user", "disable", "--email", &user.email]);
    assert_eq!(status_of(&second, "/x", &token).await, 401);
    assert_eq!(status_of(&first, "/x", &token).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_commands_work_without_a_running_gateway_and_say_when_one_is_unreachable() {
    if !require_backend(
        Backend::Embedded,
        "the control socket is the embedded pair's",
    ) {
        return;
    }
    let mut stopped = Gateway::start().await;
    let user = stopped.signed_in_user().await;
    stopped.signal("TERM");
    assert!(stopped
        .wait_for_exit(Duration::from_secs(15))
        .await
        .is_some());
    // No gateway: the database changes, and there are no live sessions to end.
    let stdout = ok(&stopped, &["user", "disable", "--email", &user.email]);
    assert!(stdout.contains("0 session(s) ended"), "{stdout}");
    let users = json_of(&ok(&stopped, &["user", "list", "--json"]));
    assert_eq!(users[0]["is_active"], false, "{users}");

    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let token = user.token.clone();
    // The socket is the gateway's OS user's only.
    let socket = gateway.sqlite_path().unwrap().with_extension("db.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{socket:?}");
    // A gateway holds the file but its socket is gone: the command refuses rather than
    // leave live sessions it cannot reach.
    std::fs::remove_file(&socket).unwrap();
    let stderr = fails(&gateway, &["sessions", "revoke", "--email", &user.email]);
    assert!(stderr.contains("control socket"), "{stderr}");
    assert_eq!(status_of(&gateway, "/x", &token).await, 200);
}

#[test]
fn allow_lists_are_checked_with_the_key_and_line() {
    let base = GatewayOptions::new().render(&RenderTarget::for_check());
    for (route, needle) in [
        ("allow = []", "route[0].allow"),
        ("allow = [\"role:a b\"]", "route[0].allow[0]"),
        (
            "allow = [\"ok@example.com\", \"*.example.com\"]",
            "route[0].allow[1]",
        ),
        ("allow = [\"@example.com\"]", "route[0].allow[0]"),
        (
            "auth = \"public\"\nallow = [\"role:admin\"]",
            "route[0].allow",
        ),
    ] {
        let text = format!(
            "{base}\n[[route]]\nprefix = \"/guarded/\"\nupstreams = [\"127.0.0.1:1\"]\n{route}\n"
        );
        let text = move_last_route_first(&text);
        let output = run_check(&text);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{route} was accepted");
        assert!(stderr.contains(needle), "{route}: {stderr}");
        assert!(stderr.contains("line"), "{route}: {stderr}");
    }
}

/// Puts the last `[[route]]` block first, so it is `route[0]`.
fn move_last_route_first(text: &str) -> String {
    let at = text.rfind("[[route]]").unwrap();
    let (head, last) = text.split_at(at);
    let first = head.find("[[route]]").unwrap_or(head.len());
    format!("{}{}\n{}", &head[..first], last, &head[first..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_lists_reload_and_forward_auth_answers_the_roles() {
    let gateway = Gateway::start_with(
        GatewayOptions::new()
            .session_setting("inject_user_roles = true")
            .routes(vec![
                RouteSpec::required("/ops/", Upstream::Echo).with("allow = [\"role:ops\"]"),
                RouteSpec::required("/", Upstream::Echo),
            ]),
    )
    .await;
    let user = gateway.signed_in_user().await;
    assert_eq!(status_of(&gateway, "/ops/x", &user.token).await, 403);
    role_change(&gateway, "set-role", &user.email, "ops");
    // Forward-auth hands the proxy the roles to copy.
    let verify = gateway.get("/auth/verify", Some(&user.token)).await;
    assert_eq!(verify.status(), 200);
    assert_eq!(header(&verify, "x-user-roles"), Some("ops"));
    // The list changes with the file: now nobody has the role it names.
    gateway.rewrite_config(|text| text.replace("role:ops", "role:auditors"));
    gateway.wait_for_reloads("ok", 1).await;
    assert_eq!(status_of(&gateway, "/ops/x", &user.token).await, 403);
    gateway.rewrite_config(|text| text.replace("allow = [\"role:auditors\"]\n", ""));
    gateway.wait_for_reloads("ok", 2).await;
    assert_eq!(status_of(&gateway, "/ops/x", &user.token).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_password_is_as_long_as_the_policy_asks() {
    let gateway = Gateway::start_with_edited(GatewayOptions::new(), |text| {
        text.replace("[password]\n", "[password]\nmin_length = 32\n")
    })
    .await;
    let email = unique_email();
    let stdout = ok(&gateway, &["user", "add", "--email", &email]);
    let generated = stdout
        .lines()
        .find_map(|line| line.strip_prefix("password: "))
        .unwrap()
        .trim()
        .to_string();
    assert!(generated.len() >= 32, "{generated}");
    let token = gateway.login(&email, &generated).await;
    assert_eq!(status_of(&gateway, "/x", &token).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_answers_junk_with_an_error_and_keeps_serving() {
    if !require_backend(
        Backend::Embedded,
        "the control socket is the embedded pair's",
    ) {
        return;
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gateway = Gateway::start().await;
    let user = gateway.signed_in_user().await;
    let socket = gateway.sqlite_path().unwrap().with_extension("db.sock");
    for junk in [
        b"not json\n".to_vec(),
        b"{\"op\":\"set_roles\",\"user_id\":\"00000000-0000-0000-0000-000000000000\",\"roles\":[\"a b\"]}\n".to_vec(),
        vec![b'x'; 200_000],
    ] {
        let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let _ = stream.write_all(&junk).await;
        let mut reply = String::new();
        let read =
            tokio::time::timeout(Duration::from_secs(15), stream.read_to_string(&mut reply))
                .await
                .expect("an answer, not a hang");
        match read {
            Ok(_) => assert!(reply.contains("\"error\""), "{reply}"),
            // Past its 64 KiB the gateway answers and closes while the rest is still being
            // sent: the peer sees the close as a reset.
            Err(error) if junk.len() > 65_536 => {
                assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}")
            }
            Err(error) => panic!("{error}"),
        }
    }
    // A connection that sends nothing ties up nothing but itself.
    let _idle = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let stdout = ok(&gateway, &["sessions", "revoke", "--email", &user.email]);
    assert!(stdout.contains("1 session(s)"), "{stdout}");
    assert_eq!(status_of(&gateway, "/x", &user.token).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_in_memory_sessions_finds_the_gateway_beside_its_config_file() {
    if !require_backend(Backend::Production, "Postgres with in-process sessions") {
        return;
    }
    let gateway = Gateway::start_with(GatewayOptions::new().redis_url("")).await;
    let user = gateway.signed_in_user().await;
    let socket = gateway.config_path.parent().unwrap().join("authgate.sock");
    assert!(socket.exists(), "{socket:?}");
    // From another working directory, with the same config file.
    let elsewhere = TempDir::new();
    let output = gateway_command()
        .args(["user", "disable", "--email", &user.email, "--config"])
        .arg(&gateway.config_path)
        .current_dir(&elsewhere.path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(status_of(&gateway, "/x", &user.token).await, 401);

    // No gateway answering: the commands on live sessions refuse before changing anything.
    std::fs::remove_file(&socket).unwrap();
    ok(&gateway, &["user", "enable", "--email", &user.email]);
    let token = gateway.login(&user.email, &user.password).await;
    let stderr = fails(&gateway, &["sessions", "revoke", "--email", &user.email]);
    assert!(stderr.contains("no gateway answers"), "{stderr}");
    let stderr = fails(&gateway, &["user", "disable", "--email", &user.email]);
    assert!(stderr.contains("no gateway answers"), "{stderr}");
    assert_eq!(status_of(&gateway, "/x", &token).await, 200);
    let users = json_of(&ok(&gateway, &["user", "list", "--json"]));
    assert_eq!(users[0]["is_active"], true, "nothing changed: {users}");
}
