//! Configuration: loading `gateway.toml`, validating it, and the runtime shape the rest of the
//! gateway reads.
//!
//! `file` is the serde shape of the file. This module turns it into [`Config`]: values resolved
//! (upstream addresses, header names, the effective cookie name), cross-key rules checked, and
//! every error named by its key path and line (`route[1].upstreams[0] (line 42): ...`).
//! Nothing here does I/O beyond reading the file: upstream host names are resolved at run time.

pub mod file;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::HeaderName;

pub use file::AssertionAlgorithm;
pub use file::{
    AuthMode, Balance, GeoipSection, LogFormat, LogSection, LoginProtectionSection, OnLimit,
    RateLimitSection, Registration, StorageSection,
};
use file::{FileConfig, PasswordSection, RouteSection, ServerSection, SessionSection};

/// A configuration problem, phrased for the operator who has to fix the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub fn new(message: impl Into<String>) -> ConfigError {
        ConfigError(message.into())
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageSection,
    /// `[access]`: who may create an account.
    pub access: crate::auth::access::AccessPolicy,
    pub session: SessionConfig,
    pub password: PasswordConfig,
    pub rate_limit: RateLimitSection,
    pub login_protection: LoginProtectionSection,
    pub log: LogSection,
    pub geoip: GeoipConfig,
    pub branding: BrandingConfig,
    /// Where the demo upstream listens, when `[demo]` is enabled.
    pub demo: Option<SocketAddr>,
    pub assertion: AssertionConfig,
    pub routes: Vec<RouteConfig>,
}

/// `[assertion]`: the signed identity assertion (`X-Authgate-Assertion`) for upstreams.
#[derive(Debug, Clone)]
pub struct AssertionConfig {
    pub enabled: bool,
    pub algorithm: AssertionAlgorithm,
    /// `exp - iat`: between 1 s and 60 s.
    pub lifetime: Duration,
    /// The PEM private key to sign with (checked to load at validation); `None`: keys
    /// generated and kept in the database.
    pub key_file: Option<std::path::PathBuf>,
    /// `iss`: the first of `server.public_origin`.
    pub issuer: String,
}

#[derive(Debug, Clone)]
pub struct BrandingConfig {
    pub product_name: String,
    /// Validated `#rrggbb` (or `#rgb`), readable as a background for white text.
    pub accent_color: Option<String>,
    /// The account page's link back to the app (`branding.back_link_url`, `_label`); `None`
    /// when the URL is empty.
    pub back_link: Option<BackLink>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackLink {
    /// A local path (`/`, `/app/`) or an `http(s)://` URL.
    pub url: String,
    pub label: String,
}

#[derive(Debug, Clone)]
pub struct GeoipConfig {
    pub database: Option<std::path::PathBuf>,
    pub country_header: Option<HeaderName>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub threads: usize,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Origins browsers use to reach the gateway (`scheme://host[:port]`, no trailing '/').
    pub public_origins: Vec<String>,
    pub shutdown_grace: Duration,
    /// Operator-listed headers to strip, on top of the built-in identity headers.
    pub strip_headers: Vec<HeaderName>,
    /// The `Strict-Transport-Security` value to send, when enabled.
    pub hsts: Option<String>,
    /// The whole request head must arrive within this (from the first byte on a reused
    /// connection, from the accept on a new one); then 408 and close.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may sit idle between requests.
    pub keepalive_timeout: Duration,
    /// Open connections one client address (IPv6: its /64) may hold.
    pub max_connections_per_ip: u32,
    /// Open connections on the public listener, all clients together.
    pub max_connections: u32,
    /// The graceful-upgrade socket (pingora's `upgrade_sock`).
    pub upgrade_sock: String,
    /// Hosts a full-URL sign-in `rd` may point at (`server.allowed_redirect_hosts`, plus the
    /// hosts of `public_origins`).
    pub allowed_redirect_hosts: crate::auth::redirect::RedirectHosts,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The name actually sent: `__Host-<cookie_name>` when the cookie is Secure.
    pub cookie_name: String,
    pub secure_cookie: bool,
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    pub max_sessions_per_user: u32,
    pub on_limit: OnLimit,
    pub inject_user_email: bool,
    pub inject_session_id: bool,
    /// Send the user's roles upstream as `X-User-Roles` (comma-separated).
    pub inject_user_roles: bool,
    pub bind_session_to_user_agent: bool,
    pub activity_flush_interval: Duration,
    pub expiry_check_interval: Duration,
    pub record_retention: Duration,
    /// How long a gateway may answer for a session Redis validated without asking again
    /// (zero: never; see `session/cache.rs`).
    pub cache_ttl: Duration,
    /// The cookie's `Domain` (lower-case, no leading dot), when it is shared with subdomains;
    /// the cookie is then `__Secure-` prefixed instead of `__Host-`.
    pub cookie_domain: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PasswordConfig {
    pub bcrypt_cost: u32,
    pub min_length: usize,
    /// Resolved: never zero.
    pub max_concurrent_hashes: usize,
    pub hash_queue_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub prefix: String,
    /// Lower-cased, without port.
    pub host: Option<String>,
    /// `host:port`, checked but not resolved (names are looked up at run time).
    pub upstreams: Vec<String>,
    pub auth: AuthMode,
    pub case_insensitive: bool,
    pub allow_encoded_slash: bool,
    /// Forward the path without the matched prefix (`/app/` + `/app/x` → `/x`).
    pub strip_prefix: bool,
    /// Headers set on every request forwarded on this route (never identity or framing
    /// headers: refused at load).
    pub add_request_headers: Vec<(HeaderName, http::HeaderValue)>,
    /// Per client IP on this route, on top of `[rate_limit]`.
    pub rate_limit: Option<RateLimitSection>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// How long an idle keep-alive connection to an upstream is kept for reuse.
    pub idle_timeout: Duration,
    pub health_check: HealthCheckConfig,
    /// Consecutive failed connects that take an upstream out of rotation (0: never), until an
    /// active check succeeds or `failure_cooldown` has passed.
    pub max_connect_failures: u32,
    pub failure_cooldown: Duration,
    /// TLS to the upstreams; `None`: plain HTTP.
    pub tls: Option<UpstreamTls>,
    /// Send the identity assertion on this route (when `[assertion]` is enabled).
    pub assertion: bool,
    /// Which signed-in users this route serves (`allow`); `None`: all of them.
    pub allow: Option<crate::allow::AllowList>,
}

/// Active health checks of a route's upstreams.
#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub probe: Probe,
    /// Zero: no active checks.
    pub interval: Duration,
    /// Consecutive successes that bring a down upstream back.
    pub healthy_threshold: usize,
    /// Consecutive failures that take an upstream down.
    pub unhealthy_threshold: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connect.
    Tcp,
    /// `GET path`; 2xx and 3xx are healthy.
    Http { path: String },
}

/// `tls = true` on a route.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The name sent as SNI and verified in the certificate; `None`: each upstream's host.
    pub sni: Option<String>,
    /// Off only when the file says `tls_verify = false`.
    pub verify: bool,
    /// DER certificates trusted instead of the system's roots (`tls_ca_file`), each already
    /// checked to parse.
    pub ca: Option<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            // A digest, so that a reload sees a changed bundle (even with as many certificates).
            .field(
                "ca_sha256",
                &self.ca.as_ref().map(|certificates| {
                    use sha2::Digest as _;
                    let mut digest = sha2::Sha256::new();
                    for certificate in certificates {
                        digest.update((certificate.len() as u64).to_be_bytes());
                        digest.update(certificate);
                    }
                    hex::encode(digest.finalize())
                }),
            )
            .finish()
    }
}

