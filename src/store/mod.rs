//! Durable records: users, session records, the audit trail. The `/auth` handlers talk to the
//! [`RecordStore`] trait and never see SQL; `postgres` implements it for a shared server and
//! `sqlite` for the embedded mode (one file, one process). [`DatabaseUrl`] picks one, once, at
//! start-up from `storage.database_url`; nothing else in the gateway knows which it got.
//!
//! Nothing on the proxied hot path calls this store.

pub mod behind;
pub mod postgres;
mod sql;
pub mod sqlite;

use std::net::IpAddr;
use std::path::PathBuf;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

pub use crate::model::StoreError;
use crate::model::TokenHash;

/// Which database holds the records, read from `storage.database_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `postgres://…` or `postgresql://…`, handed to sqlx as it is.
    Postgres(String),
    /// `sqlite://PATH`: `sqlite://authgate.db` is relative to the working directory,
    /// `sqlite:///var/lib/authgate/authgate.db` is absolute.
    Sqlite(PathBuf),
}

impl DatabaseUrl {
    /// Recognises the scheme; the message says what is accepted (the caller names the key).
    pub fn parse(url: &str) -> Result<DatabaseUrl, String> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_string()));
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            // The path is taken literally. sqlx's own URL options (`?mode=…`, `:memory:`) are
            // refused rather than half-honoured: authgate sets the pragmas that keep the file
            // safe itself, and an in-memory database would lose every account on restart.
            if path.is_empty() || path.ends_with('/') {
                return Err(format!(
                    "\"{url}\" names no file; write sqlite://authgate.db (relative to the working \
                     directory) or sqlite:///var/lib/authgate/authgate.db (absolute)"
                ));
            }
            if path.contains('?') || path.starts_with(':') {
                return Err(format!(
                    "\"{url}\": sqlite:// takes a file path only (no ?options, no :memory:)"
                ));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        Err(
            "must be a postgres:// (or postgresql://) URL, or sqlite://PATH for the embedded \
             mode (e.g. sqlite://authgate.db or sqlite:///var/lib/authgate/authgate.db)"
                .to_string(),
        )
    }

    /// The backend's name, as logs, `/readyz` and the metrics' `store` label give it.
    pub fn backend(&self) -> &'static str {
        match self {
            DatabaseUrl::Postgres(_) => "postgres",
            DatabaseUrl::Sqlite(_) => "sqlite",
        }
    }
}

/// A user as the API shows it: never the password hash.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub username: Option<String>,
    pub full_name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_login: Option<DateTime<Utc>>,
}

/// A user with what login needs to check.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
    pub is_active: bool,
}

#[derive(Debug)]
pub struct NewUser {
    pub email: String,
    pub username: Option<String>,
    pub full_name: Option<String>,
    pub password_hash: String,
}

#[derive(Debug)]
pub struct SessionRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub token_hash: TokenHash,
    pub ip: IpAddr,
    pub user_agent: String,
    pub device_id: Option<Uuid>,
    pub ip_id: Option<Uuid>,
    pub location: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A device (user agent) a user signed in from.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Device {
    pub id: Uuid,
    pub label: String,
    pub user_agent: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// An address a user signed in from.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct IpRecord {
    pub id: Uuid,
    pub address: IpAddr,
    pub location: Option<String>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// Recent use of a session, written behind the request path.
#[derive(Debug, Clone)]
pub struct Activity {
    pub session_id: Uuid,
    pub device_id: Option<Uuid>,
    pub ip_id: Option<Uuid>,
    pub at: DateTime<Utc>,
}

/// An active session record, as the expiry job sees it.
#[derive(Debug, Clone)]
pub struct ActiveRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub token_hash: TokenHash,
    pub expires_at: DateTime<Utc>,
}

/// How a session ended.
#[derive(Debug, Clone, Copy)]
pub enum SessionEnd {
    LoggedOut,
    Revoked,
    Expired,
}

impl SessionEnd {
    pub fn status(self) -> &'static str {
        match self {
            SessionEnd::LoggedOut => "logged_out",
            SessionEnd::Revoked => "revoked",
            SessionEnd::Expired => "expired",
        }
    }
}

