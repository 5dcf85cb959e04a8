//! [`LoginGuard`] in this process's memory, for the embedded mode (one instance, no Redis).
//!
//! The same policy as the Redis scripts, step for step (the contract tests run the same cases
//! against both): per account (by normalised email, existing or not) `max_failures` failures
//! within `window` lock it for `lockout`; password checks in flight count against the limit,
//! so concurrent guesses wait their turn instead of slipping past it; per client address
//! (IPv6 by /64) at most `max_attempts_per_ip` login attempts and `max_registrations_per_ip`
//! registrations per `window`. Each step holds one lock
//! for a few map operations and never awaits while holding it.
//!
//! Memory is bounded: entries with nothing left to remember (no lock, no open window, nothing
//! in flight) are swept; [`MemoryLoginGuard::sweep`] runs periodically and whenever the maps
//! grow past a threshold.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{LoginGuard, Outcome, Refusal};
use arc_swap::ArcSwap;

use crate::config::LoginProtectionSection;
use crate::limits::ip_rate::client_bucket;
use crate::model::StoreError;

/// How often a waiting attempt asks again (as the Redis guard does).
const WAIT_STEP: Duration = Duration::from_millis(20);
/// Past this many tracked accounts or addresses, a sweep runs before adding more.
const SWEEP_AT: usize = 50_000;

/// A count that restarts when its window has passed.
#[derive(Default, Clone, Copy)]
struct Window {
    count: u32,
    ends: Option<Instant>,
}

impl Window {
    fn current(&self, now: Instant) -> u32 {
        match self.ends {
            Some(ends) if ends > now => self.count,
            _ => 0,
        }
    }

    fn add(&mut self, now: Instant, length: Duration) -> u32 {
        if self.current(now) == 0 {
            self.count = 0;
            self.ends = Some(now + length);
        }
        self.count += 1;
        self.count
    }

    fn left(&self, now: Instant) -> Duration {
        self.ends
            .map_or(Duration::ZERO, |ends| ends.saturating_duration_since(now))
    }
}

#[derive(Default)]
struct Account {
    locked_until: Option<Instant>,
    failures: Window,
    in_flight: u32,
}

impl Account {
    fn is_idle(&self, now: Instant) -> bool {
        self.in_flight == 0
            && self.locked_until.is_none_or(|until| until <= now)
            && self.failures.current(now) == 0
    }
}

#[derive(Default)]
struct State {
    accounts: HashMap<String, Account>,
    addresses: HashMap<IpAddr, Window>,
    registrations: HashMap<IpAddr, Window>,
}

impl State {
    fn tracked(&self) -> usize {
        self.accounts.len() + self.addresses.len() + self.registrations.len()
    }

    fn sweep(&mut self, now: Instant) {
        self.accounts.retain(|_, account| !account.is_idle(now));
        self.addresses.retain(|_, window| window.current(now) > 0);
        self.registrations
            .retain(|_, window| window.current(now) > 0);
    }
}

pub struct MemoryLoginGuard {
    state: Mutex<State>,
    /// Swapped whole by a hot reload.
    config: ArcSwap<LoginProtectionSection>,
    /// How long an attempt may wait for its turn (the password pool's queue timeout).
    max_wait: Duration,
}

/// What one look at the state decided.
enum Step {
    Refused(Refusal),
    Wait,
    Proceed,
}

impl MemoryLoginGuard {
    pub fn new(config: LoginProtectionSection, max_wait: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            config: ArcSwap::from_pointee(config),
            max_wait,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets what no longer matters; returns how many accounts and addresses are tracked.
    pub fn sweep(&self) -> usize {
        let mut state = self.state();
        state.sweep(Instant::now());
        state.tracked()
    }

    fn try_begin(&self, email: &str, ip: IpAddr) -> Step {
        let now = Instant::now();
        let mut state = self.state();
        if state.tracked() > SWEEP_AT {
            state.sweep(now);
        }
        let account = state.accounts.entry(email.to_string()).or_default();
        if let Some(until) = account.locked_until.filter(|until| *until > now) {
            return Step::Refused(Refusal::AccountLocked(until - now));
        }
        if account.failures.current(now) + account.in_flight >= self.config.load().max_failures {
            return Step::Wait;
        }
        let address = state.addresses.entry(client_bucket(ip)).or_default();
        if address.add(now, self.config.load().window) > self.config.load().max_attempts_per_ip {
            return Step::Refused(Refusal::TooManyFromIp(address.left(now)));
        }
        if let Some(account) = state.accounts.get_mut(email) {
            account.in_flight += 1;
        }
        Step::Proceed
    }
}

#[async_trait]
impl LoginGuard for MemoryLoginGuard {
    fn reconfigure(&self, config: LoginProtectionSection) {
        self.config.store(std::sync::Arc::new(config));
    }

    async fn begin(&self, email: &str, ip: IpAddr) -> Result<Option<Refusal>, StoreError> {
        let deadline = tokio::time::Instant::now() + self.max_wait;
        loop {
            match self.try_begin(email, ip) {
                Step::Refused(refusal) => return Ok(Some(refusal)),
                Step::Proceed => return Ok(None),
                Step::Wait if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(WAIT_STEP).await;
                }
                Step::Wait => return Ok(Some(Refusal::Busy)),
            }
        }
    }

    async fn begin_registration(&self, ip: IpAddr) -> Result<Option<Duration>, StoreError> {
        let now = Instant::now();
        let mut state = self.state();
        if state.tracked() > SWEEP_AT {
            state.sweep(now);
        }
        let window = state.registrations.entry(client_bucket(ip)).or_default();
        let count = window.add(now, self.config.load().window);
        Ok((count > self.config.load().max_registrations_per_ip).then(|| window.left(now)))
    }

    async fn finish(&self, email: &str, outcome: Outcome) -> Result<Option<Duration>, StoreError> {
        let now = Instant::now();
        let mut state = self.state();
        let account = state.accounts.entry(email.to_string()).or_default();
        account.in_flight = account.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Succeeded => {
                account.failures = Window::default();
                Ok(None)
            }
            Outcome::Undecided => Ok(None),
            Outcome::Failed => {
                if account.failures.add(now, self.config.load().window)
                    >= self.config.load().max_failures
                {
                    account.locked_until = Some(now + self.config.load().lockout);
                    account.failures = Window::default();
                    Ok(Some(self.config.load().lockout))
                } else {
                    Ok(None)
                }
            }
        }
    }
}