impl Config {
    /// Reads, parses and validates a config file, then applies `DATABASE_URL` / `REDIS_URL`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Config::from_file_text(path, &text)
    }

    /// [`Config::load`] of text already read from `path` (named in messages).
    pub fn from_file_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut config =
            Config::parse(text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))?;
        config.apply_env(|name| std::env::var(name).ok())?;
        // DATABASE_URL replaces a URL the file check already passed: check what is now in force.
        crate::store::DatabaseUrl::parse(&config.storage.database_url).map_err(|message| {
            ConfigError(format!(
                "storage.database_url (from DATABASE_URL): {message}"
            ))
        })?;
        Ok(config)
    }

    /// Parses and validates config text (no environment).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError(describe_toml(&e, text)))?;
        validate(file).map_err(|invalid| {
            let line = locate(text, &invalid.key)
                .map(|n| format!(" (line {n})"))
                .unwrap_or_default();
            ConfigError(format!("{}{line}: {}", invalid.key, invalid.message))
        })
    }

    /// Every key read only at start-up, with its value (`Debug`), for hot reload to report the
    /// ones a new file changes. Everything not listed here is applied by a reload: routes,
    /// `rate_limit`, `server.strip_headers`, `server.allowed_redirect_hosts`, `access`,
    /// `login_protection`, `branding` and `log.level`.
    /// The destructuring has no `..`: a new key does not compile until it is classified.
    /// Values may hold secrets (a database URL with a password): report keys, never values.
    pub fn restart_only_keys(&self) -> Vec<(&'static str, String)> {
        macro_rules! keys {
            ($section:literal: $($field:ident),+) => {
                [$((concat!($section, ".", stringify!($field)), format!("{:?}", $field))),+]
            };
        }
        let Config {
            server,
            storage,
            access: _,
            session,
            password,
            rate_limit: _,
            login_protection: _,
            log,
            geoip,
            branding: _,
            demo,
            assertion,
            routes: _,
        } = self;
        let ServerConfig {
            listen,
            admin_listen,
            threads,
            trusted_proxies,
            public_origins,
            shutdown_grace,
            strip_headers: _,
            hsts,
            header_timeout,
            keepalive_timeout,
            max_connections_per_ip,
            max_connections,
            upgrade_sock,
            allowed_redirect_hosts: _,
        } = server;
        let StorageSection {
            database_url,
            database_max_connections,
            database_timeout,
            redis_url,
            redis_cluster_urls,
            redis_sentinel_urls,
            redis_sentinel_master,
            redis_key_prefix,
            max_sessions,
            redis_timeout,
        } = storage;
        let SessionConfig {
            cookie_name,
            secure_cookie,
            idle_timeout,
            absolute_timeout,
            max_sessions_per_user,
            on_limit,
            inject_user_email,
            inject_session_id,
            inject_user_roles,
            bind_session_to_user_agent,
            activity_flush_interval,
            expiry_check_interval,
            record_retention,
            cache_ttl,
            cookie_domain,
        } = session;
        let PasswordConfig {
            bcrypt_cost,
            min_length,
            max_concurrent_hashes,
            hash_queue_timeout,
        } = password;
        let LogSection { format, level: _ } = log;
        let GeoipConfig {
            database,
            country_header,
        } = geoip;
        let mut keys = Vec::new();
        keys.extend(keys!("server": listen, admin_listen, threads, trusted_proxies));
        keys.extend(keys!("server": public_origins, shutdown_grace, hsts, header_timeout));
        keys.extend(keys!("server": keepalive_timeout, max_connections_per_ip, max_connections));
        keys.extend(keys!("server": upgrade_sock));
        keys.extend(keys!("storage": database_url, database_max_connections, database_timeout));
        keys.extend(keys!("storage": redis_url, redis_key_prefix, max_sessions, redis_timeout));
        keys.extend(keys!("storage": redis_cluster_urls, redis_sentinel_urls));
        keys.extend(keys!("storage": redis_sentinel_master));
        keys.extend(keys!("session": cookie_name, secure_cookie, idle_timeout, absolute_timeout));
        keys.extend(keys!("session": max_sessions_per_user, on_limit, inject_user_email));
        keys.extend(keys!("session": inject_session_id, bind_session_to_user_agent));
        keys.extend(keys!("session": inject_user_roles));
        keys.extend(keys!("session": activity_flush_interval, expiry_check_interval));
        keys.extend(keys!("session": cache_ttl, cookie_domain));
        keys.extend(keys!("session": record_retention));
        keys.extend(keys!("password": bcrypt_cost, min_length, max_concurrent_hashes));
        keys.extend(keys!("password": hash_queue_timeout));
        keys.extend(keys!("log": format));
        keys.extend(keys!("geoip": database, country_header));
        keys.push(("demo", format!("{demo:?}")));
        // The key file's content is re-read on every reload (and every few seconds), so a
        // replaced file takes effect without a restart; its path is read at start-up.
        let AssertionConfig {
            enabled,
            algorithm,
            lifetime,
            key_file,
            issuer: _,
        } = assertion;
        keys.extend(keys!("assertion": enabled, algorithm, lifetime, key_file));
        keys
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(url) = var("DATABASE_URL").filter(|v| !v.is_empty()) {
            self.storage.database_url = url;
        }
        if let Some(url) = var("REDIS_URL").filter(|v| !v.is_empty()) {
            // An instance whose environment pointed it at another Redis than its peers would
            // not see their sessions or revocations: refused, not resolved silently.
            if !self.storage.redis_cluster_urls.is_empty()
                || !self.storage.redis_sentinel_urls.is_empty()
            {
                return Err(ConfigError(
                    "REDIS_URL is set, but the file chooses Redis Cluster or Sentinel \
                     (storage.redis_cluster_urls / storage.redis_sentinel_urls): unset one"
                        .to_string(),
                ));
            }
            let url = url.trim().to_string();
            if !is_redis_url(&url) {
                return Err(ConfigError(
                    "storage.redis_url (from REDIS_URL): must be a redis:// URL (rediss://, TLS, \
                     is not built in)"
                        .to_string(),
                ));
            }
            self.storage.redis_url = url;
        }
        Ok(())
    }
}

fn describe_toml(error: &toml::de::Error, text: &str) -> String {
    // toml's Display quotes the offending source line, which may hold a secret (a database
    // URL with its password): report the position, the key and the message only.
    let message = error.message().trim_end();
    let Some(span) = error.span() else {
        return format!("TOML parse error: {message}");
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    match key_at(text, span.start) {
        Some(key) => format!("TOML parse error at line {line}, column {column} ({key}): {message}"),
        None => format!("TOML parse error at line {line}, column {column}: {message}"),
    }
}

/// The dotted key whose value starts at byte `at` (`session.idle_timeout`, `route.prefix`):
/// the key left of `=` on that line, under the last table header above it.
fn key_at(text: &str, at: usize) -> Option<String> {
    let line_start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..)?.lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let section = text
        .get(..line_start)?
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|header| header.trim_matches(['[', ']', ' ']).to_string());
    Some(match section {
        Some(section) => format!("{section}.{key}"),
        None => key.to_string(),
    })
}

