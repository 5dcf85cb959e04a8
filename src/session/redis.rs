//! [`SessionStore`] on Redis.
//!
//! Layout (all keys under the configured prefix):
//! - `session:<token sha256 hex>`: a hash with the session's data; its TTL is the idle expiry.
//! - `user:<user id>:sessions`: a hash from public session id to token hash, so listing and
//!   revoking a user's sessions never scans the keyspace.
//! - `user:<user id>:epoch`: the user's credential epoch, an integer (missing = 0) bumped by
//!   every revoke-all; it expires `epoch_ttl` (at least the absolute session lifetime) after
//!   its last bump.
//!
//! Every operation is one Lua script, so each is one round trip and atomic:
//! - `touch` reads the session, deletes it if past its absolute expiry, else stamps its last
//!   activity, resets its TTL to `min(idle timeout, time left before the absolute expiry)` and
//!   returns the data;
//! - `create` refuses if the user's credential epoch is no longer the one the login read
//!   before checking the password, prunes dead index entries, enforces the per-user cap
//!   (evicting the least recently active sessions, or refusing) and inserts, so concurrent
//!   logins cannot overshoot and no login outlives a revoke-all it raced with;
//! - `list`, `revoke` and `revoke_all` walk the user's index; `revoke_all` also bumps the
//!   epoch.
//!
//! Every key a script names up front is passed in KEYS (the user's index and epoch, the new
//! session); the session keys the scripts derive from the index are not, so on Redis Cluster a
//! user's keys would need one hash slot; this store targets standalone/Sentinel Redis for now.
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

use super::{Created, LiveSession, SessionCap, SessionData, SessionStore, TokenHash};
use crate::config::OnLimit;
use crate::model::StoreError;
use crate::telemetry::{Metrics, Store};

/// Field order shared by every script that returns a session.
const SESSION_FIELDS: &str =
    "'id', 'user', 'email', 'ip', 'ua', 'device', 'dlabel', 'ipid', 'loc', 'created', 'abs', 'last'";

/// KEYS[1] session key; ARGV now_ms, idle_ms. Returns fields + remaining idle ms, or nil.
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
redis.call('HSET', KEYS[1], 'last', ARGV[1])
redis.call('PEXPIRE', KEYS[1], left)
local fields = redis.call('HMGET', KEYS[1], FIELDS)
table.insert(fields, left)
return fields
"#;

/// KEYS[1] user index, KEYS[2] new session key, KEYS[3] the user's credential epoch; ARGV:
/// session key prefix, cap, policy, ttl ms, index ttl ms, session id, token hash, expected
/// epoch, then field/value pairs.
/// Returns {'ok', evicted ids...}, {'rejected'} (cap) or {'changed'} (epoch moved on).
const CREATE_SCRIPT: &str = r#"
if tonumber(redis.call('GET', KEYS[3]) or '0') ~= tonumber(ARGV[8]) then return {'changed'} end
local entries = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #entries, 2 do
  local key = ARGV[1] .. entries[i + 1]
  local last = redis.call('HGET', key, 'last') or redis.call('HGET', key, 'created')
  if last then
    table.insert(live, {entries[i], entries[i + 1], tonumber(last)})
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
local result = {'ok'}
local cap = tonumber(ARGV[2])
if #live >= cap then
  if ARGV[3] == 'reject' then return {'rejected'} end
  table.sort(live, function(a, b) return a[3] < b[3] end)
  for i = 1, #live - cap + 1 do
    redis.call('DEL', ARGV[1] .. live[i][2])
    redis.call('HDEL', KEYS[1], live[i][1])
    table.insert(result, live[i][1])
  end
end
redis.call('HSET', KEYS[2], unpack(ARGV, 9))
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[1], ARGV[6], ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return result
"#;

/// KEYS[1] user index; ARGV[1] session key prefix. Returns one array per live session:
/// fields + remaining ms. Dead index entries are pruned on the way.
const LIST_SCRIPT: &str = r#"
local entries = redis.call('HGETALL', KEYS[1])
local sessions = {}
for i = 1, #entries, 2 do
  local key = ARGV[1] .. entries[i + 1]
  local left = redis.call('PTTL', key)
  if left > 0 then
    local fields = redis.call('HMGET', key, FIELDS)
    table.insert(fields, left)
    table.insert(sessions, fields)
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
return sessions
"#;

/// KEYS[1] user index; ARGV[1] session key prefix, ARGV[2] session id. Returns 1 if a live
/// session was ended, else 0.
const REVOKE_SCRIPT: &str = r#"
local hash = redis.call('HGET', KEYS[1], ARGV[2])
if not hash then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
return redis.call('DEL', ARGV[1] .. hash)
"#;

