//! Assembly: builds the stores, the pipeline and the admin app from a validated config, and
//! hands them to pingora.
//!
//! Store clients (the sqlx pool, the Redis connection manager) spawn background tasks on the
//! runtime that creates them, and die with it. They are therefore created on one dedicated
//! "background" runtime that lives as long as the process; the same runtime runs bcrypt (on
//! its blocking pool), migrations, upstream health checks and housekeeping. Pingora's own
//! per-service runtimes only run request handling.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, Server};
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::auth::csrf::CsrfPolicy;
use crate::auth::{AuthApi, Pages};
use crate::config::Config;
use crate::gateway::Gateway;
use crate::geo::Locator;
use crate::identity::IdentityHeaders;
use crate::limits::ip_rate::IpRateLimiter;
use crate::limits::login::RedisLoginGuard;
use crate::password::PasswordHasher;
use crate::routes::RouteTable;
use crate::session::activity::ActivityTracker;
use crate::session::jobs::{self, ExpiryJob};
use crate::session::redis::{RedisConnection, RedisSessionStore};
use crate::session::Sessions;
use crate::store::behind::WriteBehind;
use crate::store::postgres::PostgresStore;
use crate::store::RecordStore;
use crate::telemetry::{self, Metrics};

const MIGRATION_RETRY: Duration = Duration::from_secs(2);
const LIMITER_SWEEP: Duration = Duration::from_secs(30);

fn background_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("authgate-background")
        .enable_all()
        .build()
        .context("cannot start the background runtime")
}

fn postgres(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<PostgresStore>> {
    let _inside = runtime.enter();
    let store = PostgresStore::connect_lazy(
        &config.storage.database_url,
        config.storage.database_max_connections,
        config.storage.database_timeout,
        metrics,
    )
    .context("storage.database_url")?;
    Ok(Arc::new(store))
}

/// `authgate migrate`: apply migrations and exit.
pub fn migrate(config: Config) -> anyhow::Result<()> {
    telemetry::init_logging(&config.log);
    let runtime = background_runtime()?;
    let metrics = Arc::new(Metrics::new()?);
    let records = postgres(&config, &runtime, metrics)?;
    runtime.block_on(records.migrate())?;
    println!("migrations applied");
    Ok(())
}

/// Runs the gateway until a signal stops it. Never returns on success (pingora exits).
pub fn run(config: Config) -> anyhow::Result<()> {
    telemetry::init_logging(&config.log);
    let background = background_runtime()?;
    let metrics = Arc::new(Metrics::new()?);

    let records = postgres(&config, &background, metrics.clone())?;
    let database_ready = Arc::new(AtomicBool::new(false));
    background.spawn(migrate_until_done(records.clone(), database_ready.clone()));

    let redis = Arc::new(
        RedisConnection::new(
            &config.storage.redis_url,
            config.storage.redis_timeout,
            background.handle().clone(),
            metrics.clone(),
        )
        .context("storage.redis_url")?,
    );
    let session_store = RedisSessionStore::new(redis.clone(), &config.storage.redis_key_prefix);
    let login_protection = Arc::new(RedisLoginGuard::new(
        redis,
        &config.storage.redis_key_prefix,
        config.login_protection.clone(),
        config.password.hash_queue_timeout,
    ));
    let locator = Arc::new(Locator::new(&config.geoip)?);
    let Config {
        server: server_config,
        session: session_config,
        password: password_config,
        rate_limit,
        branding,
        routes: route_configs,
        ..
    } = config;
    let records_dyn: Arc<dyn RecordStore> = records;
    let (writer, write_behind) = WriteBehind::new(records_dyn.clone(), metrics.clone());
    background.spawn(write_behind);
    let activity = Arc::new(ActivityTracker::default());
    let shutdown_flush = ShutdownFlush {
        writer: writer.clone(),
        activity: activity.clone(),
        records: records_dyn.clone(),
    };
    let session_config = Arc::new(session_config);
    let sessions = Arc::new(Sessions::new(
        Arc::new(session_store),
        session_config.clone(),
        activity.clone(),
        writer.clone(),
        metrics.clone(),
    ));
    background.spawn(jobs::flush_activity(
        activity,
        records_dyn.clone(),
        session_config.activity_flush_interval,
    ));
    background.spawn(
        ExpiryJob {
            records: records_dyn.clone(),
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
        background.handle().clone(),
    )?);
    let auth = Arc::new(AuthApi {
        sessions: sessions.clone(),
        records: records_dyn.clone(),
        writer,
        hasher,
        locator,
        login_protection,
        csrf: CsrfPolicy::new(&server_config.public_origins, session_config.secure_cookie),
        pages: Pages::new(&branding, session_config.secure_cookie),
        metrics: metrics.clone(),
        min_password_length: password_config.min_length,
        database_ready: database_ready.clone(),
    });

    let table = Arc::new(RouteTable::build(&route_configs).context("route table")?);
    background.spawn(table.clone().run_health_checks());
    let routes = Arc::new(ArcSwap::new(table));

    let limiter = Arc::new(IpRateLimiter::new(&rate_limit));
    background.spawn(sweep_rate_limiter(limiter.clone(), metrics.clone()));

    let in_flight = Arc::new(AtomicUsize::new(0));
    let gateway = Gateway {
        in_flight: in_flight.clone(),
        routes,
        limiter,
        trusted_proxies: server_config.trusted_proxies.clone(),
        identity_headers: IdentityHeaders::new(server_config.strip_headers.clone()),
        sessions: sessions.clone(),
        auth,
        metrics: metrics.clone(),
    };
    let admin = AdminApp {
        metrics,
        sessions,
        records: records_dyn,
        database_ready,
    };

    let mut pingora_conf = ServerConf::new().context("pingora defaults")?;
    pingora_conf.threads = server_config.threads;
    pingora_conf.grace_period_seconds = Some(server_config.shutdown_grace.as_secs());
    pingora_conf.graceful_shutdown_timeout_seconds = Some(1);
    let mut server = Server::new_with_opt_and_conf(None, pingora_conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "authgate proxy",
    );
    proxy.add_tcp(&server_config.listen.to_string());
    let mut admin_service = Service::new("authgate admin".to_string(), admin);
    admin_service.add_tcp(&server_config.admin_listen.to_string());
    server.add_service(proxy);
    server.add_service(admin_service);
    background.spawn(exit_when_idle(
        server.watch_execution_phase(),
        in_flight,
        shutdown_flush,
    ));

    tracing::info!(
        listen = %server_config.listen,
        admin = %server_config.admin_listen,
        "authgate starting"
    );
    // `background` stays alive: run_forever only returns by exiting the process.
    server.run_forever();
}

/// What must reach Postgres before the process exits.
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

async fn migrate_until_done(records: Arc<PostgresStore>, ready: Arc<AtomicBool>) {
    loop {
        match records.migrate().await {
            Ok(()) => {
                ready.store(true, Ordering::Release);
                tracing::info!("database schema is up to date");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "database not ready; retrying");
                tokio::time::sleep(MIGRATION_RETRY).await;
            }
        }
    }
}

async fn sweep_rate_limiter(limiter: Arc<IpRateLimiter>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(LIMITER_SWEEP);
    loop {
        tick.tick().await;
        limiter.forget_idle();
        metrics.rate_limiter_clients(limiter.tracked_clients());
    }
}
