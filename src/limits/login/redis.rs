//! [`LoginGuard`] on Redis, shared by every gateway instance: each step is atomic Lua scripts
//! that touch only the keys they are given. Keys hold the email's SHA-256, not the email; an
//! account's keys carry it as their Redis Cluster hash tag (`login_lock:{<sha256>}`), so they
//! share a slot, and the per-IP counters are keys of their own.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use sha2::{Digest, Sha256};

use super::{LoginGuard, Outcome, Refusal};
use arc_swap::ArcSwap;

use crate::config::LoginProtectionSection;
use crate::limits::ip_rate::client_bucket;
use crate::model::StoreError;
use crate::session::redis_connection::RedisConnection;

/// Reserves an account check. KEYS[1] account lock, KEYS[2] account failures, KEYS[3] account
/// checks in flight; ARGV max failures, in-flight ttl ms.
/// Returns {0, 0} to go ahead (the check is now in flight), {1, ms} if the account is locked,
/// {3, 0} if failures plus checks in flight already reach the limit (wait for one to finish,
/// then ask again).
const BEGIN_SCRIPT: &str = r#"
local locked = redis.call('PTTL', KEYS[1])
if locked > 0 then return {1, locked} end
local failures = tonumber(redis.call('GET', KEYS[2]) or '0')
local in_flight = tonumber(redis.call('GET', KEYS[3]) or '0')
if failures + in_flight >= tonumber(ARGV[1]) then return {3, 0} end
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return {0, 0}
"#;

/// Ends an in-flight check. KEYS[1] account failures, KEYS[2] account lock, KEYS[3] checks in
/// flight; ARGV outcome ('failed' | 'succeeded' | 'released'), window ms, max failures,
/// lockout ms. Returns the lockout ms if this failure locked the account, else 0.
const FINISH_SCRIPT: &str = r#"
if tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then redis.call('DECR', KEYS[3]) end
if ARGV[1] == 'succeeded' then
  redis.call('DEL', KEYS[1])
  return 0
end
if ARGV[1] ~= 'failed' then return 0 end
local failures = redis.call('INCR', KEYS[1])
if failures == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if failures >= tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
  redis.call('DEL', KEYS[1])
  return tonumber(ARGV[4])
end
return 0
"#;

/// Counts one attempt from an IP (a login or a registration). KEYS[1] the IP's counter; ARGV
/// window ms, max per IP. Returns 0 to go ahead, else the ms left in the window.
const COUNT_SCRIPT: &str = r#"
local attempts = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
if attempts > tonumber(ARGV[2]) then return left end
return 0
"#;

/// Whether an IP is already over its budget, without counting. KEYS[1] the IP's counter; ARGV
/// max per IP, window ms. Returns 0 if the next attempt may be counted, else the ms left.
const PEEK_SCRIPT: &str = r#"
local attempts = tonumber(redis.call('GET', KEYS[1]) or '0')
if attempts < tonumber(ARGV[1]) then return 0 end
local left = redis.call('PTTL', KEYS[1])
if left <= 0 then left = tonumber(ARGV[2]) end
return left
"#;

/// A check left in flight by a crashed process stops counting after this long.
const IN_FLIGHT_TTL: Duration = Duration::from_secs(30);
/// How often a waiting attempt asks again.
const WAIT_STEP: Duration = Duration::from_millis(20);

/// [`LoginGuard`] on Redis: one atomic Lua script per step, shared by every instance.
pub struct RedisLoginGuard {
    connection: Arc<RedisConnection>,
    prefix: String,
    /// Swapped whole by a hot reload.
    config: ArcSwap<LoginProtectionSection>,
    begin: Script,
    finish: Script,
    count: Script,
    peek: Script,
    /// How long an attempt may wait for its turn (the password pool's queue timeout).
    max_wait: Duration,
}

impl RedisLoginGuard {
    pub fn new(
        connection: Arc<RedisConnection>,
        prefix: &str,
        config: LoginProtectionSection,
        max_wait: Duration,
    ) -> Self {
        Self {
            connection,
            prefix: prefix.to_string(),
            config: ArcSwap::from_pointee(config),
            begin: Script::new(BEGIN_SCRIPT),
            finish: Script::new(FINISH_SCRIPT),
            count: Script::new(COUNT_SCRIPT),
            peek: Script::new(PEEK_SCRIPT),
            max_wait,
        }
    }

    fn account_key(&self, kind: &str, email: &str) -> String {
        let digest = hex::encode(Sha256::digest(email.as_bytes()));
        format!("{}login_{kind}:{{{digest}}}", self.prefix)
    }

    /// IPv6 clients are counted by /64, like the request limiter, so a host cannot rotate
    /// through its own addresses.
    fn ip_key(&self, ip: IpAddr) -> String {
        format!("{}login_attempts:{}", self.prefix, client_bucket(ip))
    }