/// KEYS[1] user index, KEYS[2] the user's credential epoch; ARGV[1] session key prefix,
/// ARGV[2] the session id to keep (or ''), ARGV[3] epoch ttl ms. Bumps the epoch, so a login
/// that read it before cannot create its session any more. Returns the ids of the live
/// sessions ended.
const REVOKE_ALL_SCRIPT: &str = r#"
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local entries = redis.call('HGETALL', KEYS[1])
local ended = {}
for i = 1, #entries, 2 do
  if entries[i] ~= ARGV[2] then
    redis.call('HDEL', KEYS[1], entries[i])
    if redis.call('DEL', ARGV[1] .. entries[i + 1]) == 1 then
      table.insert(ended, entries[i])
    end
  end
end
return ended
"#;

fn script(source: &str) -> Script {
    Script::new(&source.replace("FIELDS", SESSION_FIELDS))
}

/// A Redis connection that is made on first use and re-made after failures.
pub struct RedisConnection {
    client: redis::Client,
    manager: ArcSwapOption<ConnectionManager>,
    connecting: tokio::sync::Mutex<Option<Instant>>,
    timeout: Duration,
    /// The long-lived runtime the connection's driver task is spawned on.
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
}

/// After a failed connect, requests fail fast for this long instead of queueing connects.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(250);

impl RedisConnection {
    pub fn new(
        url: &str,
        timeout: Duration,
        runtime: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
    ) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            manager: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(None),
            timeout,
            runtime,
            metrics,
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

