//! Durable records: users, session records, the audit trail. The `/auth` handlers talk to the
//! [`RecordStore`] trait and never see SQL; `postgres` implements it (a SQLite implementation
//! for the embedded mode slots in beside it).
//!
//! Nothing on the proxied hot path calls this store.

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
#[derive(Debug, Clone, Serialize)]
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
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// How a session ended.
#[derive(Debug, Clone, Copy)]
pub enum SessionEnd {
    LoggedOut,
    Revoked,
    #[expect(dead_code, reason = "the expiry job (issue 3) records it")]
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
    /// Marks an active session ended; a session already ended keeps its first ending.
    async fn end_session(
        &self,
        id: Uuid,
        end: SessionEnd,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    async fn record_event(&self, event: &AuthEvent) -> Result<(), StoreError>;
}
