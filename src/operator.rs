//! The operator commands: `authgate user list | add | disable | enable | set-role |
//! remove-role` and `authgate sessions list | revoke`. They act on the configured stores, and a
//! running deployment honours them at once:
//! - the database (accounts, roles, session records, the audit trail) directly, Postgres or
//!   the SQLite file (SQLite allows the command beside the running gateway);
//! - live sessions in Redis directly, through the same atomic scripts the gateways use, which
//!   publish on the invalidation channel, so every gateway drops what it cached of the user
//!   before the command returns;
//! - live sessions in a gateway's memory (the embedded pair) through that gateway's control
//!   socket (`control.rs`); with no gateway running there are no live sessions to act on.
//!
//! Every command writes an `admin_<command>` audit event naming the operator (`SUDO_USER`,
//! else `USER`, else the uid), the command and its target.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use crate::allow::normalize_role;
use crate::auth::input;
use crate::config::Config;
use crate::control::{self, AdminEnd, Reply, Request, SessionView};
use crate::password::PasswordHasher;
use crate::session::redis::RedisSessionStore;
use crate::session::redis_connection::RedisConnection;
use crate::session::{epoch_ttl, SessionStore};
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{AdminAction, AuditKind, AuthEvent, Credentials, DatabaseUrl, RecordStore};
use crate::telemetry::Metrics;

/// How often a role change re-applies the roles when concurrent commands keep changing them.
const ROLE_SYNC_ATTEMPTS: usize = 5;

/// An operator command, as parsed from the command line.
#[derive(Debug, Clone)]
pub enum Command {
    UserList { json: bool },
    UserAdd { email: String, password_stdin: bool },
    UserDisable { email: String },
    UserEnable { email: String },
    UserSetRole { email: String, role: String },
    UserRemoveRole { email: String, role: String },
    SessionsList { email: String, json: bool },
    SessionsRevoke { email: String },
}

