//! Metrics (Prometheus) and logs (tracing).
//!
//! One [`Metrics`] value owns every series the gateway exports; it is created once and shared.
//! Label values come from small fixed sets or from the route table (never from the request), so
//! a client cannot blow up the series count. Every series whose label values are known in
//! advance is created at zero when the gateway starts, so rates and alerts see it from the
//! first scrape; each fact is counted by exactly one counter.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSection};

/// The auth decision taken for a request (contract §8 "auth decisions").
#[derive(Debug, Clone, Copy)]
///
/// One per request that reaches a decision on the proxy path (or the per-IP limiter, on any
/// path). Login and registration throttling (a locked account, too many attempts from an
/// address) are counted once, as outcomes of `authgate_logins_total` /
/// `authgate_registrations_total`, not here.
pub enum Decision {
    // The values index `Metrics::decision_counters`.
    Allowed = 0,
    Unauthenticated = 1,
    RateLimited = 2,
    Public = 3,
    StoreUnavailable = 4,
    /// Signed in, but not on the route's allow list (403).
    Forbidden = 5,
}

impl Decision {
    pub const ALL: [Decision; 6] = [
        Decision::Forbidden,
        Decision::Allowed,
        Decision::Unauthenticated,
        Decision::RateLimited,
        Decision::Public,
        Decision::StoreUnavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Unauthenticated => "unauthenticated",
            Decision::RateLimited => "rate_limited",
            Decision::Public => "public",
            Decision::StoreUnavailable => "store_unavailable",
            Decision::Forbidden => "forbidden",
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
    /// The store a backend name (`RecordStore::backend`, `SessionStore::backend`) stands for;
    /// `None` for the in-process session store, which makes no timed calls.
    pub fn from_backend(backend: &str) -> Option<Store> {
        match backend {
            "redis" => Some(Store::Redis),
            "postgres" => Some(Store::Postgres),
            "sqlite" => Some(Store::Sqlite),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Store::Redis => "redis",
            Store::Postgres => "postgres",
            Store::Sqlite => "sqlite",
        }
    }
}

/// Every value of `authgate_logins_total{outcome}`.
pub const LOGIN_OUTCOMES: [&str; 9] = [
    "success",
    "failure",
    "locked",
    "rate_limited",
    "session_limit",
    "credentials_changed",
    "invalid",
    "disabled",
    "unavailable",
];
/// Every value of `authgate_registrations_total{outcome}`.
pub const REGISTRATION_OUTCOMES: [&str; 6] = [
    "created",
    "conflict",
    "rate_limited",
    "refused",
    "invalid",
    "unavailable",
];
/// Every value of `authgate_sessions_ended_total{reason}` (`EndReason::metric`).
pub const SESSION_END_REASONS: [&str; 4] = ["logout", "revoked", "evicted", "expired"];
/// Every value of `authgate_session_anomalies_total{kind}`.
pub const SESSION_ANOMALIES: [&str; 2] = ["ip_changed", "ua_changed"];
/// The operations the Redis stores time (`RedisConnection::call`); a unit test below checks
/// the call sites against this list, so `store_latency` series can be created at zero.
pub const REDIS_OPERATIONS: [&str; 15] = [
    "create",
    "credential_epoch",
    "index",
    "list",
    "live",
    "ping",
    "revoke",
    "revoke_all",
    "touch",
    "slide",
    "login_begin",
    "login_ip",
    "login_finish",
    "register_begin",
    "set_roles",
];
/// The operations the SQL record stores time (`Calls::run`), the same for Postgres and SQLite.
pub const DATABASE_OPERATIONS: [&str; 26] = [
    "active_sessions",
    "add_signing_key",
    "count_active_sessions",
    "create_user",
    "credentials_by_email",
    "devices",
    "end_sessions",
    "insert_session",
    "ips",
    "ping",
    "purge_ended_sessions",
    "record_activity",
    "record_event",
    "record_failed_login",
    "record_login",
    "rotate_signing_keys",
    "set_password_hash",
    "signing_keys",
    "upsert_device",
    "upsert_ip",
    "user",
    "list_users",
    "set_user_active",
    "user_roles",
    "add_user_role",
    "remove_user_role",
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    upstream_latency: HistogramVec,
    /// `authgate_auth_decisions_total`'s series, indexed by [`Decision`].
    decision_counters: [IntCounter; 6],
    logins: IntCounterVec,
    lockouts: IntCounter,
    registrations: IntCounterVec,
    sessions_created: IntCounter,
    sessions_ended: IntCounterVec,
    store_errors: IntCounterVec,
    store_latency: HistogramVec,
    store_up: IntGaugeVec,
    ready: IntGauge,
    rate_limiter_clients: IntGauge,
    active_sessions: IntGauge,
    session_anomalies: IntCounterVec,
    write_behind_dropped: IntCounter,
    replica_unacknowledged: IntCounter,
    session_cache_hits: IntCounter,
    session_cache_enabled: IntGauge,
    connections_refused: IntCounterVec,
    open_connections: IntGauge,
    config_reloads: IntCounterVec,
    config_last_reload: IntGauge,
    restart_required: IntGauge,
    upstream_healthy: IntGaugeVec,
    /// Where `upstream_healthy` is read from at each scrape: the live route table, so a
    /// replaced table's upstreams disappear with it.
    upstream_source: std::sync::OnceLock<std::sync::Arc<dyn UpstreamHealthSource>>,
    /// One scrape refreshes and reads `upstream_healthy` at a time.
    upstream_refresh: std::sync::Mutex<()>,
}

/// `authgate_requests_total`'s `status` labels, in [`status_class`] order.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

fn status_class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
    }
}

