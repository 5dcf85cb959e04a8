//! Scaled out on Redis Cluster and Sentinel: several gateway instances sharing a private Redis
//! Cluster (3 masters + 3 replicas) or Sentinel group (a master, a replica, three sentinels)
//! started by the harness, and Postgres.
//!
//! - Everything that works on standalone Redis works on a Cluster: a session made on one
//!   instance works on the others, a revocation through one is refused by all on the next
//!   request, lockout and per-IP login counters are shared, and the per-user cap holds across
//!   instances under concurrent logins.
//! - Failover: a master SIGKILLed during traffic. While it heals, clients get only 200 or 503
//!   with `Retry-After`: never a 401 for a live session, never a 200 for an ended one; every
//!   session that existed before comes back within 20 s. The same with Sentinel: the gateway
//!   follows the promotion without a restart.
//!
//! Redis replication is asynchronous, so "existed before" means acknowledged by a replica: the
//! tests wait for that (`WAIT`) before killing a master, as an operator's failover can only
//! keep what reached the replica.
//!
//! These need the production pair (Postgres shared by the instances).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::topology::{RedisCluster, RedisSentinels};
use common::*;
use serde_json::json;

/// How long a failover may take before every session that existed is served again.
const HEAL_WITHIN: Duration = Duration::from_secs(20);

fn production_only() -> bool {
    require_backend(
        Backend::Production,
        "several instances share Postgres; the embedded pair runs one instance",
    )
}

/// Two instances on one cluster, sharing the first one's database and key prefix.
async fn two_instances(
    options: impl Fn() -> GatewayOptions,
    cluster: &RedisCluster,
) -> (Gateway, Gateway) {
    let first = options().redis_cluster(cluster).start().await;
    let second = options()
        .sharing_stores_with(&first)
        .redis_cluster(cluster)
        .start()
        .await;
    (first, second)
}

