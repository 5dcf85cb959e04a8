//! The route table: which upstream serves a path, and whether it needs a session.
//!
//! Longest prefix wins; among equal prefixes a route bound to the request's host beats a
//! host-less one. The table is immutable once built and lives behind an `ArcSwap` in the
//! gateway, so that hot reload (not built yet) can swap it whole while in-flight requests
//! keep the one they matched.
//! Each route owns a round-robin pool of upstreams with an active TCP health check.

use std::sync::Arc;
use std::time::Duration;

use pingora::lb::selection::RoundRobin;
use pingora::lb::{health_check::TcpHealthCheck, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;

use crate::config::{AuthMode, RouteConfig};

pub struct Route {
    pub prefix: String,
    pub host: Option<String>,
    pub auth: AuthMode,
    upstreams: Arc<LoadBalancer<RoundRobin>>,
    connect_timeout: Duration,
    read_timeout: Duration,
    health_check_interval: Duration,
}

impl Route {
    fn build(config: &RouteConfig) -> std::io::Result<Route> {
        let mut upstreams = LoadBalancer::<RoundRobin>::try_from_iter(config.upstreams.iter())?;
        upstreams.set_health_check(TcpHealthCheck::new());
        Ok(Route {
            prefix: config.prefix.clone(),
            host: config.host.clone(),
            auth: config.auth,
            upstreams: Arc::new(upstreams),
            connect_timeout: config.connect_timeout,
            read_timeout: config.read_timeout,
            health_check_interval: config.health_check_interval,
        })
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
        host_ok && path.starts_with(&self.prefix)
    }
}

pub struct RouteTable {
    /// Sorted so that the first match is the best one.
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn build(configs: &[RouteConfig]) -> std::io::Result<RouteTable> {
        let mut routes = configs
            .iter()
            .map(|config| Route::build(config).map(Arc::new))
            .collect::<std::io::Result<Vec<_>>>()?;
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
        });
        Ok(RouteTable { routes })
    }

    /// `host` is the request's Host (lower-cased, port removed).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<Arc<Route>> {
        self.routes
            .iter()
            .find(|route| route.matches(host, path))
            .cloned()
    }

    /// Runs every route's health check at its interval until the returned future is dropped
    /// (dropping it aborts the checks, so a replaced table stops being probed).
    pub async fn run_health_checks(self: Arc<Self>) {
        let mut checks = tokio::task::JoinSet::new();
        for route in &self.routes {
            if route.health_check_interval.is_zero() {
                continue;
            }
            let route = route.clone();
            checks.spawn(async move {
                let mut tick = tokio::time::interval(route.health_check_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    route.upstreams.backends().run_health_check(true).await;
                }
            });
        }
        while checks.join_next().await.is_some() {}
    }
}

/// The Host header's name part, lower-cased.
pub fn host_of(value: &str) -> String {
    let value = value.trim();
    let without_port = if let Some(rest) = value.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        value.rsplit_once(':').map_or(value, |(host, _)| host)
    };
    without_port.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, host: Option<&str>, auth: AuthMode) -> RouteConfig {
        RouteConfig {
            prefix: prefix.to_string(),
            host: host.map(str::to_string),
            upstreams: vec!["127.0.0.1:1".parse().unwrap()],
            auth,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            health_check_interval: Duration::ZERO,
        }
    }

    #[test]
    fn longest_prefix_wins_and_host_routes_beat_hostless() {
        let table = RouteTable::build(&[
            route("/", None, AuthMode::Required),
            route("/static/", None, AuthMode::Public),
            route("/static/", Some("cdn.example.com"), AuthMode::Required),
        ])
        .unwrap();
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
        let table = RouteTable::build(&[route("/app/", None, AuthMode::Required)]).unwrap();
        assert!(table.find(None, "/other").is_none());
    }

    #[test]
    fn host_header_port_and_case_are_ignored() {
        assert_eq!(host_of("App.Example.com:8080"), "app.example.com");
        assert_eq!(host_of("[::1]:8080"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
