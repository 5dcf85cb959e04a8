//! Sessions, devices and IP history (contract §3, §4, §6; issue 3): what a login records, the
//! signed-in user's session / device / IP lists, revocation, the per-user cap, password change,
//! the write-behind activity flush, the expiry job, the audit trail, the anomaly checks, the
//! session metrics and the location of an address.
//!
//! Everything written behind (audit events, ended-session records, activity) is polled for with
//! a deadline, never waited for with a fixed sleep.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use serde_json::{json, Value};
use uuid::Uuid;

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

/// How long anything written behind may take to reach Postgres (2 cores, tests in parallel).
const WRITE_BEHIND: Duration = Duration::from_secs(15);

/// An `auth_events` row: (session_id, ip, user_agent, detail).
type EventRow = (Option<Uuid>, Option<String>, Option<String>, Value);
/// A `devices` row: (id, label, user_agent, first_seen, last_seen).
type DeviceRow = (Uuid, String, String, DateTime<Utc>, DateTime<Utc>);
/// An `ip_addresses` row: (id, address, location, first_seen, last_seen).
type IpRow = (Uuid, String, Option<String>, DateTime<Utc>, DateTime<Utc>);
/// Session created_at / last_activity, device first/last seen, IP first/last seen.
type ActivityStamps = (
    DateTime<Utc>,
    DateTime<Utc>,
    DateTime<Utc>,
    DateTime<Utc>,
    DateTime<Utc>,
    DateTime<Utc>,
);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A gateway whose login protection will not get in the way of many logins from 127.0.0.1.
fn options() -> GatewayOptions {
    GatewayOptions::new().login_protection(5, "15m", "15m", 10_000)
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn uuid(id: &str) -> Uuid {
    Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id:?} is not a UUID: {e}"))
}

/// A registered user (no session yet).
struct Account {
    id: String,
    email: String,
    password: String,
}

async fn account(gateway: &Gateway) -> Account {
    let email = unique_email();
    let password = strong_password();
    let user = gateway.register(&email, &password).await;
    Account {
        id: user["id"].as_str().expect("user.id").to_string(),
        email,
        password,
    }
}

/// One login: the token and the public session id the login answered with.
struct Login {
    token: String,
    session_id: String,
    body: Value,
}

async fn login_with(gateway: &Gateway, account: &Account, headers: &[(&str, &str)]) -> Login {
    let result = gateway
        .login_full_with(&account.email, &account.password, headers)
        .await;
    let session_id = result.body["session"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("login body has no session.id: {}", result.body))
        .to_string();
    Login {
        token: result.token,
        session_id,
        body: result.body,
    }
}

async fn login(gateway: &Gateway, account: &Account) -> Login {
    login_with(gateway, account, &[]).await
}

async fn login_ua(gateway: &Gateway, account: &Account, user_agent: &str) -> Login {
    login_with(gateway, account, &[("User-Agent", user_agent)]).await
}

/// Headers for a JSON API call, with the gateway's own origin (what a browser would send on a
/// state-changing request), plus `extra`.
fn api_headers<'a>(origin: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![("Accept", "application/json"), ("Origin", origin)];
    headers.extend_from_slice(extra);
    headers
}

/// Status of a GET with this session cookie (and optional User-Agent).
async fn get_status(gateway: &Gateway, path: &str, token: &str, user_agent: Option<&str>) -> u16 {
    let mut headers = vec![("Accept", "application/json")];
    if let Some(ua) = user_agent {
        headers.push(("User-Agent", ua));
    }
    gateway
        .get_with(path, Some(token), &headers)
        .await
        .status()
        .as_u16()
}

/// `/auth/user/me` and a protected proxied route both answer `expected` for this cookie.
async fn assert_session_status(gateway: &Gateway, token: &str, expected: u16, what: &str) {
    let proxied = get_status(gateway, "/app/protected", token, None).await;
    let me = get_status(gateway, "/auth/user/me", token, None).await;
    assert_eq!(proxied, expected, "{what}: GET /app/protected");
    assert_eq!(me, expected, "{what}: GET /auth/user/me");
}

async fn get_json(
    gateway: &Gateway,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Value) {
    let mut all = vec![("Accept", "application/json")];
    all.extend_from_slice(headers);
    let response = gateway.get_with(path, Some(token), &all).await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, text, value)
}

/// `GET /auth/user/sessions`, asserting 200; (raw body, parsed body).
async fn list_sessions(
    gateway: &Gateway,
    token: &str,
    headers: &[(&str, &str)],
) -> (String, Value) {
    let (status, text, value) = get_json(gateway, "/auth/user/sessions", token, headers).await;
    assert_eq!(status, 200, "GET /auth/user/sessions: {text}");
    (text, value)
}

fn session_ids(list: &Value) -> Vec<String> {
    list["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sessions array: {list}"))
        .iter()
        .map(|s| s["id"].as_str().expect("session id").to_string())
        .collect()
}

async fn delete(gateway: &Gateway, path: &str, token: &str) -> reqwest::Response {
    let origin = gateway.public_origin();
    gateway
        .request(
            "DELETE",
            path,
            Some(token),
            &api_headers(&origin, &[]),
            None,
        )
        .await
}

async fn change_password(
    gateway: &Gateway,
    token: &str,
    current_password: &str,
    new_password: &str,
) -> reqwest::Response {
    let origin = gateway.public_origin();
    gateway
        .request(
            "POST",
            "/auth/user/password",
            Some(token),
            &api_headers(&origin, &[]),
            Some((
                "application/json",
                serde_json::to_vec(&json!({
                    "current_password": current_password,
                    "new_password": new_password,
                }))
                .unwrap(),
            )),
        )
        .await
}

/// `(status, end_reason)` of a session record, `None` if there is no such row.
async fn session_row(gateway: &Gateway, id: &str) -> Option<(String, Option<String>)> {
    gateway
        .query_opt(
            "SELECT status, end_reason FROM sessions WHERE id = $1",
            &[uuid(id).into()],
        )
        .await
        .map(|row| (row.text("status"), row.opt_text("end_reason")))
}

