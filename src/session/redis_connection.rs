//! One connection to whichever Redis the config names: standalone (`storage.redis_url`),
//! Cluster (`storage.redis_cluster_urls`) or Sentinel (`storage.redis_sentinel_urls` +
//! `storage.redis_sentinel_master`), all on the `redis` crate's own support, behind one
//! [`ConnectionLike`] so the session store and the login guard do not care which.
//!
//! - Standalone: a `ConnectionManager`, which reconnects to the same address by itself.
//! - Cluster: the crate's async cluster connection, which follows `MOVED`/`ASK` redirects and
//!   re-reads the slot map when a node fails over.
//! - Sentinel: a multiplexed connection to the master the sentinels name. A failed call drops
//!   it, so the next call asks the sentinels again and follows a promotion (a demoted master
//!   answers writes with `READONLY`, which is a failure like any other).
//!
//! The connection is made lazily and re-made after failures, so the gateway starts without
//! Redis and recovers without a restart. Every call is bounded by `storage.redis_timeout`; a
//! failure is [`StoreError::Unavailable`] (fail closed: 503).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use crate::config::RedisDeployment;
use crate::model::StoreError;
use crate::telemetry::{Metrics, Store};

/// How to reach the configured Redis.
enum Connector {
    Standalone(redis::Client),
    Cluster(ClusterClient),
    /// `SentinelClient` needs `&mut` to ask; asks are rare (connects only).
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

/// A live connection of any deployment. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(MultiplexedConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Standalone(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
            Connection::Sentinel(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Standalone(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Connection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Connection::Sentinel(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Standalone(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
            Connection::Sentinel(connection) => connection.get_db(),
        }
    }
}

/// A connection in use, and when it was made.
struct Live {
    connection: Connection,
    made_at: Instant,
}

/// A Redis connection that is made on first use and re-made after failures.
pub struct RedisConnection {
    deployment: RedisDeployment,
    connector: Connector,
    connection: ArcSwapOption<Live>,
    /// Until when changes skip the wait for a replica, because the last wait got no
    /// acknowledgement (no replica is connected, or it is far behind).
    replicas_absent_until: std::sync::Mutex<Option<Instant>>,
    connecting: tokio::sync::Mutex<Option<Instant>>,
    timeout: Duration,
    /// The long-lived runtime the connection's driver task is spawned on.
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
}

/// After a failed connect, requests fail fast for this long instead of queueing connects.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(250);

/// How long a change that must survive a failover (a new session, a revocation) waits for a
/// replica to acknowledge it, on Cluster and Sentinel. Normally well under a millisecond; with
/// no replica answering, the change stands on the master alone after this long.
const REPLICA_ACK_WAIT: Duration = Duration::from_millis(100);

/// After a wait for a replica got no acknowledgement, changes do not wait again for this long
/// (then one probes), so a master left without replicas costs one wait per period, not one
/// per login.
const REPLICAS_ABSENT_BACKOFF: Duration = Duration::from_secs(5);

impl RedisConnection {
    pub fn new(
        deployment: &RedisDeployment,
        timeout: Duration,
        runtime: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
    ) -> Result<Self, redis::RedisError> {
        let connector = match deployment {
            RedisDeployment::Standalone(url) => {
                Connector::Standalone(redis::Client::open(url.as_str())?)
            }
            RedisDeployment::Cluster(urls) => Connector::Cluster(
                ClusterClient::builder(urls.iter().map(|url| url.trim().to_string()))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    // A call is bounded by `timeout` anyway; retries inside it ride out a
                    // failover's MOVED/refused answers while the slot map is re-read.
                    .retries(3)
                    .min_retry_wait(50)
                    .max_retry_wait(200)
                    .build()?,
            ),
            RedisDeployment::Sentinel { urls, master } => {
                let infos = urls
                    .iter()
                    .map(|url| url.trim().into_connection_info())
                    .collect::<Result<Vec<_>, _>>()?;
                // The master is reached with the credentials and database of the first
                // sentinel URL (`redis://:password@sentinel:26379/0`).
                let node = SentinelNodeConnectionInfo {
                    tls_mode: None,
                    redis_connection_info: infos.first().map(|info| info.redis.clone()),
                };
                Connector::Sentinel(tokio::sync::Mutex::new(SentinelClient::build(
                    infos,
                    master.clone(),
                    Some(node),
                    SentinelServerType::Master,
                )?))
            }
        };
        Ok(Self {
            deployment: deployment.clone(),
            connector,
            connection: ArcSwapOption::empty(),
            replicas_absent_until: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
            timeout,
            runtime,
            metrics,
        })
    }

    /// A second, independent connection to the same Redis (for changes that wait for a
    /// replica, so that wait never holds up the requests on this one).
    pub fn sibling(&self) -> Result<Self, redis::RedisError> {
        Self::new(
            &self.deployment,
            self.timeout,
            self.runtime.clone(),
            self.metrics.clone(),
        )
    }

    /// What kind of Redis this is, for logs.
    pub fn deployment(&self) -> &'static str {
        match self.connector {
            Connector::Standalone(_) => "standalone",
            Connector::Cluster(_) => "cluster",
            Connector::Sentinel(_) => "sentinel",
        }
    }

    pub async fn get(&self) -> Result<Connection, StoreError> {
        if let Some(live) = self.connection.load_full() {
            return Ok(live.connection.clone());
        }
        let mut last_failure = self.connecting.lock().await;
        if let Some(live) = self.connection.load_full() {
            return Ok(live.connection.clone());
        }
        if last_failure.is_some_and(|at| at.elapsed() < RECONNECT_BACKOFF) {
            return Err(unavailable("not connected (retrying shortly)".to_string()));
        }
        let outcome = tokio::time::timeout(self.timeout * 2, self.connect()).await;
        let error = match outcome {
            Ok(Ok(connection)) => {
                *last_failure = None;
                self.connection.store(Some(Arc::new(Live {
                    connection: connection.clone(),
                    made_at: Instant::now(),
                })));
                tracing::info!(deployment = self.deployment(), "connected to redis");
                return Ok(connection);
            }
            Ok(Err(error)) => error,
            Err(_) => "connect timed out".to_string(),
        };
        *last_failure = Some(Instant::now());
        Err(unavailable(error))
    }

    /// Makes a connection. The driver tasks the connections spawn must live on the long-lived
    /// runtime, so the connecting itself runs there.
    async fn connect(&self) -> Result<Connection, String> {
        let timeout = self.timeout;
        let spawned = match &self.connector {
            Connector::Standalone(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(1)
                    .set_max_delay(100);
                let client = client.clone();
                self.runtime.spawn(async move {
                    ConnectionManager::new_with_config(client, config)
                        .await
                        .map(Connection::Standalone)
                })
            }
            Connector::Cluster(client) => {
                let client = client.clone();
                self.runtime.spawn(async move {
                    client.get_async_connection().await.map(Connection::Cluster)
                })
            }
            Connector::Sentinel(client) => {
                // Which master: asked of the sentinels here, on the caller's task.
                let master = client
                    .lock()
                    .await
                    .async_get_client()
                    .await
                    .map_err(|error| format!("sentinels: {error}"))?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                self.runtime.spawn(async move {
                    master
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(Connection::Sentinel)
                })
            }
        };
        match spawned.await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(error.to_string()),
            Err(join_error) => Err(join_error.to_string()),
        }
    }

