//! [`RecordStore`] on Postgres (sqlx). Migrations are embedded from `migrations/postgres`.
//!
//! The pool is created lazily, so the gateway starts (and keeps proxying existing sessions)
//! while Postgres is down; every call is bounded by `storage.database_timeout` and a failure
//! becomes [`StoreError::Unavailable`], which the API answers with 503.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::Row;
use uuid::Uuid;

use super::{
    AuthEvent, Credentials, NewUser, RecordStore, SessionEnd, SessionRecord, StoreError, User,
};
use crate::telemetry::{Metrics, Store};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

const USER_COLUMNS: &str = "id, email, username, full_name, created_at, last_login";

pub struct PostgresStore {
    pool: PgPool,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl PostgresStore {
    /// Builds the pool without connecting. Must run inside the long-lived runtime that will
    /// own the pool's background tasks.
    pub fn connect_lazy(
        url: &str,
        max_connections: u32,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
            .connect_lazy(url)?;
        Ok(Self {
            pool,
            timeout,
            metrics,
        })
    }

    /// Runs one store call with the timeout, metrics and error mapping every call shares.
    async fn call<T>(
        &self,
        operation: &'static str,
        work: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(map_error(error)),
            Err(_) => Err(unavailable(format!("no answer within {:?}", self.timeout))),
        };
        let ok = !matches!(result, Err(StoreError::Unavailable { .. }));
        self.metrics
            .store_call(Store::Postgres, operation, started.elapsed(), ok);
        if let Err(StoreError::Unavailable { detail, .. }) = &result {
            tracing::warn!(operation, error = %detail, "postgres call failed");
        }
        result
    }
}

fn unavailable(detail: String) -> StoreError {
    StoreError::Unavailable {
        store: "postgres",
        detail,
    }
}

fn map_error(error: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &error {
        if db.is_unique_violation() {
            let constraint = db.constraint().unwrap_or_default();
            if constraint.contains("username") {
                return StoreError::Conflict("username");
            }
            if constraint.contains("email") {
                return StoreError::Conflict("email");
            }
        }
    }
    unavailable(error.to_string())
}

fn user_from_row(row: &PgRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        username: row.try_get("username")?,
        full_name: row.try_get("full_name")?,
        created_at: row.try_get("created_at")?,
        last_login: row.try_get("last_login")?,
    })
}

#[async_trait]
impl RecordStore for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        // Not through `call`: a first migration may legitimately take longer than a request.
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| unavailable(format!("migration failed: {e}")))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call("ping", sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map(|_| ())
    }

    async fn create_user(&self, user: &NewUser) -> Result<User, StoreError> {
        let sql = format!(
            "INSERT INTO users (id, email, username, full_name, password_hash) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {USER_COLUMNS}"
        );
        self.call("create_user", async {
            let row = sqlx::query(&sql)
                .bind(Uuid::new_v4())
                .bind(&user.email)
                .bind(&user.username)
                .bind(&user.full_name)
                .bind(&user.password_hash)
                .fetch_one(&self.pool)
                .await?;
            user_from_row(&row)
        })
        .await
    }

    async fn credentials_by_email(&self, email: &str) -> Result<Option<Credentials>, StoreError> {
        let sql =
            format!("SELECT {USER_COLUMNS}, password_hash, is_active FROM users WHERE email = $1");
        self.call("credentials_by_email", async {
            let Some(row) = sqlx::query(&sql)
                .bind(email)
                .fetch_optional(&self.pool)
                .await?
            else {
                return Ok(None);
            };
            Ok(Some(Credentials {
                user: user_from_row(&row)?,
                password_hash: row.try_get("password_hash")?,
                is_active: row.try_get("is_active")?,
            }))
        })
        .await
    }

    async fn user(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        self.call("user", async {
            let row = sqlx::query(&sql)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(user_from_row).transpose()
        })
        .await
    }

    async fn record_login(&self, user_id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.call(
            "record_login",
            sqlx::query(
                "UPDATE users SET last_login = $2, failed_login_attempts = 0, updated_at = $2 \
                 WHERE id = $1",
            )
            .bind(user_id)
            .bind(at)
            .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    async fn record_failed_login(
        &self,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.call(
            "record_failed_login",
            sqlx::query(
                "UPDATE users SET failed_login_attempts = failed_login_attempts + 1, \
                 last_failed_attempt = $2 WHERE id = $1",
            )
            .bind(user_id)
            .bind(at)
            .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    async fn insert_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        self.call(
            "insert_session",
            sqlx::query(
                "INSERT INTO sessions (id, user_id, token_hash, ip, user_agent, created_at, \
                 last_activity, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $6, $7)",
            )
            .bind(session.id)
            .bind(session.user_id)
            .bind(session.token_hash.to_hex())
            .bind(session.ip)
            .bind(&session.user_agent)
            .bind(session.created_at)
            .bind(session.expires_at)
            .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    async fn end_session(
        &self,
        id: Uuid,
        end: SessionEnd,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.call(
            "end_session",
            sqlx::query(
                "UPDATE sessions SET status = $2, ended_at = $3, end_reason = $4 \
                 WHERE id = $1 AND status = 'active'",
            )
            .bind(id)
            .bind(end.status())
            .bind(at)
            .bind(reason)
            .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    async fn record_event(&self, event: &AuthEvent) -> Result<(), StoreError> {
        self.call(
            "record_event",
            sqlx::query(
                "INSERT INTO auth_events (kind, user_id, session_id, ip, user_agent, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(event.kind)
            .bind(event.user_id)
            .bind(event.session_id)
            .bind(event.ip)
            .bind(&event.user_agent)
            .bind(&event.detail)
            .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }
}
