//! [`RecordStore`] on SQLite (sqlx, SQLite compiled in): the embedded mode's database, one file.
//!
//! Owns: the file's connection pool and the pragmas that keep the file safe (WAL journal,
//! `synchronous = FULL`, foreign keys, a busy timeout), the single-instance lock file beside it
//! (`<file>.lock`, held for as long as the store lives), the SQLite schema (embedded from
//! `migrations/sqlite`) and the translation of Postgres types into SQLite's (UUIDs, times and
//! addresses as TEXT; the forms are described at the top of the first migration).
//!
//! Must not: let a second gateway open the same file (the lock refuses it: several gateways
//! need Postgres and Redis; an operator command that changes a few rows may, see
//! [`SqliteStore::open_for_command`]); differ from `postgres.rs` in anything a caller can
//! observe (the store contract tests run one set of cases against both); block the async
//! runtime (sqlx runs each SQLite connection on its own worker thread).
//!
//! Why `synchronous = FULL` rather than NORMAL: in WAL mode both survive a crashed or killed
//! process without corruption or loss, since a commit is in the WAL (in the OS page cache)
//! before the call returns. They differ on power loss or a kernel crash: NORMAL may then roll
//! back the last commits, FULL fsyncs the WAL at every commit so that an account confirmed with
//! 201 still exists. The price is one fsync per commit, small next to the bcrypt hash that
//! every register and login already waits for.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;
use uuid::Uuid;

use super::sql::{self, Calls};
use super::{
    split_roles, Account, ActiveRecord, Activity, AuthEvent, Credentials, Device, IpRecord,
    NewUser, RecordStore, SessionEnd, SessionRecord, StoreError, StoredSigningKey, User,
};
use crate::model::TokenHash;
use crate::telemetry::{Metrics, Store};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const USER_COLUMNS: &str = "id, email, username, full_name, created_at, last_login";

/// Why the file could not be opened. The messages are for the operator starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "another authgate process{holder} is using sqlite file {database} (lock file {lock} is \
         held); the embedded mode runs one instance — use Postgres and Redis to run several",
        holder = holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
        database = database.display(),
        lock = lock.display()
    )]
    Locked {
        database: PathBuf,
        lock: PathBuf,
        /// The pid the holder wrote into the lock file, when it could be read.
        holder: Option<u32>,
    },
    #[error("cannot use lock file {} for sqlite file {}: {source}", lock.display(), database.display())]
    LockFile {
        database: PathBuf,
        lock: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open sqlite file {}: {source}", database.display())]
    Open {
        database: PathBuf,
        source: sqlx::Error,
    },
    #[error(
        "sqlite file {} stays in journal mode \"{mode}\": WAL is required (is it on a network \
         file system?)",
        database.display()
    )]
    NotWal { database: PathBuf, mode: String },
}

pub struct SqliteStore {
    pool: SqlitePool,
    calls: Calls,
    /// Holds the advisory lock for as long as the store lives; the kernel releases it when
    /// the process ends, however it ends (so a SIGKILL leaves no stale lock behind). `None`
    /// for an operator command ([`SqliteStore::open_for_command`]).
    _lock: Option<File>,
}

/// `<database>.lock`, beside the database file.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the single-instance lock, or says who holds it. The lock file is never deleted:
/// removing it while another process opens it would let two processes lock two different files.
fn take_lock(database: &Path) -> Result<File, OpenError> {
    let lock = lock_path(database);
    let lock_error = |source| OpenError::LockFile {
        database: database.to_path_buf(),
        lock: lock.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(lock_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let holder = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(OpenError::Locked {
                database: database.to_path_buf(),
                lock,
                holder,
            });
        }
        Err(TryLockError::Error(source)) => return Err(lock_error(source)),
    }
    // Our pid, for the message a refused second process prints; best effort, since the lock
    // itself is what protects the file.
    let pid = std::process::id().to_string();
    let _ = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(pid.as_bytes()));
    Ok(file)
}

