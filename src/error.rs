//! The one error type of everything the gateway answers itself — the `/auth` API, the proxy's
//! own refusals (400, 404, 401, 429, 503), upstream failures (502/504) and the connection
//! layer (408, 429, 503) — and its mapping to status, code and message, written once.
//! Every error body is `{"error": {"code": "<snake_case>", "message": "<human text>"}}`.

use std::time::Duration;

use crate::password::HashError;
use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    /// 400: the body or a field is malformed; the message names the field.
    InvalidRequest(String),
    /// 401: wrong email or password (the same answer for both).
    InvalidCredentials,
    /// 401: no session, or an unknown/expired one.
    Unauthenticated,
    /// 403: the account exists but is disabled.
    AccountDisabled,
    /// 403: a cross-site or token-less browser request (CSRF defence).
    Forbidden(String),
    /// 403: `access.registration = "closed"`: no new accounts.
    RegistrationClosed,
    /// 403: the address is not at a domain of `access.allowed_email_domains` (the rule, in
    /// words).
    EmailDomainNotAllowed(String),
    /// 403: signed in, but not on the route's allow list (the user's email, for the message).
    NotAllowed(String),
    NotFound,
    MethodNotAllowed,
    /// 409: the field whose value is already taken.
    Conflict(&'static str),
    /// 409: the per-user session cap is reached and the policy is `reject`.
    SessionLimit(u32),
    /// 409: the password was changed, or every other session ended, while this login was
    /// checking the password; no session was created.
    CredentialsChanged,
    PayloadTooLarge(usize),
    UnsupportedMediaType,
    RateLimited(Duration),
    /// 429: this address's sign-in attempts (`login_protection.max_attempts_per_ip`) are used up.
    LoginAttemptsFromAddress(Duration),
    /// 429: this address's sign-ups (`login_protection.max_registrations_per_ip`) are used up.
    RegistrationsFromAddress(Duration),
    /// 429: too many failed logins for this account; locked for this long.
    Locked(Duration),
    /// 503: a store or the hashing pool cannot serve the request now.
    Unavailable(String),
    /// 503: the in-process session store holds its maximum of live sessions.
    SessionStoreFull(usize),
    /// 431: the request's headers (or its Cookie header) are too large.
    HeadersTooLarge(&'static str),
    /// 400: a request path the gateway will not route (dot segments, backslashes...).
    InvalidPath(&'static str),
    /// 400: a request the gateway cannot read one way only (target form, Host, framing).
    InvalidTarget {
        code: &'static str,
        message: String,
    },
    /// 404: no route matches the path.
    NoRoute,
    /// 502/503/504: proxying to the upstream failed.
    Upstream(UpstreamFailure),
    /// 400: pingora could not make sense of the request.
    BadRequest,
    /// 408: the request head did not arrive within `server.header_timeout`.
    RequestTimeout,
    /// 429 (this client's cap) or 503 (the gateway's cap): too many open connections.
    TooManyConnections(ConnectionCap),
}

/// Which connection cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionCap {
    /// `server.max_connections_per_ip`: 429.
    PerIp,
    /// `server.max_connections`: 503.
    Global,
}

/// How proxying to an upstream failed.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamFailure {
    /// Every upstream of the route is marked down (503).
    NoneHealthy,
    /// Connecting or reading timed out (504).
    Timeout,
    /// Refused, reset or broken (502).
    Failed,
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::InvalidRequest(_) => 400,
            ApiError::InvalidCredentials | ApiError::Unauthenticated => 401,
            ApiError::AccountDisabled
            | ApiError::Forbidden(_)
            | ApiError::RegistrationClosed
            | ApiError::EmailDomainNotAllowed(_)
            | ApiError::NotAllowed(_) => 403,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed => 405,
            ApiError::Conflict(_) | ApiError::SessionLimit(_) | ApiError::CredentialsChanged => 409,
            ApiError::PayloadTooLarge(_) => 413,
            ApiError::HeadersTooLarge(_) => 431,
            ApiError::InvalidPath(_) | ApiError::InvalidTarget { .. } | ApiError::BadRequest => 400,
            ApiError::NoRoute => 404,
            ApiError::Upstream(UpstreamFailure::NoneHealthy) => 503,
            ApiError::Upstream(UpstreamFailure::Timeout) => 504,
            ApiError::Upstream(UpstreamFailure::Failed) => 502,
            ApiError::UnsupportedMediaType => 415,
            ApiError::RateLimited(_)
            | ApiError::LoginAttemptsFromAddress(_)
            | ApiError::RegistrationsFromAddress(_)
            | ApiError::Locked(_) => 429,
            ApiError::Unavailable(_) | ApiError::SessionStoreFull(_) => 503,
            ApiError::RequestTimeout => 408,
            ApiError::TooManyConnections(ConnectionCap::PerIp) => 429,
            ApiError::TooManyConnections(ConnectionCap::Global) => 503,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::AccountDisabled => "account_disabled",
            ApiError::Forbidden(_) => "csrf_failed",
            ApiError::RegistrationClosed => "registration_closed",
            ApiError::EmailDomainNotAllowed(_) => "email_domain_not_allowed",
            ApiError::NotAllowed(_) => "access_denied",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict("email") => "email_taken",
            ApiError::Conflict("username") => "username_taken",
            ApiError::Conflict(_) => "conflict",
            ApiError::SessionLimit(_) => "session_limit_reached",
            ApiError::CredentialsChanged => "credentials_changed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::RateLimited(_)
            | ApiError::LoginAttemptsFromAddress(_)
            | ApiError::RegistrationsFromAddress(_) => "rate_limited",
            ApiError::Locked(_) => "account_locked",
            ApiError::Unavailable(_) => "service_unavailable",
            ApiError::SessionStoreFull(_) => "session_store_full",
            ApiError::HeadersTooLarge(_) => "headers_too_large",
            ApiError::InvalidPath(_) => "invalid_path",
            ApiError::InvalidTarget { code, .. } => code,
            ApiError::NoRoute => "not_found",
            ApiError::Upstream(UpstreamFailure::NoneHealthy) => "upstream_unavailable",
            ApiError::Upstream(UpstreamFailure::Timeout) => "upstream_timeout",
            ApiError::Upstream(UpstreamFailure::Failed) => "bad_gateway",
            ApiError::BadRequest => "bad_request",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::TooManyConnections(_) => "too_many_connections",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::InvalidRequest(message) => message.clone(),
            ApiError::InvalidCredentials => "invalid email or password".to_string(),
            ApiError::Unauthenticated => "sign-in required".to_string(),
            ApiError::AccountDisabled => "this account is disabled".to_string(),
            ApiError::Forbidden(message) => message.clone(),
            ApiError::RegistrationClosed => {
                "registration is closed (access.registration); ask an administrator for an \
                 account"
                    .to_string()
            }
            ApiError::EmailDomainNotAllowed(rule) => {
                format!("registration is limited to email addresses at {rule}")
            }
            ApiError::NotAllowed(email) => format!(
                "{email} is signed in but not allowed here (the route's allow list); ask an \
                 administrator for access, or sign in with another account"
            ),
            ApiError::NotFound => "no such endpoint".to_string(),
            ApiError::MethodNotAllowed => "method not allowed on this endpoint".to_string(),
            ApiError::Conflict(field) => format!("that {field} is already registered"),
            ApiError::SessionLimit(limit) => {
                format!("this account already has {limit} active sessions; sign out of one first")
            }
            ApiError::CredentialsChanged => "your account's credentials or sessions changed while \
                signing in; sign in again"
                .to_string(),
            ApiError::PayloadTooLarge(limit) => {
                format!("request body exceeds the {limit}-byte limit")
            }
            ApiError::UnsupportedMediaType => {
                "send Content-Type: application/json (or application/x-www-form-urlencoded)"
                    .to_string()
            }
            ApiError::RateLimited(_) => "too many requests; retry later".to_string(),
            ApiError::LoginAttemptsFromAddress(wait) => format!(
                "too many sign-in attempts from your network (the per-address limit, \
                 login_protection.max_attempts_per_ip); try again in {}",
                human_wait(*wait)
            ),
            ApiError::RegistrationsFromAddress(wait) => format!(
                "too many sign-ups from your network (the per-address limit, \
                 login_protection.max_registrations_per_ip); try again in {}",
                human_wait(*wait)
            ),
            ApiError::Locked(wait) => format!(
                "too many failed sign-in attempts for this account (the account lockout, \
                 login_protection.max_failures); try again in {}",
                human_wait(*wait)
            ),
            ApiError::Unavailable(_) => "temporarily unavailable; retry shortly".to_string(),
            ApiError::SessionStoreFull(limit) => format!(
                "the gateway already holds its maximum of {limit} live sessions \
                 (storage.max_sessions); sign-in works again as sessions end"
            ),
            ApiError::HeadersTooLarge(message) | ApiError::InvalidPath(message) => {
                message.to_string()
            }
            ApiError::InvalidTarget { message, .. } => message.clone(),
            ApiError::NoRoute => "no route for this path".to_string(),
            ApiError::Upstream(UpstreamFailure::NoneHealthy) => {
                "no healthy upstream for this route".to_string()
            }
            ApiError::Upstream(UpstreamFailure::Timeout) => {
                "the upstream did not answer in time".to_string()
            }
            ApiError::Upstream(UpstreamFailure::Failed) => {
                "the upstream is unreachable or failed".to_string()
            }
            ApiError::BadRequest => "malformed request".to_string(),
            ApiError::RequestTimeout => "the request headers did not arrive in time".to_string(),
            ApiError::TooManyConnections(ConnectionCap::PerIp) => {
                "too many open connections from this address; close some and retry".to_string()
            }
            ApiError::TooManyConnections(ConnectionCap::Global) => {
                "the gateway has too many open connections; retry shortly".to_string()
            }
        }
    }

    /// Seconds for a `Retry-After` header, where one applies.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited(wait)
            | ApiError::LoginAttemptsFromAddress(wait)
            | ApiError::RegistrationsFromAddress(wait)
            | ApiError::Locked(wait) => Some(wait.as_secs_f64().ceil().max(1.0) as u64),
            ApiError::Unavailable(_)
            | ApiError::Upstream(UpstreamFailure::NoneHealthy)
            | ApiError::TooManyConnections(_) => Some(1),
            _ => None,
        }
    }

    pub fn body(&self) -> Vec<u8> {
        error_body(self.code(), &self.message())
    }
}

/// "14 minutes", "40 seconds": for messages people read.
pub fn human_wait(wait: Duration) -> String {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    match seconds {
        1 => "1 second".to_string(),
        2..=90 => format!("{seconds} seconds"),
        _ => format!("{} minutes", seconds.div_ceil(60)),
    }
}

/// The JSON error body of every error the gateway answers.
fn error_body(code: &str, message: &str) -> Vec<u8> {
    serde_json::json!({"error": {"code": code, "message": message}})
        .to_string()
        .into_bytes()
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(field) => ApiError::Conflict(field),
            StoreError::Full { limit, .. } => ApiError::SessionStoreFull(limit),
            StoreError::Unavailable { .. } | StoreError::NoAnswer { .. } => {
                ApiError::Unavailable(error.to_string())
            }
        }
    }
}

impl From<HashError> for ApiError {
    fn from(error: HashError) -> Self {
        ApiError::Unavailable(error.to_string())
    }
}
