//! The session store contract: one set of cases, run against every [`SessionStore`]
//! implementation — Redis (a real server, a random key prefix per test) and the in-process
//! store of the embedded mode — so both keep one policy: sliding idle expiry capped by the
//! absolute lifetime, the per-user cap (evict the least recently active, or refuse) enforced
//! atomically under concurrency, listing and revocation through the per-user index. The Redis
//! cases run on the shared standalone server and on a private Redis Cluster (3 masters + 3
//! replicas), where every script must keep to one slot.

mod common;

use std::sync::Arc;
use std::time::Duration;

use authgate::config::{OnLimit, RedisDeployment};
use authgate::session::memory::MemorySessionStore;
use authgate::session::redis::RedisSessionStore;
use authgate::session::redis_connection::RedisConnection;
use authgate::session::{
    Created, SessionCap, SessionData, SessionKey, SessionStore, SessionToken, SlotTag,
};
use authgate::store::StoreError;
use authgate::telemetry::Metrics;
use common::topology::RedisCluster;
use uuid::Uuid;

const IDLE: Duration = Duration::from_secs(3600);

fn redis_url() -> String {
    std::env::var("AUTHGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn redis_store() -> Arc<dyn SessionStore> {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).unwrap();
    if client.get_connection().is_err() {
        panic!("Redis is not reachable at {url} (set AUTHGATE_TEST_REDIS_URL)");
    }
    store_on(RedisDeployment::Standalone(url))
}

fn store_on(deployment: RedisDeployment) -> Arc<dyn SessionStore> {
    let metrics = Arc::new(Metrics::new().unwrap());
    let connection = RedisConnection::new(
        &deployment,
        Duration::from_secs(2),
        tokio::runtime::Handle::current(),
        metrics,
    )
    .unwrap();
    let prefix = format!("authgate_contract_{}:", Uuid::new_v4().simple());
    Arc::new(RedisSessionStore::new(
        Arc::new(connection),
        &prefix,
        Duration::from_secs(3600),
    ))
}

fn memory_store() -> Arc<dyn SessionStore> {
    Arc::new(MemorySessionStore::new(10_000, Duration::from_secs(3600)))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn session(user_id: Uuid, lifetime: Duration) -> (SessionKey, SessionData) {
    let created = now_ms();
    let data = SessionData {
        id: Uuid::new_v4(),
        user_id,
        email: "ada@example.com".into(),
        ip: "127.0.0.1".parse().unwrap(),
        user_agent: "contract".into(),
        device_id: Some(Uuid::new_v4()),
        device_label: "Test".into(),
        ip_id: None,
        location: Some("Local".into()),
        created_at_ms: created,
        absolute_expiry_ms: created + i64::try_from(lifetime.as_millis()).unwrap(),
        roles: Vec::new(),
    };
    (
        SessionToken::generate(SlotTag::of_user(user_id)).key(),
        data,
    )
}

fn cap(max: u32, on_limit: OnLimit) -> SessionCap {
    SessionCap {
        max_sessions: max,
        on_limit,
    }
}

async fn create(
    store: &Arc<dyn SessionStore>,
    token: &SessionKey,
    data: &SessionData,
    max: u32,
) -> Created {
    store
        .create(token, data, IDLE, cap(max, OnLimit::EvictOldest), 0)
        .await
        .unwrap()
}

/// Runs `case` against every implementation.
macro_rules! contract {
    ($name:ident, $case:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_redis() {
                $case(redis_store()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_redis_cluster() {
                let cluster = RedisCluster::start().await;
                $case(store_on(RedisDeployment::Cluster(cluster.urls()))).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_memory() {
                $case(memory_store()).await;
            }
        }
    };
}

async fn created_sessions_are_found_and_slide(store: Arc<dyn SessionStore>) {
    let user = Uuid::new_v4();
    let (token, data) = session(user, Duration::from_secs(86_400));
    assert!(
        matches!(create(&store, &token, &data, 5).await, Created::Ok { evicted } if evicted.is_empty())
    );
    let later = now_ms() + 1_000;
    let live = store.touch(&token, later, IDLE).await.unwrap().unwrap();
    assert_eq!(live.data.id, data.id);
    assert_eq!(live.data.email, data.email);
    assert_eq!(live.data.location.as_deref(), Some("Local"));
    assert_eq!(live.last_activity_ms, later);
    assert_eq!(live.idle_remaining, IDLE);
    let unknown = SessionToken::generate(SlotTag::of_user(user)).key();
    assert!(store.touch(&unknown, later, IDLE).await.unwrap().is_none());
}
contract!(created_sessions, created_sessions_are_found_and_slide);

/// Long enough that a loaded machine (8 private clusters starting at once) does not eat the
/// margin between a use and the idle expiry.
const IDLE_SHORT: Duration = Duration::from_millis(1200);

async fn idle_sessions_expire(store: Arc<dyn SessionStore>) {
    let (token, data) = session(Uuid::new_v4(), Duration::from_secs(3600));
    store
        .create(&token, &data, IDLE_SHORT, cap(5, OnLimit::EvictOldest), 0)
        .await
        .unwrap();
    // Used within the idle time: it slides.
    tokio::time::sleep(IDLE_SHORT / 2).await;
    assert!(store
        .touch(&token, now_ms(), IDLE_SHORT)
        .await
        .unwrap()
        .is_some());
    tokio::time::sleep(IDLE_SHORT / 2).await;
    assert!(store
        .touch(&token, now_ms(), IDLE_SHORT)
        .await
        .unwrap()
        .is_some());
    // Left alone past it: gone.
    tokio::time::sleep(IDLE_SHORT * 3 / 2).await;
    assert!(store
        .touch(&token, now_ms(), IDLE_SHORT)
        .await
        .unwrap()
        .is_none());
    assert!(store.list(data.user_id).await.unwrap().is_empty());
}
contract!(idle_expiry, idle_sessions_expire);

async fn the_absolute_lifetime_caps_the_slide(store: Arc<dyn SessionStore>) {
    let (token, data) = session(Uuid::new_v4(), Duration::from_millis(700));
    create(&store, &token, &data, 5).await;
    let live = store.touch(&token, now_ms(), IDLE).await.unwrap().unwrap();
    assert!(
        live.idle_remaining <= Duration::from_millis(700),
        "{:?}",
        live.idle_remaining
    );
    // Past the absolute expiry it is gone, however recently used.
    let after = data.absolute_expiry_ms + 1;
    assert!(store.touch(&token, after, IDLE).await.unwrap().is_none());
}
contract!(absolute_lifetime, the_absolute_lifetime_caps_the_slide);

async fn the_cap_evicts_the_least_recently_active(store: Arc<dyn SessionStore>) {
    let user = Uuid::new_v4();
    let (first_token, first) = session(user, Duration::from_secs(3600));
    create(&store, &first_token, &first, 2).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (second_token, second) = session(user, Duration::from_secs(3600));
    create(&store, &second_token, &second, 2).await;
    // The first is used after the second was made: the second is now the least recent.
    store
        .touch(&first_token, now_ms() + 10, IDLE)
        .await
        .unwrap()
        .unwrap();
    let (third_token, third) = session(user, Duration::from_secs(3600));
    let Created::Ok { evicted } = create(&store, &third_token, &third, 2).await else {
        panic!("evict_oldest never refuses");
    };
    assert_eq!(evicted, vec![second.id]);
    assert!(store
        .touch(&second_token, now_ms(), IDLE)
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.list(user).await.unwrap().len(), 2);
}
contract!(cap_evicts, the_cap_evicts_the_least_recently_active);

async fn the_cap_can_refuse(store: Arc<dyn SessionStore>) {
    let user = Uuid::new_v4();
    for _ in 0..2 {
        let (token, data) = session(user, Duration::from_secs(3600));
        store
            .create(&token, &data, IDLE, cap(2, OnLimit::Reject), 0)
            .await
            .unwrap();
    }
    let (token, data) = session(user, Duration::from_secs(3600));
    let outcome = store
        .create(&token, &data, IDLE, cap(2, OnLimit::Reject), 0)
        .await
        .unwrap();
    assert!(matches!(outcome, Created::LimitReached));
    assert!(store.touch(&token, now_ms(), IDLE).await.unwrap().is_none());
    assert_eq!(store.list(user).await.unwrap().len(), 2);
}
contract!(cap_refuses, the_cap_can_refuse);

async fn concurrent_logins_never_overshoot_the_cap(store: Arc<dyn SessionStore>) {
    let user = Uuid::new_v4();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let (token, data) = session(user, Duration::from_secs(3600));
            create(&store, &token, &data, 5).await;
            token
        }));
    }
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(task.await.unwrap());
    }
    assert_eq!(store.list(user).await.unwrap().len(), 5);
    let live = store.live(&tokens).await.unwrap();
    assert_eq!(live.iter().filter(|live| **live).count(), 5);
}
contract!(concurrent_cap, concurrent_logins_never_overshoot_the_cap);