impl SqliteStore {
    /// Takes the lock, opens (creating if missing) the file and checks it is in WAL mode.
    /// Must run inside the long-lived runtime that will own the pool's background tasks.
    pub async fn open(
        database: &Path,
        max_connections: u32,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, OpenError> {
        let lock = take_lock(database)?;
        Self::connect(database, max_connections, timeout, metrics, Some(lock)).await
    }

    /// For an operator command that changes a few rows and exits (`authgate assertion
    /// rotate`), possibly while the gateway runs on the file: without the single-instance
    /// lock, which keeps a second *gateway* (with in-process sessions of its own) off the file.
    /// SQLite's own locking (WAL, the busy timeout) keeps the two processes' writes safe.
    pub async fn open_for_command(
        database: &Path,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, OpenError> {
        Self::connect(database, 1, timeout, metrics, None).await
    }

    async fn connect(
        database: &Path,
        max_connections: u32,
        timeout: Duration,
        metrics: Arc<Metrics>,
        lock: Option<File>,
    ) -> Result<Self, OpenError> {
        let open_error = |source| OpenError::Open {
            database: database.to_path_buf(),
            source,
        };
        let options = SqliteConnectOptions::new()
            .filename(database)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Only this process's own connections contend for the file: a writer waits for
            // another to commit, for as long as a caller would wait for a connection (see
            // `sql::wait_timeout`).
            .busy_timeout(sql::wait_timeout(timeout));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(sql::wait_timeout(timeout))
            // Eager, unlike Postgres: a local file that cannot be opened (missing directory,
            // permissions) will not heal by itself, so it is a start-up error.
            .connect_with(options)
            .await
            .map_err(open_error)?;
        // SQLite answers a refused journal-mode change by keeping the old mode, silently.
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .map_err(open_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            pool.close().await;
            return Err(OpenError::NotWal {
                database: database.to_path_buf(),
                mode,
            });
        }
        Ok(Self {
            pool,
            calls: Calls {
                backend: Store::Sqlite,
                timeout,
                metrics,
            },
            _lock: lock,
        })
    }

    /// Closes every connection (checkpointing the WAL into the file), then releases the lock.
    pub async fn close(self) {
        self.pool.close().await;
    }
}

// --- how values are stored -------------------------------------------------------------------

/// UTC, RFC 3339, exactly six fraction digits: fixed width, so comparing the text compares the
/// times (`<`, `ORDER BY`, `max()` behave as on Postgres's timestamptz), and microseconds are
/// what Postgres keeps, so both backends hand back the same value.
fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Lower-case hyphenated, whose text order is Postgres's uuid order (for `active_sessions`).
fn id(value: Uuid) -> String {
    value.hyphenated().to_string()
}

fn decode_error(
    column: &str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: Box::new(error),
    }
}

fn parse_id(column: &str, text: &str) -> Result<Uuid, sqlx::Error> {
    Uuid::parse_str(text).map_err(|e| decode_error(column, e))
}

fn parse_time(column: &str, text: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| decode_error(column, e))
}

fn get_id(row: &SqliteRow, column: &str) -> Result<Uuid, sqlx::Error> {
    parse_id(column, &row.try_get::<String, _>(column)?)
}

fn get_time(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    parse_time(column, &row.try_get::<String, _>(column)?)
}

fn get_optional_time(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    row.try_get::<Option<String>, _>(column)?
        .map(|text| parse_time(column, &text))
        .transpose()
}

fn user_from_row(row: &SqliteRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: get_id(row, "id")?,
        email: row.try_get("email")?,
        username: row.try_get("username")?,
        full_name: row.try_get("full_name")?,
        created_at: get_time(row, "created_at")?,
        last_login: get_optional_time(row, "last_login")?,
    })
}