/// What an audit row records (`auth_events.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    Register,
    LoginOk,
    LoginFailed,
    LoginCredentialsChanged,
    Locked,
    Logout,
    Revoke,
    SessionEvicted,
    PasswordChanged,
    PasswordChangeFailed,
    SessionIpChanged,
    SessionUaChanged,
    /// An operator command (`authgate user …`, `authgate sessions …`).
    Admin(AdminAction),
}

/// The operator commands, each audited as `admin_<command>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    UserList,
    UserAdd,
    UserDisable,
    UserEnable,
    UserSetRole,
    UserRemoveRole,
    SessionsList,
    SessionsRevoke,
}

impl AuditKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Register => "register",
            AuditKind::LoginOk => "login_ok",
            AuditKind::LoginFailed => "login_failed",
            AuditKind::LoginCredentialsChanged => "login_credentials_changed",
            AuditKind::Locked => "locked",
            AuditKind::Logout => "logout",
            AuditKind::Revoke => "revoke",
            AuditKind::SessionEvicted => "session_evicted",
            AuditKind::PasswordChanged => "password_changed",
            AuditKind::PasswordChangeFailed => "password_change_failed",
            AuditKind::SessionIpChanged => "session_ip_changed",
            AuditKind::SessionUaChanged => "session_ua_changed",
            AuditKind::Admin(action) => match action {
                AdminAction::UserList => "admin_user_list",
                AdminAction::UserAdd => "admin_user_add",
                AdminAction::UserDisable => "admin_user_disable",
                AdminAction::UserEnable => "admin_user_enable",
                AdminAction::UserSetRole => "admin_user_set_role",
                AdminAction::UserRemoveRole => "admin_user_remove_role",
                AdminAction::SessionsList => "admin_sessions_list",
                AdminAction::SessionsRevoke => "admin_sessions_revoke",
            },
        }
    }
}

/// One row of the audit trail.
#[derive(Debug)]
pub struct AuthEvent {
    pub kind: AuditKind,
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub detail: serde_json::Value,
}

