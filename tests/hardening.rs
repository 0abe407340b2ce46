//! Issue 12 hardening over real sockets: upgrade smuggling (h2c), absolute-form targets and Host,
//! TRACE, Transfer-Encoding, tunnels that outlive their credential, password changes,
//! sign-out-everywhere then login, and the app's own logout button.
mod support;
use support::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Users alice (admins) and bob (staff) with `alice_hash` as alice's password hash, `extra` on top
/// (sections such as `[auth]`), and routes to `up`: `/` public, `/app` and `/ws` authenticated.
fn config_with(up: &str, extra: &str, alice_hash: &str) -> String {
    format!(
        "{extra}\n\
         [[users]]\nusername = \"alice\"\npassword_hash = \"{alice_hash}\"\ngroups = [\"admins\"]\n\n\
         {}\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"{up}\"\naccess = \"public\"\n\n\
         [[routes]]\npath_prefix = \"/app\"\nupstream = \"{up}\"\naccess = \"authenticated\"\n\n\
         [[routes]]\npath_prefix = \"/ws\"\nupstream = \"{up}\"\naccess = \"authenticated\"\n\n",
        user_toml("bob", &["staff"]),
    )
}

fn config(up: &str, extra: &str) -> String {
    config_with(up, extra, password_hash())
}

/// `[server]` for a test gateway with extra server keys.
fn server(extra: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gateway.test\"\n{extra}\n\n")
}

