//! The `gateway.toml` file format: serde types that mirror the file key for key.
//!
//! Scalar values that need parsing (durations, addresses, CIDRs) are parsed here, during
//! deserialisation, so a bad value is reported by `toml` with its line and column. Rules that
//! span several keys live in `config::validate`. Every key has a default; unknown keys are
//! errors, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub access: AccessSection,
    #[serde(default)]
    pub session: SessionSection,
    #[serde(default)]
    pub password: PasswordSection,
    #[serde(default)]
    pub rate_limit: RateLimitSection,
    #[serde(default)]
    pub login_protection: LoginProtectionSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub geoip: GeoipSection,
    #[serde(default)]
    pub branding: BrandingSection,
    #[serde(default)]
    pub demo: DemoSection,
    #[serde(default)]
    pub assertion: AssertionSection,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    #[serde(deserialize_with = "socket_addr")]
    pub admin_listen: SocketAddr,
    pub threads: usize,
    #[serde(deserialize_with = "cidrs")]
    pub trusted_proxies: Vec<IpNet>,
    #[serde(deserialize_with = "one_or_many")]
    pub public_origin: Vec<String>,
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    pub strip_headers: Vec<String>,
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub keepalive_timeout: Duration,
    pub max_connections_per_ip: u32,
    pub max_connections: u32,
    pub hsts: Hsts,
    /// Unix socket through which a new process (`authgate run --upgrade`) takes over the
    /// listening sockets of the running one during a binary upgrade.
    pub upgrade_sock: String,
    /// Hosts a full-URL `rd` (after sign-in, and forward-auth's sign-in redirect) may point
    /// at: exact hosts and `*.example.com` patterns.
    pub allowed_redirect_hosts: Vec<String>,
}

/// `server.hsts`: `false` (off), `true` (one year), or the header value itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Hsts {
    Enabled(bool),
    Value(String),
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            threads: 2,
            trusted_proxies: vec![IpNet::from(std::net::IpAddr::from(
                std::net::Ipv4Addr::LOCALHOST,
            ))],
            public_origin: vec![
                "http://localhost:8080".to_string(),
                "http://127.0.0.1:8080".to_string(),
            ],
            shutdown_grace: Duration::from_secs(30),
            strip_headers: Vec::new(),
            hsts: Hsts::Enabled(false),
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            max_connections_per_ip: 256,
            max_connections: 10_000,
            upgrade_sock: "authgate-upgrade.sock".to_string(),
            allowed_redirect_hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    pub database_url: String,
    pub database_max_connections: u32,
    #[serde(deserialize_with = "duration")]
    pub database_timeout: Duration,
    /// Standalone Redis. All three Redis choices empty: the in-process session store (one
    /// instance only). At most one of them may be set.
    pub redis_url: String,
    /// Redis Cluster seed nodes.
    pub redis_cluster_urls: Vec<String>,
    /// Redis Sentinel nodes, with the name of the master they watch.
    pub redis_sentinel_urls: Vec<String>,
    pub redis_sentinel_master: String,
    pub redis_key_prefix: String,
    /// Live sessions the in-process store holds at most.
    pub max_sessions: usize,
    #[serde(deserialize_with = "duration")]
    pub redis_timeout: Duration,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            database_url: "sqlite://authgate.db".to_string(),
            database_max_connections: 10,
            database_timeout: Duration::from_secs(2),
            redis_url: String::new(),
            redis_cluster_urls: Vec::new(),
            redis_sentinel_urls: Vec::new(),
            redis_sentinel_master: String::new(),
            redis_key_prefix: "authgate:".to_string(),
            max_sessions: 100_000,
            redis_timeout: Duration::from_secs(1),
        }
    }
}

/// `[access]`: who may create an account.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessSection {
    pub registration: Registration,
    /// Domains (`example.com`) and patterns (`*.example.com`) a new account's email may be at;
    /// empty: any.
    pub allowed_email_domains: Vec<String>,
}

/// `access.registration`: whether anyone may create an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Registration {
    #[default]
    Open,
    Closed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSection {
    pub cookie_name: String,
    pub secure_cookie: bool,
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub absolute_timeout: Duration,
    pub max_sessions_per_user: u32,
    pub on_limit: OnLimit,
    pub inject_user_email: bool,
    pub inject_session_id: bool,
    pub inject_user_roles: bool,
    pub bind_session_to_user_agent: bool,
    #[serde(deserialize_with = "duration")]
    pub activity_flush_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub expiry_check_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub record_retention: Duration,
    #[serde(deserialize_with = "duration")]
    pub cache_ttl: Duration,
    /// `Domain` of the session cookie ("" : none, the cookie stays on the gateway's host).
    pub cookie_domain: String,
}