/// Polls until the session record has `status`; returns its end_reason.
async fn wait_for_session_status(gateway: &Gateway, id: &str, status: &str) -> Option<String> {
    let deadline = Instant::now() + WRITE_BEHIND;
    loop {
        let row = session_row(gateway, id).await;
        if let Some((actual, reason)) = &row {
            if actual == status {
                return reason.clone();
            }
        }
        if Instant::now() >= deadline {
            panic!("session {id}: status never became {status:?} within {WRITE_BEHIND:?}; row: {row:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many `auth_events` of this kind (for this user, when given).
async fn event_count(gateway: &Gateway, kind: &str, user_id: Option<&str>) -> i64 {
    gateway
        .count(
            "SELECT count(*) FROM auth_events WHERE kind = $1 AND ($2 IS NULL OR user_id = $2)",
            &[kind.into(), user_id.map(uuid).into()],
        )
        .await
}

/// Polls until at least one `auth_events` row of `kind` exists for the user; returns the rows
/// as `(session_id, ip, user_agent, detail)`.
async fn wait_for_event(gateway: &Gateway, kind: &str, user_id: Option<&str>) -> Vec<EventRow> {
    let deadline = Instant::now() + WRITE_BEHIND;
    loop {
        let rows: Vec<EventRow> = gateway
            .query(
                "SELECT session_id, ip, user_agent, detail FROM auth_events \
                 WHERE kind = $1 AND ($2 IS NULL OR user_id = $2) ORDER BY id",
                &[kind.into(), user_id.map(uuid).into()],
            )
            .await
            .iter()
            .map(|row| {
                (
                    row.opt_uuid("session_id"),
                    row.opt_text("ip"),
                    row.opt_text("user_agent"),
                    row.json("detail"),
                )
            })
            .collect();
        if !rows.is_empty() {
            return rows;
        }
        if Instant::now() >= deadline {
            let kinds = gateway
                .texts("SELECT kind FROM auth_events ORDER BY id", &[])
                .await;
            panic!(
                "no auth_events row of kind {kind:?} (user {user_id:?}) within {WRITE_BEHIND:?}; kinds present: {kinds:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A metric's value (summed over matching series); 0 when the series does not exist yet.
async fn metric(gateway: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&gateway.metrics().await, name, labels).unwrap_or(0.0)
}

/// Polls until `metric >= at_least`; returns the value.
async fn wait_for_metric(
    gateway: &Gateway,
    name: &str,
    labels: &[(&str, &str)],
    check: impl Fn(f64) -> bool,
    what: &str,
) -> f64 {
    let deadline = Instant::now() + WRITE_BEHIND;
    loop {
        let value = metric(gateway, name, labels).await;
        if check(value) {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("{name}{labels:?} = {value}: never became {what} within {WRITE_BEHIND:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn timestamp(value: &Value, what: &str) -> DateTime<Utc> {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"))
        .parse()
        .unwrap_or_else(|e| panic!("{what} is not an RFC 3339 timestamp ({e}): {value}"))
}

// ---------------------------------------------------------------------------------------------
// 1. Schema
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_has_devices_ips_sessions_and_auth_events_linked_by_foreign_keys() {
    let gateway = options().start().await;
    let mut db = gateway.db().await;

    // The catalogs differ: Postgres's information_schema and pg_constraint, SQLite's pragmas.
    let columns: BTreeSet<(String, String)> = db
        .query(
            on_pair(
                "SELECT table_name::text, column_name::text FROM information_schema.columns \
                 WHERE table_schema = 'public'",
                "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p \
                 WHERE m.type = 'table'",
            ),
            &[],
        )
        .await
        .iter()
        .map(|row| (row.text(0), row.text(1)))
        .collect();
    let expected: &[(&str, &[&str])] = &[
        (
            "devices",
            &[
                "id",
                "user_id",
                "user_agent",
                "label",
                "first_seen",
                "last_seen",
            ],
        ),
        (
            "ip_addresses",
            &[
                "id",
                "user_id",
                "address",
                "location",
                "first_seen",
                "last_seen",
            ],
        ),
        (
            "sessions",
            &[
                "id",
                "user_id",
                "device_id",
                "ip_id",
                "location",
                "token_hash",
                "status",
                "created_at",
                "last_activity",
                "expires_at",
                "ended_at",
                "end_reason",
            ],
        ),
        (
            "auth_events",
            &[
                "id",
                "at",
                "kind",
                "user_id",
                "session_id",
                "ip",
                "user_agent",
                "detail",
            ],
        ),
    ];
    for (table, names) in expected {
        for name in *names {
            assert!(
                columns.contains(&(table.to_string(), name.to_string())),
                "column {table}.{name} is missing"
            );
        }
    }

    // Foreign keys: (table, column) -> referenced table.
    let fks: BTreeSet<(String, String, String)> = db
        .query(
            on_pair(
                "SELECT c.conrelid::regclass::text, a.attname::text, \
                        c.confrelid::regclass::text \
                 FROM pg_constraint c \
                 JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) \
                 WHERE c.contype = 'f'",
                "SELECT m.name, f.\"from\", f.\"table\" \
                 FROM sqlite_master m, pragma_foreign_key_list(m.name) f \
                 WHERE m.type = 'table'",
            ),
            &[],
        )
        .await
        .iter()
        .map(|row| (row.text(0), row.text(1), row.text(2)))
        .collect();
    for (table, column, target) in [
        ("sessions", "user_id", "users"),
        ("sessions", "device_id", "devices"),
        ("sessions", "ip_id", "ip_addresses"),
        ("devices", "user_id", "users"),
        ("ip_addresses", "user_id", "users"),
        ("auth_events", "user_id", "users"),
    ] {
        assert!(
            fks.contains(&(table.into(), column.into(), target.into())),
            "no foreign key {table}.{column} -> {target}; have {fks:?}"
        );
    }

    // Uniqueness the data model promises, as (table, "UNIQUE (columns)").
    let unique: Vec<(String, String)> = db
        .query(
            on_pair(
                "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint \
                 WHERE contype IN ('u', 'p')",
                // A UNIQUE constraint is an index of origin 'u'; its columns in key order.
                "SELECT m.name, 'UNIQUE (' || (SELECT group_concat(name, ', ') FROM \
                        (SELECT ii.name FROM pragma_index_info(il.name) ii ORDER BY ii.seqno)) \
                        || ')' \
                 FROM sqlite_master m, pragma_index_list(m.name) il \
                 WHERE m.type = 'table' AND il.origin = 'u'",
            ),
            &[],
        )
        .await
        .iter()
        .map(|row| (row.text(0), row.text(1)))
        .collect();
    let has_unique = |table: &str, def: &str| {
        unique
            .iter()
            .any(|(t, d)| t == table && d.replace(' ', "") == def.replace(' ', ""))
    };
    assert!(has_unique("sessions", "UNIQUE (token_hash)"), "{unique:?}");
    assert!(
        has_unique("devices", "UNIQUE (user_id, user_agent_hash)"),
        "{unique:?}"
    );
    assert!(
        has_unique("ip_addresses", "UNIQUE (user_id, address)"),
        "{unique:?}"
    );

    // sessions.status accepts exactly the four documented states.
    let account = account(&gateway).await;
    let session = login(&gateway, &account).await;
    for (status, ok) in [
        ("logged_out", true),
        ("revoked", true),
        ("expired", true),
        ("active", true),
        ("bogus", false),
    ] {
        let result = db
            .execute(
                "UPDATE sessions SET status = $2 WHERE id = $1",
                &[uuid(&session.session_id).into(), status.into()],
            )
            .await;
        assert_eq!(result.is_ok(), ok, "status {status:?}: {result:?}");
        if ok {
            assert_eq!(result.ok(), Some(1), "status {status:?} updated no row");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. What a login records
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_records_the_device_and_ip_and_links_them_from_the_session_record() {
    let gateway = options().start().await;
    let account = account(&gateway).await;
    let before = Utc::now() - chrono::Duration::seconds(5);
    let session = login_ua(&gateway, &account, FIREFOX).await;
    let after = Utc::now() + chrono::Duration::seconds(5);

    // The login answer already describes the session.
    let described = &session.body["session"];
    assert_eq!(described["device"], "Firefox 128 on Linux", "{described}");
    assert_eq!(described["ip"], "127.0.0.1", "{described}");
    assert_eq!(described["location"], "Local", "{described}");

    let mut db = gateway.db().await;
    let devices: Vec<DeviceRow> = db
        .query(
            "SELECT id, label, user_agent, first_seen, last_seen FROM devices WHERE user_id = $1",
            &[uuid(&account.id).into()],
        )
        .await
        .iter()
        .map(|row| {
            (
                row.uuid("id"),
                row.text("label"),
                row.text("user_agent"),
                row.time("first_seen"),
                row.time("last_seen"),
            )
        })
        .collect();
    assert_eq!(devices.len(), 1, "{devices:?}");
    let (device_id, label, user_agent, first_seen, last_seen) = &devices[0];
    assert_eq!(label, "Firefox 128 on Linux");
    assert_eq!(user_agent, FIREFOX);
    for (name, at) in [("first_seen", first_seen), ("last_seen", last_seen)] {
        assert!(
            *at >= before && *at <= after,
            "devices.{name} {at} not around the login"
        );
    }

    let ips: Vec<IpRow> = db
        .query(
            "SELECT id, address, location, first_seen, last_seen FROM ip_addresses \
             WHERE user_id = $1",
            &[uuid(&account.id).into()],
        )
        .await
        .iter()
        .map(|row| {
            (
                row.uuid("id"),
                row.text("address"),
                row.opt_text("location"),
                row.time("first_seen"),
                row.time("last_seen"),
            )
        })
        .collect();
    assert_eq!(ips.len(), 1, "{ips:?}");
    let (ip_id, address, location, first_seen, last_seen) = &ips[0];
    assert_eq!(address, "127.0.0.1");
    assert_eq!(location.as_deref(), Some("Local"));
    for (name, at) in [("first_seen", first_seen), ("last_seen", last_seen)] {
        assert!(
            *at >= before && *at <= after,
            "ip_addresses.{name} {at} not around the login"
        );
    }

    let row = db
        .query_one(
            "SELECT device_id, ip_id, location, status, token_hash FROM sessions WHERE id = $1",
            &[uuid(&session.session_id).into()],
        )
        .await;
    let (s_device, s_ip, s_location, s_status, s_hash) = (
        row.opt_uuid("device_id"),
        row.opt_uuid("ip_id"),
        row.opt_text("location"),
        row.text("status"),
        row.text("token_hash"),
    );
    assert_eq!(s_device, Some(*device_id), "sessions.device_id");
    assert_eq!(s_ip, Some(*ip_id), "sessions.ip_id");
    assert_eq!(s_location.as_deref(), Some("Local"));
    assert_eq!(s_status, "active");
    assert_eq!(
        s_hash,
        sha256_hex(&session.token),
        "token_hash is the SHA-256 of the token"
    );

    // A second login from the same browser and address reuses both rows.
    let again = login_ua(&gateway, &account, FIREFOX).await;
    let row = db
        .query_one(
            "SELECT device_id, ip_id FROM sessions WHERE id = $1",
            &[uuid(&again.session_id).into()],
        )
        .await;
    assert_eq!(row.opt_uuid("device_id"), Some(*device_id));
    assert_eq!(row.opt_uuid("ip_id"), Some(*ip_id));
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM devices WHERE user_id = $1), \
                    (SELECT count(*) FROM ip_addresses WHERE user_id = $1)",
            &[uuid(&account.id).into()],
        )
        .await;
    assert_eq!(
        (row.int(0), row.int(1)),
        (1, 1),
        "same device and IP must not be duplicated"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Listing sessions
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_list_marks_the_current_one_orders_by_activity_and_never_shows_a_token() {
    let gateway = options().start().await;
    let account = account(&gateway).await;
    let first = login_ua(&gateway, &account, FIREFOX).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = login_ua(&gateway, &account, CHROME).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let third = login(&gateway, &account).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Use the first session again: it becomes more recently active than the third.
    assert_eq!(
        get_status(&gateway, "/app/x", &first.token, Some(FIREFOX)).await,
        200
    );
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Listed from the second session: second (just now), first, third.
    let (text, list) = list_sessions(&gateway, &second.token, &[("User-Agent", CHROME)]).await;
    assert_eq!(list["total_active_sessions"], 3, "{text}");
    assert_eq!(
        session_ids(&list),
        vec![
            second.session_id.clone(),
            first.session_id.clone(),
            third.session_id.clone()
        ],
        "ordered by last_activity, most recent first: {text}"
    );
    let sessions = list["sessions"].as_array().unwrap();
    let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1, "exactly one current session: {text}");
    assert_eq!(current[0]["id"], second.session_id.as_str());
    for session in sessions {
        assert!(session["current"].is_boolean(), "{session}");
        for key in [
            "id",
            "device",
            "user_agent",
            "ip",
            "location",
            "created_at",
            "last_activity",
            "expires_at",
            "idle_expires_at",
            "device_id",
        ] {
            assert!(
                session.get(key).is_some_and(|v| !v.is_null()),
                "session field {key} missing or null: {session}"
            );
        }
        assert_eq!(session["ip"], "127.0.0.1");
        assert_eq!(session["location"], "Local");
        let created = timestamp(&session["created_at"], "created_at");
        let last = timestamp(&session["last_activity"], "last_activity");
        let expires = timestamp(&session["expires_at"], "expires_at");
        let idle = timestamp(&session["idle_expires_at"], "idle_expires_at");
        assert!(last >= created, "{session}");
        assert!(
            expires > Utc::now() + chrono::Duration::hours(12),
            "absolute 1d: {session}"
        );
        assert!(
            idle > Utc::now() + chrono::Duration::minutes(30),
            "idle 1h: {session}"
        );
        assert!(idle <= expires, "{session}");
    }
    let by_id = |id: &str| sessions.iter().find(|s| s["id"] == id).unwrap();
    assert_eq!(by_id(&first.session_id)["device"], "Firefox 128 on Linux");
    assert_eq!(by_id(&first.session_id)["user_agent"], FIREFOX);
    assert!(
        by_id(&second.session_id)["device"]
            .as_str()
            .unwrap()
            .starts_with("Chrome 120 on Windows"),
        "{text}"
    );
    let activity: Vec<DateTime<Utc>> = sessions
        .iter()
        .map(|s| timestamp(&s["last_activity"], "last_activity"))
        .collect();
    assert!(
        activity.windows(2).all(|w| w[0] >= w[1]),
        "last_activity not descending: {activity:?}"
    );

    // Neither a token nor its hash appears in any list.
    let (_, _, devices) = get_json(
        &gateway,
        "/auth/user/devices",
        &second.token,
        &[("User-Agent", CHROME)],
    )
    .await;
    let (_, _, ips) = get_json(
        &gateway,
        "/auth/user/ips",
        &second.token,
        &[("User-Agent", CHROME)],
    )
    .await;
    for body in [text.clone(), devices.to_string(), ips.to_string()] {
        for login in [&first, &second, &third] {
            assert!(!body.contains(&login.token), "a raw token leaked: {body}");
            assert!(
                !body.contains(&sha256_hex(&login.token)),
                "a token hash leaked: {body}"
            );
        }
    }

    // Without a session: 401.
    let response = gateway
        .get_with(
            "/auth/user/sessions",
            None,
            &[("Accept", "application/json")],
        )
        .await;
    assert_json_error(response, 401, "unauthenticated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_list_shows_only_the_callers_own_sessions() {
    let gateway = options().start().await;
    let alice = account(&gateway).await;
    let bob = account(&gateway).await;
    let a = login(&gateway, &alice).await;
    let _b1 = login(&gateway, &bob).await;
    let _b2 = login(&gateway, &bob).await;
    let (text, list) = list_sessions(&gateway, &a.token, &[]).await;
    assert_eq!(session_ids(&list), vec![a.session_id.clone()], "{text}");
    assert_eq!(list["total_active_sessions"], 1, "{text}");
}

// ---------------------------------------------------------------------------------------------
// 4. Revocation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_one_of_my_sessions_ends_it_at_once_and_marks_it_revoked() {
    let gateway = options().start().await;
    let account = account(&gateway).await;
    let mine = login(&gateway, &account).await;
    let other = login(&gateway, &account).await;
    assert_session_status(&gateway, &other.token, 200, "before revocation").await;

    let response = delete(
        &gateway,
        &format!("/auth/user/sessions/{}", other.session_id),
        &mine.token,
    )
    .await;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(status, 204, "DELETE own other session: {body}");

    // The very next request with the revoked cookie: 401, on the proxy and on the API.
    assert_session_status(&gateway, &other.token, 401, "revoked session").await;
    assert_session_status(&gateway, &mine.token, 200, "the revoking session").await;

    let (_, list) = list_sessions(&gateway, &mine.token, &[]).await;
    assert_eq!(session_ids(&list), vec![mine.session_id.clone()]);

    let reason = wait_for_session_status(&gateway, &other.session_id, "revoked").await;
    assert!(reason.is_some(), "revoked session has no end_reason");
    assert_eq!(
        session_row(&gateway, &mine.session_id).await.unwrap().0,
        "active"
    );

    // Revoking it again: it is gone, so 404.
    let response = delete(
        &gateway,
        &format!("/auth/user/sessions/{}", other.session_id),
        &mine.token,
    )
    .await;
    assert_json_error(response, 404, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_another_users_session_is_404_and_leaves_it_alive() {
    let gateway = options().start().await;
    let alice = account(&gateway).await;
    let bob = account(&gateway).await;
    let a = login(&gateway, &alice).await;
    let b = login(&gateway, &bob).await;

    let response = delete(
        &gateway,
        &format!("/auth/user/sessions/{}", b.session_id),
        &a.token,
    )
    .await;
    assert_json_error(response, 404, "not_found").await;
    assert_session_status(
        &gateway,
        &b.token,
        200,
        "bob's session after alice's attempt",
    )
    .await;
    assert_session_status(&gateway, &a.token, 200, "alice's session").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        session_row(&gateway, &b.session_id).await.unwrap().0,
        "active"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_malformed_or_unknown_session_id_is_400_or_404() {
    let gateway = options().start().await;
    let account = account(&gateway).await;
    let mine = login(&gateway, &account).await;

    let response = delete(&gateway, "/auth/user/sessions/not-a-uuid", &mine.token).await;
    assert_json_error(response, 400, "invalid_request").await;

    let unknown = Uuid::new_v4();
    let response = delete(
        &gateway,
        &format!("/auth/user/sessions/{unknown}"),
        &mine.token,
    )
    .await;
    assert_json_error(response, 404, "not_found").await;

    // Without a session at all: 401.
    let response = gateway
        .request(
            "DELETE",
            &format!("/auth/user/sessions/{}", mine.session_id),
            None,
            &[("Accept", "application/json")],
            None,
        )
        .await;
    assert_json_error(response, 401, "unauthenticated").await;

    assert_session_status(&gateway, &mine.token, 200, "caller's session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_all_other_sessions_keeps_only_the_current_one() {
    let gateway = options().start().await;
    let account = account(&gateway).await;
    let bystander = self::account(&gateway).await;
    let theirs = login(&gateway, &bystander).await;
    let mine = login(&gateway, &account).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(login(&gateway, &account).await);
    }

    let response = delete(&gateway, "/auth/user/sessions", &mine.token).await;
    let status = response.status().as_u16();
    let body = json_body(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"revoked": 3}));

    assert_session_status(&gateway, &mine.token, 200, "the current session").await;
    for other in &others {
        assert_session_status(&gateway, &other.token, 401, "another session").await;
    }
    assert_session_status(&gateway, &theirs.token, 200, "another user's session").await;

    let (_, list) = list_sessions(&gateway, &mine.token, &[]).await;
    assert_eq!(session_ids(&list), vec![mine.session_id.clone()]);
    assert_eq!(list["total_active_sessions"], 1);

    for other in &others {
        wait_for_session_status(&gateway, &other.session_id, "revoked").await;
    }
    assert_eq!(
        session_row(&gateway, &mine.session_id).await.unwrap().0,
        "active"
    );
    assert_eq!(
        session_row(&gateway, &theirs.session_id).await.unwrap().0,
        "active"
    );

    // Nothing left to revoke.
    let response = delete(&gateway, "/auth/user/sessions", &mine.token).await;
    assert_eq!(json_body(response).await, json!({"revoked": 0}));
}

// ---------------------------------------------------------------------------------------------
// 5. Devices and IPs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_list_shows_which_devices_still_have_a_live_session() {
    let gateway = options().start().await;
    let account = account(&gateway).await;
    let firefox = login_ua(&gateway, &account, FIREFOX).await;
    let chrome = login_ua(&gateway, &account, CHROME).await;

    // Revoke the Firefox session from the Chrome one.
    let origin = gateway.public_origin();
    let response = gateway
        .request(
            "DELETE",
            &format!("/auth/user/sessions/{}", firefox.session_id),
            Some(&chrome.token),
            &api_headers(&origin, &[("User-Agent", CHROME)]),
            None,
        )
        .await;
    assert_eq!(response.status(), 204);

    let (status, text, body) = get_json(
        &gateway,
        "/auth/user/devices",
        &chrome.token,
        &[("User-Agent", CHROME)],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let devices = body["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("no devices array: {text}"));
    assert_eq!(devices.len(), 2, "{text}");
    for device in devices {
        for key in ["id", "label", "user_agent", "first_used", "last_used"] {
            assert!(
                device.get(key).is_some_and(|v| !v.is_null()),
                "device field {key} missing: {device}"
            );
        }
        timestamp(&device["first_used"], "first_used");
        timestamp(&device["last_used"], "last_used");
    }
    let ff = devices
        .iter()
        .find(|d| d["user_agent"] == FIREFOX)
        .unwrap_or_else(|| panic!("no Firefox device: {text}"));
    let ch = devices
        .iter()
        .find(|d| d["user_agent"] == CHROME)
        .unwrap_or_else(|| panic!("no Chrome device: {text}"));
    assert_eq!(ff["label"], "Firefox 128 on Linux", "{text}");
    assert_eq!(ff["active"], false, "{text}");
    assert_eq!(ff["active_sessions"], 0, "{text}");
    assert_eq!(ff["current"], false, "{text}");
    assert!(
        ch["label"]
            .as_str()
            .unwrap()
            .starts_with("Chrome 120 on Windows"),
        "{text}"
    );
    assert_eq!(ch["active"], true, "{text}");
    assert_eq!(ch["active_sessions"], 1, "{text}");
    assert_eq!(ch["current"], true, "{text}");

    // The session list's device_id points at the device list's entry.
    let (_, list) = list_sessions(&gateway, &chrome.token, &[("User-Agent", CHROME)]).await;
    assert_eq!(list["sessions"][0]["device_id"], ch["id"]);

    // Another Chrome session: still one device row, now with two live sessions.
    let _chrome2 = login_ua(&gateway, &account, CHROME).await;
    let (_, text, body) = get_json(
        &gateway,
        "/auth/user/devices",
        &chrome.token,
        &[("User-Agent", CHROME)],
    )
    .await;
    let devices = body["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{text}");
    let ch = devices.iter().find(|d| d["user_agent"] == CHROME).unwrap();
    assert_eq!(ch["active_sessions"], 2, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ip_list_shows_every_address_logged_in_from() {
    let gateway = options().trusted_proxies(&["127.0.0.1/32"]).start().await;
    let account = account(&gateway).await;
    let local = login(&gateway, &account).await;
    let remote = login_with(&gateway, &account, &[("X-Forwarded-For", "203.0.113.7")]).await;
    assert_eq!(remote.body["session"]["ip"], "203.0.113.7");

    let (status, text, body) = get_json(&gateway, "/auth/user/ips", &local.token, &[]).await;
    assert_eq!(status, 200, "{text}");
    let ips = body["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("no ips array: {text}"));
    assert_eq!(ips.len(), 2, "{text}");
    for ip in ips {
        for key in ["id", "address", "first_used", "last_used"] {
            assert!(
                ip.get(key).is_some_and(|v| !v.is_null()),
                "ip field {key} missing: {ip}"
            );
        }
        assert!(ip.get("location").is_some(), "no location key: {ip}");
        assert!(ip["current"].is_boolean(), "{ip}");
        let first = timestamp(&ip["first_used"], "first_used");
        let last = timestamp(&ip["last_used"], "last_used");
        assert!(last >= first, "{ip}");
    }
    let loopback = ips.iter().find(|i| i["address"] == "127.0.0.1").unwrap();
    let public = ips.iter().find(|i| i["address"] == "203.0.113.7").unwrap();
    assert_eq!(loopback["location"], "Local");
    assert_eq!(
        loopback["current"], true,
        "listed from the 127.0.0.1 session"
    );
    assert_eq!(
        public["location"],
        Value::Null,
        "no geoip source for a public address"
    );
    assert_eq!(public["current"], false);

    // From the other session, the other address is current.
    let (_, text, body) = get_json(
        &gateway,
        "/auth/user/ips",
        &remote.token,
        &[("X-Forwarded-For", "203.0.113.7")],
    )
    .await;
    let ips = body["ips"].as_array().unwrap();
    let current: Vec<&Value> = ips.iter().filter(|i| i["current"] == true).collect();
    assert_eq!(current.len(), 1, "{text}");
    assert_eq!(current[0]["address"], "203.0.113.7", "{text}");
}

// ---------------------------------------------------------------------------------------------
// 6. The per-user cap
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_logins_leave_exactly_five_live_sessions() {
    // The default cap (5) and policy (evict_oldest).
    let gateway = Arc::new(options().start().await);
    let account = Arc::new(account(&gateway).await);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let gateway = gateway.clone();
        let account = account.clone();
        tasks.spawn(async move { login(&gateway, &account).await });
    }
    let mut logins = Vec::new();
    while let Some(result) = tasks.join_next().await {
        logins.push(result.expect("login task"));
    }
    assert_eq!(logins.len(), 20);

    let mut live = Vec::new();
    for login in &logins {
        match get_status(&gateway, "/auth/user/me", &login.token, None).await {
            200 => live.push(login),
            401 => {}
            other => panic!("unexpected status {other} for a login's cookie"),
        }
    }
    assert_eq!(live.len(), 5, "live sessions after 20 concurrent logins");

    let (text, list) = list_sessions(&gateway, &live[0].token, &[]).await;
    assert_eq!(list["total_active_sessions"], 5, "{text}");
    let listed: BTreeSet<String> = session_ids(&list).into_iter().collect();
    let expected: BTreeSet<String> = live.iter().map(|l| l.session_id.clone()).collect();
    assert_eq!(
        listed, expected,
        "the list shows exactly the working sessions"
    );

    // Postgres agrees once the evictions are written behind: 5 active, 15 evicted.
    let deadline = Instant::now() + WRITE_BEHIND;
    loop {
        let counts: Vec<(String, Option<String>, i64)> = gateway
            .query(
                "SELECT status, end_reason, count(*) FROM sessions WHERE user_id = $1 \
                 GROUP BY status, end_reason ORDER BY status",
                &[uuid(&account.id).into()],
            )
            .await
            .iter()
            .map(|row| (row.text(0), row.opt_text(1), row.int(2)))
            .collect();
        let expected = vec![
            ("active".to_string(), None, 5),
            ("revoked".to_string(), Some("evicted".to_string()), 15),
        ];
        if counts == expected {
            break;
        }
        if Instant::now() >= deadline {
            panic!("session records never settled to 5 active + 15 evicted: {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_beyond_the_cap_evicts_the_least_recently_active_session() {
    let gateway = options()
        .max_sessions_per_user(5, "evict_oldest")
        .start()
        .await;
    let account = account(&gateway).await;
    let mut logins = Vec::new();
    for _ in 0..5 {
        logins.push(login(&gateway, &account).await);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let sixth = login(&gateway, &account).await;

    assert_session_status(
        &gateway,
        &logins[0].token,
        401,
        "the first (least recently active) session",
    )
    .await;
    for login in logins.iter().skip(1).chain([&sixth]) {
        assert_session_status(&gateway, &login.token, 200, "a newer session").await;
    }
    let reason = wait_for_session_status(&gateway, &logins[0].session_id, "revoked").await;
    assert_eq!(reason.as_deref(), Some("evicted"));
    let events = wait_for_event(&gateway, "session_evicted", Some(&account.id)).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, Some(uuid(&logins[0].session_id)), "{events:?}");

    // Least recently *active*, not oldest: the checks above touched sessions 2..6 in order, so
    // use session 2 again; now session 3 is the least recently active and the next login
    // evicts it, not session 2.
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        get_status(&gateway, "/app/x", &logins[1].token, None).await,
        200
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    let seventh = login(&gateway, &account).await;
    assert_session_status(
        &gateway,
        &logins[2].token,
        401,
        "session 3 (least recently active)",
    )
    .await;
    for login in [&logins[1], &logins[3], &logins[4], &sixth, &seventh] {
        assert_session_status(&gateway, &login.token, 200, "a recently active session").await;
    }
    let reason = wait_for_session_status(&gateway, &logins[2].session_id, "revoked").await;
    assert_eq!(reason.as_deref(), Some("evicted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_reject_policy_a_login_beyond_the_cap_is_409_and_nothing_is_evicted() {
    let gateway = options().max_sessions_per_user(2, "reject").start().await;
    let account = account(&gateway).await;
    let first = login(&gateway, &account).await;
    let second = login(&gateway, &account).await;

    let response = gateway
        .post_json(
            "/auth/login",
            &json!({"email": account.email, "password": account.password}),
            None,
        )
        .await;
    assert!(
        session_cookie(&response).is_none_or(|c| c.is_clearing()),
        "a refused login must not set a session cookie"
    );
    assert_json_error(response, 409, "session_limit_reached").await;

    assert_session_status(&gateway, &first.token, 200, "first session").await;
    assert_session_status(&gateway, &second.token, 200, "second session").await;
    let (_, list) = list_sessions(&gateway, &first.token, &[]).await;
    assert_eq!(list["total_active_sessions"], 2);
    let rows = gateway
        .count(
            "SELECT count(*) FROM sessions WHERE user_id = $1",
            &[uuid(&account.id).into()],
        )
        .await;
    assert_eq!(rows, 2, "a refused login leaves no session record");

    // After a logout there is room again.
    let origin = gateway.public_origin();
    let response = gateway
        .request(
            "POST",
            "/auth/logout",
            Some(&second.token),
            &api_headers(&origin, &[]),
            Some(("application/json", b"{}".to_vec())),
        )
        .await;
    assert_eq!(response.status(), 204);
    let third = login(&gateway, &account).await;
    assert_session_status(&gateway, &third.token, 200, "a login after a logout").await;
}

// ---------------------------------------------------------------------------------------------
// 7. Password change
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_password_revokes_every_other_session() {
    let gateway = options().start().await;
    let account = account(&gateway).await;
    let current = login(&gateway, &account).await;
    let other1 = login(&gateway, &account).await;
    let other2 = login(&gateway, &account).await;
    let new_password = strong_password();

    // Wrong current password: 400, nothing revoked.
    let response =
        change_password(&gateway, &current.token, "not-my-password", &new_password).await;
    assert_json_error(response, 400, "invalid_request").await;
    assert_session_status(&gateway, &other1.token, 200, "after a failed change").await;

    // Too short a new password: 400 naming new_password.
    let response = change_password(&gateway, &current.token, &account.password, "short").await;
    let error = assert_json_error(response, 400, "invalid_request").await;
    assert!(
        error["message"].as_str().unwrap().contains("new_password"),
        "message should name new_password: {error}"
    );
    // Missing field.
    let origin = gateway.public_origin();
    let response = gateway
        .request(
            "POST",
            "/auth/user/password",
            Some(&current.token),
            &api_headers(&origin, &[]),
            Some((
                "application/json",
                serde_json::to_vec(&json!({"current_password": account.password})).unwrap(),
            )),
        )
        .await;
    let error = assert_json_error(response, 400, "invalid_request").await;
    assert!(
        error["message"].as_str().unwrap().contains("new_password"),
        "{error}"
    );
    assert_session_status(&gateway, &other2.token, 200, "after rejected changes").await;

    // The right one: 204; the other sessions end, this one stays.
    let response =
        change_password(&gateway, &current.token, &account.password, &new_password).await;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(status, 204, "{body}");
    assert_session_status(&gateway, &current.token, 200, "the session that changed it").await;
    assert_session_status(&gateway, &other1.token, 401, "another session").await;
    assert_session_status(&gateway, &other2.token, 401, "another session").await;

    // Old password refused, new one accepted.
    let response = gateway
        .post_json(
            "/auth/login",
            &json!({"email": account.email, "password": account.password}),
            None,
        )
        .await;
    assert_json_error(response, 401, "invalid_credentials").await;
    let renewed = Account {
        id: account.id.clone(),
        email: account.email.clone(),
        password: new_password.clone(),
    };
    let fresh = login(&gateway, &renewed).await;
    assert_session_status(&gateway, &fresh.token, 200, "a login with the new password").await;

    for other in [&other1, &other2] {
        wait_for_session_status(&gateway, &other.session_id, "revoked").await;
    }
    let events = wait_for_event(&gateway, "password_changed", Some(&account.id)).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, Some(uuid(&current.session_id)));
    assert_eq!(
        session_row(&gateway, &current.session_id).await.unwrap().0,
        "active"
    );

    // Without a session: 401.
    let response = gateway
        .request(
            "POST",
            "/auth/user/password",
            None,
            &api_headers(&origin, &[]),
            Some((
                "application/json",
                serde_json::to_vec(
                    &json!({"current_password": new_password, "new_password": strong_password()}),
                )
                .unwrap(),
            )),
        )
        .await;
    assert_json_error(response, 401, "unauthenticated").await;
}

// ---------------------------------------------------------------------------------------------
// 8. Write-behind activity
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_activity_and_device_last_seen_reach_postgres_within_the_flush_interval() {
    let gateway = options()
        .session_setting("activity_flush_interval = \"1s\"")
        .start()
        .await;
    let account = account(&gateway).await;
    let session = login_ua(&gateway, &account, FIREFOX).await;
    // Let time pass so the activity is clearly later than the login.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        assert_eq!(
            get_status(&gateway, "/app/work", &session.token, Some(FIREFOX)).await,
            200
        );
    }
    let used_at = Utc::now();

    let deadline = Instant::now() + WRITE_BEHIND;
    loop {
        let row = gateway
            .query_one(
                "SELECT s.created_at, s.last_activity, d.first_seen, d.last_seen, \
                        i.first_seen, i.last_seen \
                 FROM sessions s JOIN devices d ON d.id = s.device_id \
                 JOIN ip_addresses i ON i.id = s.ip_id WHERE s.id = $1",
                &[uuid(&session.session_id).into()],
            )
            .await;
        let (created, last, d_first, d_last, i_first, i_last): ActivityStamps = (
            row.time(0),
            row.time(1),
            row.time(2),
            row.time(3),
            row.time(4),
            row.time(5),
        );
        let second = chrono::Duration::seconds(1);
        let done =
            last >= created + second && d_last >= d_first + second && i_last >= i_first + second;
        if done {
            assert!(
                last <= used_at + chrono::Duration::seconds(5),
                "last_activity {last} is in the future"
            );
            break;
        }
        if Instant::now() >= deadline {
            panic!(
                "activity not flushed within {WRITE_BEHIND:?}: session created {created} last_activity {last}; \
                 device first {d_first} last {d_last}; ip first {i_first} last {i_last}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_flush_interval_activity_is_not_written_on_the_request_path() {
    let gateway = options().start().await;
    let account = account(&gateway).await;
    let session = login(&gateway, &account).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        assert_eq!(
            get_status(&gateway, "/app/work", &session.token, None).await,
            200
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let row = gateway
        .query_one(
            "SELECT created_at, last_activity FROM sessions WHERE id = $1",
            &[uuid(&session.session_id).into()],
        )
        .await;
    let (created, last) = (row.time("created_at"), row.time("last_activity"));
    assert_eq!(
        last, created,
        "last_activity was written within 3s although activity_flush_interval is 60s"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. The expiry job
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_marked_expired_by_the_expiry_job() {
    let gateway = options()
        .idle_timeout("2s")
        .session_setting("expiry_check_interval = \"1s\"")
        .start()
        .await;
    let account = account(&gateway).await;
    let session = login(&gateway, &account).await;
    assert_eq!(
        session_row(&gateway, &session.session_id).await.unwrap().0,
        "active"
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let reason = loop {
        let row = session_row(&gateway, &session.session_id).await;
        if let Some((status, reason)) = &row {
            if status == "expired" {
                break reason.clone();
            }
            assert_eq!(status, "active", "an idle session may only become expired");
        }
        if Instant::now() >= deadline {
            panic!("idle session never marked expired: {row:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(reason.as_deref(), Some("idle_timeout"));
    let ended = gateway
        .query_one(
            "SELECT ended_at FROM sessions WHERE id = $1",
            &[uuid(&session.session_id).into()],
        )
        .await
        .opt_time("ended_at");
    assert!(ended.is_some(), "an expired record has ended_at");
    assert_eq!(
        get_status(&gateway, "/auth/user/me", &session.token, None).await,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_session_is_not_marked_expired() {
    let gateway = options()
        .idle_timeout("2s")
        .session_setting("expiry_check_interval = \"1s\"")
        .start()
        .await;
    let account = account(&gateway).await;
    let session = login(&gateway, &account).await;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert_eq!(
            get_status(&gateway, "/app/x", &session.token, None).await,
            200
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        session_row(&gateway, &session.session_id).await.unwrap().0,
        "active"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_session_records_past_retention_are_purged_and_active_ones_kept() {
    let gateway = options()
        .idle_timeout("2s")
        .session_setting("expiry_check_interval = \"1s\"")
        .session_setting("record_retention = \"1s\"")
        .start()
        .await;
    let account = account(&gateway).await;
    let kept = login(&gateway, &account).await;
    let idle = login(&gateway, &account).await;
    let logged_out = login(&gateway, &account).await;
    let origin = gateway.public_origin();
    let response = gateway
        .request(
            "POST",
            "/auth/logout",
            Some(&logged_out.token),
            &api_headers(&origin, &[]),
            Some(("application/json", b"{}".to_vec())),
        )
        .await;
    assert_eq!(response.status(), 204);

    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        // Keep one session busy the whole time: an active record is never purged.
        assert_eq!(get_status(&gateway, "/app/x", &kept.token, None).await, 200);
        let idle_row = session_row(&gateway, &idle.session_id).await;
        let out_row = session_row(&gateway, &logged_out.session_id).await;
        if idle_row.is_none() && out_row.is_none() {
            break;
        }
        if Instant::now() >= deadline {
            panic!("ended records not purged: idle {idle_row:?}, logged out {out_row:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        session_row(&gateway, &kept.session_id)
            .await
            .map(|r| r.0)
            .as_deref(),
        Some("active"),
        "the busy session's record must survive the purge"
    );
    // The user's devices and IPs outlive their sessions.
    let (_, text, body) = get_json(&gateway, "/auth/user/devices", &kept.token, &[]).await;
    assert_eq!(body["devices"].as_array().map(Vec::len), Some(1), "{text}");
}

// ---------------------------------------------------------------------------------------------
// 10. Audit trail and anomalies
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_records_the_session_lifecycle() {
    let gateway = options()
        .max_sessions_per_user(2, "evict_oldest")
        .start()
        .await;
    let account = account(&gateway).await;
    let user = Some(account.id.as_str());
    wait_for_event(&gateway, "register", user).await;

    // login_failed
    let response = gateway
        .post_json(
            "/auth/login",
            &json!({"email": account.email, "password": "wrong-password-123"}),
            None,
        )
        .await;
    assert_eq!(response.status(), 401);
    let failed = wait_for_event(&gateway, "login_failed", user).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].1.as_deref(), Some("127.0.0.1"), "event ip");

    // login_ok, with the session id and user agent
    let a = login_ua(&gateway, &account, FIREFOX).await;
    let ok = wait_for_event(&gateway, "login_ok", user).await;
    assert_eq!(ok[0].0, Some(uuid(&a.session_id)));
    assert_eq!(ok[0].2.as_deref(), Some(FIREFOX));

    // revoke
    let b = login(&gateway, &account).await;
    let response = delete(
        &gateway,
        &format!("/auth/user/sessions/{}", a.session_id),
        &b.token,
    )
    .await;
    assert_eq!(response.status(), 204);
    let revoked = wait_for_event(&gateway, "revoke", user).await;
    assert_eq!(revoked[0].0, Some(uuid(&a.session_id)));

    // session_evicted: b and c live, d evicts b (cap 2)
    let c = login(&gateway, &account).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(get_status(&gateway, "/app/x", &c.token, None).await, 200);
    let d = login(&gateway, &account).await;
    let evicted = wait_for_event(&gateway, "session_evicted", user).await;
    assert_eq!(evicted[0].0, Some(uuid(&b.session_id)));

    // password_changed
    let response = change_password(&gateway, &d.token, &account.password, &strong_password()).await;
    assert_eq!(response.status(), 204);
    wait_for_event(&gateway, "password_changed", user).await;

    // logout
    let origin = gateway.public_origin();
    let response = gateway
        .request(
            "POST",
            "/auth/logout",
            Some(&d.token),
            &api_headers(&origin, &[]),
            Some(("application/json", b"{}".to_vec())),
        )
        .await;
    assert_eq!(response.status(), 204);
    let logout = wait_for_event(&gateway, "logout", user).await;
    assert_eq!(logout[0].0, Some(uuid(&d.session_id)));
    assert_eq!(
        wait_for_session_status(&gateway, &d.session_id, "logged_out")
            .await
            .as_deref(),
        Some("logout")
    );

    // A failed login for an unknown email is audited too, without a user.
    let response = gateway
        .post_json(
            "/auth/login",
            &json!({"email": unique_email(), "password": "wrong-password-123"}),
            None,
        )
        .await;
    assert_eq!(response.status(), 401);
    let deadline = Instant::now() + WRITE_BEHIND;
    while event_count(&gateway, "login_failed", None).await < 2 {
        assert!(
            Instant::now() < deadline,
            "unknown-email login_failed not audited"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // No event anywhere carries a token.
    let dump = gateway.database_dump().await;
    for login in [&a, &b, &c, &d] {
        for (table, row) in &dump {
            if table == "auth_events" {
                assert!(
                    !row.contains(&login.token),
                    "token in an audit event: {row}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_used_from_another_ip_is_audited_once_per_address_and_counted() {
    let gateway = options().trusted_proxies(&["127.0.0.1/32"]).start().await;
    let account = account(&gateway).await;
    let session = login(&gateway, &account).await;
    assert_eq!(session.body["session"]["ip"], "127.0.0.1");
    let before = metric(
        &gateway,
        "authgate_session_anomalies_total",
        &[("kind", "ip_changed")],
    )
    .await;

    let response = gateway
        .get_with(
            "/app/x",
            Some(&session.token),
            &[("X-Forwarded-For", "203.0.113.7")],
        )
        .await;
    assert_eq!(response.status(), 200, "a roaming session still works");

    let events = wait_for_event(&gateway, "session_ip_changed", Some(&account.id)).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (session_id, ip, _, detail) = &events[0];
    assert_eq!(*session_id, Some(uuid(&session.session_id)));
    assert_eq!(
        ip.as_deref(),
        Some("203.0.113.7"),
        "the event records the new address"
    );
    assert!(
        detail.to_string().contains("127.0.0.1"),
        "detail names the login address: {detail}"
    );
    let after = metric(
        &gateway,
        "authgate_session_anomalies_total",
        &[("kind", "ip_changed")],
    )
    .await;
    assert!(
        after >= before + 1.0,
        "ip_changed metric {before} -> {after}"
    );

    // The same new address again is not a new anomaly; no UA anomaly either.
    for _ in 0..3 {
        let response = gateway
            .get_with(
                "/app/x",
                Some(&session.token),
                &[("X-Forwarded-For", "203.0.113.7")],
            )
            .await;
        assert_eq!(response.status(), 200);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        event_count(&gateway, "session_ip_changed", Some(&account.id)).await,
        1
    );
    assert_eq!(
        event_count(&gateway, "session_ua_changed", Some(&account.id)).await,
        0
    );
    // And a request from the login address raises nothing.
    assert_eq!(
        get_status(&gateway, "/app/x", &session.token, None).await,
        200
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        event_count(&gateway, "session_ip_changed", Some(&account.id)).await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_used_with_another_user_agent_is_audited_and_counted() {
    let gateway = options().start().await;
    let account = account(&gateway).await;
    let session = login_ua(&gateway, &account, FIREFOX).await;
    // Same agent: nothing to report.
    assert_eq!(
        get_status(&gateway, "/app/x", &session.token, Some(FIREFOX)).await,
        200
    );
    let before = metric(
        &gateway,
        "authgate_session_anomalies_total",
        &[("kind", "ua_changed")],
    )
    .await;

    assert_eq!(
        get_status(&gateway, "/app/x", &session.token, Some(CHROME)).await,
        200,
        "without bind_session_to_user_agent a changed agent is only audited"
    );
    let events = wait_for_event(&gateway, "session_ua_changed", Some(&account.id)).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, Some(uuid(&session.session_id)));
    assert_eq!(
        events[0].2.as_deref(),
        Some(CHROME),
        "the event records the new agent"
    );
    let after = metric(
        &gateway,
        "authgate_session_anomalies_total",
        &[("kind", "ua_changed")],
    )
    .await;
    assert!(
        after >= before + 1.0,
        "ua_changed metric {before} -> {after}"
    );
    assert_eq!(
        get_status(&gateway, "/app/x", &session.token, Some(FIREFOX)).await,
        200
    );
    assert_eq!(
        event_count(&gateway, "session_ip_changed", Some(&account.id)).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_bind_session_to_user_agent_another_agent_revokes_the_session() {
    let gateway = options()
        .session_setting("bind_session_to_user_agent = true")
        .start()
        .await;
    let account = account(&gateway).await;
    let session = login_ua(&gateway, &account, FIREFOX).await;
    let bystander = login_ua(&gateway, &account, FIREFOX).await;
    assert_eq!(
        get_status(&gateway, "/app/x", &session.token, Some(FIREFOX)).await,
        200
    );
    let before = metric(
        &gateway,
        "authgate_sessions_ended_total",
        &[("reason", "revoked")],
    )
    .await;

    assert_eq!(
        get_status(&gateway, "/app/x", &session.token, Some(CHROME)).await,
        401,
        "a bound session used with another agent"
    );
    assert_eq!(
        get_status(&gateway, "/app/x", &session.token, Some(FIREFOX)).await,
        401,
        "the session is gone, even with the original agent"
    );
    assert_eq!(
        get_status(&gateway, "/auth/user/me", &session.token, Some(FIREFOX)).await,
        401
    );
    assert_eq!(
        get_status(&gateway, "/app/x", &bystander.token, Some(FIREFOX)).await,
        200,
        "other sessions are untouched"
    );
    wait_for_session_status(&gateway, &session.session_id, "revoked").await;
    let after = metric(
        &gateway,
        "authgate_sessions_ended_total",
        &[("reason", "revoked")],
    )
    .await;
    assert!(
        after >= before + 1.0,
        "ended{{revoked}} {before} -> {after}"
    );
    let ua = metric(
        &gateway,
        "authgate_session_anomalies_total",
        &[("kind", "ua_changed")],
    )
    .await;
    assert!(ua >= 1.0, "ua_changed metric {ua}");
    let (_, list) = list_sessions(&gateway, &bystander.token, &[("User-Agent", FIREFOX)]).await;
    assert_eq!(session_ids(&list), vec![bystander.session_id.clone()]);
}

// ---------------------------------------------------------------------------------------------
// 11. Metrics
// ---------------------------------------------------------------------------------------------

async fn ended(gateway: &Gateway, reason: &str) -> f64 {
    metric(
        gateway,
        "authgate_sessions_ended_total",
        &[("reason", reason)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_metrics_count_creations_and_every_kind_of_ending() {
    let gateway = options()
        .idle_timeout("3s")
        .max_sessions_per_user(2, "evict_oldest")
        .session_setting("expiry_check_interval = \"1s\"")
        .start()
        .await;
    const CREATED: &str = "authgate_sessions_created_total";
    const ENDED: &str = "authgate_sessions_ended_total";
    let created0 = metric(&gateway, CREATED, &[]).await;
    let (revoked0, evicted0, logout0, expired0) = (
        ended(&gateway, "revoked").await,
        ended(&gateway, "evicted").await,
        ended(&gateway, "logout").await,
        ended(&gateway, "expired").await,
    );

    let account = account(&gateway).await;
    let s1 = login(&gateway, &account).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let s2 = login(&gateway, &account).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let s3 = login(&gateway, &account).await; // evicts s1
    assert_eq!(
        get_status(&gateway, "/auth/user/me", &s1.token, None).await,
        401
    );
    let origin = gateway.public_origin();
    let response = gateway
        .request(
            "POST",
            "/auth/logout",
            Some(&s3.token),
            &api_headers(&origin, &[]),
            Some(("application/json", b"{}".to_vec())),
        )
        .await;
    assert_eq!(response.status(), 204);
    let s4 = login(&gateway, &account).await; // s2 + s4: no eviction
    let response = delete(
        &gateway,
        &format!("/auth/user/sessions/{}", s2.session_id),
        &s4.token,
    )
    .await;
    assert_eq!(response.status(), 204);

    assert_eq!(
        metric(&gateway, CREATED, &[]).await - created0,
        4.0,
        "created"
    );
    assert_eq!(
        ended(&gateway, "evicted").await - evicted0,
        1.0,
        "ended{{evicted}}"
    );
    assert_eq!(
        ended(&gateway, "logout").await - logout0,
        1.0,
        "ended{{logout}}"
    );
    assert_eq!(
        ended(&gateway, "revoked").await - revoked0,
        1.0,
        "ended{{revoked}}"
    );

    // s4 idles out; the expiry job counts it.
    wait_for_metric(
        &gateway,
        ENDED,
        &[("reason", "expired")],
        |v| v >= expired0 + 1.0,
        "one more expired",
    )
    .await;
    assert_eq!(
        wait_for_session_status(&gateway, &s4.session_id, "expired")
            .await
            .as_deref(),
        Some("idle_timeout")
    );
    // Whether the endings above can be re-labelled (and counted twice) by an expiry pass that
    // races their write-behind is the subject of
    // `evicted_sessions_are_never_recorded_as_expired_by_a_concurrent_expiry_pass`; with a 1s
    // interval and three endings that race is rare, so it is not asserted here.
    wait_for_metric(&gateway, "authgate_active_sessions", &[], |v| v == 0.0, "0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_sessions_gauge_follows_the_records_after_each_expiry_pass() {
    let gateway = options()
        .session_setting("expiry_check_interval = \"1s\"")
        .start()
        .await;
    let alice = account(&gateway).await;
    let bob = account(&gateway).await;
    let a1 = login(&gateway, &alice).await;
    let _a2 = login(&gateway, &alice).await;
    let _b1 = login(&gateway, &bob).await;
    wait_for_metric(&gateway, "authgate_active_sessions", &[], |v| v == 3.0, "3").await;

    let origin = gateway.public_origin();
    let response = gateway
        .request(
            "POST",
            "/auth/logout",
            Some(&a1.token),
            &api_headers(&origin, &[]),
            Some(("application/json", b"{}".to_vec())),
        )
        .await;
    assert_eq!(response.status(), 204);
    wait_for_metric(&gateway, "authgate_active_sessions", &[], |v| v == 2.0, "2").await;
}

// ---------------------------------------------------------------------------------------------
// 12. Location
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cdn_country_header_from_a_trusted_proxy_is_the_location() {
    let gateway = options()
        .trusted_proxies(&["127.0.0.1/32"])
        .geoip_country_header("CF-IPCountry")
        .start()
        .await;
    let account = account(&gateway).await;
    let session = login_with(
        &gateway,
        &account,
        &[("X-Forwarded-For", "198.51.100.9"), ("CF-IPCountry", "DE")],
    )
    .await;
    assert_eq!(session.body["session"]["ip"], "198.51.100.9");
    assert_eq!(session.body["session"]["location"], "DE");

    let headers = [("X-Forwarded-For", "198.51.100.9")];
    let (_, text, body) = get_json(&gateway, "/auth/user/ips", &session.token, &headers).await;
    let ips = body["ips"].as_array().unwrap_or_else(|| panic!("{text}"));
    assert_eq!(ips.len(), 1, "{text}");
    assert_eq!(ips[0]["address"], "198.51.100.9", "{text}");
    assert_eq!(ips[0]["location"], "DE", "{text}");
    let (text, list) = list_sessions(&gateway, &session.token, &headers).await;
    assert_eq!(list["sessions"][0]["location"], "DE", "{text}");

    // "XX" (unknown) is no location: a public address with nothing else known is null.
    let other = login_with(
        &gateway,
        &account,
        &[("X-Forwarded-For", "203.0.113.7"), ("CF-IPCountry", "XX")],
    )
    .await;
    assert_eq!(other.body["session"]["location"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trusted_proxies_forwarding_and_country_headers_are_ignored() {
    let gateway = options().geoip_country_header("CF-IPCountry").start().await;
    let account = account(&gateway).await;
    let session = login_with(
        &gateway,
        &account,
        &[("X-Forwarded-For", "198.51.100.9"), ("CF-IPCountry", "DE")],
    )
    .await;
    assert_eq!(session.body["session"]["ip"], "127.0.0.1");
    assert_eq!(session.body["session"]["location"], "Local");
    let (_, text, body) = get_json(&gateway, "/auth/user/ips", &session.token, &[]).await;
    let ips = body["ips"].as_array().unwrap_or_else(|| panic!("{text}"));
    assert_eq!(ips.len(), 1, "{text}");
    assert_eq!(ips[0]["address"], "127.0.0.1", "{text}");
    assert_eq!(ips[0]["location"], "Local", "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_address_without_any_geoip_source_has_no_location() {
    let gateway = options().trusted_proxies(&["127.0.0.1/32"]).start().await;
    let account = account(&gateway).await;
    let session = login_with(
        &gateway,
        &account,
        // No country_header configured: the header means nothing.
        &[("X-Forwarded-For", "198.51.100.9"), ("CF-IPCountry", "DE")],
    )
    .await;
    assert_eq!(session.body["session"]["ip"], "198.51.100.9");
    assert_eq!(session.body["session"]["location"], Value::Null);
    let (_, text, body) = get_json(
        &gateway,
        "/auth/user/ips",
        &session.token,
        &[("X-Forwarded-For", "198.51.100.9")],
    )
    .await;
    assert_eq!(body["ips"][0]["location"], Value::Null, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maxmind_database_gives_city_and_country() {
    let database = fixture("geo-test.mmdb");
    assert!(
        std::path::Path::new(&database).is_file(),
        "missing fixture {database}; regenerate with tests/fixtures/make_geo_mmdb.py"
    );
    let gateway = options()
        .trusted_proxies(&["127.0.0.1/32"])
        .geoip_database(&database)
        .geoip_country_header("CF-IPCountry")
        .start()
        .await;
    let account = account(&gateway).await;

    // In the database: its answer wins over a CDN header.
    let berlin = login_with(
        &gateway,
        &account,
        &[("X-Forwarded-For", "198.51.100.9"), ("CF-IPCountry", "FR")],
    )
    .await;
    assert_eq!(berlin.body["session"]["ip"], "198.51.100.9");
    assert_eq!(berlin.body["session"]["location"], "Berlin, Germany");

    // Not in the database: the next sources apply.
    let elsewhere = login_with(&gateway, &account, &[("X-Forwarded-For", "203.0.113.7")]).await;
    assert_eq!(elsewhere.body["session"]["location"], Value::Null);
    let local = login(&gateway, &account).await;
    assert_eq!(local.body["session"]["location"], "Local");

    let (_, text, body) = get_json(&gateway, "/auth/user/ips", &local.token, &[]).await;
    let ips = body["ips"].as_array().unwrap_or_else(|| panic!("{text}"));
    assert_eq!(ips.len(), 3, "{text}");
    let location_of = |address: &str| {
        ips.iter()
            .find(|i| i["address"] == address)
            .unwrap_or_else(|| panic!("{address} not listed: {text}"))["location"]
            .clone()
    };
    assert_eq!(location_of("198.51.100.9"), "Berlin, Germany");
    assert_eq!(location_of("203.0.113.7"), Value::Null);
    assert_eq!(location_of("127.0.0.1"), "Local");
}

// ---------------------------------------------------------------------------------------------
// Races between request-path endings and the expiry job
// ---------------------------------------------------------------------------------------------

/// An evicted session is deleted from Redis at login and marked `revoked`/`evicted` in
/// Postgres a moment later (written behind). An expiry pass that runs in between sees an
/// `active` record without a live session and must not record it as `expired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_sessions_are_never_recorded_as_expired_by_a_concurrent_expiry_pass() {
    let gateway = options()
        .max_sessions_per_user(1, "evict_oldest")
        .session_setting("expiry_check_interval = \"100ms\"")
        .start()
        .await;
    let account = account(&gateway).await;
    let mut logins = Vec::new();
    for _ in 0..40 {
        logins.push(login(&gateway, &account).await);
    }
    let last = logins.last().unwrap().session_id.clone();

    // Wait until every earlier record has ended, however it was labelled.
    let deadline = Instant::now() + WRITE_BEHIND;
    let rows = loop {
        let rows: Vec<(Uuid, String, Option<String>)> = gateway
            .query(
                "SELECT id, status, end_reason FROM sessions WHERE user_id = $1 AND id <> $2",
                &[uuid(&account.id).into(), uuid(&last).into()],
            )
            .await
            .iter()
            .map(|row| {
                (
                    row.uuid("id"),
                    row.text("status"),
                    row.opt_text("end_reason"),
                )
            })
            .collect();
        if rows.len() == 39 && rows.iter().all(|(_, status, _)| status != "active") {
            break rows;
        }
        if Instant::now() >= deadline {
            panic!("evicted records never ended: {rows:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mislabelled: Vec<_> = rows
        .iter()
        .filter(|(_, status, reason)| status != "revoked" || reason.as_deref() != Some("evicted"))
        .collect();
    assert!(
        mislabelled.is_empty(),
        "{} of 39 evicted sessions recorded otherwise: {mislabelled:?}",
        mislabelled.len()
    );
    assert_eq!(
        ended(&gateway, "expired").await,
        0.0,
        "no session expired, yet authgate_sessions_ended_total{{reason=\"expired\"}} counted some"
    );
    assert_eq!(ended(&gateway, "evicted").await, 39.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_its_absolute_lifetime_is_recorded_as_absolute_timeout() {
    let gateway = options()
        .idle_timeout("3s")
        .absolute_timeout("3s")
        .session_setting("expiry_check_interval = \"1s\"")
        .start()
        .await;
    let account = account(&gateway).await;
    let session = login(&gateway, &account).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let reason = loop {
        // Busy all along: only the absolute lifetime can end it.
        let status = get_status(&gateway, "/app/x", &session.token, None).await;
        let row = session_row(&gateway, &session.session_id).await;
        if let Some((state, reason)) = &row {
            if state == "expired" {
                break reason.clone();
            }
        }
        if Instant::now() >= deadline {
            panic!("session never marked expired: {row:?} (last status {status})");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(reason.as_deref(), Some("absolute_timeout"));
    assert_eq!(
        get_status(&gateway, "/app/x", &session.token, None).await,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_my_own_current_session_by_id_signs_me_out() {
    let gateway = options().start().await;
    let account = account(&gateway).await;
    let mine = login(&gateway, &account).await;
    let other = login(&gateway, &account).await;
    let response = delete(
        &gateway,
        &format!("/auth/user/sessions/{}", mine.session_id),
        &mine.token,
    )
    .await;
    assert_eq!(response.status(), 204);
    let cookie = session_cookie(&response).expect("revoking the current session clears the cookie");
    assert!(cookie.is_clearing(), "{}", cookie.raw);
    assert_session_status(&gateway, &mine.token, 401, "the revoked current session").await;
    assert_session_status(&gateway, &other.token, 200, "the other session").await;
    wait_for_session_status(&gateway, &mine.session_id, "revoked").await;
}
