//! Write-behind: durable records that must not slow (or fail) the request that caused them.
//!
//! Audit events and session-ended records are queued here without waiting and written by one
//! background task, which retries while Postgres is down. The queue is bounded; when it is
//! full the record is dropped, logged and counted (`authgate_write_behind_dropped_total`)
//! rather than blocking a request.
//!
//! The account stamps of a password check (`last_login`, `failed_login_attempts`) are written
//! by the request itself, so that what it answered is in the database when it answers; only
//! one the database did not take then is queued here, to be written once it is back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{AuthEvent, RecordStore, SessionEnd, StoreError};
use crate::telemetry::Metrics;

const QUEUE_CAPACITY: usize = 4096;
const RETRY_DELAY: Duration = Duration::from_secs(1);
const MAX_ATTEMPTS: u32 = 30;

#[derive(Debug)]
enum Record {
    Event(AuthEvent),
    SessionsEnded {
        ids: Vec<Uuid>,
        end: SessionEnd,
        reason: &'static str,
        at: DateTime<Utc>,
    },
    Account(AccountWrite),
}

/// What a password check writes to the account's row ([`RecordStore::record_login`] and
/// [`RecordStore::record_failed_login`]). A count and its reset, so not written twice: a
/// statement that was sent and got no answer ([`StoreError::NoAnswer`]) may still land and is
/// not repeated. (A connection that breaks after the statement went out is reported as
/// `Unavailable` and can, rarely, count one failure twice.)
#[derive(Debug, Clone, Copy)]
pub enum AccountWrite {
    Login { user_id: Uuid, at: DateTime<Utc> },
    FailedLogin { user_id: Uuid, at: DateTime<Utc> },
}

impl AccountWrite {
    async fn write(self, records: &dyn RecordStore) -> Result<(), StoreError> {
        match self {
            AccountWrite::Login { user_id, at } => records.record_login(user_id, at).await,
            AccountWrite::FailedLogin { user_id, at } => {
                records.record_failed_login(user_id, at).await
            }
        }
    }
}

#[derive(Clone)]
pub struct WriteBehind {
    sender: mpsc::Sender<Record>,
    /// Records queued or being written.
    pending: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    records: Arc<dyn RecordStore>,
}

impl WriteBehind {
    /// The handle, and the writer future to spawn on a long-lived runtime.
    pub fn new(
        records: Arc<dyn RecordStore>,
        metrics: Arc<Metrics>,
    ) -> (WriteBehind, impl std::future::Future<Output = ()>) {
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let pending = Arc::new(AtomicUsize::new(0));
        let writer = run(receiver, records.clone(), pending.clone());
        (
            WriteBehind {
                sender,
                pending,
                metrics,
                records,
            },
            writer,
        )
    }

    pub fn event(&self, event: AuthEvent) {
        self.send(Record::Event(event));
    }

    /// Writes `write` now; when that fails before the statement was sent, queues it to be
    /// written again (behind what is already queued).
    pub async fn account(&self, write: AccountWrite) {
        match write.write(self.records.as_ref()).await {
            Ok(()) => {}
            Err(error @ StoreError::NoAnswer { .. }) => {
                tracing::warn!(%error, ?write, "account stamp sent without an answer; not repeated");
            }
            Err(error) => {
                tracing::warn!(%error, ?write, "account stamp not written yet; queued");
                self.send(Record::Account(write));
            }
        }
    }

    pub fn sessions_ended(&self, ids: Vec<Uuid>, end: SessionEnd, reason: &'static str) {
        if ids.is_empty() {
            return;
        }
        self.send(Record::SessionsEnded {
            ids,
            end,
            reason,
            at: Utc::now(),
        });
    }

    /// Waits until everything queued so far is written (or `timeout` passes); for shutdown.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.pending.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn send(&self, record: Record) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if let Err(error) = self.sender.try_send(record) {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.metrics.write_behind_dropped();
            tracing::error!(record = ?error.into_inner(), "write-behind queue full; record dropped");
        }
    }
}

async fn run(
    mut receiver: mpsc::Receiver<Record>,
    records: Arc<dyn RecordStore>,
    pending: Arc<AtomicUsize>,
) {
    while let Some(record) = receiver.recv().await {
        let mut attempt = 1;
        loop {
            match write(records.as_ref(), &record).await {
                Ok(()) => break,
                Err(error @ StoreError::NoAnswer { .. })
                    if matches!(record, Record::Account(_)) =>
                {
                    tracing::warn!(%error, ?record, "account stamp sent without an answer; not repeated");
                    break;
                }
                Err(error) if attempt < MAX_ATTEMPTS => {
                    tracing::warn!(%error, attempt, "write-behind record not written yet; retrying");
                    attempt += 1;
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                Err(error) => {
                    tracing::error!(%error, ?record, "write-behind record dropped after retries");
                    break;
                }
            }
        }
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn write(records: &dyn RecordStore, record: &Record) -> Result<(), StoreError> {
    match record {
        Record::Event(event) => records.record_event(event).await,
        Record::SessionsEnded {
            ids,
            end,
            reason,
            at,
        } => records
            .end_sessions(ids, *end, reason, *at)
            .await
            .map(|_| ()),
        Record::Account(write) => write.write(records).await,
    }
}
