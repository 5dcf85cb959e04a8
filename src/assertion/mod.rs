//! The signed identity assertion (contract §9): with `[assertion] enabled`, every request forwarded
//! on a protected route (unless the route says `assertion = false`) carries
//! `X-Authgate-Assertion`, a short-lived JWT (EdDSA or ES256) an upstream verifies against
//! `/auth/.well-known/jwks.json` to know the request came through the gateway.
//!
//! Owns: the keys in force ([`KeyRing`], swapped whole), signing (jsonwebtoken on ring), the
//! reuse of signed tokens (`cache.rs`) and the JWKS document. Keys come from
//! `assertion.key_file`, or from the record store (`signing_keys`), where the first gateway
//! to find none adds one and `authgate assertion rotate` adds the next: every gateway on the
//! database signs with the newest live key of its algorithm, re-read every few seconds.
//! A key retired by a rotation (or a key file replaced by another) stays published until its
//! last assertions have expired: `retired_at + lifetime + 60 s`.
//!
//! Must not: touch a store on the proxied path ([`Assertions::sign`] reads the key ring and
//! the cache only), log a key or a token, or let a request through without its assertion
//! (the caller answers 503 when [`Assertions::sign`] fails).

pub mod cache;
pub mod keys;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use http::HeaderValue;
use serde::Serialize;
use uuid::Uuid;

use crate::config::{AssertionAlgorithm, AssertionConfig};
use crate::session::SessionData;
use crate::store::{RecordStore, StoredSigningKey};
use cache::TokenCache;
use keys::{PublicKey, SigningKey};

/// The header upstreams read the assertion from.
pub use crate::identity::ASSERTION as HEADER;

/// Where the public keys are published.
pub const JWKS_PATH: &str = "/auth/.well-known/jwks.json";

/// How often the keys are re-read (from the database, or the key file).
pub const KEY_REFRESH: Duration = Duration::from_secs(5);
/// Until the first keys are loaded, they are asked for this often.
const FIRST_LOAD_RETRY: Duration = Duration::from_millis(250);
/// A retired key stays published this long after its last assertion expired (verifiers that
/// cached the JWKS, clocks slightly apart).
const PUBLISHED_AFTER_EXPIRY: Duration = Duration::from_secs(60);
/// Sessions whose tokens are kept for reuse, at most.
const CACHED_SESSIONS: usize = 100_000;

/// Why a request could not get its assertion (answered with 503).
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("no assertion signing key loaded yet")]
    NoKey,
    #[error("cannot sign the identity assertion: {0}")]
    Signing(String),
}

/// The keys in force: the one signing now, and every public key published.
#[derive(Default)]
pub struct KeyRing {
    signing: Option<Arc<SigningKey>>,
    published: Vec<Published>,
}

struct Published {
    key: PublicKey,
    /// `None` while the key is live; else when it stops being published.
    until: Option<SystemTime>,
}

impl KeyRing {
    /// Which keys, in which state: two rings that agree need no swap.
    fn fingerprint(&self) -> Vec<(String, Option<SystemTime>)> {
        let mut print: Vec<(String, Option<SystemTime>)> = self
            .published
            .iter()
            .map(|published| (published.key.kid.clone(), published.until))
            .collect();
        print.push((
            self.signing
                .as_ref()
                .map_or(String::new(), |key| key.kid().to_string()),
            None,
        ));
        print
    }
}

/// Where the signing keys come from.
enum KeySource {
    /// `assertion.key_file`, re-read every [`KEY_REFRESH`] and on reload.
    File(PathBuf),
    /// The record store, shared by every gateway on the database.
    Database(Arc<dyn RecordStore>),
}

struct Settings {
    algorithm: AssertionAlgorithm,
    lifetime: Duration,
    issuer: String,
    source: KeySource,
}

/// The identity assertion as the gateway uses it: disabled, or signing with the keys in force.
pub struct Assertions {
    settings: Option<Settings>,
    ring: ArcSwap<KeyRing>,
    cache: TokenCache,
    /// Set once the first keys are loaded (for `/readyz`).
    loaded: AtomicBool,
}

/// The claims (RFC 7519 names, plus `email`, `sid` and `roles`).
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: Uuid,
    aud: &'a str,
    email: &'a str,
    /// The session's public id (as `/auth/user/sessions` lists it).
    sid: Uuid,
    roles: &'a [String],
    iat: u64,
    exp: u64,
}

