//! The store contract: one set of cases, run against every [`RecordStore`] backend, so Postgres
//! and the embedded SQLite file cannot drift apart in anything a caller can observe.
//!
//! Owns: the cases (module `cases`, each an async fn over a [`Harness`]), the per-backend
//! harness (a fresh Postgres database per test, created through the base database and dropped
//! after; a fresh SQLite file in a temp dir), and the SQLite-only tests: the single-instance
//! lock, data surviving a reopen, and a SIGKILLed gateway leaving `PRAGMA integrity_check` ok.
//!
//! Must not: skip silently. Postgres unreachable is a panic naming the URL (the base URL is
//! `postgres://postgres@127.0.0.1:5432/test`, or `AUTHGATE_TEST_DATABASE_URL`); the SIGKILL
//! test also needs Redis (`AUTHGATE_TEST_REDIS_URL`), because the binary keeps sessions there.
//!
//! What the trait does not expose (failed-login counters, ended-session columns, the audit
//! trail) is read back with one small query per backend ([`Raw`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use authgate::session::SessionToken;
use authgate::store::postgres::PostgresStore;
use authgate::store::sqlite::{OpenError, SqliteStore};
use authgate::store::{
    Activity, AuditKind, AuthEvent, NewUser, RecordStore, SessionEnd, SessionRecord, StoreError,
    StoredSigningKey,
};
use authgate::telemetry::Metrics;
use chrono::{DateTime, SubsecRound as _, Utc};
use rand::Rng as _;
use serde_json::{json, Value};
use sqlx::{Connection as _, Executor as _, Row as _};
use uuid::Uuid;

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Generous: two cores shared by tests running in parallel.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::thread_rng().gen()).collect();
    hex::encode(bytes)
}

fn base_database_url() -> String {
    std::env::var("AUTHGATE_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into())
}

fn base_redis_url() -> String {
    std::env::var("AUTHGATE_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.into())
}

/// The same Postgres URL with another database name (credentials, host, query kept).
fn with_database(url: &str, database: &str) -> String {
    let (without_query, query) = match url.find('?') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let scheme_end = without_query.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match without_query[scheme_end..].find('/') {
        Some(i) => &without_query[..scheme_end + i],
        None => without_query,
    };
    format!("{base}/{database}{query}")
}

async fn connect_postgres(url: &str) -> sqlx::PgConnection {
    match tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(url)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "cannot reach Postgres at {url}: {e}. Start it, or point AUTHGATE_TEST_DATABASE_URL at one."
        ),
        Err(_) => panic!(
            "cannot reach Postgres at {url}: connect timed out. Start it, or point AUTHGATE_TEST_DATABASE_URL at one."
        ),
    }
}

/// A private scratch directory, removed on Drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("authgate-store-{}", random_hex(8)));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// The harness: a store under test, and a side door to its tables
// ---------------------------------------------------------------------------------------------

/// A plain connection pool on the same database, for what the trait does not expose.
enum Raw {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

struct Harness {
    store: Arc<dyn RecordStore>,
    metrics: Arc<Metrics>,
    raw: Raw,
    cleanup: Cleanup,
}

enum Cleanup {
    /// Drop this database on the base server.
    Postgres(String),
    /// The SQLite file's directory.
    Sqlite(#[allow(dead_code)] TempDir),
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Cleanup::Postgres(name) = &self.cleanup {
            // Drop runs inside the test's runtime, which cannot block on itself: a thread with
            // its own runtime does the work. FORCE ends the store's own connections.
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            let base = base_database_url();
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&base).await {
                        let _ = conn.execute(sqlx::raw_sql(&sql)).await;
                    }
                });
            })
            .join();
        }
    }
}

impl Harness {
    /// A fresh database `authgate_c_<hex>` on the base Postgres server, migrated.
    async fn postgres() -> Harness {
        let base = base_database_url();
        let name = format!("authgate_c_{}", random_hex(8));
        let mut conn = connect_postgres(&base).await;
        let mut attempts = 0;
        loop {
            match conn
                .execute(sqlx::raw_sql(&format!("CREATE DATABASE {name}")))
                .await
            {
                Ok(_) => break,
                // Concurrent CREATE DATABASE can find template1 busy; retry a little.
                Err(e) if attempts < 20 && e.to_string().contains("being accessed") => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot create test database {name} on {base}: {e}"),
            }
        }
        let url = with_database(&base, &name);
        let metrics = Arc::new(Metrics::new().unwrap());
        let store = PostgresStore::connect_lazy(&url, 5, STORE_TIMEOUT, metrics.clone())
            .unwrap_or_else(|e| panic!("postgres store on {url}: {e}"));
        let raw = sqlx::PgPool::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach Postgres at {url}: {e}"));
        let harness = Harness {
            store: Arc::new(store),
            metrics,
            raw: Raw::Postgres(raw),
            cleanup: Cleanup::Postgres(name),
        };
        harness.store.migrate().await.unwrap();
        harness
    }

    /// A fresh SQLite file in a temp dir, migrated.
    async fn sqlite() -> Harness {
        let dir = TempDir::new();
        let path = dir.0.join("authgate.db");
        let metrics = Arc::new(Metrics::new().unwrap());
        let store = SqliteStore::open(&path, 5, STORE_TIMEOUT, metrics.clone())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let raw = raw_sqlite(&path).await;
        Harness {
            store: Arc::new(store),
            metrics,
            raw: Raw::Sqlite(raw),
            cleanup: Cleanup::Sqlite(dir),
        }
    }