/// Runs one command against the stores `config` names; what it prints goes to stdout.
pub fn run(config: Config, config_path: &Path, command: Command) -> anyhow::Result<()> {
    // The command's own output is on stdout; its log has warnings only (RUST_LOG overrides).
    crate::telemetry::init_logging(&crate::config::LogSection {
        level: "warn".to_string(),
        ..config.log.clone()
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    runtime.block_on(async {
        let operator = Operator::open(&config, config_path, runtime.handle().clone()).await?;
        operator.execute(command).await
    })
}

/// Where the live sessions are, for a command.
enum Live {
    /// Redis: acted on directly.
    Store(Arc<dyn SessionStore>),
    /// A running embedded gateway's memory, through its control socket.
    Gateway(PathBuf),
    /// The embedded pair with no gateway running: no live sessions exist.
    Nowhere,
    /// In-memory sessions with Postgres, and no gateway answered on this socket: whether one
    /// runs cannot be told, so commands that act on live sessions refuse.
    Unknown(PathBuf),
}

struct Operator {
    config: Config,
    records: Arc<dyn RecordStore>,
    live: Live,
    /// Who ran the command, for the audit trail.
    name: String,
}

impl Operator {
    async fn open(
        config: &Config,
        config_path: &Path,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<Operator> {
        let metrics = Arc::new(Metrics::new()?);
        let storage = &config.storage;
        let url = DatabaseUrl::parse(&storage.database_url)
            .map_err(|message| anyhow!("storage.database_url: {message}"))?;
        let socket = control::socket_path(config, config_path);
        let gateway_running = match &socket {
            Some(path) => control::ask(
                path,
                &Request::ListSessions {
                    user_id: Uuid::nil(),
                },
            )
            .await?
            .is_some(),
            None => false,
        };
        let sqlite = matches!(url, DatabaseUrl::Sqlite(_));
        let records: Arc<dyn RecordStore> = match url {
            DatabaseUrl::Postgres(url) => Arc::new(
                PostgresStore::connect_lazy(
                    &url,
                    storage.database_max_connections,
                    storage.database_timeout,
                    metrics.clone(),
                )
                .context("storage.database_url")?,
            ),
            // A command never creates a database: a relative path read from another working
            // directory than the gateway's would otherwise make a new, empty one.
            DatabaseUrl::Sqlite(path) if !path.exists() => bail!(
                "no SQLite database at {} (storage.database_url; a relative path is read from \
                 the working directory, {}): run the command where the gateway runs",
                path.display(),
                std::env::current_dir()
                    .map(|dir| dir.display().to_string())
                    .unwrap_or_default()
            ),
            // The running gateway holds the file's lock; SQLite lets the command write beside
            // it. (With Redis the sessions are not in a gateway: whether one runs is moot.)
            DatabaseUrl::Sqlite(path) if gateway_running || socket.is_none() => Arc::new(
                SqliteStore::open_for_command(&path, storage.database_timeout, metrics.clone())
                    .await?,
            ),
            // No gateway answers: take the lock, so none starts while this runs. A gateway
            // that holds it but does not answer is reported (its sessions are out of reach).
            DatabaseUrl::Sqlite(path) => Arc::new(
                SqliteStore::open(
                    &path,
                    storage.database_max_connections,
                    storage.database_timeout,
                    metrics.clone(),
                )
                .await
                .map_err(|error| {
                    anyhow!(
                        "{error}; its control socket {} does not answer, so its live sessions \
                         cannot be reached",
                        socket
                            .as_deref()
                            .unwrap_or(std::path::Path::new("?"))
                            .display()
                    )
                })?,
            ),
        };
        records
            .migrate()
            .await
            .context("the database is not reachable or cannot be migrated")?;
        let live = match (config.storage.redis(), socket) {
            (Some(deployment), _) => {
                let connection = RedisConnection::new(
                    &deployment,
                    storage.redis_timeout,
                    runtime,
                    metrics.clone(),
                )
                .context("storage.redis_url / redis_cluster_urls / redis_sentinel_urls")?;
                Live::Store(Arc::new(RedisSessionStore::new(
                    Arc::new(connection),
                    &storage.redis_key_prefix,
                    epoch_ttl(config.session.absolute_timeout),
                )))
            }
            (None, Some(path)) if gateway_running => Live::Gateway(path),
            // SQLite: this command holds the file's lock, so no gateway runs.
            (None, _) if sqlite => Live::Nowhere,
            // Postgres with in-memory sessions: no lock says whether a gateway runs somewhere
            // its socket was not found.
            (None, path) => Live::Unknown(path.unwrap_or_default()),
        };
        Ok(Operator {
            config: config.clone(),
            records,
            live,
            name: operator_name(),
        })
    }

    async fn execute(&self, command: Command) -> anyhow::Result<()> {
        let touches_sessions = !matches!(
            command,
            Command::UserList { .. } | Command::UserAdd { .. } | Command::UserEnable { .. }
        );
        if let (true, Live::Unknown(path)) = (touches_sessions, &self.live) {
            bail!(
                "no gateway answers on the control socket {}: with storage.redis_url empty the \
                 live sessions are in the gateway's memory, and they cannot be reached. Start \
                 the gateway with this config file, or run the command with the config file \
                 it uses",
                path.display()
            );
        }
        match command {
            Command::UserList { json } => self.user_list(json).await,
            Command::UserAdd {
                email,
                password_stdin,
            } => self.user_add(&email, password_stdin).await,
            Command::UserDisable { email } => self.set_active(&email, false).await,
            Command::UserEnable { email } => self.set_active(&email, true).await,
            Command::UserSetRole { email, role } => self.change_role(&email, &role, true).await,
            Command::UserRemoveRole { email, role } => self.change_role(&email, &role, false).await,
            Command::SessionsList { email, json } => self.sessions_list(&email, json).await,
            Command::SessionsRevoke { email } => self.sessions_revoke(&email).await,
        }
    }

    async fn user_list(&self, as_json: bool) -> anyhow::Result<()> {
        let accounts = self.records.list_users().await?;
        self.audit(
            AdminAction::UserList,
            None,
            json!({ "users": accounts.len() }),
        )
        .await?;
        if as_json {
            println!("{}", serde_json::to_string_pretty(&accounts)?);
            return Ok(());
        }
        let rows: Vec<[String; 6]> = accounts
            .iter()
            .map(|account| {
                [
                    account.user.email.clone(),
                    account.user.id.to_string(),
                    if account.is_active {
                        "active"
                    } else {
                        "disabled"
                    }
                    .to_string(),
                    dash(account.roles.join(",")),
                    account.user.created_at.format("%Y-%m-%d %H:%M").to_string(),
                    account.user.last_login.map_or("-".to_string(), |at| {
                        at.format("%Y-%m-%d %H:%M").to_string()
                    }),
                ]
            })
            .collect();
        print_table(
            ["EMAIL", "ID", "STATUS", "ROLES", "CREATED", "LAST LOGIN"],
            &rows,
        );
        println!("{} user(s)", accounts.len());
        Ok(())
    }

    async fn user_add(&self, email: &str, password_stdin: bool) -> anyhow::Result<()> {
        let email = input::normalize_email(email)
            .map_err(|error| anyhow!("--email: {}", error.message()))?;
        let (password, generated) = if password_stdin {
            let mut text = String::new();
            std::io::stdin()
                .take(4096)
                .read_to_string(&mut text)
                .context("cannot read the password from stdin")?;
            // One line: the trailing newline of `echo pw |` is not part of the password.
            let line = text.lines().next().unwrap_or("").to_string();
            (line, false)
        } else {
            (generate_password(self.config.password.min_length), true)
        };
        input::check_new_password(&password, &email, self.config.password.min_length)
            .map_err(|error| anyhow!("password: {}", error.message()))?;
        let hasher = PasswordHasher::new(&self.config.password, tokio::runtime::Handle::current())
            .map_err(|error| anyhow!("{error}"))?;
        let password_hash = hasher
            .hash(password.clone())
            .await
            .map_err(|error| anyhow!("{error}"))?;
        let user = self
            .records
            .create_user(&crate::store::NewUser {
                email: email.clone(),
                username: None,
                full_name: None,
                password_hash,
            })
            .await
            .map_err(|error| match error {
                crate::store::StoreError::Conflict(_) => {
                    anyhow!("a user with the email {email} exists already")
                }
                other => anyhow!(other),
            })?;
        self.audit(
            AdminAction::UserAdd,
            Some(user.id),
            json!({ "email": email, "password": if generated { "generated" } else { "stdin" } }),
        )
        .await?;
        println!("user {email} added (id {})", user.id);
        if generated {
            // Shown once: only its hash is stored.
            println!("password: {password}");
            println!("(shown once; the user can change it on /auth/devices)");
        }
        Ok(())
    }

    async fn set_active(&self, email: &str, active: bool) -> anyhow::Result<()> {
        let account = self.account(email).await?;
        let user_id = account.user.id;
        let action = if active {
            AdminAction::UserEnable
        } else {
            AdminAction::UserDisable
        };
        let detail = json!({ "email": account.user.email });
        // Disabled first, then every session ended (and the credential epoch moved): a login
        // in flight either sees the account disabled or loses its session to the epoch.
        let outcome = async {
            self.records.set_user_active(user_id, active).await?;
            if active {
                Ok(Vec::new())
            } else {
                self.end_sessions(user_id, AdminEnd::Disabled).await
            }
        }
        .await;
        let ended = self
            .audited(
                action,
                user_id,
                detail,
                outcome,
                |ended| json!({ "sessions_ended": ended.len() }),
            )
            .await?;
        if active {
            println!("user {} enabled", account.user.email);
        } else {
            println!(
                "user {} disabled; {} session(s) ended",
                account.user.email,
                ended.len()
            );
        }
        Ok(())
    }

    async fn change_role(&self, email: &str, role: &str, give: bool) -> anyhow::Result<()> {
        let role = normalize_role(role).map_err(|message| anyhow!("--role: {message}"))?;
        let account = self.account(email).await?;
        let user_id = account.user.id;
        let action = if give {
            AdminAction::UserSetRole
        } else {
            AdminAction::UserRemoveRole
        };
        let detail = json!({ "email": account.user.email, "role": role });
        let outcome = async {
            let changed = if give {
                self.records.add_user_role(user_id, &role).await?
            } else {
                self.records.remove_user_role(user_id, &role).await?
            };
            let (roles, sessions) = self.sync_live_roles(user_id).await?;
            anyhow::Ok((changed, roles, sessions))
        }
        .await;
        let (changed, roles, sessions) = self
            .audited(
                action,
                user_id,
                detail,
                outcome,
                |(changed, roles, _)| json!({ "changed": changed, "roles": roles }),
            )
            .await?;
        let what = match (give, changed) {
            (true, true) => format!("role {role} given to {}", account.user.email),
            (true, false) => format!("{} already has role {role}", account.user.email),
            (false, true) => format!("role {role} removed from {}", account.user.email),
            (false, false) => format!("{} does not have role {role}", account.user.email),
        };
        println!(
            "{what}; roles now: {}; {sessions} live session(s) updated",
            dash(roles.join(","))
        );
        Ok(())
    }

    async fn sessions_list(&self, email: &str, as_json: bool) -> anyhow::Result<()> {
        let account = self.account(email).await?;
        let now = Utc::now();
        let sessions: Vec<SessionView> = match &self.live {
            Live::Store(store) => store
                .list(account.user.id)
                .await?
                .iter()
                .map(|live| SessionView::of(live, now))
                .collect(),
            Live::Gateway(path) => match self
                .ask(
                    path,
                    Request::ListSessions {
                        user_id: account.user.id,
                    },
                )
                .await?
            {
                Reply::Sessions(sessions) => sessions,
                other => bail!("unexpected answer from the gateway: {other:?}"),
            },
            Live::Nowhere | Live::Unknown(_) => Vec::new(),
        };
        self.audit(
            AdminAction::SessionsList,
            Some(account.user.id),
            json!({ "email": account.user.email, "sessions": sessions.len() }),
        )
        .await?;
        if as_json {
            println!("{}", serde_json::to_string_pretty(&sessions)?);
            return Ok(());
        }
        let when = |at: chrono::DateTime<Utc>| at.format("%Y-%m-%d %H:%M:%S").to_string();
        let rows: Vec<[String; 6]> = sessions
            .iter()
            .map(|session| {
                [
                    session.id.to_string(),
                    session.device.clone(),
                    session.ip.clone(),
                    when(session.created_at),
                    when(session.last_activity),
                    when(session.idle_expires_at.min(session.expires_at)),
                ]
            })
            .collect();
        print_table(
            ["ID", "DEVICE", "IP", "CREATED", "LAST ACTIVITY", "EXPIRES"],
            &rows,
        );
        println!(
            "{} live session(s) for {}",
            sessions.len(),
            account.user.email
        );
        Ok(())
    }

    async fn sessions_revoke(&self, email: &str) -> anyhow::Result<()> {
        let account = self.account(email).await?;
        let outcome = self.end_sessions(account.user.id, AdminEnd::Revoked).await;
        let ended = self
            .audited(
                AdminAction::SessionsRevoke,
                account.user.id,
                json!({ "email": account.user.email }),
                outcome,
                |ended| json!({ "sessions_ended": ended.len(), "session_ids": ended }),
            )
            .await?;
        println!(
            "{} session(s) of {} revoked",
            ended.len(),
            account.user.email
        );
        Ok(())
    }

    /// Writes a changing command's audit event whatever came of it: `detail` plus what
    /// `describe` says of the result, or the error (a change may have been half made: the
    /// database written, the sessions not reached). Then hands the result on.
    async fn audited<T>(
        &self,
        action: AdminAction,
        user_id: Uuid,
        mut detail: serde_json::Value,
        outcome: anyhow::Result<T>,
        describe: impl FnOnce(&T) -> serde_json::Value,
    ) -> anyhow::Result<T> {
        let extra = match &outcome {
            Ok(value) => describe(value),
            Err(error) => json!({ "error": format!("{error:#}") }),
        };
        if let (Some(detail), Some(extra)) = (detail.as_object_mut(), extra.as_object()) {
            detail.extend(extra.clone());
        }
        let audit = self.audit(action, Some(user_id), detail).await;
        let value = outcome?;
        audit?;
        Ok(value)
    }

    /// Gives the user's live sessions the roles the database holds now, until the database
    /// holds still: a concurrent role change by another command may have pushed an older
    /// list in between. The roles, and how many sessions were changed.
    async fn sync_live_roles(&self, user_id: Uuid) -> anyhow::Result<(Vec<String>, usize)> {
        let mut roles = self.records.user_roles(user_id).await?;
        for _ in 0..ROLE_SYNC_ATTEMPTS {
            let sessions = self.set_live_roles(user_id, &roles).await?;
            let now = self.records.user_roles(user_id).await?;
            if now == roles {
                return Ok((roles, sessions));
            }
            roles = now;
        }
        bail!("the user's roles kept changing under concurrent commands; run the command again")
    }

    /// Ends every live session of the user, wherever they are, and records the endings.
    async fn end_sessions(&self, user_id: Uuid, why: AdminEnd) -> anyhow::Result<Vec<Uuid>> {
        match &self.live {
            Live::Store(store) => {
                let ended = store.revoke_all_except(user_id, None).await?;
                let reason = why.reason();
                if let Err(error) = self
                    .records
                    .end_sessions(&ended, reason.status(), reason.as_str(), Utc::now())
                    .await
                {
                    // The sessions are gone; the expiry job closes records left active.
                    tracing::warn!(%error, "sessions ended, but their records were not updated");
                }
                Ok(ended)
            }
            // The gateway records them itself.
            Live::Gateway(path) => match self
                .ask(
                    path,
                    Request::EndSessions {
                        user_id,
                        reason: why,
                    },
                )
                .await?
            {
                Reply::Ended(ids) => Ok(ids),
                other => bail!("unexpected answer from the gateway: {other:?}"),
            },
            Live::Nowhere | Live::Unknown(_) => Ok(Vec::new()),
        }
    }

    /// Gives the user's live sessions these roles; how many it changed.
    async fn set_live_roles(&self, user_id: Uuid, roles: &[String]) -> anyhow::Result<usize> {
        match &self.live {
            Live::Store(store) => Ok(store.set_roles(user_id, roles).await?),
            Live::Gateway(path) => match self
                .ask(
                    path,
                    Request::SetRoles {
                        user_id,
                        roles: roles.to_vec(),
                    },
                )
                .await?
            {
                Reply::Changed(count) => Ok(count),
                other => bail!("unexpected answer from the gateway: {other:?}"),
            },
            Live::Nowhere | Live::Unknown(_) => Ok(0),
        }
    }

    async fn ask(&self, path: &std::path::Path, request: Request) -> anyhow::Result<Reply> {
        control::ask(path, &request).await?.ok_or_else(|| {
            anyhow!(
                "the gateway stopped answering on {} during the command",
                path.display()
            )
        })
    }

    async fn account(&self, email: &str) -> anyhow::Result<Credentials> {
        let normalized = input::normalize_email(email)
            .map_err(|error| anyhow!("--email: {}", error.message()))?;
        self.records
            .credentials_by_email(&normalized)
            .await?
            .ok_or_else(|| anyhow!("no user with the email {normalized}"))
    }

    /// Writes the command's audit event, before the command reports success.
    async fn audit(
        &self,
        action: AdminAction,
        user_id: Option<Uuid>,
        mut detail: serde_json::Value,
    ) -> anyhow::Result<()> {
        if let Some(object) = detail.as_object_mut() {
            object.insert("operator".to_string(), json!(self.name));
            object.insert("uid".to_string(), json!(process_uid()));
        }
        let event = AuthEvent {
            kind: AuditKind::Admin(action),
            user_id,
            session_id: None,
            ip: None,
            user_agent: None,
            detail,
        };
        self.records
            .record_event(&event)
            .await
            .context("cannot write the audit event")
    }
}

/// Who runs the command: the user behind `sudo`, else the login user, else the uid.
fn operator_name() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
        .unwrap_or_else(|| format!("uid {}", process_uid()))
}

/// The real uid, from `/proc` (no `unsafe` libc call for a label): recorded beside the name,
/// which comes from the environment and is only as true as the operator's shell.
fn process_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next().map(str::to_string))
        })
        .unwrap_or_else(|| "?".to_string())
}

/// A password for `user add` without `--password-stdin`: 20 characters from a CSPRNG (about
/// 119 bits), letters and digits without look-alikes.
fn generate_password(min_length: usize) -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rngs::OsRng;
    (0..min_length.max(20))
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

fn dash(text: String) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text
    }
}

/// A plain left-aligned table, columns two spaces apart.
fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(|title| title.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
