//! The control socket: how `authgate user …` / `authgate sessions …` reach the live sessions of
//! a running gateway whose session store is its own memory (the embedded pair). With Redis the
//! commands act on Redis directly and every gateway hears of it through the invalidation
//! channel; an in-process store has no such door, so the gateway opens one: a Unix socket
//! beside its SQLite file (`<file>.sock`; `authgate.sock` in the working directory when the
//! database is Postgres), mode 0600, so only the gateway's own OS user (and root) can use it,
//! as with the SQLite file itself.
//!
//! One request per connection: a JSON line in, a JSON line out. The gateway runs the change
//! through the same [`Sessions`] the `/auth` API uses, so it is recorded, counted and in force
//! before the answer is written: the next request on a revoked session is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use uuid::Uuid;

use crate::config::Config;
use crate::session::{EndReason, LiveSession, Sessions};
use crate::store::DatabaseUrl;

/// How long one exchange may take, either side.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request line read (a role list is the largest thing sent).
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// The longest answer read (a user's sessions: the per-user cap keeps it small).
const MAX_REPLY_BYTES: u64 = 4 * 1024 * 1024;

/// Where the gateway of this config listens, when its sessions are in its memory; `None` with
/// Redis (the commands then act on Redis). Beside the SQLite file (`<file>.sock`, relative to
/// the working directory like the file itself); with Postgres, beside the config file
/// (`authgate.sock` in its directory), so a command run from anywhere with the same
/// `--config` finds the gateway.
pub fn socket_path(config: &Config, config_path: &Path) -> Option<PathBuf> {
    if config.storage.redis().is_some() {
        return None;
    }
    Some(match DatabaseUrl::parse(&config.storage.database_url) {
        Ok(DatabaseUrl::Sqlite(path)) => {
            let mut name = path.into_os_string();
            name.push(".sock");
            PathBuf::from(name)
        }
        _ => config_path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("authgate.sock"),
    })
}

/// This process's user id (the owner of `/proc/self`): a peer of the socket must be this user
/// or root.
fn own_uid() -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/self")?.uid())
}

/// What a command asks of the gateway.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    ListSessions {
        user_id: Uuid,
    },
    /// Ends every session of the user (and moves the credential epoch).
    EndSessions {
        user_id: Uuid,
        reason: AdminEnd,
    },
    SetRoles {
        user_id: Uuid,
        roles: Vec<String>,
    },
}

/// Why an operator ended a user's sessions.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminEnd {
    /// `authgate sessions revoke`.
    Revoked,
    /// `authgate user disable`.
    Disabled,
}

impl AdminEnd {
    pub fn reason(self) -> EndReason {
        match self {
            AdminEnd::Revoked => EndReason::RevokedByAdmin,
            AdminEnd::Disabled => EndReason::AccountDisabled,
        }
    }
}

/// The gateway's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Sessions(Vec<SessionView>),
    Ended(Vec<Uuid>),
    Changed(usize),
    Error(String),
}

/// A live session as the commands print it (the `/auth/user/sessions` field names).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionView {
    pub id: Uuid,
    pub device: String,
    pub user_agent: String,
    pub ip: String,
    pub location: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub last_activity: chrono::DateTime<chrono::Utc>,
    /// When it idles out unless used (never after `expires_at`).
    pub idle_expires_at: chrono::DateTime<chrono::Utc>,
    /// Its absolute expiry.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl SessionView {
    pub fn of(live: &LiveSession, now: chrono::DateTime<chrono::Utc>) -> SessionView {
        let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap_or(now);
        let idle = chrono::Duration::from_std(live.idle_remaining).unwrap_or_default();
        SessionView {
            id: live.data.id,
            device: live.data.device_label.clone(),
            user_agent: live.data.user_agent.clone(),
            ip: live.data.ip.to_string(),
            location: live.data.location.clone(),
            created_at: at(live.data.created_at_ms),
            last_activity: at(live.last_activity_ms),
            idle_expires_at: now + idle,
            expires_at: at(live.data.absolute_expiry_ms),
        }
    }
}

