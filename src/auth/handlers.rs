//! The `/auth` endpoints: account (register, login, logout, me, password) and the signed-in
//! user's sessions, devices and IPs.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use uuid::Uuid;

use super::input::{self, Fields};
use super::{AuthApi, AuthRequest, AuthResponse};
use crate::error::ApiError;
use std::time::Duration;

use crate::limits::login::{Outcome, Refusal};
use crate::session::{
    EndReason, LiveSession, Login, Lookup, SessionData, SessionToken, Start, Started,
};
use crate::store::behind::AccountWrite;
use crate::store::{AuditKind, AuthEvent, Credentials, NewUser, SessionRecord, User};

impl AuthApi {
    pub(super) async fn register(&self, request: &AuthRequest) -> Result<AuthResponse, ApiError> {
        let user = self.create_account(request).await?;
        Ok(AuthResponse::json(201, &json!({ "user": user })))
    }

    /// A registration, counted and audited: the new account, or why there is none.
    pub(super) async fn create_account(&self, request: &AuthRequest) -> Result<User, ApiError> {
        let result = self.register_user(request).await;
        self.metrics.registration(match &result {
            Ok(_) => "created",
            Err(ApiError::Conflict(_)) => "conflict",
            Err(ApiError::RegistrationsFromAddress(_)) => "rate_limited",
            Err(ApiError::RegistrationClosed | ApiError::EmailDomainNotAllowed(_)) => "refused",
            Err(ApiError::Unavailable(_)) => "unavailable",
            Err(_) => "invalid",
        });
        let user = result?;
        self.audit(request, AuditKind::Register, Some(user.id), None, json!({}));
        Ok(user)
    }

    /// Signs in an account just created by this request (the sign-up page): a session opened
    /// exactly as a login opens one, answered like a login.
    pub(super) async fn sign_in_new_account(
        &self,
        request: &AuthRequest,
        user: User,
    ) -> Result<AuthResponse, ApiError> {
        // Read after the account was made: a revoke-all since then refuses the session.
        let epoch = self.sessions.credential_epoch(user.id).await?;
        // An operator may have disabled the account already (`authgate user disable` moves
        // the epoch after writing `is_active`, so this read, after the epoch's, sees it).
        let disabled = self
            .records
            .credentials_by_email(&user.email)
            .await?
            .is_none_or(|now| now.user.id != user.id || !now.is_active);
        if disabled {
            return Err(ApiError::AccountDisabled);
        }
        let (user, started) = self.open_session(request, user, epoch).await?;
        Ok(self.session_opened(&user, &started))
    }

    /// Creates the account a registration asks for; the caller answers and audits.
    async fn register_user(&self, request: &AuthRequest) -> Result<User, ApiError> {
        let access = self.access.load();
        // Closed is closed whatever the body says; the domain rule needs the address's
        // normal form. Neither costs a registration attempt from the address's budget.
        if !access.registration_open() {
            return Err(ApiError::RegistrationClosed);
        }
        let fields = Fields::parse(request.header("content-type"), &request.body)?;
        let email = input::normalize_email(fields.required("email")?)?;
        access.check_registration(&email)?;
        let password = fields.required("password")?;
        input::check_new_password(password, &email, self.min_password_length)?;
        let username = present(fields.optional("username")?)
            .map(input::check_username)
            .transpose()?;
        let full_name = present(fields.optional("full_name")?)
            .map(input::check_full_name)
            .transpose()?;
        self.require_database()?;
        // Every well-formed attempt counts, before any bcrypt work.
        if let Some(wait) = self
            .login_protection
            .begin_registration(request.client_ip)
            .await?
        {
            // Counted once, as the registration outcome `rate_limited`.
            return Err(ApiError::RegistrationsFromAddress(wait));
        }
        // Registrations take a back seat to sign-ins on the bcrypt pool.
        let password_hash = self
            .hasher
            .hash_for_registration(password.to_string())
            .await?;
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
        let result = self.sign_in(request).await;
        self.metrics.login(match &result {
            Ok(_) => "success",
            Err(ApiError::InvalidCredentials) => "failure",
            Err(ApiError::AccountDisabled) => "disabled",
            Err(ApiError::SessionLimit(_)) => "session_limit",
            Err(ApiError::CredentialsChanged) => "credentials_changed",
            Err(ApiError::Locked(_)) => "locked",
            Err(ApiError::RateLimited(_) | ApiError::LoginAttemptsFromAddress(_)) => "rate_limited",
            Err(ApiError::Unavailable(_)) => "unavailable",
            Err(_) => "invalid",
        });
        let (user, started) = result?;
        Ok(self.session_opened(&user, &started))
    }

