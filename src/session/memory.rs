//! [`SessionStore`] in this process's memory, for the embedded mode (`storage.redis_url = ""`):
//! one gateway instance, no Redis.
//!
//! It keeps Redis's semantics exactly (the contract tests run the same cases against both):
//! a session's idle expiry slides on every use and never passes its absolute expiry; a
//! per-user index lists and revokes without scanning; the per-user cap is enforced atomically
//! with the insert (evict the least recently active, or refuse); revocation is immediate.
//! Every operation holds one lock for a few map operations and never awaits while holding it,
//! so each is atomic like a Lua script. The per-user credential epoch (bumped by every
//! revoke-all, checked by `create`) lives here too, kept `epoch_ttl` after its last bump.
//!
//! Memory is bounded: expired sessions are dropped when touched, listed or swept
//! ([`MemorySessionStore::sweep`], run periodically), and at most `max_sessions` live sessions
//! exist at once; one more login is refused with [`StoreError::Full`].
//!
//! Live sessions do not survive a restart (the durable records do, and are marked expired).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use uuid::Uuid;

use super::{
    millis, Created, LiveSession, SessionCap, SessionData, SessionKey, SessionStore, TokenHash,
};
use crate::config::OnLimit;
use crate::model::StoreError;

struct Entry {
    /// Shared with every [`LiveSession`] handed out (a request clones the pointer, not the
    /// strings).
    data: Arc<SessionData>,
    last_activity_ms: i64,
    /// Unix milliseconds at which it idles out (never after its absolute expiry).
    idle_deadline_ms: i64,
}

#[derive(Default)]
struct State {
    sessions: HashMap<TokenHash, Entry>,
    /// User id → (public session id → token hash).
    users: HashMap<Uuid, HashMap<Uuid, TokenHash>>,
    /// User id → credential epoch (missing = 0) and when it was last bumped.
    epochs: HashMap<Uuid, (u64, Instant)>,
}

impl State {
    fn epoch(&self, user_id: Uuid) -> u64 {
        self.epochs.get(&user_id).map_or(0, |(epoch, _)| *epoch)
    }

    fn is_live(&self, token: &TokenHash, now_ms: i64) -> bool {
        self.sessions
            .get(token)
            .is_some_and(|entry| entry.idle_deadline_ms > now_ms)
    }

    /// Removes a session, returning whether it was live.
    fn remove(&mut self, token: &TokenHash, now_ms: i64) -> bool {
        let live = self.is_live(token, now_ms);
        if let Some(entry) = self.sessions.remove(token) {
            self.unindex(entry.data.user_id, entry.data.id);
        }
        live
    }

    fn unindex(&mut self, user_id: Uuid, session_id: Uuid) {
        if let Some(index) = self.users.get_mut(&user_id) {
            index.remove(&session_id);
            if index.is_empty() {
                self.users.remove(&user_id);
            }
        }
    }

