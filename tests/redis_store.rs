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

async fn logout(gw: &TestGateway, cookie: &str, all: bool) {
    let r = client()
        .post(gw.url(if all {
            "/.auth/logout?all=1"
        } else {
            "/.auth/logout"
        }))
        .header("cookie", cookie)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
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
        assert_eq!(status(gw, "/app/x", &alice).await, 200);
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
        assert_eq!(status(gw, "/app/x", &one).await, 200);
        assert_eq!(status(gw, "/app/x", &two).await, 200);
    }
    logout(&c, &one, true).await;
    for gw in [&a, &b, &c] {
        within(gw, &one, 302, PROPAGATION_BOUND).await;
        within(gw, &two, 302, PROPAGATION_BOUND).await;
        assert_eq!(status(gw, "/app/x", &bob).await, 200);
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
    assert_eq!(status(&gw, "/app/x", &alice).await, 200);
    gw.shutdown().await;
    let gw = TestGateway::start(&cfg).await;
    until_ready(&gw).await;
    assert_eq!(status(&gw, "/app/x", &alice).await, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn jwt_revocations_and_sign_out_everywhere_are_shared() {
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let files = authgate::auth::jwt::generate_key(
        authgate::config::JwtAlgorithm::HS256,
        &keys.path().join("k"),
    )
    .unwrap();
    let jwt = format!(
        "[auth]\nmode = \"jwt\"\n\n[auth.jwt]\nalgorithm = \"HS256\"\nsigning_key = {:?}\n",
        files[0].to_str().unwrap()
    );
    let cfg = config(&up, &r, &jwt);
    let (a, b) = (
        TestGateway::start(&cfg).await,
        TestGateway::start(&cfg).await,
    );
    until_ready(&a).await;
    until_ready(&b).await;
    let t1 = login_json(&a, "alice", PASSWORD).await;
    assert_eq!(status(&b, "/app/x", &t1).await, 200);
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
    assert_eq!(status(&b, "/app/x", &t4).await, 200);
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
    assert_eq!(status(&gw, "/app/x", &alice).await, 200);
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
    assert_eq!(status(&gw, "/app/x", &alice).await, 200, "session lost");
    assert_eq!(status(&other, "/app/x", &alice).await, 200);
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
    assert_eq!(status(&gw, "/app/x", &alice).await, 200);
    r.signal("STOP");
    let fresh = "authgate=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let start = Instant::now();
    let mut saw_503 = false;
    while start.elapsed() < Duration::from_millis(1500) {
        for c in [&alice, &bob, &fresh.to_string()] {
            let t = Instant::now();
            let s = status(&gw, "/app/x", c).await;
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "a request hung for {:?}",
                t.elapsed()
            );
            assert!(s == 200 || s == 503, "got {s} while Redis was stopped");
            saw_503 |= s == 503;
        }
    }
    assert!(
        saw_503,
        "L1 was trusted although the heartbeat went unanswered"
    );
    r.signal("CONT");
    until_ready(&gw).await;
    assert_eq!(status(&gw, "/app/x", &alice).await, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn logout_propagation_over_many_logouts_stays_within_the_bound() {
    init();
    let r = RedisServer::start();
    let up = Upstream::start().await;
    let cfg = config(&up, &r, "");
    let (a, b) = (
        TestGateway::start(&cfg).await,
        TestGateway::start(&cfg).await,
    );
    until_ready(&a).await;
    until_ready(&b).await;
    let mut took = Vec::new();
    for _ in 0..50 {
        let c = login_json(&a, "alice", PASSWORD).await;
        assert_eq!(status(&b, "/app/x", &c).await, 200);
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
    let (a, b) = (
        TestGateway::start(&cfg).await,
        TestGateway::start(&cfg).await,
    );
    until_ready(&a).await;
    until_ready(&b).await;
    let alice = login_json(&a, "alice", PASSWORD).await;
    // The first request on B reads the session once.
    assert_eq!(status(&b, "/app/x", &alice).await, 200);
    let before = redis_calls(&r);
    for _ in 0..200 {
        assert_eq!(status(&b, "/app/x", &alice).await, 200);
        assert_eq!(status(&a, "/app/x", &alice).await, 200);
    }
    let used = redis_calls(&r) - before;
    // `INFO` itself counts once; last-use touches are at most one per idle_timeout / 10.
    assert!(used <= 3, "{used} Redis commands for 400 requests");
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn check_config_names_the_key_of_each_store_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.toml");
    for (store, key) in [
        ("backend = \"redis\"", "store.url"),
        ("backend = \"redis\"\nurl = \"http://x:1\"", "store.url"),
        ("backend = \"redis\"\nurl = \"redis://u:pw@127.0.0.1:1/0\"", "store.url"),
        ("backend = \"redis\"\nurl = \"rediss://127.0.0.1:1/0\"", "store.url"),
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
