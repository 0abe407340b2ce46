//! Failed-login limits over real sockets: the per-username limit (`auth.login_failures_per_minute`)
//! and the per-address one (`auth.login_failures_per_minute_per_address`) count apart.

mod support;
use support::*;

use std::path::Path;

/// Users everybody in these tests has (all with [`PASSWORD`]).
const USERS: [&str; 8] = ["ann", "ben", "cat", "dan", "eve", "fay", "alice", "bob"];

/// A gateway configuration: `[auth]` lines `auth`, the test users and one public route. With
/// `behind_proxy`, 127.0.0.1 is a trusted proxy, so `X-Forwarded-For` picks the client address.
fn config(auth: &str, behind_proxy: bool) -> String {
    let trusted = if behind_proxy {
        "trusted_proxies = [\"127.0.0.1/32\"]\n"
    } else {
        ""
    };
    let users: String = USERS.iter().map(|u| user_toml(u, &[])).collect();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gateway.test\"\n{trusted}\n\
         [auth]\n{auth}\n\n{users}[[routes]]\npath_prefix = \"/\"\nupstream = \"builtin:whoami\"\naccess = \"public\"\n"
    )
}

/// One JSON login attempt, from `client_addr` (via `X-Forwarded-For`) when given.
async fn attempt(
    gw: &TestGateway,
    user: &str,
    password: &str,
    client_addr: Option<&str>,
) -> reqwest::Response {
    let mut rb = client()
        .post(gw.url("/.auth/login"))
        .json(&serde_json::json!({"username": user, "password": password}));
    if let Some(a) = client_addr {
        rb = rb.header("x-forwarded-for", a);
    }
    rb.send().await.unwrap()
}

async fn status(gw: &TestGateway, user: &str, password: &str, client_addr: Option<&str>) -> u16 {
    attempt(gw, user, password, client_addr)
        .await
        .status()
        .as_u16()
}

#[tokio::test]
async fn login_limits_defaults_five_users_mistyping_once_behind_one_address_lock_nobody_out() {
    init();
    let gw = TestGateway::start(&config("", false)).await;
    for u in &USERS[..5] {
        assert_eq!(status(&gw, u, "typo", None).await, 401, "{u}");
    }
    // With one limit for both counters (5), the shared address was locked here.
    assert_eq!(
        status(&gw, "fay", PASSWORD, None).await,
        200,
        "a sixth colleague was locked out by the others' typos"
    );
    assert_eq!(
        status(&gw, "ann", PASSWORD, None).await,
        200,
        "one typo locked ann out"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn login_limits_defaults_one_username_failing_five_times_gets_429_even_with_right_password() {
    init();
    let gw = TestGateway::start(&config("", false)).await;
    for i in 0..5 {
        assert_eq!(
            status(&gw, "alice", "guess", None).await,
            401,
            "failure {i}"
        );
    }
    let r = attempt(&gw, "alice", PASSWORD, None).await;
    assert_eq!(r.status(), 429, "right password after the username limit");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(set_cookie_pair(&r).is_none(), "a 429 set a cookie");
    // Another user from the same address is untouched: only alice's counter is full.
    assert_eq!(status(&gw, "bob", PASSWORD, None).await, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn login_limits_username_limit_holds_against_guesses_from_many_addresses() {
    init();
    let gw = TestGateway::start(&config("login_failures_per_minute = 3", true)).await;
    for i in 1..=3 {
        let from = format!("198.51.100.{i}");
        assert_eq!(
            status(&gw, "alice", "guess", Some(&from)).await,
            401,
            "{from}"
        );
    }
    assert_eq!(
        status(&gw, "alice", PASSWORD, Some("192.0.2.10")).await,
        429,
        "a fresh address escaped the username limit"
    );
    assert_eq!(
        status(&gw, "bob", PASSWORD, Some("198.51.100.1")).await,
        200,
        "an address that failed once was locked"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn login_limits_per_address_limit_locks_after_its_count_across_usernames() {
    init();
    let gw = TestGateway::start(&config("login_failures_per_minute_per_address = 3", true)).await;
    let sprayer = Some("203.0.113.9");
    for u in ["ann", "ben", "nobody"] {
        assert_eq!(status(&gw, u, "Winter2026!", sprayer).await, 401, "{u}");
    }
    let r = attempt(&gw, "cat", PASSWORD, sprayer).await;
    assert_eq!(r.status(), 429, "the spraying address was not limited");
    assert!(r.headers().contains_key("retry-after"));
    // Those usernames failed once each, far below their own limit: elsewhere they log in.
    assert_eq!(
        status(&gw, "ann", PASSWORD, Some("192.0.2.20")).await,
        200,
        "another address was limited"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn login_limits_reload_applies_new_limits_to_existing_counters() {
    init();
    let gw = TestGateway::start(&config("", false)).await;
    for u in ["ann", "ben", "cat"] {
        assert_eq!(status(&gw, u, "typo", None).await, 401, "{u}");
    }
    let reload = |auth: &str| {
        std::fs::write(&gw.config_path, config(auth, false)).unwrap();
        let cfg = authgate::Config::load(&gw.config_path).unwrap();
        gw.gateway().reload(cfg).unwrap();
    };
    reload("login_failures_per_minute_per_address = 3");
    assert_eq!(
        status(&gw, "dan", PASSWORD, None).await,
        429,
        "lowered per-address limit not applied"
    );
    reload("login_failures_per_minute_per_address = 50\nlogin_failures_per_minute = 1");
    assert_eq!(status(&gw, "dan", PASSWORD, None).await, 200);
    assert_eq!(
        status(&gw, "ann", PASSWORD, None).await,
        429,
        "lowered per-username limit not applied"
    );
    gw.shutdown().await;
}

/// Problems `text` has as `(key, message)` pairs (empty if valid).
fn problems(text: &str) -> Vec<(String, String)> {
    match authgate::Config::from_toml_str(text, Path::new("x/gateway.toml")) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|e| (e.key.clone(), e.to_string())).collect(),
    }
}

#[test]
fn login_limits_config_zero_per_address_is_refused_and_a_misspelt_key_is_unknown() {
    let key = "auth.login_failures_per_minute_per_address";
    let p = problems(&config("login_failures_per_minute_per_address = 0", false));
    assert!(
        p.iter()
            .any(|(k, m)| k == key && m.contains(key) && m.contains("at least 1")),
        "{p:#?}"
    );
    let p = problems(&config("login_failures_per_minute_per_adress = 10", false));
    assert!(
        p.iter()
            .any(|(_, m)| m.contains("login_failures_per_minute_per_adress")),
        "{p:#?}"
    );
    assert!(problems(&config(
        "login_failures_per_minute = 10\nlogin_failures_per_minute_per_address = 200",
        false
    ))
    .is_empty());
}

#[test]
fn login_limits_check_config_reports_zero_per_address_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        config("login_failures_per_minute_per_address = 0", false),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("auth.login_failures_per_minute_per_address: must be at least 1"),
        "{stderr}"
    );
}