    /// Runs one Redis call with the timeout, metrics and error mapping every call shares.
    pub async fn call<T, F>(&self, operation: &'static str, work: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, work).await {
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

fn unavailable(detail: String) -> StoreError {
    StoreError::Unavailable {
        store: "redis",
        detail,
    }
}

pub struct RedisSessionStore {
    connection: Arc<RedisConnection>,
    prefix: String,
    /// How long a credential epoch is kept after its last bump.
    epoch_ttl: Duration,
    scripts: Scripts,
}

struct Scripts {
    touch: Script,
    create: Script,
    list: Script,
    revoke: Script,
    revoke_all: Script,
}

impl RedisSessionStore {
    /// `epoch_ttl` must be at least the absolute session lifetime (see [`super::epoch_ttl`]).
    pub fn new(connection: Arc<RedisConnection>, prefix: &str, epoch_ttl: Duration) -> Self {
        Self {
            connection,
            prefix: prefix.to_string(),
            epoch_ttl,
            scripts: Scripts {
                touch: script(TOUCH_SCRIPT),
                create: script(CREATE_SCRIPT),
                list: script(LIST_SCRIPT),
                revoke: script(REVOKE_SCRIPT),
                revoke_all: script(REVOKE_ALL_SCRIPT),
            },
        }
    }

    fn session_prefix(&self) -> String {
        format!("{}session:", self.prefix)
    }

    fn session_key(&self, token: &TokenHash) -> String {
        format!("{}session:{}", self.prefix, token.to_hex())
    }

    fn user_index_key(&self, user_id: Uuid) -> String {
        format!("{}user:{}:sessions", self.prefix, user_id)
    }

    fn epoch_key(&self, user_id: Uuid) -> String {
        format!("{}user:{}:epoch", self.prefix, user_id)
    }

    /// Runs a script on the user's index.
    async fn on_index<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        script: &Script,
        user_id: Uuid,
        extra: Option<String>,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection.get().await?;
        let mut invocation = script.key(self.user_index_key(user_id));
        invocation.arg(self.session_prefix());
        if let Some(extra) = extra {
            invocation.arg(extra);
        }
        self.connection
            .call(operation, invocation.invoke_async(&mut connection))
            .await
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn optional(value: &Option<impl ToString>) -> String {
    value.as_ref().map(ToString::to_string).unwrap_or_default()
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(
        &self,
        token: &TokenHash,
        session: &SessionData,
        idle: Duration,
        cap: SessionCap,
        expected_epoch: u64,
    ) -> Result<Created, StoreError> {
        let mut connection = self.connection.get().await?;
        let lifetime = session.absolute_expiry_ms - session.created_at_ms;
        let ttl = millis(idle).min(lifetime);
        let mut invocation = self
            .scripts
            .create
            .key(self.user_index_key(session.user_id));
        invocation
            .key(self.session_key(token))
            .key(self.epoch_key(session.user_id))
            .arg(self.session_prefix())
            .arg(cap.max_sessions)
            .arg(match cap.on_limit {
                OnLimit::EvictOldest => "evict_oldest",
                OnLimit::Reject => "reject",
            })
            .arg(ttl)
            // The index outlives every session it lists; refreshed at each login.
            .arg(lifetime)
            .arg(session.id.to_string())
            .arg(token.to_hex())
            .arg(expected_epoch);
        let fields = [
            ("id", session.id.to_string()),
            ("user", session.user_id.to_string()),
            ("email", session.email.clone()),
            ("ip", session.ip.to_string()),
            ("ua", session.user_agent.clone()),
            ("device", optional(&session.device_id)),
            ("dlabel", session.device_label.clone()),
            ("ipid", optional(&session.ip_id)),
            ("loc", optional(&session.location)),
            ("created", session.created_at_ms.to_string()),
            ("abs", session.absolute_expiry_ms.to_string()),
            ("last", session.created_at_ms.to_string()),
        ];
        for (name, value) in fields {
            invocation.arg(name).arg(value);
        }
        let reply: Vec<String> = self
            .connection
            .call("create", invocation.invoke_async(&mut connection))
            .await?;
        match reply.split_first() {
            Some((status, evicted)) if status == "ok" => Ok(Created::Ok {
                evicted: evicted.iter().filter_map(|id| id.parse().ok()).collect(),
            }),
            Some((status, _)) if status == "changed" => Ok(Created::CredentialsChanged),
            _ => Ok(Created::LimitReached),
        }
    }

    async fn touch(
        &self,
        token: &TokenHash,
        now_ms: i64,
        idle: Duration,
    ) -> Result<Option<LiveSession>, StoreError> {
        let mut connection = self.connection.get().await?;
        let mut invocation = self.scripts.touch.key(self.session_key(token));
        invocation.arg(now_ms).arg(millis(idle));
        let reply: Option<Vec<redis::Value>> = self
            .connection
            .call("touch", invocation.invoke_async(&mut connection))
            .await?;
        Ok(reply.and_then(|fields| parse_live_session(&fields)))
    }

    async fn list(&self, user_id: Uuid) -> Result<Vec<LiveSession>, StoreError> {
        let replies: Vec<Vec<redis::Value>> = self
            .on_index("list", &self.scripts.list, user_id, None)
            .await?;
        Ok(replies
            .iter()
            .filter_map(|fields| parse_live_session(fields))
            .collect())
    }

    async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, StoreError> {
        let ended: i64 = self
            .on_index(
                "revoke",
                &self.scripts.revoke,
                user_id,
                Some(session_id.to_string()),
            )
            .await?;
        Ok(ended > 0)
    }

    async fn revoke_all_except(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut connection = self.connection.get().await?;
        let mut invocation = self.scripts.revoke_all.key(self.user_index_key(user_id));
        invocation
            .key(self.epoch_key(user_id))
            .arg(self.session_prefix())
            .arg(optional(&keep))
            .arg(millis(self.epoch_ttl));
        let ended: Vec<String> = self
            .connection
            .call("revoke_all", invocation.invoke_async(&mut connection))
            .await?;
        Ok(ended.iter().filter_map(|id| id.parse().ok()).collect())
    }

    async fn credential_epoch(&self, user_id: Uuid) -> Result<u64, StoreError> {
        let mut connection = self.connection.get().await?;
        let key = self.epoch_key(user_id);
        let epoch: Option<u64> = self
            .connection
            .call("credential_epoch", connection.get(key))
            .await?;
        Ok(epoch.unwrap_or(0))
    }

    async fn live(&self, tokens: &[TokenHash]) -> Result<Vec<bool>, StoreError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection.get().await?;
        let mut pipe = redis::pipe();
        for token in tokens {
            pipe.exists(self.session_key(token));
        }
        self.connection
            .call("live", pipe.query_async(&mut connection))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.get().await?;
        self.connection
            .call("ping", async move {
                let _: String = connection.ping().await?;
                Ok(())
            })
            .await
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

/// Decodes a script's session reply: the fields in `SESSION_FIELDS` order, then the remaining
/// idle milliseconds. A reply that does not decode (a foreign or half-written key) counts as
/// no session.
fn parse_live_session(fields: &[redis::Value]) -> Option<LiveSession> {
    let text = |index: usize| -> Option<String> {
        redis::from_redis_value::<Option<String>>(fields.get(index)?).ok()?
    };
    let uuid = |index: usize| -> Option<Uuid> { text(index).and_then(|t| t.parse().ok()) };
    let number = |index: usize| -> Option<i64> { text(index)?.parse().ok() };
    let data = SessionData {
        id: uuid(0)?,
        user_id: uuid(1)?,
        email: text(2)?,
        ip: text(3)?.parse::<IpAddr>().ok()?,
        user_agent: text(4)?,
        device_id: uuid(5),
        device_label: text(6).unwrap_or_default(),
        ip_id: uuid(7),
        location: text(8).filter(|location| !location.is_empty()),
        created_at_ms: number(9)?,
        absolute_expiry_ms: number(10)?,
    };
    let last_activity_ms = number(11).unwrap_or(data.created_at_ms);
    let left_ms: i64 = redis::from_redis_value(fields.get(12)?).ok()?;
    Some(LiveSession {
        data,
        last_activity_ms,
        idle_remaining: Duration::from_millis(u64::try_from(left_ms).ok()?),
    })
}
