//! The route table: which upstream serves a path, and whether it needs a session.
//!
//! Longest prefix wins; among equal prefixes a route bound to the request's host beats a
//! host-less one. A route marked `case_insensitive` matches its prefix regardless of case.
//!
//! [`RouteTable::resolve`] also checks contract §2 step 0's promise: every other reading an
//! upstream may make of the normalised path (decoded, `;params` stripped, folded as
//! case-insensitive servers read it; see `path.rs`) must be served with the same protection as
//! the path itself, and no reading may spell `/auth`; otherwise the request is refused.
//! Case-folded readings always count: many frameworks (Express, IIS, PHP on Windows) match
//! routes case-insensitively without anyone opting in. A prefix ending in `/` also matches the
//! folder itself (`/admin/` covers `/admin`). Encoded slashes
//! pass only on routes that opt in (`allow_encoded_slash`).
//!
//! The table is immutable once built and lives behind an `ArcSwap` in the gateway, so that hot
//! reload (not built yet) can swap it whole while in-flight requests keep the one they matched.
//! Each route owns a round-robin pool of upstreams with an active TCP health check.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};

use crate::config::{AuthMode, RouteConfig};
use crate::limits::ip_rate::{Exceeded, IpRateLimiter};
use crate::path::NormalizedPath;
use crate::pool::{Selected, UpstreamPool};
use crate::telemetry::{Metrics, RouteSeries};

pub struct Route {
    pub prefix: String,
    pub host: Option<String>,
    pub auth: AuthMode,
    /// Whether requests on it carry the identity assertion (when `[assertion]` is enabled).
    pub assertion: bool,
    /// Which signed-in users it serves (`None`: all).
    pub allow: Option<crate::allow::AllowList>,
    /// The assertion's `aud` here (see [`Route::audience`]).
    audience: String,
    case_insensitive: bool,
    allow_encoded_slash: bool,
    strip_prefix: bool,
    add_request_headers: Vec<(HeaderName, HeaderValue)>,
    /// Per client IP on this route (on top of the global limiter).
    rate_limit: Option<IpRateLimiter>,
    pool: UpstreamPool,
    /// Its metric series, resolved at its first request.
    series: OnceLock<RouteSeries>,
}

/// Why a path is not forwarded.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No route serves it: 404.
    NoRoute,
    /// It holds `%2F` and its route has not opted in: 400.
    EncodedSlash,
    /// Some reading of it spells `/auth`, which is never forwarded: 400.
    AuthSpelling,
    /// Some reading of it would be served with another protection (or not at all): 400.
    Ambiguous,
}

impl Refusal {
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::NoRoute => "no route for this path",
            Refusal::EncodedSlash => "the request path must not contain an encoded '/' (%2F)",
            Refusal::AuthSpelling => {
                "the request path is a variant spelling of /auth; use /auth/... exactly"
            }
            Refusal::Ambiguous => {
                "the request path reads differently once decoded, without ';' parameters or \
                 case-folded, and that reading is routed with another protection"
            }
        }
    }
}

/// Upstream names are resolved at run time, not when the config is read (so `authgate check`
/// needs no network), and again every this often.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// Idle per-route rate-limiter state is dropped this often.
const LIMITER_SWEEP: Duration = Duration::from_secs(30);

impl Route {
    fn build(config: &RouteConfig) -> Route {
        Route {
            prefix: config.prefix.clone(),
            host: config.host.clone(),
            auth: config.auth,
            assertion: config.assertion,
            allow: config.allow.clone(),
            audience: match &config.host {
                Some(host) if config.prefix == "/" => host.clone(),
                Some(host) => format!("{host}{}", config.prefix),
                None => config.prefix.clone(),
            },
            case_insensitive: config.case_insensitive,
            allow_encoded_slash: config.allow_encoded_slash,
            strip_prefix: config.strip_prefix,
            add_request_headers: config.add_request_headers.clone(),
            rate_limit: config.rate_limit.as_ref().map(IpRateLimiter::new),
            pool: UpstreamPool::build(config),
            series: OnceLock::new(),
        }
    }