/// Durations outside `[min, max]` are refused (an absurd value would overflow clocks).
fn within(key: &str, value: Duration, min: Duration, max: Duration) -> Result<(), Invalid> {
    if value < min || value > max {
        return Err(invalid(
            key,
            format!(
                "must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(())
}

struct Invalid {
    key: String,
    message: String,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        message: message.into(),
    }
}

fn validate(file: FileConfig) -> Result<Config, Invalid> {
    let server = validate_server(file.server)?;
    let session = validate_session(file.session, &server.public_origins)?;
    let password = validate_password(file.password)?;
    validate_storage(&file.storage)?;
    let rate_limit = file.rate_limit;
    if rate_limit.requests_per_second > 0 && rate_limit.burst == 0 {
        return Err(invalid(
            "rate_limit.burst",
            "must be at least 1 when requests_per_second is set",
        ));
    }
    let login_protection = file.login_protection;
    if login_protection.max_failures == 0 {
        return Err(invalid(
            "login_protection.max_failures",
            "must be at least 1",
        ));
    }
    if login_protection.max_attempts_per_ip == 0 {
        return Err(invalid(
            "login_protection.max_attempts_per_ip",
            "must be at least 1",
        ));
    }
    if login_protection.max_registrations_per_ip == 0 {
        return Err(invalid(
            "login_protection.max_registrations_per_ip",
            "must be at least 1",
        ));
    }
    for (key, value) in [
        ("login_protection.window", login_protection.window),
        ("login_protection.lockout", login_protection.lockout),
    ] {
        within(
            key,
            value,
            Duration::from_secs(1),
            Duration::from_secs(365 * 86_400),
        )?;
    }
    tracing_subscriber::EnvFilter::try_new(&file.log.level)
        .map_err(|e| invalid("log.level", format!("invalid filter: {e}")))?;
    if file.routes.is_empty() {
        return Err(invalid("route", "at least one [[route]] is required"));
    }
    let routes = file
        .routes
        .into_iter()
        .enumerate()
        .map(|(index, route)| validate_route(index, route, &server.strip_headers))
        .collect::<Result<Vec<_>, _>>()?;
    for (index, route) in routes.iter().enumerate() {
        let duplicate = routes[..index]
            .iter()
            .any(|earlier| earlier.prefix == route.prefix && earlier.host == route.host);
        if duplicate {
            return Err(invalid(
                format!("route[{index}].prefix"),
                format!("duplicate route for prefix \"{}\"", route.prefix),
            ));
        }
    }
    let geoip = validate_geoip(file.geoip)?;
    let branding = validate_branding(file.branding)?;
    let access = crate::auth::access::AccessPolicy::new(
        file.access.registration,
        &file.access.allowed_email_domains,
    )
    .map_err(|(index, message)| {
        invalid(format!("access.allowed_email_domains[{index}]"), message)
    })?;
    let demo = file.demo.enabled.then_some(file.demo.listen);
    if demo.is_some_and(|addr| addr == server.listen || addr == server.admin_listen) {
        return Err(invalid(
            "demo.listen",
            "must differ from server.listen and server.admin_listen",
        ));
    }
    let assertion = validate_assertion(file.assertion, &server)?;
    Ok(Config {
        server,
        storage: file.storage,
        access,
        session,
        password,
        rate_limit,
        login_protection,
        log: file.log,
        geoip,
        branding,
        demo,
        assertion,
        routes,
    })
}

/// `[assertion]`: the lifetime within bounds (an upstream must be able to trust `exp`), and a
/// key file that loads as a key of the chosen algorithm (else the gateway could not sign).
fn validate_assertion(
    assertion: file::AssertionSection,
    server: &ServerConfig,
) -> Result<AssertionConfig, Invalid> {
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&assertion.lifetime) {
        return Err(invalid(
            "assertion.lifetime",
            "must be between 1s and 60s: an assertion is a short-lived proof, and an upstream \
             accepts it until its exp",
        ));
    }
    let key_file = match assertion.key_file.trim() {
        "" => None,
        path => Some(std::path::PathBuf::from(path)),
    };
    if let (true, Some(path)) = (assertion.enabled, &key_file) {
        crate::assertion::keys::SigningKey::from_pem_file(path, assertion.algorithm)
            .map_err(|message| invalid("assertion.key_file", message))?;
    }
    Ok(AssertionConfig {
        enabled: assertion.enabled,
        algorithm: assertion.algorithm,
        lifetime: assertion.lifetime,
        key_file,
        issuer: server.public_origins.first().cloned().unwrap_or_default(),
    })
}

fn validate_server(server: ServerSection) -> Result<ServerConfig, Invalid> {
    if server.threads == 0 {
        return Err(invalid("server.threads", "must be at least 1"));
    }
    within(
        "server.shutdown_grace",
        server.shutdown_grace,
        Duration::ZERO,
        Duration::from_secs(3600),
    )?;
    within(
        "server.header_timeout",
        server.header_timeout,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    )?;
    within(
        "server.keepalive_timeout",
        server.keepalive_timeout,
        Duration::from_secs(1),
        Duration::from_secs(86_400),
    )?;
    if server.max_connections_per_ip == 0 {
        return Err(invalid(
            "server.max_connections_per_ip",
            "must be at least 1",
        ));
    }
    if server.max_connections == 0 {
        return Err(invalid("server.max_connections", "must be at least 1"));
    }
    if server.listen == server.admin_listen {
        return Err(invalid(
            "server.admin_listen",
            "must differ from server.listen",
        ));
    }
    if server.public_origin.is_empty() {
        return Err(invalid(
            "server.public_origin",
            "at least one origin is required",
        ));
    }
    let mut public_origins = Vec::new();
    for (index, origin) in server.public_origin.iter().enumerate() {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        // A host name or IP literal and a port: no path, query, fragment or userinfo.
        let authority_ok = |rest: &str| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        };
        if !authority.is_some_and(authority_ok) {
            return Err(invalid(
                format!("server.public_origin[{index}]"),
                format!(
                    "\"{origin}\" must be scheme://host[:port], e.g. \"https://app.example.com\""
                ),
            ));
        }
        public_origins.push(origin);
    }
    let strip_headers = server
        .strip_headers
        .iter()
        .enumerate()
        .map(|(index, name)| {
            HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                invalid(
                    format!("server.strip_headers[{index}]"),
                    format!("\"{name}\" is not a valid header name"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let hsts = match &server.hsts {
        file::Hsts::Enabled(false) => None,
        file::Hsts::Enabled(true) => Some("max-age=31536000".to_string()),
        file::Hsts::Value(value) => {
            let value = value.trim();
            let max_age_ok = value
                .split(';')
                .next()
                .and_then(|first| first.trim().strip_prefix("max-age="))
                .is_some_and(|seconds| seconds.parse::<u64>().is_ok());
            if !max_age_ok || http::HeaderValue::from_str(value).is_err() {
                return Err(invalid(
                    "server.hsts",
                    format!(
                        "\"{value}\" must be true, false or a header value such as \
                         \"max-age=31536000; includeSubDomains\""
                    ),
                ));
            }
            Some(value.to_string())
        }
    };
    let allowed_redirect_hosts = crate::auth::redirect::RedirectHosts::parse(
        &server.allowed_redirect_hosts,
        &public_origins,
    )
    .map_err(|(index, message)| {
        invalid(format!("server.allowed_redirect_hosts[{index}]"), message)
    })?;
    let upgrade_sock = server.upgrade_sock.trim().to_string();
    // sockaddr_un holds at most 107 bytes of path.
    if upgrade_sock.is_empty() || upgrade_sock.len() > 100 {
        return Err(invalid(
            "server.upgrade_sock",
            "must be a socket path of 1 to 100 bytes",
        ));
    }
    Ok(ServerConfig {
        hsts,
        listen: server.listen,
        admin_listen: server.admin_listen,
        threads: server.threads,
        trusted_proxies: server
            .trusted_proxies
            .into_iter()
            .map(crate::client_ip::canonical_net)
            .collect(),
        public_origins,
        shutdown_grace: server.shutdown_grace,
        strip_headers,
        header_timeout: server.header_timeout,
        keepalive_timeout: server.keepalive_timeout,
        max_connections_per_ip: server.max_connections_per_ip,
        max_connections: server.max_connections,
        upgrade_sock,
        allowed_redirect_hosts,
    })
}

/// Which Redis the live sessions and login counters are kept in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisDeployment {
    /// `storage.redis_url`.
    Standalone(String),
    /// `storage.redis_cluster_urls`: seed nodes; the rest of the cluster is discovered.
    Cluster(Vec<String>),
    /// `storage.redis_sentinel_urls` + `storage.redis_sentinel_master`: the master is asked of
    /// the sentinels, and asked again after a failover.
    Sentinel { urls: Vec<String>, master: String },
}

impl StorageSection {
    /// The Redis deployment configured, or `None` for the in-process stores. Validation has
    /// made sure at most one is set.
    pub fn redis(&self) -> Option<RedisDeployment> {
        let standalone = self.redis_url.trim();
        if !standalone.is_empty() {
            Some(RedisDeployment::Standalone(standalone.to_string()))
        } else if !self.redis_cluster_urls.is_empty() {
            Some(RedisDeployment::Cluster(self.redis_cluster_urls.clone()))
        } else if !self.redis_sentinel_urls.is_empty() {
            Some(RedisDeployment::Sentinel {
                urls: self.redis_sentinel_urls.clone(),
                master: self.redis_sentinel_master.trim().to_string(),
            })
        } else {
            None
        }
    }
}

/// `redis://` only: this build has no TLS to Redis (`rediss://` would fail at every connect).
fn is_redis_url(url: &str) -> bool {
    url.starts_with("redis://")
}

fn validate_redis(storage: &StorageSection) -> Result<(), Invalid> {
    let redis = storage.redis_url.trim();
    if !(redis.is_empty() || is_redis_url(redis)) {
        return Err(invalid(
            "storage.redis_url",
            "must be a redis:// URL (rediss://, TLS to Redis, is not built in), or empty for the \
             in-process session store",
        ));
    }
    for (key, urls) in [
        ("storage.redis_cluster_urls", &storage.redis_cluster_urls),
        ("storage.redis_sentinel_urls", &storage.redis_sentinel_urls),
    ] {
        if let Some(bad) = urls.iter().position(|url| !is_redis_url(url.trim())) {
            return Err(invalid(
                key,
                format!("entry {bad} must be a redis:// URL (rediss://, TLS, is not built in)"),
            ));
        }
    }
    let chosen: Vec<&str> = [
        (!redis.is_empty(), "redis_url"),
        (!storage.redis_cluster_urls.is_empty(), "redis_cluster_urls"),
        (
            !storage.redis_sentinel_urls.is_empty(),
            "redis_sentinel_urls",
        ),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    if chosen.len() > 1 {
        return Err(invalid(
            format!("storage.{}", chosen[1]),
            format!(
                "set only one of storage.redis_url, storage.redis_cluster_urls and \
                 storage.redis_sentinel_urls (found {})",
                chosen.join(" and ")
            ),
        ));
    }
    let master = storage.redis_sentinel_master.trim();
    if !storage.redis_sentinel_urls.is_empty() && master.is_empty() {
        return Err(invalid(
            "storage.redis_sentinel_master",
            "name the master the sentinels watch (their `sentinel monitor` name)",
        ));
    }
    if storage.redis_sentinel_urls.is_empty() && !master.is_empty() {
        return Err(invalid(
            "storage.redis_sentinel_master",
            "needs storage.redis_sentinel_urls",
        ));
    }
    // The keys' hash tags (`{...}`) keep each user's keys in one Redis Cluster slot: a brace
    // in the prefix would become the tag instead.
    let prefix_ok = storage
        .redis_key_prefix
        .chars()
        .all(|c| c.is_ascii_graphic() && c != '{' && c != '}');
    if !prefix_ok {
        return Err(invalid(
            "storage.redis_key_prefix",
            "may hold only visible ASCII characters other than '{' and '}'",
        ));
    }
    Ok(())
}

fn validate_storage(storage: &StorageSection) -> Result<(), Invalid> {
    crate::store::DatabaseUrl::parse(&storage.database_url)
        .map_err(|message| invalid("storage.database_url", message))?;
    validate_redis(storage)?;
    if storage.max_sessions == 0 {
        return Err(invalid("storage.max_sessions", "must be at least 1"));
    }
    if storage.database_max_connections == 0 {
        return Err(invalid(
            "storage.database_max_connections",
            "must be at least 1",
        ));
    }
    within(
        "storage.database_timeout",
        storage.database_timeout,
        Duration::from_millis(10),
        Duration::from_secs(3600),
    )?;
    Ok(())
}

fn validate_session(
    session: SessionSection,
    public_origins: &[String],
) -> Result<SessionConfig, Invalid> {
    let name_ok = !session.cookie_name.is_empty()
        && session
            .cookie_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        return Err(invalid(
            "session.cookie_name",
            "use letters, digits, '-', '_' or '.'",
        ));
    }
    if session.idle_timeout < Duration::from_secs(1) {
        return Err(invalid("session.idle_timeout", "must be at least 1s"));
    }
    if session.absolute_timeout < Duration::from_secs(1) {
        return Err(invalid("session.absolute_timeout", "must be at least 1s"));
    }
    for (key, value) in [
        (
            "session.activity_flush_interval",
            session.activity_flush_interval,
        ),
        (
            "session.expiry_check_interval",
            session.expiry_check_interval,
        ),
    ] {
        if value < Duration::from_millis(100) {
            return Err(invalid(key, "must be at least 100ms"));
        }
    }
    if session.cache_ttl > Duration::from_secs(60) {
        return Err(invalid(
            "session.cache_ttl",
            "at most 60s (it bounds how long a missed invalidation could go unnoticed)",
        ));
    }
    if session.max_sessions_per_user == 0 {
        return Err(invalid(
            "session.max_sessions_per_user",
            "must be at least 1",
        ));
    }
    let cookie_domain = validate_cookie_domain(&session.cookie_domain, public_origins)?;
    // `__Host-` forbids a Domain attribute; `__Secure-` still makes browsers refuse the cookie
    // from plain-http pages.
    let cookie_name = match (session.secure_cookie, &cookie_domain) {
        (true, None) => format!("__Host-{}", session.cookie_name),
        (true, Some(_)) => format!("__Secure-{}", session.cookie_name),
        (false, _) => session.cookie_name,
    };
    Ok(SessionConfig {
        cookie_name,
        secure_cookie: session.secure_cookie,
        idle_timeout: session.idle_timeout,
        absolute_timeout: session.absolute_timeout,
        max_sessions_per_user: session.max_sessions_per_user,
        on_limit: session.on_limit,
        inject_user_email: session.inject_user_email,
        inject_session_id: session.inject_session_id,
        inject_user_roles: session.inject_user_roles,
        bind_session_to_user_agent: session.bind_session_to_user_agent,
        activity_flush_interval: session.activity_flush_interval,
        expiry_check_interval: session.expiry_check_interval,
        record_retention: session.record_retention,
        cache_ttl: session.cache_ttl,
        cookie_domain,
    })
}

/// `session.cookie_domain`: "" (none) or a domain every `server.public_origin` lies in, since
/// browsers refuse a cookie whose Domain does not cover the page that sets it.
fn validate_cookie_domain(
    domain: &str,
    public_origins: &[String],
) -> Result<Option<String>, Invalid> {
    let domain = domain.trim().trim_start_matches('.').to_ascii_lowercase();
    if domain.is_empty() {
        return Ok(None);
    }
    let name_ok = domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        && domain.parse::<std::net::Ipv4Addr>().is_err();
    if !name_ok {
        return Err(invalid(
            "session.cookie_domain",
            format!("\"{domain}\" must be a domain name such as \".example.com\""),
        ));
    }
    for origin in public_origins {
        let authority = origin.split_once("://").map_or(origin.as_str(), |(_, a)| a);
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority,
        };
        if host != domain && !host.ends_with(&format!(".{domain}")) {
            return Err(invalid(
                "session.cookie_domain",
                format!(
                    "\"{domain}\" does not cover the gateway's origin {origin} \
                     (server.public_origin), so browsers would refuse the cookie there; list \
                     only origins within the domain"
                ),
            ));
        }
    }
    Ok(Some(domain))
}

fn validate_branding(branding: file::BrandingSection) -> Result<BrandingConfig, Invalid> {
    let product_name = branding.product_name.trim().to_string();
    if product_name.is_empty() || product_name.chars().count() > 60 {
        return Err(invalid(
            "branding.product_name",
            "must be 1 to 60 characters",
        ));
    }
    let accent_color = match branding.accent_color.trim() {
        "" => None,
        color => {
            let luminance = hex_color_luminance(color).ok_or_else(|| {
                invalid(
                    "branding.accent_color",
                    format!("\"{color}\" is not a colour; write #rgb or #rrggbb"),
                )
            })?;
            // Buttons put white text on the accent: require WCAG AA contrast (4.5:1).
            let contrast = 1.05 / (luminance + 0.05);
            if contrast < 4.5 {
                return Err(invalid(
                    "branding.accent_color",
                    format!(
                        "\"{color}\" is too light for white text (contrast {contrast:.1}:1, need 4.5:1)"
                    ),
                ));
            }
            Some(color.to_ascii_lowercase())
        }
    };
    let back_link = match branding.back_link_url.trim() {
        "" => None,
        url => {
            check_back_link_url(url).map_err(|message| {
                invalid("branding.back_link_url", format!("\"{url}\" {message}"))
            })?;
            let label = branding.back_link_label.trim();
            if label.is_empty() || label.chars().count() > 60 {
                return Err(invalid(
                    "branding.back_link_label",
                    "must be 1 to 60 characters",
                ));
            }
            Some(BackLink {
                url: url.to_string(),
                label: label.to_string(),
            })
        }
    };
    Ok(BrandingConfig {
        product_name,
        accent_color,
        back_link,
    })
}

/// `branding.back_link_url`: a local path (`/app/`, not `//host`) or an `http(s)://host` URL,
/// without spaces, control characters or backslashes (it is written into every account page).
fn check_back_link_url(url: &str) -> Result<(), &'static str> {
    if url.len() > 2048
        || url
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return Err("must not hold spaces, control characters or backslashes");
    }
    if url.starts_with('/') && !url.starts_with("//") {
        return Ok(());
    }
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with(['/', '?', '#', '@']) => Ok(()),
        _ => Err("must be a local path (\"/\", \"/app/\") or an http(s):// URL"),
    }
}

