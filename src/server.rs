//! Assembly: builds the stores, the pipeline and the admin app from a validated config, and
//! hands them to pingora.
//!
//! Store clients (the sqlx pool, the Redis connection manager) spawn background tasks on the
//! runtime that creates them, and die with it. They are therefore created on one dedicated
//! "background" runtime that lives as long as the process; the same runtime runs migrations,
//! upstream health checks and housekeeping. bcrypt has a runtime of its own, at a lower OS
//! priority. Pingora's own per-service runtimes only run request handling.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, Server};
use pingora::services::listening::Service;

use crate::admin::{AdminApp, Readiness};
use crate::assertion::keys::SigningKey;
use crate::assertion::{self as identity_assertion, Assertions};
use crate::auth::csrf::CsrfPolicy;
use crate::auth::{AuthApi, Pages};
use crate::config::{Config, RedisDeployment};
use crate::connections::{ConnectionGuard, ConnectionLimits};
use crate::demo::DemoApp;
use crate::gateway::Gateway;
use crate::geo::Locator;
use crate::identity::IdentityHeaders;
use crate::limits::ip_rate::IpRateLimiter;
use crate::limits::login::memory::MemoryLoginGuard;
use crate::limits::login::LoginGuard;
use crate::limits::login::RedisLoginGuard;
use crate::password::PasswordHasher;
use crate::reload::Reloader;
use crate::respond::Responder;
use crate::routes::RouteTable;
use crate::session::activity::ActivityTracker;
use crate::session::cache::SessionCache;
use crate::session::epoch_ttl;
use crate::session::invalidation;
use crate::session::jobs::{self, ExpiryJob};
use crate::session::memory::MemorySessionStore;
use crate::session::redis::{invalidation_channel, RedisSessionStore};
use crate::session::redis_connection::RedisConnection;
use crate::session::SessionStore;
use crate::session::Sessions;
use crate::store::behind::WriteBehind;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{DatabaseUrl, RecordStore};
use crate::telemetry::{self, Metrics, Store};
use crate::upgrade;

/// With `--upgrade`, how long the new process waits for the running one to hand over its
/// listening sockets (one try per second).
const UPGRADE_WAIT_SECONDS: usize = 30;
const MIGRATION_RETRY: Duration = Duration::from_secs(2);
const LIMITER_SWEEP: Duration = Duration::from_secs(30);
const MEMORY_SWEEP: Duration = Duration::from_secs(10);
/// How often the stores are probed for the readiness gauges.
const READINESS_PROBE: Duration = Duration::from_secs(5);
/// Sessions the local cache holds at most (about 1 KB each); past it, sessions are simply
/// validated by Redis on every request.
const SESSION_CACHE_ENTRIES: usize = 100_000;

fn background_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("authgate-background")
        .enable_all()
        .build()
        .context("cannot start the background runtime")
}

/// bcrypt's threads: a runtime of their own whose threads run at a lower OS priority than the
/// proxy's (nice [`HASHING_NICE`]), so a login flood takes the CPU the proxied traffic leaves
/// rather than the other way round. It lives as long as the process.
fn hashing_runtime(threads: usize) -> anyhow::Result<&'static tokio::runtime::Runtime> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(threads.max(1))
        .thread_name("authgate-bcrypt")
        .on_thread_start(lower_thread_priority)
        .enable_all()
        .build()
        .context("cannot start the password hashing runtime")?;
    Ok(Box::leak(Box::new(runtime)))
}

/// The nice value of the password hashing threads (0 is the proxy's; 19 the lowest).
const HASHING_NICE: libc::c_int = 19;

/// Lowers the calling thread's scheduling priority (Linux: nice is per thread). Best effort: a
/// thread left at normal priority only hashes at the proxy's priority, as before.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take no pointers; PRIO_PROCESS with a thread id
        // changes that thread only.
        let outcome = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, HASHING_NICE)
        };
        if outcome != 0 {
            tracing::debug!("cannot lower the priority of a password hashing thread");
        }
    }
}