    /// This route's request counters and upstream latency histogram.
    pub fn series(&self, metrics: &Metrics) -> &RouteSeries {
        self.series
            .get_or_init(|| metrics.route_series(&self.prefix))
    }

    /// The next upstream for a request, never one already `tried` (a failed connect). When
    /// every upstream is marked down, one is tried anyway: a stale health mark must not take a
    /// route offline, and a real failure still ends as a 502. `None` once every upstream was
    /// tried. `key` gives what picks the upstream on `consistent_hash` routes.
    pub fn select_upstream(
        &self,
        key: impl FnOnce() -> Vec<u8>,
        tried: &[SocketAddr],
    ) -> Option<Selected> {
        self.pool.select(key, tried)
    }

    /// How many upstreams this route has now (the bound on connect retries).
    pub fn pool_size(&self) -> usize {
        self.pool.size()
    }

    /// Passive health: a connect to `upstream` failed, or succeeded.
    pub fn connect_failed(&self, upstream: SocketAddr) {
        self.pool.connect_failed(upstream);
    }

    pub fn connected(&self, upstream: SocketAddr) {
        self.pool.connected(upstream);
    }

    /// This route's own per-IP limit (`route.rate_limit`), if it has one.
    pub fn check_rate(&self, client_ip: IpAddr) -> Result<(), Exceeded> {
        match &self.rate_limit {
            Some(limiter) => limiter.check(client_ip),
            None => Ok(()),
        }
    }

    /// The identity assertion's `aud` on this route: its `host` when it has one and its
    /// prefix is `/` (the app is that site), `host` + prefix for a narrower route on a host
    /// (`app.example.com/admin/`), else its prefix (apps behind one host told apart by path).
    /// An upstream checks `aud` so that an assertion made for another app is not accepted by
    /// it: no two routes share one.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The headers `add_request_headers` sets on every forwarded request.
    pub fn added_headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.add_request_headers
    }

    /// The path the upstream is sent for the normalised `path` this route matched: the path
    /// itself, or with `strip_prefix` the rest after the prefix (always starting with `/`).
    pub fn forwarded_path(&self, path: &str) -> String {
        if !self.strip_prefix {
            return path.to_string();
        }
        let folder = self.prefix.strip_suffix('/').unwrap_or(&self.prefix);
        // The match was checked already (in this route's case rules): cut by length.
        let rest = if path.len() >= self.prefix.len() {
            path.get(self.prefix.len()..).unwrap_or("")
        } else {
            path.get(folder.len()..).unwrap_or("")
        };
        let rest = rest.trim_start_matches('/');
        format!("/{rest}")
    }

    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(wanted), Some(host)) => wanted == host,
            (Some(_), None) => false,
        };
        let same = |a: &str, b: &str| {
            if self.case_insensitive {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        // `/admin/` also covers `/admin`, which apps serve as the folder's index.
        let prefix_ok = path
            .get(..self.prefix.len())
            .is_some_and(|start| same(start, &self.prefix))
            || self
                .prefix
                .strip_suffix('/')
                .is_some_and(|folder| !folder.is_empty() && same(path, folder));
        host_ok && prefix_ok
    }

    /// What a request on this route is allowed: two routes with equal protection (the same
    /// auth mode and the same allow list) may serve readings of the same path. Otherwise
    /// `/ADMIN/x`, matched by a `/` route, would reach an upstream that reads it as
    /// `/admin/x` without the `/admin/` route's allow list being checked.
    fn protection(&self) -> (AuthMode, Option<&crate::allow::AllowList>) {
        (self.auth, self.allow.as_ref())
    }
}

pub struct RouteTable {
    /// Sorted so that the first match is the best one.
    routes: Vec<Arc<Route>>,
    /// Some upstream reads paths like IIS: 8.3 short names (`ADMINI~1`) are refused too.
    folds_case: bool,
    /// `true` once retired; dropped with the table. Either stops its background work.
    retired: tokio::sync::watch::Sender<bool>,
}

