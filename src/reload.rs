//! Hot reload of `gateway.toml`, on `SIGHUP` and when the file changes on disk.
//!
//! A reload is all or nothing: the new file is read and validated whole (the same check as
//! start-up and `authgate check`); if anything is wrong it is rejected with the offending key
//! and line, and the configuration in force keeps serving. Otherwise every reloadable part
//! that changed is built first (a new route table completes its first upstream lookup before
//! it is used) and then swapped in: routes and their upstream pools, the per-IP rate limit,
//! `server.strip_headers`, `server.allowed_redirect_hosts`, the registration policy
//! (`[access]`), the login-protection numbers, branding and the log level; the identity assertion's keys are re-read (a replaced
//! `assertion.key_file` signs from then on).
//!
//! Each part lives behind an `ArcSwap`: a request holds the route it matched (and its pool)
//! for its whole life, so in-flight requests finish on the old table while new ones use the
//! new one, and no connection is touched. The old table's background work (health checks,
//! re-resolution) is stopped when it is replaced.
//!
//! Keys read only at start-up (listen addresses, store URLs, threads, ...: see
//! [`Config::restart_only_keys`]) keep their running values; a reload that changes them says
//! so in the log and in `authgate_config_restart_required`, never silently.
//!
//! File changes are watched with inotify (`notify` off Linux) on the file's directory (editors and Kubernetes
//! replace files by renaming, which a watch on the file itself would lose), debounced, and a
//! reload runs only when the file's bytes actually changed. `SIGHUP` always reloads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use crate::auth::{AuthApi, Pages};
use crate::config::{Config, ConfigError};
use crate::identity::IdentityHeaders;
use crate::limits::ip_rate::IpRateLimiter;
use crate::routes::RouteTable;
use crate::telemetry::{LogLevel, Metrics};

/// File events closer together than this are one change (an editor's save is several).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// What can be swapped at run time, and the configuration currently applied to it.
pub struct Reloader {
    path: PathBuf,
    /// The configuration in force, as last applied (restart-only keys as at start-up).
    applied: tokio::sync::Mutex<Applied>,
    pub routes: Arc<ArcSwap<RouteTable>>,
    pub limiter: Arc<ArcSwap<IpRateLimiter>>,
    pub identity_headers: Arc<ArcSwap<IdentityHeaders>>,
    pub auth: Arc<AuthApi>,
    pub log: LogLevel,
    pub metrics: Arc<Metrics>,
    /// Runs the route tables' background work (health checks).
    pub background: tokio::runtime::Handle,
}

struct Applied {
    /// The last configuration read whole (its restart-only keys are not all in force).
    config: Config,
    /// The file's bytes when last read, to ignore events that changed nothing.
    text: Vec<u8>,
    /// Restart-only keys with their start-up values.
    at_start: Vec<(&'static str, String)>,
    /// `session.secure_cookie` in force (restart-only; the pages depend on it).
    secure_cookie: bool,
}

/// Why a reload ran, for the log.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    Signal,
    FileChanged,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChanged => "file change",
        }
    }
}