/// One route's request counters (by status class) and upstream latency histogram.
pub struct RouteSeries {
    requests: [IntCounter; 6],
    upstream_latency: prometheus::Histogram,
}

impl RouteSeries {
    pub fn request(&self, status: u16) {
        self.requests[status_class(status)].inc();
    }

    pub fn upstream_latency(&self, elapsed: Duration) {
        self.upstream_latency.observe(elapsed.as_secs_f64());
    }
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
                "Access decisions on requests: allowed, unauthenticated, rate_limited (per-IP limiter), public, store_unavailable.",
            ),
            &["decision"],
        )?;
        for decision in Decision::ALL {
            decisions.with_label_values(&[decision.label()]);
        }
        let logins = IntCounterVec::new(
            Opts::new(
                "authgate_logins_total",
                "Login attempts by outcome (locked and rate_limited are the login throttles).",
            ),
            &["outcome"],
        )?;
        for outcome in LOGIN_OUTCOMES {
            logins.with_label_values(&[outcome]);
        }
        let lockouts = IntCounter::new(
            "authgate_lockouts_total",
            "Accounts (or unknown emails) locked by too many failed password checks.",
        )?;
        let registrations = IntCounterVec::new(
            Opts::new("authgate_registrations_total", "Registrations by outcome."),
            &["outcome"],
        )?;
        for outcome in REGISTRATION_OUTCOMES {
            registrations.with_label_values(&[outcome]);
        }
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
        for reason in SESSION_END_REASONS {
            sessions_ended.with_label_values(&[reason]);
        }
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
        let store_up = IntGaugeVec::new(
            Opts::new(
                "authgate_store_up",
                "1 if the store answered its last readiness probe, else 0 (store: redis, memory, postgres, sqlite).",
            ),
            &["store"],
        )?;
        let ready = IntGauge::new(
            "authgate_ready",
            "1 if the last readiness probe passed (what /readyz answers 200 for), else 0.",
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
        for kind in SESSION_ANOMALIES {
            session_anomalies.with_label_values(&[kind]);
        }
        let write_behind_dropped = IntCounter::new(
            "authgate_write_behind_dropped_total",
            "Audit/session records dropped because the write-behind queue was full.",
        )?;
        let replica_unacknowledged = IntCounter::new(
            "authgate_redis_replica_unacknowledged_total",
            "Session changes (logins, logouts, revocations) on Redis Cluster or Sentinel that no replica acknowledged before they were answered: they would not survive a failover of their master.",
        )?;
        let session_cache_hits = IntCounter::new(
            "authgate_session_cache_hits_total",
            "Protected requests whose session the local cache answered for (no Redis round trip; session.cache_ttl).",
        )?;
        let session_cache_enabled = IntGauge::new(
            "authgate_session_cache_enabled",
            "1 while the local session cache is in use (its Redis invalidation channel is subscribed and alive), else 0.",
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "authgate_connections_refused_total",
                "Connections on the public listener refused or cut off, by reason (per_ip, global, header_timeout, header_too_large).",
            ),
            &["reason"],
        )?;
        for reason in ConnectionRefusal::ALL {
            connections_refused.with_label_values(&[reason.label()]);
        }
        let open_connections = IntGauge::new(
            "authgate_open_connections",
            "Client connections open on the public listener now.",
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "authgate_config_reloads_total",
                "Configuration reloads by result (ok, error); a rejected file keeps the old config serving.",
            ),
            &["result"],
        )?;
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        let config_last_reload = IntGauge::new(
            "authgate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (start-up counts).",
        )?;
        config_last_reload.set(unix_now());
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "authgate_upstream_healthy",
                "Whether an upstream is in rotation (1) or taken out by a failed health check or failed connects (0), by route prefix and upstream address.",
            ),
            &["route", "upstream"],
        )?;
        let restart_required = IntGauge::new(
            "authgate_config_restart_required",
            "1 when the file in force changes keys read only at start-up (listed in the log).",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "authgate_build_info",
                "Always 1; the labels describe the running build.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(requests.clone()),
            Box::new(upstream_latency.clone()),
            Box::new(decisions.clone()),
            Box::new(logins.clone()),
            Box::new(lockouts.clone()),
            Box::new(registrations.clone()),
            Box::new(sessions_created.clone()),
            Box::new(sessions_ended.clone()),
            Box::new(store_errors.clone()),
            Box::new(store_latency.clone()),
            Box::new(store_up.clone()),
            Box::new(ready.clone()),
            Box::new(rate_limiter_clients.clone()),
            Box::new(active_sessions.clone()),
            Box::new(session_anomalies.clone()),
            Box::new(write_behind_dropped.clone()),
            Box::new(replica_unacknowledged.clone()),
            Box::new(session_cache_hits.clone()),
            Box::new(session_cache_enabled.clone()),
            Box::new(connections_refused.clone()),
            Box::new(open_connections.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_last_reload.clone()),
            Box::new(restart_required.clone()),
            Box::new(upstream_healthy.clone()),
            Box::new(build_info),
        ];
        for collector in collectors {
            registry.register(collector)?;
        }
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            requests,
            upstream_latency,
            decision_counters: [
                Decision::Allowed,
                Decision::Unauthenticated,
                Decision::RateLimited,
                Decision::Public,
                Decision::StoreUnavailable,
                Decision::Forbidden,
            ]
            .map(|decision| decisions.with_label_values(&[decision.label()])),
            logins,
            lockouts,
            registrations,
            sessions_created,
            sessions_ended,
            store_errors,
            store_latency,
            store_up,
            ready,
            rate_limiter_clients,
            active_sessions,
            session_anomalies,
            write_behind_dropped,
            replica_unacknowledged,
            session_cache_hits,
            session_cache_enabled,
            connections_refused,
            open_connections,
            config_reloads,
            config_last_reload,
            restart_required,
            upstream_healthy,
            upstream_source: std::sync::OnceLock::new(),
            upstream_refresh: std::sync::Mutex::new(()),
        })
    }

    /// Creates, at zero, the error counter and every latency series of the stores this
    /// gateway uses (known only once the config is read), so rates and alerts have a series
    /// from the first scrape.
    pub fn stores_in_use(&self, stores: &[Store]) {
        for store in stores {
            self.store_errors.with_label_values(&[store.label()]);
            let operations: &[&str] = match store {
                Store::Redis => &REDIS_OPERATIONS,
                Store::Postgres | Store::Sqlite => &DATABASE_OPERATIONS,
            };
            for operation in operations {
                self.store_latency
                    .with_label_values(&[store.label(), operation]);
            }
        }
    }

    /// Creates, at zero, the request counters of every configured route (and of `/auth` and
    /// `none`) and their upstream latency histograms: at start-up, and for routes a reload
    /// adds.
    pub fn routes_in_use<'a>(&self, prefixes: impl IntoIterator<Item = &'a str>) {
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        for route in ["/auth", "none"] {
            for class in classes {
                self.requests.with_label_values(&[route, class]);
            }
        }
        for route in prefixes {
            for class in classes {
                self.requests.with_label_values(&[route, class]);
            }
            self.upstream_latency.with_label_values(&[route]);
        }
    }

    /// A request that matched no route (`/auth` or `none`); a route's requests are counted
    /// through its [`RouteSeries`].
    pub fn request(&self, route: &str, status: u16) {
        self.requests
            .with_label_values(&[route, STATUS_CLASSES[status_class(status)]])
            .inc();
    }

    /// The series of one route, resolved once (the route keeps them), so that counting a
    /// proxied request does not look its labels up again.
    pub fn route_series(&self, route: &str) -> RouteSeries {
        RouteSeries {
            requests: STATUS_CLASSES.map(|class| self.requests.with_label_values(&[route, class])),
            upstream_latency: self.upstream_latency.with_label_values(&[route]),
        }
    }

    pub fn decision(&self, decision: Decision) {
        self.decision_counters[decision as usize].inc();
    }

    /// `outcome`: one of [`LOGIN_OUTCOMES`].
    pub fn login(&self, outcome: &'static str) {
        self.logins.with_label_values(&[outcome]).inc();
    }

    /// A failed password check locked an account (or an unknown email).
    pub fn lockout(&self) {
        self.lockouts.inc();
    }

    /// `outcome`: one of [`REGISTRATION_OUTCOMES`].
    pub fn registration(&self, outcome: &'static str) {
        self.registrations.with_label_values(&[outcome]).inc();
    }

    pub fn session_created(&self) {
        self.sessions_created.inc();
    }

    /// `reason`: one of [`SESSION_END_REASONS`].
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

    /// The result of a readiness probe: each store (by backend name) up or not, and whether
    /// the gateway as a whole is ready.
    pub fn readiness(&self, stores: &[(&str, bool)], ready: bool) {
        for (store, up) in stores {
            self.store_up
                .with_label_values(&[store])
                .set(i64::from(*up));
        }
        self.ready.set(i64::from(ready));
    }

    /// A configuration (re)load finished: `ok` if the new config is serving, `false` if it was
    /// rejected and the old one keeps serving.
    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
        if ok {
            self.config_last_reload.set(unix_now());
        }
    }

    /// Whether the file in force changes keys that only a restart applies.
    pub fn restart_required(&self, required: bool) {
        self.restart_required.set(i64::from(required));
    }

    pub fn rate_limiter_clients(&self, count: usize) {
        self.rate_limiter_clients
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn active_sessions(&self, count: i64) {
        self.active_sessions.set(count);
    }

    /// `kind`: one of [`SESSION_ANOMALIES`].
    pub fn session_anomaly(&self, kind: &'static str) {
        self.session_anomalies.with_label_values(&[kind]).inc();
    }

    pub fn write_behind_dropped(&self) {
        self.write_behind_dropped.inc();
    }

    pub fn replica_unacknowledged(&self) {
        self.replica_unacknowledged.inc();
    }

    pub fn session_cache_hit(&self) {
        self.session_cache_hits.inc();
    }

    pub fn session_cache_enabled(&self, enabled: bool) {
        self.session_cache_enabled.set(i64::from(enabled));
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

    /// The Prometheus text exposition of every series.
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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

/// Pingora's messages can be kilobytes long (a failed connect prints the whole peer with its
/// options); past this many characters they are cut.
const MAX_LIBRARY_MESSAGE_CHARS: usize = 200;

/// Installs the global tracing subscriber. `RUST_LOG` overrides the configured level. The
/// returned handle changes the level later (hot reload).
///
/// Text logs carry ANSI colours only when stderr is a terminal, never in a file or a pipe.
/// Records from the `log` crate (pingora logs through it) reach the same subscriber through
/// [`LibraryLogs`], which shortens pingora's long messages to their first line.
pub fn init_logging(config: &LogSection) -> LogLevel {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_override = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&config.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log_writer());
    let set: SetFilter;
    let installed = match config.format {
        LogFormat::Json => {
            crate::access_log::set_format(LogFormat::Json, buffer_lines);
            let builder = builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            set = Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string()));
            tracing::subscriber::set_global_default(builder.finish())
        }
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            if !ansi {
                crate::access_log::set_format(LogFormat::Text, buffer_lines);
            }
            let builder = builder.with_ansi(ansi).with_filter_reloading();
            let handle = builder.reload_handle();
            set = Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string()));
            tracing::subscriber::set_global_default(builder.finish())
        }
    };
    if installed.is_err() {
        eprintln!("authgate: a logger was already installed");
        return LogLevel {
            set: None,
            env_override,
        };
    }
    if log::set_boxed_logger(Box::new(LibraryLogs)).is_ok() {
        follow_level_in_log_crate();
    }
    LogLevel {
        set: Some(set),
        env_override,
    }
}

