//! Live sessions: the token, the cookie that carries it, and the [`SessionStore`] that keeps
//! them (Redis in `redis`; an in-process store for the embedded mode slots in beside it).
//!
//! The store only ever sees the SHA-256 of a token ([`TokenHash`]); the token itself exists
//! in the client's cookie and, briefly, in this process's memory.

pub mod activity;
pub mod cache;
pub mod cookie;
pub mod invalidation;
pub mod jobs;
pub mod memory;
pub mod redis;
pub mod redis_connection;
mod token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use uuid::Uuid;

pub use crate::model::TokenHash;
pub use crate::model::{SessionKey, SlotTag};
pub use token::{is_random_secret, random_secret, SessionToken};

use std::sync::Arc;

use crate::config::{OnLimit, SessionConfig};
use crate::model::StoreError;
use crate::store::behind::WriteBehind;
use crate::store::{AuditKind, AuthEvent, SessionEnd};
use crate::telemetry::Metrics;
use activity::ActivityTracker;
use cache::{Cached, SessionCache};

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
    /// The user's roles (sorted), read at login and rewritten in place on every live session
    /// by `authgate user set-role` / `remove-role` ([`SessionStore::set_roles`]).
    pub roles: Vec<String>,
}

/// A live session as the store sees it now.
#[derive(Debug, Clone)]
pub struct LiveSession {
    /// Shared: the local cache hands the same record to every request it answers.
    pub data: Arc<SessionData>,
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
    /// The user's credential epoch is not the one expected: a revoke-all (a password change,
    /// "sign out everywhere else") happened since the login read it. Nothing was created.
    CredentialsChanged,
}

/// How long a credential epoch is kept after its last bump: the absolute session lifetime, and
/// never less than an hour. Any TTL longer than a login can take would keep the check sound (an
/// expired epoch reads 0, which an in-flight login that read a bumped value will not match);
/// the session lifetime keeps it simple to reason about.
pub fn epoch_ttl(absolute_timeout: Duration) -> Duration {
    absolute_timeout.max(Duration::from_secs(3600))
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a new session that idles out after `idle` (capped by its absolute expiry),
    /// enforcing the per-user cap atomically with the insert, and only if the user's credential
    /// epoch is still `expected_epoch` (checked atomically with the insert too).
    async fn create(
        &self,
        key: &SessionKey,
        session: &SessionData,
        idle: Duration,
        cap: SessionCap,
        expected_epoch: u64,
    ) -> Result<Created, StoreError>;

    /// The user's credential epoch (0 when none is recorded): read by a login before it
    /// checks the password, and expected again when it creates the session.
    async fn credential_epoch(&self, user_id: Uuid) -> Result<u64, StoreError>;

    /// Validates a session and slides its idle expiry, in one store round trip. `None` when
    /// the session is unknown, idled out, or past its absolute expiry (then it is deleted).
    async fn touch(
        &self,
        key: &SessionKey,
        now_ms: i64,
        idle: Duration,
    ) -> Result<Option<LiveSession>, StoreError>;

    /// Writes behind the use of a session that a local cache answered for: its last activity
    /// becomes `activity_ms` and its idle expiry `activity_ms + idle` (never earlier than what
    /// the store holds, never past the absolute expiry). The new expiry (unix ms), or `None`
    /// if the session is gone.
    async fn slide(
        &self,
        key: &SessionKey,
        activity_ms: i64,
        now_ms: i64,
        idle: Duration,
    ) -> Result<Option<i64>, StoreError> {
        let _ = now_ms;
        Ok(self
            .touch(key, activity_ms, idle)
            .await?
            .map(|session| activity_ms.saturating_add(millis(session.idle_remaining))))
    }

    /// A user's live sessions, from the per-user index (never a keyspace scan).
    async fn list(&self, user_id: Uuid) -> Result<Vec<LiveSession>, StoreError>;

    /// Ends one of a user's sessions by public id. `false` if the user has no such session.
    async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, StoreError>;

    /// Ends all of a user's sessions except `keep` and bumps the user's credential epoch in the
    /// same atomic step, so no login that read the epoch before can create a session after;
    /// returns the ids ended.
    async fn revoke_all_except(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> Result<Vec<Uuid>, StoreError>;

    /// Replaces the roles of every live session of the user, and bumps the user's credential
    /// epoch in the same atomic step (a login that read the roles before the change cannot
    /// then create a session with them); returns how many sessions it changed.
    async fn set_roles(&self, user_id: Uuid, roles: &[String]) -> Result<usize, StoreError>;

    /// Which of these sessions are still live (same order).
    async fn live(&self, keys: &[SessionKey]) -> Result<Vec<bool>, StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;

    /// What the store runs on, for logs, metrics and `/readyz` ("redis", "memory").
    fn backend(&self) -> &'static str;
}

/// Why a session ended: one vocabulary for its record (status and `end_reason`) and its
/// metric, whichever way it ended. Every ending is recorded by [`Sessions::ended`], except
/// expiry, which the expiry job writes directly to count the records it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The user signed out (`/auth/logout`).
    Logout,
    /// The user revoked it from the session list or the device page.
    RevokedByUser,
    /// The user signed out every other session.
    SignedOutElsewhere,
    /// The user changed the password (every other session ends).
    PasswordChanged,
    /// The per-user cap made room for a newer session.
    Evicted,
    /// The browser signed in again with this session's cookie (no fixation).
    ReplacedByLogin,
    /// Used from another user agent, with `bind_session_to_user_agent`.
    UserAgentChanged,
    /// An operator ended it (`authgate sessions revoke`).
    RevokedByAdmin,
    /// An operator disabled the account (`authgate user disable`).
    AccountDisabled,
    /// Unused for the idle timeout (found by the expiry job).
    IdleTimeout,
    /// Past its absolute lifetime (found by the expiry job).
    AbsoluteTimeout,
}

