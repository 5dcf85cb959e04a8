//! A route's upstream pool: which server gets the next request, and which are fit to.
//!
//! Built on pingora's load-balancing crate. Selection is round robin (default), least
//! connections (in-flight requests counted here; pingora has none built in) or consistent
//! hashing (Ketama) on a key the gateway chooses: the user id, or the client IP on public
//! routes. An upstream is skipped while
//! - an active check (TCP connect, or HTTP `GET path` answering 2xx/3xx) has seen it fail
//!   `unhealthy_threshold` times in a row, until it passes `healthy_threshold` times, or
//! - it refused `max_connect_failures` connects in a row (passive detection), until an active
//!   check passes or `failure_cooldown` has gone by.
//!
//! When every upstream is out, one is tried anyway: a stale health mark must not take a route
//! offline, and a real failure still ends as a 502.
//!
//! Host names are resolved at run time ([`UpstreamNames`]), never while the config is read.
//! Nothing here writes to a client; selection does no I/O.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt as _;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;
use pingora::{Error, ErrorType, OrErr};

use crate::config::{Balance, Probe, RouteConfig};

/// How many candidates a selection looks at before giving up (pingora's iteration bound).
const MAX_SELECT_ITERATIONS: usize = 256;

/// The route's upstreams, as written (`host:port`): IP literals as they are, host names looked
/// up (every address they resolve to) each time pingora asks. A failed lookup keeps the last
/// known addresses.
struct UpstreamNames(Vec<String>);

impl UpstreamNames {
    fn needs_lookup(&self) -> bool {
        self.0
            .iter()
            .any(|name| name.parse::<SocketAddr>().is_err())
    }
}