    fn backend(&self) -> &'static str {
        match self.raw {
            Raw::Postgres(_) => "postgres",
            Raw::Sqlite(_) => "sqlite",
        }
    }

    /// `(failed_login_attempts, last_failed_attempt)` of a user.
    async fn failed_logins(&self, user: Uuid) -> (i64, Option<DateTime<Utc>>) {
        match &self.raw {
            Raw::Postgres(pool) => {
                let row = sqlx::query(
                    "SELECT failed_login_attempts::int8 AS n, last_failed_attempt FROM users \
                     WHERE id = $1",
                )
                .bind(user)
                .fetch_one(pool)
                .await
                .unwrap();
                (row.get("n"), row.get("last_failed_attempt"))
            }
            Raw::Sqlite(pool) => {
                let row = sqlx::query(
                    "SELECT failed_login_attempts AS n, last_failed_attempt FROM users \
                     WHERE id = ?1",
                )
                .bind(user.to_string())
                .fetch_one(pool)
                .await
                .unwrap();
                (
                    row.get("n"),
                    row.get::<Option<String>, _>("last_failed_attempt")
                        .map(|t| parse_time(&t)),
                )
            }
        }
    }

    /// `(status, last_activity, ended_at, end_reason)` of a session record.
    async fn session_row(
        &self,
        id: Uuid,
    ) -> (String, DateTime<Utc>, Option<DateTime<Utc>>, Option<String>) {
        match &self.raw {
            Raw::Postgres(pool) => {
                let row = sqlx::query(
                    "SELECT status, last_activity, ended_at, end_reason FROM sessions \
                     WHERE id = $1",
                )
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
                (
                    row.get("status"),
                    row.get("last_activity"),
                    row.get("ended_at"),
                    row.get("end_reason"),
                )
            }
            Raw::Sqlite(pool) => {
                let row = sqlx::query(
                    "SELECT status, last_activity, ended_at, end_reason FROM sessions \
                     WHERE id = ?1",
                )
                .bind(id.to_string())
                .fetch_one(pool)
                .await
                .unwrap();
                (
                    row.get("status"),
                    parse_time(&row.get::<String, _>("last_activity")),
                    row.get::<Option<String>, _>("ended_at")
                        .map(|t| parse_time(&t)),
                    row.get("end_reason"),
                )
            }
        }
    }

    /// Every session record's `token_hash`, for checking what is stored.
    async fn session_tokens(&self) -> Vec<String> {
        match &self.raw {
            Raw::Postgres(pool) => sqlx::query_scalar("SELECT token_hash FROM sessions")
                .fetch_all(pool)
                .await
                .unwrap(),
            Raw::Sqlite(pool) => sqlx::query_scalar("SELECT token_hash FROM sessions")
                .fetch_all(pool)
                .await
                .unwrap(),
        }
    }

    /// The audit trail, oldest first, as JSON objects (one shape for both backends).
    async fn events(&self) -> Vec<Value> {
        match &self.raw {
            Raw::Postgres(pool) => {
                let rows = sqlx::query(
                    "SELECT at, kind, user_id, session_id, host(ip) AS ip, user_agent, detail \
                     FROM auth_events ORDER BY id",
                )
                .fetch_all(pool)
                .await
                .unwrap();
                rows.iter()
                    .map(|row| {
                        json!({
                            "at": row.get::<DateTime<Utc>, _>("at"),
                            "kind": row.get::<String, _>("kind"),
                            "user_id": row.get::<Option<Uuid>, _>("user_id"),
                            "session_id": row.get::<Option<Uuid>, _>("session_id"),
                            "ip": row.get::<Option<String>, _>("ip"),
                            "user_agent": row.get::<Option<String>, _>("user_agent"),
                            "detail": row.get::<Value, _>("detail"),
                        })
                    })
                    .collect()
            }
            Raw::Sqlite(pool) => {
                let rows = sqlx::query(
                    "SELECT at, kind, user_id, session_id, ip, user_agent, detail \
                     FROM auth_events ORDER BY id",
                )
                .fetch_all(pool)
                .await
                .unwrap();
                rows.iter()
                    .map(|row| {
                        let detail: String = row.get("detail");
                        json!({
                            "at": parse_time(&row.get::<String, _>("at")),
                            "kind": row.get::<String, _>("kind"),
                            "user_id": row.get::<Option<String>, _>("user_id")
                                .map(|t| Uuid::parse_str(&t).unwrap()),
                            "session_id": row.get::<Option<String>, _>("session_id")
                                .map(|t| Uuid::parse_str(&t).unwrap()),
                            "ip": row.get::<Option<String>, _>("ip"),
                            "user_agent": row.get::<Option<String>, _>("user_agent"),
                            "detail": serde_json::from_str::<Value>(&detail).unwrap(),
                        })
                    })
                    .collect()
            }
        }
    }
}

fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("stored time {text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

async fn raw_sqlite(path: &Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(STORE_TIMEOUT);
    sqlx::SqlitePool::connect_with(options).await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// Small builders
// ---------------------------------------------------------------------------------------------

/// Now, cut to microseconds: what both backends keep, so values compare exactly.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn unique_email() -> String {
    format!("u{}@example.test", random_hex(6))
}

fn new_user(email: &str, username: Option<&str>) -> NewUser {
    NewUser {
        email: email.to_string(),
        username: username.map(str::to_string),
        full_name: Some("Ada Lovelace".to_string()),
        password_hash: "$2b$04$hash-of-the-password".to_string(),
    }
}

async fn create_user(store: &dyn RecordStore) -> Uuid {
    store
        .create_user(&new_user(&unique_email(), None))
        .await
        .unwrap()
        .id
}

fn session(user_id: Uuid, at: DateTime<Utc>) -> SessionRecord {
    SessionRecord {
        id: Uuid::new_v4(),
        user_id,
        token_hash: SessionToken::generate(authgate::session::SlotTag::of_user(Uuid::new_v4()))
            .hash(),
        ip: "203.0.113.9".parse().unwrap(),
        user_agent: "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0".to_string(),
        device_id: None,
        ip_id: None,
        location: Some("NL".to_string()),
        created_at: at,
        expires_at: at + chrono::Duration::hours(24),
    }
}

// ---------------------------------------------------------------------------------------------
// The cases: every trait method, one behaviour for every backend
// ---------------------------------------------------------------------------------------------

mod cases {
    use super::*;

    pub async fn migrate_is_idempotent_and_ping_answers(h: &Harness) {
        h.store.migrate().await.unwrap();
        h.store.ping().await.unwrap();
        assert_eq!(h.store.backend(), h.backend());
    }

    pub async fn create_user_returns_the_user_and_refuses_duplicates(h: &Harness) {
        let email = unique_email();
        let username = format!("ada_{}", random_hex(4));
        let before = now() - chrono::Duration::seconds(5);
        let user = h
            .store
            .create_user(&new_user(&email, Some(&username)))
            .await
            .unwrap();
        assert_eq!(user.email, email);
        assert_eq!(user.username.as_deref(), Some(username.as_str()));
        assert_eq!(user.full_name.as_deref(), Some("Ada Lovelace"));
        assert!(user.last_login.is_none());
        assert!(
            user.created_at >= before && user.created_at <= now() + chrono::Duration::seconds(5),
            "{}",
            user.created_at
        );

        let same_email = h
            .store
            .create_user(&new_user(&email, Some("someone_else")))
            .await;
        assert!(
            matches!(same_email, Err(StoreError::Conflict("email"))),
            "{same_email:?}"
        );
        let same_username = h
            .store
            .create_user(&new_user(&unique_email(), Some(&username)))
            .await;
        assert!(
            matches!(same_username, Err(StoreError::Conflict("username"))),
            "{same_username:?}"
        );
        // No username is no collision: many users may have none.
        h.store
            .create_user(&new_user(&unique_email(), None))
            .await
            .unwrap();
        h.store
            .create_user(&new_user(&unique_email(), None))
            .await
            .unwrap();

        let found = h.store.user(user.id).await.unwrap().unwrap();
        assert_eq!(found.id, user.id);
        assert_eq!(found.email, email);
        assert_eq!(found.created_at, user.created_at);
        assert!(h.store.user(Uuid::new_v4()).await.unwrap().is_none());
    }

    pub async fn credentials_are_found_by_email(h: &Harness) {
        let email = unique_email();
        let user = h.store.create_user(&new_user(&email, None)).await.unwrap();
        let credentials = h.store.credentials_by_email(&email).await.unwrap().unwrap();
        assert_eq!(credentials.user.id, user.id);
        assert_eq!(credentials.password_hash, "$2b$04$hash-of-the-password");
        assert!(credentials.is_active);
        assert!(h
            .store
            .credentials_by_email("nobody@example.test")
            .await
            .unwrap()
            .is_none());
        // Emails arrive normalised; the store compares them exactly.
        assert!(h
            .store
            .credentials_by_email(&email.to_uppercase())
            .await
            .unwrap()
            .is_none());

        h.store
            .set_password_hash(user.id, "$2b$04$another")
            .await
            .unwrap();
        let credentials = h.store.credentials_by_email(&email).await.unwrap().unwrap();
        assert_eq!(credentials.password_hash, "$2b$04$another");
    }

    pub async fn login_stamps_and_failed_logins_are_mirrored(h: &Harness) {
        let user = create_user(h.store.as_ref()).await;
        assert_eq!(h.failed_logins(user).await, (0, None));

        let first = now() - chrono::Duration::seconds(30);
        let second = first + chrono::Duration::milliseconds(1500);
        h.store.record_failed_login(user, first).await.unwrap();
        h.store.record_failed_login(user, second).await.unwrap();
        assert_eq!(h.failed_logins(user).await, (2, Some(second)));

        let login = second + chrono::Duration::seconds(1);
        h.store.record_login(user, login).await.unwrap();
        let (attempts, last_failed) = h.failed_logins(user).await;
        assert_eq!(attempts, 0, "a login clears the failed-attempt counter");
        assert_eq!(
            last_failed,
            Some(second),
            "the last failure is kept as history"
        );
        let found = h.store.user(user).await.unwrap().unwrap();
        assert_eq!(found.last_login, Some(login));

        // Unknown users are a no-op, not an error.
        h.store.record_login(Uuid::new_v4(), login).await.unwrap();
        h.store
            .record_failed_login(Uuid::new_v4(), login)
            .await
            .unwrap();
    }

    pub async fn devices_are_upserted_and_listed_most_recent_first(h: &Harness) {
        let user = create_user(h.store.as_ref()).await;
        let other = create_user(h.store.as_ref()).await;
        let t0 = now() - chrono::Duration::minutes(10);
        let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0 Safari/537.36";

        let a = h
            .store
            .upsert_device(user, firefox, "Firefox 128 on Linux", t0)
            .await
            .unwrap();
        let t1 = t0 + chrono::Duration::seconds(1);
        let again = h
            .store
            .upsert_device(user, firefox, "a label that is not kept", t1)
            .await
            .unwrap();
        assert_eq!(again, a, "the same user agent is the same device");
        let t2 = t1 + chrono::Duration::seconds(1);
        let b = h
            .store
            .upsert_device(user, chrome, "Chrome 126 on Windows", t2)
            .await
            .unwrap();
        assert_ne!(a, b);
        let theirs = h
            .store
            .upsert_device(other, firefox, "Firefox 128 on Linux", t2)
            .await
            .unwrap();
        assert_ne!(theirs, a, "devices are per user");

        let devices = h.store.devices(user).await.unwrap();
        let ids: Vec<Uuid> = devices.iter().map(|d| d.id).collect();
        assert_eq!(ids, vec![b, a], "most recently used first");
        assert_eq!(devices[1].first_seen, t0);
        assert_eq!(devices[1].last_seen, t1, "a repeat moves last_seen");
        assert_eq!(devices[1].label, "Firefox 128 on Linux");
        assert_eq!(devices[1].user_agent, firefox);

        let t3 = t2 + chrono::Duration::seconds(1);
        h.store
            .upsert_device(user, firefox, "Firefox 128 on Linux", t3)
            .await
            .unwrap();
        let ids: Vec<Uuid> = h
            .store
            .devices(user)
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(ids, vec![a, b]);
        assert_eq!(h.store.devices(other).await.unwrap().len(), 1);
        assert!(h.store.devices(Uuid::new_v4()).await.unwrap().is_empty());
    }

    pub async fn addresses_are_upserted_and_listed_most_recent_first(h: &Harness) {
        let user = create_user(h.store.as_ref()).await;
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let t0 = now() - chrono::Duration::minutes(10);

        let a = h.store.upsert_ip(user, v4, Some("NL"), t0).await.unwrap();
        let t1 = t0 + chrono::Duration::seconds(1);
        assert_eq!(h.store.upsert_ip(user, v4, None, t1).await.unwrap(), a);
        let ips = h.store.ips(user).await.unwrap();
        assert_eq!(ips.len(), 1);
        assert_eq!(ips[0].address, v4);
        assert_eq!(
            ips[0].location.as_deref(),
            Some("NL"),
            "an unknown location keeps the known one"
        );
        assert_eq!((ips[0].first_seen, ips[0].last_seen), (t0, t1));

        let t2 = t1 + chrono::Duration::seconds(1);
        let b = h.store.upsert_ip(user, v6, None, t2).await.unwrap();
        assert_ne!(a, b);
        let ips = h.store.ips(user).await.unwrap();
        assert_eq!(ips.iter().map(|i| i.id).collect::<Vec<_>>(), vec![b, a]);
        assert_eq!(ips[0].address, v6);
        assert_eq!(ips[0].location, None);

        let t3 = t2 + chrono::Duration::seconds(1);
        assert_eq!(
            h.store.upsert_ip(user, v4, Some("DE"), t3).await.unwrap(),
            a
        );
        let ips = h.store.ips(user).await.unwrap();
        assert_eq!(ips.iter().map(|i| i.id).collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(
            ips[0].location.as_deref(),
            Some("DE"),
            "a new location replaces it"
        );
    }

    pub async fn sessions_are_inserted_and_ended_once(h: &Harness) {
        let user = create_user(h.store.as_ref()).await;
        let t0 = now() - chrono::Duration::minutes(5);
        let device = h
            .store
            .upsert_device(user, "curl/8.0", "curl", t0)
            .await
            .unwrap();
        let ip = h
            .store
            .upsert_ip(user, "198.51.100.1".parse().unwrap(), None, t0)
            .await
            .unwrap();
        let mut records = Vec::new();
        for _ in 0..3 {
            let mut record = session(user, t0);
            record.device_id = Some(device);
            record.ip_id = Some(ip);
            h.store.insert_session(&record).await.unwrap();
            records.push(record);
        }
        assert_eq!(h.store.count_active_sessions().await.unwrap(), 3);
        let (status, last_activity, ended_at, reason) = h.session_row(records[0].id).await;
        assert_eq!(
            (status.as_str(), last_activity, ended_at, reason),
            ("active", t0, None, None)
        );
        // Only the token's hash is stored.
        let mut stored = h.session_tokens().await;
        stored.sort();
        let mut expected: Vec<String> = records.iter().map(|r| r.token_hash.to_hex()).collect();
        expected.sort();
        assert_eq!(stored, expected);

        // A token hash is unique; a collision is a store failure, not a user-facing conflict.
        let mut duplicate = session(user, t0);
        duplicate.token_hash = records[0].token_hash.clone();
        let result = h.store.insert_session(&duplicate).await;
        assert!(
            matches!(result, Err(StoreError::Unavailable { .. })),
            "{result:?}"
        );
        // So is a record for a user that does not exist.
        let orphan = h.store.insert_session(&session(Uuid::new_v4(), t0)).await;
        assert!(
            matches!(orphan, Err(StoreError::Unavailable { .. })),
            "{orphan:?}"
        );

        let t1 = t0 + chrono::Duration::seconds(30);
        let ended = h
            .store
            .end_sessions(
                &[records[0].id, records[1].id],
                SessionEnd::Revoked,
                "revoked_by_user",
                t1,
            )
            .await
            .unwrap();
        assert_eq!(ended, 2);
        let (status, _, ended_at, reason) = h.session_row(records[0].id).await;
        assert_eq!(
            (status.as_str(), ended_at, reason.as_deref()),
            ("revoked", Some(t1), Some("revoked_by_user"))
        );

        // Already ended: untouched, and not counted.
        let t2 = t1 + chrono::Duration::seconds(30);
        let ended = h
            .store
            .end_sessions(
                &[records[0].id, records[2].id, Uuid::new_v4()],
                SessionEnd::LoggedOut,
                "logout",
                t2,
            )
            .await
            .unwrap();
        assert_eq!(ended, 1, "only the still-active record changes");
        let (status, _, ended_at, reason) = h.session_row(records[0].id).await;
        assert_eq!(
            (status.as_str(), ended_at, reason.as_deref()),
            ("revoked", Some(t1), Some("revoked_by_user"))
        );
        let (status, _, ended_at, _) = h.session_row(records[2].id).await;
        assert_eq!((status.as_str(), ended_at), ("logged_out", Some(t2)));
        assert_eq!(
            h.store
                .end_sessions(&[], SessionEnd::Expired, "expired", t2)
                .await
                .unwrap(),
            0
        );
        assert_eq!(h.store.count_active_sessions().await.unwrap(), 0);

        let mut expiring = session(user, t0);
        expiring.id = Uuid::new_v4();
        h.store.insert_session(&expiring).await.unwrap();
        assert_eq!(
            h.store
                .end_sessions(&[expiring.id], SessionEnd::Expired, "idle_timeout", t2)
                .await
                .unwrap(),
            1
        );
        assert_eq!(h.session_row(expiring.id).await.0, "expired");
    }

    pub async fn many_sessions_end_in_one_call(h: &Harness) {
        let user = create_user(h.store.as_ref()).await;
        let t0 = now();
        let mut ids = Vec::new();
        for _ in 0..250 {
            let record = session(user, t0);
            ids.push(record.id);
            h.store.insert_session(&record).await.unwrap();
        }
        let ended = h
            .store
            .end_sessions(&ids, SessionEnd::Revoked, "revoke_all", t0)
            .await
            .unwrap();
        assert_eq!(ended, 250);
        assert_eq!(h.store.count_active_sessions().await.unwrap(), 0);
    }

    pub async fn activity_batches_move_times_forward_only(h: &Harness) {
        let user = create_user(h.store.as_ref()).await;
        let t0 = now() - chrono::Duration::minutes(10);
        let device = h
            .store
            .upsert_device(user, "agent-a", "A", t0)
            .await
            .unwrap();
        let other_device = h
            .store
            .upsert_device(user, "agent-b", "B", t0)
            .await
            .unwrap();
        let ip = h
            .store
            .upsert_ip(user, "192.0.2.1".parse().unwrap(), None, t0)
            .await
            .unwrap();
        let a = session(user, t0);
        let b = session(user, t0);
        h.store.insert_session(&a).await.unwrap();
        h.store.insert_session(&b).await.unwrap();

        let t1 = t0 + chrono::Duration::seconds(60);
        let t2 = t0 + chrono::Duration::seconds(120);
        let earlier = t0 - chrono::Duration::seconds(60);
        h.store
            .record_activity(&[
                Activity {
                    session_id: a.id,
                    device_id: Some(device),
                    ip_id: Some(ip),
                    at: t2,
                },
                Activity {
                    session_id: b.id,
                    device_id: Some(device),
                    ip_id: None,
                    at: t1,
                },
                Activity {
                    session_id: Uuid::new_v4(),
                    device_id: Some(other_device),
                    ip_id: None,
                    at: earlier,
                },
            ])
            .await
            .unwrap();
        assert_eq!(h.session_row(a.id).await.1, t2);
        assert_eq!(h.session_row(b.id).await.1, t1);
        let devices = h.store.devices(user).await.unwrap();
        let seen = |id: Uuid| devices.iter().find(|d| d.id == id).unwrap().last_seen;
        assert_eq!(seen(device), t2, "the latest use of a device wins");
        assert_eq!(seen(other_device), t0, "last_seen never moves back");
        assert_eq!(h.store.ips(user).await.unwrap()[0].last_seen, t2);

        // An older batch changes nothing; an empty one is fine.
        h.store
            .record_activity(&[Activity {
                session_id: a.id,
                device_id: Some(device),
                ip_id: Some(ip),
                at: t1,
            }])
            .await
            .unwrap();
        assert_eq!(h.session_row(a.id).await.1, t2);
        assert_eq!(h.store.ips(user).await.unwrap()[0].last_seen, t2);
        h.store.record_activity(&[]).await.unwrap();
    }

    pub async fn active_sessions_are_paged_by_id(h: &Harness) {
        let user = create_user(h.store.as_ref()).await;
        let t0 = now();
        let mut active = Vec::new();
        for _ in 0..7 {
            let record = session(user, t0);
            h.store.insert_session(&record).await.unwrap();
            active.push(record);
        }
        let ended = session(user, t0);
        h.store.insert_session(&ended).await.unwrap();
        h.store
            .end_sessions(&[ended.id], SessionEnd::LoggedOut, "logout", t0)
            .await
            .unwrap();

        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = h.store.active_sessions(after, 3).await.unwrap();
            assert!(page.len() <= 3);
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            seen.extend(page);
        }
        let ids: Vec<Uuid> = seen.iter().map(|r| r.id).collect();
        let mut expected: Vec<Uuid> = active.iter().map(|r| r.id).collect();
        expected.sort();
        assert_eq!(ids, expected, "every active record once, in id order");
        for record in &seen {
            let original = active.iter().find(|r| r.id == record.id).unwrap();
            assert!(record.token_hash == original.token_hash);
            assert_eq!(record.expires_at, original.expires_at);
        }
        assert!(h
            .store
            .active_sessions(Some(*expected.last().unwrap()), 3)
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn ended_records_are_purged_after_retention(h: &Harness) {
        let user = create_user(h.store.as_ref()).await;
        let t0 = now();
        let old = session(user, t0 - chrono::Duration::days(20));
        let recent = session(user, t0 - chrono::Duration::days(2));
        let still_active = session(user, t0 - chrono::Duration::days(30));
        for record in [&old, &recent, &still_active] {
            h.store.insert_session(record).await.unwrap();
        }
        h.store
            .end_sessions(
                &[old.id],
                SessionEnd::Expired,
                "expired",
                t0 - chrono::Duration::days(10),
            )
            .await
            .unwrap();
        h.store
            .end_sessions(
                &[recent.id],
                SessionEnd::LoggedOut,
                "logout",
                t0 - chrono::Duration::days(1),
            )
            .await
            .unwrap();
        let purged = h
            .store
            .purge_ended_sessions(t0 - chrono::Duration::days(5))
            .await
            .unwrap();
        assert_eq!(purged, 1);
        assert_eq!(h.session_tokens().await.len(), 2);
        assert_eq!(h.session_row(recent.id).await.0, "logged_out");
        assert_eq!(h.store.count_active_sessions().await.unwrap(), 1);
        assert_eq!(
            h.store
                .purge_ended_sessions(t0 - chrono::Duration::days(5))
                .await
                .unwrap(),
            0
        );
    }

    pub async fn audit_events_are_recorded_in_order(h: &Harness) {
        let user = create_user(h.store.as_ref()).await;
        let session_id = Uuid::new_v4();
        let before = now() - chrono::Duration::seconds(5);
        h.store
            .record_event(&AuthEvent {
                kind: AuditKind::LoginOk,
                user_id: Some(user),
                session_id: Some(session_id),
                ip: Some("2001:db8::7".parse().unwrap()),
                user_agent: Some("curl/8.0".to_string()),
                detail: json!({"method": "password", "nested": {"n": 1, "list": [true, null]}}),
            })
            .await
            .unwrap();
        h.store
            .record_event(&AuthEvent {
                kind: AuditKind::LoginFailed,
                user_id: None,
                session_id: None,
                ip: None,
                user_agent: None,
                detail: json!({}),
            })
            .await
            .unwrap();
        let events = h.events().await;
        assert_eq!(events.len(), 2);
        let first = &events[0];
        assert_eq!(first["kind"], "login_ok");
        assert_eq!(first["user_id"], json!(user));
        assert_eq!(first["session_id"], json!(session_id));
        assert_eq!(first["ip"], "2001:db8::7");
        assert_eq!(first["user_agent"], "curl/8.0");
        assert_eq!(
            first["detail"],
            json!({"method": "password", "nested": {"n": 1, "list": [true, null]}})
        );
        let at: DateTime<Utc> = serde_json::from_value(first["at"].clone()).unwrap();
        assert!(at >= before && at <= now() + chrono::Duration::seconds(5));
        let second = &events[1];
        assert_eq!(second["kind"], "login_failed");
        assert!(second["user_id"].is_null() && second["ip"].is_null());
        assert_eq!(second["detail"], json!({}));
    }

    pub async fn concurrent_writers_all_succeed(h: &Harness) {
        // The gateway writes from many tasks at once (requests, write-behind, the activity
        // flush); SQLite has one writer at a time, so this is where "database is locked" would
        // show.
        let user = create_user(h.store.as_ref()).await;
        let t0 = now();
        let mut tasks = Vec::new();
        for i in 0..40 {
            let store = h.store.clone();
            tasks.push(tokio::spawn(async move {
                store.create_user(&new_user(&unique_email(), None)).await?;
                let device = store
                    .upsert_device(user, &format!("agent-{}", i % 5), "x", t0)
                    .await?;
                let mut record = session(user, t0);
                record.device_id = Some(device);
                store.insert_session(&record).await?;
                store
                    .record_activity(&[Activity {
                        session_id: record.id,
                        device_id: Some(device),
                        ip_id: None,
                        at: t0 + chrono::Duration::seconds(i),
                    }])
                    .await?;
                store
                    .end_sessions(&[record.id], SessionEnd::LoggedOut, "logout", t0)
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), 1);
        }
        assert_eq!(h.store.devices(user).await.unwrap().len(), 5);
        assert_eq!(h.store.count_active_sessions().await.unwrap(), 0);
    }

    fn signing_key(kid: &str, algorithm: &str, created_at: DateTime<Utc>) -> StoredSigningKey {
        StoredSigningKey {
            kid: kid.to_string(),
            algorithm: algorithm.to_string(),
            private_key: vec![0x30, 0x03, 0x02, 0x01, 0x00, 0xff],
            created_at,
            retired_at: None,
        }
    }

    pub async fn accounts_are_listed_with_status_and_roles(h: &Harness) {
        let first = create_user(h.store.as_ref()).await;
        let second = create_user(h.store.as_ref()).await;
        assert!(h.store.add_user_role(first, "ops").await.unwrap());
        assert!(h.store.add_user_role(first, "admin").await.unwrap());
        assert!(
            !h.store.add_user_role(first, "admin").await.unwrap(),
            "twice"
        );
        assert_eq!(h.store.user_roles(first).await.unwrap(), ["admin", "ops"]);
        assert!(h.store.user_roles(second).await.unwrap().is_empty());
        assert!(h.store.set_user_active(second, false).await.unwrap());
        assert!(!h
            .store
            .set_user_active(Uuid::new_v4(), false)
            .await
            .unwrap());
        let accounts = h.store.list_users().await.unwrap();
        let ids: Vec<Uuid> = accounts.iter().map(|a| a.user.id).collect();
        assert_eq!(ids, [first, second], "oldest first");
        assert_eq!(accounts[0].roles, ["admin", "ops"]);
        assert!(accounts[0].is_active);
        assert!(accounts[1].roles.is_empty());
        assert!(!accounts[1].is_active);
        assert!(h.store.remove_user_role(first, "admin").await.unwrap());
        assert!(!h.store.remove_user_role(first, "admin").await.unwrap());
        assert_eq!(h.store.user_roles(first).await.unwrap(), ["ops"]);
        assert!(h.store.set_user_active(second, true).await.unwrap());
        assert!(h.store.list_users().await.unwrap()[1].is_active);
    }

    pub async fn signing_keys_have_one_live_key_per_algorithm_and_rotate_in_one_step(h: &Harness) {
        let start = now() - chrono::Duration::minutes(10);
        assert!(h.store.signing_keys(start).await.unwrap().is_empty());
        let first = signing_key("k1", "EdDSA", start);
        assert!(h.store.add_signing_key(&first).await.unwrap());
        // A second gateway starting at the same moment: refused, the first key stays.
        let racing = signing_key("k2", "EdDSA", start + chrono::Duration::seconds(1));
        assert!(!h.store.add_signing_key(&racing).await.unwrap());
        // Another algorithm may have its own live key.
        let ec = signing_key("k3", "ES256", start + chrono::Duration::seconds(2));
        assert!(h.store.add_signing_key(&ec).await.unwrap());
        let keys = h.store.signing_keys(start).await.unwrap();
        let kids: Vec<&str> = keys.iter().map(|key| key.kid.as_str()).collect();
        assert_eq!(kids, ["k3", "k1"], "newest first");
        assert_eq!(keys[1].private_key, first.private_key);
        assert_eq!(keys[1].created_at, start);
        assert!(keys.iter().all(|key| key.retired_at.is_none()));

        let rotated_at = now();
        let next = signing_key("k4", "EdDSA", rotated_at);
        assert_eq!(
            h.store
                .rotate_signing_keys(&next, rotated_at)
                .await
                .unwrap(),
            2
        );
        let keys = h.store.signing_keys(start).await.unwrap();
        let state: Vec<(&str, Option<DateTime<Utc>>)> = keys
            .iter()
            .map(|key| (key.kid.as_str(), key.retired_at))
            .collect();
        assert_eq!(
            state,
            [
                ("k4", None),
                ("k3", Some(rotated_at)),
                ("k1", Some(rotated_at))
            ]
        );
        // Keys retired before the cut-off are no longer returned.
        let later = rotated_at + chrono::Duration::seconds(1);
        let kids: Vec<String> = h
            .store
            .signing_keys(later)
            .await
            .unwrap()
            .into_iter()
            .map(|key| key.kid)
            .collect();
        assert_eq!(kids, ["k4"]);
    }

    pub async fn calls_are_measured_under_the_backend_name(h: &Harness) {
        h.store.ping().await.unwrap();
        h.store.count_active_sessions().await.unwrap();
        let text = String::from_utf8(h.metrics.render()).unwrap();
        let label = format!("store=\"{}\"", h.backend());
        assert!(
            text.lines().any(
                |line| line.starts_with("authgate_store_latency_seconds_count")
                    && line.contains(&label)
                    && line.contains("operation=\"ping\"")
            ),
            "{text}"
        );
    }
}

/// Each case becomes `postgres::<case>` and `sqlite::<case>`.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let harness = super::Harness::postgres().await;
                    super::cases::$case(&harness).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let harness = super::Harness::sqlite().await;
                    super::cases::$case(&harness).await;
                }
            )*
        }
    };
}