    /// The answer to a login that opened a session: the user, the session and its cookie.
    fn session_opened(&self, user: &User, started: &Started) -> AuthResponse {
        self.metrics.session_created();
        let body = json!({
            "user": user,
            "session": session_json(&started.data, None),
        });
        AuthResponse::json(200, &body)
            .with_header("set-cookie", self.sessions.new_cookie(&started.token))
    }

    async fn sign_in(&self, request: &AuthRequest) -> Result<(User, Started), ApiError> {
        let fields = Fields::parse(request.header("content-type"), &request.body)?;
        let email = input::normalize_email(fields.required("email")?)?;
        let password = fields.required("password")?;
        let Checked { credentials, epoch } = self
            .check_password(request, &email, password, AuditKind::LoginFailed)
            .await?;
        if !credentials.is_active {
            return Err(ApiError::AccountDisabled);
        }
        // bcrypt took a while. A revoke-all since the epoch was read (before the check) makes
        // the store refuse the session below. A password change is revoke-all, new hash,
        // revoke-all: if it stored its hash since the check read the old one, this re-read
        // sees it; if not, its second bump comes after our epoch read, so the session is
        // refused, or made just before that bump and ended by it.
        self.still_current(request, &email, &credentials).await?;
        self.open_session(request, credentials.user, epoch).await
    }

    /// Opens a session for `user`, whose credentials were verified (by a password check, or
    /// by creating the account) after `epoch`, their credential epoch, was read: ends the
    /// session the client came with, records the device and IP, enforces the per-user cap,
    /// writes the session's record and the `login_ok` audit event, and stamps `last_login`.
    /// The one way a session is opened: sign-in and sign-up through the page both use it.
    async fn open_session(
        &self,
        request: &AuthRequest,
        user: User,
        epoch: u64,
    ) -> Result<(User, Started), ApiError> {
        let now = Utc::now();
        // Read after the credential epoch (taken before the password check): a role change
        // since bumps the epoch, so a session made with roles read before it is refused.
        let roles = self.records.user_roles(user.id).await?;

        // No session fixation: whatever session the client came with is ended.
        self.end_presented_session(request).await;

        let user_agent = request.user_agent();
        let device_label = crate::device::label(&user_agent);
        let location = self.locator.locate(
            request.client_ip,
            &request.headers,
            request.via_trusted_proxy,
        );
        let device_id = self
            .records
            .upsert_device(user.id, &user_agent, &device_label, now)
            .await?;
        let ip_id = self
            .records
            .upsert_ip(user.id, request.client_ip, location.as_deref(), now)
            .await?;
        let login = Login {
            user_id: user.id,
            email: user.email.clone(),
            ip: request.client_ip,
            user_agent: user_agent.clone(),
            device_id: Some(device_id),
            device_label,
            ip_id: Some(ip_id),
            location: location.clone(),
            roles,
        };
        let started = match self.sessions.start(login, now, epoch).await? {
            Start::Started(started) => started,
            Start::LimitReached => {
                return Err(ApiError::SessionLimit(
                    self.sessions.config().max_sessions_per_user,
                ))
            }
            Start::CredentialsChanged => {
                self.audit(
                    request,
                    AuditKind::LoginCredentialsChanged,
                    Some(user.id),
                    None,
                    json!({ "reason": "sessions_revoked" }),
                );
                return Err(ApiError::CredentialsChanged);
            }
        };
        // Evicted sessions are gone whatever happens next: record them now.
        self.record_evictions(request, &started);
        let record = SessionRecord {
            id: started.data.id,
            user_id: user.id,
            token_hash: started.token.hash(),
            ip: request.client_ip,
            user_agent,
            device_id: Some(device_id),
            ip_id: Some(ip_id),
            location,
            created_at: now,
            expires_at: timestamp(started.data.absolute_expiry_ms),
        };
        if let Err(error) = self.records.insert_session(&record).await {
            // Without its durable record the session must not exist either.
            if let Err(cleanup) = self.sessions.discard(&started.data).await {
                tracing::warn!(error = %cleanup, "cannot undo session after database failure");
            }
            return Err(error.into());
        }
        // Evicted or revoked before its record existed: make sure the record says so.
        self.sessions.recorded(started.data.id);
        // The login's audit event is written before the 200, not behind it: a login the
        // client was told succeeded must have its event even if the process dies (SIGKILL,
        // OOM) right after answering, when the write-behind queue would be lost with it.
        // Without the event the session must not be handed out either; its record, left
        // `active` with no live session, is closed by the expiry job like any lost session.
        let event = self.event(
            request,
            AuditKind::LoginOk,
            Some(user.id),
            Some(started.data.id),
            json!({}),
        );
        if let Err(error) = self.records.record_event(&event).await {
            if let Err(cleanup) = self.sessions.discard(&started.data).await {
                tracing::warn!(error = %cleanup, "cannot undo session after database failure");
            }
            return Err(error.into());
        }
        self.writer
            .account(AccountWrite::Login {
                user_id: user.id,
                at: now,
            })
            .await;
        let user = User {
            last_login: Some(now),
            ..user
        };
        Ok((user, started))
    }