async fn revocation_is_immediate_and_per_user(store: Arc<dyn SessionStore>) {
    let user = Uuid::new_v4();
    let other_user = Uuid::new_v4();
    let (a_token, a) = session(user, Duration::from_secs(3600));
    let (b_token, b) = session(user, Duration::from_secs(3600));
    let (c_token, c) = session(user, Duration::from_secs(3600));
    let (other_token, other) = session(other_user, Duration::from_secs(3600));
    for (token, data) in [
        (&a_token, &a),
        (&b_token, &b),
        (&c_token, &c),
        (&other_token, &other),
    ] {
        create(&store, token, data, 5).await;
    }
    // Someone else's session id is not found through my index.
    assert!(!store.revoke(user, other.id).await.unwrap());
    assert!(store
        .touch(&other_token, now_ms(), IDLE)
        .await
        .unwrap()
        .is_some());
    assert!(store.revoke(user, a.id).await.unwrap());
    assert!(!store.revoke(user, a.id).await.unwrap(), "revoking twice");
    assert!(store
        .touch(&a_token, now_ms(), IDLE)
        .await
        .unwrap()
        .is_none());
    let mut ended = store.revoke_all_except(user, Some(b.id)).await.unwrap();
    ended.sort();
    assert_eq!(ended, vec![c.id]);
    let live = store
        .live(&[a_token, b_token, c_token, other_token])
        .await
        .unwrap();
    assert_eq!(live, vec![false, true, false, true]);
    let listed = store.list(user).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].data.id, b.id);
    assert_eq!(
        store.revoke_all_except(user, None).await.unwrap(),
        vec![b.id]
    );
    assert!(store.list(user).await.unwrap().is_empty());
    store.ping().await.unwrap();
}
contract!(revocation, revocation_is_immediate_and_per_user);