/// Another argon2id hash of the test password (a new salt): what a password reset to the same
/// password, or to another one, looks like in the users file.
fn other_hash() -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(8192, 1, 1, None).unwrap();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"another-test-salt").unwrap();
    a.hash_password(PASSWORD.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

async fn get(gw: &TestGateway, path: &str, cookie: &str) -> u16 {
    client()
        .get(gw.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Reloads the gateway from new TOML text (written where it started from).
fn reload(gw: &TestGateway, toml: &str) {
    let text = toml.replace("{dir}", gw.dir.path().to_str().unwrap());
    std::fs::write(&gw.config_path, text).unwrap();
    let cfg = authgate::Config::load(&gw.config_path).unwrap();
    gw.gateway().reload(cfg).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 1. Upgrades: only the route's protocols are tunnelled; h2c and HTTP2-Settings never pass.

/// A raw upstream that answers every request with `answer` and records each request head.
async fn raw_upstream(answer: &'static str) -> (SocketAddr, tokio::sync::mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&buf).into_owned()).await;
                let _ = s.write_all(answer.as_bytes()).await;
                // Keep the socket open as an h2c server would.
                let _ = s.read(&mut chunk).await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn h2c_upgrade_is_never_forwarded_and_its_settings_header_is_dropped() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&up.url())).await;
    for (upgrade, connection) in [
        ("h2c", "Upgrade, HTTP2-Settings"),
        ("h2c", "Upgrade"),
        ("websocket, h2c", "Upgrade"),
        ("H2C", "upgrade"),
    ] {
        let resp = raw_request(
            gw.addr,
            &format!(
                "GET /x HTTP/1.1\r\nHost: gateway.test\r\nConnection: {connection}, close\r\n\
                 Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(raw_status(&resp), 200, "{upgrade}: {resp}");
        let seen = up.last();
        for h in ["upgrade", "http2-settings"] {
            assert!(seen.all(h).is_empty(), "{upgrade}: {h} forwarded");
        }
        assert!(
            !seen
                .all("connection")
                .iter()
                .any(|c| c.to_ascii_lowercase().contains("upgrade")),
            "{upgrade}: Connection: upgrade forwarded"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_switching_to_h2c_is_refused_with_502() {
    init();
    let (addr, mut heads) = raw_upstream(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    let gw = TestGateway::start(&public_route(&format!("http://{addr}"))).await;
    // Asked for h2c (stripped): the upstream's 101 is unasked.
    let resp = raw_request(
        gw.addr,
        "GET / HTTP/1.1\r\nHost: gateway.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 502, "{resp}");
    let head = heads.recv().await.unwrap().to_ascii_lowercase();
    assert!(
        !head.contains("h2c") && !head.contains("http2-settings"),
        "{head}"
    );
    // Asked for websocket, switched to h2c: not what the client asked for.
    let resp = raw_request(
        gw.addr,
        "GET / HTTP/1.1\r\nHost: gateway.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 502, "{resp}");
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_upgrade_is_forwarded_plain_unless_the_route_lists_it() {
    init();
    let (addr, mut heads) =
        raw_upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
    let u = format!("http://{addr}");
    let toml = format!(
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"{u}\"\naccess = \"public\"\n\n\
         [[routes]]\npath_prefix = \"/custom\"\nupstream = \"{u}\"\naccess = \"public\"\n\
         upgrades = [\"websocket\", \"x-custom\"]\n"
    );
    let gw = TestGateway::start(&toml).await;
    let req = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: gateway.test\r\nConnection: Upgrade\r\nUpgrade: x-custom\r\n\r\n"
        )
    };
    let resp = raw_request(gw.addr, &req("/plain")).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let head = heads.recv().await.unwrap().to_ascii_lowercase();
    assert!(
        !head.contains("upgrade"),
        "an unlisted upgrade was forwarded: {head}"
    );
    let resp = raw_request(gw.addr, &req("/custom/x")).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let head = heads.recv().await.unwrap().to_ascii_lowercase();
    assert!(
        head.contains("upgrade: x-custom") && head.contains("connection: upgrade"),
        "a listed upgrade was not forwarded: {head}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn config_refuses_h2c_in_a_routes_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.toml");
    std::fs::write(
        &p,
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"builtin:whoami\"\naccess = \"public\"\nupgrades = [\"h2c\"]\n",
    )
    .unwrap();
    let e = authgate::Config::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("routes[0].upgrades[0]") && e.contains("g.toml"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2, 3. One host per request: absolute-form target and Host must agree; HTTP/1.1 needs a Host.

#[tokio::test]
async fn absolute_form_target_disagreeing_with_host_is_400_and_agreeing_one_is_routed() {
    init();
    let up = Upstream::start().await;
    let u = up.url();
    let toml = format!(
        "[[routes]]\nhost = \"public.example\"\npath_prefix = \"/\"\nupstream = \"{u}\"\naccess = \"public\"\n\n\
         [[routes]]\nhost = \"admin.example\"\npath_prefix = \"/\"\nupstream = \"{u}\"\naccess = \"authenticated\"\n\n{}",
        user_toml("alice", &[])
    );
    let gw = TestGateway::start(&toml).await;
    let resp = raw_request(
        gw.addr,
        "GET http://admin.example/x HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    let resp = raw_request(
        gw.addr,
        "GET http://public.example/x HTTP/1.1\r\nHost: admin.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    assert_eq!(up.count(), 0, "a disagreeing request reached the upstream");
    // Agreeing (case-insensitively): routed by that host, which is what the upstream hears.
    let resp = raw_request(
        gw.addr,
        "GET http://PUBLIC.example/x HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(
        up.last().one("x-forwarded-host").as_deref(),
        Some("public.example")
    );
    assert_eq!(up.last().uri, "/x");
    // The protected host stays protected in absolute form.
    let resp = raw_request(
        gw.addr,
        "GET http://admin.example/x HTTP/1.1\r\nHost: admin.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 401, "{resp}");
    // Userinfo in the target authority is refused like in Host.
    let resp = raw_request(
        gw.addr,
        "GET http://u@public.example/x HTTP/1.1\r\nHost: u@public.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn http11_request_without_host_is_400_and_http10_without_host_is_served() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&up.url())).await;
    let resp = raw_request(gw.addr, "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    assert_eq!(up.count(), 0);
    let resp = raw_request(gw.addr, "GET /x HTTP/1.0\r\n\r\n").await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 5. TRACE and TRACK.

#[tokio::test]
async fn trace_and_track_get_405_unless_the_route_allows_trace() {
    init();
    let up = Upstream::start().await;
    let u = up.url();
    let toml = format!(
        "{}\n[[routes]]\npath_prefix = \"/debug\"\nupstream = \"{u}\"\naccess = \"public\"\nallow_trace = true\n",
        public_route(&u)
    );
    let gw = TestGateway::start(&toml).await;
    for m in ["TRACE", "TRACK", "trace"] {
        let resp = raw_request(
            gw.addr,
            &format!("{m} /x HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n"),
        )
        .await;
        // Methods are case-sensitive, but an upstream may fold them: `trace` is refused too.
        assert_eq!(raw_status(&resp), 405, "{m}: {resp}");
    }
    assert_eq!(up.count(), 0, "a TRACE reached the upstream");
    let resp = raw_request(
        gw.addr,
        "TRACE /debug/x HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(up.last().method, "TRACE");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Transfer-Encoding other than exactly `chunked`.

#[tokio::test]
async fn transfer_encoding_other_than_one_chunked_is_refused_before_the_upstream() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&up.url())).await;
    let body = "5\r\nhello\r\n0\r\n\r\n";
    let cases: [(&str, u16); 7] = [
        ("Transfer-Encoding: identity, chunked\r\n", 400),
        ("Transfer-Encoding: chunked, identity\r\n", 400),
        ("Transfer-Encoding: gzip, chunked\r\n", 501),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            400,
        ),
        (
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            400,
        ),
        ("Transfer-Encoding: chunked, chunked\r\n", 400),
        ("Transfer-Encoding: xchunked\r\n", 400),
    ];
    for (te, status) in cases {
        for path in ["/x", "/.auth/login"] {
            let resp = raw_request(
                gw.addr,
                &format!(
                    "POST {path} HTTP/1.1\r\nHost: gateway.test\r\n{te}Connection: close\r\n\r\n{body}"
                ),
            )
            .await;
            assert_eq!(raw_status(&resp), status, "{te:?} on {path}: {resp}");
        }
    }
    assert_eq!(up.count(), 0, "a refused request reached the upstream");
    // Control: exactly `chunked` passes, whatever its case.
    let resp = raw_request(
        gw.addr,
        &format!(
            "POST /x HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n{body}"
        ),
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(up.last().body_len, 5);
    // Both framings: hyper (>= 1.11) drops Content-Length and reads the chunked body alone, as
    // RFC 9112 §6.1 allows; the upstream sees only that body, never the 99 bytes claimed.
    let resp = raw_request(
        gw.addr,
        &format!(
            "POST /x HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\nConnection: close\r\n\r\n{body}"
        ),
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(up.last().body_len, 5);
    assert!(up.last().all("content-length").iter().all(|v| v == "5"));
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Tunnels end with their credential, and when idle.

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_open(addr: SocketAddr, cookie: Option<&str>) -> Ws {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("host", "gateway.test".parse().unwrap());
    if let Some(c) = cookie {
        req.headers_mut().insert("cookie", c.parse().unwrap());
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("websocket handshake through the gateway");
    assert_eq!(resp.status(), 101);
    ws
}

async fn ws_echo(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo timed out")
        .expect("tunnel ended")
        .unwrap();
    assert_eq!(got, Message::Text(text.into()));
}

/// Waits (at most 10 s) for the tunnel to end, and returns how long that took.
async fn ws_ends(ws: &mut Ws) -> Duration {
    let start = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the tunnel was still open after 10 s");
    start.elapsed()
}

/// Within a few seconds: the watcher checks every second.
const CLOSE_WITHIN: Duration = Duration::from_secs(4);

#[tokio::test]
async fn tunnel_closes_after_logout_and_sign_out_everywhere_in_session_mode() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up.url(), "")).await;
    for all in [false, true] {
        let cookie = login_json(&gw, "alice", PASSWORD).await;
        let bob = login_json(&gw, "bob", PASSWORD).await;
        let mut ws = ws_open(gw.addr, Some(&cookie)).await;
        let mut bob_ws = ws_open(gw.addr, Some(&bob)).await;
        ws_echo(&mut ws, "before").await;
        logout(&gw, &cookie, all).await;
        let took = ws_ends(&mut ws).await;
        assert!(took < CLOSE_WITHIN, "closed after {took:?}");
        ws_echo(&mut bob_ws, "other users' tunnels stay open").await;
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn tunnel_closes_after_token_revocation_and_sign_out_everywhere_in_jwt_mode() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up.url(), &jwt_section(keys.path()))).await;
    for all in [false, true] {
        let cookie = login_json(&gw, "alice", PASSWORD).await;
        let mut ws = ws_open(gw.addr, Some(&cookie)).await;
        ws_echo(&mut ws, "before").await;
        logout(&gw, &cookie, all).await;
        let took = ws_ends(&mut ws).await;
        assert!(took < CLOSE_WITHIN, "closed after {took:?}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn tunnel_closes_when_the_user_is_removed_or_the_password_changes() {
    init();
    let up = Upstream::start().await;
    let base = config(&up.url(), "");
    let gw = TestGateway::start(&base).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    let bob = login_json(&gw, "bob", PASSWORD).await;
    let mut alice_ws = ws_open(gw.addr, Some(&alice)).await;
    let mut bob_ws = ws_open(gw.addr, Some(&bob)).await;
    // alice's password hash changes.
    reload(&gw, &config_with(&up.url(), "", &other_hash()));
    let took = ws_ends(&mut alice_ws).await;
    assert!(took < CLOSE_WITHIN, "closed after {took:?}");
    ws_echo(&mut bob_ws, "bob is untouched").await;
    // bob is removed.
    let without_bob = base.replace(&user_toml("bob", &["staff"]), "");
    assert_ne!(without_bob, base);
    reload(&gw, &without_bob);
    let took = ws_ends(&mut bob_ws).await;
    assert!(took < CLOSE_WITHIN, "closed after {took:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn silent_tunnel_closes_when_its_session_idles_out_and_an_active_one_stays() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up.url(), "[auth]\nidle_timeout = \"2s\"\n")).await;
    let quiet = login_json(&gw, "alice", PASSWORD).await;
    let busy = login_json(&gw, "bob", PASSWORD).await;
    let mut quiet_ws = ws_open(gw.addr, Some(&quiet)).await;
    let mut busy_ws = ws_open(gw.addr, Some(&busy)).await;
    let start = Instant::now();
    // The busy tunnel talks every 300 ms for 4.5 s: its traffic keeps its session alive.
    while start.elapsed() < Duration::from_millis(4500) {
        ws_echo(&mut busy_ws, "ping").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let took = ws_ends(&mut quiet_ws).await;
    assert!(
        took < Duration::from_millis(100),
        "the silent tunnel outlived its idle session by {took:?}"
    );
    ws_echo(&mut busy_ws, "still open").await;
    assert_eq!(get(&gw, "/app/x", &busy).await, 200, "busy session alive");
    assert_eq!(
        get(&gw, "/app/x", &quiet).await,
        401,
        "quiet session expired"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn tunnel_idle_past_tunnel_idle_timeout_is_closed_and_a_talking_one_is_not() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}{}",
        server("tunnel_idle_timeout = \"2s\""),
        public_route(&up.url())
    ))
    .await;
    let mut idle = ws_open(gw.addr, None).await;
    let mut talking = ws_open(gw.addr, None).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(4500) {
        ws_echo(&mut talking, "ping").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let took = ws_ends(&mut idle).await;
    assert!(
        took < Duration::from_millis(100),
        "idle tunnel open {took:?} too long"
    );
    ws_echo(&mut talking, "still open").await;
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 8. A password change ends the sessions and tokens issued before it; other users keep theirs.

async fn password_change_ends_credentials(extra: &str) {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up.url(), extra)).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    let bob = login_json(&gw, "bob", PASSWORD).await;
    assert_eq!(get(&gw, "/app/x", &alice).await, 200);
    reload(&gw, &config_with(&up.url(), extra, &other_hash()));
    assert_eq!(
        get(&gw, "/app/x", &alice).await,
        401,
        "pre-change credential"
    );
    assert_eq!(get(&gw, "/app/x", &bob).await, 200, "other user");
    let again = login_json(&gw, "alice", PASSWORD).await;
    assert_eq!(get(&gw, "/app/x", &again).await, 200, "post-change login");
    // A reload that changes nothing about alice keeps her new credential.
    reload(&gw, &config_with(&up.url(), extra, &other_hash()));
    assert_eq!(get(&gw, "/app/x", &again).await, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn password_change_on_reload_ends_old_sessions_in_session_mode() {
    password_change_ends_credentials("").await;
}

#[tokio::test]
async fn password_change_on_reload_ends_old_tokens_in_jwt_mode() {
    let keys = tempfile::tempdir().unwrap();
    password_change_ends_credentials(&jwt_section(keys.path())).await;
}

#[tokio::test]
async fn password_change_across_a_restart_ends_old_tokens_in_jwt_mode() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let jwt = jwt_section(keys.path());
    let gw = TestGateway::start(&config(&up.url(), &jwt)).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    let bob = login_json(&gw, "bob", PASSWORD).await;
    gw.shutdown().await;
    let gw = TestGateway::start(&config_with(&up.url(), &jwt, &other_hash())).await;
    assert_eq!(get(&gw, "/app/x", &alice).await, 401);
    assert_eq!(get(&gw, "/app/x", &bob).await, 200);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 9. Sign-out-everywhere, then an immediate login: the new one works, the old ones do not.

async fn login_right_after_sign_out_everywhere(extra: &str) {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up.url(), extra)).await;
    // Several rounds, each well inside one second: the same-second case every time.
    for round in 0..5 {
        let old = login_json(&gw, "alice", PASSWORD).await;
        let other_old = login_json(&gw, "alice", PASSWORD).await;
        logout(&gw, &old, true).await;
        let new = login_json(&gw, "alice", PASSWORD).await;
        assert_eq!(
            get(&gw, "/app/x", &new).await,
            200,
            "round {round}: new login"
        );
        assert_eq!(
            get(&gw, "/app/x", &old).await,
            401,
            "round {round}: signed out"
        );
        assert_eq!(
            get(&gw, "/app/x", &other_old).await,
            401,
            "round {round}: other pre-sign-out credential"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn login_right_after_sign_out_everywhere_works_in_jwt_mode() {
    let keys = tempfile::tempdir().unwrap();
    login_right_after_sign_out_everywhere(&jwt_section(keys.path())).await;
}

#[tokio::test]
async fn login_right_after_sign_out_everywhere_works_in_session_mode() {
    login_right_after_sign_out_everywhere("").await;
}

// ---------------------------------------------------------------------------------------------
// 10. The app's own logout button: same-origin posts without a token; every 403 says why.

async fn logout_post(
    gw: &TestGateway,
    cookie: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let mut rb = client()
        .post(gw.url("/.auth/logout"))
        .header("host", "gateway.test")
        .header("cookie", cookie)
        .header("accept", "text/html");
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb
            .header("content-type", "application/x-www-form-urlencoded")
            .body(b.to_string());
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn same_origin_logout_button_without_token_works_and_cross_site_is_refused_with_reason() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up.url(), "")).await;
    // Same origin, proven by Origin or by Sec-Fetch-Site, with a form body or none.
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>);
    let same: [Case; 4] = [
        (&[("origin", "http://gateway.test")], Some("")),
        (&[("sec-fetch-site", "same-origin")], Some("")),
        (
            &[
                ("sec-fetch-site", "same-origin"),
                ("origin", "http://gateway.test"),
            ],
            None,
        ),
        (&[("referer", "http://gateway.test/app/page")], None),
    ];
    for (i, (headers, body)) in same.into_iter().enumerate() {
        let cookie = login_json(&gw, "alice", PASSWORD).await;
        let (status, text) = logout_post(&gw, &cookie, headers, body).await;
        // A Referer alone proves nothing (it may be stripped): the token is still asked for.
        if i == 3 {
            assert_eq!(status, 403, "{text}");
            assert!(text.contains("security token"), "{text}");
            assert_eq!(get(&gw, "/app/x", &cookie).await, 200);
            continue;
        }
        assert_eq!(status, 303, "case {i}: {text}");
        assert_eq!(
            get(&gw, "/app/x", &cookie).await,
            401,
            "case {i}: still logged in"
        );
    }
    // Cross-site: refused, saying so; the session survives.
    let cookie = login_json(&gw, "alice", PASSWORD).await;
    for headers in [
        &[("origin", "https://evil.example")][..],
        &[("sec-fetch-site", "cross-site")][..],
        &[("sec-fetch-site", "same-site")][..],
        &[("referer", "https://evil.example/x")][..],
        &[("sec-fetch-site", "same-origin"), ("origin", "null")][..],
    ] {
        let (status, text) = logout_post(&gw, &cookie, headers, Some("")).await;
        assert_eq!(status, 403, "{headers:?}");
        assert!(text.contains("another site"), "{headers:?}: {text}");
        assert!(!text.contains("security token"), "{text}");
    }
    // No provenance at all and no token: the token is what is missing.
    let (status, text) = logout_post(&gw, &cookie, &[], Some("")).await;
    assert_eq!(status, 403);
    assert!(text.contains("security token"), "{text}");
    assert_eq!(
        get(&gw, "/app/x", &cookie).await,
        200,
        "refused logouts logged out"
    );
    // Logged in but not allowed: the 403 says that, not CSRF.
    let toml = format!(
        "{}[[routes]]\npath_prefix = \"/admin\"\nupstream = \"{}\"\nallow_groups = [\"admins\"]\n",
        config(&up.url(), ""),
        up.url()
    );
    let gw2 = TestGateway::start(&toml).await;
    let bob = login_json(&gw2, "bob", PASSWORD).await;
    let r = client()
        .get(gw2.url("/admin/"))
        .header("cookie", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("not allowed"));
    gw2.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn logout_from_a_routed_app_host_counts_as_same_origin() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up.url(), "")).await;
    let cookie = login_json(&gw, "alice", PASSWORD).await;
    let r = client()
        .post(gw.url("/.auth/logout"))
        .header("host", "app.example:8080")
        .header("origin", "http://app.example:8080")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(get(&gw, "/app/x", &cookie).await, 401);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Review follow-ups: trailing-dot and default-port hosts, HTTP/1.0 upgrades, CONNECT, protocols
// that are never tunnelled, bearer tunnels, upstream-only tunnel traffic.

#[tokio::test]
async fn trailing_dot_host_is_routed_as_the_host_it_names() {
    init();
    let up = Upstream::start().await;
    let u = up.url();
    let toml = format!(
        "[[routes]]\nhost = \"admin.example\"\npath_prefix = \"/\"\nupstream = \"{u}\"\naccess = \"authenticated\"\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"{u}\"\naccess = \"public\"\npreserve_host = true\n\n{}",
        user_toml("alice", &[])
    );
    let gw = TestGateway::start(&toml).await;
    for host in ["admin.example.", "ADMIN.example.:80", "admin.example"] {
        let resp = raw_request(
            gw.addr,
            &format!("GET /secret HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(raw_status(&resp), 401, "{host}: {resp}");
    }
    let resp = raw_request(
        gw.addr,
        "GET http://admin.example./secret HTTP/1.1\r\nHost: admin.example.\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 401, "{resp}");
    assert_eq!(up.count(), 0, "the protected host was reached");
    gw.shutdown().await;
}

#[tokio::test]
async fn absolute_form_and_host_differing_only_by_the_default_port_agree() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&up.url())).await;
    for (target, host, status) in [
        ("http://app.example/x", "app.example:80", 200),
        ("http://app.example:80/x", "app.example", 200),
        ("http://app.example:8080/x", "app.example", 400),
        ("http://app.example/x", "app.example:81", 400),
    ] {
        let resp = raw_request(
            gw.addr,
            &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(raw_status(&resp), status, "{target} / {host}: {resp}");
    }
    assert_eq!(up.count(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn http10_upgrade_and_connect_are_not_forwarded() {
    init();
    let (addr, mut heads) =
        raw_upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
    let gw = TestGateway::start(&public_route(&format!("http://{addr}"))).await;
    let resp = raw_request(
        gw.addr,
        "GET /x HTTP/1.0\r\nHost: gateway.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let head = heads.recv().await.unwrap().to_ascii_lowercase();
    assert!(
        !head.contains("upgrade"),
        "HTTP/1.0 upgrade forwarded: {head}"
    );
    let resp = raw_request(
        gw.addr,
        "CONNECT /x HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 405, "{resp}");
    assert!(heads.try_recv().is_err(), "CONNECT reached the upstream");
    gw.shutdown().await;
}

#[tokio::test]
async fn config_refuses_http_and_tls_switching_protocols_in_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.toml");
    for proto in ["h2", "H2C", "http", "tls", "TLS/1.0"] {
        std::fs::write(
            &p,
            format!("[[routes]]\npath_prefix = \"/\"\nupstream = \"builtin:whoami\"\naccess = \"public\"\nupgrades = [\"websocket\", \"{proto}\"]\n"),
        )
        .unwrap();
        let e = authgate::Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("routes[0].upgrades[1]"), "{proto}: {e}");
    }
}

#[tokio::test]
async fn bearer_tunnel_ends_with_its_token_exp() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let jwt = format!(
        "{}ttl = \"2s\"\nleeway = \"0s\"\naccept_bearer = true\n",
        jwt_section(keys.path())
    );
    let gw = TestGateway::start(&config(&up.url(), &jwt)).await;
    let pair = login_json(&gw, "alice", PASSWORD).await;
    let token = pair.split_once('=').unwrap().1.to_string();
    let mut req = format!("ws://{}/ws", gw.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("host", "gateway.test".parse().unwrap());
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    let start = Instant::now();
    // Talking all along: only the token's expiry can end it (2 s, checked every second).
    let ended = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            if ws.send(Message::Text("ping".into())).await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
                Ok(Some(Ok(Message::Text(_)))) => {}
                _ => return,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(ended.is_ok(), "a bearer tunnel outlived its token by 6 s");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "closed too early"
    );
    gw.shutdown().await;
}

/// A WebSocket upstream that sends a frame every 200 ms and ignores what it receives.
async fn pushing_ws_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if ws.send(Message::Text("update".into())).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_only_traffic_does_not_keep_an_idle_session_alive() {
    init();
    let up = pushing_ws_upstream().await;
    let gw = TestGateway::start(&config(
        &format!("http://{up}"),
        "[auth]\nidle_timeout = \"2s\"\n",
    ))
    .await;
    let cookie = login_json(&gw, "alice", PASSWORD).await;
    let mut ws = ws_open(gw.addr, Some(&cookie)).await;
    // Updates keep arriving; the client never sends anything.
    let took = ws_ends(&mut ws).await;
    assert!(
        took < Duration::from_secs(5),
        "an unattended tab kept its session alive for {took:?}"
    );
    assert_eq!(
        get(&gw, "/app/x", &cookie).await,
        401,
        "session still alive"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn config_refuses_route_prefixes_an_encoded_form_could_slip_past() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.toml");
    for prefix in ["/a+b", "/x=1", "/user@host", "/a:b", "/it's"] {
        std::fs::write(
            &p,
            format!("[[routes]]\npath_prefix = {prefix:?}\nupstream = \"builtin:whoami\"\naccess = \"public\"\n"),
        )
        .unwrap();
        let e = authgate::Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("routes[0].path_prefix"), "{prefix}: {e}");
    }
}