/// Opens the record store `storage.database_url` names, as the rest of the gateway sees it.
///
/// Postgres is opened lazily, so the gateway starts (and serves existing sessions) while the
/// server is down. SQLite is a local file: it is opened now and its single-instance lock taken
/// now, so a second process on the same file, or a file that cannot be opened, is a start-up
/// error rather than a gateway that runs without its records.
fn open_records(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<dyn RecordStore>> {
    let storage = &config.storage;
    let url = DatabaseUrl::parse(&storage.database_url)
        .map_err(|message| anyhow::anyhow!("storage.database_url: {message}"))?;
    let records: Arc<dyn RecordStore> = match url {
        DatabaseUrl::Postgres(url) => {
            let _inside = runtime.enter();
            Arc::new(
                PostgresStore::connect_lazy(
                    &url,
                    storage.database_max_connections,
                    storage.database_timeout,
                    metrics,
                )
                .context("storage.database_url")?,
            )
        }
        DatabaseUrl::Sqlite(path) => Arc::new(runtime.block_on(SqliteStore::open(
            &path,
            storage.database_max_connections,
            storage.database_timeout,
            metrics,
        ))?),
    };
    let backend = records.backend();
    tracing::info!(backend, "database ({backend}) selected");
    Ok(records)
}

/// `authgate migrate`: apply migrations and exit.
pub fn migrate(config: Config) -> anyhow::Result<()> {
    telemetry::init_logging(&config.log);
    let runtime = background_runtime()?;
    let metrics = Arc::new(Metrics::new()?);
    let records = open_records(&config, &runtime, metrics)?;
    runtime.block_on(records.migrate())?;
    println!("database ({}) migrations applied", records.backend());
    Ok(())
}

/// `authgate assertion rotate`: adds a new signing key to the database and retires the live
/// ones. Running gateways sign with it within [`identity_assertion::KEY_REFRESH`]; the retired
/// keys stay published until their last assertions have expired.
pub fn rotate_assertion_key(config: Config) -> anyhow::Result<()> {
    telemetry::init_logging(&config.log);
    if let Some(path) = &config.assertion.key_file {
        anyhow::bail!(
            "assertion.key_file is set ({}): the gateway signs with that file's key; replace the \
             file and reload the gateway (SIGHUP) to rotate",
            path.display()
        );
    }
    let runtime = background_runtime()?;
    let metrics = Arc::new(Metrics::new()?);
    let storage = &config.storage;
    let records: Arc<dyn RecordStore> = match DatabaseUrl::parse(&storage.database_url) {
        // A running embedded gateway holds the file's lock; this command may still write.
        Ok(DatabaseUrl::Sqlite(path)) => Arc::new(runtime.block_on(
            SqliteStore::open_for_command(&path, storage.database_timeout, metrics),
        )?),
        _ => open_records(&config, &runtime, metrics)?,
    };
    runtime.block_on(records.migrate())?;
    let algorithm = config.assertion.algorithm;
    let key = SigningKey::generate(algorithm).map_err(anyhow::Error::msg)?;
    let now = chrono::Utc::now();
    let retired = runtime
        .block_on(records.rotate_signing_keys(&identity_assertion::stored_form(&key, now), now))?;
    println!(
        "new assertion signing key {} ({}) in the {} database; {retired} key(s) retired.\n\
         Running gateways sign with it within {} s; retired keys stay in the JWKS for \
         assertion.lifetime + 60 s.",
        key.kid(),
        algorithm.name(),
        records.backend(),
        identity_assertion::KEY_REFRESH.as_secs(),
    );
    if !config.assertion.enabled {
        println!(
            "note: [assertion] enabled = false in this config; gateways using it sign nothing"
        );
    }
    Ok(())
}

/// How `authgate run` was asked to start.
pub struct RunOptions {
    /// The file the config was read from: hot reload re-reads it.
    pub config_path: PathBuf,
    /// Take over the listening sockets of a running authgate (graceful binary upgrade)
    /// through `server.upgrade_sock`, instead of binding them.
    pub upgrade: bool,
}

/// Refuses to start when an address the gateway is to listen on cannot be bound (another
/// process listens there, or the address is not this host's). pingora would retry the bind for
/// 30 s and then lose the listener's service thread, leaving a process whose admin listener
/// answers ready while nothing serves the public address. The probe binds as pingora does
/// (`SO_REUSEADDR`, so sockets in TIME_WAIT do not count) and lets go at once. With
/// `--upgrade` the sockets come from the running process instead, so there is nothing to probe.
fn check_listen_addresses(config: &Config) -> anyhow::Result<()> {
    let addresses = [
        ("server.listen", Some(config.server.listen)),
        ("server.admin_listen", Some(config.server.admin_listen)),
        ("demo.listen", config.demo),
    ];
    // Held until every address is probed: two of them that overlap (`0.0.0.0:8080` and
    // `127.0.0.1:8080`) would stop pingora as surely as another process.
    let mut bound: Vec<(&str, std::net::SocketAddr, std::net::TcpListener)> = Vec::new();
    for (key, address) in addresses {
        let Some(address) = address else { continue };
        match std::net::TcpListener::bind(address) {
            Ok(listener) => bound.push((key, address, listener)),
            Err(error) => {
                let overlap = bound
                    .iter()
                    .find(|(_, other, _)| other.port() == address.port());
                let hint = match overlap {
                    _ if error.kind() != std::io::ErrorKind::AddrInUse => String::new(),
                    Some((other_key, other, _)) => format!(" (it overlaps {other_key} = {other})"),
                    None => " (another process listens there: is authgate already running? \
                             `authgate run --upgrade` takes over a running gateway's sockets)"
                        .to_string(),
                };
                anyhow::bail!("cannot listen on {address} ({key}): {error}{hint}");
            }
        }
    }
    Ok(())
}

/// The other half of [`check_listen_addresses`]: an address taken between that probe and
/// pingora's own bind makes pingora panic on the service's thread ("Failed to build
/// listeners") after its retries. The process then exits instead of lingering without the
/// listener.
fn exit_if_a_listener_cannot_be_bound() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("Failed to build listeners") {
            tracing::error!("a listening address cannot be bound; exiting");
            std::process::exit(1);
        }
    }));
}