    /// A user's live sessions (public id, token, last activity), dropping dead ones.
    fn live_of(&mut self, user_id: Uuid, now_ms: i64) -> Vec<(Uuid, TokenHash, i64)> {
        let entries: Vec<(Uuid, TokenHash)> = self
            .users
            .get(&user_id)
            .map(|index| {
                index
                    .iter()
                    .map(|(id, token)| (*id, token.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut live = Vec::with_capacity(entries.len());
        for (session_id, token) in entries {
            match self.sessions.get(&token) {
                Some(entry) if entry.idle_deadline_ms > now_ms => {
                    live.push((session_id, token, entry.last_activity_ms));
                }
                _ => {
                    self.sessions.remove(&token);
                    self.unindex(user_id, session_id);
                }
            }
        }
        live
    }
}

pub struct MemorySessionStore {
    state: Mutex<State>,
    max_sessions: usize,
    /// How long a credential epoch is kept after its last bump (as Redis's key TTL).
    epoch_ttl: Duration,
}

impl MemorySessionStore {
    pub fn new(max_sessions: usize, epoch_ttl: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_sessions,
            epoch_ttl,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No operation can leave the maps half-changed in a way that matters: keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops every expired session; returns how many live sessions remain.
    pub fn sweep(&self) -> usize {
        let now_ms = now_ms();
        let mut state = self.state();
        let dead: Vec<TokenHash> = state
            .sessions
            .iter()
            .filter(|(_, entry)| entry.idle_deadline_ms <= now_ms)
            .map(|(token, _)| token.clone())
            .collect();
        for token in dead {
            state.remove(&token, now_ms);
        }
        let epoch_ttl = self.epoch_ttl;
        state
            .epochs
            .retain(|_, (_, bumped)| bumped.elapsed() < epoch_ttl);
        state.sessions.len()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn remaining(deadline_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(deadline_ms - now_ms).unwrap_or(0))
}

#[async_trait]
impl SessionStore for MemorySessionStore {
    async fn create(
        &self,
        key: &SessionKey,
        session: &SessionData,
        idle: Duration,
        cap: SessionCap,
        expected_epoch: u64,
    ) -> Result<Created, StoreError> {
        let token = &key.hash;
        let now_ms = session.created_at_ms;
        let lifetime = session.absolute_expiry_ms - session.created_at_ms;
        let ttl = millis(idle).min(lifetime);
        let mut state = self.state();
        if state.epoch(session.user_id) != expected_epoch {
            return Ok(Created::CredentialsChanged);
        }
        let mut live = state.live_of(session.user_id, now_ms);
        let cap_size = usize::try_from(cap.max_sessions).unwrap_or(usize::MAX);
        let mut evicted = Vec::new();
        if live.len() >= cap_size {
            if cap.on_limit == OnLimit::Reject {
                return Ok(Created::LimitReached);
            }
            live.sort_by_key(|(_, _, last)| *last);
            for (session_id, old_token, _) in live.iter().take(live.len() + 1 - cap_size) {
                state.remove(old_token, now_ms);
                evicted.push(*session_id);
            }
        }
        if state.sessions.len() >= self.max_sessions {
            // Expired entries may still hold places: sweep before refusing.
            drop(state);
            self.sweep();
            state = self.state();
            if state.sessions.len() >= self.max_sessions {
                return Err(StoreError::Full {
                    store: "memory",
                    limit: self.max_sessions,
                });
            }
        }
        state.sessions.insert(
            token.clone(),
            Entry {
                data: Arc::new(session.clone()),
                last_activity_ms: now_ms,
                idle_deadline_ms: now_ms.saturating_add(ttl),
            },
        );
        state
            .users
            .entry(session.user_id)
            .or_default()
            .insert(session.id, token.clone());
        Ok(Created::Ok { evicted })
    }

    async fn credential_epoch(&self, user_id: Uuid) -> Result<u64, StoreError> {
        Ok(self.state().epoch(user_id))
    }

    async fn touch(
        &self,
        key: &SessionKey,
        now_ms: i64,
        idle: Duration,
    ) -> Result<Option<LiveSession>, StoreError> {
        let token = &key.hash;
        let mut state = self.state();
        let Some(entry) = state.sessions.get(token) else {
            return Ok(None);
        };
        let left = entry.data.absolute_expiry_ms - now_ms;
        if entry.idle_deadline_ms <= now_ms || left <= 0 {
            state.remove(token, now_ms);
            return Ok(None);
        }
        let left = left.min(millis(idle));
        let Some(entry) = state.sessions.get_mut(token) else {
            return Ok(None);
        };
        entry.last_activity_ms = now_ms;
        entry.idle_deadline_ms = now_ms.saturating_add(left);
        Ok(Some(LiveSession {
            data: entry.data.clone(),
            last_activity_ms: now_ms,
            idle_remaining: remaining(entry.idle_deadline_ms, now_ms),
        }))
    }

    async fn list(&self, user_id: Uuid) -> Result<Vec<LiveSession>, StoreError> {
        let now_ms = now_ms();
        let mut state = self.state();
        let live = state.live_of(user_id, now_ms);
        Ok(live
            .iter()
            .filter_map(|(_, token, _)| state.sessions.get(token))
            .map(|entry| LiveSession {
                data: entry.data.clone(),
                last_activity_ms: entry.last_activity_ms,
                idle_remaining: remaining(entry.idle_deadline_ms, now_ms),
            })
            .collect())
    }

    async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, StoreError> {
        let now_ms = now_ms();
        let mut state = self.state();
        let token = state
            .users
            .get(&user_id)
            .and_then(|index| index.get(&session_id))
            .cloned();
        Ok(match token {
            Some(token) => {
                state.unindex(user_id, session_id);
                state.remove(&token, now_ms)
            }
            None => false,
        })
    }

    async fn revoke_all_except(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let now_ms = now_ms();
        let mut state = self.state();
        let entries: Vec<(Uuid, TokenHash)> = state
            .users
            .get(&user_id)
            .map(|index| {
                index
                    .iter()
                    .map(|(id, token)| (*id, token.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let epoch = state.epoch(user_id).wrapping_add(1);
        state.epochs.insert(user_id, (epoch, Instant::now()));
        let mut ended = Vec::new();
        for (session_id, token) in entries {
            if Some(session_id) == keep {
                continue;
            }
            state.unindex(user_id, session_id);
            if state.remove(&token, now_ms) {
                ended.push(session_id);
            }
        }
        Ok(ended)
    }

    async fn set_roles(&self, user_id: Uuid, roles: &[String]) -> Result<usize, StoreError> {
        let mut state = self.state();
        let epoch = state.epoch(user_id).wrapping_add(1);
        state.epochs.insert(user_id, (epoch, Instant::now()));
        let tokens: Vec<TokenHash> = state
            .users
            .get(&user_id)
            .map(|index| index.values().cloned().collect())
            .unwrap_or_default();
        let mut updated = 0;
        for token in tokens {
            if let Some(entry) = state.sessions.get_mut(&token) {
                Arc::make_mut(&mut entry.data).roles = roles.to_vec();
                updated += 1;
            }
        }
        Ok(updated)
    }

    async fn live(&self, keys: &[SessionKey]) -> Result<Vec<bool>, StoreError> {
        let now_ms = now_ms();
        let state = self.state();
        Ok(keys
            .iter()
            .map(|key| state.is_live(&key.hash, now_ms))
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}