    fn registration_key(&self, ip: IpAddr) -> String {
        format!("{}register_attempts:{}", self.prefix, client_bucket(ip))
    }

    /// Counts one attempt on an IP's counter; the time left in its window if over `max`.
    async fn count(
        &self,
        operation: &'static str,
        key: String,
        max: u32,
    ) -> Result<Option<Duration>, StoreError> {
        let mut invocation = self.count.key(key);
        invocation.arg(millis(self.config.load().window)).arg(max);
        let wait_ms: i64 = self.run(operation, invocation).await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0))))
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

#[async_trait]
impl LoginGuard for RedisLoginGuard {
    fn reconfigure(&self, config: LoginProtectionSection) {
        self.config.store(std::sync::Arc::new(config));
    }

    async fn begin(&self, email: &str, ip: IpAddr) -> Result<Option<Refusal>, StoreError> {
        // An address already over its budget is refused before it touches the account's
        // counters (it must not crowd out the account's own attempts). The IP's counter lives
        // in another slot than the account's keys, so the steps are: peek at the IP, reserve
        // the account check, count the IP (giving the reservation back if that refuses, e.g.
        // when concurrent attempts from the address used the last places meanwhile).
        let mut peek = self.peek.key(self.ip_key(ip));
        peek.arg(self.config.load().max_attempts_per_ip)
            .arg(millis(self.config.load().window));
        let over_ms: i64 = self.run("login_ip", peek).await?;
        if over_ms > 0 {
            // A locked account says so first, and is not counted against the address (as
            // when the address is within its budget).
            let mut connection = self.connection.get().await?;
            let locked_ms: i64 = self
                .connection
                .call(
                    "login_begin",
                    redis::cmd("PTTL")
                        .arg(self.account_key("lock", email))
                        .query_async(&mut connection),
                )
                .await?;
            if locked_ms > 0 {
                let wait = Duration::from_millis(u64::try_from(locked_ms).unwrap_or(0));
                return Ok(Some(Refusal::AccountLocked(wait)));
            }
            // Still counted, as every attempt is (the window's count says how hard it tried).
            let counted = self
                .count(
                    "login_ip",
                    self.ip_key(ip),
                    self.config.load().max_attempts_per_ip,
                )
                .await?;
            let wait = counted
                .unwrap_or_else(|| Duration::from_millis(u64::try_from(over_ms).unwrap_or(0)));
            return Ok(Some(Refusal::TooManyFromIp(wait)));
        }
        let deadline = tokio::time::Instant::now() + self.max_wait;
        loop {
            let mut invocation = self.begin.key(self.account_key("lock", email));
            invocation
                .key(self.account_key("failures", email))
                .key(self.account_key("checking", email))
                .arg(self.config.load().max_failures)
                .arg(millis(IN_FLIGHT_TTL));
            let (code, wait_ms): (i64, i64) = self.run("login_begin", invocation).await?;
            let wait = Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0));
            match code {
                1 => return Ok(Some(Refusal::AccountLocked(wait))),
                3 if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(WAIT_STEP).await;
                }
                3 => return Ok(Some(Refusal::Busy)),
                _ => break,
            }
        }
        let counted = self
            .count(
                "login_ip",
                self.ip_key(ip),
                self.config.load().max_attempts_per_ip,
            )
            .await;
        match counted {
            Ok(None) => Ok(None),
            Ok(Some(wait)) => {
                // Best effort: a reservation that cannot be given back stops counting
                // IN_FLIGHT_TTL after the account's last attempt.
                let _ = self.finish(email, Outcome::Undecided).await;
                Ok(Some(Refusal::TooManyFromIp(wait)))
            }
            Err(error) => {
                let _ = self.finish(email, Outcome::Undecided).await;
                Err(error)
            }
        }
    }

    async fn finish(&self, email: &str, outcome: Outcome) -> Result<Option<Duration>, StoreError> {
        let mut invocation = self.finish.key(self.account_key("failures", email));
        invocation
            .key(self.account_key("lock", email))
            .key(self.account_key("checking", email))
            .arg(match outcome {
                Outcome::Failed => "failed",
                Outcome::Succeeded => "succeeded",
                Outcome::Undecided => "released",
            })
            .arg(millis(self.config.load().window))
            .arg(self.config.load().max_failures)
            .arg(millis(self.config.load().lockout));
        let locked_ms: i64 = self.run("login_finish", invocation).await?;
        Ok((locked_ms > 0).then(|| Duration::from_millis(u64::try_from(locked_ms).unwrap_or(0))))
    }

    async fn begin_registration(&self, ip: IpAddr) -> Result<Option<Duration>, StoreError> {
        self.count(
            "register_begin",
            self.registration_key(ip),
            self.config.load().max_registrations_per_ip,
        )
        .await
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