impl Reloader {
    /// `config` is the configuration the process started with, read from `path`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: &Path,
        config: Config,
        routes: Arc<ArcSwap<RouteTable>>,
        limiter: Arc<ArcSwap<IpRateLimiter>>,
        identity_headers: Arc<ArcSwap<IdentityHeaders>>,
        auth: Arc<AuthApi>,
        log: LogLevel,
        metrics: Arc<Metrics>,
        background: tokio::runtime::Handle,
    ) -> Reloader {
        let text = std::fs::read(path).unwrap_or_default();
        let at_start = config.restart_only_keys();
        let secure_cookie = config.session.secure_cookie;
        Reloader {
            path: path.to_path_buf(),
            applied: tokio::sync::Mutex::new(Applied {
                config,
                text,
                at_start,
                secure_cookie,
            }),
            routes,
            limiter,
            identity_headers,
            auth,
            log,
            metrics,
            background,
        }
    }

    /// Re-reads the file and applies it, all or nothing. Reloads run one at a time.
    pub async fn reload(&self, trigger: Trigger) -> Result<(), ConfigError> {
        let mut applied = self.applied.lock().await;
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(error) => {
                let error =
                    ConfigError::new(format!("cannot read {}: {error}", self.path.display()));
                return Err(self.rejected(trigger, error));
            }
        };
        if matches!(trigger, Trigger::FileChanged) && text == applied.text {
            return Ok(());
        }
        applied.text = text.clone();
        // The bytes just compared are the bytes parsed.
        let parsed = String::from_utf8(text)
            .map_err(|_| ConfigError::new(format!("{}: not UTF-8 text", self.path.display())))
            .and_then(|text| Config::from_file_text(&self.path, &text));
        let new = match parsed {
            Ok(config) => config,
            Err(error) => return Err(self.rejected(trigger, error)),
        };
        let changed = match self.apply(&applied, &new).await {
            Ok(changed) => changed,
            Err(error) => return Err(self.rejected(trigger, error)),
        };
        let pending: Vec<&str> = new
            .restart_only_keys()
            .iter()
            .zip(&applied.at_start)
            .filter(|(now, then)| now.1 != then.1)
            .map(|(now, _)| now.0)
            .collect();
        self.metrics.config_reload(true);
        self.metrics.restart_required(!pending.is_empty());
        if pending.is_empty() {
            tracing::info!(
                trigger = trigger.label(),
                changed = %list(&changed),
                "configuration reloaded"
            );
        } else {
            tracing::warn!(
                trigger = trigger.label(),
                changed = %list(&changed),
                needs_restart = %pending.join(", "),
                "configuration reloaded; some changed keys are read only at start-up and keep \
                 their running values until a restart"
            );
        }
        applied.config = new;
        Ok(())
    }

    fn rejected(&self, trigger: Trigger, error: ConfigError) -> ConfigError {
        self.metrics.config_reload(false);
        tracing::error!(
            trigger = trigger.label(),
            %error,
            "configuration reload rejected; the previous configuration stays in force"
        );
        error
    }

    /// Swaps in every reloadable part of `new` that differs from what is applied; returns their
    /// names. Fails, having changed nothing, when a new route would have no upstream address.
    async fn apply(
        &self,
        applied: &Applied,
        new: &Config,
    ) -> Result<Vec<&'static str>, ConfigError> {
        let old = &applied.config;
        let differs =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        let mut changed = Vec::new();
        // Built (and its upstream names looked up) before anything is swapped.
        let table = if differs(&old.routes, &new.routes) {
            let table = Arc::new(RouteTable::build(&new.routes));
            table.ready().await.map_err(ConfigError::new)?;
            Some(table)
        } else {
            None
        };
        if let Some(table) = table {
            self.background.spawn(table.clone().run_health_checks());
            let old_table = self.routes.swap(table);
            old_table.retire();
            self.metrics
                .routes_in_use(new.routes.iter().map(|route| route.prefix.as_str()));
            changed.push("routes");
        }
        if differs(&old.rate_limit, &new.rate_limit) {
            self.limiter
                .store(Arc::new(IpRateLimiter::new(&new.rate_limit)));
            changed.push("rate_limit");
        }
        if differs(&old.server.strip_headers, &new.server.strip_headers) {
            self.identity_headers.store(Arc::new(IdentityHeaders::new(
                new.server.strip_headers.clone(),
            )));
            changed.push("server.strip_headers");
        }
        if differs(&old.login_protection, &new.login_protection) {
            self.auth
                .login_protection
                .reconfigure(new.login_protection.clone());
            changed.push("login_protection");
        }
        let redirect_hosts_changed =
            old.server.allowed_redirect_hosts != new.server.allowed_redirect_hosts;
        if differs(&old.branding, &new.branding) || redirect_hosts_changed {
            self.auth.pages.store(Arc::new(Pages::new(
                &new.branding,
                applied.secure_cookie,
                new.server.allowed_redirect_hosts.clone(),
            )));
            if differs(&old.branding, &new.branding) {
                changed.push("branding");
            }
            if redirect_hosts_changed {
                changed.push("server.allowed_redirect_hosts");
            }
        }
        if old.access != new.access {
            self.auth.access.store(Arc::new(new.access.clone()));
            changed.push("access");
        }
        if old.log.level != new.log.level {
            match self.log.set(&new.log.level) {
                Ok(()) => changed.push("log.level"),
                Err(reason) => {
                    tracing::warn!(%reason, "log.level changed in the file but not applied")
                }
            }
        }
        // The assertion's keys are re-read too (they are also every few seconds): SIGHUP after
        // replacing assertion.key_file switches the signing key at once.
        match self.auth.assertions.refresh().await {
            Ok(true) => changed.push("assertion keys"),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "assertion keys not re-read; the ones in force stay")
            }
        }
        Ok(changed)
    }

    /// Reloads on `SIGHUP` and on changes to the file, until the process exits. The signal
    /// handler is installed before this returns (the default action of `SIGHUP` would end
    /// the process), so call it before the server starts.
    pub fn start(self: Arc<Self>) -> anyhow::Result<()> {
        let background = self.background.clone();
        let _inside = background.enter();
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let (changes, mut changed) = mpsc::unbounded_channel::<()>();
        let watcher = match watch(&self.path, changes) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(
                    %error,
                    path = %self.path.display(),
                    "cannot watch the config file; reload with SIGHUP"
                );
                None
            }
        };
        background.spawn(async move {
            // The watcher stops when dropped: it lives as long as this task.
            let _watcher = watcher;
            loop {
                let trigger = tokio::select! {
                    Some(()) = hangups.recv() => Trigger::Signal,
                    Some(()) = changed.recv() => Trigger::FileChanged,
                    else => return,
                };
                // The outcome is logged and counted inside.
                let _ = self.reload(trigger).await;
            }
        });
        Ok(())
    }
}

