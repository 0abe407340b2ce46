//! Observability over real sockets: the metrics endpoint (parsed by the Python
//! `prometheus_client` OpenMetrics parser), audit events, the access log and trace context.

mod support;

use std::io::{BufRead, Read};
use std::time::Duration;

use support::*;

/// One sample of a scrape, as the reference parser read it.
#[derive(Debug, serde::Deserialize)]
struct Sample {
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    value: f64,
}

const PARSER: &str = r#"
import sys, json
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"name": s.name, "labels": dict(s.labels), "value": s.value})
print(json.dumps(out))
"#;

/// Parses an exposition with the reference OpenMetrics parser (strict: it refuses a malformed
/// one). Debian's python3 has it once `python3-prometheus-client` is installed (`.ci/deps`).
fn parse_metrics(text: &str) -> Vec<Sample> {
    use std::io::Write;
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut child = std::process::Command::new(python)
        .arg("-c")
        .arg(PARSER)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed to parse the metrics");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("No module named"),
        "the Python prometheus_client parser is missing: run `bash .ci/deps` (apt-get install python3-prometheus-client)\n{err}"
    );
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the exposition: {err}\n---\n{text}"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`; panics if there is none.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
        .value
}

#[tokio::test]
async fn metrics_listener_is_absent_unless_configured_and_never_on_the_public_listener() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_route(&up.url())).await;
    assert!(gw.gateway().metrics_addr().is_none());
    let r = client().get(gw.url("/metrics")).send().await.unwrap();
    let body = r.text().await.unwrap();
    assert!(
        !body.contains("authgate_http_requests"),
        "the public listener must not serve metrics: {body}"
    );
    // The request went to the upstream like any other path.
    assert_eq!(up.last().uri, "/metrics");
    gw.shutdown().await;
}

#[tokio::test]
async fn metrics_config_refuses_the_public_listeners_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:18555\"\n\n[metrics]\nlisten = \"0.0.0.0:18555\"\n\n{}",
            public_route("builtin:whoami")
        ),
    )
    .unwrap();
    let e = authgate::Config::load(&path).unwrap_err().to_string();
    assert!(e.contains("metrics.listen"), "{e}");
    assert!(e.contains("public listener"), "{e}");
}

