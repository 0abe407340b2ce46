//! Thread-per-core workers (`server.runtime = "thread-per-core"`): connections are dealt out to
//! single-threaded runtimes on their own threads, which really serve them, drain on shutdown and
//! stop cleanly; the binary starts `workers - 1` such threads (named `ag-worker-N`).
mod support;
use support::*;

use std::time::{Duration, Instant};

use authgate::server::WorkerRuntimes;

/// `(name, voluntary context switches)` of every thread of process `pid` named like `prefix*`.
/// A parked runtime thread sleeps in epoll_wait: the count only grows when it gets work.
fn worker_threads(pid: &str, prefix: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let Ok(name) = std::fs::read_to_string(t.join("comm")) else {
            continue;
        };
        let name = name.trim().to_string();
        if !name.starts_with(prefix) {
            continue;
        }
        let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.push((name, switches));
    }
    out.sort();
    out
}

/// A client whose every request opens a new connection (so round robin reaches every worker).
fn one_shot_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

#[tokio::test]
async fn workers_serve_connections_keep_them_alive_and_drain_on_shutdown() {
    init();
    let up = Upstream::start().await;
    let workers = WorkerRuntimes::spawn(2).unwrap();
    let gw = TestGateway::start_with_workers(&public_route(&up.url()), workers.handles()).await;
    let pid = std::process::id().to_string();
    let before = worker_threads(&pid, "ag-worker");
    assert_eq!(before.len(), 2, "two worker threads: {before:?}");

    // Six keep-alive connections (one client each), five requests each.
    for i in 0..6 {
        let c = reqwest::Client::new();
        for j in 0..5 {
            let r = c.get(gw.url(&format!("/ka/{i}/{j}"))).send().await.unwrap();
            assert_eq!(r.status(), 200, "connection {i} request {j}");
            assert_eq!(up.last().uri, format!("/ka/{i}/{j}"));
        }
    }
    assert_eq!(up.count(), 30);
    let after = worker_threads(&pid, "ag-worker");
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        assert!(
            a > b,
            "{name} never woke up: connections were not dealt to it"
        );
    }

    // Three slow requests on three new connections (one per runtime) in flight at shutdown.
    let c = one_shot_client();
    let slow: Vec<_> = (0..3)
        .map(|_| tokio::spawn(c.get(gw.url("/slow?ms=800")).send()))
        .collect();
    let start = Instant::now();
    while up.count() < 33 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "slow requests never reached the upstream"
        );
        tokio::task::yield_now().await;
    }
    let shutdown = tokio::spawn(gw.shutdown());
    for s in slow {
        let r = tokio::time::timeout(Duration::from_secs(10), s)
            .await
            .expect("slow request hung")
            .unwrap()
            .expect("in-flight request cut off by shutdown");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "slow done");
    }
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown did not finish")
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || workers.stop()),
    )
    .await
    .expect("worker threads did not stop")
    .unwrap();
    // A joined thread can stay listed in /proc for a moment after it finished (the kernel
    // clears its tid before it releases the task): wait for the list, bounded.
    let start = Instant::now();
    while !worker_threads(&pid, "ag-worker").is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "worker threads still running after stop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn binary_with_three_workers_runs_two_worker_threads_and_exits_zero() {
    init();
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gateway.test\"\nworkers = 3\nruntime = \"thread-per-core\"\n\n{}",
            public_route(&up.url())
        ),
    )
    .unwrap();
    let (child, addr, stderr) = spawn_binary(&path);
    let pid = child.id().to_string();
    let before = worker_threads(&pid, "ag-worker");
    let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ag-worker-1", "ag-worker-2"]);

    let c = one_shot_client();
    for i in 0..9 {
        let r = c.get(format!("http://{addr}/n/{i}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
    }
    let after = worker_threads(&pid, "ag-worker");
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        assert!(a > b, "{name} never served a connection");
    }

    let status = terminate_and_wait(child, stderr).await;
    assert_eq!(status.code(), Some(0), "graceful exit");
}
