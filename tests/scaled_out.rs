//! The scaled-out deployment (contract §8 mode 3), as `deploy/scaled-out/` ships it: three gateways
//! sharing Redis and Postgres behind HAProxy in `mode tcp`.
//!
//! The example's files are the test's templates: each gateway runs
//! `deploy/scaled-out/gateway.toml` and HAProxy runs `deploy/scaled-out/haproxy.cfg`, changed
//! only where one machine must stand in for several (addresses and ports, this test's stores,
//! bcrypt cost 4; for HAProxy the `bind` address, the `server` lines, and no
//! `chroot`/`user`/`group`). Through the balancer, a session made on one instance works on
//! every instance, an ended session is refused by all of them on the next request, a client
//! cannot choose its IP with X-Forwarded-For, and the balancer keeps serving when a gateway is
//! killed.
//!
//! Needs the production pair (the instances share the stores) and `haproxy` (on `PATH` or at
//! `/usr/sbin/haproxy`; Debian's package).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const EXAMPLE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/scaled-out");
const INSTANCES: usize = 3;

/// `deploy/scaled-out/<name>`.
fn example_file(name: &str) -> String {
    let path = Path::new(EXAMPLE_DIR).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `text` with `key = ...` set to `value` (a TOML literal) in every table named `table`
/// (`[table]` or `[[table]]`). Panics if the key is not there: a template that lost a key would
/// otherwise be tested with the wrong value.
fn set_toml_key(text: &str, table: &str, key: &str, value: &str) -> String {
    let mut current = String::new();
    let mut replaced = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let trimmed = line.trim();
            if trimmed.starts_with('[') {
                current = trimmed.trim_matches(|c| c == '[' || c == ']').to_string();
            } else if current == table
                && trimmed
                    .split_once('=')
                    .is_some_and(|(name, _)| name.trim() == key)
            {
                replaced += 1;
                return format!("{key} = {value}");
            }
            line.to_string()
        })
        .collect();
    assert!(
        replaced > 0,
        "deploy/scaled-out/gateway.toml has no {table}.{key}: the test cannot point it at this \
         run"
    );
    lines.join("\n") + "\n"
}

fn toml_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// The example's gateway.toml for one instance of this run: the harness's rendered config says
/// which ports, stores and echo upstream the harness chose for it.
fn instance_config(rendered: &str, balancer_origin: &str) -> String {
    let rendered: toml::Value = rendered.parse().expect("the harness's gateway.toml");
    let get = |table: &str, key: &str| -> String {
        rendered[table][key]
            .as_str()
            .unwrap_or_else(|| panic!("rendered config has no {table}.{key}"))
            .to_string()
    };
    let echo = rendered["route"][0]["upstreams"][0]
        .as_str()
        .expect("route[0].upstreams[0]")
        .to_string();
    let mut text = example_file("gateway.toml");
    for (table, key, value) in [
        ("server", "listen", toml_str(&get("server", "listen"))),
        (
            "server",
            "admin_listen",
            toml_str(&get("server", "admin_listen")),
        ),
        ("server", "public_origin", toml_str(balancer_origin)),
        (
            "storage",
            "database_url",
            toml_str(&get("storage", "database_url")),
        ),
        (
            "storage",
            "redis_url",
            toml_str(&get("storage", "redis_url")),
        ),
        (
            "storage",
            "redis_key_prefix",
            toml_str(&get("storage", "redis_key_prefix")),
        ),
        ("password", "bcrypt_cost", "4".to_string()),
        ("route", "upstreams", format!("[{}]", toml_str(&echo))),
    ] {
        text = set_toml_key(&text, table, key, &value);
    }
    text
}

/// HAProxy from Debian's package: on `PATH`, or where Debian puts it.
fn haproxy_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("haproxy"))
            .find(|candidate| candidate.is_file())
    });
    on_path
        .or_else(|| {
            let debian = PathBuf::from("/usr/sbin/haproxy");
            debian.is_file().then_some(debian)
        })
        .unwrap_or_else(|| {
            panic!(
                "haproxy is not installed (not on PATH, not at /usr/sbin/haproxy): \
                 `apt-get install -y haproxy` (.ci/run installs it when missing)"
            )
        })
}

