//! Private Redis deployments for the tests that need more than the shared standalone server: a
//! Redis Cluster (3 masters + 3 replicas) and a Sentinel group (a master, a replica and three
//! sentinels), each made of `redis-server` processes on free ports in a temp dir, killed on
//! Drop. A missing `redis-server` / `redis-cli` is a panic that says so, never a skip.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{claim_port, free_port, random_hex};

/// How long a deployment gets to come up (cluster state ok, sentinels agreeing).
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

fn temp_dir(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("authgate-{kind}-{}", random_hex(6)));
    std::fs::create_dir_all(&dir).expect("create a temp dir for redis");
    dir
}

/// One `redis-server` process.
pub struct RedisProcess {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl RedisProcess {
    /// `redis-server` on `port` with these extra arguments (or a config file first).
    fn spawn(port: u16, dir: &std::path::Path, args: &[String]) -> Self {
        let log = std::fs::File::create(dir.join(format!("redis-{port}.log")))
            .expect("create a redis log file");
        let child = Command::new("redis-server")
            .args(args)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::from(log.try_clone().expect("clone the log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot run redis-server ({error}): install Redis (apt-get install redis-server)")
            });
        RedisProcess {
            port,
            child: Some(child),
            dir: dir.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the node dies without a word to its peers.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The tail of this node's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("redis-{}.log", self.port)))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("a redis url");
        client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|error| panic!("redis at {} unreachable: {error}", self.url()))
    }

    async fn wait_until_up(&self) {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
                    let pong: redis::RedisResult<String> =
                        redis::cmd("PING").query_async(&mut connection).await;
                    if pong.is_ok() {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not come up:\n{}",
                self.port,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Until this master's replica has acknowledged everything written to it so far (its
    /// acknowledged offset reaches the master's offset as read now). `WAIT` would not do: it
    /// only waits for the writes of the connection that sends it.
    pub async fn replica_caught_up(&self) {
        let field = |info: &str, name: &str| -> Option<i64> {
            info.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().parse().ok())
        };
        let target = field(&self.info("replication").await, "master_repl_offset:")
            .expect("master_repl_offset in INFO replication");
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let info = self.info("replication").await;
            let acked = info
                .lines()
                .filter(|line| line.starts_with("slave"))
                .filter_map(|line| {
                    line.split(',')
                        .find_map(|part| part.strip_prefix("offset="))
                        .and_then(|offset| offset.parse::<i64>().ok())
                })
                .max();
            if acked.is_some_and(|acked| acked >= target) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replica of {} did not catch up to offset {target}:\n{info}",
                self.addr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `INFO <section>` as text.
    pub async fn info(&self, section: &str) -> String {
        let mut connection = self.connection().await;
        redis::cmd("INFO")
            .arg(section)
            .query_async(&mut connection)
            .await
            .unwrap_or_default()
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that is free, and whose cluster-bus port (+10000) is free too; both are claimed,
/// so [`free_port`] hands neither out again in this test process.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000
            && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
            && claim_port(port + 10_000)
        {
            return port;
        }
    }
}

/// A Redis Cluster of 3 masters and 3 replicas, `cluster-node-timeout` 1 s so a failover
/// takes seconds.
pub struct RedisCluster {
    pub nodes: Vec<RedisProcess>,
    dir: PathBuf,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let dir = temp_dir("cluster");
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_cluster_port();
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "1000",
                // A replica whose master died may always take over (tests kill masters).
                "--cluster-replica-validity-factor",
                "0",
            ]
            .map(String::from);
            nodes.push(RedisProcess::spawn(port, &dir, &args));
        }
        for node in &nodes {
            node.wait_until_up().await;
        }
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(RedisProcess::addr))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run redis-cli ({error}): install Redis (apt-get install redis-tools)"
                )
            });
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes, dir };
        cluster.wait_until_formed().await;
        cluster
    }

    /// Seed URLs, as `storage.redis_cluster_urls` takes them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisProcess::url).collect()
    }

    /// The TOML array of the seed URLs.
    pub fn urls_toml(&self) -> String {
        toml_array(&self.urls())
    }

    /// Until every running node says `cluster_state:ok` and agrees that every slot has a
    /// master that is running.
    pub async fn wait_until_formed(&self) {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let mut formed = true;
            for node in self.nodes.iter().filter(|node| node.is_running()) {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut node.connection().await)
                    .await
                    .unwrap_or_default();
                formed &= info.contains("cluster_state:ok");
                // A master's replica has finished its first sync (so `WAIT` is answered at
                // once, not after its timeout).
                let replication = node.info("replication").await;
                if replication.contains("role:master") && self.nodes.iter().all(|n| n.is_running())
                {
                    formed &= replication.contains("connected_slaves:1")
                        && replication.contains("state=online");
                }
            }
            if formed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the redis cluster did not form in {FORM_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The running node that is master for `key`'s slot now.
    pub async fn master_of(&self, key: &str) -> usize {
        let running = self
            .nodes
            .iter()
            .position(RedisProcess::is_running)
            .expect("a running node");
        let mut connection = self.nodes[running].connection().await;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut connection)
            .await
            .expect("CLUSTER KEYSLOT");
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut connection)
            .await
            .expect("CLUSTER NODES");
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((low, high)) => {
                    low.parse::<i64>().is_ok_and(|low| low <= slot)
                        && high.parse::<i64>().is_ok_and(|high| slot <= high)
                }
                None => range.parse::<i64>() == Ok(slot),
            });
            let port = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|port| port.parse::<u16>().ok());
            if owns {
                if let Some(index) = self.nodes.iter().position(|n| Some(n.port) == port) {
                    return index;
                }
            }
        }
        panic!("no master owns slot {slot} of {key:?}:\n{nodes}");
    }

    /// Waits until every master's replica has acknowledged its writes.
    pub async fn replicas_caught_up(&self) {
        for node in self.nodes.iter().filter(|node| node.is_running()) {
            if node.info("replication").await.contains("role:master") {
                node.replica_caught_up().await;
            }
        }
    }

    /// Every key under `prefix` on every running master, with its PTTL.
    pub async fn keys_with_ttl(&self, prefix: &str) -> Vec<(String, i64)> {
        let mut found = Vec::new();
        for node in self.nodes.iter().filter(|node| node.is_running()) {
            if !node.info("replication").await.contains("role:master") {
                continue;
            }
            let mut connection = node.connection().await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}*"))
                .query_async(&mut connection)
                .await
                .expect("KEYS");
            for key in keys {
                let ttl: i64 = redis::cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await
                    .expect("PTTL");
                found.push((key, ttl));
            }
        }
        found
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Sentinel group: one master, one replica, three sentinels watching `master_name`, with
/// `down-after-milliseconds` 1 s.
pub struct RedisSentinels {
    pub master: RedisProcess,
    pub replica: RedisProcess,
    pub sentinels: Vec<RedisProcess>,
    pub master_name: String,
    dir: PathBuf,
}

