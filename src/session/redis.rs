//! [`SessionStore`] on Redis.
//!
//! Layout (all keys under the configured prefix):
//! - `session:<token sha256 hex>`: a hash with the session's data; its TTL is the idle expiry.
//! - `user:<user id>:sessions`: a hash from public session id to token hash, so listing and
//!   revoking a user's sessions never scans the keyspace.
//!
//! Validation and sliding happen in one Lua script (one round trip): it reads the session,
//! deletes it if past its absolute expiry, else resets its TTL to
//! `min(idle timeout, time left before the absolute expiry)` and returns the data.
//!
//! The connection is made lazily and re-made by itself after Redis comes back, so the gateway
//! starts without Redis and recovers without a restart. Every call is bounded by
//! `storage.redis_timeout`; a failure is [`StoreError::Unavailable`] (fail closed: 503).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use uuid::Uuid;

use super::{LiveSession, SessionData, SessionStore, TokenHash};
use crate::store::StoreError;
use crate::telemetry::{Metrics, Store};

const TOUCH_SCRIPT: &str = r#"
local abs = redis.call('HGET', KEYS[1], 'abs')
if not abs then return false end
local left = tonumber(abs) - tonumber(ARGV[1])
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return false
end
local idle = tonumber(ARGV[2])
if idle < left then left = idle end
redis.call('PEXPIRE', KEYS[1], left)
local fields = redis.call('HMGET', KEYS[1], 'id', 'user', 'email', 'ip', 'ua', 'created', 'abs')
table.insert(fields, left)
return fields
"#;

/// A Redis connection that is made on first use and re-made after failures.
pub struct RedisConnection {
    client: redis::Client,
    manager: ArcSwapOption<ConnectionManager>,
    connecting: tokio::sync::Mutex<Option<Instant>>,
    timeout: Duration,
    /// The long-lived runtime the connection's driver task is spawned on.
    runtime: tokio::runtime::Handle,
}

/// After a failed connect, requests fail fast for this long instead of queueing connects.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(250);

