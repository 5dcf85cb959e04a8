//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (the session store and the database answer, the schema is migrated and, with the
//! identity assertion enabled, a signing key is loaded; the database is named by its backend,
//! since it may be Postgres or the embedded SQLite file). It runs on its own address so it can
//! stay off the public network. The readiness result is also exported as gauges
//! (`authgate_store_up{store}`, `authgate_ready`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    pub readiness: Arc<Readiness>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/metrics" => simple(200, "text/plain; version=0.0.4", self.metrics.render()),
            "/healthz" => simple(200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            "/readyz" => {
                let (ready, body) = self.readiness.check().await;
                simple(
                    if ready { 200 } else { 503 },
                    "application/json",
                    body.to_string().into_bytes(),
                )
            }
            _ => simple(
                404,
                "application/json",
                br#"{"error":{"code":"not_found","message":"try /metrics, /healthz or /readyz"}}"#
                    .to_vec(),
            ),
        }
    }
}

/// The readiness check behind `/readyz`, also run every few seconds in the background so the
/// `authgate_store_up` and `authgate_ready` gauges stay current between requests to `/readyz`
/// (a Prometheus alert must not depend on someone asking).
pub struct Readiness {
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<Sessions>,
    pub records: Arc<dyn RecordStore>,
    pub database_ready: Arc<AtomicBool>,
    /// With the identity assertion enabled, not ready until a key to sign with is loaded.
    pub assertions: Arc<crate::assertion::Assertions>,
}

impl Readiness {
    /// Pings both stores; whether the gateway is ready, and the `/readyz` body.
    pub async fn check(&self) -> (bool, serde_json::Value) {
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
        let keys_loaded = self.assertions.ready();
        let ready = sessions.is_ok() && database.is_ok() && migrated && keys_loaded;
        self.metrics.readiness(
            &[
                (self.sessions.backend(), sessions.is_ok()),
                (self.records.backend(), database.is_ok()),
            ],
            ready,
        );
        let body = json!({
            "status": if ready { "ready" } else { "not_ready" },
            "session_store": describe(&sessions),
            "session_store_backend": self.sessions.backend(),
            "database": database_state,
            "database_backend": self.records.backend(),
            "assertion_keys": match (self.assertions.enabled(), keys_loaded) {
                (false, _) => "disabled",
                (true, true) => "loaded",
                (true, false) => "not loaded yet",
            },
        });
        (ready, body)
    }

    /// Runs [`Readiness::check`] every `interval`, for the gauges.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.check().await;
        }
    }
}