    /// Refuses a login whose verified credentials are no longer the account's: the password
    /// hash changed (or the account is gone) since the check read it, or it was disabled.
    async fn still_current(
        &self,
        request: &AuthRequest,
        email: &str,
        checked: &Credentials,
    ) -> Result<(), ApiError> {
        let now = self.records.credentials_by_email(email).await?;
        match now {
            Some(now)
                if now.user.id == checked.user.id && now.password_hash == checked.password_hash =>
            {
                if now.is_active {
                    Ok(())
                } else {
                    Err(ApiError::AccountDisabled)
                }
            }
            _ => {
                self.audit(
                    request,
                    AuditKind::LoginCredentialsChanged,
                    Some(checked.user.id),
                    None,
                    json!({ "reason": "password_changed" }),
                );
                Err(ApiError::CredentialsChanged)
            }
        }
    }

    /// Checks an account's password under the brute-force protection shared by login and
    /// password change: a locked account (or an IP over its limit) is refused before any
    /// bcrypt work, a wrong password counts towards the lockout, and unknown emails and wrong
    /// passwords look alike (a dummy hash is verified when there is no account). A wrong
    /// password is `InvalidCredentials`; `failure_event` names its audit event.
    async fn check_password(
        &self,
        request: &AuthRequest,
        email: &str,
        password: &str,
        failure_event: AuditKind,
    ) -> Result<Checked, ApiError> {
        match self
            .login_protection
            .begin(email, request.client_ip)
            .await?
        {
            // Counted once, by the caller, as the login outcome `locked` / `rate_limited`.
            Some(Refusal::AccountLocked(wait)) => return Err(ApiError::Locked(wait)),
            Some(Refusal::TooManyFromIp(wait)) => {
                return Err(ApiError::LoginAttemptsFromAddress(wait))
            }
            Some(Refusal::Busy) => return Err(ApiError::RateLimited(Duration::from_secs(1))),
            None => {}
        }
        let verdict = self.verify_password(email, password).await;
        let outcome = match &verdict {
            Ok(Verdict::Correct(_)) => Outcome::Succeeded,
            Ok(Verdict::Wrong { .. }) => Outcome::Failed,
            Err(_) => Outcome::Undecided,
        };
        let lockout = self
            .login_protection
            .finish(email, outcome)
            .await
            .inspect_err(|error| tracing::warn!(%error, "cannot settle the password check"))
            .unwrap_or(None);
        match verdict? {
            Verdict::Correct(checked) => Ok(checked),
            Verdict::Wrong { user_id } => {
                if let Some(user_id) = user_id {
                    self.writer
                        .account(AccountWrite::FailedLogin {
                            user_id,
                            at: Utc::now(),
                        })
                        .await;
                }
                self.audit(request, failure_event, user_id, None, json!({}));
                if let Some(lockout) = lockout {
                    self.metrics.lockout();
                    self.audit(
                        request,
                        AuditKind::Locked,
                        user_id,
                        None,
                        json!({ "lockout_seconds": lockout.as_secs() }),
                    );
                }
                Err(ApiError::InvalidCredentials)
            }
        }
    }

