//! A short-lived, process-local cache of sessions Redis has validated, so that most proxied
//! requests are answered without a Redis round trip (`session.cache_ttl`).
//!
//! It is only ever trusted while it is kept correct:
//! - **Revocations reach it at once.** Every script that ends a session (logout, revoke,
//!   revoke-all, a password change, an eviction by the per-user cap) publishes the user's id
//!   on the invalidation channel in the same atomic step; every gateway subscribed to it drops
//!   that user's entries (`invalidation.rs`). The gateway that made the change drops them
//!   itself before it answers, so its own next request never sees a stale entry.
//! - **Off whenever the channel is.** Entries are used only while the subscription is up (and
//!   answered its last heartbeat); when it drops, the cache is emptied and turned off until a
//!   new subscription is confirmed, since messages may have been missed.
//! - **No race with a concurrent ending.** An entry is inserted only if no invalidation of its
//!   shard happened since the Redis call that validated it was sent (a generation per shard).
//! - **Bounded trust.** An entry is used for at most `cache_ttl` after Redis last vouched for
//!   it, never past the session's absolute expiry, and never closer than [`SlideSchedule`]'s
//!   margin to the idle expiry Redis holds; otherwise the request goes to Redis as before.
//!
//! A request served from the cache slides the session's idle expiry too, but behind: the
//! activity is noted in the entry and a background flush writes it to Redis every
//! [`SlideSchedule::every`] (the activity's own time, so the expiry is exact, not late). The
//! margin guarantees the flush lands before the expiry Redis holds runs out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{millis, LiveSession, SessionKey, SlotTag, TokenHash};

/// Shards, chosen by the session's slot tag (which is the user's): one user's sessions are in
/// one shard, so invalidating a user locks and scans one shard only.
const SHARDS: usize = 64;

/// When the idle expiry is written back for sessions served from the cache, and how close to
/// the expiry Redis holds an entry may still be used.
#[derive(Debug, Clone, Copy)]
pub struct SlideSchedule {
    /// The flush interval: an eighth of the idle timeout, between 50 ms and 1 s.
    pub every: Duration,
    /// An entry is not used once the expiry Redis holds is this close: two flushes and a
    /// round trip's worth.
    pub margin: Duration,
}

impl SlideSchedule {
    pub fn for_idle(idle: Duration) -> Self {
        let every = (idle / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
        Self {
            every,
            margin: every * 2 + Duration::from_millis(100),
        }
    }
}

/// One validated session, as this process last saw it.
pub struct Entry {
    pub key: SessionKey,
    pub session: LiveSession,
    /// When Redis last vouched for it.
    validated_at: Instant,
    /// Unix ms: the idle expiry Redis holds (as last set by this process).
    redis_expiry_ms: AtomicI64,
    /// Unix ms of the latest request here that used it.
    last_seen_ms: AtomicI64,
    /// Unix ms of the activity last written to Redis.
    slid_ms: AtomicI64,
    /// Unix ms the browser's cookie was last told to expire at (by this process).
    cookie_expiry_ms: AtomicI64,
}

impl Entry {
    /// The activity to write to Redis, if any is newer than what it holds.
    pub fn pending_slide(&self) -> Option<i64> {
        let seen = self.last_seen_ms.load(Ordering::Acquire);
        (seen > self.slid_ms.load(Ordering::Acquire)).then_some(seen)
    }

