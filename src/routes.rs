//! The route table: which upstream serves a path, and whether it needs a session.
//!
//! Longest prefix wins; among equal prefixes a route bound to the request's host beats a
//! host-less one. A route marked `case_insensitive` matches its prefix regardless of case.
//!
//! [`RouteTable::resolve`] also checks SPEC §2 step 0's promise: every other reading an
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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt as _;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{health_check::TcpHealthCheck, Backend, Backends, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorType, OrErr};

use crate::config::{AuthMode, RouteConfig};
use crate::path::NormalizedPath;

pub struct Route {
    pub prefix: String,
    pub host: Option<String>,
    pub auth: AuthMode,
    case_insensitive: bool,
    allow_encoded_slash: bool,
    upstreams: Arc<LoadBalancer<RoundRobin>>,
    /// Some upstream is a host name, looked up at run time and every [`RESOLVE_INTERVAL`].
    needs_lookup: bool,
    connect_timeout: Duration,
    read_timeout: Duration,
    health_check_interval: Duration,
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

/// The route's upstreams, as written (`host:port`): IP literals as they are, host names looked
/// up (every address they resolve to) each time pingora asks. A failed lookup keeps the last
/// known addresses.
struct UpstreamNames(Vec<String>);

impl UpstreamNames {
    fn needs_lookup(&self) -> bool {
        self.0
            .iter()
            .any(|name| name.parse::<std::net::SocketAddr>().is_err())
    }
}

#[async_trait]
impl ServiceDiscovery for UpstreamNames {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut backends = BTreeSet::new();
        for name in &self.0 {
            if let Ok(addr) = name.parse::<std::net::SocketAddr>() {
                backends.insert(Backend::new(&addr.to_string())?);
                continue;
            }
            let addrs = tokio::net::lookup_host(name.as_str())
                .await
                .or_err_with(ErrorType::ConnectNoRoute, || {
                    format!("cannot resolve upstream {name}")
                })?;
            for addr in addrs {
                backends.insert(Backend::new(&addr.to_string())?);
            }
        }
        Ok((backends, HashMap::new()))
    }
}

impl Route {
    fn build(config: &RouteConfig) -> Route {
        let names = UpstreamNames(config.upstreams.clone());
        let needs_lookup = names.needs_lookup();
        let mut upstreams =
            LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(names)));
        upstreams.set_health_check(TcpHealthCheck::new());
        if !needs_lookup {
            // IP literals only: the first discovery completes without waiting.
            if let Some(Err(error)) = upstreams.update().now_or_never() {
                tracing::warn!(%error, prefix = %config.prefix, "cannot set up upstreams");
            }
        }
        Route {
            prefix: config.prefix.clone(),
            host: config.host.clone(),
            auth: config.auth,
            case_insensitive: config.case_insensitive,
            allow_encoded_slash: config.allow_encoded_slash,
            upstreams: Arc::new(upstreams),
            needs_lookup,
            connect_timeout: config.connect_timeout,
            read_timeout: config.read_timeout,
            health_check_interval: config.health_check_interval,
        }
    }

    /// The next healthy upstream, round-robin. When every upstream is marked down, one is
    /// tried anyway: a stale health mark must not take a route offline, and a real failure
    /// still ends as a 502.
    pub fn select_peer(&self) -> Option<Box<HttpPeer>> {
        let backend = self
            .upstreams
            .select(b"", 256)
            .or_else(|| self.upstreams.select_with(b"", 256, |_, _| true))?;
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        Some(Box::new(peer))
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

    /// What a request on this route is allowed: two routes with equal protection may serve
    /// readings of the same path.
    fn protection(&self) -> AuthMode {
        self.auth
    }
}

pub struct RouteTable {
    /// Sorted so that the first match is the best one.
    routes: Vec<Arc<Route>>,
    /// Set by [`RouteTable::retire`]: the table's background work stops.
    retired: tokio::sync::watch::Sender<bool>,
    /// Some upstream reads paths like IIS: 8.3 short names (`ADMINI~1`) are refused too.
    folds_case: bool,
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

    /// Completes the first lookup of every route's upstream names, so that a table built for
    /// a hot reload serves at once. (IP literals are usable as soon as the table is built.)
    pub async fn ready(&self) {
        for route in self.routes.iter().filter(|route| route.needs_lookup) {
            if let Err(error) = route.upstreams.update().await {
                tracing::warn!(%error, prefix = %route.prefix, "upstream lookup failed");
            }
        }
    }

    /// Stops the table's background work (health checks, lookups): it has been replaced.
    pub fn retire(&self) {
        self.retired.send_replace(true);
    }

    /// Runs every route's upstream lookups and health checks until [`RouteTable::retire`] is
    /// called or the returned future is dropped (either aborts them).
    pub async fn run_health_checks(self: Arc<Self>) {
        let mut retired = self.retired.subscribe();
        let mut checks = tokio::task::JoinSet::new();
        for route in &self.routes {
            if route.health_check_interval.is_zero() && !route.needs_lookup {
                continue;
            }
            let route = route.clone();
            checks.spawn(async move {
                let period = match route.health_check_interval {
                    interval if interval.is_zero() => RESOLVE_INTERVAL,
                    interval => interval.min(RESOLVE_INTERVAL),
                };
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut resolved: Option<Instant> = None;
                loop {
                    tick.tick().await;
                    if route.needs_lookup
                        && resolved.is_none_or(|at| at.elapsed() >= RESOLVE_INTERVAL)
                    {
                        resolved = Some(Instant::now());
                        if let Err(error) = route.upstreams.update().await {
                            tracing::warn!(%error, prefix = %route.prefix, "upstream lookup failed; keeping the last addresses");
                        }
                    }
                    if !route.health_check_interval.is_zero() {
                        route.upstreams.backends().run_health_check(true).await;
                    }
                }
            });
        }
        let all_done = async { while checks.join_next().await.is_some() {} };
        tokio::select! {
            () = all_done => {}
            _ = retired.wait_for(|retired| *retired) => {}
        }
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
        RouteConfig {
            prefix: prefix.to_string(),
            host: host.map(str::to_string),
            upstreams: vec!["127.0.0.1:1".to_string()],
            auth,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            health_check_interval: Duration::ZERO,
            case_insensitive: false,
            allow_encoded_slash: false,
        }
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