async fn roles_are_rewritten_on_every_live_session(store: Arc<dyn SessionStore>) {
    let user = Uuid::new_v4();
    let other_user = Uuid::new_v4();
    let (a_token, a) = session(user, Duration::from_secs(3600));
    let (b_token, b) = session(user, Duration::from_secs(3600));
    let (other_token, other) = session(other_user, Duration::from_secs(3600));
    for (token, data) in [(&a_token, &a), (&b_token, &b), (&other_token, &other)] {
        create(&store, token, data, 5).await;
    }
    let epoch = store.credential_epoch(user).await.unwrap();
    let roles = vec!["admin".to_string(), "ops".to_string()];
    assert_eq!(store.set_roles(user, &roles).await.unwrap(), 2);
    for token in [&a_token, &b_token] {
        let live = store.touch(token, now_ms(), IDLE).await.unwrap().unwrap();
        assert_eq!(live.data.roles, roles);
    }
    assert!(store
        .list(user)
        .await
        .unwrap()
        .iter()
        .all(|s| s.data.roles == roles));
    let untouched = store
        .touch(&other_token, now_ms(), IDLE)
        .await
        .unwrap()
        .unwrap();
    assert!(untouched.data.roles.is_empty());
    // A login that read the roles before the change cannot create its session after it.
    assert!(store.credential_epoch(user).await.unwrap() > epoch);
    let (late_token, late) = session(user, Duration::from_secs(3600));
    let refused = store
        .create(
            &late_token,
            &late,
            IDLE,
            cap(5, OnLimit::EvictOldest),
            epoch,
        )
        .await
        .unwrap();
    assert!(
        matches!(refused, Created::CredentialsChanged),
        "{refused:?}"
    );
    assert_eq!(store.set_roles(user, &[]).await.unwrap(), 2);
    let live = store
        .touch(&a_token, now_ms(), IDLE)
        .await
        .unwrap()
        .unwrap();
    assert!(live.data.roles.is_empty());
}
contract!(roles, roles_are_rewritten_on_every_live_session);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_memory_store_is_bounded() {
    let store = MemorySessionStore::new(3, Duration::from_secs(3600));
    let user = Uuid::new_v4();
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let (token, data) = session(Uuid::new_v4(), Duration::from_secs(3600));
        store
            .create(
                &token,
                &data,
                Duration::from_millis(300),
                cap(5, OnLimit::EvictOldest),
                0,
            )
            .await
            .unwrap();
        tokens.push(token);
    }
    let (token, data) = session(user, Duration::from_secs(3600));
    let full = store
        .create(&token, &data, IDLE, cap(5, OnLimit::EvictOldest), 0)
        .await;
    assert!(
        matches!(full, Err(StoreError::Full { limit: 3, .. })),
        "{full:?}"
    );
    // Once those idle out, the places are free again (swept on demand and periodically).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.sweep(), 0);
    store
        .create(&token, &data, IDLE, cap(5, OnLimit::EvictOldest), 0)
        .await
        .unwrap();
}

