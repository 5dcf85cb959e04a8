//! Graceful binary upgrade (`authgate run --upgrade`, then SIGQUIT to the old process): the
//! listening sockets move to the new process and no request fails, under load.

mod common;

use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// The new process, killed when the test ends.
struct Successor(Child);

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_binary_upgrade_under_load_fails_no_request() {
    let Some((gateway, socket)) = upgradable_gateway().await else {
        return;
    };
    let user = gateway.signed_in_user().await;

    let load = Load::start(&gateway, &user.token).await;

    // The new binary starts and waits on the upgrade socket; SIGQUIT makes the old one hand
    // its listeners over, stop accepting and drain.
    let log = std::fs::File::create(gateway.dir().join("successor.log")).unwrap();
    let successor = Successor(
        gateway_command()
            .arg("run")
            .arg("--upgrade")
            .arg("--config")
            .arg(&gateway.config_path)
            .current_dir(gateway.dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the new process"),
    );
    // The new process listens on the upgrade socket once it is ready to take over.
    eventually(
        Duration::from_secs(30),
        "the new process's upgrade socket",
        || {
            let ready = socket.exists();
            async move { ready.then_some(()) }
        },
    )
    .await;
    gateway.signal("QUIT");
    // The old process exits once drained (CLOSE_TIMEOUT of 5 s, then the grace period).
    wait_until_gone(&gateway, gateway.pid(), "SIGQUIT").await;
    let (total, failures, sent_at_handover) = load.finish_after_more(50).await;
    let successor_log =
        std::fs::read_to_string(gateway.dir().join("successor.log")).unwrap_or_default();
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed during the upgrade: {:?}\nold log:\n{}\nnew log:\n{successor_log}",
        failures.len(),
        &failures[..failures.len().min(10)],
        gateway.logs()
    );
    eprintln!("{total} requests, none failed; {sent_at_handover} before the old process exited");
    // The new process serves the session made before the upgrade.
    assert_eq!(
        gateway
            .get("/private/after", Some(&user.token))
            .await
            .status(),
        200
    );
    drop(successor);
    let _ = std::fs::remove_file(&socket);
}

/// A production-pair gateway whose upgrade socket is in its private working directory, and
/// that socket's path; `None` (with the reason printed) on the embedded pair.
async fn upgradable_gateway() -> Option<(Arc<Gateway>, std::path::PathBuf)> {
    if !require_backend(
        Backend::Production,
        "an upgrade hands live sessions over through Redis; the embedded mode keeps them in \
         the old process's memory (authgate refuses --upgrade there)",
    ) {
        return None;
    }
    let gateway = Gateway::start_with(
        GatewayOptions::new()
            .server_setting("upgrade_sock = \"upgrade.sock\"")
            .unmetered(),
    )
    .await;
    let socket = gateway.dir().join("upgrade.sock");
    Some((Arc::new(gateway), socket))
}

/// Waits (up to 40 s) for the old process `pid` to exit after `signal`.
async fn wait_until_gone(gateway: &Gateway, pid: u32, signal: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while process_alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the old process did not hand over and exit after {signal}:\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn process_alive(pid: u32) -> bool {
    // /proc/<pid> of a zombie still exists: read its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Four keep-alive clients: two on a public route, two on a protected one with a session made
/// before the upgrade. Every answer must be a 200.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    clients: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    async fn start(gateway: &Arc<Gateway>, token: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let mut clients = Vec::new();
        for client in 0..4 {
            let (gateway, stop, sent) = (gateway.clone(), stop.clone(), sent.clone());
            let token = token.to_string();
            clients.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let outcome = if client % 2 == 0 {
                        gateway.client.get(gateway.url("/public/load")).send().await
                    } else {
                        gateway
                            .client
                            .get(gateway.url("/private/load"))
                            .header("cookie", cookie_header(&token))
                            .send()
                            .await
                    };
                    match outcome {
                        Ok(response) if response.status() == 200 => {}
                        Ok(response) => failures.push(format!("status {}", response.status())),
                        Err(error) => failures.push(format!("{error:#}")),
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                failures
            }));
        }
        let load = Load {
            stop,
            sent,
            clients,
        };
        load.wait_for_more(0, 50).await;
        load
    }

    async fn wait_for_more(&self, from: usize, more: usize) {
        eventually(Duration::from_secs(10), "more requests answered", || {
            let sent = self.sent.load(Ordering::Relaxed);
            async move { (sent >= from + more).then_some(()) }
        })
        .await;
    }

    /// Lets `more` requests go through, stops; (total, failures, requests before this call).
    async fn finish_after_more(self, more: usize) -> (usize, Vec<String>, usize) {
        let before = self.sent.load(Ordering::Relaxed);
        self.wait_for_more(before, more).await;
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for client in self.clients {
            failures.extend(client.await.expect("client task"));
        }
        (self.sent.load(Ordering::Relaxed), failures, before)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigusr2_upgrades_in_place_under_load() {
    let Some((gateway, socket)) = upgradable_gateway().await else {
        return;
    };
    let user = gateway.signed_in_user().await;
    let load = Load::start(&gateway, &user.token).await;
    let old_pid = gateway.pid();
    gateway.signal("USR2");
    wait_until_gone(&gateway, old_pid, "SIGUSR2").await;
    // The new process writes to the same log; its pid is on its start line.
    let new_pid = json_log_lines(&gateway.logs())
        .iter()
        .filter(|line| line["message"] == "authgate starting")
        .filter_map(|line| line["pid"].as_u64())
        .find(|pid| *pid != u64::from(old_pid))
        .unwrap_or_else(|| panic!("no start line of a new process:\n{}", gateway.logs()));
    let (total, failures, _) = load.finish_after_more(50).await;
    assert_eq!(
        gateway
            .get("/private/after", Some(&user.token))
            .await
            .status(),
        200
    );
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &new_pid.to_string()])
        .status();
    let _ = std::fs::remove_file(&socket);
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed during the upgrade: {:?}\nlog:\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        gateway.logs()
    );
    eprintln!("{total} requests through a SIGUSR2 upgrade, none failed");
}

#[tokio::test]
async fn an_upgrade_socket_in_a_world_writable_directory_is_refused() {
    // Whoever creates the socket there first would receive the listening sockets.
    let socket = std::env::temp_dir().join(format!("authgate-upg-{}.sock", random_hex(6)));
    let mut gateway = Gateway::start_with(
        GatewayOptions::new().server_setting(&format!("upgrade_sock = \"{}\"", socket.display())),
    )
    .await;
    gateway.signal("USR2");
    let logs = eventually(Duration::from_secs(10), "the refusal in the log", || {
        let logs = gateway.logs();
        async move { logs.contains("writable by every user").then_some(logs) }
    })
    .await;
    assert!(
        logs.contains("upgrade failed; this process keeps serving"),
        "{logs}"
    );
    assert!(gateway
        .wait_for_exit(Duration::from_millis(500))
        .await
        .is_none());
    assert_eq!(gateway.get("/public/x", None).await.status(), 200);
    assert!(!socket.exists(), "no new process took over");

    // The same for `run --upgrade`: it exits with the reason, before touching anything.
    let output = gateway_command()
        .arg("--config")
        .arg(&gateway.config_path)
        .arg("run")
        .arg("--upgrade")
        .current_dir(gateway.dir())
        .stdin(Stdio::null())
        .output()
        .expect("run authgate run --upgrade");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    // The embedded pair refuses --upgrade before looking at the socket.
    let expected = backend().pick("writable by every user", "needs the production pair");
    assert!(stderr.contains(expected), "{stderr}");
}
