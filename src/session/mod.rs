//! Live sessions: the token, the cookie that carries it, and the [`SessionStore`] that keeps
//! them (Redis in `redis`; an in-process store for the embedded mode slots in beside it).
//!
//! The store only ever sees the SHA-256 of a token ([`TokenHash`]); the token itself exists
//! in the client's cookie and, briefly, in this process's memory.

pub mod cookie;
pub mod redis;
mod token;

use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

pub use token::{SessionToken, TokenHash};

use crate::store::StoreError;

/// What the store keeps for a session (besides its idle TTL).
#[derive(Debug, Clone)]
pub struct SessionData {
    /// The public id the API uses (never the token).
    pub id: Uuid,
    pub user_id: Uuid,
    pub email: String,
    pub ip: IpAddr,
    pub user_agent: String,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// Unix milliseconds: the session ends then, however active.
    pub absolute_expiry_ms: i64,
}

/// A session found valid and slid: its data and how long until it idles out.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub data: SessionData,
    pub idle_remaining: Duration,
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a new session that idles out after `idle` (capped by its absolute expiry).
    async fn create(
        &self,
        token: &TokenHash,
        session: &SessionData,
        idle: Duration,
    ) -> Result<(), StoreError>;

    /// Validates a session and slides its idle expiry, in one store round trip. `None` when
    /// the session is unknown, idled out, or past its absolute expiry (then it is deleted).
    async fn touch(
        &self,
        token: &TokenHash,
        now_ms: i64,
        idle: Duration,
    ) -> Result<Option<LiveSession>, StoreError>;

    /// Ends a session now. Returns whether it was still live.
    async fn remove(&self, token: &TokenHash, session: &SessionData) -> Result<bool, StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;
}

/// What a request's cookie amounts to.
pub enum Lookup {
    /// No session cookie at all.
    Missing,
    /// A cookie that is malformed, unknown, idled out or past its absolute expiry.
    Invalid,
    Valid {
        token: SessionToken,
        session: LiveSession,
    },
}

/// Session lifecycle on top of a [`SessionStore`]: the piece the proxy and the `/auth` API
/// share, so both validate, slide and issue cookies the same way.
pub struct Sessions {
    store: std::sync::Arc<dyn SessionStore>,
    config: std::sync::Arc<crate::config::SessionConfig>,
}

impl Sessions {
    pub fn new(
        store: std::sync::Arc<dyn SessionStore>,
        config: std::sync::Arc<crate::config::SessionConfig>,
    ) -> Self {
        Self { store, config }
    }

    pub fn config(&self) -> &crate::config::SessionConfig {
        &self.config
    }

    /// Reads the cookie and validates + slides the session (one store round trip; none for a
    /// missing or malformed cookie).
    pub async fn lookup(&self, headers: &http::HeaderMap) -> Result<Lookup, StoreError> {
        let Some(value) = cookie::read(headers, &self.config.cookie_name) else {
            return Ok(Lookup::Missing);
        };
        let Some(token) = SessionToken::parse(&value) else {
            return Ok(Lookup::Invalid);
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        match self
            .store
            .touch(&token.hash(), now_ms, self.config.idle_timeout)
            .await?
        {
            Some(session) => Ok(Lookup::Valid { token, session }),
            None => Ok(Lookup::Invalid),
        }
    }

    /// Creates a session for a user; returns its token and data.
    pub async fn start(
        &self,
        user_id: Uuid,
        email: &str,
        ip: IpAddr,
        user_agent: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(SessionToken, SessionData), StoreError> {
        let token = SessionToken::generate();
        let created_at_ms = now.timestamp_millis();
        let absolute_ms =
            i64::try_from(self.config.absolute_timeout.as_millis()).unwrap_or(i64::MAX);
        let data = SessionData {
            id: Uuid::new_v4(),
            user_id,
            email: email.to_string(),
            ip,
            user_agent: user_agent.to_string(),
            created_at_ms,
            absolute_expiry_ms: created_at_ms.saturating_add(absolute_ms),
        };
        self.store
            .create(&token.hash(), &data, self.config.idle_timeout)
            .await?;
        Ok((token, data))
    }

    pub async fn end(
        &self,
        token: &SessionToken,
        session: &SessionData,
    ) -> Result<bool, StoreError> {
        self.store.remove(&token.hash(), session).await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// The `Set-Cookie` that keeps the browser's cookie in step with the store's idle expiry.
    pub fn refresh_cookie(&self, token: &SessionToken, session: &LiveSession) -> String {
        cookie::set(&self.config, token, session.idle_remaining)
    }

    /// The `Set-Cookie` for a fresh session.
    pub fn new_cookie(&self, token: &SessionToken) -> String {
        cookie::set(
            &self.config,
            token,
            self.config.idle_timeout.min(self.config.absolute_timeout),
        )
    }

    pub fn clear_cookie(&self) -> String {
        cookie::clear(&self.config)
    }
}