/// Where log lines go: stderr. Access lines (one per request, written after the response) are
/// batched: appended to one buffer in memory (a short lock, no system call, no thread woken)
/// that a thread of its own writes out every [`LOG_FLUSH_EVERY`], so a busy gateway makes one
/// `write(2)` per batch instead of one per request. Every other line is written at once
/// (after whatever access lines are buffered, so the order holds), so a line logged while a
/// request is handled is on stderr before its response is sent, as before. Nothing is dropped:
/// a writer waits while the buffer holds [`LOG_BUFFER_MAX`] bytes not yet written (stderr
/// blocked). What is buffered is written out before the process exits (an `atexit` hook: the
/// gateway ends with `process::exit`).
fn log_writer() -> BufferedStderr {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let flusher = std::thread::Builder::new()
            .name("authgate-log".to_string())
            .spawn(|| loop {
                std::thread::sleep(LOG_FLUSH_EVERY);
                write_out_logs();
            });
        if flusher.is_err() {
            eprintln!("authgate: cannot start the log thread; lines are written when full");
        }
        // SAFETY: registers a plain `extern "C" fn()` with no captured state.
        unsafe {
            libc::atexit(write_out_logs_at_exit);
        }
    });
    BufferedStderr { now: true }
}

/// The access log's target: the only lines that are batched.
const ACCESS_TARGET: &str = crate::access_log::TARGET;
/// How often buffered access lines are written out.
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(10);
/// Past this many buffered bytes, a line waits for the buffer to be written out first.
const LOG_BUFFER_MAX: usize = 8 * 1024 * 1024;