impl RouteTable {
    pub fn build(configs: &[RouteConfig]) -> RouteTable {
        let mut routes: Vec<Arc<Route>> = configs
            .iter()
            .map(|config| Arc::new(Route::build(config)))
            .collect();
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
        });
        let folds_case = routes.iter().any(|route| route.case_insensitive);
        RouteTable {
            routes,
            folds_case,
            retired: tokio::sync::watch::Sender::new(false),
        }
    }

    /// `host` is the request's Host (lower-cased, port removed).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<Arc<Route>> {
        self.routes
            .iter()
            .find(|route| route.matches(host, path))
            .cloned()
    }

    /// The route that serves `path`, once every other reading of it has been checked (see the
    /// module comment).
    pub fn resolve(
        &self,
        host: Option<&str>,
        path: &NormalizedPath,
    ) -> Result<Arc<Route>, Refusal> {
        let readings = path.readings();
        let spells_auth = is_auth_spelling(path.as_str())
            || readings.iter().any(|reading| is_auth_spelling(reading));
        if spells_auth {
            return Err(Refusal::AuthSpelling);
        }
        let route = self.find(host, path.as_str()).ok_or(Refusal::NoRoute)?;
        if path.has_encoded_slash() && !route.allow_encoded_slash {
            return Err(Refusal::EncodedSlash);
        }
        if self.folds_case && readings.iter().any(|reading| has_short_name(reading)) {
            // An 8.3 short name (`ADMINI~1`) could name any long folder on NTFS.
            return Err(Refusal::Ambiguous);
        }
        for reading in readings {
            let same = self
                .find(host, &reading)
                .is_some_and(|other| other.protection() == route.protection());
            if !same {
                return Err(Refusal::Ambiguous);
            }
        }
        Ok(route)
    }

    /// Completes the first discovery (DNS lookup) of every route, so that a freshly built
    /// table can serve at once. Routes whose upstreams are all IP literals are ready after
    /// [`RouteTable::build`] already.
    ///
    /// An error names every route left without any upstream address (a failed lookup): a
    /// reload is then rejected rather than swap in a route that can only answer 503.
    pub async fn ready(&self) -> Result<(), String> {
        let lookups = self
            .routes
            .iter()
            .filter(|route| route.pool.needs_lookup())
            .map(|route| route.pool.first_discovery());
        let failures: Vec<String> = futures::future::join_all(lookups)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    /// Stops this table's background work ([`RouteTable::run_health_checks`] returns
    /// promptly). Requests that already hold one of its routes still complete.
    pub fn retire(&self) {
        self.retired.send_replace(true);
    }

    /// Every route's upstreams and whether each is in rotation, as `(route prefix, upstream,
    /// healthy)`, for the `authgate_upstream_healthy` gauge.
    pub fn upstream_health(&self) -> Vec<(String, String, bool)> {
        self.routes
            .iter()
            .flat_map(|route| {
                route.pool.health().into_iter().map(|(upstream, healthy)| {
                    (route.prefix.clone(), upstream.to_string(), healthy)
                })
            })
            .collect()
    }

    /// Runs every route's upstream lookups, health checks and rate-limiter sweeps until the
    /// table is retired or dropped (the tasks hold its routes, never the table itself), or the
    /// returned future is dropped.
    pub async fn run_health_checks(self: Arc<Self>) {
        let mut retired = self.retired.subscribe();
        let routes = self.routes.clone();
        drop(self);
        if *retired.borrow_and_update() {
            return;
        }
        let mut checks = tokio::task::JoinSet::new();
        for route in routes {
            let interval = route.pool.health_check_interval;
            if interval.is_zero() && !route.pool.needs_lookup() && route.rate_limit.is_none() {
                continue;
            }
            checks.spawn(async move {
                let period = match interval {
                    interval if interval.is_zero() => RESOLVE_INTERVAL.min(LIMITER_SWEEP),
                    interval => interval.min(RESOLVE_INTERVAL).min(LIMITER_SWEEP),
                };
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut resolved: Option<Instant> = None;
                let mut swept = Instant::now();
                loop {
                    tick.tick().await;
                    if route.pool.needs_lookup()
                        && resolved.is_none_or(|at| at.elapsed() >= RESOLVE_INTERVAL)
                    {
                        resolved = Some(Instant::now());
                        route.pool.discover().await;
                    }
                    if !interval.is_zero() {
                        route.pool.check_health().await;
                    }
                    if let Some(limiter) = &route.rate_limit {
                        if swept.elapsed() >= LIMITER_SWEEP {
                            swept = Instant::now();
                            limiter.forget_idle();
                        }
                    }
                }
            });
        }
        // Until retired (`Ok(true)`) or the table is dropped (`Err`); dropping `checks` then
        // aborts every task.
        let _ = retired.wait_for(|retired| *retired).await;
    }
}