/// The directory holding `path`, and the file's name in it.
fn watched(path: &Path) -> anyhow::Result<(PathBuf, Option<std::ffi::OsString>)> {
    let absolute = std::path::absolute(path)?;
    let directory = absolute
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    Ok((
        directory,
        absolute.file_name().map(|name| name.to_os_string()),
    ))
}

/// Whether an event on `event_name` in the directory concerns the config file `name`: the file
/// itself (a rename over it counts) or, for Kubernetes ConfigMaps, the `..data` link beside it.
fn concerns(event_name: Option<&std::ffi::OsStr>, name: Option<&std::ffi::OsStr>) -> bool {
    event_name == name || event_name.is_some_and(|n| n == "..data")
}

/// Watches the directory holding `path` (inotify) and sends a unit for every debounced batch
/// of events that concerns the file. Only the events that end a change are asked for (a
/// write closed, a file renamed in or out, created, deleted, its attributes changed), never
/// every `write(2)`: a log file or a SQLite database beside the config must not wake the
/// gateway on each write.
#[cfg(target_os = "linux")]
fn watch(path: &Path, changes: mpsc::UnboundedSender<()>) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    use inotify::{Inotify, WatchMask};

    let (directory, name) = watched(path)?;
    let inotify = Inotify::init()?;
    inotify.watches().add(
        &directory,
        WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::ATTRIB,
    )?;
    let mut events = inotify.into_event_stream(vec![0u8; 4096])?;
    tokio::spawn(async move {
        loop {
            let Some(Ok(event)) = events.next().await else {
                tracing::warn!("the config file watch ended; reload with SIGHUP");
                return;
            };
            if !concerns(event.name.as_deref(), name.as_deref()) {
                continue;
            }
            // Debounce: an editor's save is several events; reload once they stop.
            while let Ok(Some(Ok(_))) = tokio::time::timeout(DEBOUNCE, events.next()).await {}
            if changes.send(()).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Elsewhere: `notify` on the file's directory, debounced.
#[cfg(not(target_os = "linux"))]
fn watch(
    path: &Path,
    changes: mpsc::UnboundedSender<()>,
) -> anyhow::Result<
    notify_debouncer_mini::Debouncer<notify_debouncer_mini::notify::RecommendedWatcher>,
> {
    use notify_debouncer_mini::notify::RecursiveMode;
    use notify_debouncer_mini::{new_debouncer, DebounceEventResult};

    let (directory, name) = watched(path)?;
    let mut debouncer = new_debouncer(DEBOUNCE, move |result: DebounceEventResult| {
        let Ok(events) = result else {
            return;
        };
        if events
            .iter()
            .any(|event| concerns(event.path.file_name(), name.as_deref()))
        {
            let _ = changes.send(());
        }
    })?;
    debouncer
        .watcher()
        .watch(&directory, RecursiveMode::NonRecursive)?;
    Ok(debouncer)
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "nothing".to_string()
    } else {
        names.join(", ")
    }
}