static LOG_LINES: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Signalled after every write-out (for lines waiting on a full buffer).
static LOG_WRITTEN: std::sync::Condvar = std::sync::Condvar::new();
/// Held while a batch is written, so batches reach stderr in order.
static LOG_WRITING: Mutex<()> = Mutex::new(());

fn write_out_logs() {
    use std::io::Write as _;
    let _writing = LOG_WRITING.lock().unwrap_or_else(PoisonError::into_inner);
    let batch = std::mem::take(&mut *LOG_LINES.lock().unwrap_or_else(PoisonError::into_inner));
    LOG_WRITTEN.notify_all();
    if !batch.is_empty() {
        // Nowhere to report a failed write to stderr.
        let _ = std::io::stderr().lock().write_all(&batch);
    }
}

extern "C" fn write_out_logs_at_exit() {
    write_out_logs();
}

/// The tracing writer for [`log_writer`]'s buffer; `now`: write the buffer out with this line.
#[derive(Clone, Copy)]
struct BufferedStderr {
    now: bool,
}

/// Appends whole lines to the buffer that the log thread writes out (waiting while it is full).
fn buffer_lines(bytes: &[u8]) {
    let mut lines = LOG_LINES.lock().unwrap_or_else(PoisonError::into_inner);
    while lines.len() >= LOG_BUFFER_MAX {
        lines = LOG_WRITTEN
            .wait(lines)
            .unwrap_or_else(PoisonError::into_inner);
    }
    lines.extend_from_slice(bytes);
}

