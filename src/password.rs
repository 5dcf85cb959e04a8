//! Password hashing on a bounded pool, off the proxy's event loop.
//!
//! bcrypt is deliberately slow (tens to hundreds of milliseconds at production cost). Each hash
//! or verify runs as a blocking task on a runtime of its own (lower OS priority than the proxy,
//! see `server.rs`), and a semaphore caps
//! how many run at once, so a login storm queues here instead of starving proxied traffic. A
//! caller that waits longer than `hash_queue_timeout` for a slot gets [`HashError::Busy`] (503).
//!
//! Sign-ins keep priority over registrations: hashing a new account's password first passes a
//! gate that lets at most `max(1, slots - 1)` registrations into the pool at once (queued or
//! running), so with two or more slots one is always left to sign-ins and password checks, and
//! with one slot a sign-in waits for at most one registration. The gate's wait counts towards
//! the same `hash_queue_timeout`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::PasswordConfig;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("too many password checks in progress")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

pub struct PasswordHasher {
    cost: u32,
    slots: Arc<Semaphore>,
    /// The gate registrations pass before they may queue for `slots`.
    registrations: Arc<Semaphore>,
    queue_timeout: Duration,
    runtime: tokio::runtime::Handle,
    /// A real bcrypt hash of a random password, verified against when the account does not
    /// exist so both answers take the same time.
    dummy_hash: String,
}

impl PasswordHasher {
    pub fn new(
        config: &PasswordConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, HashError> {
        let random = uuid::Uuid::new_v4().to_string();
        let dummy_hash = bcrypt::hash(random, config.bcrypt_cost)
            .map_err(|e| HashError::Failed(e.to_string()))?;
        Ok(Self {
            cost: config.bcrypt_cost,
            slots: Arc::new(Semaphore::new(config.max_concurrent_hashes)),
            registrations: Arc::new(Semaphore::new(registration_slots(
                config.max_concurrent_hashes,
            ))),
            queue_timeout: config.hash_queue_timeout,
            runtime,
            dummy_hash,
        })
    }

    /// Hashes a new password for a signed-in user (a password change): no lower priority.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let cost = self.cost;
        self.run(move || bcrypt::hash(password, cost).map_err(|e| HashError::Failed(e.to_string())))
            .await
    }

    /// Hashes a new account's password, behind the registration gate (see the module doc).
    pub async fn hash_for_registration(&self, password: String) -> Result<String, HashError> {
        let cost = self.cost;
        self.registration(move || {
            bcrypt::hash(password, cost).map_err(|e| HashError::Failed(e.to_string()))
        })
        .await
    }

    async fn registration<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let deadline = Instant::now() + self.queue_timeout;
        let gate = tokio::time::timeout_at(deadline, self.registrations.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Busy)?
            .map_err(|_| HashError::Busy)?;
        self.run_until(deadline, Some(gate), work).await
    }

    /// Checks `password` against `hash`, or against the dummy hash when there is no account,
    /// in which case the answer is always `false`.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, HashError> {
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let matched = self
            .run(move || Ok(bcrypt::verify(password, &hash).unwrap_or(false)))
            .await?;
        Ok(exists && matched)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        self.run_until(Instant::now() + self.queue_timeout, None, work)
            .await
    }

    /// Runs `work` on the pool once a slot is free, waiting no later than `deadline`; `gate`
    /// (a registration's) is held until the work is done.
    async fn run_until<T: Send + 'static>(
        &self,
        deadline: Instant,
        gate: Option<OwnedSemaphorePermit>,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Busy)?
            .map_err(|_| HashError::Busy)?;
        let task = self.runtime.spawn_blocking(move || {
            let result = work();
            drop(permit);
            drop(gate);
            result
        });
        task.await
            .map_err(|e| HashError::Failed(format!("hashing task failed: {e}")))?
    }
}

/// How many registrations may use a pool of `slots` at once: all but one, and at least one.
fn registration_slots(slots: usize) -> usize {
    slots.saturating_sub(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::mpsc;

    fn hasher(slots: usize, queue_timeout: Duration) -> PasswordHasher {
        PasswordHasher::new(
            &PasswordConfig {
                bcrypt_cost: 4,
                min_length: 8,
                max_concurrent_hashes: slots,
                hash_queue_timeout: queue_timeout,
            },
            tokio::runtime::Handle::current(),
        )
        .unwrap()
    }

    /// A registration that holds its place in the pool until `release` is sent to.
    fn held_registration(
        hasher: &Arc<PasswordHasher>,
    ) -> (
        mpsc::Sender<()>,
        tokio::task::JoinHandle<Result<(), HashError>>,
    ) {
        let (release, wait) = mpsc::channel::<()>();
        let hasher = hasher.clone();
        let task = tokio::spawn(async move {
            hasher
                .registration(move || {
                    let _ = wait.recv();
                    Ok(())
                })
                .await
        });
        (release, task)
    }

    async fn until_taken(semaphore: &Semaphore, permits: usize) {
        while semaphore.available_permits() > permits {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn registrations_get_all_slots_but_one() {
        assert_eq!(registration_slots(1), 1);
        assert_eq!(registration_slots(2), 1);
        assert_eq!(registration_slots(8), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registration_flood_leaves_a_slot_to_sign_ins() {
        let hasher = Arc::new(hasher(3, Duration::from_millis(300)));
        let (release_a, a) = held_registration(&hasher);
        let (release_b, b) = held_registration(&hasher);
        until_taken(&hasher.slots, 1).await;
        // The gate is full: a third registration gives up after the queue timeout...
        let third = hasher
            .hash_for_registration("new password".to_string())
            .await;
        assert!(matches!(third, Err(HashError::Busy)), "{third:?}");
        // ...while a sign-in still gets the last slot at once.
        let hash = bcrypt::hash("secret", 4).unwrap();
        let verified = hasher.verify("secret".to_string(), Some(hash)).await;
        assert!(verified.unwrap());
        for release in [release_a, release_b] {
            release.send(()).unwrap();
        }
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        // Once they are done, registrations go through again.
        assert!(hasher
            .hash_for_registration("new password".to_string())
            .await
            .is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_one_slot_a_sign_in_waits_for_one_registration_only() {
        let hasher = Arc::new(hasher(1, Duration::from_secs(2)));
        let (release_running, running) = held_registration(&hasher);
        until_taken(&hasher.slots, 0).await;
        // Two more registrations that would hold the slot until told otherwise, then a
        // sign-in, all queued while the first registration runs.
        let (release_second, second) = held_registration(&hasher);
        let (release_third, third) = held_registration(&hasher);
        let hash = bcrypt::hash("secret", 4).unwrap();
        let for_sign_in = hasher.clone();
        let sign_in =
            tokio::spawn(async move { for_sign_in.verify("secret".to_string(), Some(hash)).await });
        // Let every task reach its queue.
        tokio::time::sleep(Duration::from_millis(100)).await;
        release_running.send(()).unwrap();
        running.await.unwrap().unwrap();
        // The waiting registrations were held at the gate, not ahead of the sign-in in the
        // pool's queue: the sign-in is answered while they still hold on.
        assert!(sign_in.await.unwrap().unwrap());
        for release in [release_second, release_third] {
            release.send(()).unwrap();
        }
        second.await.unwrap().unwrap();
        third.await.unwrap().unwrap();
    }
}
