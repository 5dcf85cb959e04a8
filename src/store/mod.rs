//! Durable records: users, session records, the audit trail. The `/auth` handlers talk to the
//! [`RecordStore`] trait and never see SQL; `postgres` implements it (a SQLite implementation
//! for the embedded mode slots in beside it).
//!
//! Nothing on the proxied hot path calls this store.

pub mod behind;
pub mod postgres;

use std::net::IpAddr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::session::TokenHash;

/// A failed store call, as the API must report it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is down, slow or refusing: the client should retry later (503).
    #[error("{store} unavailable: {detail}")]
    Unavailable { store: &'static str, detail: String },
    /// A uniqueness rule was broken; the field that collided.
    #[error("duplicate {0}")]
    Conflict(&'static str),
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

/// One row of the audit trail.
#[derive(Debug)]
pub struct AuthEvent {
    pub kind: &'static str,
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub detail: serde_json::Value,
}

#[async_trait]
pub trait RecordStore: Send + Sync {
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
}