    /// One bcrypt verification, against a dummy hash when there is no such account. The
    /// account's credential epoch is read after its hash and before the check (for a missing
    /// account a nil user's, so both cases make the same calls).
    async fn verify_password(&self, email: &str, password: &str) -> Result<Verdict, ApiError> {
        self.require_database()?;
        let credentials = self.records.credentials_by_email(email).await?;
        let epoch = self
            .sessions
            .credential_epoch(credentials.as_ref().map_or(Uuid::nil(), |c| c.user.id))
            .await?;
        let stored_hash = credentials.as_ref().map(|c| c.password_hash.clone());
        let password_ok = password.len() <= input::MAX_PASSWORD_BYTES
            && self
                .hasher
                .verify(password.to_string(), stored_hash)
                .await?;
        Ok(match credentials {
            Some(credentials) if password_ok => Verdict::Correct(Checked { credentials, epoch }),
            other => Verdict::Wrong {
                user_id: other.map(|c| c.user.id),
            },
        })
    }

    fn record_evictions(&self, request: &AuthRequest, started: &Started) {
        for id in &started.evicted {
            self.audit(
                request,
                AuditKind::SessionEvicted,
                Some(started.data.user_id),
                Some(*id),
                json!({ "by_session": started.data.id }),
            );
        }
        self.sessions
            .ended(started.evicted.clone(), EndReason::Evicted);
    }

    pub(super) async fn logout(&self, request: &AuthRequest) -> Result<AuthResponse, ApiError> {
        let (_, live) = self.authenticate(request).await?;
        self.sessions.end(&live.data, EndReason::Logout).await?;
        self.audit(
            request,
            AuditKind::Logout,
            Some(live.data.user_id),
            Some(live.data.id),
            json!({}),
        );
        Ok(AuthResponse::no_content().with_header("set-cookie", self.sessions.clear_cookie()))
    }

    /// `GET /auth/.well-known/jwks.json`: the identity assertion's public keys (none when it
    /// is disabled). Verifiers may cache it for a minute; a new key is used only after a
    /// rotation, and an unknown `kid` is their cue to fetch it again.
    pub(super) fn jwks(&self) -> AuthResponse {
        AuthResponse::json(200, &self.assertions.jwks())
            .with_header("cache-control", "public, max-age=60".to_string())
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
        let user_value = serde_json::to_value(&user).unwrap_or_else(|_| json!({}));
        let mut body = user_value.clone();
        if let Some(object) = body.as_object_mut() {
            object.insert("user".to_string(), user_value);
            object.insert("session".to_string(), session_json(&live.data, Some(&live)));
        }
        Ok(self.authenticated(AuthResponse::json(200, &body), &token, &live))
    }

    pub(super) async fn list_sessions(
        &self,
        request: &AuthRequest,
    ) -> Result<AuthResponse, ApiError> {
        let (token, current) = self.authenticate(request).await?;
        let mut sessions = self.sessions.list(current.data.user_id).await?;
        sessions.sort_by_key(|session| std::cmp::Reverse(session.last_activity_ms));
        let listed: Vec<_> = sessions
            .iter()
            .map(|session| {
                json!({
                    "id": session.data.id,
                    "device": session.data.device_label,
                    "device_id": session.data.device_id,
                    "user_agent": session.data.user_agent,
                    "ip": session.data.ip.to_string(),
                    "location": session.data.location,
                    "created_at": timestamp(session.data.created_at_ms),
                    "last_activity": timestamp(session.last_activity_ms),
                    "expires_at": timestamp(session.data.absolute_expiry_ms),
                    "idle_expires_at": idle_expiry(session),
                    "current": session.data.id == current.data.id,
                })
            })
            .collect();
        let body = json!({ "sessions": listed, "total_active_sessions": listed.len() });
        Ok(self.authenticated(AuthResponse::json(200, &body), &token, &current))
    }

    pub(super) async fn revoke_session(
        &self,
        request: &AuthRequest,
        id: &str,
    ) -> Result<AuthResponse, ApiError> {
        let (token, current) = self.authenticate(request).await?;
        let session_id: Uuid = id
            .parse()
            .map_err(|_| ApiError::InvalidRequest("session id must be a UUID".to_string()))?;
        if !self
            .end_own_session(request, &current.data, session_id)
            .await?
        {
            return Err(ApiError::NotFound);
        }
        let response = AuthResponse::no_content();
        if session_id == current.data.id {
            return Ok(response.with_header("set-cookie", self.sessions.clear_cookie()));
        }
        Ok(self.authenticated(response, &token, &current))
    }

