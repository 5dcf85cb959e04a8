//! Metrics (Prometheus) and logs (tracing).
//!
//! One [`Metrics`] value owns every series the gateway exports; it is created once and shared.
//! Label values come from small fixed sets or from the route table (never from the request), so
//! a client cannot blow up the series count.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
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
    config_reloads: IntCounterVec,
    config_reload_success: IntGauge,
    restart_required: IntGauge,
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
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "authgate_config_reloads_total",
                "Hot reloads of gateway.toml by result (ok, error: rejected, old config kept).",
            ),
            &["result"],
        )?;
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        let config_reload_success = IntGauge::new(
            "authgate_config_last_reload_success_timestamp_seconds",
            "Unix time the configuration in force was loaded (start-up or last good reload).",
        )?;
        config_reload_success.set(unix_now());
        let restart_required = IntGauge::new(
            "authgate_config_restart_required",
            "1 when the file changes keys read only at start-up (see the log), 0 otherwise.",
        )?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_reload_success.clone()))?;
        registry.register(Box::new(restart_required.clone()))?;
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
            config_reloads,
            config_reload_success,
            restart_required,
        })
    }

    /// A hot reload was applied (`ok`) or rejected.
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads.with_label_values(&[result]).inc();
        if ok {
            self.config_reload_success.set(unix_now());
        }
    }

    /// Whether the file in force changes keys that only a restart applies.
    pub fn restart_required(&self, required: bool) {
        self.restart_required.set(i64::from(required));
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
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// Replaces the running subscriber's filter.
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Changes the log level of the running process (hot reload of `log.level`).
pub struct LogLevel {
    /// `None` when no subscriber of ours is installed.
    set: Option<SetFilter>,
    /// `RUST_LOG` was set at start-up: it wins over the file, on reload too.
    env_override: bool,
}

impl LogLevel {
    /// Applies `level` (a tracing filter, already validated by the config check). Returns what
    /// happened, for the reload log line.
    pub fn set(&self, level: &str) -> Result<(), String> {
        if self.env_override {
            return Err("RUST_LOG is set and overrides log.level".into());
        }
        let set = self.set.as_ref().ok_or("no logger of ours is installed")?;
        let filter = EnvFilter::try_new(level).map_err(|e| format!("invalid filter: {e}"))?;
        set(filter)
    }
}

/// Installs the global tracing subscriber. `RUST_LOG` overrides the configured level. The
/// returned handle changes the level later (hot reload).
pub fn init_logging(config: &LogSection) -> LogLevel {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_override = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&config.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let set: SetFilter;
    let installed = match config.format {
        LogFormat::Json => {
            let builder = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            set = Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string()));
            builder.try_init()
        }
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            set = Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string()));
            builder.try_init()
        }
    };
    if installed.is_err() {
        eprintln!("authgate: a logger was already installed");
        return LogLevel {
            set: None,
            env_override,
        };
    }
    LogLevel {
        set: Some(set),
        env_override,
    }
}