async fn status_of(gateway: &Gateway, token: &str) -> u16 {
    gateway.get("/app", Some(token)).await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_session_works_everywhere_and_a_revocation_is_refused_by_all() {
    if !production_only() {
        return;
    }
    let cluster = RedisCluster::start().await;
    let (first, second) = two_instances(GatewayOptions::new, &cluster).await;
    let user = first.signed_in_user().await;
    for instance in [&first, &second] {
        let response = instance.get("/app", Some(&user.token)).await;
        assert_eq!(response.status(), 200);
        let echoed = EchoedRequest::from_json(&response.json().await.unwrap());
        assert_eq!(echoed.header("x-user-id"), Some(user.id.as_str()));
    }
    // A second session, made through the other instance; the first revoked through it.
    let other = second.login(&user.email, &user.password).await;
    let sessions: serde_json::Value = second
        .get("/auth/user/sessions", Some(&other))
        .await
        .json()
        .await
        .unwrap();
    let listed = sessions["sessions"].as_array().expect("a session list");
    assert_eq!(listed.len(), 2, "{sessions}");
    let first_id = listed
        .iter()
        .find(|session| session["current"] != json!(true))
        .and_then(|session| session["id"].as_str())
        .expect("the other session's id")
        .to_string();
    let revoked = second
        .request(
            "DELETE",
            &format!("/auth/user/sessions/{first_id}"),
            Some(&other),
            &[],
            None,
        )
        .await;
    assert_eq!(revoked.status(), 204);
    for instance in [&first, &second] {
        assert_eq!(status_of(instance, &user.token).await, 401);
        assert_eq!(status_of(instance, &other).await, 200);
    }
    // Revoke-all through the first instance ends every other session, on both.
    let third = first.login(&user.email, &user.password).await;
    let all = first
        .request("DELETE", "/auth/user/sessions", Some(&third), &[], None)
        .await;
    assert_eq!(all.status(), 200);
    for instance in [&first, &second] {
        assert_eq!(status_of(instance, &other).await, 401);
        assert_eq!(status_of(instance, &third).await, 200);
    }
    // Logout through the second: refused by the first.
    assert_eq!(second.logout(Some(&third)).await.status(), 204);
    assert_eq!(status_of(&first, &third).await, 401);
    // Every session has ended: what is left on the cluster all expires by itself.
    let keys = cluster.keys_with_ttl(&first.redis_prefix).await;
    assert!(!keys.is_empty(), "no keys under {}", first.redis_prefix);
    let forever: Vec<_> = keys.iter().filter(|(_, ttl)| *ttl < 0).collect();
    assert!(forever.is_empty(), "keys without a TTL: {forever:?}");
    assert!(
        !keys.iter().any(|(key, _)| key.contains("session:")),
        "a session key outlived its session: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_lockout_and_per_ip_login_counters_are_shared() {
    if !production_only() {
        return;
    }
    let cluster = RedisCluster::start().await;
    let (first, second) = two_instances(
        || GatewayOptions::new().login_protection(4, "15m", "15m", 9),
        &cluster,
    )
    .await;
    let email = unique_email();
    let password = strong_password();
    first.register(&email, &password).await;
    // Four failures spread over both instances lock the account on both.
    for i in 0..4 {
        let instance = if i % 2 == 0 { &first } else { &second };
        let response = login_attempt(instance, &email, &format!("guess-{i}-wrong")).await;
        assert_json_error(response, 401, "invalid_credentials").await;
    }
    for instance in [&first, &second] {
        assert_refused_429(
            login_attempt(instance, &email, &password).await,
            "account_locked",
            15 * 60,
        )
        .await;
    }
    // The per-IP budget (9) is one counter too: the 4 counted attempts above, then 5 more on
    // other accounts spread over both instances, and the next is refused by either.
    for i in 0..5 {
        let instance = if i % 2 == 0 { &second } else { &first };
        let response = login_attempt(instance, &unique_email(), "not-the-password").await;
        assert_json_error(response, 401, "invalid_credentials").await;
    }
    for instance in [&first, &second] {
        assert_refused_429(
            login_attempt(instance, &unique_email(), "not-the-password").await,
            "rate_limited",
            15 * 60,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_per_user_cap_holds_across_instances_under_concurrent_logins() {
    if !production_only() {
        return;
    }
    let cluster = RedisCluster::start().await;
    let (first, second) = two_instances(
        || GatewayOptions::new().max_sessions_per_user(3, "evict_oldest"),
        &cluster,
    )
    .await;
    let email = unique_email();
    let password = strong_password();
    first.register(&email, &password).await;
    let logins = (0..12).map(|i| {
        let instance = if i % 2 == 0 { &first } else { &second };
        let (email, password) = (email.clone(), password.clone());
        async move { instance.login(&email, &password).await }
    });
    let tokens = futures::future::join_all(logins).await;
    let mut live = 0;
    let mut survivor = None;
    for token in &tokens {
        let on_first = status_of(&first, token).await;
        assert_eq!(
            on_first,
            status_of(&second, token).await,
            "instances disagree"
        );
        if on_first == 200 {
            live += 1;
            survivor = Some(token.clone());
        }
    }
    assert_eq!(
        live, 3,
        "12 concurrent logins left {live} live sessions, cap 3"
    );
    // Every instance lists the same three.
    // (Their Postgres records are not checked: an eviction by one instance of a session whose
    // record the other has not written yet leaves that record to the expiry job.)
    let survivor = survivor.expect("a live session");
    for instance in [&first, &second] {
        let listed: serde_json::Value = instance
            .get("/auth/user/sessions", Some(&survivor))
            .await
            .json()
            .await
            .unwrap();
        let sessions = listed["sessions"].as_array().expect("a session list");
        assert_eq!(sessions.len(), 3, "{listed}");
    }
}

type Answers = std::collections::BTreeMap<u16, usize>;

/// One round: every token on every instance, each answer checked. A live session gets 200 or
/// 503 + `Retry-After`, an ended one 401 or 503. Counts the live sessions' answers by status;
/// returns whether every live session got 200.
async fn ask_round(
    instances: &[&Gateway],
    live: &[String],
    ended: &[String],
    answers: &mut Answers,
) -> bool {
    let mut all_served = true;
    for instance in instances {
        for token in live {
            let response = instance.get("/app", Some(token)).await;
            let status = response.status().as_u16();
            *answers.entry(status).or_default() += 1;
            match status {
                200 => {}
                503 => {
                    assert!(
                        header(&response, "retry-after").is_some(),
                        "503 without Retry-After"
                    );
                    all_served = false;
                }
                other => panic!(
                    "a live session (token {}…, sha256 {}) got {other} during the failover \
                     (answers so far {answers:?}): {}",
                    &token[..8],
                    sha256_hex(token),
                    response.text().await.unwrap_or_default()
                ),
            }
        }
        for token in ended {
            let status = status_of(instance, token).await;
            assert!(
                status == 401 || status == 503,
                "an ended session got {status} during the failover"
            );
        }
    }
    all_served
}

/// Rounds of [`ask_round`] from `killed` on, until one in which every live session got 200;
/// returns how long after `killed` that round ended.
async fn until_healed(
    instances: &[&Gateway],
    live: &[String],
    ended: &[String],
    killed: Instant,
) -> Duration {
    let mut answers = Answers::new();
    while !ask_round(instances, live, ended, &mut answers).await {
        assert!(
            killed.elapsed() < HEAL_WITHIN,
            "sessions not all served {HEAL_WITHIN:?} after the kill; answers {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let healed = killed.elapsed();
    println!("healed {healed:?} after the kill; answers {answers:?}");
    healed
}

/// Rounds of [`ask_round`] until `stop`: the traffic that runs through a failover. Returns
/// the answers counted by status.
async fn keep_asking(
    instances: &[&Gateway],
    live: Vec<String>,
    ended: Vec<String>,
    stop: &AtomicBool,
) -> Answers {
    let mut answers = Answers::new();
    while !stop.load(Ordering::Acquire) {
        ask_round(instances, &live, &ended, &mut answers).await;
    }
    answers
}

/// The failover both tests run, with traffic on `live` and `ended` throughout. Right before
/// `kill`, `gone` is logged out through the second instance and `user` signs in again through
/// the first: both changes must survive the kill (the gateway waits for a replica to
/// acknowledge them). Then until every live session, the new one too, is served again, which
/// must take less than [`HEAL_WITHIN`].
async fn fail_over(
    instances: &[&Gateway; 2],
    mut live: Vec<String>,
    mut ended: Vec<String>,
    gone: String,
    user: &SignedIn,
    kill: impl FnOnce(),
) {
    let stop = AtomicBool::new(false);
    let traffic = keep_asking(instances, live.clone(), ended.clone(), &stop);
    let failover = async {
        assert_eq!(instances[1].logout(Some(&gone)).await.status(), 204);
        ended.push(gone);
        live.push(instances[0].login(&user.email, &user.password).await);
        let killed = Instant::now();
        kill();
        let healed = until_healed(instances, &live, &ended, killed).await;
        stop.store(true, Ordering::Release);
        healed
    };
    let (healed, asked) = futures::join!(failover, traffic);
    println!("traffic during the failover: {asked:?}");
    assert!(healed < HEAL_WITHIN);
}

/// Sessions for `count` users made alternately through the instances, and one ended session.
async fn sessions_through(instances: &[&Gateway], count: usize) -> (Vec<String>, Vec<String>) {
    let mut tokens = Vec::new();
    for i in 0..count {
        let instance = instances[i % instances.len()];
        let email = unique_email();
        let password = strong_password();
        instance.register(&email, &password).await;
        tokens.push(instance.login(&email, &password).await);
    }
    let ended = instances[0].signed_in_user().await.token;
    assert_eq!(instances[0].logout(Some(&ended)).await.status(), 204);
    (tokens, vec![ended])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_during_traffic_fails_over_without_a_wrong_answer() {
    if !production_only() {
        return;
    }
    let mut cluster = RedisCluster::start().await;
    let first = GatewayOptions::new()
        .max_registrations_per_ip(1000)
        .unmetered()
        .redis_cluster(&cluster)
        .start()
        .await;
    let second = GatewayOptions::new()
        .max_registrations_per_ip(1000)
        .unmetered()
        .sharing_stores_with(&first)
        .redis_cluster(&cluster)
        .start()
        .await;
    let instances = [&first, &second];
    let (tokens, ended) = sessions_through(&instances, 12).await;
    // The master that dies holds the slot of a user who signs out and in again right before.
    let late = first.signed_in_user().await;
    let tag = authgate::session::SlotTag::of_user(late.id.parse().unwrap());
    let victim = cluster.master_of(&format!("{{{}}}", tag.as_str())).await;
    until_healed(&instances, &tokens, &ended, Instant::now()).await;
    cluster.replicas_caught_up().await;
    let gone = late.token.clone();
    fail_over(&instances, tokens, ended, gone, &late, || {
        cluster.nodes[victim].kill()
    })
    .await;
    // New logins and revocations work on the healed cluster.
    let (more, _) = sessions_through(&instances, 2).await;
    for token in &more {
        assert_eq!(status_of(&second, token).await, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinels_the_gateway_follows_a_promotion_without_a_restart() {
    if !production_only() {
        return;
    }
    let mut group = RedisSentinels::start().await;
    let first = GatewayOptions::new()
        .max_registrations_per_ip(1000)
        .unmetered()
        .redis_sentinels(&group)
        .start()
        .await;
    let second = GatewayOptions::new()
        .max_registrations_per_ip(1000)
        .unmetered()
        .sharing_stores_with(&first)
        .redis_sentinels(&group)
        .start()
        .await;
    let instances = [&first, &second];
    let (mut tokens, ended) = sessions_through(&instances, 6).await;
    // A revocation through one instance is refused by the other.
    let user = first.signed_in_user().await;
    assert_eq!(second.logout(Some(&user.token)).await.status(), 204);
    assert_eq!(status_of(&first, &user.token).await, 401);

    group.replica_caught_up().await;
    let unacknowledged_before = unacknowledged(&first).await;
    let gone = tokens.remove(0);
    let old_master = group.master.port;
    fail_over(&instances, tokens, ended, gone, &user, || {
        group.master.kill()
    })
    .await;
    assert_eq!(
        group.current_master_port().await,
        Some(group.replica.port),
        "the sentinels promoted the replica (old master {old_master})"
    );
    // The promoted master has no replica left: logins still work, and are counted as changes
    // no replica acknowledged.
    let (more, _) = sessions_through(&instances, 2).await;
    for token in &more {
        assert_eq!(status_of(&first, token).await, 200);
    }
    assert!(unacknowledged(&first).await > unacknowledged_before);
}

/// `authgate_redis_replica_unacknowledged_total` of an instance.
async fn unacknowledged(gateway: &Gateway) -> f64 {
    let metrics = gateway.metrics().await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("authgate_redis_replica_unacknowledged_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no authgate_redis_replica_unacknowledged_total in:\n{metrics}"))
}
