//! authgate beside nginx (forward-auth, contract §9): Debian's nginx in front of the app (the
//! harness's echo upstream), asking authgate's `/auth/verify` about every request with
//! `auth_request`, and routing `/auth/` on the app's host to authgate.
//!
//! nginx runs the recipe of `docs/forward-auth.md` itself: the one ```` ```nginx ```` block is
//! read out of the document, and only the two upstream addresses and the `listen` line are
//! changed (the document says so too: keep them in step). Through it, a signed-out browser is
//! sent to the sign-in page with `rd` = the URL it asked for and an API call gets a 401, with
//! nothing reaching the app; a browser that signs in on the app's host comes back to that URL;
//! a signed-in request reaches the app with authgate's `X-User-Id` (a forged one replaced) and
//! without the session cookie; and after a sign-out the same request is refused again. The
//! document's `gateway.toml` block passes `authgate check`.
//!
//! Needs `nginx` (on `PATH` or at `/usr/sbin/nginx`; Debian's package). Runs on both backend
//! pairs.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The document whose nginx block this test runs.
const RECIPE_DOC: &str = include_str!("../docs/forward-auth.md");
/// The app's host name in the recipe (`server_name`), sent as `Host` to nginx.
const APP_HOST: &str = "app.example.com";
/// What a browser sends when it navigates to a page.
const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// The one ```` ```nginx ```` block of `docs/forward-auth.md`.
fn nginx_recipe() -> String {
    doc_block("nginx")
}

/// The one fenced block of `docs/forward-auth.md` whose info string is `language`.
fn doc_block(language: &str) -> String {
    let fence = format!("```{language}");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in RECIPE_DOC.lines() {
        match current.as_mut() {
            None if line.trim() == fence => current = Some(Vec::new()),
            None => {}
            Some(block) if line.trim() == "```" => {
                blocks.push(block.join("\n") + "\n");
                current = None;
            }
            Some(block) => block.push(line),
        }
    }
    assert_eq!(
        blocks.len(),
        1,
        "docs/forward-auth.md should have exactly one {fence} block (this test reads it)"
    );
    blocks.remove(0)
}

/// `text` with the one line that trims to `from` replaced by `to` (same indentation). Panics
/// when there is not exactly one: a recipe that lost the line would otherwise run unchanged.
fn replace_line(text: &str, from: &str, to: &str) -> String {
    let mut replaced = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            // A trailing comment on the line is kept out of the comparison.
            let code = trimmed.split('#').next().unwrap_or("").trim_end();
            if code == from {
                replaced += 1;
                format!("{}{to}", &line[..line.len() - trimmed.len()])
            } else {
                line.to_string()
            }
        })
        .collect();
    assert_eq!(
        replaced, 1,
        "the nginx recipe in docs/forward-auth.md should have one `{from}` line"
    );
    lines.join("\n") + "\n"
}

/// The recipe for this run: authgate and the app at their test addresses, nginx on `port`.
fn recipe_for(gateway: &Gateway, port: u16) -> String {
    let recipe = nginx_recipe();
    let recipe = replace_line(
        &recipe,
        "server 127.0.0.1:8080;",
        &format!("server {};", gateway.listen),
    );
    let recipe = replace_line(
        &recipe,
        "server 127.0.0.1:3000;",
        &format!("server {};", gateway.echo.addr),
    );
    replace_line(&recipe, "listen 80;", &format!("listen 127.0.0.1:{port};"))
}

/// nginx from Debian's package: on `PATH`, or where Debian puts it.
fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nginx"))
            .find(|candidate| candidate.is_file())
    });
    on_path
        .or_else(|| {
            let debian = PathBuf::from("/usr/sbin/nginx");
            debian.is_file().then_some(debian)
        })
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed (not on PATH, not at /usr/sbin/nginx): \
                 `apt-get install -y nginx` (.ci/run installs it when missing)"
            )
        })
}

/// A running nginx, killed on Drop. It runs as one process (`master_process off`), so killing
/// it leaves no worker behind holding the port.
struct Nginx {
    child: Child,
    port: u16,
    log_path: PathBuf,
    _dir: TempDir,
}

