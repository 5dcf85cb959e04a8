//! Brute-force protection for `/auth/login` and `/auth/register` (contract §5): the policy, and
//! the [`LoginGuard`] trait its two backends implement side by side — `redis` (shared by every
//! gateway instance) and `memory` (the embedded mode). The contract tests run the same cases
//! against both.
//!
//! - per account: `max_failures` failed logins within `window` lock the account for `lockout`;
//!   a locked account answers 429 even to the right password. Counted per normalised email
//!   whether or not the account exists, so a lockout reveals nothing about which emails exist.
//! - per client IP: at most `max_attempts_per_ip` login attempts per `window`.
//! - per client IP: at most `max_registrations_per_ip` registration attempts per `window`
//!   (a separate budget, checked before the new password is hashed).
//!
//! Password checks in flight are counted per account, and no new check starts while failures
//! plus checks in flight reach `max_failures` (the attempt waits its turn instead), so
//! concurrent guesses cannot slip past the limit: at most `max_failures` wrong passwords are
//! checked per account per lockout, while concurrent correct logins all go through. When the
//! store cannot be asked, logins fail closed (503).

pub mod memory;
pub mod redis;

use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::LoginProtectionSection;
use crate::model::StoreError;

pub use self::redis::RedisLoginGuard;

/// Why a login attempt may not proceed.
#[derive(Debug)]
pub enum Refusal {
    AccountLocked(Duration),
    TooManyFromIp(Duration),
    /// The account's attempts in flight did not drain in time.
    Busy,
}

/// How a checked attempt ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Failed,
    Succeeded,
    /// No verdict on the password (a store was down): counts as nothing.
    Undecided,
}

/// Brute-force bookkeeping for password checks, whichever store keeps it.
#[async_trait]
pub trait LoginGuard: Send + Sync {
    /// Called before a password is checked; counts the attempt against the IP. At most
    /// `max_failures - failures so far` checks per account run at once; further attempts wait
    /// their turn. Every attempt that proceeds must end in [`LoginGuard::finish`].
    async fn begin(&self, email: &str, ip: IpAddr) -> Result<Option<Refusal>, StoreError>;

    /// Ends a checked attempt. Returns the lockout if this failure locked the account.
    async fn finish(&self, email: &str, outcome: Outcome) -> Result<Option<Duration>, StoreError>;

    /// Counts a registration attempt from `ip` (IPv6: its /64) against
    /// `max_registrations_per_ip` per `window`; `Some(time left in the window)` when over.
    async fn begin_registration(&self, ip: IpAddr) -> Result<Option<Duration>, StoreError>;

    /// Applies new limits (hot reload). Counters already kept stay; attempts in flight finish
    /// under the numbers they started with or the new ones.
    fn reconfigure(&self, config: LoginProtectionSection);
}
