//! Zero-downtime binary upgrade, pingora's way: a new process started with `run --upgrade`
//! waits on `server.upgrade_sock`; `SIGQUIT` makes the running one send it the listening
//! sockets, stop accepting and drain. No connection is refused in between.
//!
//! `SIGUSR2` does both steps from inside (as nginx does): the running process starts its own
//! binary (the file it was started from, so a replaced binary is the new version) with the
//! same config and `--upgrade`, waits until it listens on the upgrade socket, then sends
//! itself `SIGQUIT`. The new process is a child of the old one, so under systemd it stays in
//! the service and announces itself as the main process (`MAINPID`, with `NotifyAccess=all`).

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
        while requests.recv().await.is_some() {
            tracing::info!(binary = %binary.display(), "SIGUSR2: starting a new process to take over");
            match hand_over(&binary, &config_path, Path::new(&upgrade_sock)).await {
                Ok(pid) => {
                    tracing::info!(new_pid = pid, "the new process is taking over; draining");
                    // SAFETY: kill(2) on our own pid with a valid signal number.
                    unsafe {
                        libc::kill(libc::getpid(), libc::SIGQUIT);
                    }
                    return;
                }
                Err(error) => {
                    tracing::error!(error = %format!("{error:#}"), "upgrade failed; this process keeps serving")
                }
            }
        }
    });
    Ok(())
}

/// Starts the new process and waits until it listens on the upgrade socket; its pid.
async fn hand_over(binary: &Path, config_path: &Path, socket: &Path) -> anyhow::Result<u32> {
    // A socket file left by an earlier upgrade would look like the new process being ready.
    let _ = std::fs::remove_file(socket);
    let mut child = tokio::process::Command::new(binary)
        .arg("--config")
        .arg(config_path)
        .arg("run")
        .arg("--upgrade")
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let pid = child.id().unwrap_or_default();
    let started = Instant::now();
    while !socket.exists() {
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
    Ok(pid)
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