    /// After a change that must survive a failover (sessions made or ended), waits until a
    /// replica has it (`WAIT 1`), at most [`REPLICA_ACK_WAIT`], on Cluster and Sentinel, where
    /// a replica takes over when the master dies. Replication is asynchronous: without this, a
    /// logout answered just before a crash could come back to life on the promoted replica.
    /// `WAIT` is sent in a pipeline behind a command on `key`, so on a cluster it reaches the
    /// node (and the connection) the change was made on. Best effort: a change a replica did
    /// not acknowledge in time is logged, never undone or refused.
    pub async fn replicate(&self, connection: &mut Connection, key: &str) {
        if matches!(self.connector, Connector::Standalone(_)) {
            return;
        }
        {
            let absent = self
                .replicas_absent_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if absent.is_some_and(|until| Instant::now() < until) {
                self.metrics.replica_unacknowledged();
                return;
            }
        }
        let wait_ms = u64::try_from(REPLICA_ACK_WAIT.as_millis()).unwrap_or(100);
        let mut pipe = redis::pipe();
        pipe.exists(key).ignore().cmd("WAIT").arg(1).arg(wait_ms);
        let acked: redis::RedisResult<(i64,)> = tokio::time::timeout(
            self.timeout + REPLICA_ACK_WAIT,
            pipe.query_async(connection),
        )
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "no answer to WAIT in time",
            )))
        });
        if !matches!(acked, Ok((replicas,)) if replicas >= 1) {
            self.metrics.replica_unacknowledged();
        }
        let absent = match acked {
            Ok((replicas,)) if replicas >= 1 => None,
            Ok(_) => {
                tracing::warn!(
                    wait_ms,
                    "no redis replica acknowledged a session change in time: it would not \
                     survive a failover of its master now; not waiting again for 5 s"
                );
                Some(Instant::now() + REPLICAS_ABSENT_BACKOFF)
            }
            Err(error) => {
                tracing::warn!(%error, "redis WAIT for a replica failed");
                Some(Instant::now() + REPLICAS_ABSENT_BACKOFF)
            }
        };
        *self
            .replicas_absent_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = absent;
    }

    /// Runs one Redis call with the timeout, metrics and error mapping every call shares.
    pub async fn call<T, F>(&self, operation: &'static str, work: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let started = Instant::now();
        let (result, connection_failed) = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(value)) => (Ok(value), false),
            Ok(Err(error)) => {
                let connection_failed = error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
                    || error.kind() == redis::ErrorKind::ReadOnly;
                (Err(unavailable(error.to_string())), connection_failed)
            }
            Err(_) => (Err(unavailable("no answer in time".to_string())), true),
        };
        self.metrics
            .store_call(Store::Redis, operation, started.elapsed(), result.is_ok());
        if let Err(StoreError::Unavailable { detail, .. }) = &result {
            tracing::warn!(operation, error = %detail, "redis call failed");
            if connection_failed && matches!(self.connector, Connector::Sentinel(_)) {
                // The master may have moved: ask the sentinels again on the next call. A
                // connection made after this call began is not the one that failed.
                let current = self.connection.load_full();
                if current.as_ref().is_some_and(|live| live.made_at <= started) {
                    self.connection.compare_and_swap(&current, None);
                }
            }
        }
        result
    }
}

pub fn unavailable(detail: String) -> StoreError {
    StoreError::Unavailable {
        store: "redis",
        detail,
    }
}