/// Runs the gateway until a signal stops it. Never returns on success (pingora exits).
pub fn run(config: Config, options: RunOptions) -> anyhow::Result<()> {
    let log_level = telemetry::init_logging(&config.log);
    if options.upgrade && config.storage.redis().is_none() {
        anyhow::bail!(
            "--upgrade needs the production pair (storage.redis_url set): in the embedded mode \
             live sessions are in the running process's memory and its SQLite file is locked \
             by it; restart the gateway instead"
        );
    }
    if options.upgrade {
        upgrade::check_socket_directory(std::path::Path::new(&config.server.upgrade_sock))?;
    } else {
        check_listen_addresses(&config)?;
    }
    let start_config = config.clone();
    if config.access.registration_open()
        && config.routes.iter().any(|route| {
            route
                .allow
                .as_ref()
                .is_some_and(|allow| allow.names_addresses())
        })
    {
        tracing::warn!(
            "a route's allow list names email addresses or *@domain, and registration is \
             open: addresses are not verified, so anyone can sign up as a listed address; \
             use role: entries, or access.registration = \"closed\" with `authgate user add`"
        );
    }
    let background = background_runtime()?;
    let metrics = Arc::new(Metrics::new()?);

    let records = open_records(&config, &background, metrics.clone())?;
    let backend = records.backend();
    let database_ready = Arc::new(AtomicBool::new(false));
    background.spawn(migrate_until_done(records.clone(), database_ready.clone()));
    // A key file that does not load stops the start here; database keys are loaded (or
    // generated) once the schema is ready, and until then protected routes answer 503.
    let assertions =
        Arc::new(Assertions::new(&config.assertion, records.clone()).map_err(anyhow::Error::msg)?);
    background.spawn(assertions.clone().keep_current(database_ready.clone()));

    let (session_store, login_protection, session_cache) =
        open_sessions(&config, &background, &metrics)?;
    tracing::info!(
        session_store = session_store.backend(),
        "session store selected"
    );
    metrics.stores_in_use(
        &[records.backend(), session_store.backend()]
            .into_iter()
            .filter_map(Store::from_backend)
            .collect::<Vec<_>>(),
    );
    let locator = Arc::new(Locator::new(&config.geoip)?);
    let Config {
        server: server_config,
        session: session_config,
        password: password_config,
        rate_limit,
        branding,
        access,
        demo,
        routes: route_configs,
        ..
    } = config;
    let (writer, write_behind) = WriteBehind::new(records.clone(), metrics.clone());
    background.spawn(write_behind);
    let activity = Arc::new(ActivityTracker::default());
    let shutdown_flush = ShutdownFlush {
        writer: writer.clone(),
        activity: activity.clone(),
        records: records.clone(),
    };
    let session_config = Arc::new(session_config);
    let mut sessions = Sessions::new(
        session_store,
        session_config.clone(),
        activity.clone(),
        writer.clone(),
        metrics.clone(),
    );
    if let Some(cache) = session_cache {
        sessions = sessions.with_cache(cache);
    }
    let sessions = Arc::new(sessions);
    // Sessions in this process's memory: the operator commands reach them through this
    // socket, so a gateway that cannot open it does not start (its sessions would be out of
    // the operator's reach: a disabled user would stay signed in).
    if let Some(path) = crate::control::socket_path(&start_config, &options.config_path) {
        let listener = crate::control::bind(&path).with_context(|| {
            format!(
                "cannot open the control socket {} (operator commands reach this gateway's \
                 in-memory sessions through it)",
                path.display()
            )
        })?;
        tracing::info!(path = %path.display(), "control socket for operator commands");
        background.spawn(crate::control::serve(listener, sessions.clone()));
    }
    background.spawn(jobs::flush_activity(
        activity,
        records.clone(),
        session_config.activity_flush_interval,
    ));
    background.spawn(
        ExpiryJob {
            records: records.clone(),
            database_ready: database_ready.clone(),
            sessions: sessions.clone(),
            metrics: metrics.clone(),
            interval: session_config.expiry_check_interval,
            retention: session_config.record_retention,
        }
        .run(),
    );
    let hasher = Arc::new(PasswordHasher::new(
        &password_config,
        hashing_runtime(password_config.max_concurrent_hashes)?
            .handle()
            .clone(),
    )?);
    let auth = Arc::new(AuthApi {
        sessions: sessions.clone(),
        records: records.clone(),
        writer,
        hasher,
        locator,
        login_protection,
        csrf: CsrfPolicy::new(&server_config.public_origins, session_config.secure_cookie),
        pages: arc_swap::ArcSwap::from_pointee(Pages::new(
            &branding,
            session_config.secure_cookie,
            server_config.allowed_redirect_hosts.clone(),
        )),
        access: arc_swap::ArcSwap::from_pointee(access),
        metrics: metrics.clone(),
        min_password_length: password_config.min_length,
        database_ready: database_ready.clone(),
        assertions: assertions.clone(),
    });

    let table = Arc::new(RouteTable::build(&route_configs));
    background.spawn(table.clone().run_health_checks());
    let routes = Arc::new(ArcSwap::new(table));
    metrics.watch_upstreams(routes.clone());
    metrics.routes_in_use(route_configs.iter().map(|route| route.prefix.as_str()));

    let limiter = Arc::new(ArcSwap::from_pointee(IpRateLimiter::new(&rate_limit)));
    background.spawn(sweep_rate_limiter(limiter.clone(), metrics.clone()));
    let identity_headers = Arc::new(ArcSwap::from_pointee(IdentityHeaders::new(
        server_config.strip_headers.clone(),
    )));
    Arc::new(Reloader::new(
        &options.config_path,
        start_config,
        routes.clone(),
        limiter.clone(),
        identity_headers.clone(),
        auth.clone(),
        log_level,
        metrics.clone(),
        background.handle().clone(),
    ))
    .start()
    .context("cannot set up hot reload")?;
    upgrade::handle_upgrade_signal(
        background.handle(),
        options.config_path.clone(),
        server_config.upgrade_sock.clone(),
    )?;

    let in_flight = Arc::new(AtomicUsize::new(0));
    let connection_limits = ConnectionLimits {
        header_timeout: server_config.header_timeout,
        keepalive_timeout: server_config.keepalive_timeout,
        max_connections_per_ip: server_config.max_connections_per_ip,
        max_connections: server_config.max_connections,
        hsts: server_config.hsts.clone(),
    };
    let gateway = Gateway {
        in_flight: in_flight.clone(),
        routes,
        limiter,
        trusted_proxies: server_config.trusted_proxies.clone(),
        identity_headers,
        sessions: sessions.clone(),
        auth,
        metrics: metrics.clone(),
        respond: Responder::new(server_config.hsts.clone()),
        assertions: assertions.clone(),
    };
    let readiness = Arc::new(Readiness {
        metrics: metrics.clone(),
        sessions,
        records,
        database_ready,
        assertions,
    });
    background.spawn(readiness.clone().watch(READINESS_PROBE));
    let admin = AdminApp {
        metrics: metrics.clone(),
        readiness,
    };

    let mut pingora_conf = ServerConf::new().context("pingora defaults")?;
    pingora_conf.threads = server_config.threads;
    pingora_conf.grace_period_seconds = Some(server_config.shutdown_grace.as_secs());
    pingora_conf.graceful_shutdown_timeout_seconds = Some(1);
    pingora_conf.upgrade_sock = server_config.upgrade_sock.clone();
    // The new process waits this many seconds for the old one to get SIGQUIT.
    pingora_conf.upgrade_sock_connect_accept_max_retries = Some(UPGRADE_WAIT_SECONDS);
    // With `upgrade`, bootstrap() takes the listening sockets from the running process through
    // upgrade_sock (which hands them over on SIGQUIT) instead of binding them.
    let opt = pingora::server::configuration::Opt {
        upgrade: options.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), pingora_conf);
    server.bootstrap();

    // The proxy sits behind the connection guard (connection caps, head and idle deadlines).
    let proxy = pingora::proxy::http_proxy(&server.configuration, gateway);
    let mut proxy = Service::new(
        "authgate proxy".to_string(),
        ConnectionGuard::new(proxy, connection_limits, metrics, in_flight.clone()),
    );
    proxy.add_tcp(&server_config.listen.to_string());
    let mut admin_service = Service::new("authgate admin".to_string(), admin);
    admin_service.add_tcp(&server_config.admin_listen.to_string());
    server.add_service(proxy);
    server.add_service(admin_service);
    if let Some(demo_listen) = demo {
        let mut demo_service = Service::new("authgate demo upstream".to_string(), DemoApp);
        demo_service.add_tcp(&demo_listen.to_string());
        server.add_service(demo_service);
        tracing::info!(listen = %demo_listen, "demo upstream enabled ([demo] in the config)");
    }
    background.spawn(exit_when_idle(
        server.watch_execution_phase(),
        in_flight,
        shutdown_flush,
    ));

    tracing::info!(
        listen = %server_config.listen,
        admin = %server_config.admin_listen,
        database = backend,
        pid = std::process::id(),
        "authgate starting"
    );
    exit_if_a_listener_cannot_be_bound();
    upgrade::notify_ready();
    // `background` stays alive: run_forever only returns by exiting the process.
    server.run_forever();
}