impl RedisConnection {
    pub fn new(
        url: &str,
        timeout: Duration,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            manager: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(None),
            timeout,
            runtime,
        })
    }

    pub async fn get(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(manager) = self.manager.load_full() {
            return Ok((*manager).clone());
        }
        let mut last_failure = self.connecting.lock().await;
        if let Some(manager) = self.manager.load_full() {
            return Ok((*manager).clone());
        }
        if last_failure.is_some_and(|at| at.elapsed() < RECONNECT_BACKOFF) {
            return Err(unavailable("not connected (retrying shortly)".to_string()));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(100);
        let client = self.client.clone();
        // Spawned on the long-lived runtime: the manager's driver task lives there.
        let connect = self
            .runtime
            .spawn(async move { ConnectionManager::new_with_config(client, config).await });
        let outcome = tokio::time::timeout(self.timeout * 2, connect).await;
        match outcome {
            Ok(Ok(Ok(manager))) => {
                *last_failure = None;
                self.manager.store(Some(Arc::new(manager.clone())));
                tracing::info!("connected to redis");
                Ok(manager)
            }
            Ok(Ok(Err(error))) => {
                *last_failure = Some(Instant::now());
                Err(unavailable(error.to_string()))
            }
            Ok(Err(join_error)) => {
                *last_failure = Some(Instant::now());
                Err(unavailable(join_error.to_string()))
            }
            Err(_) => {
                *last_failure = Some(Instant::now());
                Err(unavailable("connect timed out".to_string()))
            }
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

fn unavailable(detail: String) -> StoreError {
    StoreError::Unavailable {
        store: "redis",
        detail,
    }
}

pub struct RedisSessionStore {
    connection: Arc<RedisConnection>,
    prefix: String,
    touch_script: Script,
    metrics: Arc<Metrics>,
}

impl RedisSessionStore {
    pub fn new(connection: Arc<RedisConnection>, prefix: &str, metrics: Arc<Metrics>) -> Self {
        Self {
            connection,
            prefix: prefix.to_string(),
            touch_script: Script::new(TOUCH_SCRIPT),
            metrics,
        }
    }

    fn session_key(&self, token: &TokenHash) -> String {
        format!("{}session:{}", self.prefix, token.to_hex())
    }

    fn user_index_key(&self, user_id: Uuid) -> String {
        format!("{}user:{}:sessions", self.prefix, user_id)
    }

    /// Runs one Redis call with the timeout, metrics and error mapping every call shares.
    async fn call<T, F>(&self, operation: &'static str, work: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.connection.timeout(), work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(unavailable(error.to_string())),
            Err(_) => Err(unavailable("no answer in time".to_string())),
        };
        self.metrics
            .store_call(Store::Redis, operation, started.elapsed(), result.is_ok());
        if let Err(StoreError::Unavailable { detail, .. }) = &result {
            tracing::warn!(operation, error = %detail, "redis call failed");
        }
        result
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(
        &self,
        token: &TokenHash,
        session: &SessionData,
        idle: Duration,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection.get().await?;
        let key = self.session_key(token);
        let index = self.user_index_key(session.user_id);
        let ttl = millis(idle).min(session.absolute_expiry_ms - session.created_at_ms);
        let fields = [
            ("id", session.id.to_string()),
            ("user", session.user_id.to_string()),
            ("email", session.email.clone()),
            ("ip", session.ip.to_string()),
            ("ua", session.user_agent.clone()),
            ("created", session.created_at_ms.to_string()),
            ("abs", session.absolute_expiry_ms.to_string()),
        ];
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(&key, &fields)
            .ignore()
            .pexpire(&key, ttl)
            .ignore()
            .hset(&index, session.id.to_string(), token.to_hex())
            .ignore()
            // The index outlives every session it lists; refreshed at each login.
            .pexpire(&index, session.absolute_expiry_ms - session.created_at_ms)
            .ignore();
        self.call("create", pipe.query_async::<()>(&mut connection))
            .await
    }

    async fn touch(
        &self,
        token: &TokenHash,
        now_ms: i64,
        idle: Duration,
    ) -> Result<Option<LiveSession>, StoreError> {
        let mut connection = self.connection.get().await?;
        let mut invocation = self.touch_script.key(self.session_key(token));
        invocation.arg(now_ms).arg(millis(idle));
        let reply: Option<Vec<redis::Value>> = self
            .call("touch", invocation.invoke_async(&mut connection))
            .await?;
        Ok(reply.and_then(|fields| parse_live_session(&fields)))
    }

    async fn remove(&self, token: &TokenHash, session: &SessionData) -> Result<bool, StoreError> {
        let mut connection = self.connection.get().await?;
        let key = self.session_key(token);
        let index = self.user_index_key(session.user_id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&key)
            .hdel(&index, session.id.to_string())
            .ignore();
        let (deleted,): (i64,) = self
            .call("remove", pipe.query_async(&mut connection))
            .await?;
        Ok(deleted > 0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.get().await?;
        self.call("ping", async move {
            let _: String = connection.ping().await?;
            Ok(())
        })
        .await
    }
}

/// Decodes the script's reply: the HMGET fields, then the remaining idle milliseconds.
/// A reply that does not decode (a foreign or half-written key) counts as no session.
fn parse_live_session(fields: &[redis::Value]) -> Option<LiveSession> {
    let text = |index: usize| -> Option<String> {
        redis::from_redis_value::<Option<String>>(fields.get(index)?).ok()?
    };
    let data = SessionData {
        id: text(0)?.parse().ok()?,
        user_id: text(1)?.parse().ok()?,
        email: text(2)?,
        ip: text(3)?.parse::<IpAddr>().ok()?,
        user_agent: text(4)?,
        created_at_ms: text(5)?.parse().ok()?,
        absolute_expiry_ms: text(6)?.parse().ok()?,
    };
    let left_ms: i64 = redis::from_redis_value(fields.get(7)?).ok()?;
    Some(LiveSession {
        data,
        idle_remaining: Duration::from_millis(u64::try_from(left_ms).ok()?),
    })
}
