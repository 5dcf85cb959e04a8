//! The `/auth` API, answered by the gateway itself (contract §3).
//!
//! The gateway hands over an [`AuthRequest`] (method, path, headers, the already size-capped
//! body, client IP) and writes back the [`AuthResponse`]. Handlers see stores only through
//! their traits; errors go through the single [`ApiError`] mapping.

pub mod access;
pub mod csrf;
mod handlers;
pub mod input;
pub mod pages;
pub mod redirect;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method};

pub use crate::error::ApiError;

use crate::geo::Locator;
use crate::limits::login::LoginGuard;
use crate::password::PasswordHasher;
use crate::session::Sessions;
use crate::store::behind::WriteBehind;
use crate::store::RecordStore;
use crate::telemetry::Metrics;
use csrf::CsrfPolicy;
pub use pages::Pages;

/// Request bodies on `/auth` larger than this get 413 (contract §5).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

pub struct AuthRequest {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    /// The query string, if any (pages read `rd` and notices from it).
    pub query: Option<String>,
    pub body: Bytes,
    pub client_ip: IpAddr,
    /// Whether the TCP peer is a trusted proxy (whose CDN headers may be believed).
    pub via_trusted_proxy: bool,
}

impl AuthRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    fn user_agent(&self) -> String {
        crate::session::truncate_user_agent(self.header("user-agent").unwrap_or("")).to_string()
    }
}

#[derive(Debug)]
pub struct AuthResponse {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl AuthResponse {
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self {
            status,
            content_type: Some("application/json"),
            headers: Vec::new(),
            body: value.to_string().into_bytes(),
        }
    }

