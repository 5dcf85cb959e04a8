//! The `/auth` endpoints: register, login, logout, me.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

use super::error::ApiError;
use super::input::{self, Fields};
use super::{AuthApi, AuthRequest, AuthResponse};
use crate::session::{LiveSession, Lookup, SessionData, SessionToken};
use crate::store::{AuthEvent, NewUser, SessionEnd, SessionRecord, User};

impl AuthApi {
    pub(super) async fn register(&self, request: &AuthRequest) -> Result<AuthResponse, ApiError> {
        let result = self.register_user(request).await;
        self.metrics.registration(match &result {
            Ok(_) => "created",
            Err(ApiError::Conflict(_)) => "conflict",
            Err(ApiError::Unavailable(_)) => "unavailable",
            Err(_) => "invalid",
        });
        let user = result?;
        self.audit(request, "register", Some(user.id), None, json!({}))
            .await;
        Ok(AuthResponse::json(201, &json!({ "user": user })))
    }

    async fn register_user(&self, request: &AuthRequest) -> Result<User, ApiError> {
        let fields = Fields::parse(request.header("content-type"), &request.body)?;
        let email = input::normalize_email(fields.required("email")?)?;
        let password = fields.required("password")?;
        input::check_new_password(password, &email, self.min_password_length)?;
        let username = fields
            .optional("username")?
            .map(input::check_username)
            .transpose()?;
        let full_name = fields
            .optional("full_name")?
            .map(input::check_full_name)
            .transpose()?
            .filter(|name| !name.is_empty());
        self.require_database()?;
        let password_hash = self.hasher.hash(password.to_string()).await?;
        let user = self
            .records
            .create_user(&NewUser {
                email,
                username,
                full_name,
                password_hash,
            })
            .await?;
        Ok(user)
    }

    pub(super) async fn login(&self, request: &AuthRequest) -> Result<AuthResponse, ApiError> {
        let fields = Fields::parse(request.header("content-type"), &request.body)
            .inspect_err(|_| self.metrics.login("invalid"))?;
        let email = fields
            .required("email")
            .and_then(input::normalize_email)
            .inspect_err(|_| self.metrics.login("invalid"))?;
        let password = fields
            .required("password")
            .inspect_err(|_| self.metrics.login("invalid"))?;
        self.require_database()?;

        let credentials = self
            .records
            .credentials_by_email(&email)
            .await
            .inspect_err(|_| self.metrics.login("unavailable"))?;
        // Always one bcrypt verification, against a dummy hash when there is no such account,
        // so unknown emails and wrong passwords look alike.
        let stored_hash = credentials.as_ref().map(|c| c.password_hash.clone());
        let password_ok = password.len() <= input::MAX_PASSWORD_BYTES
            && self
                .hasher
                .verify(password.to_string(), stored_hash)
                .await
                .inspect_err(|_| self.metrics.login("unavailable"))?;
        let now = Utc::now();
        let credentials = match credentials {
            Some(credentials) if password_ok => credentials,
            other => {
                self.metrics.login("failure");
                let user_id = other.map(|c| c.user.id);
                if let Some(user_id) = user_id {
                    if let Err(error) = self.records.record_failed_login(user_id, now).await {
                        tracing::warn!(%error, "cannot record failed login");
                    }
                }
                self.audit(request, "login_failed", user_id, None, json!({}))
                    .await;
                return Err(ApiError::InvalidCredentials);
            }
        };
        if !credentials.is_active {
            self.metrics.login("disabled");
            return Err(ApiError::AccountDisabled);
        }

        // No session fixation: whatever session the client came with is ended.
        self.end_presented_session(request).await;

        let user = credentials.user;
        let user_agent = request.user_agent();
        let (token, session) = self
            .sessions
            .start(user.id, &user.email, request.client_ip, &user_agent, now)
            .await
            .inspect_err(|_| self.metrics.login("unavailable"))?;
        let record = SessionRecord {
            id: session.id,
            user_id: user.id,
            token_hash: token.hash(),
            ip: request.client_ip,
            user_agent,
            created_at: now,
            expires_at: timestamp(session.absolute_expiry_ms),
        };
        if let Err(error) = self.records.insert_session(&record).await {
            // Without its durable record the session must not exist either.
            if let Err(cleanup) = self.sessions.end(&token, &session).await {
                tracing::warn!(error = %cleanup, "cannot undo session after database failure");
            }
            self.metrics.login("unavailable");
            return Err(error.into());
        }
        if let Err(error) = self.records.record_login(user.id, now).await {
            tracing::warn!(%error, "cannot stamp last_login");
        }
        self.metrics.login("success");
        self.metrics.session_created();
        self.audit(
            request,
            "login_ok",
            Some(user.id),
            Some(session.id),
            json!({}),
        )
        .await;

        let user = User {
            last_login: Some(now),
            ..user
        };
        let body = json!({
            "user": user,
            "session": session_json(&session, None),
        });
        Ok(AuthResponse::json(200, &body)
            .with_header("set-cookie", self.sessions.new_cookie(&token)))
    }