#[async_trait]
impl ServiceDiscovery for UpstreamNames {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut backends = BTreeSet::new();
        for name in &self.0 {
            if let Ok(addr) = name.parse::<SocketAddr>() {
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

/// The selection algorithm, over pingora's load balancer.
enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    /// Backends and health from the load balancer; the choice is made here.
    LeastConnections(LoadBalancer<RoundRobin>),
    ConsistentHash(LoadBalancer<Consistent>),
}

impl Balancer {
    fn new(balance: Balance, backends: Backends) -> Balancer {
        match balance {
            Balance::RoundRobin => Balancer::RoundRobin(LoadBalancer::from_backends(backends)),
            Balance::LeastConnections => {
                Balancer::LeastConnections(LoadBalancer::from_backends(backends))
            }
            Balance::ConsistentHash => {
                Balancer::ConsistentHash(LoadBalancer::from_backends(backends))
            }
        }
    }

    fn backends(&self) -> &Backends {
        match self {
            Balancer::RoundRobin(lb) | Balancer::LeastConnections(lb) => lb.backends(),
            Balancer::ConsistentHash(lb) => lb.backends(),
        }
    }

    async fn update(&self) -> pingora::Result<()> {
        match self {
            Balancer::RoundRobin(lb) | Balancer::LeastConnections(lb) => lb.update().await,
            Balancer::ConsistentHash(lb) => lb.update().await,
        }
    }

    fn select_with(&self, key: &[u8], accept: impl Fn(&Backend, bool) -> bool) -> Option<Backend> {
        match self {
            Balancer::RoundRobin(lb) | Balancer::LeastConnections(lb) => {
                lb.select_with(key, MAX_SELECT_ITERATIONS, accept)
            }
            Balancer::ConsistentHash(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
        }
    }
}

/// Passive failure detection: consecutive failed connects per upstream.
#[derive(Default)]
struct ConnectFailures {
    by_upstream: Mutex<HashMap<SocketAddr, FailureRun>>,
}

#[derive(Clone, Copy)]
struct FailureRun {
    count: u32,
    down_until: Option<Instant>,
}

impl ConnectFailures {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, FailureRun>> {
        self.by_upstream
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_down(&self, upstream: &SocketAddr) -> bool {
        self.lock()
            .get(upstream)
            .and_then(|run| run.down_until)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Counts a failed connect; `true` when it just took the upstream down.
    fn failed(&self, upstream: SocketAddr, max: u32, cooldown: Duration) -> bool {
        let mut runs = self.lock();
        let run = runs.entry(upstream).or_insert(FailureRun {
            count: 0,
            down_until: None,
        });
        run.count = run.count.saturating_add(1);
        let already_down = run.down_until.is_some_and(|until| Instant::now() < until);
        if max > 0 && run.count >= max && !already_down {
            run.down_until = Some(Instant::now() + cooldown);
            return true;
        }
        false
    }

    /// A connect (or an active check) succeeded: the run is over.
    fn cleared(&self, upstream: &SocketAddr) {
        self.lock().remove(upstream);
    }
}

/// Counts a request as in flight on one upstream for as long as it lives (least connections).
pub struct Lease(Option<Arc<AtomicUsize>>);

impl Lease {
    /// The upstream has answered in full: the request no longer counts as in flight there,
    /// even though its last bytes may still be on their way to the client.
    pub fn end(&mut self) {
        if let Some(count) = self.0.take() {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.end();
    }
}

/// A chosen upstream: the peer to connect to, its address, and its in-flight lease.
pub struct Selected {
    pub peer: Box<HttpPeer>,
    pub upstream: SocketAddr,
    pub lease: Lease,
}

/// Everything a peer carries besides its address.
struct PeerSettings {
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    idle_timeout: Duration,
    tls: Option<PeerTls>,
}

struct PeerTls {
    /// `None`: the upstream's own host (as written in `upstreams`).
    sni: Option<String>,
    verify: bool,
    ca: Option<Arc<[WrappedX509]>>,
}

pub struct UpstreamPool {
    /// The route prefix, for logs.
    label: String,
    balancer: Balancer,
    /// Some upstream is a host name, looked up at run time and every `RESOLVE_INTERVAL`.
    needs_lookup: bool,
    /// Upstream host names as written, by port, for the default SNI of TLS upstreams.
    written: Vec<String>,
    settings: PeerSettings,
    /// Zero: no active checks.
    pub health_check_interval: Duration,
    failures: Arc<ConnectFailures>,
    max_connect_failures: u32,
    failure_cooldown: Duration,
    in_flight: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
    rotation: AtomicUsize,
}

impl UpstreamPool {
    /// Synchronous and cheap: IP-literal pools are usable at once; host names wait for
    /// [`UpstreamPool::discover`].
    pub fn build(config: &RouteConfig) -> UpstreamPool {
        let names = UpstreamNames(config.upstreams.clone());
        let needs_lookup = names.needs_lookup();
        let failures = Arc::new(ConnectFailures::default());
        let tls = config.tls.as_ref().map(|tls| PeerTls {
            sni: tls.sni.clone(),
            verify: tls.verify,
            ca: tls.ca.as_deref().map(trusted_roots),
        });
        let mut backends = Backends::new(Box::new(names));
        if !config.health_check.interval.is_zero() {
            backends.set_health_check(Box::new(ActiveCheck {
                config: config.clone(),
                inner: OnceLock::new(),
                failures: failures.clone(),
            }));
        }
        let balancer = Balancer::new(config.balance, backends);
        if !needs_lookup {
            // IP literals only: the first discovery completes without waiting.
            if let Some(Err(error)) = balancer.update().now_or_never() {
                tracing::warn!(%error, prefix = %config.prefix, "cannot set up upstreams");
            }
        }
        UpstreamPool {
            label: config.prefix.clone(),
            balancer,
            needs_lookup,
            written: config.upstreams.clone(),
            settings: PeerSettings {
                connect_timeout: config.connect_timeout,
                read_timeout: config.read_timeout,
                write_timeout: config.write_timeout,
                idle_timeout: config.idle_timeout,
                tls,
            },
            health_check_interval: config.health_check.interval,
            failures,
            max_connect_failures: config.max_connect_failures,
            failure_cooldown: config.failure_cooldown,
            in_flight: Mutex::new(HashMap::new()),
            rotation: AtomicUsize::new(0),
        }
    }

    pub fn needs_lookup(&self) -> bool {
        self.needs_lookup
    }

    /// Looks host names up again (a failed lookup keeps the last addresses).
    pub async fn discover(&self) {
        if let Err(error) = self.balancer.update().await {
            tracing::warn!(%error, prefix = %self.label, "upstream lookup failed; keeping the last addresses");
        }
    }

    /// The first lookup of a pool about to be swapped in by a reload: an error when the pool
    /// would have no upstream at all.
    pub async fn first_discovery(&self) -> Result<(), String> {
        let looked_up = self.balancer.update().await;
        if self.size() > 0 {
            return Ok(());
        }
        Err(match looked_up {
            Err(error) => format!("route {}: upstream lookup failed: {error}", self.label),
            Ok(()) => format!("route {}: its upstreams resolve to no address", self.label),
        })
    }

    /// One active health-check pass over every upstream.
    pub async fn check_health(&self) {
        self.balancer.backends().run_health_check(true).await;
    }

    /// How many upstreams the pool has now.
    pub fn size(&self) -> usize {
        self.balancer.backends().get_backend().len()
    }

    /// Every upstream and whether it is in rotation (active and passive health).
    pub fn health(&self) -> Vec<(SocketAddr, bool)> {
        let backends = self.balancer.backends();
        backends
            .get_backend()
            .iter()
            .filter_map(|backend| {
                let addr = *backend.addr.as_inet()?;
                Some((
                    addr,
                    backends.ready(backend) && !self.failures.is_down(&addr),
                ))
            })
            .collect()
    }

    /// The next upstream for a request, never one in `tried`. `key` gives the consistent-hash
    /// key (only asked for by that algorithm).
    pub fn select(&self, key: impl FnOnce() -> Vec<u8>, tried: &[SocketAddr]) -> Option<Selected> {
        let untried = |backend: &Backend| {
            backend
                .addr
                .as_inet()
                .is_some_and(|addr| !tried.contains(addr))
        };
        let fit = |backend: &Backend, healthy: bool| {
            healthy
                && untried(backend)
                && backend
                    .addr
                    .as_inet()
                    .is_some_and(|addr| !self.failures.is_down(addr))
        };
        let backend = match self.only_backend() {
            // One upstream: no balancing to do (the balancer would pick it all the same).
            Some((only, healthy)) => (fit(&only, healthy) || untried(&only)).then_some(only),
            None => self.balanced(key, &fit, &untried),
        }?;
        let upstream = *backend.addr.as_inet()?;
        Some(Selected {
            peer: self.peer(upstream),
            upstream,
            lease: self.lease(upstream),
        })
    }

    /// The pool's upstream and whether it is ready, when it has exactly one.
    fn only_backend(&self) -> Option<(Backend, bool)> {
        let backends = self.balancer.backends();
        let all = backends.get_backend();
        match all.len() {
            1 => all
                .iter()
                .next()
                .map(|only| (only.clone(), backends.ready(only))),
            _ => None,
        }
    }

    /// The balancer's choice among several upstreams: a fit one, else any untried one.
    fn balanced(
        &self,
        key: impl FnOnce() -> Vec<u8>,
        fit: &dyn Fn(&Backend, bool) -> bool,
        untried: &dyn Fn(&Backend) -> bool,
    ) -> Option<Backend> {
        match &self.balancer {
            Balancer::LeastConnections(lb) => self
                .least_loaded(lb, &fit)
                .or_else(|| self.least_loaded(lb, &|backend, _| untried(backend))),
            balancer => {
                let key = match balancer {
                    Balancer::ConsistentHash(_) => key(),
                    _ => Vec::new(),
                };
                balancer
                    .select_with(&key, fit)
                    .or_else(|| balancer.select_with(&key, |backend, _| untried(backend)))
            }
        }
    }

    /// Least connections: the accepted upstream with the fewest requests in flight, ties
    /// taken in turn.
    fn least_loaded(
        &self,
        lb: &LoadBalancer<RoundRobin>,
        accept: &dyn Fn(&Backend, bool) -> bool,
    ) -> Option<Backend> {
        let backends = lb.backends();
        let loads = self.lock_in_flight();
        let candidates: Vec<(Backend, usize)> = backends
            .get_backend()
            .iter()
            .filter(|backend| accept(backend, backends.ready(backend)))
            .map(|backend| {
                let load = backend
                    .addr
                    .as_inet()
                    .and_then(|addr| loads.get(addr))
                    .map_or(0, |count| count.load(Ordering::Acquire));
                (backend.clone(), load)
            })
            .collect();
        let least = candidates.iter().map(|(_, load)| *load).min()?;
        let tied: Vec<&Backend> = candidates
            .iter()
            .filter(|(_, load)| *load == least)
            .map(|(backend, _)| backend)
            .collect();
        let turn = self.rotation.fetch_add(1, Ordering::Relaxed);
        tied.get(turn % tied.len().max(1))
            .map(|backend| (*backend).clone())
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<AtomicUsize>>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lease(&self, upstream: SocketAddr) -> Lease {
        if !matches!(self.balancer, Balancer::LeastConnections(_)) {
            return Lease(None);
        }
        let count = self
            .lock_in_flight()
            .entry(upstream)
            .or_insert_with(|| Arc::new(AtomicUsize::new(0)))
            .clone();
        count.fetch_add(1, Ordering::AcqRel);
        Lease(Some(count))
    }

    fn peer(&self, upstream: SocketAddr) -> Box<HttpPeer> {
        let settings = &self.settings;
        let mut peer = match &settings.tls {
            None => HttpPeer::new(upstream, false, String::new()),
            Some(tls) => {
                let sni = tls
                    .sni
                    .clone()
                    .unwrap_or_else(|| self.written_host(upstream));
                let mut peer = HttpPeer::new(upstream, true, sni);
                peer.options.verify_cert = tls.verify;
                peer.options.verify_hostname = tls.verify;
                peer.options.ca = tls.ca.clone();
                peer
            }
        };
        peer.options.connection_timeout = Some(settings.connect_timeout);
        peer.options.read_timeout = Some(settings.read_timeout);
        peer.options.write_timeout = Some(settings.write_timeout);
        peer.options.idle_timeout = Some(settings.idle_timeout);
        Box::new(peer)
    }

    /// The host an upstream address was written as (for the default SNI): the name if it was
    /// written as a name with this port, else the IP.
    fn written_host(&self, upstream: SocketAddr) -> String {
        let port = format!(":{}", upstream.port());
        self.written
            .iter()
            .filter_map(|written| written.strip_suffix(&port))
            .find(|host| host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('['))
            .map(str::to_string)
            .unwrap_or_else(|| upstream.ip().to_string())
    }

    /// A connect to `upstream` failed (passive detection).
    pub fn connect_failed(&self, upstream: SocketAddr) {
        if self
            .failures
            .failed(upstream, self.max_connect_failures, self.failure_cooldown)
        {
            tracing::warn!(
                prefix = %self.label,
                %upstream,
                failures = self.max_connect_failures,
                cooldown = ?self.failure_cooldown,
                "upstream taken out of rotation after failed connects"
            );
        }
    }

    /// A connect to `upstream` succeeded.
    pub fn connected(&self, upstream: SocketAddr) {
        self.failures.cleared(&upstream);
    }
}

/// `tls_ca_file`'s certificates as pingora takes them. Each was parsed when the config was
/// loaded (pingora's parser panics on a bad one).
fn trusted_roots(certificates: &[Vec<u8>]) -> Arc<[WrappedX509]> {
    certificates
        .iter()
        .map(|der| WrappedX509::new(der.clone(), pingora::utils::tls::parse_x509))
        .collect()
}

/// The active check pingora runs for a pool: TCP or HTTP, built on first use (building a
/// checker loads the TLS roots, which `RouteTable::build` must not pay for). A passing check
/// also ends a passive failure run.
struct ActiveCheck {
    config: RouteConfig,
    inner: OnceLock<Box<dyn HealthCheck + Send + Sync>>,
    failures: Arc<ConnectFailures>,
}

impl ActiveCheck {
    fn inner(&self) -> &(dyn HealthCheck + Send + Sync) {
        self.inner.get_or_init(|| probe_for(&self.config)).as_ref()
    }
}

fn probe_for(config: &RouteConfig) -> Box<dyn HealthCheck + Send + Sync> {
    let health = &config.health_check;
    let timeout = config.connect_timeout;
    match &health.probe {
        Probe::Tcp => {
            let mut check = TcpHealthCheck::new();
            check.consecutive_success = health.healthy_threshold;
            check.consecutive_failure = health.unhealthy_threshold;
            check.peer_template.options.connection_timeout = Some(timeout);
            check
        }
        Probe::Http { path } => {
            let tls = config.tls.as_ref();
            let host = tls
                .and_then(|tls| tls.sni.clone())
                .or_else(|| {
                    config
                        .upstreams
                        .first()
                        .and_then(|written| written.rsplit_once(':'))
                        .map(|(host, _)| host.trim_matches(['[', ']']).to_string())
                })
                .unwrap_or_else(|| "localhost".to_string());
            let mut check = HttpHealthCheck::new(&host, tls.is_some());
            check.consecutive_success = health.healthy_threshold;
            check.consecutive_failure = health.unhealthy_threshold;
            check.peer_template.options.connection_timeout = Some(timeout);
            check.peer_template.options.read_timeout =
                Some(config.read_timeout.min(timeout.max(Duration::from_secs(2))));
            if let Some(tls) = tls {
                check.peer_template.options.verify_cert = tls.verify;
                check.peer_template.options.verify_hostname = tls.verify;
                check.peer_template.options.ca = tls.ca.as_deref().map(trusted_roots);
            }
            match pingora::http::RequestHeader::build("GET", path.as_bytes(), None) {
                Ok(mut request) => {
                    if request.insert_header("host", host.as_str()).is_ok() {
                        check.req = request;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, %path, "cannot build the health check request")
                }
            }
            // 2xx and 3xx are healthy.
            check.validator = Some(Box::new(|response| {
                let status = response.status.as_u16();
                if (200..400).contains(&status) {
                    Ok(())
                } else {
                    Error::e_explain(
                        ErrorType::CustomCode("unhealthy status", status),
                        "during the http health check",
                    )
                }
            }));
            Box::new(check)
        }
    }
}

#[async_trait]
impl HealthCheck for ActiveCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let result = self.inner().check(target).await;
        if let (Ok(()), Some(addr)) = (&result, target.addr.as_inet()) {
            self.failures.cleared(addr);
        }
        result
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        tracing::info!(
            prefix = %self.config.prefix,
            upstream = %target.addr,
            healthy,
            "upstream health changed"
        );
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner().health_threshold(success)
    }
}