contract!(
    migrate_is_idempotent_and_ping_answers,
    create_user_returns_the_user_and_refuses_duplicates,
    credentials_are_found_by_email,
    login_stamps_and_failed_logins_are_mirrored,
    devices_are_upserted_and_listed_most_recent_first,
    addresses_are_upserted_and_listed_most_recent_first,
    sessions_are_inserted_and_ended_once,
    many_sessions_end_in_one_call,
    activity_batches_move_times_forward_only,
    active_sessions_are_paged_by_id,
    ended_records_are_purged_after_retention,
    audit_events_are_recorded_in_order,
    concurrent_writers_all_succeed,
    signing_keys_have_one_live_key_per_algorithm_and_rotate_in_one_step,
    accounts_are_listed_with_status_and_roles,
    calls_are_measured_under_the_backend_name,
);

// ---------------------------------------------------------------------------------------------
// SQLite only: the file, its lock, and the real binary killed mid-write
// ---------------------------------------------------------------------------------------------

mod sqlite_file {
    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;

    async fn open(path: &Path, timeout: Duration) -> Result<SqliteStore, OpenError> {
        SqliteStore::open(path, 4, timeout, Arc::new(Metrics::new().unwrap())).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_opener_is_refused_and_told_why() {
        let dir = TempDir::new();
        let path = dir.0.join("authgate.db");
        let first = open(&path, STORE_TIMEOUT).await.unwrap();

        let Err(error) = open(&path, STORE_TIMEOUT).await else {
            panic!(
                "a second store opened {} while the first held it",
                path.display()
            );
        };
        assert!(matches!(error, OpenError::Locked { .. }), "{error:?}");
        let message = error.to_string();
        for part in [
            "another authgate process".to_string(),
            format!("(pid {})", std::process::id()),
            format!("sqlite file {}", path.display()),
            format!("(lock file {}.lock is held)", path.display()),
            "the embedded mode runs one instance".to_string(),
            "use Postgres and Redis to run several".to_string(),
        ] {
            assert!(message.contains(&part), "{part:?} missing from: {message}");
        }

        // Released with the store: the next opener gets it.
        first.close().await;
        open(&path, STORE_TIMEOUT).await.unwrap().close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_survive_closing_and_reopening() {
        let dir = TempDir::new();
        let path = dir.0.join("authgate.db");
        let email = unique_email();
        let t0 = now();
        let (user, device, record) = {
            let store = open(&path, STORE_TIMEOUT).await.unwrap();
            store.migrate().await.unwrap();
            let user = store
                .create_user(&new_user(&email, Some("kept")))
                .await
                .unwrap();
            let device = store
                .upsert_device(user.id, "agent", "Agent", t0)
                .await
                .unwrap();
            let mut record = session(user.id, t0);
            record.device_id = Some(device);
            store.insert_session(&record).await.unwrap();
            store.record_login(user.id, t0).await.unwrap();
            store.close().await;
            (user, device, record)
        };

        let store = open(&path, STORE_TIMEOUT).await.unwrap();
        store.migrate().await.unwrap();
        let credentials = store.credentials_by_email(&email).await.unwrap().unwrap();
        assert_eq!(credentials.user.id, user.id);
        assert_eq!(credentials.user.username.as_deref(), Some("kept"));
        assert_eq!(credentials.user.last_login, Some(t0));
        assert_eq!(credentials.user.created_at, user.created_at);
        assert_eq!(store.devices(user.id).await.unwrap()[0].id, device);
        let active = store.active_sessions(None, 10).await.unwrap();
        assert_eq!(active.len(), 1);
        assert!(active[0].id == record.id && active[0].token_hash == record.token_hash);
        // Still unique after a reopen.
        assert!(matches!(
            store.create_user(&new_user(&email, None)).await,
            Err(StoreError::Conflict("email"))
        ));
        store.close().await;

        let raw = raw_sqlite(&path).await;
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&raw)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_locked_file_answers_unavailable_rather_than_hanging() {
        let dir = TempDir::new();
        let path = dir.0.join("authgate.db");
        let store = open(&path, Duration::from_millis(300)).await.unwrap();
        store.migrate().await.unwrap();

        // Something else (a hand-run sqlite3 shell, say) holds the write lock.
        let mut blocker = sqlx::SqliteConnection::connect_with(
            &sqlx::sqlite::SqliteConnectOptions::new().filename(&path),
        )
        .await
        .unwrap();
        blocker.execute("BEGIN IMMEDIATE").await.unwrap();

        let started = Instant::now();
        let result = store.create_user(&new_user(&unique_email(), None)).await;
        // Either the lock wait gave up (`Unavailable`) or, on a slow host, the call's timeout
        // came first (`NoAnswer`): both are a 503, and neither hangs.
        assert!(
            matches!(
                result,
                Err(StoreError::Unavailable { .. } | StoreError::NoAnswer { .. })
            ),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // Reads still answer (WAL: readers do not wait for the writer).
        store.count_active_sessions().await.unwrap();

        blocker.execute("ROLLBACK").await.unwrap();
        store
            .create_user(&new_user(&unique_email(), None))
            .await
            .unwrap();
    }

    // --- the real binary ------------------------------------------------------------------------

    /// A free 127.0.0.1 address never handed out before in this test process (the tests here
    /// run at once, and the OS may give a port just let go to the next bind).
    fn free_address() -> SocketAddr {
        static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
        loop {
            let address = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
            if !handed_out.contains(&address.port()) {
                handed_out.push(address.port());
                return address;
            }
        }
    }

    async fn require_redis() {
        let url = base_redis_url();
        let client = redis::Client::open(url.as_str())
            .unwrap_or_else(|e| panic!("invalid Redis URL {url}: {e} (AUTHGATE_TEST_REDIS_URL)"));
        match tokio::time::timeout(
            Duration::from_secs(10),
            client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!(
                "cannot reach Redis at {url}: {e}. The gateway binary keeps sessions there; \
                 start it, or point AUTHGATE_TEST_REDIS_URL at one."
            ),
            Err(_) => panic!("cannot reach Redis at {url}: connect timed out"),
        }
    }

    /// One `authgate` process on a SQLite file, in `dir` (its working directory).
    struct Binary {
        child: Child,
        listen: SocketAddr,
        admin: SocketAddr,
        config: PathBuf,
        log: PathBuf,
        redis_prefix: String,
    }

    impl Binary {
        /// Writes a config for `database_url` into `dir` and starts the gateway there.
        fn spawn(dir: &Path, database_url: &str) -> Binary {
            let (config, listen, admin, redis_prefix) = Self::write_config(dir, database_url);
            let log = config.with_extension("log");
            let output = std::fs::File::create(&log).unwrap();
            let child = command(dir, &config)
                .stdout(output.try_clone().unwrap())
                .stderr(output)
                .spawn()
                .unwrap();
            Binary {
                child,
                listen,
                admin,
                config,
                log,
                redis_prefix,
            }
        }

        /// A config for `database_url` in `dir` on fresh ports: its path, listen and admin
        /// addresses and Redis key prefix.
        fn write_config(
            dir: &Path,
            database_url: &str,
        ) -> (PathBuf, SocketAddr, SocketAddr, String) {
            let (listen, admin) = (free_address(), free_address());
            let redis_prefix = format!("authgate_t_{}:", random_hex(6));
            let config = dir.join(format!("gateway-{}.toml", random_hex(4)));
            let text = format!(
                "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nthreads = 2\n\
                 public_origin = \"http://{listen}\"\nshutdown_grace = \"1s\"\n\n\
                 [storage]\ndatabase_url = {database}\ndatabase_max_connections = 5\n\
                 database_timeout = \"5s\"\nredis_url = {redis}\n\
                 redis_key_prefix = {prefix}\n\n\
                 [session]\nsecure_cookie = false\n\n\
                 [password]\nbcrypt_cost = 4\n\n\
                 [rate_limit]\nrequests_per_second = 100000\nburst = 100000\n\n\
                 [login_protection]\nmax_attempts_per_ip = 100000\nmax_registrations_per_ip = 100000\n\n\
                 [log]\nformat = \"json\"\nlevel = \"info\"\n\n\
                 [[route]]\nprefix = \"/\"\nupstreams = [\"127.0.0.1:9\"]\nauth = \"required\"\n",
                database = Value::from(database_url),
                redis = Value::from(base_redis_url()),
                prefix = Value::from(redis_prefix.as_str()),
            );
            std::fs::write(&config, text).unwrap();
            (config, listen, admin, redis_prefix)
        }

        fn logs(&self) -> String {
            std::fs::read_to_string(&self.log).unwrap_or_default()
        }

        /// Waits for `/readyz` 200 (schema migrated), and returns its body.
        async fn ready(&mut self) -> Value {
            let client = reqwest::Client::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!(
                        "authgate exited during start-up ({status}):\n{}",
                        self.logs()
                    );
                }
                if let Ok(response) = client
                    .get(format!("http://{}/readyz", self.admin))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                {
                    if response.status() == 200 {
                        return response.json().await.unwrap();
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "authgate not ready within 30s:\n{}",
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// Deletes the sessions and counters this gateway left in Redis.
        async fn forget_redis_keys(&self) {
            let client = redis::Client::open(base_redis_url()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.redis_prefix))
                .query_async(&mut conn)
                .await
                .unwrap();
            if !keys.is_empty() {
                let _: () = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }

        /// SIGKILL: no shutdown code runs, nothing is flushed or checkpointed.
        fn kill_9(&mut self) {
            self.child.kill().unwrap();
            self.child.wait().unwrap();
        }
    }

    impl Drop for Binary {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The gateway binary, with the store overrides of the environment removed.
    fn command(dir: &Path, config: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_authgate"));
        command
            .arg("--config")
            .arg(config)
            .current_dir(dir)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }

    /// Runs a second `authgate` (with extra args) to completion, at most 30 s.
    async fn run_to_exit(dir: &Path, config: &Path, args: &[&str]) -> std::process::Output {
        let mut command = tokio::process::Command::from(command(dir, config));
        command.args(args).kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .expect("authgate did not exit within 30s")
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_gateway_on_the_same_file_is_refused_at_start() {
        require_redis().await;
        let dir = TempDir::new();
        let database = dir.0.join("authgate.db");
        // The absolute form: sqlite:// followed by /tmp/...
        let url = format!("sqlite://{}", database.display());
        let mut first = Binary::spawn(&dir.0, &url);
        let readiness = first.ready().await;
        assert_eq!(readiness["database"], "ok", "{readiness}");
        assert_eq!(readiness["database_backend"], "sqlite", "{readiness}");

        let (second, ..) = Binary::write_config(&dir.0, &url);
        let output = run_to_exit(&dir.0, &second, &[]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "second gateway ran: {stderr}");
        let expected = format!(
            "is using sqlite file {} (lock file {}.lock is held); the embedded mode runs one \
             instance — use Postgres and Redis to run several",
            database.display(),
            database.display()
        );
        assert!(stderr.contains(&expected), "{stderr}");

        // `authgate migrate` is a second process too.
        let output = run_to_exit(&dir.0, &first.config, &["migrate"]).await;
        assert!(!output.status.success());
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("another authgate process"),
            "{output:?}"
        );

        // The lock dies with its holder, even a SIGKILLed one: no stale lock to clean up.
        first.kill_9();
        first.forget_redis_keys().await;
        let output = run_to_exit(&dir.0, &first.config, &["migrate"]).await;
        assert!(output.status.success(), "{output:?}");
        assert!(String::from_utf8_lossy(&output.stdout)
            .contains("database (sqlite) migrations applied"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigkill_during_writes_leaves_the_file_intact_and_keeps_what_was_confirmed() {
        require_redis().await;
        let dir = TempDir::new();
        let database = dir.0.join("authgate.db");
        let confirmed = Arc::new(Mutex::new(Vec::<String>::new()));
        const ROUNDS: usize = 4;
        const WORKERS: usize = 6;

        for round in 0..ROUNDS {
            // The relative form, resolved against the gateway's working directory.
            let mut gateway = Binary::spawn(&dir.0, "sqlite://authgate.db");
            gateway.ready().await;
            let stop = Arc::new(AtomicBool::new(false));
            let before = confirmed.lock().unwrap().len();
            let mut workers = Vec::new();
            for _ in 0..WORKERS {
                let stop = stop.clone();
                let confirmed = confirmed.clone();
                let base = format!("http://{}", gateway.listen);
                workers.push(tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .unwrap();
                    // Register, then log in (session record, device, address, audit events
                    // written behind), until the gateway dies under us.
                    while !stop.load(Ordering::Acquire) {
                        let email = unique_email();
                        let body = json!({"email": email, "password": "correct horse battery"});
                        let Ok(response) = client
                            .post(format!("{base}/auth/register"))
                            .json(&body)
                            .send()
                            .await
                        else {
                            break;
                        };
                        if response.status() != 201 {
                            continue;
                        }
                        confirmed.lock().unwrap().push(email);
                        if client
                            .post(format!("{base}/auth/login"))
                            .json(&body)
                            .send()
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }));
            }
            // Kill once writes are well under way, at a moment that varies from run to run.
            let started = Instant::now();
            let wanted = before + 20 + rand::thread_rng().gen_range(0..40);
            while confirmed.lock().unwrap().len() < wanted {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "registrations stalled:\n{}",
                    gateway.logs()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let wal = std::fs::metadata(dir.0.join("authgate.db-wal"))
                .map(|m| m.len())
                .unwrap_or(0);
            gateway.kill_9();
            stop.store(true, Ordering::Release);
            for worker in workers {
                worker.await.unwrap();
            }
            gateway.forget_redis_keys().await;
            let confirmed_now = confirmed.lock().unwrap().clone();

            // Reopen the file as it was left: WAL recovery, then the checks.
            let raw = raw_sqlite(&database).await;
            let integrity: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
                .fetch_all(&raw)
                .await
                .unwrap();
            assert_eq!(integrity, vec!["ok".to_string()], "round {round}");
            let dangling: Vec<SqliteAnyRow> = sqlx::query_as("PRAGMA foreign_key_check")
                .fetch_all(&raw)
                .await
                .unwrap();
            assert!(dangling.is_empty(), "round {round}: dangling references");
            let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM users")
                .fetch_all(&raw)
                .await
                .unwrap();
            let stored: std::collections::HashSet<&str> =
                emails.iter().map(String::as_str).collect();
            let lost: Vec<&String> = confirmed_now
                .iter()
                .filter(|e| !stored.contains(e.as_str()))
                .collect();
            assert!(
                lost.is_empty(),
                "round {round}: {} registrations answered 201 but are gone",
                lost.len()
            );
            let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
                .fetch_one(&raw)
                .await
                .unwrap();
            let events: i64 = sqlx::query_scalar("SELECT count(*) FROM auth_events")
                .fetch_one(&raw)
                .await
                .unwrap();
            raw.close().await;
            eprintln!(
                "round {round}: killed after {:?} of load with the WAL at {wal} bytes; \
                 users {} (201s so far {}), sessions {sessions}, events {events}; \
                 integrity_check ok",
                started.elapsed(),
                emails.len(),
                confirmed_now.len(),
            );
        }

        // The lock died with the last process, and the file opens as a store again.
        let store = open(&database, STORE_TIMEOUT).await.unwrap();
        store.migrate().await.unwrap();
        let last = confirmed.lock().unwrap().last().cloned().unwrap();
        assert!(store.credentials_by_email(&last).await.unwrap().is_some());
        store.close().await;
    }

    /// A row of any shape (for `PRAGMA foreign_key_check`, which should return none).
    type SqliteAnyRow = (Option<String>, Option<i64>, Option<String>, Option<i64>);
}
