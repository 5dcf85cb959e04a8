//! Faults (contract §8 "Failure behaviour", issue 11 point 4): real processes die under a running
//! gateway, and the gateway does what an operator expects.
//!
//! - **Redis killed during traffic** (production pair): a private `redis-server` is killed
//!   with SIGKILL while requests keep coming. Protected routes fail closed (503 with
//!   `Retry-After`, never 200, never a 401 that would sign a live session out), public routes
//!   and `/healthz` keep working, `/readyz` fails; when Redis is back the gateway recovers by
//!   itself. Redis comes back *with its data* (append-only file, fsync on every write): that is
//!   how an operator runs a Redis that holds sessions, and what they expect after a crash is
//!   that users are still signed in, so the same cookie must work again. Then it comes back
//!   *empty* (data lost): the sessions are gone, which is a 401 like an expired session (not a
//!   503 forever, not a 500), and signing in again works, still without a gateway restart.
//! - **Postgres stopped** (production pair): a private cluster (`initdb`, `pg_ctl`, run as
//!   the `postgres` OS user) is stopped with `pg_ctl stop -m immediate` (a crash: no clean
//!   shutdown, recovery at the next start). Existing sessions keep working, login, register and
//!   `/auth/user/me` answer 503 with `Retry-After`, and once the same data directory is
//!   started again everything works without restarting the gateway.
//! - **Gateway SIGKILLed during logins** (both pairs): every login that was answered 200 has its
//!   session record and its `login_ok` audit event in the database after the kill; on the
//!   production pair its cookie still works (the live session is in Redis). On the embedded
//!   pair live sessions are in the process and legitimately lost (README, "Restarts"), so the
//!   cookie gets 401 and only the durable parts are checked.
//! - **Upstream dies mid-request** (both pairs): an upstream that reads the request and then
//!   closes (FIN) or resets (RST) the connection without answering gives the client a 502, and
//!   the gateway stays healthy.
//!
//! The existing `tests/operations.rs` outage tests cut the network to the shared servers
//! through a [`TcpForwarder`]; these stop the server processes themselves.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::AsyncReadExt as _;

/// One line on the real stderr (past the test harness's capture): the measured numbers.
fn note(line: &str) {
    use std::io::Write as _;
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
}

/// A client of our own for background traffic (the gateway's is not shared across tasks).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("reqwest client")
}

/// A 503 with a JSON error and a `Retry-After` of at least one second.
/// A sign-in a store outage must refuse: 503 with `Retry-After`, and no session cookie.
async fn assert_sign_in_unavailable(gateway: &Gateway, user: &SignedIn, outage: &str) {
    let login = login_attempt(gateway, &user.email, &user.password).await;
    assert!(
        session_cookie(&login).is_none(),
        "a login set a cookie ({outage})"
    );
    assert_unavailable(&format!("POST /auth/login, {outage}"), login).await;
}

async fn assert_unavailable(what: &str, response: reqwest::Response) {
    let retry_after = header(&response, "retry-after").map(str::to_string);
    let error = assert_json_error_status(response, 503).await;
    let retry_after =
        retry_after.unwrap_or_else(|| panic!("{what}: 503 without Retry-After: {error}"));
    assert!(
        retry_after.trim().parse::<u64>().is_ok_and(|s| s >= 1),
        "{what}: Retry-After {retry_after:?}"
    );
}

/// Runs `program args` and panics with its output unless it succeeds.
fn run(program: &Path, args: &[&str], as_postgres: bool) -> String {
    let mut command = if as_postgres && running_as_root() {
        // Postgres refuses to run as root; the tests do run as root in CI.
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    };
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} {args:?} failed ({}):\n{text}",
        program.display(),
        output.status
    );
    text
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `name` on PATH, or `None`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

// ---------------------------------------------------------------------------------------------
// A private redis-server
// ---------------------------------------------------------------------------------------------

