//! Metrics (Prometheus) and logs (tracing).
//!
//! One [`Metrics`] value owns every series the gateway exports; it is created once and shared.
//! Label values come from small fixed sets or from the route table (never from the request), so
//! a client cannot blow up the series count.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSection};

/// The auth decision taken for a request (SPEC §8 "auth decisions").
#[derive(Debug, Clone, Copy)]
pub enum Decision {
    Allowed,
    Unauthenticated,
    RateLimited,
    Locked,
    Public,
    StoreUnavailable,
}

impl Decision {
    fn label(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Unauthenticated => "unauthenticated",
            Decision::RateLimited => "rate_limited",
            Decision::Locked => "locked",
            Decision::Public => "public",
            Decision::StoreUnavailable => "store_unavailable",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Store {
    Redis,
    Postgres,
    Sqlite,
}

impl Store {
    pub fn label(self) -> &'static str {
        match self {
            Store::Redis => "redis",
            Store::Postgres => "postgres",
            Store::Sqlite => "sqlite",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    upstream_latency: HistogramVec,
    decisions: IntCounterVec,
    logins: IntCounterVec,
    registrations: IntCounterVec,
    rate_limited: IntCounter,
    sessions_created: IntCounter,
    sessions_ended: IntCounterVec,
    store_errors: IntCounterVec,
    store_latency: HistogramVec,
    rate_limiter_clients: IntGauge,
    active_sessions: IntGauge,
    session_anomalies: IntCounterVec,
    write_behind_dropped: IntCounter,
    connections_refused: IntCounterVec,
    open_connections: IntGauge,
    upstream_healthy: IntGaugeVec,
    /// Where `upstream_healthy` is read from at each scrape: the live route table, so a
    /// replaced table's upstreams disappear with it.
    upstream_source: std::sync::OnceLock<std::sync::Arc<dyn UpstreamHealthSource>>,
    /// One scrape refreshes and reads `upstream_healthy` at a time.
    upstream_refresh: std::sync::Mutex<()>,
}

/// Reports every route's upstreams as `(route prefix, upstream address, healthy)`.
pub trait UpstreamHealthSource: Send + Sync {
    fn upstream_health(&self) -> Vec<(String, String, bool)>;
}

/// Why the public listener refused or cut off a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// Over `server.max_connections_per_ip` (429).
    PerIp,
    /// Over `server.max_connections` (503).
    Global,
    /// The request head did not arrive within `server.header_timeout` (408, or closed).
    HeaderTimeout,
    /// The request head grew past the size limit (431).
    HeaderTooLarge,
}

impl ConnectionRefusal {
    pub const ALL: [ConnectionRefusal; 4] = [
        ConnectionRefusal::PerIp,
        ConnectionRefusal::Global,
        ConnectionRefusal::HeaderTimeout,
        ConnectionRefusal::HeaderTooLarge,
    ];

    fn label(self) -> &'static str {
        match self {
            ConnectionRefusal::PerIp => "per_ip",
            ConnectionRefusal::Global => "global",
            ConnectionRefusal::HeaderTimeout => "header_timeout",
            ConnectionRefusal::HeaderTooLarge => "header_too_large",
        }
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "authgate_http_requests_total",
                "Requests on the public listener by route prefix and status class.",
            ),
            &["route", "status_class"],
        )?;
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "authgate_upstream_latency_seconds",
                "Time from choosing an upstream to receiving its response header.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "authgate_auth_decisions_total",
                "Access decisions on requests: allowed, unauthenticated, rate_limited, locked, public, store_unavailable.",
            ),
            &["decision"],
        )?;
        let logins = IntCounterVec::new(
            Opts::new("authgate_logins_total", "Login attempts by outcome."),
            &["outcome"],
        )?;
        let registrations = IntCounterVec::new(
            Opts::new("authgate_registrations_total", "Registrations by outcome."),
            &["outcome"],
        )?;
        let rate_limited = IntCounter::new(
            "authgate_rate_limited_total",
            "Requests refused by the per-IP rate limiter.",
        )?;
        let sessions_created = IntCounter::new(
            "authgate_sessions_created_total",
            "Sessions created at login.",
        )?;
        let sessions_ended = IntCounterVec::new(
            Opts::new(
                "authgate_sessions_ended_total",
                "Sessions ended, by reason (logout, revoked, evicted, expired).",
            ),
            &["reason"],
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new(
                "authgate_store_errors_total",
                "Failed or timed-out calls to a backing store.",
            ),
            &["store"],
        )?;
        let store_latency = HistogramVec::new(
            HistogramOpts::new(
                "authgate_store_latency_seconds",
                "Latency of calls to a backing store.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["store", "operation"],
        )?;
        let rate_limiter_clients = IntGauge::new(
            "authgate_rate_limiter_tracked_clients",
            "Client IPs (IPv6: /64s) the rate limiter currently holds state for.",
        )?;
        let active_sessions = IntGauge::new(
            "authgate_active_sessions",
            "Session records in state active (refreshed by the expiry job).",
        )?;
        let session_anomalies = IntCounterVec::new(
            Opts::new(
                "authgate_session_anomalies_total",
                "Sessions used from another IP or user agent than they were created with.",
            ),
            &["kind"],
        )?;
        let write_behind_dropped = IntCounter::new(
            "authgate_write_behind_dropped_total",
            "Audit/session records dropped because the write-behind queue was full.",
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "authgate_connections_refused_total",
                "Connections on the public listener refused or cut off, by reason (per_ip, global, header_timeout, header_too_large).",
            ),
            &["reason"],
        )?;
        // Every reason is exported from the start, at zero.
        for reason in ConnectionRefusal::ALL {
            connections_refused.with_label_values(&[reason.label()]);
        }
        let open_connections = IntGauge::new(
            "authgate_open_connections",
            "Client connections open on the public listener now.",
        )?;
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "authgate_upstream_healthy",
                "Whether an upstream is in rotation (1) or taken out by a failed health check or failed connects (0), by route prefix and upstream address.",
            ),
            &["route", "upstream"],
        )?;
        registry.register(Box::new(upstream_healthy.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(open_connections.clone()))?;
        registry.register(Box::new(active_sessions.clone()))?;
        registry.register(Box::new(session_anomalies.clone()))?;
        registry.register(Box::new(write_behind_dropped.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(upstream_latency.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(logins.clone()))?;
        registry.register(Box::new(registrations.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(sessions_created.clone()))?;
        registry.register(Box::new(sessions_ended.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        registry.register(Box::new(store_latency.clone()))?;
        registry.register(Box::new(rate_limiter_clients.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            upstream_latency,
            decisions,
            logins,
            registrations,
            rate_limited,
            sessions_created,
            sessions_ended,
            store_errors,
            store_latency,
            rate_limiter_clients,
            active_sessions,
            session_anomalies,
            write_behind_dropped,
            connections_refused,
            open_connections,
            upstream_healthy,
            upstream_source: std::sync::OnceLock::new(),
            upstream_refresh: std::sync::Mutex::new(()),
        })
    }

    pub fn request(&self, route: &str, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "none",
        };
        self.requests.with_label_values(&[route, class]).inc();
    }

    pub fn upstream_latency(&self, route: &str, elapsed: Duration) {
        self.upstream_latency
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }

    pub fn decision(&self, decision: Decision) {
        self.decisions.with_label_values(&[decision.label()]).inc();
        if let Decision::RateLimited = decision {
            self.rate_limited.inc();
        }
    }

    /// `outcome`: success, failure, invalid, disabled, unavailable.
    pub fn login(&self, outcome: &'static str) {
        self.logins.with_label_values(&[outcome]).inc();
    }

    /// `outcome`: created, conflict, invalid, unavailable.
    pub fn registration(&self, outcome: &'static str) {
        self.registrations.with_label_values(&[outcome]).inc();
    }

    pub fn session_created(&self) {
        self.sessions_created.inc();
    }

    /// `reason`: logout, revoked, evicted, expired.
    pub fn session_ended(&self, reason: &'static str) {
        self.sessions_ended.with_label_values(&[reason]).inc();
    }

    pub fn store_call(&self, store: Store, operation: &'static str, elapsed: Duration, ok: bool) {
        self.store_latency
            .with_label_values(&[store.label(), operation])
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.store_errors.with_label_values(&[store.label()]).inc();
        }
    }

    pub fn rate_limiter_clients(&self, count: usize) {
        self.rate_limiter_clients
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn active_sessions(&self, count: i64) {
        self.active_sessions.set(count);
    }

    /// `kind`: ip_changed, ua_changed.
    pub fn session_anomaly(&self, kind: &'static str) {
        self.session_anomalies.with_label_values(&[kind]).inc();
    }

    pub fn write_behind_dropped(&self) {
        self.write_behind_dropped.inc();
    }

    pub fn connection_refused(&self, reason: ConnectionRefusal) {
        self.connections_refused
            .with_label_values(&[reason.label()])
            .inc();
    }

    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    /// The Prometheus text exposition of every series.
    /// Reads `authgate_upstream_healthy` from `source` at every scrape from now on (set once).
    pub fn watch_upstreams(&self, source: std::sync::Arc<dyn UpstreamHealthSource>) {
        if self.upstream_source.set(source).is_err() {
            tracing::warn!("upstream health source already set");
        }
    }

    /// Sets `authgate_upstream_healthy{route, upstream}` to 1 (healthy) or 0 (down).
    pub fn upstream_healthy(&self, route: &str, upstream: &str, healthy: bool) {
        self.upstream_healthy
            .with_label_values(&[route, upstream])
            .set(i64::from(healthy));
    }

    /// Replaces every `authgate_upstream_healthy` series with the source's current state.
    fn refresh_upstream_health(&self) {
        let Some(source) = self.upstream_source.get() else {
            return;
        };
        self.upstream_healthy.reset();
        for (route, upstream, healthy) in source.upstream_health() {
            self.upstream_healthy(&route, &upstream, healthy);
        }
    }

    pub fn render(&self) -> Vec<u8> {
        // One scrape at a time refreshes and reads the upstream gauge.
        let _one_at_a_time = self
            .upstream_refresh
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.refresh_upstream_health();
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}

/// Installs the global tracing subscriber. `RUST_LOG` overrides the configured level.
pub fn init_logging(config: &LogSection) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if installed.is_err() {
        eprintln!("authgate: a logger was already installed");
    }
}