impl RedisSentinels {
    pub async fn start() -> Self {
        let dir = temp_dir("sentinel");
        let master_name = "authgate-test".to_string();
        let master = RedisProcess::spawn(free_port(), &dir, &[]);
        master.wait_until_up().await;
        let replica_of = [
            "--replicaof".to_string(),
            "127.0.0.1".to_string(),
            master.port.to_string(),
        ];
        let replica = RedisProcess::spawn(free_port(), &dir, &replica_of);
        replica.wait_until_up().await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let config = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &config,
                format!(
                    "sentinel resolve-hostnames no\n\
                     sentinel monitor {master_name} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {master_name} 1000\n\
                     sentinel failover-timeout {master_name} 10000\n\
                     sentinel parallel-syncs {master_name} 1\n",
                    master.port
                ),
            )
            .expect("write a sentinel config");
            let args = [config.display().to_string(), "--sentinel".to_string()];
            sentinels.push(RedisProcess::spawn(port, &dir, &args));
        }
        for sentinel in &sentinels {
            sentinel.wait_until_up().await;
        }
        let group = RedisSentinels {
            master,
            replica,
            sentinels,
            master_name,
            dir,
        };
        group.wait_until_watching().await;
        group
    }

    pub fn urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisProcess::url).collect()
    }

    pub fn urls_toml(&self) -> String {
        toml_array(&self.urls())
    }

    /// Until the replica is in sync and every sentinel sees the replica and two other
    /// sentinels (so a quorum can fail the master over).
    async fn wait_until_watching(&self) {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let replication = self.master.info("replication").await;
            let mut ready =
                replication.contains("connected_slaves:1") && replication.contains("state=online");
            for sentinel in &self.sentinels {
                let mut connection = sentinel.connection().await;
                let status: redis::RedisResult<Vec<std::collections::HashMap<String, String>>> =
                    redis::cmd("SENTINEL")
                        .arg("MASTERS")
                        .query_async(&mut connection)
                        .await;
                ready &= status.is_ok_and(|masters| {
                    masters.iter().any(|master| {
                        master.get("num-slaves").map(String::as_str) == Some("1")
                            && master.get("num-other-sentinels").map(String::as_str) == Some("2")
                    })
                });
            }
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not settle in {FORM_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the replica has acknowledged the master's writes.
    pub async fn replica_caught_up(&self) {
        self.master.replica_caught_up().await;
    }

    /// The port of the master the sentinels name now.
    pub async fn current_master_port(&self) -> Option<u16> {
        for sentinel in &self.sentinels {
            let mut connection = sentinel.connection().await;
            let address: redis::RedisResult<(String, String)> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&self.master_name)
                .query_async(&mut connection)
                .await;
            if let Ok((_, port)) = address {
                return port.parse().ok();
            }
        }
        None
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        for sentinel in &mut self.sentinels {
            sentinel.kill();
        }
        self.master.kill();
        self.replica.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn toml_array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("{item:?}")).collect();
    format!("[{}]", quoted.join(", "))
}