impl EndReason {
    /// The record's status.
    pub fn status(self) -> SessionEnd {
        match self {
            EndReason::Logout => SessionEnd::LoggedOut,
            EndReason::IdleTimeout | EndReason::AbsoluteTimeout => SessionEnd::Expired,
            _ => SessionEnd::Revoked,
        }
    }

    /// The record's `end_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Logout => "logout",
            EndReason::RevokedByUser | EndReason::SignedOutElsewhere => "revoked_by_user",
            EndReason::PasswordChanged => "password_changed",
            EndReason::Evicted => "evicted",
            EndReason::ReplacedByLogin => "replaced_by_login",
            EndReason::UserAgentChanged => "user_agent_changed",
            EndReason::RevokedByAdmin => "revoked_by_admin",
            EndReason::AccountDisabled => "account_disabled",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::AbsoluteTimeout => "absolute_timeout",
        }
    }

    /// The `authgate_sessions_ended_total` label.
    pub fn metric(self) -> &'static str {
        match self {
            EndReason::Logout => "logout",
            EndReason::Evicted => "evicted",
            EndReason::IdleTimeout | EndReason::AbsoluteTimeout => "expired",
            _ => "revoked",
        }
    }
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
        /// Whether the answer should re-issue the cookie to move the browser's expiry (always,
        /// unless a local cache knows the browser was told recently enough).
        refresh_cookie: bool,
    },
}

/// The first part of a session check ([`Sessions::lookup_local`]): settled without I/O, or
/// waiting for the store.
pub enum Step {
    Answered(Lookup),
    /// Finish with [`Sessions::lookup_stored`].
    AskStore(Pending),
}

/// What a session check still has to ask the store.
pub struct Pending(PendingStep);

enum PendingStep {
    /// Validate and slide the session in the store (the cache did not answer).
    Touch {
        token: SessionToken,
        key: SessionKey,
        ticket: Option<cache::Ticket>,
        /// The clock reading the request is judged by.
        now: chrono::DateTime<chrono::Utc>,
    },
    /// End a session bound to another user agent (`bind_session_to_user_agent`).
    End(Box<UserAgentChange>),
}

/// A session bound to a user agent (`bind_session_to_user_agent`) came from another one.
struct UserAgentChange {
    session: LiveSession,
    /// The new user agent (truncated as stored).
    user_agent: String,
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
    pub roles: Vec<String>,
}

/// What [`Sessions::start`] came to.
#[allow(
    clippy::large_enum_variant,
    reason = "lives for one login; boxing would add an allocation for nothing"
)]
pub enum Start {
    Started(Started),
    /// The user is at the cap and the policy is `reject`.
    LimitReached,
    /// The credential epoch moved on since the login read it (see [`Created`]).
    CredentialsChanged,
}

/// A session just created.
pub struct Started {
    pub token: SessionToken,
    pub data: SessionData,
    /// Sessions (public ids) evicted to respect the per-user cap.
    pub evicted: Vec<Uuid>,
}

