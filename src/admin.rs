//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (the session store and the database answer, and the schema is migrated; the
//! database is named by its backend, since it may be Postgres or the embedded SQLite file).
//! It runs on its own address so it can stay off the public network.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::respond::simple;
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
            "/metrics" => simple(200, "text/plain; version=0.0.4", self.metrics.render()),
            "/healthz" => simple(200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            "/readyz" => self.readiness().await,
            _ => simple(
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
        let (sessions, database) = tokio::join!(self.sessions.ping(), self.records.ping());
        let migrated = self.database_ready.load(Ordering::Acquire);
        let describe = |result: &Result<(), crate::store::StoreError>| match result {
            Ok(()) => "ok".to_string(),
            Err(error) => error.to_string(),
        };
        let database_state = match (&database, migrated) {
            (Ok(()), false) => "reachable, not migrated yet".to_string(),
            _ => describe(&database),
        };
        let ready = sessions.is_ok() && database.is_ok() && migrated;
        let body = json!({
            "status": if ready { "ready" } else { "not_ready" },
            "session_store": describe(&sessions),
            "session_store_backend": self.sessions.backend(),
            "database": database_state,
            "database_backend": self.records.backend(),
        });
        simple(
            if ready { 200 } else { 503 },
            "application/json",
            body.to_string().into_bytes(),
        )
    }
}