/// Relative luminance (WCAG) of `#rgb` / `#rrggbb`.
fn hex_color_luminance(color: &str) -> Option<f64> {
    let hex = color.strip_prefix('#')?;
    let expanded: String = match hex.len() {
        3 => hex.chars().flat_map(|c| [c, c]).collect(),
        6 => hex.to_string(),
        _ => return None,
    };
    let channel = |i: usize| -> Option<f64> {
        let value = f64::from(u8::from_str_radix(expanded.get(i..i + 2)?, 16).ok()?) / 255.0;
        Some(if value <= 0.03928 {
            value / 12.92
        } else {
            ((value + 0.055) / 1.055).powf(2.4)
        })
    };
    Some(0.2126 * channel(0)? + 0.7152 * channel(2)? + 0.0722 * channel(4)?)
}

fn validate_geoip(geoip: GeoipSection) -> Result<GeoipConfig, Invalid> {
    let database = match geoip.database.trim() {
        "" => None,
        path => {
            let path = std::path::PathBuf::from(path);
            if !path.is_file() {
                return Err(invalid(
                    "geoip.database",
                    format!("no such file: {}", path.display()),
                ));
            }
            Some(path)
        }
    };
    let country_header = match geoip.country_header.trim() {
        "" => None,
        name => Some(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            invalid(
                "geoip.country_header",
                format!("\"{name}\" is not a valid header name"),
            )
        })?),
    };
    Ok(GeoipConfig {
        database,
        country_header,
    })
}