/// The live-session store, its local cache if any, and the login guard.
type SessionStores = (
    Arc<dyn SessionStore>,
    Arc<dyn LoginGuard>,
    Option<Arc<SessionCache>>,
);

/// The configured live-session store and login guard: Redis, or (with an empty
/// `storage.redis_url`) this process's memory, swept periodically. On a standalone Redis with
/// `session.cache_ttl` above zero, also the local session cache, kept subscribed to its
/// invalidation channel and its activity written behind.
fn open_sessions(
    config: &Config,
    background: &tokio::runtime::Runtime,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<SessionStores> {
    let epochs = epoch_ttl(config.session.absolute_timeout);
    let Some(deployment) = config.storage.redis() else {
        let sessions = Arc::new(MemorySessionStore::new(config.storage.max_sessions, epochs));
        let guard = Arc::new(MemoryLoginGuard::new(
            config.login_protection.clone(),
            config.password.hash_queue_timeout,
        ));
        background.spawn(sweep_memory_stores(sessions.clone(), guard.clone()));
        return Ok((sessions, guard, None));
    };
    let redis = Arc::new(
        RedisConnection::new(
            &deployment,
            config.storage.redis_timeout,
            background.handle().clone(),
            metrics.clone(),
        )
        .context("storage.redis_url / redis_cluster_urls / redis_sentinel_urls")?,
    );
    let sessions = Arc::new(RedisSessionStore::new(
        redis.clone(),
        &config.storage.redis_key_prefix,
        epochs,
    ));
    let guard = Arc::new(RedisLoginGuard::new(
        redis,
        &config.storage.redis_key_prefix,
        config.login_protection.clone(),
        config.password.hash_queue_timeout,
    ));
    let cache = match &deployment {
        // Cluster and Sentinel: no invalidation subscription yet, so no cache.
        RedisDeployment::Standalone(url) if !config.session.cache_ttl.is_zero() => {
            let client = redis::Client::open(url.as_str())
                .context("storage.redis_url (invalidation channel)")?;
            let cache = Arc::new(SessionCache::new(
                config.session.cache_ttl,
                config.session.idle_timeout,
                SESSION_CACHE_ENTRIES,
            ));
            background.spawn(invalidation::keep_subscribed(
                client,
                invalidation_channel(&config.storage.redis_key_prefix),
                cache.clone(),
                config.storage.redis_timeout,
                metrics.clone(),
            ));
            background.spawn(jobs::slide_cached(
                cache.clone(),
                sessions.clone(),
                config.session.idle_timeout,
            ));
            Some(cache)
        }
        _ => None,
    };
    Ok((sessions, guard, cache))
}

/// Drops expired sessions and login counters of the in-process stores (Redis expires its own).
async fn sweep_memory_stores(sessions: Arc<MemorySessionStore>, guard: Arc<MemoryLoginGuard>) {
    let mut tick = tokio::time::interval(MEMORY_SWEEP);
    loop {
        tick.tick().await;
        sessions.sweep();
        guard.sweep();
    }
}

/// What must reach the database before the process exits.
struct ShutdownFlush {
    writer: WriteBehind,
    activity: Arc<ActivityTracker>,
    records: Arc<dyn RecordStore>,
}

/// Pingora sleeps the whole grace period after SIGTERM even when nothing is in flight. Once a
/// graceful shutdown has begun and no request is in flight, this flushes what is written
/// behind and exits early; otherwise pingora's grace period applies as usual.
async fn exit_when_idle(
    mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    in_flight: Arc<AtomicUsize>,
    flush: ShutdownFlush,
) {
    loop {
        match phases.recv().await {
            Ok(ExecutionPhase::GracefulTerminate | ExecutionPhase::ShutdownGracePeriod) => break,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
    // Idle twice in a row, so a request accepted just before the listeners closed is seen.
    let mut idle_checks = 0;
    while idle_checks < 2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        idle_checks = if in_flight.load(Ordering::Acquire) == 0 {
            idle_checks + 1
        } else {
            0
        };
    }
    let activity = flush.activity.drain();
    if let Err(error) = flush.records.record_activity(&activity).await {
        tracing::warn!(%error, "cannot write session activity at shutdown");
    }
    if !flush.writer.drained(Duration::from_secs(3)).await {
        tracing::warn!("exiting with audit records still queued");
    }
    tracing::info!("no requests in flight; exiting before the end of the grace period");
    std::process::exit(0);
}

async fn migrate_until_done(records: Arc<dyn RecordStore>, ready: Arc<AtomicBool>) {
    let backend = records.backend();
    loop {
        match records.migrate().await {
            Ok(()) => {
                ready.store(true, Ordering::Release);
                tracing::info!(backend, "database ({backend}) schema is up to date");
                return;
            }
            Err(error) => {
                tracing::warn!(backend, %error, "database ({backend}) not ready; retrying");
                tokio::time::sleep(MIGRATION_RETRY).await;
            }
        }
    }
}

async fn sweep_rate_limiter(limiter: Arc<ArcSwap<IpRateLimiter>>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(LIMITER_SWEEP);
    loop {
        tick.tick().await;
        // The limiter in force: a reload may have replaced it.
        let limiter = limiter.load();
        limiter.forget_idle();
        metrics.rate_limiter_clients(limiter.tracked_clients());
    }
}