impl Nginx {
    async fn start(gateway: &Gateway) -> Nginx {
        let binary = nginx_binary();
        let dir = TempDir::new();
        let port = free_port();
        let path = |name: &str| dir.path.join(name).display().to_string();
        // Everything nginx writes stays in its temp dir; no `user` line (as root, nginx would
        // switch its workers to it; with master_process off there are none).
        let config = format!(
            "pid {pid};\n\
             events {{\n    worker_connections 64;\n}}\n\
             http {{\n\
             access_log {access};\n\
             client_body_temp_path {body};\n\
             proxy_temp_path {proxy};\n\
             fastcgi_temp_path {fastcgi};\n\
             uwsgi_temp_path {uwsgi};\n\
             scgi_temp_path {scgi};\n\n\
             {recipe}}}\n",
            pid = path("nginx.pid"),
            access = path("access.log"),
            body = path("client_body"),
            proxy = path("proxy"),
            fastcgi = path("fastcgi"),
            uwsgi = path("uwsgi"),
            scgi = path("scgi"),
            recipe = recipe_for(gateway, port),
        );
        let config_path = dir.path.join("nginx.conf");
        std::fs::write(&config_path, &config).unwrap();
        let log_path = dir.path.join("nginx.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(&binary)
            .arg("-e")
            .arg("stderr")
            .arg("-p")
            .arg(&dir.path)
            .arg("-c")
            .arg(&config_path)
            .arg("-g")
            .arg("daemon off; master_process off; error_log stderr notice;")
            .current_dir(&dir.path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut nginx = Nginx {
            child,
            port,
            log_path,
            _dir: dir,
        };
        nginx.wait_until_up(&config).await;
        nginx
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    async fn wait_until_up(&mut self, config: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "nginx exited at start-up ({status}):\n{}\nconfig:\n{config}",
                    self.logs()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not come up on 127.0.0.1:{}:\n{}",
                self.port,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- nginx log ----\n{}\n---- end ----", self.logs());
        }
    }
}

/// authgate beside nginx: the gateway of the recipe's `gateway.toml` (nginx trusted, the app's
/// host its first public origin and an allowed redirect host), and nginx in front of the echo
/// app.
struct Beside {
    gateway: Gateway,
    nginx: Nginx,
    client: reqwest::Client,
}

/// `public_origin = "<the harness's>"` → the app's origin first, the harness's after it (the
/// harness's helpers send that one as `Origin`).
fn with_app_origin_first(rendered: String) -> String {
    let lines: Vec<String> = rendered
        .lines()
        .map(|line| match line.strip_prefix("public_origin = ") {
            Some(own) => format!("public_origin = [\"http://{APP_HOST}\", {own}]"),
            None => line.to_string(),
        })
        .collect();
    assert!(
        lines.iter().any(|line| line.contains(APP_HOST)),
        "the harness's gateway.toml has no public_origin line"
    );
    lines.join("\n") + "\n"
}

impl Beside {
    async fn start() -> Beside {
        let options = GatewayOptions::new()
            .trusted_proxies(&["127.0.0.1/32"])
            .server_setting(&format!("allowed_redirect_hosts = [\"{APP_HOST}\"]"));
        let gateway = Gateway::start_with_edited(options, with_app_origin_first).await;
        let nginx = Nginx::start(&gateway).await;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        Beside {
            gateway,
            nginx,
            client,
        }
    }

    /// A request to nginx for the app's host.
    async fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> reqwest::Response {
        let url = format!("http://127.0.0.1:{}{path_and_query}", self.nginx.port);
        let mut request = self
            .client
            .request(method.parse().unwrap(), url.as_str())
            .header("Host", APP_HOST);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some((content_type, bytes)) = body {
            request = request.header("Content-Type", content_type).body(bytes);
        }
        request.send().await.unwrap_or_else(|e| {
            panic!(
                "{method} {path_and_query} through nginx: {e:?}\nnginx log:\n{}",
                self.nginx.logs()
            )
        })
    }

    async fn get(&self, path_and_query: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        self.request("GET", path_and_query, headers, None).await
    }

    async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let bytes = serde_json::to_vec(body).unwrap();
        self.request("POST", path, headers, Some(("application/json", bytes)))
            .await
    }

    /// Registers and signs in with JSON through nginx's `/auth/` route: (user id, token).
    async fn sign_up_and_in(&self) -> (String, String) {
        let credentials = json!({"email": unique_email(), "password": strong_password()});
        let registered = self.post_json("/auth/register", &credentials, &[]).await;
        assert_eq!(registered.status(), 201, "register through nginx");
        let login = self.post_json("/auth/login", &credentials, &[]).await;
        let cookie = session_cookie(&login);
        let status = login.status();
        let body = login.text().await.unwrap();
        assert_eq!(status, 200, "login through nginx: {body}");
        let token = cookie
            .expect("login through nginx sets the session cookie")
            .value;
        let me = json_body(
            self.get("/auth/user/me", &[("Cookie", &cookie_header(&token))])
                .await,
        )
        .await;
        let id = me["id"]
            .as_str()
            .expect("/auth/user/me has the id")
            .to_string();
        (id, token)
    }
}

/// The sign-in URL a 302 points at, checked to be the gateway's page on the app's host, and the
/// `rd` it carries (decoded).
fn sign_in_redirect(response: &reqwest::Response) -> (String, String) {
    assert_eq!(
        response.status(),
        302,
        "a signed-out browser should be redirected to sign in"
    );
    let location = header(response, "location")
        .expect("the 302 has a Location")
        .to_string();
    let prefix = format!("http://{APP_HOST}/auth/login?");
    let query = location.strip_prefix(&prefix).unwrap_or_else(|| {
        panic!("Location {location:?} should be the sign-in page on the app's host ({prefix}…)")
    });
    let rd = form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "rd")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_else(|| panic!("Location {location:?} carries no rd"));
    let path_and_query = location[format!("http://{APP_HOST}").len()..].to_string();
    (path_and_query, rd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_signed_out_browsers_go_to_sign_in_and_api_calls_get_401() {
    let beside = Beside::start().await;
    let page = "/reports/2025?year=2025&q=a%20b";

    // A browser navigating to a page: sent to the sign-in page on the app's host, with rd = the
    // full URL it asked for (query string intact).
    let response = beside.get(page, &[("Accept", BROWSER_ACCEPT)]).await;
    let (_, rd) = sign_in_redirect(&response);
    assert_eq!(rd, format!("http://{APP_HOST}{page}"));

    // The same for HEAD; a client's own X-Forwarded-* cannot change where rd points.
    let response = beside
        .request("HEAD", page, &[("Accept", BROWSER_ACCEPT)], None)
        .await;
    assert_eq!(
        sign_in_redirect(&response).1,
        format!("http://{APP_HOST}{page}")
    );
    let forged = [
        ("Accept", BROWSER_ACCEPT),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Uri", "/phish"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Method", "GET"),
    ];
    let response = beside.get(page, &forged).await;
    assert_eq!(
        sign_in_redirect(&response).1,
        format!("http://{APP_HOST}{page}"),
        "rd should be the URL nginx received, whatever X-Forwarded-* the client sent"
    );

    // An API call and a form post: 401 JSON.
    let api = beside
        .get("/api/items", &[("Accept", "application/json")])
        .await;
    assert_json_error_status(api, 401).await;
    let post = beside
        .request(
            "POST",
            "/reports",
            &[("Accept", BROWSER_ACCEPT)],
            Some(("application/x-www-form-urlencoded", b"a=1".to_vec())),
        )
        .await;
    assert_json_error_status(post, 401).await;
    // A browser whose cookie is no session is signed out too.
    let junk_cookie = cookie_header(&"A".repeat(43));
    let response = beside
        .get(
            page,
            &[("Accept", BROWSER_ACCEPT), ("Cookie", &junk_cookie)],
        )
        .await;
    sign_in_redirect(&response);

    assert_eq!(
        beside.gateway.echo.request_count(),
        0,
        "a signed-out request reached the app: {:?}",
        beside.gateway.echo.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_a_browser_signs_in_on_the_apps_host_and_comes_back_to_its_page() {
    let beside = Beside::start().await;
    let email = unique_email();
    let password = strong_password();
    beside.gateway.register(&email, &password).await;
    let page = "/projects/7/board?view=week&sort=due";

    // 1. The page: a 302 to the sign-in page, which nginx serves from authgate.
    let response = beside.get(page, &[("Accept", BROWSER_ACCEPT)]).await;
    let (sign_in, rd) = sign_in_redirect(&response);
    let sign_in_page = beside.get(&sign_in, &[("Accept", BROWSER_ACCEPT)]).await;
    assert_eq!(sign_in_page.status(), 200, "the sign-in page through nginx");
    let csrf = set_cookies(&sign_in_page)
        .into_iter()
        .find(|c| c.name == "authgate_csrf")
        .expect("the sign-in page sets the CSRF cookie")
        .value;
    let html = sign_in_page.text().await.unwrap();
    let hidden_rd = hidden_field(&html, "rd").unwrap_or_else(|| panic!("no rd field in {html}"));
    assert_eq!(hidden_rd, rd, "the sign-in form should carry rd");

    // 2. The form, posted on the app's host: back to the page, with the session cookie.
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf_token", &csrf)
        .append_pair("rd", &hidden_rd)
        .append_pair("email", &email)
        .append_pair("password", &password)
        .finish();
    let csrf_cookie = format!("authgate_csrf={csrf}");
    let origin = format!("http://{APP_HOST}");
    let signed_in = beside
        .request(
            "POST",
            "/auth/login",
            &[
                ("Accept", BROWSER_ACCEPT),
                ("Cookie", &csrf_cookie),
                ("Origin", &origin),
            ],
            Some(("application/x-www-form-urlencoded", form.into_bytes())),
        )
        .await;
    assert_eq!(signed_in.status(), 303, "sign-in form through nginx");
    assert_eq!(
        header(&signed_in, "location"),
        Some(format!("http://{APP_HOST}{page}").as_str()),
        "after signing in the browser should go back to the page it asked for"
    );
    let token = session_cookie(&signed_in)
        .expect("signing in sets the session cookie")
        .value;

    // 3. The page again, now signed in: the app gets the user's id.
    let user_id = json_body(beside.gateway.get("/auth/user/me", Some(&token)).await).await["id"]
        .as_str()
        .expect("user id")
        .to_string();
    let response = beside
        .get(
            page,
            &[
                ("Accept", BROWSER_ACCEPT),
                ("Cookie", &cookie_header(&token)),
            ],
        )
        .await;
    let seen = echoed(response).await;
    assert_eq!(seen.path, page);
    assert_eq!(seen.header("x-user-id"), Some(user_id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_the_app_gets_authgates_user_id_never_a_forged_one_until_sign_out() {
    let beside = Beside::start().await;
    let (user_id, token) = beside.sign_up_and_in().await;

    // Signed in, with forged identity headers and the app's own cookies around authgate's.
    let cookies = format!("theme=dark; {}; lang=en", cookie_header(&token));
    let request_headers = [
        ("Accept", BROWSER_ACCEPT),
        ("Cookie", cookies.as_str()),
        ("X-User-Id", "attacker"),
        ("X-User-Email", "attacker@evil.example"),
        ("X-Session-Id", "forged"),
        ("X-Authgate-Assertion", "forged.assertion.token"),
    ];
    let response = beside.get("/app/page?x=1", &request_headers).await;
    for set_cookie in set_cookies(&response) {
        assert!(
            set_cookie.name == COOKIE_NAME && set_cookie.value == token,
            "the only cookie nginx may pass back is the refreshed session cookie: {}",
            set_cookie.raw
        );
    }
    let seen = echoed(response).await;
    assert_eq!(seen.path, "/app/page?x=1");
    assert_eq!(
        seen.header_count("x-user-id"),
        1,
        "X-User-Id lines at the app: {:?}",
        seen.header_list
    );
    assert_eq!(seen.header("x-user-id"), Some(user_id.as_str()));
    // The harness's gateway injects neither e-mail nor session id: the forged ones are dropped.
    assert_eq!(
        seen.header_count("x-user-email"),
        0,
        "{:?}",
        seen.header_list
    );
    assert_eq!(
        seen.header_count("x-session-id"),
        0,
        "{:?}",
        seen.header_list
    );
    assert_eq!(
        seen.header_count("x-authgate-assertion"),
        0,
        "{:?}",
        seen.header_list
    );
    // The session token stays away from the app; its other cookies pass.
    assert_eq!(seen.header("cookie"), Some("theme=dark; lang=en"));
    let alone = beside
        .get("/app/alone", &[("Cookie", &cookie_header(&token))])
        .await;
    let seen = echoed(alone).await;
    assert_eq!(seen.header("x-user-id"), Some(user_id.as_str()));
    assert_eq!(seen.header("cookie"), None, "{:?}", seen.header_list);
    let first = beside
        .get(
            "/app/first",
            &[("Cookie", &format!("{}; theme=dark", cookie_header(&token)))],
        )
        .await;
    assert_eq!(echoed(first).await.header("cookie"), Some("theme=dark"));

    // Sign out on the app's host (a same-origin fetch): the same request is refused again,
    // and nothing more reaches the app.
    let origin = format!("http://{APP_HOST}");
    let logout = beside
        .request(
            "POST",
            "/auth/logout",
            &[("Cookie", &cookie_header(&token)), ("Origin", &origin)],
            None,
        )
        .await;
    assert_eq!(logout.status(), 204, "logout through nginx");
    let served = beside.gateway.echo.request_count();
    let response = beside.get("/app/page?x=1", &request_headers).await;
    assert_eq!(
        sign_in_redirect(&response).1,
        format!("http://{APP_HOST}/app/page?x=1")
    );
    let api = beside
        .get(
            "/api/items",
            &[
                ("Accept", "application/json"),
                ("Cookie", &cookie_header(&token)),
            ],
        )
        .await;
    assert_json_error_status(api, 401).await;
    assert_eq!(
        beside.gateway.echo.request_count(),
        served,
        "a request with the ended session reached the app"
    );
}

/// The document's `gateway.toml` for the authgate side is one `authgate check` accepts. (No
/// store is opened, so on either pair.)
#[test]
fn the_documented_gateway_toml_passes_authgate_check() {
    let check = run_check(&doc_block("toml"));
    assert!(
        check.status.success(),
        "authgate check rejects the gateway.toml of docs/forward-auth.md:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