impl std::io::Write for BufferedStderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        buffer_lines(bytes);
        if self.now {
            write_out_logs();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedStderr {
    type Writer = BufferedStderr;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        BufferedStderr {
            now: meta.target() != ACCESS_TARGET,
        }
    }
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
    /// Applies `level` (a tracing filter, already validated by the config check).
    pub fn set(&self, level: &str) -> Result<(), String> {
        if self.env_override {
            return Err("RUST_LOG is set and overrides log.level".into());
        }
        let set = self.set.as_ref().ok_or("no logger of ours is installed")?;
        let filter = EnvFilter::try_new(level).map_err(|e| format!("invalid filter: {e}"))?;
        set(filter)?;
        follow_level_in_log_crate();
        Ok(())
    }
}

/// The `log` crate's macros (pingora's `debug!` and `trace!` on every request) skip a record
/// above its max level before building it: keep that at the most verbose level tracing lets
/// through now.
fn follow_level_in_log_crate() {
    let level = tracing::level_filters::LevelFilter::current();
    log::set_max_level(tracing_log::AsLog::as_log(&level));
}

/// Forwards `log` records to tracing (like `tracing_log::LogTracer`), with the messages of
/// pingora's crates summarised: first line only, at most [`MAX_LIBRARY_MESSAGE_CHARS`].
struct LibraryLogs;