fn validate_password(password: PasswordSection) -> Result<PasswordConfig, Invalid> {
    if !(4..=31).contains(&password.bcrypt_cost) {
        return Err(invalid("password.bcrypt_cost", "must be between 4 and 31"));
    }
    if !(1..=72).contains(&password.min_length) {
        return Err(invalid("password.min_length", "must be between 1 and 72"));
    }
    within(
        "password.hash_queue_timeout",
        password.hash_queue_timeout,
        Duration::from_millis(1),
        Duration::from_secs(60),
    )?;
    let max_concurrent_hashes = match password.max_concurrent_hashes {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    Ok(PasswordConfig {
        bcrypt_cost: password.bcrypt_cost,
        min_length: password.min_length,
        max_concurrent_hashes,
        hash_queue_timeout: password.hash_queue_timeout,
    })
}

fn validate_route(
    index: usize,
    route: RouteSection,
    strip_headers: &[HeaderName],
) -> Result<RouteConfig, Invalid> {
    let key = |name: &str| format!("route[{index}].{name}");
    // Prefixes are written in the canonical form request paths are matched in.
    let prefix = crate::path::normalize(route.prefix.as_bytes())
        .map_err(|error| {
            invalid(
                key("prefix"),
                format!("\"{}\": {}", route.prefix, error.message()),
            )
        })?
        .to_string();
    if crate::routes::is_auth_spelling(&prefix) {
        return Err(invalid(
            key("prefix"),
            "/auth is answered by the gateway itself and cannot be routed",
        ));
    }
    let tls = validate_upstream_tls(&route, &key)?;
    let host = match route.host {
        Some(host) if host.trim().is_empty() => {
            return Err(invalid(key("host"), "must not be empty"))
        }
        Some(host) => Some(
            crate::target::parse_host(host.trim().as_bytes())
                .ok()
                .filter(|parsed| parsed.port.is_none())
                .ok_or_else(|| {
                    invalid(
                        key("host"),
                        format!("\"{host}\" must be a host name without a port"),
                    )
                })?
                .name,
        ),
        None => None,
    };
    if route.upstreams.is_empty() {
        return Err(invalid(
            key("upstreams"),
            "at least one upstream is required",
        ));
    }
    let upstreams = route
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, text)| {
            check_upstream(text)
                .map_err(|message| invalid(format!("{}[{i}]", key("upstreams")), message))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (name, value) in [
        ("connect_timeout", route.connect_timeout),
        ("read_timeout", route.read_timeout),
        ("write_timeout", route.write_timeout),
        ("idle_timeout", route.idle_timeout),
    ] {
        within(
            &key(name),
            value,
            Duration::from_millis(1),
            Duration::from_secs(86_400),
        )?;
    }
    within(
        &key("health_check_interval"),
        route.health_check_interval,
        Duration::ZERO,
        Duration::from_secs(86_400),
    )?;
    within(
        &key("failure_cooldown"),
        route.failure_cooldown,
        Duration::ZERO,
        Duration::from_secs(86_400),
    )?;
    for (name, value) in [
        ("healthy_threshold", route.healthy_threshold),
        ("unhealthy_threshold", route.unhealthy_threshold),
    ] {
        if !(1..=100).contains(&value) {
            return Err(invalid(key(name), "must be between 1 and 100"));
        }
    }
    let probe = match route.health_check {
        file::HealthCheckKind::Tcp => Probe::Tcp,
        file::HealthCheckKind::Http => {
            let path = route.health_check_path.trim();
            let path_ok = path.starts_with('/')
                && path.parse::<http::uri::PathAndQuery>().is_ok()
                && !path.contains('#');
            if !path_ok {
                return Err(invalid(
                    key("health_check_path"),
                    format!("\"{path}\" must be a path such as \"/healthz\""),
                ));
            }
            Probe::Http {
                path: path.to_string(),
            }
        }
    };
    let add_request_headers = route
        .add_request_headers
        .iter()
        .map(|(name, value)| check_added_header(name, value, strip_headers))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|message| invalid(key("add_request_headers"), message))?;
    let rate_limit = match route.rate_limit {
        None => None,
        Some(limit) if limit.requests_per_second == 0 || limit.burst == 0 => {
            return Err(invalid(
                key("rate_limit"),
                "requests_per_second and burst must be at least 1 (leave rate_limit out for none)",
            ))
        }
        Some(limit) => Some(RateLimitSection {
            requests_per_second: limit.requests_per_second,
            burst: limit.burst,
        }),
    };
    if route.strip_prefix && !prefix.ends_with('/') {
        // "/api" also matches "/apiadmin", which would be forwarded as "/admin".
        return Err(invalid(
            key("strip_prefix"),
            format!(
                "needs a prefix ending in '/' (e.g. \"{prefix}/\"), so that only whole path \
                 segments are removed"
            ),
        ));
    }
    let allow = match &route.allow {
        None => None,
        Some(_) if route.auth == AuthMode::Public => {
            return Err(invalid(
                key("allow"),
                "a public route serves everyone; set auth = \"required\" to limit it to \
                 these users",
            ))
        }
        Some(entries) => Some(
            crate::allow::AllowList::parse(entries)
                .map_err(|(at, message)| invalid(format!("{}[{at}]", key("allow")), message))?,
        ),
    };
    Ok(RouteConfig {
        allow,
        prefix,
        host,
        upstreams,
        auth: route.auth,
        case_insensitive: route.case_insensitive,
        allow_encoded_slash: route.allow_encoded_slash,
        strip_prefix: route.strip_prefix,
        add_request_headers,
        rate_limit,
        balance: route.balance,
        connect_timeout: route.connect_timeout,
        read_timeout: route.read_timeout,
        write_timeout: route.write_timeout,
        idle_timeout: route.idle_timeout,
        health_check: HealthCheckConfig {
            probe,
            interval: route.health_check_interval,
            healthy_threshold: route.healthy_threshold,
            unhealthy_threshold: route.unhealthy_threshold,
        },
        max_connect_failures: route.max_connect_failures,
        failure_cooldown: route.failure_cooldown,
        tls,
        assertion: route.assertion,
    })
}

/// Headers the gateway manages itself: framing, hop-by-hop and cookie headers. A route may not
/// add them (nor any identity or forwarding header, see `identity.rs`).
const UNADDABLE_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "cookie",
    "expect",
    // The gateway's own correlation id, set on every request.
    "x-request-id",
];

/// One `add_request_headers` entry: a legal name and value, and never a header that carries
/// identity (an upstream must only ever see the identity the gateway established).
fn check_added_header(
    name: &str,
    value: &str,
    strip_headers: &[HeaderName],
) -> Result<(HeaderName, http::HeaderValue), String> {
    let header = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("\"{name}\" is not a valid header name"))?;
    let value = http::HeaderValue::from_str(value)
        .map_err(|_| format!("the value of \"{name}\" holds characters a header cannot carry"))?;
    if crate::identity::IdentityHeaders::new(strip_headers.to_vec()).is_reserved(&header) {
        return Err(format!(
            "\"{name}\" is an identity or forwarding header, which only the gateway sets"
        ));
    }
    if UNADDABLE_HEADERS.contains(&header.as_str()) {
        return Err(format!(
            "\"{name}\" describes the connection or the gateway's cookies and cannot be added"
        ));
    }
    Ok((header, value))
}