#[tokio::test]
async fn metrics_after_real_traffic_parse_and_count_per_route_status_auth_and_login() {
    let up = Upstream::start().await;
    let toml = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n\n{}\
         [[routes]]\nname = \"app\"\npath_prefix = \"/app\"\nupstream = \"{u}\"\n\n\
         [[routes]]\nname = \"dead\"\npath_prefix = \"/dead\"\nupstream = \"http://127.0.0.1:1\"\naccess = \"public\"\n\n\
         [[routes]]\nname = \"open\"\npath_prefix = \"/\"\nupstream = \"{u}\"\naccess = \"public\"\n",
        user_toml("alice", &[]),
        u = up.url()
    );
    let gw = TestGateway::start(&toml).await;
    let maddr = gw.gateway().metrics_addr().expect("metrics listener");
    let c = client();
    let cookie = login_json(&gw, "alice", PASSWORD).await;
    let bad = c
        .post(gw.url("/.auth/login"))
        .json(&serde_json::json!({"username": "alice", "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    for _ in 0..5 {
        let r = c
            .get(gw.url("/app/x"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for _ in 0..3 {
        let r = c.get(gw.url("/app/x")).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    for _ in 0..2 {
        let r = c.get(gw.url("/status?code=503")).send().await.unwrap();
        assert_eq!(r.status(), 503);
    }
    for _ in 0..4 {
        let r = c.get(gw.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = c.get(gw.url("/dead/")).send().await.unwrap();
    assert_eq!(r.status(), 502);

    let (ctype, text) = scrape_metrics_at(maddr).await;
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let s = parse_metrics(&text);
    let req = "authgate_http_requests_total";
    assert_eq!(value(&s, req, &[("route", "app"), ("class", "2xx")]), 5.0);
    assert_eq!(value(&s, req, &[("route", "app"), ("class", "4xx")]), 3.0);
    assert_eq!(value(&s, req, &[("route", "open"), ("class", "5xx")]), 2.0);
    assert_eq!(value(&s, req, &[("route", "open"), ("class", "2xx")]), 4.0);
    assert_eq!(value(&s, req, &[("route", "dead"), ("class", "5xx")]), 1.0);
    // The two logins: one 200, one 401, both on the gateway's endpoints.
    assert_eq!(
        value(&s, req, &[("route", "(gateway)"), ("class", "2xx")]),
        1.0
    );
    assert_eq!(
        value(&s, req, &[("route", "(gateway)"), ("class", "4xx")]),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "authgate_http_request_duration_seconds_count",
            &[("route", "app")]
        ),
        8.0
    );
    assert_eq!(
        value(
            &s,
            "authgate_upstream_errors_total",
            &[("route", "dead"), ("kind", "connect")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "authgate_upstream_request_duration_seconds_count",
            &[("route", "app")]
        ),
        5.0
    );
    assert_eq!(
        value(&s, "authgate_authz_denials_total", &[("route", "app")]),
        3.0
    );
    let auth = "authgate_auth_results_total";
    assert_eq!(
        value(&s, auth, &[("mechanism", "session"), ("result", "ok")]),
        5.0
    );
    assert_eq!(
        value(&s, auth, &[("mechanism", "session"), ("result", "missing")]),
        3.0
    );
    let login = "authgate_login_attempts_total";
    let password = ("method", "password");
    assert_eq!(value(&s, login, &[password, ("result", "ok")]), 1.0);
    assert_eq!(
        value(&s, login, &[password, ("result", "bad_credentials")]),
        1.0,
        "a failed login is counted once"
    );
    // Nothing else logged in: the other methods are present and zero.
    for method in ["otp", "oidc"] {
        for result in ["ok", "bad_credentials"] {
            assert_eq!(
                value(&s, login, &[("method", method), ("result", result)]),
                0.0
            );
        }
    }
    assert_eq!(value(&s, "authgate_login_duration_seconds_count", &[]), 2.0);
    assert_eq!(value(&s, "authgate_sessions_active", &[]), 1.0);
    assert_eq!(
        value(&s, "authgate_store_up", &[("backend", "memory")]),
        1.0
    );
    assert_eq!(value(&s, "authgate_http_requests_in_flight", &[]), 0.0);
    assert_eq!(value(&s, "authgate_build_info", &[]), 1.0);
    // Labels are route names, fixed words and classes: never a user, an address or a path.
    for x in &s {
        for (k, v) in &x.labels {
            assert!(
                !v.contains("alice") && !v.contains("127.0.0.1") && !v.contains("/app/x"),
                "{} {k}={v}",
                x.name
            );
        }
    }
    // Other paths and methods on the metrics listener.
    let r = c.get(format!("http://{maddr}/other")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .post(format!("http://{maddr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    gw.shutdown().await;
}

#[tokio::test]
async fn metrics_count_reloads_and_survive_them() {
    let up = Upstream::start().await;
    let base = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n\n{}",
        public_route(&up.url())
    );
    let gw = TestGateway::start(&base).await;
    let maddr = gw.gateway().metrics_addr().unwrap();
    client().get(gw.url("/")).send().await.unwrap();
    let good = authgate::Config::from_toml_str(&base, &gw.config_path).unwrap();
    gw.gateway().reload(good).unwrap();
    std::fs::write(&gw.config_path, "[server]\nnot_a_key = 1\n").unwrap();
    assert!(authgate::server::reload_from_file(gw.gateway().shared(), &gw.config_path).is_err());
    let s = parse_metrics(&scrape_metrics_at(maddr).await.1);
    assert_eq!(
        value(&s, "authgate_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        value(&s, "authgate_config_reloads_total", &[("result", "error")]),
        1.0
    );
    // The request before the reload still counts.
    assert_eq!(
        value(
            &s,
            "authgate_http_requests_total",
            &[("route", "/"), ("class", "2xx")]
        ),
        1.0
    );
    gw.shutdown().await;
}

fn audit_events(path: &std::path::Path) -> (String, Vec<serde_json::Value>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let events = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (text, events)
}

fn find<'a>(events: &'a [serde_json::Value], event: &str, outcome: &str) -> &'a serde_json::Value {
    events
        .iter()
        .find(|e| e["event"] == event && e["outcome"] == outcome)
        .unwrap_or_else(|| panic!("no {event}/{outcome} event in {events:#?}"))
}

#[tokio::test]
async fn audit_records_each_event_kind_in_session_mode_without_secrets() {
    let up = Upstream::start().await;
    let typed_password = "Tr0ub4dor&3-typed-into-the-username";
    let toml = format!(
        "[auth]\nidle_timeout = \"1s\"\nlogin_failures_per_minute = 3\n\n[audit]\nfile = \"{{dir}}/audit.jsonl\"\n\n{}{}\
         [[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\nupstream = \"{u}\"\nallow_users = [\"bob\"]\n\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"{u}\"\n",
        user_toml("alice", &[]),
        user_toml("bob", &[]),
        u = up.url()
    );
    let gw = TestGateway::start(&toml).await;
    let c = client();
    let post_login = |user: &str, pw: &str| {
        c.post(gw.url("/.auth/login"))
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .json(&serde_json::json!({"username": user, "password": pw}))
            .send()
    };
    // Failures: an unknown name (a password typed into the field) and a wrong password.
    assert_eq!(post_login(typed_password, "x").await.unwrap().status(), 401);
    assert_eq!(
        post_login("bob", "wrong-password-1")
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post_login("bob", "wrong-password-2")
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post_login("bob", "wrong-password-3")
            .await
            .unwrap()
            .status(),
        401
    );
    // bob is locked out now.
    assert_eq!(post_login("bob", PASSWORD).await.unwrap().status(), 429);
    // A cross-site form post.
    let r = c
        .post(gw.url("/.auth/login"))
        .header("origin", "https://evil.example")
        .form(&[("username", "alice"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let cookie = login_json(&gw, "alice", PASSWORD).await;
    let r = c
        .get(gw.url("/admin/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    logout(&gw, &cookie, false).await;
    let c2 = login_json(&gw, "alice", PASSWORD).await;
    logout(&gw, &c2, true).await;
    // A session left idle past its timeout, then used: expiry observed. The clock has to move.
    let c3 = login_json(&gw, "alice", PASSWORD).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = c
        .get(gw.url("/"))
        .header("cookie", &c3)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A reload that applies and changes the users, and one that does not.
    let mut changed = std::fs::read_to_string(&gw.config_path).unwrap();
    changed.push_str(&user_toml("carol", &[]));
    std::fs::write(&gw.config_path, &changed).unwrap();
    authgate::server::reload_from_file(gw.gateway().shared(), &gw.config_path).unwrap();
    std::fs::write(&gw.config_path, "[server]\nbogus = 1\n").unwrap();
    assert!(authgate::server::reload_from_file(gw.gateway().shared(), &gw.config_path).is_err());

    assert!(gw.gateway().flush_telemetry(Duration::from_secs(10)).await);
    let (text, ev) = audit_events(&gw.dir.path().join("audit.jsonl"));
    let unknown = find(&ev, "login", "failure");
    assert_eq!(unknown["reason"], "unknown_user");
    assert!(unknown.get("user").is_none());
    assert_eq!(unknown["user_hash"].as_str().unwrap().len(), 16);
    assert_eq!(unknown["client"], "127.0.0.1");
    assert_eq!(unknown["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert!(unknown["request_id"].as_str().is_some());
    assert!(ev
        .iter()
        .any(|e| e["event"] == "login" && e["reason"] == "bad_password" && e["user"] == "bob"));
    assert!(ev
        .iter()
        .any(|e| e["event"] == "login" && e["reason"] == "csrf"));
    let locked = find(&ev, "login_rate_limited", "failure");
    assert_eq!(locked["user"], "bob");
    let ok = find(&ev, "login", "success");
    assert_eq!(ok["user"], "alice");
    let denied = find(&ev, "access_denied", "failure");
    assert_eq!(denied["user"], "alice");
    assert_eq!(denied["route"], "admin");
    assert!(denied["credential"].as_str().unwrap().starts_with("s:"));
    let out = find(&ev, "logout", "success");
    assert_eq!(out["user"], "alice");
    assert_eq!(out["credential"], denied["credential"], "the same session");
    assert_eq!(find(&ev, "sign_out_everywhere", "success")["user"], "alice");
    let expired = find(&ev, "session_expired", "info");
    assert_eq!(expired["user"], "alice");
    assert_eq!(expired["client"], "127.0.0.1");
    assert!(expired["request_id"].as_str().is_some(), "{expired}");
    assert!(expired["credential"].as_str().unwrap().starts_with("s:"));
    find(&ev, "config_reload", "success");
    find(&ev, "config_reload", "failure");
    assert!(find(&ev, "users_reload", "success")["detail"]
        .as_str()
        .unwrap()
        .starts_with("1 added"));
    // Nothing secret: no password, no typed password, no cookie or session id.
    let session_ids: Vec<&str> = [&cookie, &c2, &c3]
        .iter()
        .map(|c| c.split_once('=').unwrap().1)
        .collect();
    for secret in [PASSWORD, typed_password, "wrong-password-1"]
        .into_iter()
        .chain(session_ids)
    {
        assert!(
            !text.contains(secret),
            "audit stream leaks {secret:?}:\n{text}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn audit_records_token_revocation_in_jwt_mode() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}\n[audit]\nfile = \"{{dir}}/audit.jsonl\"\n\n{}[[routes]]\npath_prefix = \"/\"\nupstream = \"{}\"\n",
        jwt_section(dir.path()),
        user_toml("alice", &[]),
        up.url()
    );
    let gw = TestGateway::start(&toml).await;
    let cookie = login_json(&gw, "alice", PASSWORD).await;
    let token = cookie.split_once('=').unwrap().1.to_string();
    let r = client()
        .get(gw.url("/x"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    logout(&gw, &cookie, false).await;
    assert!(gw.gateway().flush_telemetry(Duration::from_secs(10)).await);
    let (text, ev) = audit_events(&gw.dir.path().join("audit.jsonl"));
    let revoked = find(&ev, "token_revoked", "success");
    assert_eq!(revoked["user"], "alice");
    assert!(revoked["credential"].as_str().unwrap().starts_with("t:"));
    assert!(
        !text.contains(&token),
        "the token leaks into the audit stream"
    );
    assert!(!text.contains(PASSWORD));
    gw.shutdown().await;
}

/// Starts the binary on `toml` (a file in `dir`); returns it, its address and its stderr.
fn binary(
    dir: &std::path::Path,
    toml: &str,
) -> (
    Binary,
    String,
    std::io::BufReader<std::process::ChildStderr>,
) {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, toml).unwrap();
    spawn_binary(&path)
}

/// SIGTERM, then everything the binary wrote to stderr until it exited.
fn stop_and_collect(
    child: Binary,
    mut err: std::io::BufReader<std::process::ChildStderr>,
) -> String {
    signal(&child, "TERM");
    let mut child = child.into_inner();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    rest
}

#[tokio::test]
async fn access_log_has_the_trace_id_and_no_secrets_and_traceparent_reaches_the_upstream() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n{}[[routes]]\npath_prefix = \"/\"\nupstream = \"{}\"\naccess = \"public\"\n",
        user_toml("alice", &[]),
        up.url()
    );
    let (child, addr, err) = binary(dir.path(), &toml);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let ts = "vendor=opaque-state";
    let r = client()
        .get(format!("http://{addr}/page?access_token=QUERYSECRET"))
        .header("traceparent", tp)
        .header("tracestate", ts)
        .header("cookie", "authgate=COOKIESECRET; other=1")
        .header("authorization", "Bearer HEADERSECRET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.one("traceparent").as_deref(), Some(tp));
    assert_eq!(seen.one("tracestate").as_deref(), Some(ts));
    let r = client()
        .post(format!("http://{addr}/.auth/login"))
        .json(&serde_json::json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let session = set_cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string();

    let out = stop_and_collect(child, err);
    let access: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    assert_eq!(
        access.len(),
        2,
        "one line per request, flushed on shutdown:\n{out}"
    );
    assert_eq!(access[0]["path"], "/page");
    assert_eq!(access[0]["status"], 200);
    assert_eq!(access[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(access[1].get("trace_id").is_none());
    // Login events reach the log stream as audit events (no [audit] file).
    assert!(out.contains("\"target\":\"audit\""), "{out}");
    for secret in [
        "QUERYSECRET",
        "COOKIESECRET",
        "HEADERSECRET",
        PASSWORD,
        &session,
    ] {
        assert!(!out.contains(secret), "the log leaks {secret:?}:\n{out}");
    }
}

#[tokio::test]
async fn access_log_with_a_consumer_that_never_reads_drops_and_counts_but_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n{}",
        public_route("builtin:whoami")
    );
    // Nobody reads stderr past the start-up lines: the pipe fills after a few hundred lines.
    let (child, addr, mut err) = binary(dir.path(), &toml);
    let metrics_addr = loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "exited");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "listening (metrics)" {
            break v["addr"].as_str().unwrap().to_string();
        }
    };
    let c = client();
    let mut dropped = 0.0;
    let mut sent = 0u64;
    // The queue holds 16,384 records; a few more than that are enough, bounded in any case.
    while dropped == 0.0 && sent < 200_000 {
        let batch: Vec<_> = (0..500)
            .map(|_| {
                let c = c.clone();
                let url = format!("http://{addr}/x");
                async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
            })
            .collect();
        let statuses = futures_util::future::join_all(batch).await;
        for s in statuses {
            assert_eq!(
                s.unwrap(),
                200,
                "requests are served while the log is stuck"
            );
        }
        sent += 500;
        if sent.is_multiple_of(5000) {
            let text = c
                .get(format!("http://{metrics_addr}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let s = parse_metrics(&text);
            dropped = value(
                &s,
                "authgate_log_lines_dropped_total",
                &[("stream", "access")],
            );
        }
    }
    assert!(dropped > 0.0, "no drop counted after {sent} requests");
    drop(err);
    drop(child);
}

#[tokio::test]
async fn audit_file_is_reopened_on_sighup_after_log_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let rotated = dir.path().join("audit.jsonl.1");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[audit]\nfile = \"{}\"\n\n{}[[routes]]\npath_prefix = \"/\"\nupstream = \"builtin:whoami\"\n",
        audit.display(),
        user_toml("alice", &[])
    );
    let (child, addr, mut err) = binary(dir.path(), &toml);
    let login = || async {
        let r = client()
            .post(format!("http://{addr}/.auth/login"))
            .json(&serde_json::json!({"username": "alice", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    login().await;
    // The writer batches (a line lands within ~20 ms): wait until the first login is in the file,
    // so that the rotation below happens after it, as logrotate's would.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .contains("\"event\":\"login\"")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first login never reached the audit file"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // What logrotate does: move the file away, then SIGHUP (postrotate).
    std::fs::rename(&audit, &rotated).unwrap();
    signal(&child, "HUP");
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0,
            "the binary exited before reloading"
        );
        if line.contains("configuration reloaded") {
            break;
        }
    }
    login().await;
    stop_and_collect(child, err);
    let (_, old) = audit_events(&rotated);
    let (_, new) = audit_events(&audit);
    let kinds = |v: &[serde_json::Value]| -> Vec<String> {
        v.iter()
            .map(|e| {
                format!(
                    "{}/{}",
                    e["event"].as_str().unwrap_or(""),
                    e["outcome"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    assert_eq!(
        kinds(&old),
        ["login/success"],
        "before the rotation: {old:?}"
    );
    assert!(
        kinds(&new).contains(&"config_reload/success".to_string())
            && kinds(&new).contains(&"login/success".to_string()),
        "after the rotation, in a new file: {new:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the reopened audit file is private");
    }
}

/// A TCP server on 127.0.0.1:0 that reads what a client sends first and then closes: an upstream
/// that dies mid-request (or, for a TLS client, during the handshake).
async fn closing_server() -> std::net::SocketAddr {
    use tokio::io::AsyncReadExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_errors_are_counted_by_kind_connect_tls_and_reset() {
    let dies = closing_server().await;
    let toml = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nname = \"refused\"\npath_prefix = \"/refused\"\nupstream = \"http://127.0.0.1:1\"\naccess = \"public\"\n\n\
         [[routes]]\nname = \"dies\"\npath_prefix = \"/dies\"\nupstream = \"http://{dies}\"\naccess = \"public\"\n\n\
         [[routes]]\nname = \"tls\"\npath_prefix = \"/tls\"\nupstream = \"https://{dies}\"\naccess = \"public\"\n"
    );
    let gw = TestGateway::start(&toml).await;
    let maddr = gw.gateway().metrics_addr().expect("metrics listener");
    for path in ["/refused/x", "/dies/x", "/tls/x"] {
        let r = client().get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 502, "{path}");
    }
    let (_, text) = scrape_metrics_at(maddr).await;
    let s = parse_metrics(&text);
    let errors = "authgate_upstream_errors_total";
    for (route, kind) in [("refused", "connect"), ("dies", "reset"), ("tls", "tls")] {
        assert_eq!(
            value(&s, errors, &[("route", route), ("kind", kind)]),
            1.0,
            "{route}: {kind}\n{text}"
        );
    }
    gw.shutdown().await;
}