impl log::Log for LibraryLogs {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let level = tracing_log::AsTrace::as_trace(&metadata.level());
        level <= tracing::level_filters::LevelFilter::current()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if !record.target().starts_with("pingora") {
            let _ = tracing_log::format_trace(record);
            return;
        }
        // Pingora's debug and trace lines dump request and response headers (cookies,
        // X-User-Id): never written, whatever log.level says.
        if record.level() > log::Level::Info {
            return;
        }
        let message = summarise(&record.args().to_string());
        let _ = tracing_log::format_trace(
            &log::Record::builder()
                .args(format_args!("{message}"))
                .level(record.level())
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {}
}

/// The first line of `message`, cut to [`MAX_LIBRARY_MESSAGE_CHARS`] characters; what was
/// dropped is counted, so a reader knows the message was longer.
///
/// The request id our `request_summary` puts at the end of pingora's failure lines is kept
/// even when the rest is cut.
fn summarise(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or_default();
    let kept: String = first_line.chars().take(MAX_LIBRARY_MESSAGE_CHARS).collect();
    let dropped = message.len() - kept.len();
    if dropped == 0 {
        return kept;
    }
    let request_id = message
        .rsplit_once("request_id=")
        .map(|(_, rest)| rest.split_whitespace().next().unwrap_or_default())
        .filter(|id| !id.is_empty() && !kept.contains(&format!("request_id={id}")));
    match request_id {
        Some(id) => format!("{kept}... ({dropped} more bytes) request_id={id}"),
        None => format!("{kept}... ({dropped} more bytes)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_library_messages_are_kept_whole() {
        assert_eq!(summarise("Bootstrap done"), "Bootstrap done");
    }

    #[test]
    fn long_library_messages_keep_their_first_line_and_at_most_200_chars() {
        let long = format!("Fail to connect to BasicPeer {{ {} }}", "x".repeat(2000));
        let short = summarise(&long);
        assert!(short.starts_with("Fail to connect to BasicPeer { xxx"));
        assert!(short.chars().count() < 230, "{short}");
        assert!(short.ends_with("(1833 more bytes)"), "{short}");
        assert_eq!(summarise("first\nsecond"), "first... (7 more bytes)");
        // Never cuts inside a character.
        let accents = "é".repeat(300);
        assert!(summarise(&accents).starts_with(&"é".repeat(200)));
    }

    #[test]
    fn every_series_is_exported_at_start_and_the_exposition_is_well_formed() {
        let metrics = Metrics::new().expect("metrics");
        metrics.stores_in_use(&[Store::Redis, Store::Postgres]);
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        for expected in [
            "authgate_build_info{version=\"",
            "authgate_config_reloads_total{result=\"ok\"} 0",
            "authgate_config_reloads_total{result=\"error\"} 0",
            "authgate_logins_total{outcome=\"locked\"} 0",
            "authgate_auth_decisions_total{decision=\"rate_limited\"} 0",
            "authgate_sessions_ended_total{reason=\"expired\"} 0",
            "authgate_store_errors_total{store=\"redis\"} 0",
            "authgate_store_latency_seconds_count{operation=\"touch\",store=\"redis\"} 0",
            "authgate_store_latency_seconds_count{operation=\"insert_session\",store=\"postgres\"} 0",
            "authgate_config_last_reload_success_timestamp_seconds ",
        ] {
            assert!(text.contains(expected), "no {expected} in\n{text}");
        }
        assert!(!text.contains("authgate_rate_limited_total"));
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes"));
    }

    /// The operation names passed to the store wrappers, read from the sources: every one must
    /// be in the lists the series are created from.
    fn operations_in(source: &str) -> Vec<String> {
        let mut found = Vec::new();
        for call in [".run(", ".call(", ".count("] {
            for (at, _) in source.match_indices(call) {
                let rest = source[at + call.len()..].trim_start();
                if let Some(literal) = rest.strip_prefix('"') {
                    if let Some(end) = literal.find('"') {
                        found.push(literal[..end].to_string());
                    }
                }
            }
        }
        found
    }

    #[test]
    fn the_store_operation_lists_name_every_timed_call() {
        let redis = [
            include_str!("session/redis.rs"),
            include_str!("limits/login/redis.rs"),
        ];
        for operation in redis.iter().flat_map(|source| operations_in(source)) {
            assert!(
                REDIS_OPERATIONS.contains(&operation.as_str()),
                "redis operation {operation:?} is missing from REDIS_OPERATIONS"
            );
        }
        let database = [
            include_str!("store/postgres.rs"),
            include_str!("store/sqlite.rs"),
        ];
        let mut seen = 0;
        for operation in database.iter().flat_map(|source| operations_in(source)) {
            seen += 1;
            assert!(
                DATABASE_OPERATIONS.contains(&operation.as_str()),
                "database operation {operation:?} is missing from DATABASE_OPERATIONS"
            );
        }
        assert!(seen > 10, "the scan found only {seen} database calls");
    }
}
