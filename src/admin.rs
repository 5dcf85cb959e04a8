//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (the session store and the database answer, and the schema is migrated).
//! It runs on its own address so it can stay off the public network.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::session::Sessions;
use crate::store::RecordStore;
use crate::telemetry::Metrics;

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<Sessions>,
    pub records: Arc<dyn RecordStore>,
    pub database_ready: Arc<AtomicBool>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/metrics" => reply(200, "text/plain; version=0.0.4", self.metrics.render()),
            "/healthz" => reply(200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            "/readyz" => self.readiness().await,
            _ => reply(
                404,
                "application/json",
                br#"{"error":{"code":"not_found","message":"try /metrics, /healthz or /readyz"}}"#
                    .to_vec(),
            ),
        }
    }
}

impl AdminApp {
    async fn readiness(&self) -> Response<Vec<u8>> {
        let (redis, database) = tokio::join!(self.sessions.ping(), self.records.ping());
        let migrated = self.database_ready.load(Ordering::Acquire);
        let describe = |result: &Result<(), crate::store::StoreError>| match result {
            Ok(()) => "ok".to_string(),
            Err(error) => error.to_string(),
        };
        let database_state = match (&database, migrated) {
            (Ok(()), false) => "reachable, not migrated yet".to_string(),
            _ => describe(&database),
        };
        let ready = redis.is_ok() && database.is_ok() && migrated;
        let body = json!({
            "status": if ready { "ready" } else { "not_ready" },
            "redis": describe(&redis),
            "database": database_state,
        });
        reply(
            if ready { 200 } else { 503 },
            "application/json",
            body.to_string().into_bytes(),
        )
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut response = Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    let length = response.body().len();
    let headers = response.headers_mut();
    if let Ok(value) = content_type.parse() {
        headers.insert(http::header::CONTENT_TYPE, value);
    }
    headers.insert(http::header::CONTENT_LENGTH, length.into());
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}