    pub(super) async fn revoke_other_sessions(
        &self,
        request: &AuthRequest,
    ) -> Result<AuthResponse, ApiError> {
        let (token, current) = self.authenticate(request).await?;
        let revoked = self
            .revoke_others(request, &current.data, EndReason::SignedOutElsewhere)
            .await?;
        let body = json!({ "revoked": revoked });
        Ok(self.authenticated(AuthResponse::json(200, &body), &token, &current))
    }

    pub(super) async fn list_devices(
        &self,
        request: &AuthRequest,
    ) -> Result<AuthResponse, ApiError> {
        let (token, current) = self.authenticate(request).await?;
        self.require_database()?;
        let live = self.sessions.list(current.data.user_id).await?;
        let devices = self.records.devices(current.data.user_id).await?;
        let listed: Vec<_> = devices
            .iter()
            .map(|device| {
                let sessions = live
                    .iter()
                    .filter(|session| session.data.device_id == Some(device.id))
                    .count();
                json!({
                    "id": device.id,
                    "label": device.label,
                    "user_agent": device.user_agent,
                    "first_used": device.first_seen,
                    "last_used": device.last_seen,
                    "active": sessions > 0,
                    "active_sessions": sessions,
                    "current": current.data.device_id == Some(device.id),
                })
            })
            .collect();
        let body = json!({ "devices": listed });
        Ok(self.authenticated(AuthResponse::json(200, &body), &token, &current))
    }

    pub(super) async fn list_ips(&self, request: &AuthRequest) -> Result<AuthResponse, ApiError> {
        let (token, current) = self.authenticate(request).await?;
        self.require_database()?;
        let ips = self.records.ips(current.data.user_id).await?;
        let listed: Vec<_> = ips
            .iter()
            .map(|ip| {
                json!({
                    "id": ip.id,
                    "address": ip.address.to_string(),
                    "location": ip.location,
                    "first_used": ip.first_seen,
                    "last_used": ip.last_seen,
                    "current": current.data.ip_id == Some(ip.id),
                })
            })
            .collect();
        let body = json!({ "ips": listed });
        Ok(self.authenticated(AuthResponse::json(200, &body), &token, &current))
    }

    pub(super) async fn change_password(
        &self,
        request: &AuthRequest,
    ) -> Result<AuthResponse, ApiError> {
        let (token, current) = self.authenticate(request).await?;
        let fields = Fields::parse(request.header("content-type"), &request.body)?;
        let current_password = fields.required("current_password")?;
        let new_password = fields.required("new_password")?;
        input::check_new_password(new_password, &current.data.email, self.min_password_length)
            .map_err(|error| match error {
                ApiError::InvalidRequest(message) => {
                    ApiError::InvalidRequest(format!("new_{message}"))
                }
                other => other,
            })?;
        // The same guard as login: a stolen session must not become a password oracle.
        self.check_password(
            request,
            &current.data.email,
            current_password,
            AuditKind::PasswordChangeFailed,
        )
        .await
        .map_err(|error| match error {
            ApiError::InvalidCredentials => {
                ApiError::InvalidRequest("current_password is not correct".to_string())
            }
            other => other,
        })?;
        let hash = self.hasher.hash(new_password.to_string()).await?;
        // Other sessions end first: if the store fails in between, the password is unchanged
        // rather than changed with the old sessions still alive.
        let mut revoked = self
            .revoke_others(request, &current.data, EndReason::PasswordChanged)
            .await?;
        self.records
            .set_password_hash(current.data.user_id, &hash)
            .await?;
        // And again once the new hash is stored: a login that read the old hash before the
        // update read the credential epoch before this bump too, so it is refused, or the
        // session it made in between ends here.
        match self
            .revoke_others(request, &current.data, EndReason::PasswordChanged)
            .await
        {
            Ok(count) => revoked += count,
            // The password is changed and the first revocation ended every earlier session;
            // only a login racing this very moment could be missed. The change did happen, so
            // it is not reported as failed.
            Err(error) => tracing::warn!(
                error = ?error,
                "password changed, but the second revoke-all (for logins in flight) failed"
            ),
        }
        self.audit(
            request,
            AuditKind::PasswordChanged,
            Some(current.data.user_id),
            Some(current.data.id),
            json!({ "revoked_sessions": revoked }),
        );
        Ok(self.authenticated(AuthResponse::no_content(), &token, &current))
    }