impl Assertions {
    /// No assertions: nothing is signed and the JWKS is empty.
    pub fn disabled() -> Assertions {
        Assertions {
            settings: None,
            ring: ArcSwap::from_pointee(KeyRing::default()),
            cache: TokenCache::new(1),
            loaded: AtomicBool::new(true),
        }
    }

    /// The assertion as configured. With a key file, its key is loaded now, and a file that
    /// does not load is an error (the gateway does not start without a key to sign with).
    /// Database keys are loaded by [`Assertions::keep_current`] once the schema is ready.
    pub fn new(
        config: &AssertionConfig,
        records: Arc<dyn RecordStore>,
    ) -> Result<Assertions, String> {
        if !config.enabled {
            return Ok(Assertions::disabled());
        }
        let source = match &config.key_file {
            Some(path) => KeySource::File(path.clone()),
            None => KeySource::Database(records),
        };
        let assertions = Assertions {
            settings: Some(Settings {
                algorithm: config.algorithm,
                lifetime: config.lifetime,
                issuer: config.issuer.clone(),
                source,
            }),
            ring: ArcSwap::from_pointee(KeyRing::default()),
            cache: TokenCache::new(CACHED_SESSIONS),
            loaded: AtomicBool::new(false),
        };
        if let Some(Settings {
            source: KeySource::File(path),
            ..
        }) = &assertions.settings
        {
            let key = SigningKey::from_pem_file(path, config.algorithm)
                .map_err(|message| format!("assertion.key_file: {message}"))?;
            assertions.use_file_key(key);
        }
        Ok(assertions)
    }

    pub fn enabled(&self) -> bool {
        self.settings.is_some()
    }

    /// Whether a key to sign with is loaded (always, when disabled).
    pub fn ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The assertion for a request of `identity`'s session to the route whose audience is
    /// `audience`: a token kept from an earlier request while it has more than half its
    /// lifetime left, else a new one. No I/O.
    pub fn sign(
        &self,
        identity: &SessionData,
        audience: &str,
    ) -> Result<Option<HeaderValue>, AssertionError> {
        let Some(settings) = &self.settings else {
            return Ok(None);
        };
        let ring = self.ring.load();
        let key = ring.signing.as_ref().ok_or(AssertionError::NoKey)?;
        let now = Instant::now();
        if let Some(token) = self
            .cache
            .get(identity.id, audience, key.kid(), &identity.roles, now)
        {
            return Ok(Some(token));
        }
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let issued_at = since_epoch.as_secs();
        let lifetime = settings.lifetime.as_secs();
        let claims = Claims {
            iss: &settings.issuer,
            sub: identity.user_id,
            aud: audience,
            email: &identity.email,
            sid: identity.id,
            roles: &identity.roles,
            iat: issued_at,
            exp: issued_at + lifetime,
        };
        let mut header = jsonwebtoken::Header::new(key.algorithm().jose());
        header.kid = Some(key.kid().to_string());
        let token = jsonwebtoken::encode(&header, &claims, key.encoding())
            .map_err(|error| AssertionError::Signing(error.to_string()))?;
        let token = HeaderValue::from_str(&token)
            .map_err(|_| AssertionError::Signing("not a header value".to_string()))?;
        // Reused while more than half the lifetime is left (`iat` is whole seconds, so the
        // time since it counts against the half).
        let since_issued = since_epoch.saturating_sub(Duration::from_secs(issued_at));
        let fresh_for = (settings.lifetime / 2).saturating_sub(since_issued);
        if !fresh_for.is_zero() {
            self.cache.insert(
                identity.id,
                audience,
                key.kid(),
                &identity.roles,
                token.clone(),
                now + fresh_for,
                now,
            );
        }
        Ok(Some(token))
    }

