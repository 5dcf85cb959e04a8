//! [`SessionStore`] on Redis: standalone, Cluster or Sentinel (see [`RedisConnection`]).
//!
//! Layout (all keys under the configured prefix `P`; `T` is the user's [`SlotTag`], a Redis
//! Cluster hash tag, so every key of one user lives in one hash slot):
//! - `P{T}session:<token sha256 hex>`: a hash with the session's data; its TTL is the idle
//!   expiry. The token begins with `T`, so a request finds the key from its cookie alone.
//! - `P{T}user:<user id>:sessions`: a hash from public session id to token hash, so listing and
//!   revoking a user's sessions never scans the keyspace. It expires an absolute session
//!   lifetime after the user's last login.
//! - `P{T}user:<user id>:epoch`: the user's credential epoch, an integer (missing = 0) bumped by
//!   every revoke-all; it expires `epoch_ttl` (at least the absolute session lifetime) after
//!   its last bump.
//!
//! Every change is one Lua script, atomic, that touches only the keys it is given in KEYS, all
//! in the user's slot, as Redis Cluster requires. A script that must visit the user's sessions
//! (create, list, revoke-all) is given the session keys of a snapshot of the index read just
//! before (`HGETALL`), and checks inside that the index still says what the snapshot said:
//! - `touch` reads the session, deletes it if past its absolute expiry, else stamps its last
//!   activity, resets its TTL to `min(idle timeout, time left before the absolute expiry)` and
//!   returns the data (the hot path: one round trip);
//! - `create` refuses if the user's credential epoch is no longer the one the login read
//!   before checking the password, prunes dead index entries, enforces the per-user cap
//!   (evicting the least recently active sessions, or refusing) and inserts, so concurrent
//!   logins cannot overshoot and no login outlives a revoke-all it raced with; sessions made
//!   since the snapshot count as live and most recent, and if room can only be made by evicting
//!   one of those, it changes nothing and the store takes a new snapshot and tries again;
//! - `list` reads the snapshot's sessions;
//! - `revoke` ends one session after checking the index still maps its id to its token;
//! - `revoke_all` bumps the epoch and ends the snapshot's sessions, and names the entries the
//!   snapshot missed (created between the snapshot and the bump), which a second call ends.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::{AsyncCommands, Script};
use uuid::Uuid;

use super::redis_connection::{unavailable, RedisConnection};
use super::{
    millis, Created, LiveSession, SessionCap, SessionData, SessionKey, SessionStore, SlotTag,
};
use crate::config::OnLimit;
use crate::model::StoreError;

/// Field order shared by every script that returns a session.
const SESSION_FIELDS: &str =
    "'id', 'user', 'email', 'ip', 'ua', 'device', 'dlabel', 'ipid', 'loc', 'created', 'abs', 'last', \
     'roles'";

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

/// KEYS[1] session key; ARGV activity ms (a request served from a gateway's local cache),
/// now ms, idle ms. Writes the activity behind: the last activity and the idle expiry move
/// forward only (another gateway may have written a later one), never past the absolute
/// expiry. Returns the expiry (unix ms), or nil if the session is gone.
const SLIDE_SCRIPT: &str = r#"
local abs = redis.call('HGET', KEYS[1], 'abs')
if not abs then return false end
local at = tonumber(ARGV[1])
local expiry = at + tonumber(ARGV[3])
if tonumber(abs) < expiry then expiry = tonumber(abs) end
local left = expiry - tonumber(ARGV[2])
if left <= 0 then return false end
if at > tonumber(redis.call('HGET', KEYS[1], 'last') or '0') then
  redis.call('HSET', KEYS[1], 'last', ARGV[1])
end
if redis.call('PTTL', KEYS[1]) < left then redis.call('PEXPIRE', KEYS[1], left) end
return expiry
"#;

/// Whether the index (KEYS[1]) still maps session id `id` to the session key `key`, given the
/// session key prefix. Shared by the scripts that act on a snapshot of the index.
const INDEX_HOLDS: &str = r#"
local function index_holds(id, key, prefix)
  local hash = redis.call('HGET', KEYS[1], id)
  return hash and (prefix .. hash) == key