    /// Ends one of the caller's own sessions; `false` if the caller has no such session. Only
    /// the caller's index is consulted, so another user's session id is simply not found.
    pub(super) async fn end_own_session(
        &self,
        request: &AuthRequest,
        current: &SessionData,
        session_id: Uuid,
    ) -> Result<bool, ApiError> {
        let ended = self
            .sessions
            .end_by_id(current.user_id, session_id, EndReason::RevokedByUser)
            .await?;
        if !ended {
            return Ok(false);
        }
        self.audit(
            request,
            AuditKind::Revoke,
            Some(current.user_id),
            Some(session_id),
            json!({ "by_session": current.id }),
        );
        Ok(true)
    }

    /// Ends every session of the user but `current`; returns how many.
    pub(super) async fn revoke_others(
        &self,
        request: &AuthRequest,
        current: &SessionData,
        reason: EndReason,
    ) -> Result<usize, ApiError> {
        let ended = self
            .sessions
            .end_all_except(current.user_id, Some(current.id), reason)
            .await?;
        for id in &ended {
            self.audit(
                request,
                AuditKind::Revoke,
                Some(current.user_id),
                Some(*id),
                json!({ "by_session": current.id, "reason": reason.as_str() }),
            );
        }
        Ok(ended.len())
    }

    /// The caller's live session, or 401.
    async fn authenticate(
        &self,
        request: &AuthRequest,
    ) -> Result<(SessionToken, LiveSession), ApiError> {
        match self
            .sessions
            .lookup(&request.headers, request.client_ip)
            .await?
        {
            Lookup::Valid { token, session, .. } => Ok((token, session)),
            Lookup::Missing | Lookup::Invalid => Err(ApiError::Unauthenticated),
        }
    }

    /// Adds the refreshed sliding cookie to a response for a signed-in caller.
    pub(super) fn authenticated(
        &self,
        response: AuthResponse,
        token: &SessionToken,
        live: &LiveSession,
    ) -> AuthResponse {
        response.with_header("set-cookie", self.sessions.refresh_cookie(token, live))
    }

    async fn end_presented_session(&self, request: &AuthRequest) {
        let lookup = self
            .sessions
            .lookup(&request.headers, request.client_ip)
            .await;
        if let Ok(Lookup::Valid { session, .. }) = lookup {
            if let Err(error) = self
                .sessions
                .end(&session.data, EndReason::ReplacedByLogin)
                .await
            {
                tracing::warn!(%error, "cannot end the session presented at login");
            }
        }
    }

    /// Appends to the audit trail, written behind the request.
    pub(super) fn audit(
        &self,
        request: &AuthRequest,
        kind: AuditKind,
        user_id: Option<Uuid>,
        session_id: Option<Uuid>,
        detail: serde_json::Value,
    ) {
        self.writer
            .event(self.event(request, kind, user_id, session_id, detail));
    }

    /// The audit row for `request`, for [`Self::audit`] or a write that must not be behind.
    fn event(
        &self,
        request: &AuthRequest,
        kind: AuditKind,
        user_id: Option<Uuid>,
        session_id: Option<Uuid>,
        detail: serde_json::Value,
    ) -> AuthEvent {
        AuthEvent {
            kind,
            user_id,
            session_id,
            ip: Some(request.client_ip),
            user_agent: Some(request.user_agent()),
            detail,
        }
    }
}

/// A password found correct: the account as read before the check, and its credential epoch
/// read between that and the check.
struct Checked {
    credentials: Credentials,
    epoch: u64,
}

/// What a password check found.
enum Verdict {
    Correct(Checked),
    /// Wrong password or no such account (`user_id` when the account exists).
    Wrong {
        user_id: Option<Uuid>,
    },
}

/// Forms send optional fields empty: empty means absent.
fn present(value: Option<&str>) -> Option<&str> {
    value.filter(|text| !text.trim().is_empty())
}

fn timestamp(unix_ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(unix_ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn idle_expiry(live: &LiveSession) -> DateTime<Utc> {
    Utc::now() + live.idle_remaining
}

fn session_json(session: &SessionData, live: Option<&LiveSession>) -> serde_json::Value {
    let mut value = json!({
        "id": session.id,
        "created_at": timestamp(session.created_at_ms),
        "expires_at": timestamp(session.absolute_expiry_ms),
        "device": session.device_label,
        "ip": session.ip.to_string(),
        "location": session.location,
    });
    if let (Some(live), Some(object)) = (live, value.as_object_mut()) {
        object.insert("idle_expires_at".to_string(), json!(idle_expiry(live)));
    }
    value
}