/// `tls`, `sni`, `tls_verify` and `tls_ca_file` of one route. The CA file is read and its
/// certificates parsed now, so a bad file is a load error rather than a failing upstream.
fn validate_upstream_tls(
    route: &RouteSection,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<UpstreamTls>, Invalid> {
    if !route.tls {
        for (name, set) in [
            ("sni", route.sni.is_some()),
            ("tls_ca_file", route.tls_ca_file.is_some()),
            ("tls_verify", !route.tls_verify),
        ] {
            if set {
                return Err(invalid(key(name), "needs tls = true on this route"));
            }
        }
        return Ok(None);
    }
    let sni = match route.sni.as_deref().map(str::trim) {
        None => None,
        Some(sni) => Some(
            crate::target::parse_host(sni.as_bytes())
                .ok()
                .filter(|host| host.port.is_none() && !sni.is_empty())
                .ok_or_else(|| {
                    invalid(
                        key("sni"),
                        format!("\"{sni}\" must be a host name without a port"),
                    )
                })?
                .name,
        ),
    };
    if sni.is_none() {
        // Without `sni`, each address is verified against the name written for it; addresses
        // are resolved per pool, so one pool cannot tell two names apart.
        let mut names: Vec<&str> = route
            .upstreams
            .iter()
            .filter_map(|written| written.trim().rsplit_once(':').map(|(host, _)| host))
            .filter(|host| host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('['))
            .collect();
        names.sort_unstable();
        names.dedup();
        if names.len() > 1 {
            return Err(invalid(
                key("sni"),
                format!(
                    "with tls = true, upstreams naming several hosts ({}) need one sni for all \
                     of them, or one route per host",
                    names.join(", ")
                ),
            ));
        }
    }
    let ca = match route.tls_ca_file.as_deref().map(str::trim) {
        None => None,
        Some(_) if !route.tls_verify => {
            return Err(invalid(
                key("tls_ca_file"),
                "has no effect with tls_verify = false; remove one of them",
            ))
        }
        Some(path) => {
            Some(read_ca_file(path).map_err(|message| invalid(key("tls_ca_file"), message))?)
        }
    };
    Ok(Some(UpstreamTls {
        sni,
        verify: route.tls_verify,
        ca,
    }))
}

/// The certificates of a PEM file, as DER, each checked to parse as X.509.
fn read_ca_file(path: &str) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut certificates = Vec::new();
    for item in rustls_pemfile::certs(&mut text.as_slice()) {
        let der = item.map_err(|e| format!("{path}: not a PEM certificate file ({e})"))?;
        if x509_parser::parse_x509_certificate(der.as_ref()).is_err() {
            return Err(format!("{path}: a certificate in it cannot be parsed"));
        }
        certificates.push(der.as_ref().to_vec());
    }
    if certificates.is_empty() {
        return Err(format!(
            "{path}: no PEM certificate (BEGIN CERTIFICATE) in it"
        ));
    }
    Ok(certificates)
}

/// Checks an upstream written as `host:port` (an IP literal or a host name) without resolving
/// it: names are looked up at run time, so `authgate check` needs no network.
fn check_upstream(text: &str) -> Result<String, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr.to_string());
    }
    let lower = text.to_ascii_lowercase();
    if let Some(rest) = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
    {
        return Err(format!(
            "invalid upstream address \"{text}\": write HOST:PORT without a scheme, e.g. \"{}\"",
            rest.trim_end_matches('/')
        ));
    }
    match crate::target::parse_host(text.as_bytes()) {
        Ok(host) if host.port.is_some() && !host.name.contains(':') => Ok(text.to_string()),
        _ => Err(format!(
            "invalid upstream address \"{text}\"; write HOST:PORT, e.g. \"127.0.0.1:3000\""
        )),
    }
}

