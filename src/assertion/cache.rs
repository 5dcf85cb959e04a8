//! Signed assertions kept for reuse, so that a session's requests pay for one signature per
//! half lifetime rather than one each (an Ed25519 signature costs about as much as the rest of
//! a proxied request).
//!
//! Entries are looked up by session id (a `Uuid`: no allocation on a hit), then by audience and
//! key id. An entry is handed out only until half its lifetime has passed, so an upstream never
//! gets a token with less than half its lifetime left, and never one past its `exp`. The map is
//! sharded (one mutex per shard, held for a lookup or an insert only) and bounded: a shard over
//! its share of the entries first drops what is stale, then whatever comes first.
//!
//! Revocation needs nothing here: a revoked session is refused by the session check before an
//! assertion is asked for, so a reused token only ever goes out for a session that is live now.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use http::HeaderValue;
use uuid::Uuid;

const SHARDS: usize = 16;
/// Audiences (routes) one session keeps tokens for at once.
const AUDIENCES_PER_SESSION: usize = 8;

pub struct TokenCache {
    shards: Vec<Mutex<HashMap<Uuid, Vec<Entry>>>>,
    /// Sessions one shard holds at most.
    per_shard: usize,
}

struct Entry {
    audience: Box<str>,
    kid: Box<str>,
    /// The roles signed into it: a role change since makes it stale.
    roles: Box<[String]>,
    token: HeaderValue,
    /// Handed out until then (half the lifetime after signing, well before `exp`).
    fresh_until: Instant,
}

impl TokenCache {
    /// A cache of about `capacity` sessions (at least one per shard).
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, session: Uuid) -> &Mutex<HashMap<Uuid, Vec<Entry>>> {
        // v4 ids are random: their last byte spreads sessions evenly.
        let index = usize::from(session.as_bytes()[15]) % SHARDS;
        &self.shards[index]
    }

    /// The token signed for this session, audience, key and roles, if it is still fresh at
    /// `now`.
    pub fn get(
        &self,
        session: Uuid,
        audience: &str,
        kid: &str,
        roles: &[String],
        now: Instant,
    ) -> Option<HeaderValue> {
        let shard = self.shard(session).lock().ok()?;
        shard
            .get(&session)?
            .iter()
            .find(|entry| {
                &*entry.audience == audience && &*entry.kid == kid && *entry.roles == *roles
            })
            .filter(|entry| now < entry.fresh_until)
            .map(|entry| entry.token.clone())
    }

    /// Keeps `token` for reuse until `fresh_until`, replacing this session's token for the
    /// same audience (signed with any key and roles).
    #[allow(
        clippy::too_many_arguments,
        reason = "the key's parts, the token and two times"
    )]
    pub fn insert(
        &self,
        session: Uuid,
        audience: &str,
        kid: &str,
        roles: &[String],
        token: HeaderValue,
        fresh_until: Instant,
        now: Instant,
    ) {
        let Ok(mut shard) = self.shard(session).lock() else {
            return; // poisoned: simply sign every time
        };
        if shard.len() >= self.per_shard && !shard.contains_key(&session) {
            shard.retain(|_, entries| {
                entries.retain(|entry| now < entry.fresh_until);
                !entries.is_empty()
            });
            if shard.len() >= self.per_shard {
                // Still full of fresh tokens: make room (an evicted session just signs anew).
                let doomed: Vec<Uuid> =
                    shard.keys().take(self.per_shard / 8 + 1).copied().collect();
                for id in doomed {
                    shard.remove(&id);
                }
            }
        }
        let entries = shard.entry(session).or_default();
        entries.retain(|entry| &*entry.audience != audience && now < entry.fresh_until);
        if entries.len() >= AUDIENCES_PER_SESSION {
            entries.remove(0);
        }
        entries.push(Entry {
            audience: audience.into(),
            kid: kid.into(),
            roles: roles.into(),
            token,
            fresh_until,
        });
    }

    /// Drops every entry no longer fresh at `now` (run periodically: a session that ended
    /// leaves its tokens behind otherwise).
    pub fn sweep(&self, now: Instant) {
        for shard in &self.shards {
            if let Ok(mut shard) = shard.lock() {
                shard.retain(|_, entries| {
                    entries.retain(|entry| now < entry.fresh_until);
                    !entries.is_empty()
                });
            }
        }
    }

    /// Sessions with at least one token kept.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map_or(0, |shard| shard.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn token(text: &'static str) -> HeaderValue {
        HeaderValue::from_static(text)
    }

    #[test]
    fn a_token_is_reused_only_while_fresh_and_only_for_its_audience_and_key() {
        let cache = TokenCache::new(100);
        let session = Uuid::new_v4();
        let now = Instant::now();
        let later = now + Duration::from_secs(30);
        cache.insert(session, "/app/", "k1", &[], token("a"), later, now);
        assert_eq!(
            cache.get(session, "/app/", "k1", &[], now),
            Some(token("a"))
        );
        assert_eq!(cache.get(session, "/other/", "k1", &[], now), None);
        assert_eq!(
            cache.get(session, "/app/", "k2", &[], now),
            None,
            "another key"
        );
        assert_eq!(cache.get(Uuid::new_v4(), "/app/", "k1", &[], now), None);
        assert_eq!(cache.get(session, "/app/", "k1", &[], later), None, "stale");
        // A new key's token replaces the old key's for the same audience.
        cache.insert(session, "/app/", "k2", &[], token("b"), later, now);
        assert_eq!(cache.get(session, "/app/", "k1", &[], now), None);
        assert_eq!(
            cache.get(session, "/app/", "k2", &[], now),
            Some(token("b"))
        );
        // Roles changed since: signed anew.
        let admin = ["admin".to_string()];
        assert_eq!(
            cache.get(session, "/app/", "k2", &admin, now),
            None,
            "roles"
        );
    }

    #[test]
    fn the_cache_stays_bounded_and_sweeps_stale_entries() {
        let cache = TokenCache::new(64);
        let now = Instant::now();
        let fresh = now + Duration::from_secs(30);
        for _ in 0..10_000 {
            cache.insert(Uuid::new_v4(), "/", "k", &[], token("t"), fresh, now);
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        let session = Uuid::new_v4();
        for audience in 0..20 {
            cache.insert(
                session,
                &format!("/{audience}/"),
                "k",
                &[],
                token("t"),
                fresh,
                now,
            );
        }
        assert!(cache.len() <= 64);
        cache.sweep(fresh);
        assert!(cache.is_empty());
    }
}