/// How long [`Sessions::ended`] remembers an ending for [`Sessions::recorded`], and how many
/// endings at most (past that, a late record is left to the expiry job, as before).
const RECENT_ENDS_KEPT: Duration = Duration::from_secs(60);
const RECENT_ENDS_MAX: usize = 10_000;

/// Session lifecycle on top of a [`SessionStore`]: the piece the proxy and the `/auth` API
/// share, so both validate, slide and issue cookies the same way.
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    config: Arc<SessionConfig>,
    activity: Arc<ActivityTracker>,
    writer: WriteBehind,
    metrics: Arc<Metrics>,
    /// Sessions Redis validated recently (`session.cache_ttl`; Redis only).
    cache: Option<Arc<SessionCache>>,
    /// Sessions ended in the last [`RECENT_ENDS_KEPT`], with why: a session can be ended
    /// (evicted by a concurrent login, revoked) after its live entry is created and before
    /// the login writes its record, and then the ending's record update finds no row.
    recent_ends: Mutex<HashMap<Uuid, (EndReason, Instant)>>,
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
            cache: None,
            recent_ends: Mutex::new(HashMap::new()),
        }
    }

    /// Answers most lookups from `cache` (see `cache.rs`); the caller keeps it subscribed to
    /// the invalidation channel and runs [`jobs::slide_cached`].
    pub fn with_cache(mut self, cache: Arc<SessionCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Reads the cookie and validates + slides the session (one store round trip; none for a
    /// missing or malformed cookie, or a session the local cache answers). A valid session's
    /// use is noted for the write-behind activity flush, and a change of IP or user agent since
    /// login is audited, or, with `bind_session_to_user_agent`, a user-agent change ends the
    /// session. ([`Sessions::lookup_local`] then [`Sessions::lookup_stored`].)
    pub async fn lookup(
        &self,
        headers: &http::HeaderMap,
        client_ip: IpAddr,
    ) -> Result<Lookup, StoreError> {
        match self.lookup_local(headers, client_ip) {
            Step::Answered(lookup) => Ok(lookup),
            Step::AskStore(pending) => self.lookup_stored(pending, headers, client_ip).await,
        }
    }

    /// The part of [`Sessions::lookup`] that needs no I/O: a missing or malformed cookie, or a
    /// session the local cache answers, is settled here; anything else goes on to
    /// [`Sessions::lookup_stored`]. It logs nothing itself; an audited IP or user-agent change
    /// goes to the write-behind queue, which logs only if it is full and drops the record.
    pub fn lookup_local(&self, headers: &http::HeaderMap, client_ip: IpAddr) -> Step {
        let value = match cookie::find(headers, &self.config.cookie_name) {
            cookie::Found::Missing => return Step::Answered(Lookup::Missing),
            // Two session cookies: which one the user meant is unknowable, so neither counts.
            cookie::Found::Several => return Step::Answered(Lookup::Invalid),
            cookie::Found::One(value) => value,
        };
        let Some(token) = SessionToken::parse(&value) else {
            return Step::Answered(Lookup::Invalid);
        };
        let now = chrono::Utc::now();
        let now_ms = now.timestamp_millis();
        let key = token.key();
        let ticket = match self.cache.as_deref().map(|cache| cache.get(&key, now_ms)) {
            Some(Cached::Hit {
                session,
                refresh_cookie,
            }) => {
                self.metrics.session_cache_hit();
                return match self.valid(headers, client_ip, token, session, refresh_cookie, now) {
                    Ok(lookup) => Step::Answered(lookup),
                    Err(change) => Step::AskStore(Pending(PendingStep::End(change))),
                };
            }
            Some(Cached::Miss(ticket)) => Some(ticket),
            None => None,
        };
        Step::AskStore(Pending(PendingStep::Touch {
            token,
            key,
            ticket,
            now,
        }))
    }

    /// The rest of [`Sessions::lookup`]: the store round trip that [`Sessions::lookup_local`]
    /// could not settle without.
    pub async fn lookup_stored(
        &self,
        Pending(pending): Pending,
        headers: &http::HeaderMap,
        client_ip: IpAddr,
    ) -> Result<Lookup, StoreError> {
        let change = match pending {
            PendingStep::End(change) => change,
            PendingStep::Touch {
                token,
                key,
                ticket,
                now,
            } => {
                let now_ms = now.timestamp_millis();
                let Some(session) = self
                    .store
                    .touch(&key, now_ms, self.config.idle_timeout)
                    .await?
                else {
                    return Ok(Lookup::Invalid);
                };
                if let (Some(cache), Some(ticket)) = (&self.cache, ticket) {
                    cache.insert(ticket, &key, &session, now_ms);
                }
                match self.valid(headers, client_ip, token, session, true, now) {
                    Ok(lookup) => return Ok(lookup),
                    Err(change) => change,
                }
            }
        };
        self.end_for_user_agent(change, client_ip).await?;
        Ok(Lookup::Invalid)
    }

    /// A session the store (or the cache) found live, once its use is noted; or, when the
    /// session is bound to a user agent it no longer comes from, that change (to end it).
    fn valid(
        &self,
        headers: &http::HeaderMap,
        client_ip: IpAddr,
        token: SessionToken,
        session: LiveSession,
        refresh_cookie: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Lookup, Box<UserAgentChange>> {
        let user_agent = headers
            .get(http::header::USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        let user_agent = truncate_user_agent(user_agent);
        if self.watch(&session.data, client_ip, user_agent, now) {
            Ok(Lookup::Valid {
                token,
                session,
                refresh_cookie,
            })
        } else {
            Err(Box::new(UserAgentChange {
                session,
                user_agent: user_agent.to_string(),
            }))
        }
    }

    /// Forgets a user's cached sessions: after any change that may have ended one. (Other
    /// gateways hear of it through the invalidation channel.)
    fn forget(&self, user_id: Uuid) {
        if let Some(cache) = &self.cache {
            cache.invalidate_user(user_id);
        }
    }

    /// Notes a session's use (and audits a change of IP or user agent); false if the session
    /// must end: it is bound to a user agent it no longer comes from.
    fn watch(
        &self,
        session: &SessionData,
        client_ip: IpAddr,
        user_agent: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> bool {
        self.activity.touched(session, now);
        if user_agent != session.user_agent {
            if self.config.bind_session_to_user_agent {
                return false;
            }
            if self.activity.first_report(session.id, "ua", user_agent) {
                self.metrics.session_anomaly("ua_changed");
                self.audit_anomaly(session, AuditKind::SessionUaChanged, client_ip, user_agent);
            }
        }
        if client_ip != session.ip
            && self
                .activity
                .first_report(session.id, "ip", &client_ip.to_string())
        {
            self.metrics.session_anomaly("ip_changed");
            self.audit_anomaly(session, AuditKind::SessionIpChanged, client_ip, user_agent);
        }
        true
    }

    /// `bind_session_to_user_agent`: the session came from another user agent, so it ends.
    async fn end_for_user_agent(
        &self,
        change: Box<UserAgentChange>,
        client_ip: IpAddr,
    ) -> Result<(), StoreError> {
        let session = &change.session.data;
        self.end(session, EndReason::UserAgentChanged).await?;
        self.metrics.session_anomaly("ua_changed");
        self.audit_anomaly(session, AuditKind::Revoke, client_ip, &change.user_agent);
        Ok(())
    }

    fn audit_anomaly(
        &self,
        session: &SessionData,
        kind: AuditKind,
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
                "reason": if kind == AuditKind::Revoke {
                    EndReason::UserAgentChanged.as_str()
                } else {
                    kind.as_str()
                },
            }),
        });
    }

    /// Creates a session for a user under the per-user cap, provided the user's credential
    /// epoch is still `expected_epoch` (what [`Sessions::credential_epoch`] answered before the
    /// password was checked).
    pub async fn start(
        &self,
        login: Login,
        now: chrono::DateTime<chrono::Utc>,
        expected_epoch: u64,
    ) -> Result<Start, StoreError> {
        let token = SessionToken::generate(SlotTag::of_user(login.user_id));
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
            roles: login.roles,
            created_at_ms,
            absolute_expiry_ms: created_at_ms.saturating_add(absolute_ms),
        };
        let cap = SessionCap {
            max_sessions: self.config.max_sessions_per_user,
            on_limit: self.config.on_limit,
        };
        self.write_pending_activity(data.user_id).await;
        match self
            .store
            .create(
                &token.key(),
                &data,
                self.config.idle_timeout,
                cap,
                expected_epoch,
            )
            .await?
        {
            Created::Ok { evicted } => {
                if !evicted.is_empty() {
                    self.forget(data.user_id);
                }
                Ok(Start::Started(Started {
                    token,
                    data,
                    evicted,
                }))
            }
            Created::LimitReached => Ok(Start::LimitReached),
            Created::CredentialsChanged => Ok(Start::CredentialsChanged),
        }
    }

    /// Writes the activity of the user's sessions that the cache answered for and Redis does
    /// not have yet, so that the cap evicts the least recently used session by its real use
    /// (this process's; another gateway's reaches Redis within its flush interval). Best
    /// effort: a failed write leaves it to the flush.
    async fn write_pending_activity(&self, user_id: Uuid) {
        let Some(cache) = &self.cache else {
            return;
        };
        let pending = cache.pending_slides_of(user_id);
        jobs::write_slides(
            cache,
            self.store.as_ref(),
            pending,
            self.config.idle_timeout,
        )
        .await;
    }

    pub async fn credential_epoch(&self, user_id: Uuid) -> Result<u64, StoreError> {
        self.store.credential_epoch(user_id).await
    }

    /// Ends a session now (through the user's index). Returns whether it was still live.
    /// Ends a session now (through the user's index) and records why. Returns whether it was
    /// still live (only then is its ending recorded).
    pub async fn end(&self, session: &SessionData, reason: EndReason) -> Result<bool, StoreError> {
        self.end_by_id(session.user_id, session.id, reason).await
    }

    /// Removes a session that never really began (its durable record could not be written):
    /// nothing to record.
    pub async fn discard(&self, session: &SessionData) -> Result<bool, StoreError> {
        let ended = self.store.revoke(session.user_id, session.id).await;
        self.forget(session.user_id);
        ended
    }

    /// Ends one of a user's sessions by public id; `false` if the user has no such live session.
    pub async fn end_by_id(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        reason: EndReason,
    ) -> Result<bool, StoreError> {
        let ended = self.store.revoke(user_id, session_id).await;
        self.forget(user_id);
        let ended = ended?;
        if ended {
            self.ended(vec![session_id], reason);
        }
        Ok(ended)
    }

    /// Ends every session of a user but `keep` (and moves the credential epoch, so no login in
    /// flight creates one after), recording why; returns the ids ended.
    pub async fn end_all_except(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
        reason: EndReason,
    ) -> Result<Vec<Uuid>, StoreError> {
        let ended = self.store.revoke_all_except(user_id, keep).await;
        self.forget(user_id);
        let ended = ended?;
        self.ended(ended.clone(), reason);
        Ok(ended)
    }

    /// Records sessions that have ended (already gone from the store): their records, written
    /// behind, and the metric. The one place every ending is recorded.
    pub fn ended(&self, ids: Vec<Uuid>, reason: EndReason) {
        if ids.is_empty() {
            return;
        }
        for _ in &ids {
            self.metrics.session_ended(reason.metric());
        }
        self.remember_ends(&ids, reason);
        self.writer
            .sessions_ended(ids, reason.status(), reason.as_str());
    }

    fn remember_ends(&self, ids: &[Uuid], reason: EndReason) {
        let now = Instant::now();
        let mut recent = self
            .recent_ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        recent.retain(|_, (_, at)| now.duration_since(*at) < RECENT_ENDS_KEPT);
        for id in ids {
            if recent.len() >= RECENT_ENDS_MAX {
                break;
            }
            recent.insert(*id, (reason, now));
        }
    }

    /// Called by a login once its session's record is written. If the session was ended in
    /// between (a concurrent login of the same user evicted it, the user revoked it), the
    /// ending's record update may have run before the record existed and changed nothing:
    /// the ending is written again, now that there is a row (a second write of an ended
    /// record changes nothing). An ending not reported yet is written after the record, so
    /// needs nothing. The metric was counted by the ending itself.
    pub fn recorded(&self, session_id: Uuid) {
        let ended = self
            .recent_ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&session_id);
        if let Some((reason, _)) = ended {
            self.writer
                .sessions_ended(vec![session_id], reason.status(), reason.as_str());
        }
    }

    pub async fn list(&self, user_id: Uuid) -> Result<Vec<LiveSession>, StoreError> {
        self.store.list(user_id).await
    }

    pub async fn live(&self, keys: &[SessionKey]) -> Result<Vec<bool>, StoreError> {
        self.store.live(keys).await
    }

    /// Gives every live session of the user these roles (see [`SessionStore::set_roles`]).
    pub async fn set_roles(&self, user_id: Uuid, roles: &[String]) -> Result<usize, StoreError> {
        let updated = self.store.set_roles(user_id, roles).await;
        self.forget(user_id);
        updated
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    pub fn backend(&self) -> &'static str {
        self.store.backend()
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

/// A duration in whole milliseconds, as Redis and the cache count them (saturating).
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