end
"#;

/// KEYS[1] user index, KEYS[2] new session key, KEYS[3] the user's credential epoch,
/// KEYS[3+i] the snapshot's session keys; ARGV: 1 session key prefix, 2 cap, 3 policy, 4 ttl
/// ms, 5 index ttl ms, 6 session id, 7 token hash, 8 expected epoch, 9 snapshot size n,
/// 10 the invalidation channel, 11 the user id, 12..11+n the snapshot's session ids, then
/// field/value pairs. Evicting publishes the user id on the channel.
/// Index entries the snapshot lacks (sessions created since) count against the cap as live and
/// most recent; the least recently active of the snapshot's sessions are evicted. Returns
/// {'ok', evicted ids...}, {'rejected'} (cap), {'changed'} (epoch moved on) or {'retry'}
/// (making room needs sessions the snapshot does not have; nothing changed).
const CREATE_SCRIPT: &str = r#"
if tonumber(redis.call('GET', KEYS[3]) or '0') ~= tonumber(ARGV[8]) then return {'changed'} end
local n = tonumber(ARGV[9])
local entries = redis.call('HLEN', KEYS[1])
local live = {}
local dead = {}
for i = 1, n do
  local id = ARGV[11 + i]
  local key = KEYS[3 + i]
  if index_holds(id, key, ARGV[1]) then
    entries = entries - 1
    local last = redis.call('HGET', key, 'last') or redis.call('HGET', key, 'created')
    if last then
      table.insert(live, {id, key, tonumber(last)})
    else
      table.insert(dead, id)
    end
  end
end
local result = {'ok'}
local cap = tonumber(ARGV[2])
local total = #live + entries
if total >= cap then
  if ARGV[3] == 'reject' then return {'rejected'} end
  local excess = total - cap + 1
  if excess > #live then return {'retry'} end
  table.sort(live, function(a, b) return a[3] < b[3] end)
  for i = 1, excess do
    redis.call('DEL', live[i][2])
    redis.call('HDEL', KEYS[1], live[i][1])
    table.insert(result, live[i][1])
  end
  redis.call('PUBLISH', ARGV[10], ARGV[11])
end
for _, id in ipairs(dead) do redis.call('HDEL', KEYS[1], id) end
redis.call('HSET', KEYS[2], unpack(ARGV, 12 + n))
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[1], ARGV[6], ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return result
"#;

/// KEYS[1] user index, KEYS[1+i] the snapshot's session keys; ARGV[1] session key prefix,
/// ARGV[1+i] the snapshot's session ids. Returns one array per live session: fields +
/// remaining ms.
const LIST_SCRIPT: &str = r#"
local sessions = {}
for i = 2, #KEYS do
  if index_holds(ARGV[i], KEYS[i], ARGV[1]) then
    local left = redis.call('PTTL', KEYS[i])
    if left > 0 then
      local fields = redis.call('HMGET', KEYS[i], FIELDS)
      table.insert(fields, left)
      table.insert(sessions, fields)
    end
  end
end
return sessions
"#;

