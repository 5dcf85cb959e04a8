//! What the two SQL record stores (`postgres`, `sqlite`) share: every call is bounded by the
//! configured timeout, timed into the store metrics, and its errors are mapped one way — a
//! uniqueness violation names the field that collided (`Conflict("email" | "username")`),
//! anything else is `Unavailable` (503), logged once. A statement that was sent and got no answer
//! within the timeout is `NoAnswer` instead (503 too): it may still be applied, so a change that
//! is not idempotent is not sent again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::StoreError;
use crate::telemetry::{Metrics, Store};

pub(super) struct Calls {
    pub backend: Store,
    pub timeout: Duration,
    pub metrics: Arc<Metrics>,
}

/// How long a call may wait for a pooled connection (or, on SQLite, for the write lock) before
/// it gives up: less than the call's whole timeout, so that a call which timed out while still
/// waiting fails as `Unavailable` (never sent, safe to send again) and `NoAnswer` is left for a
/// statement that was sent. On SQLite a call can wait for both, a connection and then the
/// lock, and so reach its timeout unsent; it is then taken as sent (`NoAnswer`). That errs on
/// the safe side: a count that is not repeated, never one counted twice.
pub fn wait_timeout(timeout: Duration) -> Duration {
    timeout - timeout / 4
}

impl Calls {
    /// Runs one store call with the timeout, metrics and error mapping every call shares.
    pub async fn run<T>(
        &self,
        operation: &'static str,
        work: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.map_error(error)),
            Err(_) => Err(StoreError::NoAnswer {
                store: self.store_name(),
                detail: format!("no answer within {:?}", self.timeout),
            }),
        };
        let ok = !matches!(
            result,
            Err(StoreError::Unavailable { .. } | StoreError::NoAnswer { .. })
        );
        self.metrics
            .store_call(self.backend, operation, started.elapsed(), ok);
        if let Err(StoreError::Unavailable { detail, .. } | StoreError::NoAnswer { detail, .. }) =
            &result
        {
            tracing::warn!(
                operation,
                backend = self.backend.label(),
                error = %detail,
                "database call failed"
            );
        }
        result
    }

    pub fn unavailable(&self, detail: String) -> StoreError {
        StoreError::Unavailable {
            store: self.store_name(),
            detail,
        }
    }

    fn store_name(&self) -> &'static str {
        match self.backend {
            Store::Sqlite => "database (sqlite)",
            _ => "database (postgres)",
        }
    }

    fn map_error(&self, error: sqlx::Error) -> StoreError {
        if let sqlx::Error::Database(db) = &error {
            if db.is_unique_violation() {
                // Postgres names the constraint (`users_email_key`); SQLite names the column in
                // its message ("UNIQUE constraint failed: users.email").
                let source = db
                    .constraint()
                    .map_or_else(|| db.message().to_string(), str::to_string);
                if source.contains("username") {
                    return StoreError::Conflict("username");
                }
                if source.contains("email") {
                    return StoreError::Conflict("email");
                }
            }
        }
        self.unavailable(error.to_string())
    }
}