    pub(super) async fn logout(&self, request: &AuthRequest) -> Result<AuthResponse, ApiError> {
        let (token, live) = self.authenticate(request).await?;
        self.sessions.end(&token, &live.data).await?;
        self.metrics.session_ended("logout");
        self.record_session_end(&live.data, SessionEnd::LoggedOut, "logout")
            .await;
        self.audit(
            request,
            "logout",
            Some(live.data.user_id),
            Some(live.data.id),
            json!({}),
        )
        .await;
        Ok(AuthResponse::no_content().with_header("set-cookie", self.sessions.clear_cookie()))
    }

    pub(super) async fn me(&self, request: &AuthRequest) -> Result<AuthResponse, ApiError> {
        let (token, live) = self.authenticate(request).await?;
        self.require_database()?;
        let user = self
            .records
            .user(live.data.user_id)
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        // The user's fields at the top level (as the seed service answered) and under "user"
        // (like register and login), so clients of either shape work.
        let mut body = serde_json::to_value(&user).unwrap_or_else(|_| json!({}));
        if let Some(object) = body.as_object_mut() {
            object.insert(
                "user".to_string(),
                serde_json::to_value(&user).unwrap_or_default(),
            );
            object.insert("session".to_string(), session_json(&live.data, Some(&live)));
        }
        Ok(AuthResponse::json(200, &body)
            .with_header("set-cookie", self.sessions.refresh_cookie(&token, &live)))
    }

    /// The caller's live session, or 401.
    async fn authenticate(
        &self,
        request: &AuthRequest,
    ) -> Result<(SessionToken, LiveSession), ApiError> {
        match self.sessions.lookup(&request.headers).await? {
            Lookup::Valid { token, session } => Ok((token, session)),
            Lookup::Missing | Lookup::Invalid => Err(ApiError::Unauthenticated),
        }
    }

    async fn end_presented_session(&self, request: &AuthRequest) {
        if let Ok(Lookup::Valid { token, session }) = self.sessions.lookup(&request.headers).await {
            if let Ok(true) = self.sessions.end(&token, &session.data).await {
                self.metrics.session_ended("revoked");
                self.record_session_end(&session.data, SessionEnd::Revoked, "replaced_by_login")
                    .await;
            }
        }
    }

    async fn record_session_end(&self, session: &SessionData, end: SessionEnd, reason: &str) {
        if let Err(error) = self
            .records
            .end_session(session.id, end, reason, Utc::now())
            .await
        {
            // The live session is already gone; the record is corrected by the expiry job.
            tracing::warn!(%error, session_id = %session.id, "cannot record session end");
        }
    }

    /// Appends to the audit trail; a failure is logged, never fatal to the request.
    async fn audit(
        &self,
        request: &AuthRequest,
        kind: &'static str,
        user_id: Option<uuid::Uuid>,
        session_id: Option<uuid::Uuid>,
        detail: serde_json::Value,
    ) {
        let event = AuthEvent {
            kind,
            user_id,
            session_id,
            ip: Some(request.client_ip),
            user_agent: Some(request.user_agent()),
            detail,
        };
        if let Err(error) = self.records.record_event(&event).await {
            tracing::warn!(%error, kind, "cannot record auth event");
        }
    }
}

fn timestamp(unix_ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(unix_ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn session_json(session: &SessionData, live: Option<&LiveSession>) -> serde_json::Value {
    let mut value = json!({
        "id": session.id,
        "created_at": timestamp(session.created_at_ms),
        "expires_at": timestamp(session.absolute_expiry_ms),
    });
    if let (Some(live), Some(object)) = (live, value.as_object_mut()) {
        let idle_expiry = Utc::now() + live.idle_remaining;
        object.insert("idle_expires_at".to_string(), json!(idle_expiry));
    }
    value
}
