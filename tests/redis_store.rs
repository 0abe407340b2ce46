//! The Redis backend over real sockets: a real `redis-server` per test, several gateways on it.
mod support;
use support::redis::{store_section, RedisServer};
use support::*;

use std::time::{Duration, Instant};

/// Users alice and bob, `/` public and `/app` authenticated to `up`, live state on `r`.
fn config(up: &Upstream, r: &RedisServer, extra: &str) -> String {
    format!(
        "{}\n{extra}\n{}{}[[routes]]\npath_prefix = \"/\"\nupstream = \"{u}\"\naccess = \"public\"\n\n\
         [[routes]]\npath_prefix = \"/app\"\nupstream = \"{u}\"\naccess = \"authenticated\"\n\n",
        store_section(r),
        user_toml("alice", &["admins"]),
        user_toml("bob", &["staff"]),
        u = up.url()
    )
}

async fn status(gw: &TestGateway, path: &str, cookie: &str) -> u16 {
    client()
        .get(gw.url(path))
        .header("cookie", cookie)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn ready(gw: &TestGateway) -> u16 {
    client()
        .get(gw.url("/.auth/ready"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits (bounded) until the gateway says its store is usable.
async fn until_ready(gw: &TestGateway) {
    let start = Instant::now();
    while ready(gw).await != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "store never became ready"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts that `/app/x` answers 200 with `cookie`. A 503 is the store's defined transient
/// answer (the heartbeat late on a loaded machine, a read timing out): it is retried for up to
/// 5 s; anything else fails at once.
async fn expect_ok(gw: &TestGateway, cookie: &str) {
    let start = Instant::now();
    loop {
        match status(gw, "/app/x", cookie).await {
            200 => return,
            503 if start.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            s => panic!("{s} instead of 200 after {:?}", start.elapsed()),
        }
    }
}

/// How long until `path` answers `want` with `cookie` (asserting it does within `bound`).
async fn within(gw: &TestGateway, cookie: &str, want: u16, bound: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = status(gw, "/app/x", cookie).await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "still {got} instead of {want} after {:?}",
            start.elapsed()
        );
    }
}

/// Two gateways on one configuration (one store), both ready.
async fn two_gateways(cfg: &str) -> (TestGateway, TestGateway) {
    let (a, b) = (TestGateway::start(cfg).await, TestGateway::start(cfg).await);
    until_ready(&a).await;
    until_ready(&b).await;
    (a, b)
}

const PROPAGATION_BOUND: Duration = Duration::from_millis(500);

#[tokio::test]
async fn sessions_are_shared_by_three_gateways_and_logout_anywhere_is_honoured_everywhere() {
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let cfg = config(&up, &r, "");
    let (a, b, c) = (
        TestGateway::start(&cfg).await,
        TestGateway::start(&cfg).await,
        TestGateway::start(&cfg).await,
    );
    for gw in [&a, &b, &c] {
        until_ready(gw).await;
    }
    let alice = login_json(&a, "alice", PASSWORD).await;
    for gw in [&a, &b, &c] {
        expect_ok(gw, &alice).await;
    }
    assert_eq!(up.last().one("x-forwarded-user").as_deref(), Some("alice"));
    logout(&b, &alice, false).await;
    for gw in [&a, &b, &c] {
        within(gw, &alice, 302, PROPAGATION_BOUND).await;
    }
    // Sign-out-everywhere on C ends sessions made on A and on B; bob keeps his.
    let one = login_json(&a, "alice", PASSWORD).await;
    let two = login_json(&b, "alice", PASSWORD).await;
    let bob = login_json(&a, "bob", PASSWORD).await;
    for gw in [&a, &b, &c] {
        expect_ok(gw, &one).await;
        expect_ok(gw, &two).await;
    }
    logout(&c, &one, true).await;
    for gw in [&a, &b, &c] {
        within(gw, &one, 302, PROPAGATION_BOUND).await;
        within(gw, &two, 302, PROPAGATION_BOUND).await;
        expect_ok(gw, &bob).await;
    }
    // No session id is stored in Redis, only its hash.
    let keys = r.command(&["KEYS", "test:*"]);
    let bob_id = bob.split_once('=').unwrap().1;
    assert!(!keys.contains(bob_id), "a session id is in Redis: {keys}");
    assert!(keys.contains("test:s:"), "{keys}");
    for gw in [a, b, c] {
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn a_restarted_gateway_keeps_every_session() {
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let cfg = config(&up, &r, "");
    let gw = TestGateway::start(&cfg).await;
    until_ready(&gw).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    expect_ok(&gw, &alice).await;
    gw.shutdown().await;
    let gw = TestGateway::start(&cfg).await;
    until_ready(&gw).await;
    expect_ok(&gw, &alice).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn jwt_revocations_and_sign_out_everywhere_are_shared() {
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let jwt = jwt_section(keys.path());
    let cfg = config(&up, &r, &jwt);
    let (a, b) = two_gateways(&cfg).await;
    let t1 = login_json(&a, "alice", PASSWORD).await;
    expect_ok(&b, &t1).await;
    logout(&b, &t1, false).await;
    within(&a, &t1, 302, PROPAGATION_BOUND).await;
    let t2 = login_json(&a, "alice", PASSWORD).await;
    let t3 = login_json(&b, "alice", PASSWORD).await;
    logout(&a, &t2, true).await;
    within(&b, &t3, 302, PROPAGATION_BOUND).await;
    // A restart reloads the revocations: the revoked token stays revoked.
    a.shutdown().await;
    let a = TestGateway::start(&cfg).await;
    until_ready(&a).await;
    assert_eq!(status(&a, "/app/x", &t1).await, 302);
    assert_eq!(status(&a, "/app/x", &t3).await, 302);
    let t4 = login_json(&a, "alice", PASSWORD).await;
    expect_ok(&b, &t4).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn login_failures_spread_over_three_gateways_still_lock() {
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let cfg = config(&up, &r, "");
    let gws = [
        TestGateway::start(&cfg).await,
        TestGateway::start(&cfg).await,
        TestGateway::start(&cfg).await,
    ];
    for gw in &gws {
        until_ready(gw).await;
    }
    let attempt = |gw: &TestGateway, pw: &str| {
        client()
            .post(gw.url("/.auth/login"))
            .json(&serde_json::json!({"username": "alice", "password": pw}))
            .send()
    };
    for i in 0..5 {
        let r = attempt(&gws[i % 3], "wrong").await.unwrap();
        assert_eq!(r.status(), 401, "attempt {i}");
    }
    // The counts are written behind the hashing thread; give the last one its round trip.
    let start = Instant::now();
    loop {
        let r = attempt(&gws[2], PASSWORD).await.unwrap();
        if r.status() == 429 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "five failures over three instances did not lock (got {})",
            r.status()
        );
    }
    for gw in gws {
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn redis_killed_means_503_never_a_login_redirect_and_recovery_is_automatic() {
    init();
    let mut r = RedisServer::start_persistent();
    let up = Upstream::start().await;
    let cfg = config(&up, &r, "");
    let gw = TestGateway::start(&cfg).await;
    let other = TestGateway::start(&cfg).await;
    until_ready(&gw).await;
    until_ready(&other).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    expect_ok(&gw, &alice).await;
    r.kill();
    // Known session (in L1) and unknown one (never seen here): both 503 with Retry-After once
    // the store cannot vouch, never 302 to the login page, never a cleared cookie.
    let start = Instant::now();
    for gw in [&gw, &other] {
        loop {
            let resp = client()
                .get(gw.url("/app/x"))
                .header("cookie", &alice)
                .header("accept", "text/html")
                .send()
                .await
                .unwrap();
            let s = resp.status().as_u16();
            assert!(s == 200 || s == 503, "got {s} during the outage");
            if s == 503 {
                assert!(resp.headers().contains_key("retry-after"));
                assert!(resp.headers().get("set-cookie").is_none());
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "L1 trusted too long"
            );
        }
    }
    assert_eq!(ready(&gw).await, 503);
    let login = client()
        .post(gw.url("/.auth/login"))
        .json(&serde_json::json!({"username": "bob", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 503, "a login during the outage");
    r.restart();
    until_ready(&gw).await;
    until_ready(&other).await;
    expect_ok(&gw, &alice).await;
    expect_ok(&other, &alice).await;
    gw.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn stopped_redis_gets_answers_within_a_bound_never_a_hang() {
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let cfg = config(&up, &r, "");
    let gw = TestGateway::start(&cfg).await;
    until_ready(&gw).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    let bob = login_json(&gw, "bob", PASSWORD).await;
    expect_ok(&gw, &alice).await;
    r.signal("STOP");
    let fresh = "authgate=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let start = Instant::now();
    let mut saw_503 = false;
    // The latest start (since SIGSTOP) of a request that L1 still answered with 200.
    let mut last_trusted = Duration::ZERO;
    // First a session L1 holds, alone, request after request: when does L1 stop vouching?
    let mut first_refused = None;
    while first_refused.is_none() && start.elapsed() < Duration::from_secs(1) {
        let sent = start.elapsed();
        match status(&gw, "/app/x", &alice).await {
            200 => last_trusted = sent,
            503 => first_refused = Some(sent),
            s => panic!("got {s} while Redis was stopped"),
        }
    }
    let first_refused = first_refused.expect("L1 still trusted 1 s after Redis stopped");
    while start.elapsed() < Duration::from_millis(1500) {
        for c in [&alice, &bob, &fresh.to_string()] {
            let t = Instant::now();
            let sent = start.elapsed();
            let s = status(&gw, "/app/x", c).await;
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "a request hung for {:?}",
                t.elapsed()
            );
            assert!(s == 200 || s == 503, "got {s} while Redis was stopped");
            saw_503 |= s == 503;
            if s == 200 {
                last_trusted = last_trusted.max(sent);
            }
        }
    }
    assert!(
        saw_503,
        "L1 was trusted although the heartbeat went unanswered"
    );
    // The last answered PING came at most one heartbeat (30 ms) before SIGSTOP, and L1 is
    // trusted for 100 ms after it: a request sent later than that (plus a margin for a loaded
    // machine; the decision is made after the request is sent, never before) must not get 200.
    assert!(
        last_trusted <= Duration::from_millis(300),
        "L1 answered a request sent {last_trusted:?} after Redis stopped (bound: 130 ms)"
    );
    eprintln!(
        "after SIGSTOP: L1 answered requests sent up to {last_trusted:?}, first 503 for one sent at {first_refused:?}"
    );
    r.signal("CONT");
    until_ready(&gw).await;
    expect_ok(&gw, &alice).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn logout_propagation_over_many_logouts_stays_within_the_bound() {
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let cfg = config(&up, &r, "");
    let (a, b) = two_gateways(&cfg).await;
    let mut took = Vec::new();
    for _ in 0..1000 {
        let c = login_json(&a, "alice", PASSWORD).await;
        expect_ok(&b, &c).await;
        logout(&a, &c, false).await;
        took.push(within(&b, &c, 302, PROPAGATION_BOUND).await);
    }
    took.sort();
    eprintln!(
        "logout propagation over {} logouts: p50 {:?}, p99 {:?}, max {:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() * 99 / 100],
        took[took.len() - 1]
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Total calls of every command Redis has served so far (from `INFO commandstats`), minus the
/// heartbeat's PINGs.
fn redis_calls(r: &RedisServer) -> u64 {
    r.command(&["INFO", "commandstats"])
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_ping:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test]
async fn repeated_requests_are_answered_from_l1_without_redis_round_trips() {
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let cfg = config(&up, &r, "");
    let (a, b) = two_gateways(&cfg).await;
    let alice = login_json(&a, "alice", PASSWORD).await;
    // The first request on B reads the session once.
    expect_ok(&b, &alice).await;
    let before = redis_calls(&r);
    for _ in 0..200 {
        expect_ok(&b, &alice).await;
        expect_ok(&a, &alice).await;
    }
    let used = redis_calls(&r) - before;
    // `INFO` itself counts once; last-use touches are at most one per idle_timeout / 10; a
    // heartbeat late on a loaded machine costs a read or two. Without L1 it would be 400.
    assert!(used <= 20, "{used} Redis commands for 400 requests");
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn check_config_names_the_key_of_each_store_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.toml");
    std::fs::write(dir.path().join("not-pem.txt"), "not a certificate\n").unwrap();
    for (store, key) in [
        ("backend = \"redis\"", "store.url"),
        ("backend = \"redis\"\nurl = \"http://x:1\"", "store.url"),
        ("backend = \"redis\"\nurl = \"redis://u:pw@127.0.0.1:1/0\"", "store.url"),
        (
            "backend = \"redis\"\nurl = \"rediss://127.0.0.1:1/0\"\nca_file = \"missing.pem\"",
            "store.ca_file",
        ),
        (
            "backend = \"redis\"\nurl = \"rediss://127.0.0.1:1/0\"\nca_file = \"not-pem.txt\"",
            "store.ca_file",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://127.0.0.1:1/0\"\nca_file = \"not-pem.txt\"",
            "store.ca_file",
        ),
        (
            "backend = \"redis\"\nurl = \"rediss://127.0.0.1:1/0\"\nclient_cert_file = \"not-pem.txt\"",
            "store.client_key_file",
        ),
        (
            "backend = \"redis\"\nurl = \"rediss://127.0.0.1:1/0\"\nclient_cert_file = \"not-pem.txt\"\nclient_key_file = \"not-pem.txt\"",
            "store.client_cert_file",
        ),
        ("ca_file = \"not-pem.txt\"", "store.ca_file"),
        ("backend = \"redis\"\nurl = \"redis://127.0.0.1:1/x\"", "store.url"),
        (
            "backend = \"redis\"\nurl = \"redis://127.0.0.1:1/0\"\npassword_file = \"missing\"",
            "store.password_file",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://127.0.0.1:1/0\"\npassword_env = \"AUTHGATE_TEST_UNSET_VAR\"",
            "store.password_env",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://127.0.0.1:1/0\"\nkey_prefix = \"a b\"",
            "store.key_prefix",
        ),
        ("backend = \"memcached\"", "store.backend"),
        ("url = \"redis://127.0.0.1:1/0\"", "store.url"),
        ("bogus = 1", "store.bogus"),
    ] {
        std::fs::write(
            &p,
            format!("[store]\n{store}\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"builtin:whoami\"\naccess = \"public\"\n"),
        )
        .unwrap();
        let e = authgate::Config::load(&p).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains("g.toml"), "{store:?}: {e}");
    }
}

#[tokio::test]
async fn three_gateway_processes_share_logins_and_logouts() {
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gateway.test\"\n\n{}",
            config(&up, &r, "")
        ),
    )
    .unwrap();
    let mut procs = Vec::new();
    for _ in 0..3 {
        let (child, addr, stderr) = spawn_binary(&path);
        // Drain its log so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::BufReader::new(stderr), &mut std::io::sink());
        });
        procs.push((child, addr));
    }
    let url = |i: usize, p: &str| format!("http://{}{p}", procs[i].1);
    let get = |u: String, cookie: String| async move {
        client()
            .get(u)
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    for i in 0..3 {
        let start = Instant::now();
        while client()
            .get(url(i, "/.auth/ready"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
            != 200
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "process {i} not ready"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let login = client()
        .post(url(0, "/.auth/login"))
        .json(&serde_json::json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = set_cookie_pair(&login).unwrap();
    for i in 0..3 {
        assert_eq!(
            get(url(i, "/app/x"), cookie.clone()).await,
            200,
            "process {i}"
        );
    }
    let out = client()
        .post(url(1, "/.auth/logout"))
        .header("cookie", &cookie)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    for i in [0, 2] {
        let start = Instant::now();
        while get(url(i, "/app/x"), cookie.clone()).await != 401 {
            assert!(
                start.elapsed() < PROPAGATION_BOUND,
                "process {i} still accepts it"
            );
        }
    }
    for (child, _) in procs {
        drop(child); // killed
    }
}

#[tokio::test]
async fn kill_9_of_redis_under_load_gives_only_200_or_503_and_recovers() {
    init();
    let mut r = RedisServer::start_persistent();
    let up = Upstream::start().await;
    let cfg = config(&up, &r, "");
    let gw = TestGateway::start(&cfg).await;
    until_ready(&gw).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    let url = gw.url("/app/x");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(
        std::collections::BTreeMap::<u16, u64>::new(),
    ));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, cookie, stop, seen) = (url.clone(), alice.clone(), stop.clone(), seen.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let s = c
                    .get(&url)
                    .header("cookie", &cookie)
                    .header("accept", "text/html")
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                assert!(
                    t.elapsed() < Duration::from_secs(2),
                    "a request took {:?}",
                    t.elapsed()
                );
                *seen.lock().unwrap().entry(s).or_default() += 1;
            }
        }));
    }
    let count = |s: u16| seen.lock().unwrap().get(&s).copied().unwrap_or(0);
    let wait_for = |s: u16, after: u64| {
        let count = &count;
        async move {
            let start = Instant::now();
            while count(s) <= after {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no {s} within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_for(200, 10).await;
    r.kill();
    wait_for(503, 0).await;
    r.restart();
    let ok_before = count(200);
    wait_for(200, ok_before + 10).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.keys().all(|s| *s == 200 || *s == 503),
        "statuses during the outage: {seen:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn redis_password_from_a_file_works_and_a_wrong_one_is_503_not_a_logout() {
    init();
    let r = RedisServer::start_with(&["--requirepass", "s3cret-redis"]);
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let bad = dir.path().join("bad");
    std::fs::write(&good, "s3cret-redis\n").unwrap();
    std::fs::write(&bad, "wrong\n").unwrap();
    let with_pw = |file: &std::path::Path| {
        config(&up, &r, "").replace(
            "key_prefix = \"test:\"\n",
            &format!(
                "key_prefix = \"test:\"\npassword_file = {:?}\n",
                file.to_str().unwrap()
            ),
        )
    };
    let gw = TestGateway::start(&with_pw(&good)).await;
    until_ready(&gw).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    expect_ok(&gw, &alice).await;
    let wrong = TestGateway::start(&with_pw(&bad)).await;
    assert_eq!(ready(&wrong).await, 503);
    assert_eq!(
        status(&wrong, "/app/x", &alice).await,
        503,
        "wrong password must not look like a logout"
    );
    gw.shutdown().await;
    wrong.shutdown().await;
}

#[tokio::test]
async fn an_undecodable_session_record_reads_as_absent() {
    use base64::Engine as _;
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let cfg = config(&up, &r, "");
    let gw = TestGateway::start(&cfg).await;
    until_ready(&gw).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(alice.split_once('=').unwrap().1)
        .unwrap();
    let mut h = support::sha2_lite::Sha256Hex::new();
    h.update(&id);
    let key = format!("test:s:{}", h.finish());
    assert!(
        r.command(&["EXISTS", &key]).contains(":1"),
        "the record is under the id's SHA-256"
    );
    assert!(r
        .command(&["SET", &key, "not\na\nrecord\nat all"])
        .contains("OK"));
    // The overwrite invalidated L1; the garbage now read back is no session (302), not a 5xx.
    let start = Instant::now();
    while status(&gw, "/app/x", &alice).await != 302 {
        assert!(
            start.elapsed() < PROPAGATION_BOUND,
            "garbage record still accepted"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_tunnel_ends_when_its_session_is_logged_out_on_another_instance() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let cfg = config(&up, &r, "").replace("path_prefix = \"/app\"", "path_prefix = \"/ws\"");
    let (a, b) = two_gateways(&cfg).await;
    for all in [false, true] {
        let cookie = login_json(&a, "alice", PASSWORD).await;
        let mut req = format!("ws://{}/ws", a.addr).into_client_request().unwrap();
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        let tcp = tokio::net::TcpStream::connect(a.addr).await.unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        assert_eq!(resp.status(), 101);
        ws.send(Message::Text("hi".into())).await.unwrap();
        assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
        logout(&b, &cookie, all).await;
        let start = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(8), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "tunnel open 8 s after a logout elsewhere (all = {all})"
        );
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_revocation_that_cannot_be_read_is_recovered_by_a_resync() {
    use std::io::Write;
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let jwt = jwt_section(keys.path());
    let gw = TestGateway::start(&config(&up, &r, &jwt)).await;
    until_ready(&gw).await;
    let token = login_json(&gw, "alice", PASSWORD).await;
    expect_ok(&gw, &token).await;
    // A revocation key changes, and Redis then stalls for 1.5 s: the gateway cannot read it.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", r.port)).unwrap();
    s.write_all(
        b"*5\r\n$3\r\nSET\r\n$10\r\ntest:r:j:x\r\n$1\r\n1\r\n$2\r\nEX\r\n$3\r\n600\r\n\
          *4\r\n$6\r\nCLIENT\r\n$5\r\nPAUSE\r\n$4\r\n1500\r\n$3\r\nALL\r\n",
    )
    .unwrap();
    // Afterwards it recovers by itself: ready again and the token accepted again.
    let start = Instant::now();
    loop {
        if ready(&gw).await == 200 && status(&gw, "/app/x", &token).await == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not recovered 10 s after a 1.5 s stall"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn an_idle_session_on_redis_is_refused_and_audited_as_expired() {
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let cfg = config(
        &up,
        &r,
        "[auth]\nidle_timeout = \"1s\"\n\n[audit]\nfile = \"{dir}/audit.jsonl\"\n",
    );
    let gw = TestGateway::start(&cfg).await;
    until_ready(&gw).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    expect_ok(&gw, &alice).await;
    // The clock has to move past the idle timeout.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        status(&gw, "/app/x", &alice).await,
        302,
        "idle: to the login page"
    );
    assert!(gw.gateway().flush_telemetry(Duration::from_secs(10)).await);
    let text = std::fs::read_to_string(gw.dir.path().join("audit.jsonl")).unwrap();
    let expired = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "session_expired")
        .unwrap_or_else(|| panic!("no session_expired event:\n{text}"));
    assert_eq!(expired["user"], "alice");
    assert_eq!(expired["client"], "127.0.0.1");
    assert!(
        expired["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{expired}"
    );
    assert!(!text.contains(alice.split_once('=').unwrap().1));
    gw.shutdown().await;
}

#[tokio::test]
async fn second_factor_state_is_shared_pending_steps_replays_and_wrong_codes_across_instances() {
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let shared = tempfile::tempdir().unwrap();
    let key = shared.path().join("credentials.key");
    std::fs::write(&key, "redis-test-credentials-key-0123456789").unwrap();
    let file = shared.path().join("credentials.toml");
    let extra = format!(
        "[auth]\ncredentials_file = {:?}\ncredentials_key_file = {:?}\notp_failures_per_minute = 3\n",
        file.to_str().unwrap(),
        key.to_str().unwrap()
    );
    let cfg = config(&up, &r, &extra);
    let cc = authgate::auth::credentials::CredentialsConfig {
        file: file.clone(),
        key: authgate::config::Secret::new(std::fs::read_to_string(&key).unwrap()),
    };
    let e = authgate::auth::credentials::enroll(&cc, "alice", false).unwrap();
    let t = totp_rs::Totp::from_url(&e.uri).unwrap();
    let (a, b) = two_gateways(&cfg).await;
    let password = |gw: &TestGateway| {
        client()
            .post(gw.url("/.auth/login"))
            .json(&serde_json::json!({"username": "alice", "password": PASSWORD}))
            .send()
    };
    let code = |gw: &TestGateway, step: &str, code: String| {
        client()
            .post(gw.url("/.auth/login/otp"))
            .header("cookie", step)
            .json(&serde_json::json!({"code": code}))
            .send()
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    // The password on A, the code on B: the pending step lives in Redis.
    let res = password(&a).await.unwrap();
    assert_eq!(res.status(), 401);
    let step = cookie_named(&res, "authgate_2fa").unwrap();
    let good = t.generate(now()).to_string();
    let res = code(&b, &step, good.clone()).await.unwrap();
    assert_eq!(res.status(), 200);
    let session = cookie_named(&res, "authgate").unwrap();
    // The session made on B says pwd,otp on A too (the record carries amr).
    let me: serde_json::Value = client()
        .get(a.url("/.auth/me"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["amr"], serde_json::json!(["pwd", "otp"]));
    // The same code on the other instance: a replay.
    let res = password(&b).await.unwrap();
    let step = cookie_named(&res, "authgate_2fa").unwrap();
    let res = code(&a, &step, good.clone()).await.unwrap();
    assert_eq!(res.status(), 401, "a code accepted on B is refused on A");
    // Wrong codes on A fill the shared bucket (the replay counted as one): B answers 429.
    let wrong = if good == "000000" { "111111" } else { "000000" };
    for _ in 0..2 {
        let res = password(&a).await.unwrap();
        let step = cookie_named(&res, "authgate_2fa").unwrap();
        assert_eq!(code(&a, &step, wrong.into()).await.unwrap().status(), 401);
    }
    // Failure counts are queued writes: give the queue a bounded moment to reach Redis.
    let start = Instant::now();
    loop {
        let res = password(&b).await.unwrap();
        let step = cookie_named(&res, "authgate_2fa").unwrap();
        let s = code(&b, &step, wrong.into()).await.unwrap().status();
        if s == 429 {
            break;
        }
        assert_eq!(s, 401);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the wrong codes on A never counted on B"
        );
    }
    let keys = r.command(&["KEYS", "test:o:*"]);
    assert!(keys.contains("test:o:s:alice"), "{keys}");
    assert!(!keys.contains(&good), "no code in a key: {keys}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn tls_to_redis_with_a_private_ca_and_a_client_certificate() {
    init();
    let r = RedisServer::start_tls(true);
    let tls = r.tls.as_ref().unwrap();
    let up = Upstream::start().await;
    let other = tempfile::tempdir().unwrap();
    let (stranger, stranger_key) = (other.path().join("ca.pem"), other.path().join("key.pem"));
    authgate::server::tls::generate_dev_cert(&stranger, &stranger_key, &["127.0.0.1".into()])
        .unwrap();
    // The store section on the TLS port with `tls_keys`.
    let on_tls = |tls_keys: &str| {
        config(&up, &r, "").replace(
            &format!("url = \"{}\"\n", r.url()),
            &format!("url = \"{}\"\n{tls_keys}\n", r.tls_url()),
        )
    };
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let good = on_tls(&format!(
        "ca_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}",
        path(&tls.server_cert),
        path(&tls.client_cert),
        path(&tls.client_key)
    ));
    assert!(good.contains("rediss://"), "{good}");

    // Two gateways over TLS share a session and its logout.
    let (a, b) = two_gateways(&good).await;
    let alice = login_json(&a, "alice", PASSWORD).await;
    expect_ok(&b, &alice).await;
    let bob = login_json(&b, "bob", PASSWORD).await;
    logout(&a, &alice, false).await;
    within(&b, &alice, 302, PROPAGATION_BOUND).await;
    expect_ok(&a, &bob).await;
    // It went through this server (read back on its plain port).
    assert!(
        r.command(&["DBSIZE"]).starts_with(":"),
        "{}",
        r.command(&["DBSIZE"])
    );
    assert_ne!(r.command(&["DBSIZE"]), ":0\r\n");

    // Each of these cannot connect: never a logout, a 503 and not ready.
    let no_client_cert = on_tls(&format!("ca_file = {:?}", path(&tls.server_cert)));
    let wrong_ca = on_tls(&format!(
        "ca_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}",
        path(&stranger),
        path(&tls.client_cert),
        path(&tls.client_key)
    ));
    let plain_to_tls_port =
        config(&up, &r, "").replace(&r.url(), &r.tls_url().replace("rediss://", "redis://"));
    for (what, cfg) in [
        ("no client certificate", no_client_cert),
        ("a CA that did not sign the server's certificate", wrong_ca),
        ("plain text to the TLS port", plain_to_tls_port),
    ] {
        let gw = TestGateway::start(&cfg).await;
        assert_eq!(ready(&gw).await, 503, "{what}");
        assert_eq!(status(&gw, "/app/x", &bob).await, 503, "{what}");
        gw.shutdown().await;
    }
    expect_ok(&b, &bob).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// The values of a RESP array reply (`*2\r\n$3\r\nabc\r\n…`).
fn resp_values(reply: &str) -> Vec<String> {
    reply
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with('*') && !l.starts_with('$'))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_users_session_index_drops_sessions_that_expired() {
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up, &r, "")).await;
    until_ready(&gw).await;
    let mut cookies = Vec::new();
    for _ in 0..5 {
        cookies.push(login_json(&gw, "alice", PASSWORD).await);
    }
    let members = resp_values(&r.command(&["SMEMBERS", "test:u:alice"]));
    assert_eq!(members.len(), 5, "{members:?}");
    // Four of them reach their end in Redis (what max_lifetime's TTL does), nobody logs out.
    for h in &members[..4] {
        assert_eq!(
            r.command(&["PEXPIRE", &format!("test:s:{h}"), "1"]),
            ":1\r\n"
        );
    }
    let start = Instant::now();
    while r.command(&["EXISTS", &format!("test:s:{}", members[0])]) != ":0\r\n" {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The next login clears them from the index; the live one and the new one stay.
    let newest = login_json(&gw, "alice", PASSWORD).await;
    let after = resp_values(&r.command(&["SMEMBERS", "test:u:alice"]));
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.contains(&members[4]), "{after:?}");
    expect_ok(&gw, &newest).await;
    // Sign-out-everywhere still reaches both.
    logout(&gw, &newest, true).await;
    within(&gw, &cookies[4], 302, PROPAGATION_BOUND).await;
    assert_eq!(r.command(&["SCARD", "test:u:alice"]), ":0\r\n");
    gw.shutdown().await;
}

/// The real binary on `r` until its store is ready; then stopped: the log lines it wrote.
async fn start_up_log(up: &Upstream, r: &RedisServer) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gateway.test\"\n\n{}",
            config(up, r, "")
        ),
    )
    .unwrap();
    let (child, addr, stderr) = spawn_binary(&path);
    let start = Instant::now();
    // Ready means the tracking connection is up, which comes after the settings were read.
    loop {
        let s = client()
            .get(format!("http://{addr}/.auth/ready"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if s.ok() == Some(200) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Stopped, not killed: the log writer batches, and its last lines are flushed on the way out.
    let (status, text) = terminate_and_read(child, stderr).await;
    assert!(status.success(), "{status:?}");
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn start_up_warns_about_a_redis_that_persists_nothing_or_evicts() {
    init();
    let up = Upstream::start().await;
    let has = |log: &[serde_json::Value], text: &str| {
        log.iter().any(|l| {
            l["level"] == "WARN" && l["message"].as_str().is_some_and(|m| m.contains(text))
        })
    };
    // No save points, no append-only file, evicting when full: both warnings.
    let lossy = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let log = start_up_log(&up, &lossy).await;
    assert!(has(&log, "persists nothing"), "{log:?}");
    assert!(has(&log, "may evict keys"), "{log:?}");
    // Append-only and noeviction (Redis's default policy): neither.
    let safe = RedisServer::start_persistent();
    let log = start_up_log(&up, &safe).await;
    assert!(!log.is_empty());
    assert!(!has(&log, "persists nothing"), "{log:?}");
    assert!(!has(&log, "may evict keys"), "{log:?}");
}

#[tokio::test]
async fn flushall_empties_every_instances_l1_at_once() {
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let (a, b) = two_gateways(&config(&up, &r, "")).await;
    let alice = login_json(&a, "alice", PASSWORD).await;
    expect_ok(&a, &alice).await;
    expect_ok(&b, &alice).await;
    // Both instances hold the session in L1; the server forgets everything.
    assert_eq!(r.command(&["FLUSHALL"]), "+OK\r\n");
    within(&a, &alice, 302, PROPAGATION_BOUND).await;
    within(&b, &alice, 302, PROPAGATION_BOUND).await;
    // The store keeps working afterwards.
    let again = login_json(&b, "alice", PASSWORD).await;
    expect_ok(&a, &again).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn connections_that_go_silent_without_closing_are_replaced() {
    use support::redis::FreezingRelay;
    init();
    let r = RedisServer::start();
    let relay = FreezingRelay::start(r.port).await;
    let up = Upstream::start().await;
    let cfg = config(&up, &r, "").replace(&r.url(), &relay.url());
    assert!(cfg.contains(&relay.url()));
    let gw = TestGateway::start(&cfg).await;
    until_ready(&gw).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    expect_ok(&gw, &alice).await;
    // Every connection the gateway has stops carrying bytes but stays open (no FIN, no RST):
    // only its own timeouts can notice. It must answer meanwhile and then reconnect by itself.
    relay.freeze_existing();
    let start = Instant::now();
    let mut saw_503 = false;
    loop {
        let t = Instant::now();
        let s = status(&gw, "/app/x", &alice).await;
        assert!(t.elapsed() < Duration::from_secs(1), "a request hung");
        assert!(s == 200 || s == 503, "got {s}");
        saw_503 |= s == 503;
        if saw_503 && s == 200 && ready(&gw).await == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the gateway never replaced its silent connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "recovered over new connections {:?} after the freeze",
        start.elapsed()
    );
    // Commands work again too (a login writes, a logout propagates).
    let bob = login_json(&gw, "bob", PASSWORD).await;
    expect_ok(&gw, &bob).await;
    logout(&gw, &bob, false).await;
    within(&gw, &bob, 302, PROPAGATION_BOUND).await;
    gw.shutdown().await;
}
