//! Zero-downtime binary upgrade, pingora's way: a new process started with `run --upgrade`
//! waits on `server.upgrade_sock`; `SIGQUIT` makes the running one send it the listening
//! sockets, stop accepting and drain. No connection is refused in between.
//!
//! `SIGUSR2` does both steps from inside (as nginx does): the running process starts its own
//! binary (the file it was started from, so a replaced binary is the new version) with the
//! same config and `--upgrade`, waits until it listens on the upgrade socket, then sends
//! itself `SIGQUIT`. The new process is a child of the old one, so under systemd it stays in
//! the service and announces itself as the main process (`MAINPID`, with `NotifyAccess=all`).
//!
//! The socket hands over the listening sockets, so its directory must not be writable by
//! other users (checked before an upgrade), and the socket must belong to our user.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

/// How long the new process gets to open the upgrade socket.
const TAKEOVER_WAIT: Duration = Duration::from_secs(30);

/// Installs the `SIGUSR2` handler (before the server starts).
pub fn handle_upgrade_signal(
    background: &tokio::runtime::Handle,
    config_path: PathBuf,
    upgrade_sock: String,
) -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("cannot find this process's binary")?;
    let _inside = background.enter();
    let mut requests = signal(SignalKind::user_defined2())?;
    background.spawn(async move {
        let mut handed_over = false;
        while requests.recv().await.is_some() {
            if handed_over {
                // The handler stays installed: SIGUSR2's default action would end the process.
                tracing::warn!("SIGUSR2: an upgrade is already under way; ignored");
                continue;
            }
            tracing::info!(binary = %binary.display(), "SIGUSR2: starting a new process to take over");
            match hand_over(&binary, &config_path, Path::new(&upgrade_sock)).await {
                Ok(child) => {
                    handed_over = true;
                    tracing::info!(
                        new_pid = child.id().unwrap_or_default(),
                        "the new process is taking over; draining"
                    );
                    // SAFETY: kill(2) on our own pid with a valid signal number.
                    unsafe {
                        libc::kill(libc::getpid(), libc::SIGQUIT);
                    }
                    tokio::spawn(exit_if_successor_dies(child));
                }
                Err(error) => {
                    tracing::error!(error = %format!("{error:#}"), "upgrade failed; this process keeps serving")
                }
            }
        }
    });
    Ok(())
}

/// Pingora stops this process after handing its sockets over whether or not the new process
/// lives on. If the new one dies while this one drains, exit with a failure, so that a
/// supervisor (systemd's `Restart=on-failure`) starts the gateway again.
async fn exit_if_successor_dies(mut child: tokio::process::Child) {
    let status = child.wait().await;
    tracing::error!(
        status = %status.map_or_else(|e| e.to_string(), |s| s.to_string()),
        "the new process exited during the upgrade; exiting with failure"
    );
    std::process::exit(1);
}

/// Refuses an upgrade socket in a directory others may write to: whoever can create the
/// socket there first receives the listening sockets.
pub fn check_socket_directory(socket: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let directory = match socket.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => std::env::current_dir()?,
    };
    let mode = std::fs::metadata(&directory)
        .with_context(|| format!("server.upgrade_sock: cannot read {}", directory.display()))?
        .permissions()
        .mode();
    if mode & 0o002 != 0 {
        anyhow::bail!(
            "server.upgrade_sock: {} is writable by every user, so another user could take the \
             listening sockets over; use a private directory (e.g. /run/authgate/upgrade.sock)",
            directory.display()
        );
    }
    Ok(())
}

/// Starts the new process and waits until it listens on the upgrade socket.
async fn hand_over(
    binary: &Path,
    config_path: &Path,
    socket: &Path,
) -> anyhow::Result<tokio::process::Child> {
    check_socket_directory(socket)?;
    // A socket file left by an earlier upgrade would look like the new process being ready.
    match std::fs::remove_file(socket) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            anyhow::bail!("cannot remove the old {}: {error}", socket.display())
        }
        _ => {}
    }
    let mut child = tokio::process::Command::new(binary)
        .arg("--config")
        .arg(config_path)
        .arg("run")
        .arg("--upgrade")
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let started = Instant::now();
    while !is_our_socket(socket) {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the new process exited before taking over ({status}); see its log");
        }
        if started.elapsed() > TAKEOVER_WAIT {
            let _ = child.kill().await;
            anyhow::bail!(
                "the new process did not open {} within {TAKEOVER_WAIT:?}",
                socket.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(child)
}

/// A Unix socket owned by this process's user (the new process made it, not someone else).
fn is_our_socket(path: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    std::fs::symlink_metadata(path).is_ok_and(|meta| {
        // SAFETY: geteuid(2) cannot fail.
        meta.file_type().is_socket() && meta.uid() == unsafe { libc::geteuid() }
    })
}

/// Tells systemd (when run as a `Type=notify` service) that this process is ready and is the
/// service's main process; nothing happens outside systemd.
pub fn notify_ready() {
    let states = [
        sd_notify::NotifyState::MainPid(std::process::id()),
        sd_notify::NotifyState::Ready,
    ];
    if let Err(error) = sd_notify::notify(false, &states) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}
