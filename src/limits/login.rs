//! Brute-force protection for `/auth/login` (SPEC §5), shared by every gateway instance through
//! Redis:
//! - per account: `max_failures` failed logins within `window` lock the account for `lockout`;
//!   a locked account answers 429 even to the right password. Counted per normalised email
//!   whether or not the account exists, so a lockout reveals nothing about which emails exist.
//!   Keys hold the email's SHA-256, not the email.
//! - per client IP: at most `max_attempts_per_ip` login attempts per `window`.
//!
//! Each step is one atomic Lua script, so concurrent attempts cannot slip past a limit.
//! When Redis cannot be asked, logins fail closed (503).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use sha2::{Digest, Sha256};

use crate::config::LoginProtectionSection;
use crate::session::redis::RedisConnection;
use crate::store::StoreError;

/// KEYS[1] account lock, KEYS[2] IP attempt counter; ARGV[1] window ms, ARGV[2] max per IP.
/// Returns {0, 0} to go ahead, {1, ms} if the account is locked, {2, ms} if the IP is over.
const BEGIN_SCRIPT: &str = r#"
local locked = redis.call('PTTL', KEYS[1])
if locked > 0 then return {1, locked} end
local attempts = redis.call('INCR', KEYS[2])
if attempts == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
if attempts > tonumber(ARGV[2]) then
  local left = redis.call('PTTL', KEYS[2])
  if left < 0 then left = tonumber(ARGV[1]) end
  return {2, left}
end
return {0, 0}
"#;

/// KEYS[1] account failure counter, KEYS[2] account lock; ARGV window ms, max failures,
/// lockout ms. Returns the lockout ms if this failure locked the account, else 0.
const FAILURE_SCRIPT: &str = r#"
local failures = redis.call('INCR', KEYS[1])
if failures == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if failures >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return tonumber(ARGV[3])
end
return 0
"#;

/// Why a login attempt may not proceed.
#[derive(Debug)]
pub enum Refusal {
    AccountLocked(Duration),
    TooManyFromIp(Duration),
}

pub struct LoginProtection {
    connection: Arc<RedisConnection>,
    prefix: String,
    config: LoginProtectionSection,
    begin: Script,
    failure: Script,
}

impl LoginProtection {
    pub fn new(
        connection: Arc<RedisConnection>,
        prefix: &str,
        config: LoginProtectionSection,
    ) -> Self {
        Self {
            connection,
            prefix: prefix.to_string(),
            config,
            begin: Script::new(BEGIN_SCRIPT),
            failure: Script::new(FAILURE_SCRIPT),
        }
    }

    fn account_key(&self, kind: &str, email: &str) -> String {
        let digest = hex::encode(Sha256::digest(email.as_bytes()));
        format!("{}login_{kind}:{digest}", self.prefix)
    }

    fn ip_key(&self, ip: IpAddr) -> String {
        format!("{}login_attempts:{ip}", self.prefix)
    }

    /// Called before the password is checked. Counts the attempt against the IP.
    pub async fn begin(&self, email: &str, ip: IpAddr) -> Result<Option<Refusal>, StoreError> {
        let mut invocation = self.begin.key(self.account_key("lock", email));
        invocation
            .key(self.ip_key(ip))
            .arg(millis(self.config.window))
            .arg(self.config.max_attempts_per_ip);
        let (code, wait_ms): (i64, i64) = self.run("login_begin", invocation).await?;
        let wait = Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0));
        Ok(match code {
            1 => Some(Refusal::AccountLocked(wait)),
            2 => Some(Refusal::TooManyFromIp(wait)),
            _ => None,
        })
    }

    /// Called after a wrong password (or unknown email). Returns the lockout if this failure
    /// locked the account.
    pub async fn failed(&self, email: &str) -> Result<Option<Duration>, StoreError> {
        let mut invocation = self.failure.key(self.account_key("failures", email));
        invocation
            .key(self.account_key("lock", email))
            .arg(millis(self.config.window))
            .arg(self.config.max_failures)
            .arg(millis(self.config.lockout));
        let locked_ms: i64 = self.run("login_failed", invocation).await?;
        Ok((locked_ms > 0).then(|| Duration::from_millis(u64::try_from(locked_ms).unwrap_or(0))))
    }

    /// Called after a successful login: the account's failure count starts again.
    pub async fn succeeded(&self, email: &str) -> Result<(), StoreError> {
        let mut connection = self.connection.get().await?;
        let mut delete = redis::cmd("DEL");
        delete.arg(self.account_key("failures", email));
        self.connection
            .call("login_succeeded", delete.query_async(&mut connection))
            .await
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection.get().await?;
        self.connection
            .call(operation, invocation.invoke_async(&mut connection))
            .await
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
