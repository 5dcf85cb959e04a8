//! The login-protection contract: one set of cases, run against every [`LoginGuard`] — Redis
//! (a real server, a random key prefix per test; shared by every gateway instance) and the
//! in-process guard of the embedded mode — so lockout accounting, per-address budgets and the
//! "checks in flight count" rule are one policy on both. The Redis cases also run on a private
//! Redis Cluster (3 masters + 3 replicas): an account's keys share a slot, an IP's counter has
//! its own.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use authgate::config::{LoginProtectionSection, RedisDeployment};
use authgate::limits::login::memory::MemoryLoginGuard;
use authgate::limits::login::{LoginGuard, Outcome, RedisLoginGuard, Refusal};
use authgate::session::redis_connection::RedisConnection;
use authgate::telemetry::Metrics;
use common::topology::RedisCluster;
use uuid::Uuid;

fn protection(
    max_failures: u32,
    window: Duration,
    max_attempts_per_ip: u32,
) -> LoginProtectionSection {
    LoginProtectionSection {
        max_failures,
        window,
        lockout: Duration::from_secs(60),
        max_attempts_per_ip,
        ..LoginProtectionSection::default()
    }
}

fn redis_guard(config: LoginProtectionSection) -> Arc<dyn LoginGuard> {
    let url = std::env::var("AUTHGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url.as_str()).unwrap();
    if client.get_connection().is_err() {
        panic!("Redis is not reachable at {url} (set AUTHGATE_TEST_REDIS_URL)");
    }
    guard_on(&RedisDeployment::Standalone(url), config)
}

fn guard_on(deployment: &RedisDeployment, config: LoginProtectionSection) -> Arc<dyn LoginGuard> {
    let connection = RedisConnection::new(
        deployment,
        Duration::from_secs(2),
        tokio::runtime::Handle::current(),
        Arc::new(Metrics::new().unwrap()),
    )
    .unwrap();
    let prefix = format!("authgate_contract_{}:", Uuid::new_v4().simple());
    Arc::new(RedisLoginGuard::new(
        Arc::new(connection),
        &prefix,
        config,
        Duration::from_millis(300),
    ))
}

fn memory_guard(config: LoginProtectionSection) -> Arc<dyn LoginGuard> {
    Arc::new(MemoryLoginGuard::new(config, Duration::from_millis(300)))
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Runs `case` against every implementation; `case` gets a constructor for a guard.
macro_rules! contract {
    ($name:ident, $case:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_redis() {
                $case(Arc::new(redis_guard)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_redis_cluster() {
                let cluster = RedisCluster::start().await;
                let deployment = RedisDeployment::Cluster(cluster.urls());
                $case(Arc::new(move |config| guard_on(&deployment, config))).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_memory() {
                $case(Arc::new(memory_guard)).await;
            }
        }
    };
}

type Make = Arc<dyn Fn(LoginProtectionSection) -> Arc<dyn LoginGuard> + Send + Sync>;

async fn attempt(
    guard: &Arc<dyn LoginGuard>,
    email: &str,
    from: IpAddr,
    outcome: Outcome,
) -> Result<Option<Duration>, Refusal> {
    match guard.begin(email, from).await.unwrap() {
        Some(refusal) => Err(refusal),
        None => Ok(guard.finish(email, outcome).await.unwrap()),
    }
}

async fn failures_lock_the_account(make: Make) {
    let guard = make(protection(3, Duration::from_secs(60), 100));
    let email = format!("{}@example.com", Uuid::new_v4());
    let from = ip("192.0.2.1");
    assert_eq!(
        attempt(&guard, &email, from, Outcome::Failed)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        attempt(&guard, &email, from, Outcome::Failed)
            .await
            .unwrap(),
        None
    );
    let locked = attempt(&guard, &email, from, Outcome::Failed)
        .await
        .unwrap();
    assert_eq!(
        locked,
        Some(Duration::from_secs(60)),
        "the third failure locks"
    );
    // Even the right password is refused now, from any address.
    let refused = guard.begin(&email, ip("198.51.100.1")).await.unwrap();
    assert!(
        matches!(refused, Some(Refusal::AccountLocked(wait)) if wait <= Duration::from_secs(60))
    );
    // Other accounts are unaffected.
    let other = format!("{}@example.com", Uuid::new_v4());
    assert!(guard.begin(&other, from).await.unwrap().is_none());
}
contract!(lockout, failures_lock_the_account);

async fn success_clears_failures(make: Make) {
    let guard = make(protection(3, Duration::from_secs(60), 100));
    let email = format!("{}@example.com", Uuid::new_v4());
    let from = ip("192.0.2.2");
    for _ in 0..2 {
        attempt(&guard, &email, from, Outcome::Failed)
            .await
            .unwrap();
    }
    attempt(&guard, &email, from, Outcome::Succeeded)
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            attempt(&guard, &email, from, Outcome::Failed)
                .await
                .unwrap(),
            None
        );
    }
    // A store outage during the check counts as nothing.
    assert_eq!(
        attempt(&guard, &email, from, Outcome::Undecided)
            .await
            .unwrap(),
        None
    );
    assert!(guard.begin(&email, from).await.unwrap().is_none());
}
contract!(success, success_clears_failures);

async fn failures_are_forgotten_after_the_window(make: Make) {
    let guard = make(protection(3, Duration::from_millis(400), 100));
    let email = format!("{}@example.com", Uuid::new_v4());
    let from = ip("192.0.2.3");
    for _ in 0..2 {
        attempt(&guard, &email, from, Outcome::Failed)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..2 {
        assert_eq!(
            attempt(&guard, &email, from, Outcome::Failed)
                .await
                .unwrap(),
            None
        );
    }
}
contract!(window, failures_are_forgotten_after_the_window);

async fn each_address_has_an_attempt_budget(make: Make) {
    let guard = make(protection(100, Duration::from_secs(60), 3));
    let from = ip("2001:db8:1:2::10");
    for _ in 0..3 {
        let email = format!("{}@example.com", Uuid::new_v4());
        attempt(&guard, &email, from, Outcome::Failed)
            .await
            .unwrap();
    }
    // Another address in the same IPv6 /64 shares the budget.
    let email = format!("{}@example.com", Uuid::new_v4());
    let refused = attempt(&guard, &email, ip("2001:db8:1:2::99"), Outcome::Failed).await;
    assert!(
        matches!(refused, Err(Refusal::TooManyFromIp(wait)) if wait <= Duration::from_secs(60))
    );
    // Another address does not.
    assert!(
        attempt(&guard, &email, ip("2001:db8:1:3::1"), Outcome::Failed)
            .await
            .is_ok()
    );
}
contract!(address_budget, each_address_has_an_attempt_budget);

async fn concurrent_guesses_get_no_more_checks_than_the_limit(make: Make) {
    let guard = make(protection(3, Duration::from_secs(60), 1000));
    let email = format!("{}@example.com", Uuid::new_v4());
    let mut tasks = Vec::new();
    for n in 0..12 {
        let guard = guard.clone();
        let email = email.clone();
        tasks.push(tokio::spawn(async move {
            let from = ip(&format!("203.0.113.{n}"));
            match guard.begin(&email, from).await.unwrap() {
                Some(_) => false,
                None => {
                    // The (slow) password check.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    guard.finish(&email, Outcome::Failed).await.unwrap();
                    true
                }
            }
        }));
    }
    let mut checked = 0;
    for task in tasks {
        checked += usize::from(task.await.unwrap());
    }
    assert_eq!(
        checked, 3,
        "exactly max_failures wrong passwords may be checked"
    );
    assert!(matches!(
        guard.begin(&email, ip("203.0.113.200")).await.unwrap(),
        Some(Refusal::AccountLocked(_))
    ));
}
contract!(
    concurrent_guesses,
    concurrent_guesses_get_no_more_checks_than_the_limit
);

async fn each_address_has_a_registration_budget(make: Make) {
    let guard = make(LoginProtectionSection {
        max_registrations_per_ip: 2,
        window: Duration::from_secs(60),
        ..LoginProtectionSection::default()
    });
    let from = ip("198.51.100.9");
    assert_eq!(guard.begin_registration(from).await.unwrap(), None);
    assert_eq!(guard.begin_registration(from).await.unwrap(), None);
    let over = guard.begin_registration(from).await.unwrap();
    assert!(matches!(over, Some(wait) if wait <= Duration::from_secs(60) && !wait.is_zero()));
    // Separate from the login budget, and per address.
    assert!(guard.begin("a@example.com", from).await.unwrap().is_none());
    assert_eq!(
        guard.begin_registration(ip("198.51.100.10")).await.unwrap(),
        None
    );
}
contract!(registration_budget, each_address_has_a_registration_budget);
