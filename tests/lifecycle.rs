//! Reload and process lifecycle: snapshot swaps keep live state, failed reloads keep the old
//! snapshot, and the real binary serves, reloads on SIGHUP and exits 0 on SIGTERM.
mod support;
use support::*;

use std::io::BufRead;

fn config(upstream: &str, extra_route: &str) -> String {
    format!(
        "{}[[routes]]\npath_prefix = \"/\"\nupstream = \"{upstream}\"\naccess = \"authenticated\"\n\n{extra_route}",
        user_toml("alice", &["staff"])
    )
}

#[tokio::test]
async fn reload_valid_config_swaps_routes_and_keeps_sessions() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up.url(), "")).await;
    let cookie = login_json(&gw, "alice", PASSWORD).await;
    let c = client();
    let r = c.get(gw.url("/open")).send().await.unwrap();
    assert_eq!(r.status(), 401, "before reload /open needs a login");

    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let new_text = format!(
        "{text}\n[[routes]]\npath_prefix = \"/open\"\nupstream = \"{}\"\naccess = \"public\"\n",
        up.url()
    );
    std::fs::write(&gw.config_path, new_text).unwrap();
    gw.gateway()
        .reload(authgate::Config::load(&gw.config_path).unwrap())
        .unwrap();

    let r = c.get(gw.url("/open")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the new public route is live");
    let r = c
        .get(gw.url("/x"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the session survived the reload");
    assert_eq!(up.last().one("x-forwarded-user").as_deref(), Some("alice"));
    gw.shutdown().await;
}

#[tokio::test]
async fn reload_failing_snapshot_build_keeps_old_configuration() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up.url(), "")).await;
    let cookie = login_json(&gw, "alice", PASSWORD).await;
    // Valid TOML whose snapshot cannot be built: a JWT key file that is not a key.
    let bad_key = gw.dir.path().join("not-a-key.pem");
    std::fs::write(&bad_key, "garbage").unwrap();
    let text = std::fs::read_to_string(&gw.config_path).unwrap().replace(
        "[[users]]",
        &format!(
            "[auth]\nmode = \"jwt\"\n[auth.jwt]\nsigning_key = \"{}\"\n\n[[users]]",
            bad_key.display()
        ),
    );
    let cfg = authgate::Config::from_toml_str(&text, &gw.config_path).unwrap();
    let err = gw.gateway().reload(cfg).unwrap_err().to_string();
    assert!(
        err.contains("auth.jwt.signing_key"),
        "error names the key: {err}"
    );
    let r = client()
        .get(gw.url("/x"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "old snapshot (session mode) still serves");
    gw.shutdown().await;
}

#[tokio::test]
async fn binary_reloads_on_sighup_and_exits_zero_on_sigterm() {
    init();
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gateway.test\"\n\n{}",
        config(&up.url(), "")
    );
    std::fs::write(&path, &base).unwrap();
    let (child, addr, mut stderr) = spawn_binary(&path);
    let c = client();
    let r = c.get(format!("http://{addr}/open")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    std::fs::write(
        &path,
        format!(
            "{base}\n[[routes]]\npath_prefix = \"/open\"\nupstream = \"{}\"\naccess = \"public\"\n",
            up.url()
        ),
    )
    .unwrap();
    signal(&child, "HUP");
    // Wait for the reload's log line (not a sleep): the binary says when the swap happened.
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "binary exited during reload"
        );
        if line.contains("configuration reloaded") {
            break;
        }
    }
    let r = c.get(format!("http://{addr}/open")).send().await.unwrap();
    assert_eq!(r.status(), 200, "SIGHUP applied the new route");

    let status = terminate_and_wait(child, stderr).await;
    assert_eq!(status.code(), Some(0), "graceful exit");
}

#[tokio::test]
async fn access_log_has_one_line_per_request_and_never_secrets() {
    init();
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gateway.test\"\n\n{}",
            config(&up.url(), "")
        ),
    )
    .unwrap();
    let (mut child, addr, mut stderr) = spawn_binary(&path);
    let c = client();
    let login = c
        .post(format!("http://{addr}/.auth/login"))
        .json(&serde_json::json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let cookie = set_cookie_pair(&login).unwrap();
    let session_value = cookie.split_once('=').unwrap().1.to_string();
    let r = c
        .get(format!("http://{addr}/app?token=QUERYSECRET123"))
        .header("cookie", format!("{cookie}; other=COOKIESECRET456"))
        .header("authorization", "Bearer AUTHSECRET789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let bad = c
        .post(format!("http://{addr}/.auth/login"))
        .json(&serde_json::json!({"username": "alice", "password": "WRONGPASSWORD000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    signal(&child, "TERM");
    let log = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        child.wait().unwrap();
        rest
    })
    .await
    .unwrap();
    for secret in [
        session_value.as_str(),
        "QUERYSECRET123",
        "COOKIESECRET456",
        "AUTHSECRET789",
        PASSWORD,
        "WRONGPASSWORD000",
    ] {
        assert!(!log.contains(secret), "log contains a secret: {secret}");
    }
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    assert_eq!(access.len(), 3, "one access line per request: {access:?}");
    let line = access
        .iter()
        .find(|v| v["request_id"] == rid.as_str())
        .expect("request id logged");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/app");
    assert_eq!(line["status"], 200);
    // The route's name: `name`, or (as here) its host and path prefix.
    assert_eq!(line["route"], "/");
    assert!(line["latency_us"].is_u64() && line.get("bytes").is_some());
}
