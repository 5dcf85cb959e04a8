//! Password hashing on a bounded pool, off the proxy's event loop.
//!
//! bcrypt is deliberately slow (tens to hundreds of milliseconds at production cost). Each hash
//! or verify runs as a blocking task on the long-lived background runtime, and a semaphore caps
//! how many run at once, so a login storm queues here instead of starving proxied traffic. A
//! caller that waits longer than `hash_queue_timeout` for a slot gets [`HashError::Busy`] (503).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

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
            queue_timeout: config.hash_queue_timeout,
            runtime,
            dummy_hash,
        })
    }

    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let cost = self.cost;
        self.run(move || bcrypt::hash(password, cost).map_err(|e| HashError::Failed(e.to_string())))
            .await
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
        let permit = tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Busy)?
            .map_err(|_| HashError::Busy)?;
        let task = self.runtime.spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        });
        task.await
            .map_err(|e| HashError::Failed(format!("hashing task failed: {e}")))?
    }
}