impl crate::telemetry::UpstreamHealthSource for arc_swap::ArcSwap<RouteTable> {
    fn upstream_health(&self) -> Vec<(String, String, bool)> {
        self.load().upstream_health()
    }
}

/// A segment shaped like an 8.3 short file name (`ADMINI~1`): up to six characters, `~`, a
/// digit.
fn has_short_name(path: &str) -> bool {
    path.split('/').any(|segment| {
        segment.find('~').is_some_and(|at| {
            (1..=6).contains(&at)
                && segment[at + 1..]
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_digit())
        })
    })
}

/// `/auth` or `/auth/...` in any case: the gateway's own namespace, never an upstream's. (The
/// exact lower-case spelling is answered by the gateway before routing.)
pub fn is_auth_spelling(path: &str) -> bool {
    let Some(start) = path.get(..5) else {
        return false;
    };
    start.eq_ignore_ascii_case("/auth") && matches!(path.as_bytes().get(5), None | Some(b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, host: Option<&str>, auth: AuthMode) -> RouteConfig {
        let mut text = format!("[[route]]\nprefix = \"{prefix}\"\nupstreams = [\"127.0.0.1:1\"]\n");
        text.push_str("health_check_interval = \"0s\"\n");
        if let Some(host) = host {
            text.push_str(&format!("host = \"{host}\"\n"));
        }
        let mut config = crate::config::Config::parse(&text).expect("test route");
        let mut route = config.routes.remove(0);
        route.auth = auth;
        route
    }

    #[tokio::test]
    async fn ip_literal_pools_serve_at_once_and_ready_looks_names_up() {
        let table = RouteTable::build(&[route("/", None, AuthMode::Public)]);
        assert_eq!(table.routes[0].pool_size(), 1, "no lookup needed");
        let mut named = route("/", None, AuthMode::Public);
        named.upstreams = vec!["localhost:1".to_string()];
        let table = RouteTable::build(&[named]);
        assert_eq!(table.routes[0].pool_size(), 0, "not looked up during build");
        table.ready().await.expect("localhost resolves");
        assert!(table.routes[0].pool_size() >= 1, "looked up by ready()");
    }

    fn checked_route() -> RouteConfig {
        let mut config = route("/", None, AuthMode::Public);
        config.health_check.interval = Duration::from_millis(20);
        config
    }

    #[tokio::test]
    async fn a_retired_table_stops_its_background_work() {
        let table = Arc::new(RouteTable::build(&[checked_route()]));
        let running = tokio::spawn(table.clone().run_health_checks());
        tokio::task::yield_now().await;
        table.retire();
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("run_health_checks returns once the table is retired")
            .expect("no panic");
        // Retired before it started: returns at once.
        let table = Arc::new(RouteTable::build(&[checked_route()]));
        table.retire();
        tokio::time::timeout(Duration::from_secs(10), table.clone().run_health_checks())
            .await
            .expect("returns at once");
    }

    #[tokio::test]
    async fn a_dropped_table_stops_its_background_work() {
        let table = Arc::new(RouteTable::build(&[checked_route()]));
        let running = tokio::spawn(table.clone().run_health_checks());
        tokio::task::yield_now().await;
        drop(table);
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("run_health_checks returns once the table is dropped")
            .expect("no panic");
    }

    #[test]
    fn strip_prefix_forwards_the_rest_of_the_path_from_a_slash() {
        let mut config = route("/app/", None, AuthMode::Required);
        config.strip_prefix = true;
        let app = Route::build(&config);
        assert_eq!(app.forwarded_path("/app/x"), "/x");
        assert_eq!(app.forwarded_path("/app/x/y/"), "/x/y/");
        assert_eq!(app.forwarded_path("/app/"), "/");
        assert_eq!(app.forwarded_path("/app"), "/");
        assert_eq!(app.forwarded_path("/app//x"), "/x");
        let mut config = route("/api", None, AuthMode::Required);
        config.strip_prefix = true;
        let api = Route::build(&config);
        assert_eq!(api.forwarded_path("/api/v1"), "/v1");
        assert_eq!(api.forwarded_path("/api"), "/");
        let kept = Route::build(&route("/app/", None, AuthMode::Required));
        assert_eq!(kept.forwarded_path("/app/x"), "/app/x");
    }

    #[test]
    fn longest_prefix_wins_and_host_routes_beat_hostless() {
        let table = RouteTable::build(&[
            route("/", None, AuthMode::Required),
            route("/static/", None, AuthMode::Public),
            route("/static/", Some("cdn.example.com"), AuthMode::Required),
        ]);
        let hit = |host, path| {
            table
                .find(host, path)
                .map(|r| (r.prefix.clone(), r.host.clone()))
        };
        assert_eq!(hit(None, "/static/a.css").unwrap().0, "/static/");
        assert_eq!(hit(None, "/static/a.css").unwrap().1, None);
        assert_eq!(
            hit(Some("cdn.example.com"), "/static/a.css")
                .unwrap()
                .1
                .as_deref(),
            Some("cdn.example.com")
        );
        assert_eq!(hit(None, "/other").unwrap().0, "/");
    }

    #[test]
    fn no_match_is_none() {
        let table = RouteTable::build(&[route("/app/", None, AuthMode::Required)]);
        assert!(table.find(None, "/other").is_none());
    }

    fn resolve(table: &RouteTable, raw: &str) -> Result<(String, AuthMode), Refusal> {
        let path = crate::path::normalize(raw.as_bytes()).unwrap();
        table
            .resolve(None, &path)
            .map(|route| (route.prefix.clone(), route.auth))
    }

    fn public_site_with_admin_area(admin_case_insensitive: bool) -> RouteTable {
        let mut admin = route("/admin/", None, AuthMode::Required);
        admin.case_insensitive = admin_case_insensitive;
        let mut files = route("/files/", None, AuthMode::Public);
        files.allow_encoded_slash = true;
        RouteTable::build(&[route("/", None, AuthMode::Public), admin, files])
    }

    #[test]
    fn readings_that_cross_protection_are_refused() {
        let table = public_site_with_admin_area(false);
        assert_eq!(
            resolve(&table, "/admin%2Fsecret"),
            Err(Refusal::EncodedSlash)
        );
        assert_eq!(resolve(&table, "/admin;x/secret"), Err(Refusal::Ambiguous));
        assert_eq!(
            resolve(&table, "/admin%3Bx/secret"),
            Err(Refusal::Ambiguous)
        );
        assert_eq!(
            resolve(&table, "/x/%252e%252e/admin/s"),
            Err(Refusal::Ambiguous)
        );
        assert_eq!(
            resolve(&table, "/admin/secret").unwrap().1,
            AuthMode::Required
        );
        assert_eq!(
            resolve(&table, "/about;lang=en").unwrap().1,
            AuthMode::Public
        );
        assert_eq!(resolve(&table, "/files/a%2Fb").unwrap().0, "/files/");
        assert_eq!(
            resolve(&table, "/files/..%252Fadmin%252Fx"),
            Err(Refusal::Ambiguous)
        );
    }

    #[test]
    fn case_insensitive_routes_match_and_fold() {
        let table = public_site_with_admin_area(true);
        assert_eq!(
            resolve(&table, "/ADMIN/secret").unwrap().1,
            AuthMode::Required
        );
        assert_eq!(resolve(&table, "/Admin./secret"), Err(Refusal::Ambiguous));
        assert_eq!(resolve(&table, "/About").unwrap().1, AuthMode::Public);
    }

    #[test]
    fn auth_spellings_are_never_routed() {
        let table = public_site_with_admin_area(false);
        for raw in [
            "/AUTH/login",
            "/Auth",
            "/auth;x/login",
            "/auth%2Flogin",
            "/%2561uth/login",
        ] {
            assert_eq!(resolve(&table, raw), Err(Refusal::AuthSpelling), "{raw}");
        }
        assert!(resolve(&table, "/authors").is_ok());
    }
}