/// Binds the socket, readable and writable by this OS user only. A socket file left by a
/// gateway that has stopped is replaced; one that another gateway still answers on is an
/// error (two gateways with in-memory sessions on one config would each hold only part of
/// the sessions).
pub fn bind(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "another authgate answers on {}: only one gateway may keep sessions in its \
                 memory for this configuration",
                path.display()
            ),
        ));
    }
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    // Until this, the socket has the umask's mode; a peer that connected in between is
    // still refused by the user check in `serve`.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Answers commands until the process ends. Runs on the background runtime.
pub async fn serve(listener: std::os::unix::net::UnixListener, sessions: Arc<Sessions>) {
    let listener = match UnixListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "control socket unusable: operator commands cannot reach this gateway");
            return;
        }
    };
    let own = match own_uid() {
        Ok(uid) => uid,
        Err(error) => {
            tracing::error!(%error, "cannot tell this process's user: control socket closed");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let peer = stream.peer_cred().map(|credentials| credentials.uid());
                if !matches!(peer, Ok(uid) if uid == own || uid == 0) {
                    tracing::warn!(?peer, "control socket: a peer of another user was refused");
                    continue;
                }
                let sessions = sessions.clone();
                tokio::spawn(async move {
                    if let Err(error) =
                        tokio::time::timeout(EXCHANGE_TIMEOUT, answer(stream, &sessions)).await
                    {
                        tracing::warn!(%error, "control socket exchange timed out");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(stream: UnixStream, sessions: &Sessions) {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    let read = BufReader::new(reader.take(MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .await;
    let reply = match read.map(|_| serde_json::from_str::<Request>(&line)) {
        Ok(Ok(request)) => execute(request, sessions).await,
        Ok(Err(error)) => Reply::Error(format!("unreadable request: {error}")),
        Err(error) => Reply::Error(format!("cannot read the request: {error}")),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{\"error\":\"\"}".to_vec());
    out.push(b'\n');
    if let Err(error) = writer.write_all(&out).await {
        tracing::warn!(%error, "cannot answer on the control socket");
    }
}

async fn execute(request: Request, sessions: &Sessions) -> Reply {
    let outcome = match request {
        Request::ListSessions { user_id } => {
            let now = chrono::Utc::now();
            sessions
                .list(user_id)
                .await
                .map(|live| Reply::Sessions(live.iter().map(|s| SessionView::of(s, now)).collect()))
        }
        Request::EndSessions { user_id, reason } => sessions
            .end_all_except(user_id, None, reason.reason())
            .await
            .map(Reply::Ended),
        Request::SetRoles { user_id, roles } => {
            let roles: Result<Vec<String>, String> = roles
                .iter()
                .map(|role| crate::allow::normalize_role(role))
                .collect();
            match roles {
                Ok(roles) => sessions
                    .set_roles(user_id, &roles)
                    .await
                    .map(Reply::Changed),
                Err(message) => return Reply::Error(message),
            }
        }
    };
    outcome.unwrap_or_else(|error| Reply::Error(error.to_string()))
}

/// A command's side: sends one request to the gateway at `path`. `Ok(None)` when no gateway
/// listens there (no socket, or a stale one); an error when one answered badly.
pub async fn ask(path: &Path, request: &Request) -> anyhow::Result<Option<Reply>> {
    let stream = match UnixStream::connect(path).await {
        Ok(stream) => stream,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(error) => {
            return Err(anyhow::anyhow!(
                "cannot connect to the gateway's control socket {}: {error}",
                path.display()
            ))
        }
    };
    let exchange = async {
        let (reader, mut writer) = stream.into_split();
        let mut out = serde_json::to_vec(request)?;
        out.push(b'\n');
        writer.write_all(&out).await?;
        let mut line = String::new();
        BufReader::new(reader.take(MAX_REPLY_BYTES))
            .read_line(&mut line)
            .await?;
        anyhow::Ok(serde_json::from_str::<Reply>(&line)?)
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
        Ok(Ok(Reply::Error(message))) => Err(anyhow::anyhow!("the gateway refused: {message}")),
        Ok(Ok(reply)) => Ok(Some(reply)),
        Ok(Err(error)) => Err(anyhow::anyhow!(
            "no usable answer on the control socket {}: {error}",
            path.display()
        )),
        Err(_) => Err(anyhow::anyhow!(
            "the gateway did not answer on {} within {:?}",
            path.display(),
            EXCHANGE_TIMEOUT
        )),
    }
}