/// KEYS[1] user index, KEYS[2] the session key; ARGV[1] session key prefix, ARGV[2] session
/// id, ARGV[3] the invalidation channel, ARGV[4] the user id (published). Returns 1 if a live
/// session was ended, else 0.
const REVOKE_SCRIPT: &str = r#"
if not index_holds(ARGV[2], KEYS[2], ARGV[1]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
local ended = redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return ended
"#;

/// KEYS[1] user index, KEYS[2] the user's credential epoch, KEYS[2+i] the snapshot's session
/// keys; ARGV[1] session key prefix, ARGV[2] the session id to keep (or ''), ARGV[3] epoch ttl
/// ms, ARGV[4] '1' to bump the epoch, ARGV[5] the invalidation channel, ARGV[6] the user id
/// (published), ARGV[4+i] the snapshot's session ids. Bumping the epoch
/// means no login that read it before can create its session any more. Returns {ids of the
/// live sessions ended, [id, token hash] pairs of the index entries the snapshot did not have
/// (but `keep`)}.
const REVOKE_ALL_SCRIPT: &str = r#"
if ARGV[4] == '1' then
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
local ended = {}
local declared = {}
for i = 3, #KEYS do
  local id = ARGV[4 + i]
  declared[id] = true
  if id ~= ARGV[2] and index_holds(id, KEYS[i], ARGV[1]) then
    redis.call('HDEL', KEYS[1], id)
    if redis.call('DEL', KEYS[i]) == 1 then table.insert(ended, id) end
  end
end
local missed = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  if not declared[entries[i]] and entries[i] ~= ARGV[2] then
    table.insert(missed, entries[i])
    table.insert(missed, entries[i + 1])
  end
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {ended, missed}
"#;

/// KEYS and ARGV as [`REVOKE_ALL_SCRIPT`]'s, with ARGV[2] the roles (comma-separated) in place
/// of the session to keep. Bumping the epoch means no login
/// that read the old roles can create its session any more. Returns {how many sessions it
/// changed, [id, token hash] pairs of the index entries the snapshot did not have}.
const SET_ROLES_SCRIPT: &str = r#"
if ARGV[4] == '1' then
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
local changed = 0
local declared = {}
for i = 3, #KEYS do
  local id = ARGV[4 + i]
  declared[id] = true
  if index_holds(id, KEYS[i], ARGV[1]) and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HSET', KEYS[i], 'roles', ARGV[2])
    changed = changed + 1
  end
end
local missed = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  if not declared[entries[i]] then
    table.insert(missed, entries[i])
    table.insert(missed, entries[i + 1])
  end
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {changed, missed}
"#;

fn script(source: &str) -> Script {
    let source = source.replace("FIELDS", SESSION_FIELDS);
    if source.contains("index_holds") {
        Script::new(&format!("{INDEX_HOLDS}{source}"))
    } else {
        Script::new(&source)
    }
}

/// How often `create` takes a new snapshot of an index that concurrent logins of the same user
/// keep filling before it gives up (503). A retry is needed only when the cap must evict
/// sessions made after the snapshot; each settles some of the contenders.
const CREATE_ATTEMPTS: usize = 32;

pub struct RedisSessionStore {
    /// Reads and the hot path (`touch`).
    connection: Arc<RedisConnection>,
    /// Changes that wait for a replica (create, revoke, revoke-all): their own connection, so
    /// that wait never holds up a request on the other.
    changes: Arc<RedisConnection>,
    prefix: String,
    /// Where every ending of a session is published (the user id), for local caches.
    channel: String,
    /// How long a credential epoch is kept after its last bump.
    epoch_ttl: Duration,
    scripts: Scripts,
}

struct Scripts {
    touch: Script,
    slide: Script,
    create: Script,
    list: Script,
    revoke: Script,
    revoke_all: Script,
    set_roles: Script,
}

/// A snapshot of a user's index: (session id, token hash hex).
type Snapshot = Vec<(String, String)>;

impl RedisSessionStore {
    /// `epoch_ttl` must be at least the absolute session lifetime (see [`super::epoch_ttl`]).
    pub fn new(connection: Arc<RedisConnection>, prefix: &str, epoch_ttl: Duration) -> Self {
        // A sibling of a connection that was made from the same settings cannot fail; if it
        // ever did, sharing the one connection is still correct, only slower.
        let changes = connection
            .sibling()
            .map(Arc::new)
            .unwrap_or_else(|_| connection.clone());
        Self {
            connection,
            changes,
            prefix: prefix.to_string(),
            channel: invalidation_channel(prefix),
            epoch_ttl,
            scripts: Scripts {
                touch: script(TOUCH_SCRIPT),
                slide: script(SLIDE_SCRIPT),
                create: script(CREATE_SCRIPT),
                list: script(LIST_SCRIPT),
                revoke: script(REVOKE_SCRIPT),
                revoke_all: script(REVOKE_ALL_SCRIPT),
                set_roles: script(SET_ROLES_SCRIPT),
            },
        }
    }

    fn session_prefix(&self, tag: SlotTag) -> String {
        format!("{}{{{}}}session:", self.prefix, tag.as_str())
    }

    fn session_key(&self, key: &SessionKey) -> String {
        format!("{}{}", self.session_prefix(key.tag), key.hash.to_hex())
    }

    fn user_index_key(&self, user_id: Uuid) -> String {
        let tag = SlotTag::of_user(user_id);
        format!(
            "{}{{{}}}user:{}:sessions",
            self.prefix,
            tag.as_str(),
            user_id
        )
    }

    fn epoch_key(&self, user_id: Uuid) -> String {
        let tag = SlotTag::of_user(user_id);
        format!("{}{{{}}}user:{}:epoch", self.prefix, tag.as_str(), user_id)
    }

    /// The user's index as it is now.
    async fn snapshot(&self, user_id: Uuid) -> Result<Snapshot, StoreError> {
        let mut connection = self.connection.get().await?;
        let key = self.user_index_key(user_id);
        let index: std::collections::HashMap<String, String> = self
            .connection
            .call("index", connection.hgetall(key))
            .await?;
        Ok(index.into_iter().collect())
    }

    /// Adds a snapshot's session keys (KEYS) and ids (ARGV, after what the caller added).
    fn declare(
        &self,
        invocation: &mut redis::ScriptInvocation<'_>,
        user_id: Uuid,
        snapshot: &Snapshot,
    ) {
        let prefix = self.session_prefix(SlotTag::of_user(user_id));
        for (id, hash) in snapshot {
            invocation.key(format!("{prefix}{hash}")).arg(id);
        }
    }
}

/// The channel the scripts publish a user's id on whenever one of the user's sessions ends.
pub fn invalidation_channel(prefix: &str) -> String {
    format!("{prefix}sessions:invalidate")
}

/// The `[id, token hash, …]` pairs a script reports its snapshot missed, as a new snapshot.
fn missed_entries(missed: Vec<String>) -> Snapshot {
    missed
        .chunks_exact(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect()
}

/// Runs a change, and once more if Redis was unavailable (see the `_once` methods).
async fn once_more<T, F, Fut>(attempt: F) -> Result<T, StoreError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    match attempt().await {
        Err(StoreError::Unavailable { .. }) => attempt().await,
        outcome => outcome,
    }
}

fn optional(value: &Option<impl ToString>) -> String {
    value.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// The changes, each tried once; [`SessionStore`] tries a change again when its connection
/// failed, since that connection may still point at a master that has since failed over (the
/// hot-path connection notices first). Each change is safe to repeat: the same session id and
/// token, the same revocation.
impl RedisSessionStore {
    async fn create_once(
        &self,
        key: &SessionKey,
        session: &SessionData,
        idle: Duration,
        cap: SessionCap,
        expected_epoch: u64,
    ) -> Result<Created, StoreError> {
        debug_assert_eq!(
            key.tag,
            SlotTag::of_user(session.user_id),
            "token tag vs user"
        );
        let lifetime = session.absolute_expiry_ms - session.created_at_ms;
        let ttl = millis(idle).min(lifetime);
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
            ("roles", session.roles.join(",")),
        ];
        for _ in 0..CREATE_ATTEMPTS {
            let snapshot = self.snapshot(session.user_id).await?;
            let mut connection = self.changes.get().await?;
            let mut invocation = self
                .scripts
                .create
                .key(self.user_index_key(session.user_id));
            invocation
                .key(self.session_key(key))
                .key(self.epoch_key(session.user_id))
                .arg(self.session_prefix(key.tag))
                .arg(cap.max_sessions)
                .arg(match cap.on_limit {
                    OnLimit::EvictOldest => "evict_oldest",
                    OnLimit::Reject => "reject",
                })
                .arg(ttl)
                // The index outlives every session it lists; refreshed at each login.
                .arg(lifetime)
                .arg(session.id.to_string())
                .arg(key.hash.to_hex())
                .arg(expected_epoch)
                .arg(snapshot.len())
                .arg(&self.channel)
                .arg(session.user_id.to_string());
            self.declare(&mut invocation, session.user_id, &snapshot);
            for (name, value) in &fields {
                invocation.arg(*name).arg(value);
            }
            let reply: Vec<String> = self
                .changes
                .call("create", invocation.invoke_async(&mut connection))
                .await?;
            match reply.split_first() {
                Some((status, evicted)) if status == "ok" => {
                    self.changes
                        .replicate(&mut connection, &self.session_key(key))
                        .await;
                    return Ok(Created::Ok {
                        evicted: evicted.iter().filter_map(|id| id.parse().ok()).collect(),
                    });
                }
                Some((status, _)) if status == "changed" => return Ok(Created::CredentialsChanged),
                Some((status, _)) if status == "retry" => continue,
                _ => return Ok(Created::LimitReached),
            }
        }
        Err(unavailable(
            "the user's session index kept changing under concurrent logins".to_string(),
        ))
    }

    async fn revoke_once(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, StoreError> {
        let index = self.user_index_key(user_id);
        let mut connection = self.changes.get().await?;
        let hash: Option<String> = self
            .changes
            .call("index", connection.hget(&index, session_id.to_string()))
            .await?;
        let Some(hash) = hash else {
            return Ok(false);
        };
        let prefix = self.session_prefix(SlotTag::of_user(user_id));
        let mut invocation = self.scripts.revoke.key(&index);
        invocation
            .key(format!("{prefix}{hash}"))
            .arg(prefix)
            .arg(session_id.to_string())
            .arg(&self.channel)
            .arg(user_id.to_string());
        let ended: i64 = self
            .changes
            .call("revoke", invocation.invoke_async(&mut connection))
            .await?;
        if ended > 0 {
            self.changes.replicate(&mut connection, &index).await;
        }
        Ok(ended > 0)
    }

    async fn revoke_all_once(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut ended_ids = Vec::new();
        self.sweep_user(
            &self.scripts.revoke_all,
            "revoke_all",
            user_id,
            optional(&keep),
            |ended: Vec<String>| {
                ended_ids.extend(ended.iter().filter_map(|id| id.parse::<Uuid>().ok()))
            },
        )
        .await?;
        Ok(ended_ids)
    }

    async fn set_roles_once(&self, user_id: Uuid, roles: &[String]) -> Result<usize, StoreError> {
        let mut changed = 0;
        self.sweep_user(
            &self.scripts.set_roles,
            "set_roles",
            user_id,
            roles.join(","),
            |count: usize| changed += count,
        )
        .await?;
        Ok(changed)
    }

    /// Runs a script that visits every session of a user (revoke-all, set-roles) and moves the
    /// user's credential epoch: the first call bumps the epoch and handles the snapshot; the
    /// entries it reports missing were created before the bump and are handled by a second.
    /// Anything created after the bump read the new epoch: a login that began after the
    /// change, which stands. Each call's own result goes to `each`.
    async fn sweep_user<R: redis::FromRedisValue>(
        &self,
        script: &Script,
        operation: &'static str,
        user_id: Uuid,
        argument: String,
        mut each: impl FnMut(R),
    ) -> Result<(), StoreError> {
        let mut snapshot = self.snapshot(user_id).await?;
        let mut connection = self.changes.get().await?;
        for bump in [true, false] {
            let mut invocation = script.key(self.user_index_key(user_id));
            invocation
                .key(self.epoch_key(user_id))
                .arg(self.session_prefix(SlotTag::of_user(user_id)))
                .arg(&argument)
                .arg(millis(self.epoch_ttl))
                .arg(if bump { "1" } else { "0" })
                .arg(&self.channel)
                .arg(user_id.to_string());
            self.declare(&mut invocation, user_id, &snapshot);
            let (result, missed): (R, Vec<String>) = self
                .changes
                .call(operation, invocation.invoke_async(&mut connection))
                .await?;
            each(result);
            snapshot = missed_entries(missed);
            if snapshot.is_empty() {
                break;
            }
        }
        self.changes
            .replicate(&mut connection, &self.user_index_key(user_id))
            .await;
        Ok(())
    }
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(
        &self,
        key: &SessionKey,
        session: &SessionData,
        idle: Duration,
        cap: SessionCap,
        expected_epoch: u64,
    ) -> Result<Created, StoreError> {
        once_more(|| self.create_once(key, session, idle, cap, expected_epoch)).await
    }

    async fn touch(
        &self,
        key: &SessionKey,
        now_ms: i64,
        idle: Duration,
    ) -> Result<Option<LiveSession>, StoreError> {
        let mut connection = self.connection.get().await?;
        let mut invocation = self.scripts.touch.key(self.session_key(key));
        invocation.arg(now_ms).arg(millis(idle));
        let reply: Option<Vec<redis::Value>> = self
            .connection
            .call("touch", invocation.invoke_async(&mut connection))
            .await?;
        match reply {
            None => Ok(None),
            Some(fields) => match parse_live_session(&fields) {
                Some(session) => Ok(Some(session)),
                // A session key that does not decode is not a verdict on the session (a reply
                // mangled in transit, a key half-restored by hand): refuse with 503, not 401.
                None => {
                    tracing::warn!("a session's redis reply did not decode");
                    Err(unavailable("a session reply did not decode".to_string()))
                }
            },
        }
    }

    async fn slide(
        &self,
        key: &SessionKey,
        activity_ms: i64,
        now_ms: i64,
        idle: Duration,
    ) -> Result<Option<i64>, StoreError> {
        let mut connection = self.connection.get().await?;
        let mut invocation = self.scripts.slide.key(self.session_key(key));
        invocation.arg(activity_ms).arg(now_ms).arg(millis(idle));
        self.connection
            .call("slide", invocation.invoke_async(&mut connection))
            .await
    }

    async fn list(&self, user_id: Uuid) -> Result<Vec<LiveSession>, StoreError> {
        let snapshot = self.snapshot(user_id).await?;
        if snapshot.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection.get().await?;
        let mut invocation = self.scripts.list.key(self.user_index_key(user_id));
        invocation.arg(self.session_prefix(SlotTag::of_user(user_id)));
        self.declare(&mut invocation, user_id, &snapshot);
        let replies: Vec<Vec<redis::Value>> = self
            .connection
            .call("list", invocation.invoke_async(&mut connection))
            .await?;
        Ok(replies
            .iter()
            .filter_map(|fields| parse_live_session(fields))
            .collect())
    }

    async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, StoreError> {
        once_more(|| self.revoke_once(user_id, session_id)).await
    }

    async fn revoke_all_except(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> Result<Vec<Uuid>, StoreError> {
        once_more(|| self.revoke_all_once(user_id, keep)).await
    }

    async fn set_roles(&self, user_id: Uuid, roles: &[String]) -> Result<usize, StoreError> {
        once_more(|| self.set_roles_once(user_id, roles)).await
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

    async fn live(&self, keys: &[SessionKey]) -> Result<Vec<bool>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let connection = self.connection.get().await?;
        // One EXISTS per key (they live in different slots); the connection pipelines them.
        let checks = keys.iter().map(|key| {
            let mut connection = connection.clone();
            let key = self.session_key(key);
            async move { connection.exists::<_, bool>(key).await }
        });
        self.connection
            .call("live", futures::future::try_join_all(checks))
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
/// idle milliseconds. `None` for a reply that does not decode.
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
        roles: text(12)
            .map(|roles| {
                roles
                    .split(',')
                    .filter(|role| !role.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    };
    let last_activity_ms = number(11).unwrap_or(data.created_at_ms);
    let left_ms: i64 = redis::from_redis_value(fields.get(13)?).ok()?;
    Some(LiveSession {
        data: Arc::new(data),
        last_activity_ms,
        idle_remaining: Duration::from_millis(u64::try_from(left_ms).ok()?),
    })
}