async fn a_revoke_all_moves_the_credential_epoch(store: Arc<dyn SessionStore>) {
    let user = Uuid::new_v4();
    let epoch = store.credential_epoch(user).await.unwrap();
    assert_eq!(epoch, 0);
    let (token, data) = session(user, Duration::from_secs(3600));
    store
        .create(&token, &data, IDLE, cap(5, OnLimit::EvictOldest), epoch)
        .await
        .unwrap();
    // A login that read the epoch before a revoke-all cannot create a session after it.
    store.revoke_all_except(user, Some(data.id)).await.unwrap();
    let moved = store.credential_epoch(user).await.unwrap();
    assert_ne!(moved, epoch);
    let (late_token, late) = session(user, Duration::from_secs(3600));
    let outcome = store
        .create(
            &late_token,
            &late,
            IDLE,
            cap(5, OnLimit::EvictOldest),
            epoch,
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Created::CredentialsChanged));
    assert!(store
        .touch(&late_token, now_ms(), IDLE)
        .await
        .unwrap()
        .is_none());
    // With the current epoch it can; other users' epochs never moved.
    let outcome = store
        .create(
            &late_token,
            &late,
            IDLE,
            cap(5, OnLimit::EvictOldest),
            moved,
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Created::Ok { .. }));
    assert_eq!(store.credential_epoch(Uuid::new_v4()).await.unwrap(), 0);
}
contract!(credential_epoch, a_revoke_all_moves_the_credential_epoch);

async fn a_login_racing_a_revoke_all_never_outlives_it(store: Arc<dyn SessionStore>) {
    // Logins that read the epoch before a revoke-all either land before it (and are ended by
    // it, however the snapshot it took saw them) or are refused; none survives it.
    for _ in 0..15 {
        let user = Uuid::new_v4();
        let (first, data) = session(user, Duration::from_secs(3600));
        create(&store, &first, &data, 10).await;
        let epoch = store.credential_epoch(user).await.unwrap();
        let logins: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let (key, data) = session(user, Duration::from_secs(3600));
                    let outcome = store
                        .create(&key, &data, IDLE, cap(10, OnLimit::EvictOldest), epoch)
                        .await
                        .unwrap();
                    (key, outcome)
                })
            })
            .collect();
        let revoke = {
            let store = store.clone();
            tokio::spawn(async move { store.revoke_all_except(user, None).await.unwrap() })
        };
        revoke.await.unwrap();
        let mut keys = vec![first];
        for login in logins {
            let (key, outcome) = login.await.unwrap();
            assert!(
                matches!(outcome, Created::Ok { .. } | Created::CredentialsChanged),
                "{outcome:?}"
            );
            keys.push(key);
        }
        let live = store.live(&keys).await.unwrap();
        assert!(
            live.iter().all(|live| !live),
            "a session made with the epoch read before a revoke-all survived it: {live:?}"
        );
        assert!(store.list(user).await.unwrap().is_empty());
    }
}
contract!(
    login_vs_revoke_all,
    a_login_racing_a_revoke_all_never_outlives_it
);

async fn a_cap_of_one_holds_under_concurrent_logins(store: Arc<dyn SessionStore>) {
    // Every login must evict one made after it read the user's sessions: the store retries.
    let user = Uuid::new_v4();
    let logins: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let (key, data) = session(user, Duration::from_secs(3600));
                let outcome = store
                    .create(&key, &data, IDLE, cap(1, OnLimit::EvictOldest), 0)
                    .await
                    .unwrap();
                assert!(matches!(outcome, Created::Ok { .. }), "{outcome:?}");
                key
            })
        })
        .collect();
    let mut keys = Vec::new();
    for login in logins {
        keys.push(login.await.unwrap());
    }
    let live = store.live(&keys).await.unwrap();
    assert_eq!(live.iter().filter(|live| **live).count(), 1, "{live:?}");
    assert_eq!(store.list(user).await.unwrap().len(), 1);
}
contract!(cap_of_one, a_cap_of_one_holds_under_concurrent_logins);
