//! [`RecordStore`] on Postgres (sqlx). Migrations are embedded from `migrations/postgres`.
//!
//! The pool is created lazily, so the gateway starts (and keeps proxying existing sessions)
//! while Postgres is down; every call is bounded by `storage.database_timeout` and a failure
//! becomes [`StoreError::Unavailable`], which the API answers with 503.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{FromRow, Row};
use uuid::Uuid;

use super::sql::{self, Calls};
use super::{
    split_roles, Account, ActiveRecord, Activity, AuthEvent, Credentials, Device, IpRecord,
    NewUser, RecordStore, SessionEnd, SessionRecord, StoreError, StoredSigningKey, User,
};
use crate::model::TokenHash;
use crate::telemetry::{Metrics, Store};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

const USER_COLUMNS: &str = "id, email, username, full_name, created_at, last_login";

pub struct PostgresStore {
    pool: PgPool,
    calls: Calls,
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
            .acquire_timeout(sql::wait_timeout(timeout))
            .connect_lazy(url)?;
        Ok(Self {
            pool,
            calls: Calls {
                backend: Store::Postgres,
                timeout,
                metrics,
            },
        })
    }
}

#[async_trait]
impl RecordStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // Not through `call`: a first migration may legitimately take longer than a request.
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| self.calls.unavailable(format!("migration failed: {e}")))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.calls
            .run("ping", sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map(|_| ())
    }

    async fn create_user(&self, user: &NewUser) -> Result<User, StoreError> {
        let sql = format!(
            "INSERT INTO users (id, email, username, full_name, password_hash) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {USER_COLUMNS}"
        );
        self.calls
            .run("create_user", async {
                let row = sqlx::query(&sql)
                    .bind(Uuid::new_v4())
                    .bind(&user.email)
                    .bind(&user.username)
                    .bind(&user.full_name)
                    .bind(&user.password_hash)
                    .fetch_one(&self.pool)
                    .await?;
                User::from_row(&row)
            })
            .await
    }

    async fn credentials_by_email(&self, email: &str) -> Result<Option<Credentials>, StoreError> {
        let sql =
            format!("SELECT {USER_COLUMNS}, password_hash, is_active FROM users WHERE email = $1");
        self.calls
            .run("credentials_by_email", async {
                let Some(row) = sqlx::query(&sql)
                    .bind(email)
                    .fetch_optional(&self.pool)
                    .await?
                else {
                    return Ok(None);
                };
                Ok(Some(Credentials {
                    user: User::from_row(&row)?,
                    password_hash: row.try_get("password_hash")?,
                    is_active: row.try_get("is_active")?,
                }))
            })
            .await
    }

    async fn user(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        self.calls
            .run("user", async {
                let row = sqlx::query(&sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(User::from_row).transpose()
            })
            .await
    }

    async fn record_login(&self, user_id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.calls
            .run(
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
        self.calls
            .run(
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
        self.calls.run(
            "insert_session",
            sqlx::query(
                "INSERT INTO sessions (id, user_id, token_hash, ip, user_agent, device_id, ip_id, \
                 location, created_at, last_activity, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)",
            )
            .bind(session.id)
            .bind(session.user_id)
            .bind(session.token_hash.to_hex())
            .bind(session.ip)
            .bind(&session.user_agent)
            .bind(session.device_id)
            .bind(session.ip_id)
            .bind(&session.location)
            .bind(session.created_at)
            .bind(session.expires_at)
            .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    async fn record_event(&self, event: &AuthEvent) -> Result<(), StoreError> {
        self.calls
            .run(
                "record_event",
                sqlx::query(
                    "INSERT INTO auth_events (kind, user_id, session_id, ip, user_agent, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(event.kind.as_str())
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

    async fn upsert_device(
        &self,
        user_id: Uuid,
        user_agent: &str,
        label: &str,
        at: DateTime<Utc>,
    ) -> Result<Uuid, StoreError> {
        self.calls.run(
            "upsert_device",
            sqlx::query_scalar(
                "INSERT INTO devices (id, user_id, user_agent, user_agent_hash, label, first_seen, \
                 last_seen) VALUES ($1, $2, $3, $4, $5, $6, $6) \
                 ON CONFLICT (user_id, user_agent_hash) DO UPDATE SET last_seen = EXCLUDED.last_seen \
                 RETURNING id",
            )
            .bind(Uuid::new_v4())
            .bind(user_id)
            .bind(user_agent)
            .bind(crate::device::user_agent_hash(user_agent))
            .bind(label)
            .bind(at)
            .fetch_one(&self.pool),
        )
        .await
    }

    async fn upsert_ip(
        &self,
        user_id: Uuid,
        address: IpAddr,
        location: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<Uuid, StoreError> {
        self.calls.run(
            "upsert_ip",
            sqlx::query_scalar(
                "INSERT INTO ip_addresses (id, user_id, address, location, first_seen, last_seen) \
                 VALUES ($1, $2, $3, $4, $5, $5) \
                 ON CONFLICT (user_id, address) DO UPDATE SET last_seen = EXCLUDED.last_seen, \
                 location = COALESCE(EXCLUDED.location, ip_addresses.location) \
                 RETURNING id",
            )
            .bind(Uuid::new_v4())
            .bind(user_id)
            .bind(address)
            .bind(location)
            .bind(at)
            .fetch_one(&self.pool),
        )
        .await
    }

    async fn devices(&self, user_id: Uuid) -> Result<Vec<Device>, StoreError> {
        self.calls
            .run(
                "devices",
                sqlx::query_as(
                    "SELECT id, label, user_agent, first_seen, last_seen FROM devices \
                 WHERE user_id = $1 ORDER BY last_seen DESC",
                )
                .bind(user_id)
                .fetch_all(&self.pool),
            )
            .await
    }

    async fn ips(&self, user_id: Uuid) -> Result<Vec<IpRecord>, StoreError> {
        self.calls
            .run(
                "ips",
                sqlx::query_as(
                    "SELECT id, address, location, first_seen, last_seen FROM ip_addresses \
                 WHERE user_id = $1 ORDER BY last_seen DESC",
                )
                .bind(user_id)
                .fetch_all(&self.pool),
            )
            .await
    }

    async fn set_password_hash(&self, user_id: Uuid, hash: &str) -> Result<(), StoreError> {
        self.calls
            .run(
                "set_password_hash",
                sqlx::query(
                    "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1",
                )
                .bind(user_id)
                .bind(hash)
                .execute(&self.pool),
            )
            .await
            .map(|_| ())
    }

    async fn end_sessions(
        &self,
        ids: &[Uuid],
        end: SessionEnd,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.calls
            .run(
                "end_sessions",
                sqlx::query(
                    "UPDATE sessions SET status = $2, ended_at = $3, end_reason = $4 \
                 WHERE id = ANY($1) AND status = 'active'",
                )
                .bind(ids)
                .bind(end.status())
                .bind(at)
                .bind(reason)
                .execute(&self.pool),
            )
            .await
            .map(|result| result.rows_affected())
    }

    async fn record_activity(&self, batch: &[Activity]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let sessions: Vec<Uuid> = batch.iter().map(|a| a.session_id).collect();
        let devices: Vec<Option<Uuid>> = batch.iter().map(|a| a.device_id).collect();
        let ips: Vec<Option<Uuid>> = batch.iter().map(|a| a.ip_id).collect();
        let times: Vec<DateTime<Utc>> = batch.iter().map(|a| a.at).collect();
        // One statement per table, each a single UPDATE ... FROM unnest(...).
        self.calls
            .run("record_activity", async {
                let mut transaction = self.pool.begin().await?;
                sqlx::query(
                    "UPDATE sessions s SET last_activity = GREATEST(s.last_activity, b.at) \
                 FROM unnest($1::uuid[], $2::timestamptz[]) AS b(id, at) WHERE s.id = b.id",
                )
                .bind(&sessions)
                .bind(&times)
                .execute(&mut *transaction)
                .await?;
                sqlx::query(
                    "UPDATE devices d SET last_seen = GREATEST(d.last_seen, b.at) \
                 FROM (SELECT id, max(at) AS at FROM unnest($1::uuid[], $2::timestamptz[]) \
                 AS u(id, at) WHERE id IS NOT NULL GROUP BY id) b WHERE d.id = b.id",
                )
                .bind(&devices)
                .bind(&times)
                .execute(&mut *transaction)
                .await?;
                sqlx::query(
                    "UPDATE ip_addresses i SET last_seen = GREATEST(i.last_seen, b.at) \
                 FROM (SELECT id, max(at) AS at FROM unnest($1::uuid[], $2::timestamptz[]) \
                 AS u(id, at) WHERE id IS NOT NULL GROUP BY id) b WHERE i.id = b.id",
                )
                .bind(&ips)
                .bind(&times)
                .execute(&mut *transaction)
                .await?;
                transaction.commit().await
            })
            .await
    }

    async fn active_sessions(
        &self,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<ActiveRecord>, StoreError> {
        self.calls
            .run("active_sessions", async {
                let rows = sqlx::query(
                    "SELECT id, user_id, token_hash, expires_at FROM sessions WHERE status = 'active' \
                 AND ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
                )
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                let mut records = Vec::with_capacity(rows.len());
                for row in &rows {
                    let hash: String = row.try_get("token_hash")?;
                    let Some(token_hash) = TokenHash::from_hex(&hash) else {
                        continue;
                    };
                    records.push(ActiveRecord {
                        id: row.try_get("id")?,
                        user_id: row.try_get("user_id")?,
                        token_hash,
                        expires_at: row.try_get("expires_at")?,
                    });
                }
                Ok(records)
            })
            .await
    }

    async fn purge_ended_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.calls
            .run(
                "purge_ended_sessions",
                sqlx::query("DELETE FROM sessions WHERE status <> 'active' AND ended_at < $1")
                    .bind(before)
                    .execute(&self.pool),
            )
            .await
            .map(|result| result.rows_affected())
    }

    async fn count_active_sessions(&self) -> Result<i64, StoreError> {
        self.calls
            .run(
                "count_active_sessions",
                sqlx::query_scalar("SELECT count(*) FROM sessions WHERE status = 'active'")
                    .fetch_one(&self.pool),
            )
            .await
    }
    async fn signing_keys(
        &self,
        retired_after: DateTime<Utc>,
    ) -> Result<Vec<StoredSigningKey>, StoreError> {
        self.calls
            .run("signing_keys", async {
                let rows = sqlx::query(
                    "SELECT kid, algorithm, private_key, created_at, retired_at FROM signing_keys \
                     WHERE retired_at IS NULL OR retired_at > $1 ORDER BY created_at DESC, kid",
                )
                .bind(retired_after)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(StoredSigningKey {
                            kid: row.try_get("kid")?,
                            algorithm: row.try_get("algorithm")?,
                            private_key: row.try_get("private_key")?,
                            created_at: row.try_get("created_at")?,
                            retired_at: row.try_get("retired_at")?,
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn add_signing_key(&self, key: &StoredSigningKey) -> Result<bool, StoreError> {
        self.calls
            .run(
                "add_signing_key",
                sqlx::query(
                    "INSERT INTO signing_keys (kid, algorithm, private_key, created_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(&key.kid)
                .bind(&key.algorithm)
                .bind(&key.private_key)
                .bind(key.created_at)
                .execute(&self.pool),
            )
            .await
            .map(|result| result.rows_affected() == 1)
    }

    async fn rotate_signing_keys(
        &self,
        key: &StoredSigningKey,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.calls
            .run("rotate_signing_keys", async {
                let mut transaction = self.pool.begin().await?;
                let retired =
                    sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
                        .bind(at)
                        .execute(&mut *transaction)
                        .await?
                        .rows_affected();
                sqlx::query(
                    "INSERT INTO signing_keys (kid, algorithm, private_key, created_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(&key.kid)
                .bind(&key.algorithm)
                .bind(&key.private_key)
                .bind(key.created_at)
                .execute(&mut *transaction)
                .await?;
                transaction.commit().await?;
                Ok(retired)
            })
            .await
    }

    async fn list_users(&self) -> Result<Vec<Account>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS}, is_active, (SELECT string_agg(role, ',' ORDER BY role) \
             FROM user_roles r WHERE r.user_id = users.id) AS roles \
             FROM users ORDER BY created_at, id"
        );
        self.calls
            .run("list_users", async {
                let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|row| {
                        Ok(Account {
                            user: User::from_row(row)?,
                            is_active: row.try_get("is_active")?,
                            roles: split_roles(row.try_get("roles")?),
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn set_user_active(&self, user_id: Uuid, active: bool) -> Result<bool, StoreError> {
        self.calls
            .run(
                "set_user_active",
                sqlx::query("UPDATE users SET is_active = $2, updated_at = now() WHERE id = $1")
                    .bind(user_id)
                    .bind(active)
                    .execute(&self.pool),
            )
            .await
            .map(|result| result.rows_affected() > 0)
    }

    async fn user_roles(&self, user_id: Uuid) -> Result<Vec<String>, StoreError> {
        self.calls
            .run(
                "user_roles",
                sqlx::query_scalar("SELECT role FROM user_roles WHERE user_id = $1 ORDER BY role")
                    .bind(user_id)
                    .fetch_all(&self.pool),
            )
            .await
    }

    async fn add_user_role(&self, user_id: Uuid, role: &str) -> Result<bool, StoreError> {
        self.calls
            .run(
                "add_user_role",
                sqlx::query(
                    "INSERT INTO user_roles (user_id, role) VALUES ($1, $2) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(user_id)
                .bind(role)
                .execute(&self.pool),
            )
            .await
            .map(|result| result.rows_affected() > 0)
    }

    async fn remove_user_role(&self, user_id: Uuid, role: &str) -> Result<bool, StoreError> {
        self.calls
            .run(
                "remove_user_role",
                sqlx::query("DELETE FROM user_roles WHERE user_id = $1 AND role = $2")
                    .bind(user_id)
                    .bind(role)
                    .execute(&self.pool),
            )
            .await
            .map(|result| result.rows_affected() > 0)
    }
}