#[async_trait]
impl RecordStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
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
            "INSERT INTO users (id, email, username, full_name, password_hash, created_at, \
             updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) RETURNING {USER_COLUMNS}"
        );
        self.calls
            .run("create_user", async {
                let row = sqlx::query(&sql)
                    .bind(id(Uuid::new_v4()))
                    .bind(&user.email)
                    .bind(&user.username)
                    .bind(&user.full_name)
                    .bind(&user.password_hash)
                    .bind(time(Utc::now()))
                    .fetch_one(&self.pool)
                    .await?;
                user_from_row(&row)
            })
            .await
    }

    async fn credentials_by_email(&self, email: &str) -> Result<Option<Credentials>, StoreError> {
        let sql =
            format!("SELECT {USER_COLUMNS}, password_hash, is_active FROM users WHERE email = ?1");
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
                    user: user_from_row(&row)?,
                    password_hash: row.try_get("password_hash")?,
                    is_active: row.try_get("is_active")?,
                }))
            })
            .await
    }

    async fn user(&self, user_id: Uuid) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1");
        self.calls
            .run("user", async {
                let row = sqlx::query(&sql)
                    .bind(id(user_id))
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(user_from_row).transpose()
            })
            .await
    }

    async fn record_login(&self, user_id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.calls
            .run(
                "record_login",
                sqlx::query(
                    "UPDATE users SET last_login = ?2, failed_login_attempts = 0, updated_at = ?2 \
                 WHERE id = ?1",
                )
                .bind(id(user_id))
                .bind(time(at))
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
                 last_failed_attempt = ?2 WHERE id = ?1",
                )
                .bind(id(user_id))
                .bind(time(at))
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
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)",
            )
            .bind(id(session.id))
            .bind(id(session.user_id))
            .bind(session.token_hash.to_hex())
            .bind(session.ip.to_string())
            .bind(&session.user_agent)
            .bind(session.device_id.map(id))
            .bind(session.ip_id.map(id))
            .bind(&session.location)
            .bind(time(session.created_at))
            .bind(time(session.expires_at))
            .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    async fn record_event(&self, event: &AuthEvent) -> Result<(), StoreError> {
        self.calls.run(
            "record_event",
            sqlx::query(
                "INSERT INTO auth_events (at, kind, user_id, session_id, ip, user_agent, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(time(Utc::now()))
            .bind(event.kind.as_str())
            .bind(event.user_id.map(id))
            .bind(event.session_id.map(id))
            .bind(event.ip.map(|ip| ip.to_string()))
            .bind(&event.user_agent)
            .bind(event.detail.to_string())
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
        self.calls.run("upsert_device", async {
            let device: String = sqlx::query_scalar(
                "INSERT INTO devices (id, user_id, user_agent, user_agent_hash, label, first_seen, \
                 last_seen) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) \
                 ON CONFLICT (user_id, user_agent_hash) DO UPDATE SET last_seen = excluded.last_seen \
                 RETURNING id",
            )
            .bind(id(Uuid::new_v4()))
            .bind(id(user_id))
            .bind(user_agent)
            .bind(crate::device::user_agent_hash(user_agent))
            .bind(label)
            .bind(time(at))
            .fetch_one(&self.pool)
            .await?;
            parse_id("id", &device)
        })
        .await
    }

    async fn upsert_ip(
        &self,
        user_id: Uuid,
        address: IpAddr,
        location: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<Uuid, StoreError> {
        self.calls
            .run("upsert_ip", async {
                let ip: String = sqlx::query_scalar(
                "INSERT INTO ip_addresses (id, user_id, address, location, first_seen, last_seen) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
                 ON CONFLICT (user_id, address) DO UPDATE SET last_seen = excluded.last_seen, \
                 location = COALESCE(excluded.location, ip_addresses.location) \
                 RETURNING id",
            )
            .bind(id(Uuid::new_v4()))
            .bind(id(user_id))
            .bind(address.to_string())
            .bind(location)
            .bind(time(at))
            .fetch_one(&self.pool)
            .await?;
                parse_id("id", &ip)
            })
            .await
    }

    async fn devices(&self, user_id: Uuid) -> Result<Vec<Device>, StoreError> {
        self.calls
            .run("devices", async {
                let rows = sqlx::query(
                    "SELECT id, label, user_agent, first_seen, last_seen FROM devices \
                 WHERE user_id = ?1 ORDER BY last_seen DESC",
                )
                .bind(id(user_id))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(Device {
                            id: get_id(row, "id")?,
                            label: row.try_get("label")?,
                            user_agent: row.try_get("user_agent")?,
                            first_seen: get_time(row, "first_seen")?,
                            last_seen: get_time(row, "last_seen")?,
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn ips(&self, user_id: Uuid) -> Result<Vec<IpRecord>, StoreError> {
        self.calls
            .run("ips", async {
                let rows = sqlx::query(
                    "SELECT id, address, location, first_seen, last_seen FROM ip_addresses \
                 WHERE user_id = ?1 ORDER BY last_seen DESC",
                )
                .bind(id(user_id))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        let address: String = row.try_get("address")?;
                        Ok(IpRecord {
                            id: get_id(row, "id")?,
                            address: address.parse().map_err(|e| decode_error("address", e))?,
                            location: row.try_get("location")?,
                            first_seen: get_time(row, "first_seen")?,
                            last_seen: get_time(row, "last_seen")?,
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn set_password_hash(&self, user_id: Uuid, hash: &str) -> Result<(), StoreError> {
        self.calls
            .run(
                "set_password_hash",
                sqlx::query("UPDATE users SET password_hash = ?2, updated_at = ?3 WHERE id = ?1")
                    .bind(id(user_id))
                    .bind(hash)
                    .bind(time(Utc::now()))
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
        // SQLite has no arrays: the ids travel as one bound JSON array, read by json_each
        // (Postgres's `= ANY($1)`), so the statement is the same whatever the count.
        let ids = Value::from(ids.iter().map(|&i| id(i)).collect::<Vec<_>>()).to_string();
        self.calls
            .run(
                "end_sessions",
                sqlx::query(
                    "UPDATE sessions SET status = ?2, ended_at = ?3, end_reason = ?4 \
                 WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'active'",
                )
                .bind(ids)
                .bind(end.status())
                .bind(time(at))
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
        // The batch travels as one bound JSON array of [session, device, ip, at] (Postgres
        // unnests arrays); each UPDATE keeps the latest time per row and never moves it back.
        let batch = Value::Array(
            batch
                .iter()
                .map(|a| {
                    Value::from(vec![
                        Value::from(id(a.session_id)),
                        a.device_id.map(id).map_or(Value::Null, Value::from),
                        a.ip_id.map(id).map_or(Value::Null, Value::from),
                        Value::from(time(a.at)),
                    ])
                })
                .collect(),
        )
        .to_string();
        self.calls
            .run("record_activity", async {
                // IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so the
                // transaction cannot fail half-way on upgrading a read lock.
                let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query(
                    "UPDATE sessions SET last_activity = max(sessions.last_activity, b.at) \
                 FROM (SELECT json_extract(value, '$[0]') AS id, \
                 max(json_extract(value, '$[3]')) AS at FROM json_each(?1) GROUP BY 1) AS b \
                 WHERE sessions.id = b.id",
                )
                .bind(&batch)
                .execute(&mut *transaction)
                .await?;
                sqlx::query(
                    "UPDATE devices SET last_seen = max(devices.last_seen, b.at) \
                 FROM (SELECT json_extract(value, '$[1]') AS id, \
                 max(json_extract(value, '$[3]')) AS at FROM json_each(?1) \
                 WHERE json_extract(value, '$[1]') IS NOT NULL GROUP BY 1) AS b \
                 WHERE devices.id = b.id",
                )
                .bind(&batch)
                .execute(&mut *transaction)
                .await?;
                sqlx::query(
                    "UPDATE ip_addresses SET last_seen = max(ip_addresses.last_seen, b.at) \
                 FROM (SELECT json_extract(value, '$[2]') AS id, \
                 max(json_extract(value, '$[3]')) AS at FROM json_each(?1) \
                 WHERE json_extract(value, '$[2]') IS NOT NULL GROUP BY 1) AS b \
                 WHERE ip_addresses.id = b.id",
                )
                .bind(&batch)
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
                 AND (?1 IS NULL OR id > ?1) ORDER BY id LIMIT ?2",
                )
                .bind(after.map(id))
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
                        id: get_id(row, "id")?,
                        user_id: get_id(row, "user_id")?,
                        token_hash,
                        expires_at: get_time(row, "expires_at")?,
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
                sqlx::query("DELETE FROM sessions WHERE status <> 'active' AND ended_at < ?1")
                    .bind(time(before))
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
                     WHERE retired_at IS NULL OR retired_at > ?1 ORDER BY created_at DESC, kid",
                )
                .bind(time(retired_after))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(StoredSigningKey {
                            kid: row.try_get("kid")?,
                            algorithm: row.try_get("algorithm")?,
                            private_key: row.try_get("private_key")?,
                            created_at: get_time(row, "created_at")?,
                            retired_at: get_optional_time(row, "retired_at")?,
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
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                )
                .bind(&key.kid)
                .bind(&key.algorithm)
                .bind(&key.private_key)
                .bind(time(key.created_at))
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
                let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                let retired =
                    sqlx::query("UPDATE signing_keys SET retired_at = ?1 WHERE retired_at IS NULL")
                        .bind(time(at))
                        .execute(&mut *transaction)
                        .await?
                        .rows_affected();
                sqlx::query(
                    "INSERT INTO signing_keys (kid, algorithm, private_key, created_at) \
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .bind(&key.kid)
                .bind(&key.algorithm)
                .bind(&key.private_key)
                .bind(time(key.created_at))
                .execute(&mut *transaction)
                .await?;
                transaction.commit().await?;
                Ok(retired)
            })
            .await
    }

    async fn list_users(&self) -> Result<Vec<Account>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS}, is_active, (SELECT group_concat(role, ',') FROM \
             (SELECT role FROM user_roles r WHERE r.user_id = users.id ORDER BY role)) AS roles \
             FROM users ORDER BY created_at, id"
        );
        self.calls
            .run("list_users", async {
                let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|row| {
                        Ok(Account {
                            user: user_from_row(row)?,
                            is_active: row.try_get::<i64, _>("is_active")? != 0,
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
                sqlx::query("UPDATE users SET is_active = ?2, updated_at = ?3 WHERE id = ?1")
                    .bind(id(user_id))
                    .bind(i64::from(active))
                    .bind(time(Utc::now()))
                    .execute(&self.pool),
            )
            .await
            .map(|result| result.rows_affected() > 0)
    }

    async fn user_roles(&self, user_id: Uuid) -> Result<Vec<String>, StoreError> {
        self.calls
            .run(
                "user_roles",
                sqlx::query_scalar("SELECT role FROM user_roles WHERE user_id = ?1 ORDER BY role")
                    .bind(id(user_id))
                    .fetch_all(&self.pool),
            )
            .await
    }

    async fn add_user_role(&self, user_id: Uuid, role: &str) -> Result<bool, StoreError> {
        self.calls
            .run(
                "add_user_role",
                sqlx::query(
                    "INSERT INTO user_roles (user_id, role, created_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(id(user_id))
                .bind(role)
                .bind(time(Utc::now()))
                .execute(&self.pool),
            )
            .await
            .map(|result| result.rows_affected() > 0)
    }

    async fn remove_user_role(&self, user_id: Uuid, role: &str) -> Result<bool, StoreError> {
        self.calls
            .run(
                "remove_user_role",
                sqlx::query("DELETE FROM user_roles WHERE user_id = ?1 AND role = ?2")
                    .bind(id(user_id))
                    .bind(role)
                    .execute(&self.pool),
            )
            .await
            .map(|result| result.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_times_sort_as_text_in_time_order() {
        let base = DateTime::parse_from_rfc3339("2025-01-31T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let times = [
            base,
            base + chrono::Duration::microseconds(1),
            base + chrono::Duration::milliseconds(5),
            base + chrono::Duration::seconds(1),
        ];
        let texts: Vec<String> = times.iter().map(|&t| time(t)).collect();
        assert_eq!(texts[0], "2025-01-31T12:00:00.000000Z");
        assert!(texts.windows(2).all(|w| w[0] < w[1]), "{texts:?}");
        for (t, text) in times.iter().zip(&texts) {
            assert_eq!(parse_time("t", text).unwrap(), *t);
        }
        // Nanoseconds are cut to microseconds, as Postgres keeps them.
        let nanos = base + chrono::Duration::nanoseconds(1_999);
        assert_eq!(time(nanos), "2025-01-31T12:00:00.000001Z");
    }

    #[test]
    fn lock_file_sits_beside_the_database() {
        assert_eq!(
            lock_path(Path::new("/var/lib/authgate/authgate.db")),
            PathBuf::from("/var/lib/authgate/authgate.db.lock")
        );
        assert_eq!(
            lock_path(Path::new("authgate.db")),
            PathBuf::from("authgate.db.lock")
        );
    }
}
