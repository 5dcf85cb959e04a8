//! Live sessions: the token, the cookie that carries it, and the [`SessionStore`] that keeps
//! them (Redis in `redis`; an in-process store for the embedded mode slots in beside it).
//!
//! The store only ever sees the SHA-256 of a token ([`TokenHash`]); the token itself exists
//! in the client's cookie and, briefly, in this process's memory.

pub mod activity;
pub mod cookie;
pub mod jobs;
pub mod redis;
mod token;

use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

pub use token::{SessionToken, TokenHash};

use std::sync::Arc;

use crate::config::{OnLimit, SessionConfig};
use crate::store::behind::WriteBehind;
use crate::store::{AuthEvent, SessionEnd, StoreError};
use crate::telemetry::Metrics;
use activity::ActivityTracker;

/// User agents are stored and compared truncated to this many characters.
pub const MAX_USER_AGENT_CHARS: usize = 512;

pub fn truncate_user_agent(user_agent: &str) -> &str {
    match user_agent.char_indices().nth(MAX_USER_AGENT_CHARS) {
        Some((end, _)) => &user_agent[..end],
        None => user_agent,
    }
}

/// What the store keeps for a session (besides its idle TTL).
#[derive(Debug, Clone)]
pub struct SessionData {
    /// The public id the API uses (never the token).
    pub id: Uuid,
    pub user_id: Uuid,
    pub email: String,
    /// Client IP and user agent at login.
    pub ip: IpAddr,
    pub user_agent: String,
    pub device_id: Option<Uuid>,
    pub device_label: String,
    pub ip_id: Option<Uuid>,
    pub location: Option<String>,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// Unix milliseconds: the session ends then, however active.
    pub absolute_expiry_ms: i64,
}

/// A live session as the store sees it now.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub data: SessionData,
    /// Unix milliseconds of the last validated request.
    pub last_activity_ms: i64,
    /// Time until it idles out.
    pub idle_remaining: Duration,
}

/// The per-user cap applied when a session is created.
#[derive(Debug, Clone, Copy)]
pub struct SessionCap {
    pub max_sessions: u32,
    pub on_limit: OnLimit,
}

#[derive(Debug)]
pub enum Created {
    /// Created; these sessions (public ids) were evicted to make room.
    Ok { evicted: Vec<Uuid> },
    /// The user is at the cap and the policy is `reject`.
    LimitReached,
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a new session that idles out after `idle` (capped by its absolute expiry),
    /// enforcing the per-user cap atomically with the insert.
    async fn create(
        &self,
        token: &TokenHash,
        session: &SessionData,
        idle: Duration,
        cap: SessionCap,
    ) -> Result<Created, StoreError>;

    /// Validates a session and slides its idle expiry, in one store round trip. `None` when
    /// the session is unknown, idled out, or past its absolute expiry (then it is deleted).
    async fn touch(
        &self,
        token: &TokenHash,
        now_ms: i64,
        idle: Duration,
    ) -> Result<Option<LiveSession>, StoreError>;

    /// A user's live sessions, from the per-user index (never a keyspace scan).
    async fn list(&self, user_id: Uuid) -> Result<Vec<LiveSession>, StoreError>;

    /// Ends one of a user's sessions by public id. `false` if the user has no such session.
    async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, StoreError>;

    /// Ends all of a user's sessions except `keep`; returns the ids ended.
    async fn revoke_all_except(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> Result<Vec<Uuid>, StoreError>;

    /// Which of these sessions are still live (same order).
    async fn live(&self, tokens: &[TokenHash]) -> Result<Vec<bool>, StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;
}

/// What a request's cookie amounts to.
#[allow(
    clippy::large_enum_variant,
    reason = "lives for one request; boxing would add an allocation to the hot path"
)]
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

/// Who is logging in, from where: what a new session records.
pub struct Login {
    pub user_id: Uuid,
    pub email: String,
    pub ip: IpAddr,
    pub user_agent: String,
    pub device_id: Option<Uuid>,
    pub device_label: String,
    pub ip_id: Option<Uuid>,
    pub location: Option<String>,
}

/// A session just created.
pub struct Started {
    pub token: SessionToken,
    pub data: SessionData,
    /// Sessions (public ids) evicted to respect the per-user cap.
    pub evicted: Vec<Uuid>,
}

/// Session lifecycle on top of a [`SessionStore`]: the piece the proxy and the `/auth` API
/// share, so both validate, slide and issue cookies the same way.
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    config: Arc<SessionConfig>,
    activity: Arc<ActivityTracker>,
    writer: WriteBehind,
    metrics: Arc<Metrics>,
}

