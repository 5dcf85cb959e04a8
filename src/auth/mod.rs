//! The `/auth` API, answered by the gateway itself (SPEC §3).
//!
//! The gateway hands over an [`AuthRequest`] (method, path, headers, the already size-capped
//! body, client IP) and writes back the [`AuthResponse`]. Handlers see stores only through
//! their traits; errors go through the single [`ApiError`] mapping.

pub mod error;
mod handlers;
pub mod input;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method};

pub use error::ApiError;

use crate::password::PasswordHasher;
use crate::session::Sessions;
use crate::store::RecordStore;
use crate::telemetry::Metrics;

/// Request bodies on `/auth` larger than this get 413 (SPEC §5).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

pub struct AuthRequest {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub client_ip: IpAddr,
}

impl AuthRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    fn user_agent(&self) -> String {
        self.header("user-agent")
            .unwrap_or("")
            .chars()
            .take(512)
            .collect()
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
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) records: Arc<dyn RecordStore>,
    pub(crate) hasher: Arc<PasswordHasher>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) min_password_length: usize,
    /// Set once the database schema is migrated; until then database-backed calls get 503.
    database_ready: Arc<AtomicBool>,
}

impl AuthApi {
    pub fn new(
        sessions: Arc<Sessions>,
        records: Arc<dyn RecordStore>,
        hasher: Arc<PasswordHasher>,
        metrics: Arc<Metrics>,
        min_password_length: usize,
        database_ready: Arc<AtomicBool>,
    ) -> Self {
        Self {
            sessions,
            records,
            hasher,
            metrics,
            min_password_length,
            database_ready,
        }
    }

    pub fn is_auth_path(path: &str) -> bool {
        path == "/auth" || path.starts_with("/auth/")
    }

    pub async fn handle(&self, request: AuthRequest) -> AuthResponse {
        let result = match (request.path.as_str(), &request.method) {
            ("/auth/register", &Method::POST) => self.register(&request).await,
            ("/auth/login", &Method::POST) => self.login(&request).await,
            ("/auth/logout", &Method::POST) => self.logout(&request).await,
            ("/auth/user/me", &Method::GET) => self.me(&request).await,
            ("/auth/register" | "/auth/login" | "/auth/logout" | "/auth/user/me", _) => {
                Err(ApiError::MethodNotAllowed)
            }
            _ => Err(ApiError::NotFound),
        };
        result.unwrap_or_else(|error| {
            if let ApiError::Unavailable(detail) = &error {
                tracing::warn!(path = %request.path, %detail, "auth request could not be served");
            }
            let response = AuthResponse::error(&error);
            // A request that carried a dead session cookie should drop it.
            if matches!(error, ApiError::Unauthenticated) && self.has_session_cookie(&request) {
                response.with_header("set-cookie", self.sessions.clear_cookie())
            } else {
                response
            }
        })
    }

    fn has_session_cookie(&self, request: &AuthRequest) -> bool {
        crate::session::cookie::read(&request.headers, &self.sessions.config().cookie_name)
            .is_some()
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