    /// The JWKS document: every key published now (none when disabled).
    pub fn jwks(&self) -> serde_json::Value {
        let now = SystemTime::now();
        let keys: Vec<serde_json::Value> = self
            .ring
            .load()
            .published
            .iter()
            .filter(|published| published.until.is_none_or(|until| now < until))
            .map(|published| published.key.jwk())
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// Re-reads the keys (the key file, or the database) and swaps them in if they changed.
    /// Whether they changed.
    pub async fn refresh(&self) -> Result<bool, String> {
        let Some(settings) = &self.settings else {
            return Ok(false);
        };
        match &settings.source {
            KeySource::File(path) => {
                let key = SigningKey::from_pem_file(path, settings.algorithm)?;
                Ok(self.use_file_key(key))
            }
            KeySource::Database(records) => {
                let ring = load_from_database(records.as_ref(), settings).await?;
                Ok(self.swap_in(ring))
            }
        }
    }

    /// Keeps the keys current until the process ends: loads them as soon as the database
    /// schema is ready (`database_ready`), then re-reads them every [`KEY_REFRESH`], and drops
    /// tokens nobody can be handed any more.
    pub async fn keep_current(self: Arc<Self>, database_ready: Arc<AtomicBool>) {
        if self.settings.is_none() {
            return;
        }
        let mut last_error = String::new();
        loop {
            let wait = if self.ready() {
                KEY_REFRESH
            } else {
                FIRST_LOAD_RETRY
            };
            tokio::time::sleep(wait).await;
            self.cache.sweep(Instant::now());
            let from_database = matches!(
                self.settings.as_ref().map(|s| &s.source),
                Some(KeySource::Database(_))
            );
            if from_database && !database_ready.load(Ordering::Acquire) {
                continue;
            }
            match self.refresh().await {
                Ok(_) => last_error.clear(),
                Err(error) => {
                    // Said once per new error, not every few seconds.
                    if error != last_error {
                        tracing::warn!(%error, "cannot load the assertion signing keys; keeping the ones in force");
                        last_error = error;
                    }
                }
            }
        }
    }

    /// Makes `key` (read from the key file) the signing key; a previous, different key stays
    /// published until its assertions have expired. Whether the key changed.
    fn use_file_key(&self, key: SigningKey) -> bool {
        let Some(settings) = &self.settings else {
            return false;
        };
        let current = self.ring.load();
        let now = SystemTime::now();
        let unchanged = current
            .signing
            .as_ref()
            .is_some_and(|signing| signing.kid() == key.kid());
        let mut published: Vec<Published> = current
            .published
            .iter()
            .filter(|published| published.until.is_some_and(|until| now < until))
            .filter(|published| published.key.kid != key.kid())
            .map(|published| Published {
                key: published.key.clone(),
                until: published.until,
            })
            .collect();
        if let Some(previous) = current.signing.as_ref().filter(|_| !unchanged) {
            published.push(Published {
                key: previous.public().clone(),
                until: Some(now + settings.lifetime + PUBLISHED_AFTER_EXPIRY),
            });
            tracing::info!(
                kid = key.kid(),
                previous = previous.kid(),
                "assertion signing key replaced (key file)"
            );
        }
        published.insert(
            0,
            Published {
                key: key.public().clone(),
                until: None,
            },
        );
        let signing = if unchanged {
            current.signing.clone()
        } else {
            Some(Arc::new(key))
        };
        self.swap_in(KeyRing { signing, published })
    }

    /// Swaps `ring` in unless it holds what is in force already. Whether it swapped.
    fn swap_in(&self, ring: KeyRing) -> bool {
        let was_loaded = self.loaded.swap(ring.signing.is_some(), Ordering::AcqRel);
        if ring.fingerprint() == self.ring.load().fingerprint() {
            return false;
        }
        if let Some(key) = &ring.signing {
            if was_loaded {
                tracing::info!(kid = key.kid(), "assertion signing keys changed");
            } else {
                tracing::info!(
                    kid = key.kid(),
                    algorithm = key.algorithm().name(),
                    "assertion signing key loaded"
                );
            }
        }
        self.ring.store(Arc::new(ring));
        true
    }
}

/// The keys in the database: the newest live key of our algorithm signs (one is added when
/// there is none: the first gateway on a database, or after another gateway's rotation to
/// another algorithm); every live key, and every key retired less than `lifetime + 60 s` ago,
/// is published.
async fn load_from_database(
    records: &dyn RecordStore,
    settings: &Settings,
) -> Result<KeyRing, String> {
    let window = settings.lifetime + PUBLISHED_AFTER_EXPIRY;
    let since = Utc::now() - chrono::Duration::from_std(window).unwrap_or_default();
    let mut stored = records
        .signing_keys(since)
        .await
        .map_err(|e| e.to_string())?;
    let algorithm = settings.algorithm.name();
    let has_live = |stored: &[StoredSigningKey]| {
        stored
            .iter()
            .any(|key| key.retired_at.is_none() && key.algorithm == algorithm)
    };
    if !has_live(&stored) {
        let key = SigningKey::generate(settings.algorithm)?;
        let added = records
            .add_signing_key(&stored_form(&key, Utc::now()))
            .await
            .map_err(|e| e.to_string())?;
        if added {
            tracing::info!(
                kid = key.kid(),
                algorithm,
                "assertion signing key generated and stored"
            );
        }
        // Ours, or the one another gateway added at the same moment.
        stored = records
            .signing_keys(since)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut ring = KeyRing::default();
    // Newest first.
    for record in &stored {
        let Some(key_algorithm) = AssertionAlgorithm::from_name(&record.algorithm) else {
            continue;
        };
        let key = match SigningKey::from_pkcs8(key_algorithm, &record.private_key) {
            Ok(key) => key,
            Err(error) => {
                tracing::warn!(kid = %record.kid, %error, "a stored assertion key does not load; skipped");
                continue;
            }
        };
        let until = record
            .retired_at
            .map(|retired| SystemTime::from(retired) + window);
        ring.published.push(Published {
            key: key.public().clone(),
            until,
        });
        if ring.signing.is_none()
            && record.retired_at.is_none()
            && key_algorithm == settings.algorithm
        {
            ring.signing = Some(Arc::new(key));
        }
    }
    if ring.signing.is_none() {
        return Err(format!("no live {algorithm} key in the database"));
    }
    Ok(ring)
}

/// How the record store keeps `key`.
pub fn stored_form(key: &SigningKey, created_at: DateTime<Utc>) -> StoredSigningKey {
    StoredSigningKey {
        kid: key.kid().to_string(),
        algorithm: key.algorithm().name().to_string(),
        private_key: key.pkcs8().to_vec(),
        created_at,
        retired_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> SessionData {
        crate::test_support::session_data()
    }

    fn with_key(algorithm: AssertionAlgorithm) -> Assertions {
        let assertions = Assertions {
            settings: Some(Settings {
                algorithm,
                lifetime: Duration::from_secs(60),
                issuer: "https://gateway.example".to_string(),
                source: KeySource::File(PathBuf::from("unused")),
            }),
            ring: ArcSwap::from_pointee(KeyRing::default()),
            cache: TokenCache::new(16),
            loaded: AtomicBool::new(false),
        };
        assertions.use_file_key(SigningKey::generate(algorithm).unwrap());
        assertions
    }

    #[test]
    fn a_session_reuses_its_token_per_audience() {
        let assertions = with_key(AssertionAlgorithm::EdDsa);
        assert!(assertions.ready());
        let ada = identity();
        let first = assertions.sign(&ada, "/app/").unwrap().unwrap();
        assert_eq!(assertions.sign(&ada, "/app/").unwrap().unwrap(), first);
        assert_ne!(assertions.sign(&ada, "/other/").unwrap().unwrap(), first);
        assert_ne!(
            assertions.sign(&identity(), "/app/").unwrap().unwrap(),
            first
        );
        let parts: Vec<&str> = first.to_str().unwrap().split('.').collect();
        assert_eq!(parts.len(), 3);
    }

    #[test]
    fn a_replaced_key_file_key_stays_published_and_signs_no_more() {
        let assertions = with_key(AssertionAlgorithm::Es256);
        let old_kid = assertions.jwks()["keys"][0]["kid"]
            .as_str()
            .unwrap()
            .to_string();
        let ada = identity();
        let before = assertions.sign(&ada, "/").unwrap().unwrap();
        assert!(assertions.use_file_key(SigningKey::generate(AssertionAlgorithm::Es256).unwrap()));
        let kids: Vec<String> = assertions.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|key| key["kid"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kids.len(), 2);
        assert!(kids.contains(&old_kid));
        assert_ne!(assertions.sign(&ada, "/").unwrap().unwrap(), before);
    }

    #[test]
    fn disabled_signs_nothing_and_publishes_no_key() {
        let assertions = Assertions::disabled();
        assert!(assertions.sign(&identity(), "/").unwrap().is_none());
        assert_eq!(assertions.jwks(), serde_json::json!({"keys": []}));
    }
}