/// A signing key of the identity assertion as stored (`signing_keys`), shared by every gateway
/// on the database. It holds a private key: deliberately not `Debug`.
pub struct StoredSigningKey {
    /// Derived from the public key (see `assertion/keys.rs`).
    pub kid: String,
    /// `"EdDSA"` or `"ES256"`.
    pub algorithm: String,
    /// PKCS#8 DER.
    pub private_key: Vec<u8>,
    pub created_at: DateTime<Utc>,
    /// Set by a rotation; the key then signs no more, and stays published a little longer.
    pub retired_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait RecordStore: Send + Sync {
    /// `"postgres"` or `"sqlite"`: for logs, `/readyz` and metrics, which must not assume one.
    fn backend(&self) -> &'static str;
    /// Brings the schema up to date.
    async fn migrate(&self) -> Result<(), StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;

    /// Fails with `Conflict("email")` / `Conflict("username")` on duplicates.
    async fn create_user(&self, user: &NewUser) -> Result<User, StoreError>;
    async fn credentials_by_email(&self, email: &str) -> Result<Option<Credentials>, StoreError>;
    async fn user(&self, id: Uuid) -> Result<Option<User>, StoreError>;
    /// Stamps `last_login` and clears the failed-attempt counter.
    async fn record_login(&self, user_id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError>;
    async fn record_failed_login(&self, user_id: Uuid, at: DateTime<Utc>)
        -> Result<(), StoreError>;

    async fn insert_session(&self, session: &SessionRecord) -> Result<(), StoreError>;

    async fn record_event(&self, event: &AuthEvent) -> Result<(), StoreError>;

    /// Records (or refreshes) the device a user signs in from; returns its id.
    async fn upsert_device(
        &self,
        user_id: Uuid,
        user_agent: &str,
        label: &str,
        at: DateTime<Utc>,
    ) -> Result<Uuid, StoreError>;
    /// Records (or refreshes) the address a user signs in from; returns its id.
    async fn upsert_ip(
        &self,
        user_id: Uuid,
        address: IpAddr,
        location: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<Uuid, StoreError>;
    /// Most recently used first.
    async fn devices(&self, user_id: Uuid) -> Result<Vec<Device>, StoreError>;
    /// Most recently used first.
    async fn ips(&self, user_id: Uuid) -> Result<Vec<IpRecord>, StoreError>;

    async fn set_password_hash(&self, user_id: Uuid, hash: &str) -> Result<(), StoreError>;

    /// Marks many sessions ended at once (no-op for those already ended); returns how many
    /// records it changed.
    async fn end_sessions(
        &self,
        ids: &[Uuid],
        end: SessionEnd,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
    /// Applies a batch of write-behind activity (sessions, devices, IPs).
    async fn record_activity(&self, batch: &[Activity]) -> Result<(), StoreError>;
    /// Active session records after `after` (by id), at most `limit`, for the expiry job.
    async fn active_sessions(
        &self,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<ActiveRecord>, StoreError>;
    /// Deletes ended session records that ended before `before`; returns how many.
    async fn purge_ended_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
    async fn count_active_sessions(&self) -> Result<i64, StoreError>;

    /// Assertion signing keys that are live or were retired after `retired_after`, newest
    /// first.
    async fn signing_keys(
        &self,
        retired_after: DateTime<Utc>,
    ) -> Result<Vec<StoredSigningKey>, StoreError>;
    /// Adds `key` unless a live key of its algorithm exists already (another gateway may have
    /// added one a moment ago); whether it was added.
    async fn add_signing_key(&self, key: &StoredSigningKey) -> Result<bool, StoreError>;
    /// Retires every live key at `at` and adds `key`, in one transaction; how many keys it
    /// retired.
    async fn rotate_signing_keys(
        &self,
        key: &StoredSigningKey,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Every account, oldest first, with its roles (`authgate user list`).
    async fn list_users(&self) -> Result<Vec<Account>, StoreError>;
    /// Enables or disables an account; whether it changed anything (false: no such user).
    async fn set_user_active(&self, user_id: Uuid, active: bool) -> Result<bool, StoreError>;
    /// A user's roles, sorted.
    async fn user_roles(&self, user_id: Uuid) -> Result<Vec<String>, StoreError>;
    /// Gives a user a role; false if the user had it already.
    async fn add_user_role(&self, user_id: Uuid, role: &str) -> Result<bool, StoreError>;
    /// Takes a role from a user; false if the user did not have it.
    async fn remove_user_role(&self, user_id: Uuid, role: &str) -> Result<bool, StoreError>;
}

/// An account as `authgate user list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Account {
    #[serde(flatten)]
    pub user: User,
    pub is_active: bool,
    pub roles: Vec<String>,
}

/// Splits the `string_agg`/`group_concat` of a user's roles (comma-separated; role names
/// cannot hold a comma) into a sorted list.
pub(crate) fn split_roles(joined: Option<String>) -> Vec<String> {
    let mut roles: Vec<String> = joined
        .unwrap_or_default()
        .split(',')
        .filter(|role| !role.is_empty())
        .map(str::to_string)
        .collect();
    roles.sort();
    roles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_picks_the_backend_by_scheme() {
        let pg = "postgres://postgres@127.0.0.1:5432/test";
        assert_eq!(
            DatabaseUrl::parse(pg),
            Ok(DatabaseUrl::Postgres(pg.to_string()))
        );
        assert_eq!(
            DatabaseUrl::parse("postgresql://db/x").map(|u| u.backend()),
            Ok("postgres")
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite://authgate.db"),
            Ok(DatabaseUrl::Sqlite(PathBuf::from("authgate.db")))
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/authgate/authgate.db"),
            Ok(DatabaseUrl::Sqlite(PathBuf::from(
                "/var/lib/authgate/authgate.db"
            )))
        );
        for refused in [
            "sqlite://",
            "sqlite:///var/lib/",
            "sqlite://:memory:",
            "sqlite://a.db?mode=ro",
            "sqlite:authgate.db",
            "mysql://db/x",
            "",
        ] {
            assert!(DatabaseUrl::parse(refused).is_err(), "{refused}");
        }
    }
}