/// The example's haproxy.cfg in front of `gateways`, listening on `listen`.
fn balancer_config(listen: u16, gateways: &[Gateway]) -> String {
    let template = example_file("haproxy.cfg");
    let mut out = String::new();
    let mut servers_written = false;
    let mut binds = 0;
    for line in template.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let word = trimmed.split_whitespace().next().unwrap_or("");
        match word {
            // The test runs HAProxy unprivileged, in the foreground, without a chroot.
            "chroot" | "user" | "group" => continue,
            "bind" => {
                binds += 1;
                out.push_str(&format!("{indent}bind 127.0.0.1:{listen}\n"));
            }
            "server" => {
                if !servers_written {
                    for (i, gateway) in gateways.iter().enumerate() {
                        out.push_str(&format!(
                            "{indent}server gw{} {} port {}\n",
                            i + 1,
                            gateway.listen,
                            gateway.admin.port()
                        ));
                    }
                    servers_written = true;
                }
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert!(
        binds == 1 && servers_written,
        "deploy/scaled-out/haproxy.cfg should have one `bind` line and `server` lines"
    );
    out
}

/// A running HAProxy, killed on Drop.
struct Balancer {
    child: Child,
    port: u16,
    log_path: PathBuf,
    _dir: TempDir,
}

impl Balancer {
    async fn start(port: u16, gateways: &[Gateway]) -> Balancer {
        let binary = haproxy_binary();
        let dir = TempDir::new();
        let config = dir.path.join("haproxy.cfg");
        std::fs::write(&config, balancer_config(port, gateways)).unwrap();
        let log_path = dir.path.join("haproxy.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(&binary)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .current_dir(&dir.path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut balancer = Balancer {
            child,
            port,
            log_path,
            _dir: dir,
        };
        balancer.wait_until_up().await;
        balancer
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Until HAProxy accepts connections. Its servers start UP and go DOWN only after failed
    /// checks, so a gateway already marked DOWN at this point is a broken set-up.
    async fn wait_until_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("haproxy exited at start-up ({status}):\n{}", self.logs());
            }
            let accepting = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok();
            // Servers start UP in HAProxy; one that failed its checks is logged "is DOWN".
            let down = self.logs().matches(" is DOWN").count();
            assert!(
                down == 0,
                "a gateway failed HAProxy's checks:\n{}",
                self.logs()
            );
            if accepting {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not come up on 127.0.0.1:{} with every gateway healthy:\n{}",
                self.port,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- haproxy log ----\n{}\n---- end ----", self.logs());
        }
    }
}

/// A client that opens a new connection for every request, so that HAProxy (which balances
/// connections, not requests) picks a gateway for each one.
fn fresh_connection_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// One request to `base` (the balancer or an instance), as a browser on the balancer's origin
/// would send it.
async fn send(
    client: &reqwest::Client,
    method: &str,
    url: String,
    origin: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = client
        .request(method.parse().unwrap(), url.as_str())
        .header("Origin", origin)
        .header("Accept", "application/json");
    if let Some(token) = token {
        request = request.header("Cookie", cookie_header(token));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"))
}

/// The deployment: three gateways on the example's config, HAProxy on the example's config.
struct Deployment {
    gateways: Vec<Gateway>,
    balancer: Balancer,
    client: reqwest::Client,
}

impl Deployment {
    async fn start() -> Deployment {
        let balancer_port = free_port();
        let origin = format!("http://127.0.0.1:{balancer_port}");
        let mut gateways: Vec<Gateway> = Vec::new();
        for _ in 0..INSTANCES {
            let options = match gateways.first() {
                Some(first) => GatewayOptions::new().sharing_stores_with(first),
                None => GatewayOptions::new(),
            };
            let gateway =
                Gateway::start_with_edited(options, |rendered| instance_config(&rendered, &origin))
                    .await;
            gateways.push(gateway);
        }
        let balancer = Balancer::start(balancer_port, &gateways).await;
        Deployment {
            gateways,
            balancer,
            client: fresh_connection_client(),
        }
    }

    fn origin(&self) -> String {
        self.balancer.origin()
    }

    async fn via_balancer(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> reqwest::Response {
        let url = format!("{}{path}", self.origin());
        send(
            &self.client,
            method,
            url,
            &self.origin(),
            token,
            headers,
            body,
        )
        .await
    }

    async fn via_instance(
        &self,
        instance: usize,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::Response {
        let url = self.gateways[instance].url(path);
        send(&self.client, method, url, &self.origin(), token, &[], None).await
    }

    /// Registers and signs in through the balancer: (user id, token, password).
    async fn signed_in_user(&self, headers: &[(&str, &str)]) -> (String, String, String) {
        let email = unique_email();
        let password = strong_password();
        let credentials = json!({"email": email, "password": password});
        let response = self
            .via_balancer(
                "POST",
                "/auth/register",
                None,
                &[],
                Some(credentials.clone()),
            )
            .await;
        assert_eq!(response.status(), 201, "register through the balancer");
        let user = json_body(response).await;
        let id = user["user"]["id"].as_str().expect("user.id").to_string();
        let token = self.login(&credentials, headers).await;
        (id, token, password)
    }

    async fn login(&self, credentials: &Value, headers: &[(&str, &str)]) -> String {
        let response = self
            .via_balancer(
                "POST",
                "/auth/login",
                None,
                headers,
                Some(credentials.clone()),
            )
            .await;
        let cookie = session_cookie(&response);
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 200, "login through the balancer: {body}");
        cookie.expect("a session cookie").value
    }

    /// Requests each gateway's echo upstream has received so far.
    fn served(&self) -> Vec<usize> {
        self.gateways
            .iter()
            .map(|gateway| gateway.echo.request_count())
            .collect()
    }

    /// The status of a protected request with `token` on every instance directly, then through
    /// the balancer once per instance.
    async fn statuses_everywhere(&self, token: &str) -> Vec<u16> {
        let mut statuses = Vec::new();
        for instance in 0..self.gateways.len() {
            let response = self
                .via_instance(instance, "GET", "/app", Some(token))
                .await;
            statuses.push(response.status().as_u16());
        }
        for _ in 0..self.gateways.len() {
            let response = self
                .via_balancer("GET", "/app", Some(token), &[], None)
                .await;
            statuses.push(response.status().as_u16());
        }
        statuses
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_a_session_works_on_every_instance_and_an_ended_one_on_none() {
    if !require_backend(
        Backend::Production,
        "the instances of a scaled-out deployment share Redis and Postgres",
    ) {
        return;
    }
    let deployment = Deployment::start().await;
    let (user_id, token, password) = deployment.signed_in_user(&[]).await;

    // Through the balancer: one new connection per request, round-robin over the instances.
    let before = deployment.served();
    for _ in 0..2 * INSTANCES {
        let response = deployment
            .via_balancer("GET", "/app/page", Some(&token), &[], None)
            .await;
        assert_eq!(
            echoed(response).await.header("x-user-id"),
            Some(user_id.as_str())
        );
    }
    let through_balancer: Vec<usize> = deployment
        .served()
        .iter()
        .zip(&before)
        .map(|(now, then)| now - then)
        .collect();
    assert!(
        through_balancer.iter().all(|&count| count > 0),
        "every instance should have served some of the balanced requests: {through_balancer:?}"
    );
    // And on each instance directly.
    for instance in 0..INSTANCES {
        let response = deployment
            .via_instance(instance, "GET", "/app/direct", Some(&token))
            .await;
        assert_eq!(
            echoed(response).await.header("x-user-id"),
            Some(user_id.as_str()),
            "instance {instance} should honour a session made through the balancer"
        );
    }

    // A session revoked through one instance (by id, from another session) is refused by all.
    let email = json_body(
        deployment
            .via_balancer("GET", "/auth/user/me", Some(&token), &[], None)
            .await,
    )
    .await["email"]
        .as_str()
        .expect("email")
        .to_string();
    let credentials = json!({"email": email, "password": password});
    let second = deployment.login(&credentials, &[]).await;
    let second_id = json_body(
        deployment
            .via_instance(2, "GET", "/auth/user/me", Some(&second))
            .await,
    )
    .await["session"]["id"]
        .as_str()
        .expect("session.id")
        .to_string();
    let revoke = deployment
        .via_instance(
            1,
            "DELETE",
            &format!("/auth/user/sessions/{second_id}"),
            Some(&token),
        )
        .await;
    assert_eq!(revoke.status(), 204, "revoke on instance 1");
    assert_eq!(
        deployment.statuses_everywhere(&second).await,
        vec![401u16; 2 * INSTANCES],
        "a session revoked on instance 1: refused by every instance and through the balancer"
    );

    // A logout through one instance ends the session everywhere.
    let logout = deployment
        .via_instance(0, "POST", "/auth/logout", Some(&token))
        .await;
    assert_eq!(logout.status(), 204, "logout on instance 0");
    assert_eq!(
        deployment.statuses_everywhere(&token).await,
        vec![401u16; 2 * INSTANCES],
        "a session logged out on instance 0: refused by every instance and through the balancer"
    );
}

/// What the README says of client IPs behind an L4 balancer: the gateway sees the balancer's
/// address, and an X-Forwarded-For sent by the client is not believed (the example trusts no
/// proxy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_in_tcp_mode_the_client_ip_is_the_balancer_and_cannot_be_spoofed() {
    if !require_backend(
        Backend::Production,
        "the instances of a scaled-out deployment share Redis and Postgres",
    ) {
        return;
    }
    let deployment = Deployment::start().await;
    let spoofed = [("X-Forwarded-For", "203.0.113.7")];
    let (_, token, _) = deployment.signed_in_user(&spoofed).await;
    let sessions = json_body(
        deployment
            .via_balancer("GET", "/auth/user/sessions", Some(&token), &spoofed, None)
            .await,
    )
    .await;
    let current = sessions["sessions"]
        .as_array()
        .and_then(|list| list.iter().find(|session| session["current"] == true))
        .unwrap_or_else(|| panic!("no current session in {sessions}"));
    assert_eq!(
        current["ip"], "127.0.0.1",
        "the session's IP should be the balancer's address (HAProxy connects from 127.0.0.1), \
         not the client's X-Forwarded-For: {current}"
    );
    let ips = json_body(
        deployment
            .via_balancer("GET", "/auth/user/ips", Some(&token), &[], None)
            .await,
    )
    .await;
    let addresses: Vec<&str> = ips["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .collect();
    assert_eq!(addresses, vec!["127.0.0.1"], "IP history: {ips}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_the_site_keeps_serving_when_a_gateway_is_killed() {
    if !require_backend(
        Backend::Production,
        "the instances of a scaled-out deployment share Redis and Postgres",
    ) {
        return;
    }
    let mut deployment = Deployment::start().await;
    let (user_id, token, _) = deployment.signed_in_user(&[]).await;

    let killed = INSTANCES - 1;
    deployment.gateways[killed].signal("KILL");
    assert!(
        deployment.gateways[killed]
            .wait_for_exit(Duration::from_secs(10))
            .await
            .is_some(),
        "the killed gateway is still running"
    );
    let before = deployment.served();

    // Straight after the kill, before any health check has noticed: a connection HAProxy sends
    // to the dead instance is refused and redispatched, so no request fails.
    for i in 0..4 * INSTANCES {
        let response = deployment
            .via_balancer("GET", &format!("/after-kill/{i}"), Some(&token), &[], None)
            .await;
        assert_eq!(
            echoed(response).await.header("x-user-id"),
            Some(user_id.as_str()),
            "request {i} after instance {killed} was killed"
        );
    }
    let after: Vec<usize> = deployment
        .served()
        .iter()
        .zip(&before)
        .map(|(now, then)| now - then)
        .collect();
    // HAProxy's tcplog ends each line with `.../<retries> <queues>`: "+1" marks a connection
    // redispatched to another gateway after a refused connect.
    let redispatched = deployment.balancer.logs().matches("/+1 ").count();
    println!(
        "scaled_out: after the kill, requests served by instance: {after:?}; connections \
         redispatched by haproxy: {redispatched}"
    );
    assert_eq!(
        after[killed], 0,
        "the killed instance served requests: {after:?}"
    );
    assert!(
        after[..killed].iter().all(|&count| count > 0),
        "the surviving instances should share the requests: {after:?}"
    );

    // New sign-ins keep working too (the session lands on a surviving instance).
    let (_, fresh, _) = deployment.signed_in_user(&[]).await;
    let response = deployment
        .via_balancer("GET", "/app", Some(&fresh), &[], None)
        .await;
    assert_eq!(response.status(), 200);
    // HAProxy's checks take the dead instance out.
    eventually(
        Duration::from_secs(10),
        "haproxy to log the killed gateway as DOWN",
        || async {
            deployment
                .balancer
                .logs()
                .contains(&format!("authgate/gw{} is DOWN", killed + 1))
                .then_some(())
        },
    )
    .await;
}

/// The files as shipped, not only as the tests above rewrite them: `authgate check` accepts the
/// gateway's config and `haproxy -c` the balancer's. (No store is opened, so on either pair.)
#[test]
fn the_example_files_are_valid_as_shipped() {
    let check = run_check(&example_file("gateway.toml"));
    assert!(
        check.status.success(),
        "authgate check rejects deploy/scaled-out/gateway.toml:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let haproxy = Command::new(haproxy_binary())
        .arg("-c")
        .arg("-f")
        .arg(Path::new(EXAMPLE_DIR).join("haproxy.cfg"))
        .stdin(Stdio::null())
        .output()
        .expect("run haproxy -c");
    assert!(
        haproxy.status.success(),
        "haproxy -c rejects deploy/scaled-out/haproxy.cfg:\n{}{}",
        String::from_utf8_lossy(&haproxy.stdout),
        String::from_utf8_lossy(&haproxy.stderr)
    );
}