impl Default for SessionSection {
    fn default() -> Self {
        Self {
            cookie_name: "authgate_session".to_string(),
            secure_cookie: false,
            idle_timeout: Duration::from_secs(24 * 3600),
            absolute_timeout: Duration::from_secs(30 * 24 * 3600),
            max_sessions_per_user: 5,
            on_limit: OnLimit::EvictOldest,
            inject_user_email: false,
            inject_session_id: false,
            inject_user_roles: false,
            bind_session_to_user_agent: false,
            activity_flush_interval: Duration::from_secs(60),
            expiry_check_interval: Duration::from_secs(60),
            record_retention: Duration::from_secs(90 * 24 * 3600),
            cache_ttl: Duration::from_secs(2),
            cookie_domain: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    EvictOldest,
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordSection {
    pub bcrypt_cost: u32,
    pub min_length: usize,
    pub max_concurrent_hashes: usize,
    #[serde(deserialize_with = "duration")]
    pub hash_queue_timeout: Duration,
}

impl Default for PasswordSection {
    fn default() -> Self {
        Self {
            bcrypt_cost: 12,
            min_length: 8,
            max_concurrent_hashes: 0,
            hash_queue_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSection {
    pub requests_per_second: u32,
    pub burst: u32,
}

impl Default for RateLimitSection {
    fn default() -> Self {
        Self {
            requests_per_second: 50,
            burst: 100,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginProtectionSection {
    pub max_failures: u32,
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    #[serde(deserialize_with = "duration")]
    pub lockout: Duration,
    pub max_attempts_per_ip: u32,
    /// Registration attempts per client IP (IPv6: per /64) within `window`.
    pub max_registrations_per_ip: u32,
}

impl Default for LoginProtectionSection {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(15 * 60),
            max_attempts_per_ip: 20,
            max_registrations_per_ip: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrandingSection {
    pub product_name: String,
    /// `#rgb` or `#rrggbb`; empty: the default blue.
    pub accent_color: String,
    /// Where the account page's "back" link goes: a local path or an http(s) URL; empty: no
    /// link.
    pub back_link_url: String,
    pub back_link_label: String,
}

impl Default for BrandingSection {
    fn default() -> Self {
        Self {
            product_name: "authgate".to_string(),
            accent_color: String::new(),
            back_link_url: "/".to_string(),
            back_link_label: "Back to the app".to_string(),
        }
    }
}

/// `[demo]`: a small app on its own socket that shows what the gateway injects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoSection {
    pub enabled: bool,
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
}

impl Default for DemoSection {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
        }
    }
}

/// `[assertion]`: the signed identity assertion (`X-Authgate-Assertion`) sent to upstreams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssertionSection {
    pub enabled: bool,
    pub algorithm: AssertionAlgorithm,
    #[serde(deserialize_with = "duration")]
    pub lifetime: Duration,
    /// A PEM private key; empty: keys generated and kept in the database.
    pub key_file: String,
}

impl Default for AssertionSection {
    fn default() -> Self {
        Self {
            enabled: false,
            algorithm: AssertionAlgorithm::EdDsa,
            lifetime: Duration::from_secs(60),
            key_file: String::new(),
        }
    }
}

/// `assertion.algorithm`: the JOSE name of the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AssertionAlgorithm {
    /// Ed25519.
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// ECDSA on P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeoipSection {
    /// Path to a MaxMind-format (.mmdb) City or Country database; empty: none.
    pub database: String,
    /// A header carrying the client's country, set by a CDN in front (e.g. "CF-IPCountry");
    /// believed only from trusted proxies. Empty: none.
    pub country_header: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub prefix: String,
    #[serde(default)]
    pub host: Option<String>,
    pub upstreams: Vec<String>,
    #[serde(default)]
    pub auth: AuthMode,
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(default = "default_read_timeout", deserialize_with = "duration")]
    pub read_timeout: Duration,
    #[serde(default = "default_health_interval", deserialize_with = "duration")]
    pub health_check_interval: Duration,
    /// Match the prefix regardless of case (for IIS-style upstreams that read paths so).
    #[serde(default)]
    pub case_insensitive: bool,
    /// Forward paths holding an encoded slash (`%2F`) instead of refusing them.
    #[serde(default)]
    pub allow_encoded_slash: bool,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub health_check: HealthCheckKind,
    #[serde(default = "default_health_path")]
    pub health_check_path: String,
    #[serde(default = "default_threshold")]
    pub healthy_threshold: usize,
    #[serde(default = "default_threshold")]
    pub unhealthy_threshold: usize,
    /// Consecutive failed connects that take an upstream out of rotation (0: never).
    #[serde(default = "default_max_connect_failures")]
    pub max_connect_failures: u32,
    #[serde(default = "default_failure_cooldown", deserialize_with = "duration")]
    pub failure_cooldown: Duration,
    #[serde(default = "default_read_timeout", deserialize_with = "duration")]
    pub write_timeout: Duration,
    #[serde(default = "default_idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub add_request_headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub rate_limit: Option<RouteRateLimit>,
    /// Send the signed identity assertion on this route (when `[assertion]` is enabled).
    #[serde(default = "default_true")]
    pub assertion: bool,
    /// Who this route serves (emails, `*@domain`, `role:NAME`); absent: every signed-in user.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
}

/// `route.rate_limit`: per client IP, on this route only (on top of `[rate_limit]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}

/// `route.balance`: how a route spreads requests over its upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConnections,
    ConsistentHash,
}

/// `route.health_check`: how upstreams are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Tcp,
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    Required,
    Public,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_read_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_health_path() -> String {
    "/".to_string()
}

fn default_threshold() -> usize {
    2
}

fn default_max_connect_failures() -> u32 {
    3
}

fn default_failure_cooldown() -> Duration {
    Duration::from_secs(10)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_true() -> bool {
    true
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(text.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration \"{text}\" ({e}); write e.g. \"500ms\", \"2s\", \"15m\", \"24h\", \"30d\""
        ))
    })
}

fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid listen address \"{text}\"; write IP:PORT, e.g. \"0.0.0.0:8080\""
        ))
    })
}

fn cidrs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    let items = Vec::<String>::deserialize(deserializer)?;
    items
        .iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "invalid CIDR \"{text}\"; write e.g. \"10.0.0.0/8\" or \"127.0.0.1\""
                    ))
                })
        })
        .collect()
}