/// Best-effort line number (1-based) of a key path such as `session.idle_timeout` or
/// `route[2].upstreams[0]`, for error messages.
fn locate(text: &str, key_path: &str) -> Option<usize> {
    let mut parts = key_path.split('.');
    let table = parts.next()?;
    let key = parts.next().map(|k| k.split('[').next().unwrap_or(k));
    let (table_name, wanted_index) = match table.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (table, None),
    };
    let mut in_table = false;
    let mut seen = 0usize;
    let mut table_line = None;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            let header = trimmed.trim_matches(|c| c == '[' || c == ']').trim();
            in_table = false;
            if header == table_name {
                match wanted_index {
                    Some(wanted) => {
                        in_table = seen == wanted;
                        seen += 1;
                    }
                    None => in_table = true,
                }
                if in_table {
                    table_line = Some(number + 1);
                }
            }
            continue;
        }
        if let (true, Some(key)) = (in_table, key) {
            let name = trimmed.split('=').next().unwrap_or("").trim();
            if name == key {
                return Some(number + 1);
            }
        }
    }
    table_line
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[[route]]\nprefix = \"/\"\nupstreams = [\"127.0.0.1:3000\"]\n";

    #[test]
    fn minimal_file_gets_documented_defaults() {
        let config = Config::parse(MINIMAL).expect("valid");
        assert_eq!(config.session.cookie_name, "authgate_session");
        assert_eq!(config.session.idle_timeout, Duration::from_secs(86_400));
        assert_eq!(config.password.bcrypt_cost, 12);
        assert_eq!(config.routes[0].auth, AuthMode::Required);
    }

    #[test]
    fn shipped_gateway_toml_is_valid() {
        let text = include_str!("../../gateway.toml");
        Config::parse(text).expect("the shipped gateway.toml must validate");
    }

    #[test]
    fn bad_duration_names_line_and_value() {
        let text = format!("[session]\nidle_timeout = \"abc\"\n{MINIMAL}");
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
        assert!(error.contains("idle_timeout"), "{error}");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let text = format!("[session]\nidel_timeout = \"1h\"\n{MINIMAL}");
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(error.contains("idel_timeout"), "{error}");
    }

    #[test]
    fn bad_upstream_names_route_index_and_line() {
        let text = format!("{MINIMAL}[[route]]\nprefix = \"/x/\"\nupstreams = [\"nope\"]\n");
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(
            error.starts_with("route[1].upstreams[0] (line 6)"),
            "{error}"
        );
    }

    #[test]
    fn upstream_names_are_checked_not_resolved() {
        let with = |upstream: &str| {
            Config::parse(&format!(
                "[[route]]\nprefix = \"/\"\nupstreams = [\"{upstream}\"]\n"
            ))
        };
        assert_eq!(
            with("app.internal.invalid:8080").unwrap().routes[0].upstreams,
            ["app.internal.invalid:8080"]
        );
        assert!(with("[::1]:3000").is_ok());
        let error = with("http://127.0.0.1:3000/").unwrap_err().to_string();
        assert!(
            error.contains("without a scheme") && error.contains("\"127.0.0.1:3000\""),
            "{error}"
        );
        assert!(with("app.internal").is_err());
        assert!(with("app:internal:1").is_err());
    }

    #[test]
    fn secure_cookie_gets_host_prefix() {
        let text = format!("[session]\nsecure_cookie = true\n{MINIMAL}");
        let config = Config::parse(&text).expect("valid");
        assert_eq!(config.session.cookie_name, "__Host-authgate_session");
    }

    #[test]
    fn public_origins_are_scheme_host_and_port_only() {
        for bad in [
            "https://evil.com#.example.com",
            "https://evil.com?.example.com",
            "https://user@example.com",
            "https://example.com/path",
            "ftp://example.com",
            "https://",
        ] {
            let text = format!("[server]\npublic_origin = \"{bad}\"\n{MINIMAL}");
            let error = Config::parse(&text).expect_err(bad).to_string();
            assert!(error.contains("server.public_origin[0]"), "{bad}: {error}");
        }
        for good in [
            "https://app.example.com",
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
        ] {
            let text = format!("[server]\npublic_origin = \"{good}\"\n{MINIMAL}");
            assert!(Config::parse(&text).is_ok(), "{good}");
        }
    }

    #[test]
    fn session_cache_ttl_is_at_most_a_minute() {
        let text = format!("[session]\ncache_ttl = \"61s\"\n{MINIMAL}");
        let error = Config::parse(&text).expect_err("61s").to_string();
        assert!(error.contains("session.cache_ttl"), "{error}");
        let text = format!("[session]\ncache_ttl = \"60s\"\n{MINIMAL}");
        assert!(Config::parse(&text).is_ok());
    }

    #[test]
    fn environment_overrides_storage_urls() {
        let mut config = Config::parse(MINIMAL).expect("valid");
        config
            .apply_env(|name| match name {
                "DATABASE_URL" => Some("postgres://db/x".to_string()),
                _ => None,
            })
            .expect("applies");
        assert_eq!(config.storage.database_url, "postgres://db/x");
        assert_eq!(
            config.storage.redis_url, "",
            "the in-process store by default"
        );
    }

    #[test]
    fn one_redis_deployment_at_most_and_sentinels_need_a_master() {
        let storage = |lines: &str| format!("[storage]\n{lines}\n{MINIMAL}");
        let parsed = |lines: &str| Config::parse(&storage(lines));
        assert_eq!(parsed("").expect("valid").storage.redis(), None);
        let cluster =
            parsed("redis_cluster_urls = [\"redis://a:1\", \"redis://b:2\"]").expect("valid");
        assert_eq!(
            cluster.storage.redis(),
            Some(RedisDeployment::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ]))
        );
        let sentinel =
            parsed("redis_sentinel_urls = [\"redis://s:26379\"]\nredis_sentinel_master = \"m\"")
                .expect("valid");
        assert_eq!(
            sentinel.storage.redis(),
            Some(RedisDeployment::Sentinel {
                urls: vec!["redis://s:26379".into()],
                master: "m".into()
            })
        );
        for (lines, key) in [
            (
                "redis_url = \"redis://a:1\"\nredis_cluster_urls = [\"redis://b:2\"]",
                "storage.redis_cluster_urls",
            ),
            (
                "redis_cluster_urls = [\"redis://b:2\"]\nredis_sentinel_urls = [\"redis://s:1\"]\nredis_sentinel_master = \"m\"",
                "storage.redis_sentinel_urls",
            ),
            ("redis_sentinel_urls = [\"redis://s:1\"]", "storage.redis_sentinel_master"),
            ("redis_sentinel_master = \"m\"", "storage.redis_sentinel_master"),
            ("redis_cluster_urls = [\"http://b:2\"]", "storage.redis_cluster_urls"),
            ("redis_key_prefix = \"app{1}:\"", "storage.redis_key_prefix"),
        ] {
            let error = parsed(lines).expect_err(lines).0;
            assert!(error.starts_with(key), "{lines}: {error}");
        }
        // REDIS_URL replaces a standalone URL, and is refused next to Cluster or Sentinel.
        let redis_env = |name: &str| (name == "REDIS_URL").then(|| "redis://env:6379".to_string());
        let mut config = cluster;
        let error = config
            .apply_env(redis_env)
            .expect_err("REDIS_URL with a cluster");
        assert!(error.0.starts_with("REDIS_URL is set"), "{}", error.0);
        let mut config = parsed("redis_url = \"redis://file:6379\"").expect("valid");
        config.apply_env(redis_env).expect("applies");
        assert_eq!(
            config.storage.redis(),
            Some(RedisDeployment::Standalone("redis://env:6379".into()))
        );
    }

    #[test]
    fn database_url_selects_postgres_or_sqlite_and_names_the_key_otherwise() {
        for url in [
            "postgres://db/x",
            "postgresql://db/x",
            "sqlite://authgate.db",
            "sqlite:///var/lib/authgate/authgate.db",
        ] {
            let text = format!("[storage]\ndatabase_url = \"{url}\"\n{MINIMAL}");
            let config = Config::parse(&text).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(config.storage.database_url, url);
        }
        for url in [
            "mysql://db/x",
            "sqlite://",
            "sqlite://:memory:",
            "authgate.db",
        ] {
            let text = format!("[storage]\ndatabase_url = \"{url}\"\n{MINIMAL}");
            let error = Config::parse(&text).unwrap_err().to_string();
            assert!(
                error.starts_with("storage.database_url (line 2)"),
                "{url}: {error}"
            );
        }
    }

    #[test]
    fn accent_colour_must_be_readable_under_white_text() {
        let with = |color: &str| {
            Config::parse(&format!(
                "[branding]\naccent_color = \"{color}\"\n{MINIMAL}"
            ))
        };
        assert_eq!(
            with("#1D4ED8").unwrap().branding.accent_color.as_deref(),
            Some("#1d4ed8")
        );
        assert!(with("#ffff00")
            .unwrap_err()
            .to_string()
            .contains("contrast"));
        assert!(with("blue").is_err());
    }

    #[test]
    fn registration_is_open_to_any_domain_by_default() {
        let config = Config::parse(MINIMAL).unwrap();
        assert!(config.access.registration_open());
        assert_eq!(config.access.domains_rule(), None);
        assert!(config
            .access
            .check_registration("a@anywhere.example")
            .is_ok());
    }

    #[test]
    fn access_keys_are_checked_and_named_with_their_line() {
        let with = |lines: &str| Config::parse(&format!("{MINIMAL}\n[access]\n{lines}\n"));
        let closed = with("registration = \"closed\"").unwrap();
        assert!(!closed.access.registration_open());
        let domains = with("allowed_email_domains = [\" Example.COM \", \"*.Corp.example.org\"]");
        assert_eq!(
            domains.unwrap().access.domains_rule().as_deref(),
            Some("example.com, any subdomain of corp.example.org")
        );
        let error = with("registration = \"invite\"").unwrap_err().to_string();
        assert!(
            error.contains("line 6") && error.contains("access.registration"),
            "{error}"
        );
        for bad in ["@x.com", "x .com", "bob@example.com", "*.com", "example"] {
            let error = with(&format!(
                "registration = \"open\"\nallowed_email_domains = [\"ok.example\", \"{bad}\"]"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                error.starts_with("access.allowed_email_domains[1] (line 7)"),
                "{bad}: {error}"
            );
        }
        let error = with("domains = []").unwrap_err().to_string();
        assert!(error.contains("domains"), "{error}");
    }

    #[test]
    fn back_link_defaults_to_the_root_and_must_be_a_path_or_web_url() {
        let link = Config::parse(MINIMAL).unwrap().branding.back_link.unwrap();
        assert_eq!(
            (link.url.as_str(), link.label.as_str()),
            ("/", "Back to the app")
        );
        let with = |lines: &str| Config::parse(&format!("[branding]\n{lines}\n{MINIMAL}"));
        for good in [
            "/app/",
            "https://app.example.com/home",
            "HTTP://intranet:8080",
        ] {
            let config = with(&format!("back_link_url = \"{good}\""));
            assert_eq!(config.unwrap().branding.back_link.unwrap().url, good);
        }
        assert!(with("back_link_url = \"\"")
            .unwrap()
            .branding
            .back_link
            .is_none());
        for bad in [
            "//evil.example/",
            "javascript:alert(1)",
            "app",
            "https://",
            "https:///x",
            "/a b",
            "/a\\\\b",
            "ftp://files.example/",
        ] {
            let error = with(&format!("back_link_url = \"{bad}\""))
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with("branding.back_link_url (line 2)"),
                "{bad}: {error}"
            );
        }
        let error = with("back_link_label = \"  \"").unwrap_err().to_string();
        assert!(
            error.starts_with("branding.back_link_label (line 2)"),
            "{error}"
        );
    }

    #[test]
    fn zero_or_absurd_durations_are_refused() {
        for line in [
            "[login_protection]\nlockout = \"0s\"",
            "[login_protection]\nwindow = \"0s\"",
            "[password]\nhash_queue_timeout = \"100000000y\"",
        ] {
            let error = Config::parse(&format!("{line}\n{MINIMAL}"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("must be between"), "{error}");
        }
    }

    #[test]
    fn connection_limits_have_documented_defaults_and_bounds() {
        let config = Config::parse(MINIMAL).expect("valid");
        assert_eq!(config.server.header_timeout, Duration::from_secs(10));
        assert_eq!(config.server.keepalive_timeout, Duration::from_secs(60));
        assert_eq!(config.server.max_connections_per_ip, 256);
        assert_eq!(config.server.max_connections, 10_000);
        for (line, key) in [
            ("header_timeout = \"10ms\"", "server.header_timeout"),
            ("header_timeout = \"2h\"", "server.header_timeout"),
            ("keepalive_timeout = \"500ms\"", "server.keepalive_timeout"),
            ("keepalive_timeout = \"2d\"", "server.keepalive_timeout"),
            (
                "max_connections_per_ip = 0",
                "server.max_connections_per_ip",
            ),
            ("max_connections = 0", "server.max_connections"),
        ] {
            let error = Config::parse(&format!("[server]\n{line}\n{MINIMAL}"))
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(&format!("{key} (line 2)")), "{error}");
        }
        let error = Config::parse(&format!("[server]\nmax_connections = -1\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("max_connections"), "{error}");
    }

    #[test]
    fn registrations_per_ip_default_to_ten_and_zero_is_refused() {
        let config = Config::parse(MINIMAL).expect("valid");
        assert_eq!(config.login_protection.max_registrations_per_ip, 10);
        let text = format!("[login_protection]\nmax_registrations_per_ip = 3\n{MINIMAL}");
        let config = Config::parse(&text).expect("valid");
        assert_eq!(config.login_protection.max_registrations_per_ip, 3);
        let text = format!("[login_protection]\nmax_registrations_per_ip = 0\n{MINIMAL}");
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(
            error.contains("login_protection.max_registrations_per_ip"),
            "{error}"
        );
    }

    #[test]
    fn route_pool_keys_have_documented_defaults() {
        let route = &Config::parse(MINIMAL).expect("valid").routes[0];
        assert_eq!(route.balance, Balance::RoundRobin);
        assert_eq!(route.health_check.probe, Probe::Tcp);
        assert_eq!(route.health_check.interval, Duration::from_secs(5));
        assert_eq!(route.health_check.healthy_threshold, 2);
        assert_eq!(route.health_check.unhealthy_threshold, 2);
        assert_eq!(route.max_connect_failures, 3);
        assert_eq!(route.failure_cooldown, Duration::from_secs(10));
        assert_eq!(route.write_timeout, Duration::from_secs(30));
        assert_eq!(route.idle_timeout, Duration::from_secs(60));
        assert!(route.tls.is_none());
        assert!(!route.strip_prefix);
        assert!(route.add_request_headers.is_empty());
        assert!(route.rate_limit.is_none());
    }

    #[test]
    fn upstream_tls_verifies_unless_told_otherwise() {
        let with = |lines: &str| Config::parse(&format!("{MINIMAL}{lines}\n"));
        let tls = with("tls = true").unwrap().routes[0]
            .tls
            .clone()
            .expect("tls");
        assert!(tls.verify);
        assert_eq!(tls.sni, None);
        let tls = with("tls = true\nsni = \"App.Internal\"\ntls_verify = false")
            .unwrap()
            .routes[0]
            .tls
            .clone()
            .expect("tls");
        assert!(!tls.verify);
        assert_eq!(tls.sni.as_deref(), Some("app.internal"));
        let error = with("tls_verify = false").unwrap_err().to_string();
        assert!(error.starts_with("route[0].tls_verify (line 4)"), "{error}");
        let dir = std::env::temp_dir().join(format!("authgate-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let error = with(&format!(
            "tls = true\ntls_ca_file = \"{}\"",
            not_pem.display()
        ))
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("route[0].tls_ca_file") && error.contains("no PEM certificate"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn added_headers_are_checked_and_identity_headers_refused() {
        let with = |lines: &str| Config::parse(&format!("{MINIMAL}{lines}\n"));
        let route = &with("add_request_headers = { \"X-Tenant\" = \"acme\" }")
            .unwrap()
            .routes[0];
        assert_eq!(route.add_request_headers[0].0.as_str(), "x-tenant");
        assert_eq!(route.add_request_headers[0].1, "acme");
        for bad in [
            "{ \"X-User-Id\" = \"x\" }",
            "{ \"x-user-email\" = \"x\" }",
            "{ \"X-Auth-Request-User\" = \"x\" }",
            "{ \"Forwarded\" = \"for=1.2.3.4\" }",
            "{ \"Cookie\" = \"a=b\" }",
            "{ \"X-Ok\" = \"a\\nb\" }",
        ] {
            let error = with(&format!("add_request_headers = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with("route[0].add_request_headers (line 4)"),
                "{bad}: {error}"
            );
        }
        // An operator's own strip_headers are identity headers too.
        let text = format!(
            "[server]\nstrip_headers = [\"X-Tenant-Role\"]\n{MINIMAL}add_request_headers = {{ \"X-Tenant-Role\" = \"admin\" }}\n"
        );
        assert!(Config::parse(&text).is_err());
    }

    #[test]
    fn assertion_defaults_and_lifetime_bounds() {
        let config = Config::parse(MINIMAL).expect("valid");
        assert!(!config.assertion.enabled);
        assert_eq!(config.assertion.algorithm, AssertionAlgorithm::EdDsa);
        assert_eq!(config.assertion.lifetime, Duration::from_secs(60));
        assert_eq!(config.assertion.issuer, "http://localhost:8080");
        assert!(config.routes[0].assertion, "routes carry it by default");
        let with = |lines: &str| Config::parse(&format!("[assertion]\n{lines}\n{MINIMAL}"));
        let config = with("enabled = true\nlifetime = \"30s\"\nalgorithm = \"ES256\"").unwrap();
        assert_eq!(config.assertion.lifetime, Duration::from_secs(30));
        assert_eq!(config.assertion.algorithm, AssertionAlgorithm::Es256);
        for lifetime in ["0s", "500ms", "61s", "2m", "1d"] {
            let error = with(&format!("lifetime = \"{lifetime}\""))
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with("assertion.lifetime (line 2)") && error.contains("60s"),
                "{lifetime}: {error}"
            );
        }
        let error = with("lifetime = \"soon\"").unwrap_err().to_string();
        assert!(error.contains("assertion.lifetime"), "{error}");
        let routed = format!("{MINIMAL}assertion = false\n");
        assert!(!Config::parse(&routed).unwrap().routes[0].assertion);
    }

    #[test]
    fn assertion_algorithm_names_are_the_jose_ones() {
        for name in ["RS256", "eddsa", "Ed25519", "HS256", ""] {
            let text = format!("[assertion]\nalgorithm = \"{name}\"\n{MINIMAL}");
            let error = Config::parse(&text).unwrap_err().to_string();
            assert!(
                error.contains("assertion.algorithm") && error.contains("EdDSA"),
                "{name}: {error}"
            );
        }
    }

    #[test]
    fn assertion_key_file_must_load_as_a_key_of_the_algorithm() {
        let dir = std::env::temp_dir().join(format!("authgate-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let with = |algorithm: &str, path: &std::path::Path| {
            Config::parse(&format!(
                "[assertion]\nenabled = true\nalgorithm = \"{algorithm}\"\nkey_file = \"{}\"\n{MINIMAL}",
                path.display()
            ))
        };
        let missing = dir.join("missing.pem");
        let error = with("EdDSA", &missing).unwrap_err().to_string();
        assert!(
            error.starts_with("assertion.key_file (line 4)") && error.contains("cannot read"),
            "{error}"
        );
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let error = with("EdDSA", &not_pem).unwrap_err().to_string();
        assert!(error.contains("no PEM private key"), "{error}");
        // A P-256 key where Ed25519 is configured, and the other way round.
        let ec = crate::assertion::keys::SigningKey::generate(AssertionAlgorithm::Es256).unwrap();
        let ec_pem = dir.join("ec.pem");
        std::fs::write(&ec_pem, pem("PRIVATE KEY", ec.pkcs8())).unwrap();
        with("ES256", &ec_pem).expect("a P-256 PKCS#8 key for ES256");
        let error = with("EdDSA", &ec_pem).unwrap_err().to_string();
        assert!(error.contains("not an Ed25519"), "{error}");
        let ed = crate::assertion::keys::SigningKey::generate(AssertionAlgorithm::EdDsa).unwrap();
        let ed_pem = dir.join("ed.pem");
        std::fs::write(&ed_pem, pem("PRIVATE KEY", ed.pkcs8())).unwrap();
        with("EdDSA", &ed_pem).expect("an Ed25519 PKCS#8 key for EdDSA");
        assert!(with("ES256", &ed_pem).is_err());
        // Not read while assertions are off.
        let text = format!(
            "[assertion]\nkey_file = \"{}\"\n{MINIMAL}",
            missing.display()
        );
        assert!(Config::parse(&text).is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }

    fn pem(label: &str, der: &[u8]) -> String {
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|chunk| std::str::from_utf8(chunk).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn auth_prefix_cannot_be_routed() {
        let text = "[[route]]\nprefix = \"/auth/\"\nupstreams = [\"127.0.0.1:1\"]\n";
        assert!(Config::parse(text).is_err());
    }
}
