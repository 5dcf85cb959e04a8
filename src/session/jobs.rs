//! Background session housekeeping, run on the long-lived background runtime:
//! - the slide flush writes behind the activity of sessions the local cache answered for;
//! - the activity flush writes what [`ActivityTracker`] gathered to Postgres in one batch per
//!   interval;
//! - the expiry job marks `expired` the session records whose live session is gone from the
//!   store (idle or absolute timeout), purges ended records past retention, and refreshes the
//!   active-sessions gauge. If the session store cannot be asked, nothing is marked: an outage
//!   must never look like mass expiry. A record must be found without a live session in two
//!   consecutive passes: a logout, revocation or eviction removes the live session at once but
//!   reaches Postgres a moment later (write-behind), and must keep its own ending.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use chrono::Utc;

use super::activity::ActivityTracker;
use super::cache::{Entry, SessionCache};
use super::{SessionStore, Sessions};
use crate::model::StoreError;
use crate::session::{EndReason, SessionKey, SlotTag};
use crate::store::RecordStore;
use crate::telemetry::Metrics;

const EXPIRY_BATCH: i64 = 500;

/// Writes behind the activity of sessions the local cache answered for (see `cache.rs`), every
/// [`SlideSchedule::every`](super::cache::SlideSchedule): one slide per session with activity
/// Redis does not have yet, all at once on the multiplexed connection. A session Redis no
/// longer has leaves the cache; a failed slide is tried again next time (and the cache stops
/// answering for the session before the expiry Redis holds runs out).
pub async fn slide_cached(cache: Arc<SessionCache>, store: Arc<dyn SessionStore>, idle: Duration) {
    let mut tick = tokio::time::interval(cache.schedule().every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        write_slides(&cache, store.as_ref(), cache.pending_slides(), idle).await;
    }
}

/// Writes these cached sessions' pending activity to the store, all at once; a session the
/// store no longer has leaves the cache, and a failed write is left to the next flush.
pub async fn write_slides(
    cache: &SessionCache,
    store: &dyn SessionStore,
    entries: Vec<Arc<Entry>>,
    idle: Duration,
) {
    if entries.is_empty() {
        return;
    }
    let now_ms = Utc::now().timestamp_millis();
    let slides = entries.iter().filter_map(|entry| {
        let activity_ms = entry.pending_slide()?;
        Some(async move {
            let outcome = store.slide(&entry.key, activity_ms, now_ms, idle).await;
            (entry, activity_ms, outcome)
        })
    });
    for (entry, activity_ms, outcome) in futures::future::join_all(slides).await {
        match outcome {
            Ok(Some(expiry_ms)) => entry.slid(activity_ms, expiry_ms),
            Ok(None) => cache.remove(&entry.key),
            Err(error) => {
                tracing::debug!(%error, "cannot write a cached session's activity");
            }
        }
    }
}

pub async fn flush_activity(
    tracker: Arc<ActivityTracker>,
    records: Arc<dyn RecordStore>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let batch = tracker.drain();
        if batch.is_empty() {
            continue;
        }
        if let Err(error) = records.record_activity(&batch).await {
            // Activity is advisory: a lost batch only makes "last used" a little older.
            tracing::warn!(%error, sessions = batch.len(), "cannot write session activity");
        }
    }
}

pub struct ExpiryJob {
    pub records: Arc<dyn RecordStore>,
    /// Set once migrations ran; passes before that are skipped.
    pub database_ready: Arc<AtomicBool>,
    pub sessions: Arc<Sessions>,
    pub metrics: Arc<Metrics>,
    pub interval: Duration,
    pub retention: Duration,
}

impl ExpiryJob {
    pub async fn run(self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Records found without a live session in the previous pass.
        let mut suspects = HashSet::new();
        loop {
            tick.tick().await;
            if !self.database_ready.load(Ordering::Acquire) {
                continue;
            }
            match self.run_once(&suspects).await {
                Ok(still_dead) => suspects = still_dead,
                Err(error) => tracing::warn!(%error, "session expiry pass skipped"),
            }
        }
    }

    /// One pass; returns the records seen dead for the first time (the next pass's suspects).
    async fn run_once(&self, suspects: &HashSet<Uuid>) -> Result<HashSet<Uuid>, StoreError> {
        let now = Utc::now();
        let mut first_seen_dead = HashSet::new();
        let mut after = None;
        loop {
            let batch = self.records.active_sessions(after, EXPIRY_BATCH).await?;
            let Some(last) = batch.last() else {
                break;
            };
            after = Some(last.id);
            let keys: Vec<_> = batch
                .iter()
                .map(|record| SessionKey {
                    tag: SlotTag::of_user(record.user_id),
                    hash: record.token_hash.clone(),
                })
                .collect();
            let live = self.sessions.live(&keys).await?;
            let (mut absolute, mut idle) = (Vec::new(), Vec::new());
            for (record, live) in batch.iter().zip(live) {
                if live {
                    continue;
                }
                if !suspects.contains(&record.id) {
                    first_seen_dead.insert(record.id);
                    continue;
                }
                if record.expires_at <= now {
                    absolute.push(record.id);
                } else {
                    idle.push(record.id);
                }
            }
            for (ids, reason) in [
                (absolute, EndReason::AbsoluteTimeout),
                (idle, EndReason::IdleTimeout),
            ] {
                if ids.is_empty() {
                    continue;
                }
                // Written here rather than behind, to count only the records it changed.
                let expired = self
                    .records
                    .end_sessions(&ids, reason.status(), reason.as_str(), now)
                    .await?;
                for _ in 0..expired {
                    self.metrics.session_ended(reason.metric());
                }
            }
        }
        let retention = chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = now.checked_sub_signed(retention).unwrap_or(now);
        let purged = self.records.purge_ended_sessions(cutoff).await?;
        if purged > 0 {
            tracing::info!(purged, "purged ended session records");
        }
        let active = self.records.count_active_sessions().await?;
        self.metrics.active_sessions(active);
        Ok(first_seen_dead)
    }
}