    /// Redis now holds activity `at_ms`, so it expires at `expiry_ms`.
    pub fn slid(&self, at_ms: i64, expiry_ms: i64) {
        self.slid_ms.fetch_max(at_ms, Ordering::AcqRel);
        self.redis_expiry_ms.fetch_max(expiry_ms, Ordering::AcqRel);
    }
}

#[derive(Default)]
struct Shard {
    /// Bumped by every invalidation of the shard: an insert validated before one is refused.
    generation: u64,
    entries: HashMap<TokenHash, Arc<Entry>>,
}

/// What a Redis call that is about to validate a session must hand back to [`SessionCache::insert`].
#[derive(Clone, Copy)]
pub struct Ticket {
    generation: u64,
    /// Whether the cache was on when the call was sent.
    enabled: bool,
}

pub struct SessionCache {
    shards: Vec<Mutex<Shard>>,
    /// The invalidation channel is subscribed and alive.
    enabled: AtomicBool,
    ttl: Duration,
    schedule: SlideSchedule,
    idle: Duration,
    max_per_shard: usize,
}

/// What the cache says of a request's session.
#[allow(
    clippy::large_enum_variant,
    reason = "lives for one request; boxing would add an allocation to the hot path"
)]
pub enum Cached {
    /// Usable as is; `refresh_cookie` when the browser's cookie expiry should be moved.
    Hit {
        session: LiveSession,
        refresh_cookie: bool,
    },
    /// Ask Redis.
    Miss(Ticket),
}