/// A `redis-server` child process on a free port, persisting to an append-only file in its own
/// temp dir (fsync on every write), so a killed server comes back with its data.
struct PrivateRedis {
    port: u16,
    binary: PathBuf,
    dir: TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    async fn start() -> Self {
        let binary = on_path("redis-server").unwrap_or_else(|| {
            panic!(
                "redis-server not found on PATH: the Redis fault test starts (and kills) a \
                 private Redis server. Install it (Debian: apt-get install redis-server)."
            )
        });
        let mut redis = PrivateRedis {
            port: free_port(),
            binary,
            dir: TempDir::new(),
            child: None,
        };
        redis.spawn().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server on its port and data dir, and waits until it answers PING.
    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let log = self.dir.path.join("redis.log");
        let child = Command::new(&self.binary)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--daemonize", "no", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir.path)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        let url = self.url();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(client) = redis::Client::open(url.as_str()) {
                if let Ok(Ok(mut conn)) = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.get_multiplexed_async_connection(),
                )
                .await
                {
                    let pong: redis::RedisResult<String> =
                        redis::cmd("PING").query_async(&mut conn).await;
                    // LOADING while it replays the append-only file.
                    if pong.is_ok() {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "the private redis-server at {url} did not answer PING within 15 s; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown, no last save; what survives is what was fsynced.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Deletes the data (the append-only files): the next start is an empty Redis.
    fn wipe(&self) {
        assert!(self.child.is_none(), "wipe a stopped redis-server only");
        for entry in std::fs::read_dir(&self.dir.path).expect("read redis dir") {
            let path = entry.expect("redis dir entry").path();
            if path.file_name().is_some_and(|name| name != "redis.log") {
                if path.is_dir() {
                    std::fs::remove_dir_all(&path).expect("remove appendonly dir");
                } else {
                    std::fs::remove_file(&path).expect("remove redis data file");
                }
            }
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// A private Postgres cluster
// ---------------------------------------------------------------------------------------------

/// A throw-away Postgres cluster (`initdb`, trust auth) in a temp dir owned by the `postgres`
/// OS user, on a free port; `pg_ctl stop -m immediate` and the dir removed on Drop.
struct PrivatePostgres {
    port: u16,
    bin: PathBuf,
    base: PathBuf,
}

impl PrivatePostgres {
    /// `initdb`'s directory: on PATH, or the newest `/usr/lib/postgresql/*/bin` (Debian keeps
    /// the server programs there).
    fn find_bin() -> PathBuf {
        if let Some(initdb) = on_path("initdb") {
            let initdb = std::fs::canonicalize(&initdb).unwrap_or(initdb);
            if let Some(dir) = initdb.parent() {
                return dir.to_path_buf();
            }
        }
        let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("initdb").is_file())
            .collect();
        candidates.sort_by_key(|bin| {
            bin.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        });
        candidates.pop().unwrap_or_else(|| {
            panic!(
                "initdb not found (not on PATH, not in /usr/lib/postgresql/*/bin): the Postgres \
                 fault test starts and stops a private cluster. Install the PostgreSQL server \
                 programs (Debian: apt-get install postgresql) or put initdb and pg_ctl on PATH."
            )
        })
    }

    async fn start() -> Self {
        let bin = Self::find_bin();
        assert!(
            bin.join("pg_ctl").is_file(),
            "pg_ctl not found next to initdb in {}",
            bin.display()
        );
        let base = std::env::temp_dir().join(format!("authgate-pg-{}", random_hex(6)));
        std::fs::create_dir_all(&base).expect("create the cluster's temp dir");
        let postgres = PrivatePostgres {
            port: free_port(),
            bin,
            base,
        };
        if running_as_root() {
            run(
                Path::new("chown"),
                &["postgres:postgres", &postgres.base.display().to_string()],
                false,
            );
        }
        let data = postgres.data().display().to_string();
        run(
            &postgres.bin.join("initdb"),
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            true,
        );
        postgres.pg_ctl_start().await;
        postgres
    }

    fn data(&self) -> PathBuf {
        self.base.join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl start` on the cluster's data dir, then waits until it takes connections.
    async fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.base.display()
        );
        run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &self.base.join("postgres.log").display().to_string(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
            true,
        );
        let url = self.url();
        eventually(
            Duration::from_secs(30),
            &format!("the private Postgres at {url} to take connections"),
            || async {
                use sqlx::Connection as _;
                sqlx::PgConnection::connect(&url).await.ok().map(|_| ())
            },
        )
        .await;
    }

    /// `pg_ctl stop -m immediate`: every server process quits at once, no checkpoint.
    fn stop(&self) {
        run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            true,
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut command = if running_as_root() {
            let mut command = Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            command
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = command
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.base.join("postgres.log")).unwrap_or_default();
            note(&format!(
                "---- private postgres log ----\n{log}\n---- end ----"
            ));
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

// ---------------------------------------------------------------------------------------------
// Redis killed during traffic
// ---------------------------------------------------------------------------------------------

/// Redis phases, as the background traffic sees them.
const UP: u8 = 0;
/// Redis is dead and the gateway has been seen to know it.
const DOWN: u8 = 1;
/// Redis is being started again.
const RETURNING: u8 = 2;

#[derive(Debug)]
struct Answer {
    protected: bool,
    /// The phase when the request was sent and when its answer arrived.
    sent: u8,
    received: u8,
    status: u16,
    retry_after: bool,
    clears_cookie: bool,
}

/// Keeps a protected request (with `token`) and a public one going until `stop`.
fn background_traffic(
    gateway: &Gateway,
    token: &str,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<Answer>, Vec<String>)> {
    let protected_url = gateway.url("/inbox");
    let public_url = gateway.url("/public/ping");
    let cookie = cookie_header(token);
    tokio::spawn(async move {
        let client = client();
        let (mut answers, mut errors) = (Vec::new(), Vec::new());
        while !stop.load(Ordering::Acquire) {
            for protected in [true, false] {
                let sent = phase.load(Ordering::Acquire);
                let request = if protected {
                    client
                        .get(&protected_url)
                        .header("Cookie", &cookie)
                        .header("Accept", "application/json")
                } else {
                    client.get(&public_url)
                };
                match request.send().await {
                    Ok(response) => {
                        let clears_cookie =
                            session_cookie(&response).is_some_and(|c| c.is_clearing());
                        answers.push(Answer {
                            protected,
                            sent,
                            received: phase.load(Ordering::Acquire),
                            status: response.status().as_u16(),
                            retry_after: header(&response, "retry-after").is_some(),
                            clears_cookie,
                        });
                        let _ = response.bytes().await;
                    }
                    Err(e) => errors.push(format!("protected={protected}: {e:?}")),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (answers, errors)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_during_traffic_fails_closed_and_recovers_without_a_gateway_restart() {
    if !require_backend(
        Backend::Production,
        "kills the Redis server (the embedded pair's session store is in the process)",
    ) {
        return;
    }
    let mut redis = PrivateRedis::start().await;
    let gateway = GatewayOptions::new()
        .redis_url(&redis.url())
        .login_protection(5, "15m", "15m", 10_000)
        .unmetered()
        .start()
        .await;
    let user = gateway.signed_in_user().await;
    let echo = echoed(gateway.get("/inbox", Some(&user.token)).await).await;
    assert_eq!(echo.header("x-user-id"), Some(user.id.as_str()));

    let phase = Arc::new(AtomicU8::new(UP));
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = background_traffic(&gateway, &user.token, phase.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // --- Redis dies --------------------------------------------------------------------------
    let killed_at = Instant::now();
    redis.kill();
    let first_503 = eventually(
        Duration::from_secs(20),
        "a protected route to answer 503 with Redis dead",
        || async {
            let response = gateway
                .get_with(
                    "/inbox",
                    Some(&user.token),
                    &[("Accept", "application/json")],
                )
                .await;
            match response.status().as_u16() {
                503 => Some(response),
                // A request answered from before the kill, or one the gateway had not yet
                // seen fail: only 200 may still come (never a 401 for a live session).
                200 => None,
                other => panic!("protected route answered {other} while Redis died"),
            }
        },
    )
    .await;
    let fail_closed_after = killed_at.elapsed();
    assert_unavailable("protected route, Redis dead", first_503).await;
    eventually(
        Duration::from_secs(20),
        "/readyz 503 with Redis dead",
        || async { (gateway.admin_get("/readyz").await.status() == 503).then_some(()) },
    )
    .await;
    let not_ready_after = killed_at.elapsed();
    phase.store(DOWN, Ordering::Release);

    // While it is down: every protected request is refused, with a clear 503 ...
    for path in ["/inbox", "/settings/profile", "/"] {
        let response = gateway
            .get_with(path, Some(&user.token), &[("Accept", "application/json")])
            .await;
        assert!(
            session_cookie(&response).is_none_or(|c| !c.is_clearing()),
            "{path}: the outage cleared the session cookie"
        );
        assert_unavailable(&format!("GET {path}, Redis dead"), response).await;
    }
    // ... a browser navigation too (no redirect to the sign-in page: the session is fine) ...
    let navigation = gateway
        .get_with("/inbox", Some(&user.token), &[("Accept", "text/html")])
        .await;
    assert_eq!(
        navigation.status(),
        503,
        "a browser navigation with a live session, Redis dead"
    );
    // ... sign-in cannot be checked against the brute-force counters: refused, not waved through
    assert_sign_in_unavailable(&gateway, &user, "Redis dead").await;
    // ... while public routes and the process itself are fine.
    for n in 0..5 {
        let public = gateway.get(&format!("/public/during-{n}"), None).await;
        assert_eq!(public.status(), 200, "public routes do not need Redis");
    }
    assert_eq!(gateway.admin_get("/healthz").await.status(), 200);
    let ready = json_body(gateway.admin_get("/readyz").await).await;
    assert_ne!(
        ready["session_store"], "ok",
        "/readyz with Redis dead: {ready}"
    );
    assert_eq!(ready["database"], "ok", "/readyz with Redis dead: {ready}");
    // Let the background traffic see the outage for a while.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // --- Redis returns with its data -----------------------------------------------------
    phase.store(RETURNING, Ordering::Release);
    redis.spawn().await;
    // From the moment Redis answers PING again.
    let restarted_at = Instant::now();
    let echo = eventually(
        Duration::from_secs(30),
        "the same session to work again once Redis is back",
        || async {
            let response = gateway.get("/inbox", Some(&user.token)).await;
            match response.status().as_u16() {
                200 => Some(echoed(response).await),
                503 => None,
                other => panic!("protected route answered {other} while Redis returned"),
            }
        },
    )
    .await;
    let recovered_after = restarted_at.elapsed();
    assert_eq!(echo.header("x-user-id"), Some(user.id.as_str()));
    eventually(
        Duration::from_secs(30),
        "/readyz 200 once Redis is back",
        || async { (gateway.admin_get("/readyz").await.status() == 200).then_some(()) },
    )
    .await;
    let ready_after = restarted_at.elapsed();
    phase.store(UP, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Release);
    let (answers, errors) = traffic.await.expect("traffic task");

    assert!(errors.is_empty(), "requests that got no answer: {errors:?}");
    for answer in &answers {
        if answer.protected {
            assert!(
                matches!(answer.status, 200 | 503),
                "a protected request with a live session got {}: {answer:?} (only 200 or 503 \
                 may come; a 401 would sign the user out because of an outage)",
                answer.status
            );
            assert!(
                answer.status != 503 || answer.retry_after,
                "503 without Retry-After: {answer:?}"
            );
            assert!(!answer.clears_cookie, "the cookie was cleared: {answer:?}");
            if answer.sent == DOWN && answer.received == DOWN {
                assert_eq!(
                    answer.status, 503,
                    "served while Redis was down: {answer:?}"
                );
            }
        } else {
            assert_eq!(answer.status, 200, "a public request failed: {answer:?}");
        }
    }
    let count = |protected: bool, status: u16| {
        answers
            .iter()
            .filter(|a| a.protected == protected && a.status == status)
            .count()
    };
    assert!(count(true, 503) > 0, "the traffic never saw the outage");
    assert!(count(true, 200) > 0, "the traffic never got through");
    let text = gateway.metrics().await;
    assert!(
        metric_value(
            &text,
            "authgate_auth_decisions_total",
            &[("decision", "store_unavailable")]
        )
        .is_some_and(|v| v >= 1.0),
        "the refusals were not counted as store_unavailable"
    );
    note(&format!(
        "redis killed: first protected 503 after {fail_closed_after:?}, /readyz 503 after \
         {not_ready_after:?}; redis restarted: session served again after {recovered_after:?}, \
         /readyz 200 after {ready_after:?}; background traffic: {} protected 200, {} protected \
         503, {} public 200",
        count(true, 200),
        count(true, 503),
        count(false, 200)
    ));

    // --- Redis returns empty (its data lost) --------------------------------------------
    redis.kill();
    redis.wipe();
    redis.spawn().await;
    let restarted_at = Instant::now();
    eventually(
        Duration::from_secs(30),
        "a lost session to be answered 401 once an empty Redis is back",
        || async {
            let response = gateway
                .get_with(
                    "/inbox",
                    Some(&user.token),
                    &[("Accept", "application/json")],
                )
                .await;
            match response.status().as_u16() {
                401 => Some(()),
                503 => None,
                other => panic!("a session lost with Redis's data answered {other}"),
            }
        },
    )
    .await;
    let answered_401_after = restarted_at.elapsed();
    let token = gateway.login(&user.email, &user.password).await;
    let echo = echoed(gateway.get("/inbox", Some(&token)).await).await;
    assert_eq!(echo.header("x-user-id"), Some(user.id.as_str()));
    note(&format!(
        "redis restarted empty: the lost session answered 401 after {answered_401_after:?}; \
         signing in again works"
    ));
}

// ---------------------------------------------------------------------------------------------
// Postgres stopped
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_keeps_sessions_refuses_sign_in_with_503_and_recovers() {
    if !require_backend(
        Backend::Production,
        "stops the Postgres server (the embedded pair's database is a local file)",
    ) {
        return;
    }
    let postgres = PrivatePostgres::start().await;
    let database_url = postgres.url();
    let mut gateway = Gateway::start_with_edited(
        GatewayOptions::new().login_protection(5, "15m", "15m", 10_000),
        |text| {
            let line = text
                .lines()
                .find(|line| line.starts_with("database_url = "))
                .unwrap_or_else(|| panic!("no database_url in\n{text}"))
                .to_string();
            text.replacen(&line, &format!("database_url = \"{database_url}\""), 1)
        },
    )
    .await;
    // The harness's own database is unused; read the private cluster instead.
    gateway.database_url = database_url.clone();
    let user = gateway.signed_in_user().await;
    assert_eq!(
        gateway
            .count(
                "SELECT count(*) FROM users WHERE email = $1",
                &[user.email.as_str().into()]
            )
            .await,
        1,
        "the gateway writes to the private cluster"
    );

    // --- Postgres stops ----------------------------------------------------------------------
    let stopped_at = Instant::now();
    postgres.stop();
    eventually(
        Duration::from_secs(20),
        "/readyz 503 with Postgres stopped",
        || async { (gateway.admin_get("/readyz").await.status() == 503).then_some(()) },
    )
    .await;
    let not_ready_after = stopped_at.elapsed();

    // Existing sessions keep working: the proxied path never touches Postgres.
    for n in 0..20 {
        let response = gateway.get(&format!("/inbox/{n}"), Some(&user.token)).await;
        assert_eq!(
            response.status(),
            200,
            "a live session with Postgres stopped"
        );
        let echo = echoed(response).await;
        assert_eq!(echo.header("x-user-id"), Some(user.id.as_str()));
    }
    assert_eq!(gateway.get("/public/x", None).await.status(), 200);
    assert_eq!(gateway.admin_get("/healthz").await.status(), 200);

    // Signing in and up needs the database: a clear 503, no cookie.
    assert_sign_in_unavailable(&gateway, &user, "Postgres stopped").await;
    let new_email = unique_email();
    let new_password = strong_password();
    let register = gateway
        .post_json(
            "/auth/register",
            &json!({"email": new_email, "password": new_password}),
            None,
        )
        .await;
    assert_unavailable("POST /auth/register, Postgres stopped", register).await;
    let me = gateway.get("/auth/user/me", Some(&user.token)).await;
    assert_unavailable("GET /auth/user/me, Postgres stopped", me).await;
    // The failed login must not have cost the account an attempt (no verdict was reached):
    // the session it had is still the one that works.
    assert_eq!(gateway.get("/inbox", Some(&user.token)).await.status(), 200);

    // --- Postgres starts again on the same data dir -------------------------------------
    postgres.pg_ctl_start().await;
    let restarted_at = Instant::now();
    let token = eventually(
        Duration::from_secs(30),
        "login to work again once Postgres is back",
        || async {
            let response = gateway
                .post_json(
                    "/auth/login",
                    &json!({"email": user.email, "password": user.password}),
                    None,
                )
                .await;
            match response.status().as_u16() {
                200 => session_cookie(&response).map(|c| c.value),
                503 => None,
                other => panic!(
                    "login answered {other} while Postgres returned: {}",
                    response.text().await.unwrap_or_default()
                ),
            }
        },
    )
    .await;
    let login_after = restarted_at.elapsed();
    let new_user = gateway.register(&new_email, &new_password).await;
    assert!(new_user["id"].is_string(), "{new_user}");
    let me = json_body(gateway.get("/auth/user/me", Some(&token)).await).await;
    assert_eq!(me["id"].as_str(), Some(user.id.as_str()), "{me}");
    eventually(
        Duration::from_secs(30),
        "/readyz 200 once Postgres is back",
        || async { (gateway.admin_get("/readyz").await.status() == 200).then_some(()) },
    )
    .await;
    let ready_after = restarted_at.elapsed();
    // Both sessions live and recorded; the old one never stopped working.
    assert_eq!(gateway.get("/inbox", Some(&user.token)).await.status(), 200);
    assert_eq!(
        gateway
            .count(
                "SELECT count(*) FROM sessions WHERE user_id = $1 AND status = 'active'",
                &[uuid_bind(&user.id)]
            )
            .await,
        2
    );
    note(&format!(
        "postgres stopped: /readyz 503 after {not_ready_after:?}; postgres restarted: login \
         200 after {login_after:?}, /readyz 200 after {ready_after:?}"
    ));
}

// ---------------------------------------------------------------------------------------------
// Gateway SIGKILLed during logins
// ---------------------------------------------------------------------------------------------

/// A gateway process started again by the test on a killed gateway's config, stores, ports
/// and log (the harness's `restart` is for a gateway that is still running). Killed on Drop.
struct Relaunched {
    child: Child,
}

impl Relaunched {
    async fn start(gateway: &Gateway) -> Self {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&gateway.log_path)
            .expect("open gateway.log");
        let child = gateway_command()
            .arg("--config")
            .arg(&gateway.config_path)
            .current_dir(gateway.dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("start the gateway again");
        let mut relaunched = Relaunched { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = relaunched.child.try_wait() {
                panic!(
                    "the gateway exited at its restart after SIGKILL ({status})\nlog:\n{}",
                    gateway.logs()
                );
            }
            let ready = client()
                .get(gateway.admin_url("/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready && tokio::net::TcpStream::connect(gateway.listen).await.is_ok() {
                return relaunched;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway was not ready 30 s after its restart\nlog:\n{}",
                gateway.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Relaunched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A login the gateway answered 200 before it was killed.
#[derive(Debug, Clone)]
struct AnsweredLogin {
    user_id: String,
    session_id: String,
    token: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_login_answered_before_a_sigkill_is_durable() {
    const USERS: usize = 8;
    const ANSWERED_BEFORE_KILL: usize = 40;
    let gateway = GatewayOptions::new()
        .login_protection(5, "15m", "15m", 100_000)
        .max_registrations_per_ip(10_000)
        .max_sessions_per_user(10_000, "evict_oldest")
        .start()
        .await;
    let mut users = Vec::new();
    for _ in 0..USERS {
        let (email, password) = (unique_email(), strong_password());
        let user = gateway.register(&email, &password).await;
        users.push((
            user["id"].as_str().expect("user.id").to_string(),
            email,
            password,
        ));
    }

    // Every user signs in over and over, all at once, until the gateway dies under them.
    let answered = Arc::new(Mutex::new(Vec::<AnsweredLogin>::new()));
    let interrupted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (user_id, email, password) in users.clone() {
        let url = gateway.url("/auth/login");
        let (answered, interrupted, stop) = (answered.clone(), interrupted.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::Acquire) {
                let sent = client
                    .post(&url)
                    .json(&json!({"email": email, "password": password}))
                    .send()
                    .await;
                let response = match sent {
                    Ok(response) => response,
                    Err(_) => {
                        interrupted.fetch_add(1, Ordering::AcqRel);
                        return;
                    }
                };
                let status = response.status().as_u16();
                let cookie = session_cookie(&response);
                let body = match response.text().await {
                    Ok(body) => body,
                    Err(_) => {
                        interrupted.fetch_add(1, Ordering::AcqRel);
                        return;
                    }
                };
                assert_eq!(status, 200, "login {email} before the kill: {body}");
                let body: serde_json::Value = serde_json::from_str(&body).expect("login JSON");
                answered.lock().unwrap().push(AnsweredLogin {
                    user_id: user_id.clone(),
                    session_id: body["session"]["id"]
                        .as_str()
                        .unwrap_or_else(|| panic!("no session.id in {body}"))
                        .to_string(),
                    token: cookie.expect("a 200 login sets the cookie").value,
                });
            }
        }));
    }
    eventually(
        Duration::from_secs(60),
        &format!("{ANSWERED_BEFORE_KILL} logins answered"),
        || async { (answered.lock().unwrap().len() >= ANSWERED_BEFORE_KILL).then_some(()) },
    )
    .await;
    gateway.signal("KILL");
    stop.store(true, Ordering::Release);
    let mut gateway = gateway;
    let status = gateway.wait_for_exit(Duration::from_secs(10)).await;
    assert!(status.is_some(), "the gateway survived SIGKILL");
    for task in tasks {
        task.await.expect("a login task panicked");
    }
    let answered = answered.lock().unwrap().clone();
    let interrupted = interrupted.load(Ordering::Acquire);
    assert!(
        interrupted >= 1,
        "no login was in flight at the kill ({} answered): the test did not test anything",
        answered.len()
    );

    let relaunched = Relaunched::start(&gateway).await;
    let mut db = gateway.db().await;
    let mut missing = Vec::new();
    for login in &answered {
        let record = db
            .query_opt(
                "SELECT status, user_id FROM sessions WHERE id = $1",
                &[uuid_bind(&login.session_id)],
            )
            .await;
        let event_count = db
            .count(
                "SELECT count(*) FROM auth_events WHERE kind = 'login_ok' AND session_id = $1",
                &[uuid_bind(&login.session_id)],
            )
            .await;
        match &record {
            None => missing.push(format!("{}: no session record", login.session_id)),
            Some(row) => {
                assert_eq!(row.uuid("user_id").to_string(), login.user_id, "{login:?}");
                let status = row.text("status");
                // On the embedded pair the expiry job may already have marked the lost
                // session expired.
                let allowed: &[&str] = on_pair(&["active"][..], &["active", "expired"][..]);
                assert!(
                    allowed.contains(&status.as_str()),
                    "session {} is {status:?} after the restart",
                    login.session_id
                );
            }
        }
        if event_count != 1 {
            missing.push(format!(
                "{}: {event_count} login_ok audit events (want 1)",
                login.session_id
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} logins answered 200 before the SIGKILL lost durable records:\n{}",
        missing.len(),
        answered.len(),
        missing.join("\n")
    );

    // The live sessions: in Redis on the production pair, so every cookie still works.
    if only_on(
        Backend::Production,
        "that the cookies still work (the embedded pair's live sessions die with the process)",
    ) {
        for login in &answered {
            let response = gateway.get("/inbox", Some(&login.token)).await;
            assert_eq!(
                response.status(),
                200,
                "session {} after the restart",
                login.session_id
            );
            let echo = echoed(response).await;
            assert_eq!(echo.header("x-user-id"), Some(login.user_id.as_str()));
        }
    } else {
        for login in answered.iter().take(5) {
            let response = gateway
                .get_with(
                    "/inbox",
                    Some(&login.token),
                    &[("Accept", "application/json")],
                )
                .await;
            assert_eq!(response.status(), 401, "a session lost with the process");
        }
    }
    // And the restarted gateway signs people in as before.
    let (_, email, password) = &users[0];
    let token = gateway.login(email, password).await;
    assert_eq!(gateway.get("/inbox", Some(&token)).await.status(), 200);
    note(&format!(
        "SIGKILL during logins ({} pair): {} logins answered 200 before the kill, {} in flight \
         cut off; all durable after the restart",
        backend().name(),
        answered.len(),
        interrupted
    ));
    drop(relaunched);
}

// ---------------------------------------------------------------------------------------------
// Upstream dies mid-request
// ---------------------------------------------------------------------------------------------

/// An upstream that reads each request (head and Content-Length body) and then dies on it:
/// closes the connection (FIN) or, with `reset`, aborts it (RST) without a byte of answer.
struct DyingUpstream {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::AbortHandle,
}

impl DyingUpstream {
    async fn start(reset: bool) -> Self {
        let listener = listen_on_free_port();
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::AcqRel);
                    if reset {
                        // A zero linger makes the close an RST and never blocks (the
                        // deprecation is about a non-zero linger blocking the drop).
                        #[allow(deprecated)]
                        let _ = socket.set_linger(Some(Duration::ZERO));
                    }
                    drop(socket);
                });
            }
        })
        .abort_handle();
        DyingUpstream {
            addr,
            requests,
            task,
        }
    }

    fn count(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }
}

impl Drop for DyingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn assert_502(what: &str, response: reqwest::Response) {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, 502, "{what}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{what}: 502 body is not JSON ({e}): {body}"));
    assert!(json["error"]["code"].is_string(), "{what}: {json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_dies_mid_request_is_a_502_and_the_gateway_stays_healthy() {
    let closing = DyingUpstream::start(false).await;
    let resetting = DyingUpstream::start(true).await;
    let gateway = GatewayOptions::new()
        .routes(vec![
            RouteSpec::public("/closes/", Upstream::Addr(closing.addr.to_string())),
            RouteSpec::public("/resets/", Upstream::Addr(resetting.addr.to_string())),
            RouteSpec::required("/private-dies/", Upstream::Addr(closing.addr.to_string())),
            RouteSpec::required("/", Upstream::Echo),
            RouteSpec::public("/public/", Upstream::Echo),
        ])
        .start()
        .await;
    let user = gateway.signed_in_user().await;
    let json_accept = [("Accept", "application/json")];

    for round in 0..3 {
        assert_502(
            "GET, upstream closes",
            gateway
                .get_with(&format!("/closes/{round}"), None, &json_accept)
                .await,
        )
        .await;
        assert_502(
            "GET, upstream resets",
            gateway
                .get_with(&format!("/resets/{round}"), None, &json_accept)
                .await,
        )
        .await;
        let post = gateway
            .request(
                "POST",
                &format!("/closes/orders/{round}"),
                None,
                &json_accept,
                Some(("application/json", b"{\"item\":1}".to_vec())),
            )
            .await;
        assert_502("POST, upstream closes", post).await;
        assert_502(
            "GET on a protected route, upstream closes",
            gateway
                .get_with(
                    &format!("/private-dies/{round}"),
                    Some(&user.token),
                    &json_accept,
                )
                .await,
        )
        .await;
    }
    assert!(
        closing.count() >= 9,
        "the closing upstream read {} requests",
        closing.count()
    );
    assert!(
        resetting.count() >= 3,
        "the resetting upstream read {} requests",
        resetting.count()
    );

    // Dying and healthy requests at once: the failures stay with their requests.
    let mut tasks = Vec::new();
    for n in 0..16 {
        let client = client();
        let (dying, healthy) = (
            gateway.url(&format!("/closes/many/{n}")),
            gateway.url(&format!("/public/many/{n}")),
        );
        tasks.push(tokio::spawn(async move {
            let dying = client.get(dying).send().await.map(|r| r.status().as_u16());
            let healthy = client
                .get(healthy)
                .send()
                .await
                .map(|r| r.status().as_u16());
            (dying.ok(), healthy.ok())
        }));
    }
    for task in tasks {
        let (dying, healthy) = task.await.expect("request task");
        assert_eq!(dying, Some(502), "a request to the dying upstream");
        assert_eq!(healthy, Some(200), "a request to the healthy upstream");
    }

    // The gateway is still healthy: same process, health endpoints, both kinds of route.
    let mut gateway = gateway;
    assert!(
        gateway.wait_for_exit(Duration::ZERO).await.is_none(),
        "the gateway exited"
    );
    assert_eq!(gateway.admin_get("/healthz").await.status(), 200);
    assert_eq!(gateway.admin_get("/readyz").await.status(), 200);
    for n in 0..5 {
        let echo = echoed(gateway.get(&format!("/inbox/{n}"), Some(&user.token)).await).await;
        assert_eq!(echo.header("x-user-id"), Some(user.id.as_str()));
        assert_eq!(
            gateway.get(&format!("/public/{n}"), None).await.status(),
            200
        );
    }
    let text = gateway.metrics().await;
    assert!(
        metric_value(
            &text,
            "authgate_http_requests_total",
            &[("route", "/closes/"), ("status_class", "5xx")]
        )
        .is_some_and(|v| v >= 3.0),
        "502s counted per route"
    );
}