impl Sessions {
    pub fn new(
        store: Arc<dyn SessionStore>,
        config: Arc<SessionConfig>,
        activity: Arc<ActivityTracker>,
        writer: WriteBehind,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            config,
            activity,
            writer,
            metrics,
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Reads the cookie and validates + slides the session (one store round trip; none for a
    /// missing or malformed cookie). A valid session's use is noted for the write-behind
    /// activity flush, and a change of IP or user agent since login is audited, or, with
    /// `bind_session_to_user_agent`, a user-agent change ends the session.
    pub async fn lookup(
        &self,
        headers: &http::HeaderMap,
        client_ip: IpAddr,
    ) -> Result<Lookup, StoreError> {
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
            Some(session) => {
                let user_agent = headers
                    .get(http::header::USER_AGENT)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("");
                if self.watch(&session.data, client_ip, user_agent).await? {
                    Ok(Lookup::Valid { token, session })
                } else {
                    Ok(Lookup::Invalid)
                }
            }
            None => Ok(Lookup::Invalid),
        }
    }

    /// Notes a session's use; returns false if the session had to be ended.
    async fn watch(
        &self,
        session: &SessionData,
        client_ip: IpAddr,
        user_agent: &str,
    ) -> Result<bool, StoreError> {
        self.activity.touched(session);
        let user_agent = truncate_user_agent(user_agent);
        if user_agent != session.user_agent {
            if self.config.bind_session_to_user_agent {
                self.store.revoke(session.user_id, session.id).await?;
                self.metrics.session_anomaly("ua_changed");
                self.metrics.session_ended("revoked");
                self.writer.sessions_ended(
                    vec![session.id],
                    SessionEnd::Revoked,
                    "user_agent_changed",
                );
                self.audit_anomaly(session, "revoke", client_ip, user_agent);
                return Ok(false);
            }
            if self.activity.first_report(session.id, "ua", user_agent) {
                self.metrics.session_anomaly("ua_changed");
                self.audit_anomaly(session, "session_ua_changed", client_ip, user_agent);
            }
        }
        if client_ip != session.ip
            && self
                .activity
                .first_report(session.id, "ip", &client_ip.to_string())
        {
            self.metrics.session_anomaly("ip_changed");
            self.audit_anomaly(session, "session_ip_changed", client_ip, user_agent);
        }
        Ok(true)
    }

    fn audit_anomaly(
        &self,
        session: &SessionData,
        kind: &'static str,
        client_ip: IpAddr,
        user_agent: &str,
    ) {
        self.writer.event(AuthEvent {
            kind,
            user_id: Some(session.user_id),
            session_id: Some(session.id),
            ip: Some(client_ip),
            user_agent: Some(user_agent.to_string()),
            detail: serde_json::json!({
                "created_ip": session.ip.to_string(),
                "created_user_agent": session.user_agent,
                "reason": if kind == "revoke" { "user_agent_changed" } else { kind },
            }),
        });
    }

    /// Creates a session for a user under the per-user cap. `Ok(None)` when the cap is
    /// reached and the policy is `reject`.
    pub async fn start(
        &self,
        login: Login,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Started>, StoreError> {
        let token = SessionToken::generate();
        let created_at_ms = now.timestamp_millis();
        let absolute_ms =
            i64::try_from(self.config.absolute_timeout.as_millis()).unwrap_or(i64::MAX);
        let data = SessionData {
            id: Uuid::new_v4(),
            user_id: login.user_id,
            email: login.email,
            ip: login.ip,
            user_agent: login.user_agent,
            device_id: login.device_id,
            device_label: login.device_label,
            ip_id: login.ip_id,
            location: login.location,
            created_at_ms,
            absolute_expiry_ms: created_at_ms.saturating_add(absolute_ms),
        };
        let cap = SessionCap {
            max_sessions: self.config.max_sessions_per_user,
            on_limit: self.config.on_limit,
        };
        match self
            .store
            .create(&token.hash(), &data, self.config.idle_timeout, cap)
            .await?
        {
            Created::Ok { evicted } => Ok(Some(Started {
                token,
                data,
                evicted,
            })),
            Created::LimitReached => Ok(None),
        }
    }

    /// Ends a session now (through the user's index). Returns whether it was still live.
    pub async fn end(&self, session: &SessionData) -> Result<bool, StoreError> {
        self.store.revoke(session.user_id, session.id).await
    }

    pub async fn list(&self, user_id: Uuid) -> Result<Vec<LiveSession>, StoreError> {
        self.store.list(user_id).await
    }

    pub async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, StoreError> {
        self.store.revoke(user_id, session_id).await
    }

    pub async fn revoke_all_except(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> Result<Vec<Uuid>, StoreError> {
        self.store.revoke_all_except(user_id, keep).await
    }

    pub async fn live(&self, tokens: &[TokenHash]) -> Result<Vec<bool>, StoreError> {
        self.store.live(tokens).await
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