    pub fn no_content() -> Self {
        Self {
            status: 204,
            content_type: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn error(error: &ApiError) -> Self {
        let mut response = Self {
            status: error.status(),
            content_type: Some("application/json"),
            headers: Vec::new(),
            body: error.body(),
        };
        if let Some(seconds) = error.retry_after() {
            response.headers.push(("retry-after", seconds.to_string()));
        }
        response
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

pub struct AuthApi {
    pub sessions: Arc<Sessions>,
    pub records: Arc<dyn RecordStore>,
    pub writer: WriteBehind,
    pub hasher: Arc<PasswordHasher>,
    pub locator: Arc<Locator>,
    pub login_protection: Arc<dyn LoginGuard>,
    pub csrf: CsrfPolicy,
    /// Swapped whole when a hot reload changes `[branding]`.
    pub pages: arc_swap::ArcSwap<pages::Pages>,
    /// Who may create an account; swapped whole when a hot reload changes `[access]`.
    pub access: arc_swap::ArcSwap<access::AccessPolicy>,
    pub metrics: Arc<Metrics>,
    pub min_password_length: usize,
    /// Set once the database schema is migrated; until then database-backed calls get 503.
    pub database_ready: Arc<AtomicBool>,
    /// The identity assertion, whose public keys the API publishes.
    pub assertions: Arc<crate::assertion::Assertions>,
}

impl AuthApi {
    pub fn is_auth_path(path: &str) -> bool {
        path == "/auth" || path.starts_with("/auth/")
    }

    pub async fn handle(&self, request: AuthRequest) -> AuthResponse {
        let result = match self.check_csrf(&request) {
            Ok(()) => self.route(&request).await,
            Err(error @ ApiError::Forbidden(_)) if Self::is_page_request(&request) => {
                tracing::info!(path = %request.path, reason = %error.message(), "form post refused");
                return self.csrf_failure_page(&request, &error.message());
            }
            Err(error) => Err(error),
        };
        result.unwrap_or_else(|error| self.error_response(&request, error))
    }

    /// State-changing requests must come from our own pages or be non-browser JSON calls.
    fn check_csrf(&self, request: &AuthRequest) -> Result<(), ApiError> {
        if !CsrfPolicy::is_state_changing(&request.method) {
            return Ok(());
        }
        self.csrf.check_origin(&request.headers)?;
        let content_type = request.header("content-type");
        if csrf::is_form_content_type(content_type) {
            // A form post: only url-encoded forms can carry the token; anything else a
            // cross-site form could send is refused here.
            let fields = input::Fields::parse(content_type, &request.body).map_err(|_| {
                ApiError::Forbidden(
                    "cross-site form posts are refused; send JSON or a url-encoded form \
                         with its CSRF token"
                        .to_string(),
                )
            })?;
            self.csrf.check_form_token(&request.headers, &fields)?;
        }
        Ok(())
    }

    async fn route(&self, request: &AuthRequest) -> Result<AuthResponse, ApiError> {
        let method = &request.method;
        let page = matches!(*method, Method::GET | Method::HEAD);
        let form = Self::is_page_request(request);
        match request.path.as_str() {
            "/auth/login" if page => self.login_page(request).await,
            "/auth/register" if page => self.register_page(request).await,
            "/auth/devices" if page => self.devices_page(request).await,
            pages::STYLESHEET_PATH if page => Ok(self.pages.load().stylesheet()),
            crate::assertion::JWKS_PATH if page => Ok(self.jwks()),
            "/auth/login" if form => self.login_form(request).await,
            "/auth/register" if form => self.register_form(request).await,
            "/auth/logout" if form => self.logout_form(request).await,
            "/auth/devices/revoke" if form => self.devices_revoke_form(request).await,
            "/auth/devices/revoke-others" if form => self.devices_revoke_others_form(request).await,
            "/auth/devices/password" if form => self.devices_password_form(request).await,
            "/auth/register" if method == Method::POST => self.register(request).await,
            "/auth/login" if method == Method::POST => self.login(request).await,
            "/auth/logout" if method == Method::POST => self.logout(request).await,
            "/auth/user/me" if method == Method::GET => self.me(request).await,
            "/auth/user/sessions" if method == Method::GET => self.list_sessions(request).await,
            "/auth/user/sessions" if method == Method::DELETE => {
                self.revoke_other_sessions(request).await
            }
            "/auth/user/devices" if method == Method::GET => self.list_devices(request).await,
            "/auth/user/ips" if method == Method::GET => self.list_ips(request).await,
            "/auth/user/password" if method == Method::POST => self.change_password(request).await,
            path if path.starts_with("/auth/user/sessions/") => {
                let id = &path["/auth/user/sessions/".len()..];
                if method == Method::DELETE {
                    self.revoke_session(request, id).await
                } else {
                    Err(ApiError::MethodNotAllowed)
                }
            }
            "/auth/register"
            | "/auth/login"
            | "/auth/logout"
            | "/auth/user/me"
            | "/auth/user/sessions"
            | "/auth/user/devices"
            | "/auth/user/ips"
            | "/auth/user/password"
            | "/auth/devices"
            | "/auth/devices/revoke"
            | "/auth/devices/revoke-others"
            | "/auth/devices/password"
            | crate::assertion::JWKS_PATH => Err(ApiError::MethodNotAllowed),
            _ => Err(ApiError::NotFound),
        }
    }

    fn error_response(&self, request: &AuthRequest, error: ApiError) -> AuthResponse {
        if let ApiError::Unavailable(detail) = &error {
            tracing::warn!(path = %request.path, %detail, "auth request could not be served");
        }
        let response = AuthResponse::error(&error);
        // A request that carried a dead session cookie should drop it.
        if matches!(error, ApiError::Unauthenticated) && self.has_session_cookie(request) {
            response.with_header("set-cookie", self.sessions.clear_cookie())
        } else {
            response
        }
    }

    fn has_session_cookie(&self, request: &AuthRequest) -> bool {
        let found =
            crate::session::cookie::find(&request.headers, &self.sessions.config().cookie_name);
        found != crate::session::cookie::Found::Missing
    }

    fn require_database(&self) -> Result<(), ApiError> {
        if self.database_ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(ApiError::Unavailable(
                "database not reachable or not migrated yet".to_string(),
            ))
        }
    }
}