impl SessionCache {
    /// `max_entries` bounds the memory it takes (past it, sessions are simply not cached).
    pub fn new(ttl: Duration, idle: Duration, max_entries: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            enabled: AtomicBool::new(false),
            ttl,
            schedule: SlideSchedule::for_idle(idle),
            idle,
            max_per_shard: (max_entries / SHARDS).max(1),
        }
    }

    pub fn schedule(&self) -> SlideSchedule {
        self.schedule
    }

    fn shard(&self, tag: SlotTag) -> MutexGuard<'_, Shard> {
        self.shards[tag.bucket(SHARDS)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The session for `key` if the cache may answer for it now, else a ticket for the Redis
    /// call that will.
    pub fn get(&self, key: &SessionKey, now_ms: i64) -> Cached {
        let enabled = self.enabled.load(Ordering::Acquire);
        let (entry, generation) = {
            let shard = self.shard(key.tag);
            let entry = if enabled {
                shard.entries.get(&key.hash).cloned()
            } else {
                None
            };
            (entry, shard.generation)
        };
        let miss = Cached::Miss(Ticket {
            generation,
            enabled,
        });
        let Some(entry) = entry else {
            return miss;
        };
        let margin = millis(self.schedule.margin);
        let absolute = entry.session.data.absolute_expiry_ms;
        if entry.validated_at.elapsed() >= self.ttl
            || now_ms >= absolute
            || now_ms.saturating_add(margin) > entry.redis_expiry_ms.load(Ordering::Acquire)
        {
            return miss;
        }
        entry.last_seen_ms.fetch_max(now_ms, Ordering::AcqRel);
        let expiry = now_ms.saturating_add(millis(self.idle)).min(absolute);
        let mut session = entry.session.clone();
        session.last_activity_ms = now_ms;
        session.idle_remaining = Duration::from_millis(u64::try_from(expiry - now_ms).unwrap_or(0));
        let told = entry.cookie_expiry_ms.load(Ordering::Acquire);
        let refresh_cookie = expiry - told >= millis(self.cookie_tolerance());
        if refresh_cookie {
            entry.cookie_expiry_ms.fetch_max(expiry, Ordering::AcqRel);
        }
        Cached::Hit {
            session,
            refresh_cookie,
        }
    }

    /// How far the browser's cookie expiry may lag the session's before it is re-issued: a
    /// hundredth of the idle timeout, at most a minute (so a `Set-Cookie` goes out about once a
    /// minute per busy session with the default 24 h, not on every response).
    fn cookie_tolerance(&self) -> Duration {
        (self.idle / 100).min(Duration::from_secs(60))
    }

    /// Keeps a session Redis just validated (and slid to `now_ms`), unless the cache was off
    /// when the call was sent or the session's shard was invalidated since.
    pub fn insert(&self, ticket: Ticket, key: &SessionKey, session: &LiveSession, now_ms: i64) {
        if !ticket.enabled {
            return;
        }
        let expiry = now_ms.saturating_add(millis(session.idle_remaining));
        let entry = Arc::new(Entry {
            key: key.clone(),
            session: session.clone(),
            validated_at: Instant::now(),
            redis_expiry_ms: AtomicI64::new(expiry),
            last_seen_ms: AtomicI64::new(now_ms),
            slid_ms: AtomicI64::new(now_ms),
            // The answer to this request carries a fresh cookie.
            cookie_expiry_ms: AtomicI64::new(expiry),
        });
        let mut shard = self.shard(key.tag);
        if shard.generation != ticket.generation || !self.enabled.load(Ordering::Acquire) {
            return;
        }
        if shard.entries.len() >= self.max_per_shard && !shard.entries.contains_key(&key.hash) {
            let ttl = self.ttl;
            shard
                .entries
                .retain(|_, entry| entry.validated_at.elapsed() < ttl);
            if shard.entries.len() >= self.max_per_shard {
                return;
            }
        }
        shard.entries.insert(key.hash.clone(), entry);
    }

    /// Drops every entry of a user (one of its sessions ended, or all did).
    pub fn invalidate_user(&self, user_id: Uuid) {
        let mut shard = self.shard(SlotTag::of_user(user_id));
        shard.generation += 1;
        shard
            .entries
            .retain(|_, entry| entry.session.data.user_id != user_id);
    }

    /// Drops one session (Redis no longer has it).
    pub fn remove(&self, key: &SessionKey) {
        let mut shard = self.shard(key.tag);
        shard.generation += 1;
        shard.entries.remove(&key.hash);
    }

    /// Turns the cache on (a subscription was just confirmed) or off (it dropped); both empty it.
    pub fn set_enabled(&self, enabled: bool) {
        if !enabled {
            self.enabled.store(false, Ordering::Release);
        }
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.generation += 1;
            shard.entries.clear();
        }
        if enabled {
            self.enabled.store(true, Ordering::Release);
        }
    }

    /// Entries whose activity Redis does not have yet, and forgets entries past their trust.
    pub fn pending_slides(&self) -> Vec<Arc<Entry>> {
        let mut pending = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let ttl = self.ttl;
            shard.entries.retain(|_, entry| {
                if entry.pending_slide().is_some() {
                    pending.push(entry.clone());
                    return true;
                }
                entry.validated_at.elapsed() < ttl
            });
        }
        pending
    }

    /// A user's entries whose activity Redis does not have yet.
    pub fn pending_slides_of(&self, user_id: Uuid) -> Vec<Arc<Entry>> {
        let shard = self.shard(SlotTag::of_user(user_id));
        shard
            .entries
            .values()
            .filter(|entry| {
                entry.session.data.user_id == user_id && entry.pending_slide().is_some()
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionData;

    const IDLE: Duration = Duration::from_secs(60);

    fn live(user_id: Uuid, now_ms: i64) -> LiveSession {
        LiveSession {
            data: std::sync::Arc::new(SessionData {
                id: Uuid::new_v4(),
                user_id,
                email: "a@example.com".to_string(),
                ip: "127.0.0.1".parse().unwrap(),
                user_agent: "test".to_string(),
                device_id: None,
                device_label: String::new(),
                ip_id: None,
                location: None,
                created_at_ms: now_ms,
                absolute_expiry_ms: now_ms + 3_600_000,
                roles: Vec::new(),
            }),
            last_activity_ms: now_ms,
            idle_remaining: IDLE,
        }
    }

    fn key_of(user_id: Uuid) -> SessionKey {
        SessionKey {
            tag: SlotTag::of_user(user_id),
            hash: TokenHash::of(Uuid::new_v4().as_bytes()),
        }
    }

    fn ticket(cache: &SessionCache, key: &SessionKey, now_ms: i64) -> Ticket {
        match cache.get(key, now_ms) {
            Cached::Miss(ticket) => ticket,
            Cached::Hit { .. } => panic!("expected a miss"),
        }
    }

    fn is_hit(cache: &SessionCache, key: &SessionKey, now_ms: i64) -> bool {
        matches!(cache.get(key, now_ms), Cached::Hit { .. })
    }

    fn enabled_cache() -> SessionCache {
        let cache = SessionCache::new(Duration::from_secs(2), IDLE, 1000);
        cache.set_enabled(true);
        cache
    }

    #[test]
    fn a_validated_session_is_answered_until_its_user_is_invalidated() {
        let cache = enabled_cache();
        let (user, now) = (Uuid::new_v4(), 1_000_000);
        let key = key_of(user);
        let ticket = ticket(&cache, &key, now);
        cache.insert(ticket, &key, &live(user, now), now);
        assert!(is_hit(&cache, &key, now + 10));
        cache.invalidate_user(Uuid::new_v4());
        assert!(
            is_hit(&cache, &key, now + 20),
            "another user's invalidation"
        );
        cache.invalidate_user(user);
        assert!(!is_hit(&cache, &key, now + 30));
    }

    #[test]
    fn an_invalidation_between_the_redis_call_and_the_insert_wins() {
        let cache = enabled_cache();
        let (user, now) = (Uuid::new_v4(), 1_000_000);
        let key = key_of(user);
        let ticket = ticket(&cache, &key, now);
        cache.invalidate_user(user); // the session ended while Redis answered
        cache.insert(ticket, &key, &live(user, now), now);
        assert!(!is_hit(&cache, &key, now + 10));
    }

    #[test]
    fn nothing_is_answered_or_kept_while_the_channel_is_down() {
        let cache = enabled_cache();
        let (user, now) = (Uuid::new_v4(), 1_000_000);
        let key = key_of(user);
        let before_drop = ticket(&cache, &key, now);
        cache.insert(before_drop, &key, &live(user, now), now);
        cache.set_enabled(false);
        assert!(!is_hit(&cache, &key, now + 10));
        let while_down = ticket(&cache, &key, now);
        cache.insert(while_down, &key, &live(user, now), now);
        cache.set_enabled(true);
        assert!(!is_hit(&cache, &key, now + 10), "inserted while down");
        let stale = before_drop;
        cache.insert(stale, &key, &live(user, now), now);
        assert!(
            !is_hit(&cache, &key, now + 10),
            "validated before a reconnect"
        );
    }

    #[test]
    fn not_answered_near_the_idle_expiry_redis_holds_nor_past_the_absolute_one() {
        let cache = enabled_cache();
        let (user, now) = (Uuid::new_v4(), 1_000_000);
        let key = key_of(user);
        let mut session = live(user, now);
        std::sync::Arc::make_mut(&mut session.data).absolute_expiry_ms = now + 1_000;
        let ticket = ticket(&cache, &key, now);
        cache.insert(ticket, &key, &session, now);
        assert!(is_hit(&cache, &key, now + 500));
        assert!(!is_hit(&cache, &key, now + 1_000), "absolute expiry");

        let key = key_of(user);
        let mut session = live(user, now);
        session.idle_remaining = Duration::from_secs(10);
        let ticket = self::ticket(&cache, &key, now);
        cache.insert(ticket, &key, &session, now);
        let margin = millis(cache.schedule().margin);
        assert!(is_hit(&cache, &key, now + 10_000 - margin));
        assert!(!is_hit(&cache, &key, now + 10_000 - margin + 1));
    }

    #[test]
    fn answered_uses_are_pending_until_written_and_the_cookie_is_reissued_sparingly() {
        let cache = enabled_cache();
        let (user, now) = (Uuid::new_v4(), 1_000_000);
        let key = key_of(user);
        let ticket = ticket(&cache, &key, now);
        cache.insert(ticket, &key, &live(user, now), now);
        assert!(cache.pending_slides().is_empty());
        let tolerance = millis(IDLE / 100);
        match cache.get(&key, now + tolerance - 1) {
            Cached::Hit { refresh_cookie, .. } => assert!(!refresh_cookie),
            Cached::Miss(_) => panic!("a miss"),
        }
        match cache.get(&key, now + tolerance) {
            Cached::Hit {
                refresh_cookie,
                session,
            } => {
                assert!(refresh_cookie);
                assert_eq!(session.idle_remaining, IDLE);
            }
            Cached::Miss(_) => panic!("a miss"),
        }
        let pending = cache.pending_slides_of(user);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].pending_slide(), Some(now + tolerance));
        pending[0].slid(now + tolerance, now + tolerance + millis(IDLE));
        assert!(cache.pending_slides().is_empty());
    }
}
