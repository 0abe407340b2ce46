//! Per-route access rules (`[[routes.rules]]`, `cors_preflight`, `unauthenticated`) over real
//! sockets: public paths under a protected route, method rules, deny rules on the client network
//! (the socket peer, or the last `X-Forwarded-For` hop from a trusted proxy), CORS preflights,
//! 401-only routes, `/.auth/verify` deciding for the request a trusted proxy describes, and the
//! configuration errors of bad or shadowed rules.

mod support;
use support::*;

use authgate::config::ConfigError;

/// `[server]` on an ephemeral port with extra server keys.
fn server(extra: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gateway.test\"\n{extra}\n\n")
}

/// alice is in `admins`, bob in `staff`.
fn users() -> String {
    format!(
        "{}{}",
        user_toml("alice", &["admins"]),
        user_toml("bob", &["staff"])
    )
}

/// A request to the gateway as an API client (`Accept: application/json`), optionally logged in.
fn req(
    gw: &TestGateway,
    method: &str,
    path: &str,
    cookie: Option<&str>,
) -> reqwest::RequestBuilder {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = client()
        .request(m, gw.url(path))
        .header("accept", "application/json");
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    r
}

/// Status of `method path` as an API client, optionally logged in.
async fn status(gw: &TestGateway, method: &str, path: &str, cookie: Option<&str>) -> u16 {
    req(gw, method, path, cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Status of `GET path` from a trusted proxy saying the client is `xff` (`X-Forwarded-For`).
async fn status_from(gw: &TestGateway, path: &str, cookie: Option<&str>, xff: &str) -> u16 {
    req(gw, "GET", path, cookie)
        .header("x-forwarded-for", xff)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The identity headers no public request may carry to the upstream.
const IDENTITY: [&str; 4] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
];

fn assert_no_identity(seen: &Seen, what: &str) {
    for h in IDENTITY {
        assert_eq!(seen.one(h), None, "{what}: {h} reached the upstream");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Public paths under a protected route

fn public_paths_config(up: &Upstream) -> String {
    format!(
        "{}[[routes]]\nupstream = \"{}\"\naccess = \"authenticated\"\n\n\
         [[routes.rules]]\npaths = [\"/api/health\", \"/static/**\"]\naccess = \"public\"\n",
        users(),
        up.url()
    )
}

#[tokio::test]
async fn public_rule_paths_reach_the_upstream_without_login_or_identity_headers() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_paths_config(&up)).await;
    for path in [
        "/api/health",
        "/static/a/b.css",
        "/static",
        "/api/health;jsessionid=1",
    ] {
        let before = up.count();
        let r = req(&gw, "GET", path, None)
            .header("x-forwarded-user", "evil")
            .header("x-forwarded-email", "evil@example.com")
            .header("x-forwarded-groups", "admins")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} is public");
        assert_eq!(up.count(), before + 1, "{path} reached the upstream");
        let seen = up.last();
        assert_eq!(seen.uri, path);
        assert_no_identity(&seen, path);
    }
    // Logged in, a public path still carries no identity: public means "no identity".
    let alice = login_json(&gw, "alice", PASSWORD).await;
    assert_eq!(status(&gw, "GET", "/api/health", Some(&alice)).await, 200);
    assert_no_identity(&up.last(), "/api/health logged in");
    gw.shutdown().await;
}

#[tokio::test]
async fn paths_outside_the_public_rule_need_a_login_401_for_apis_302_for_browsers() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&public_paths_config(&up)).await;
    // Neighbours of the public globs are not public: a glob matches whole segments.
    for path in [
        "/other",
        "/api/health/x",
        "/api/healthz",
        "/staticx",
        "/staticx/a.css",
        "/api",
    ] {
        assert_eq!(
            status(&gw, "GET", path, None).await,
            401,
            "{path} must need a login"
        );
    }
    assert_eq!(
        up.count(),
        0,
        "nothing unauthenticated reached the upstream"
    );

    // Browser navigation is sent to the login page with the way back.
    let r = client()
        .get(gw.url("/other?x=1"))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.contains("/.auth/login?rd="), "{loc}");
    assert!(loc.contains("other"), "{loc}");
    // A POST asking for HTML is never redirected (its body would be lost).
    let r = client()
        .post(gw.url("/other"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(up.count(), 0);

    // Logged in, the route's own policy admits and identifies.
    let bob = login_json(&gw, "bob", PASSWORD).await;
    assert_eq!(status(&gw, "GET", "/other", Some(&bob)).await, 200);
    assert_eq!(up.last().one("x-forwarded-user").as_deref(), Some("bob"));
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2. A methods rule with its own allow list

#[tokio::test]
async fn methods_rule_lets_everyone_read_and_only_admins_write() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}[[routes]]\nupstream = \"{}\"\n\n\
         [[routes.rules]]\nmethods = [\"POST\", \"PUT\", \"PATCH\", \"DELETE\"]\nallow_groups = [\"admins\"]\n",
        users(),
        up.url()
    ))
    .await;
    let bob = login_json(&gw, "bob", PASSWORD).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;

    assert_eq!(status(&gw, "GET", "/notes", Some(&bob)).await, 200);
    assert_eq!(up.last().one("x-forwarded-user").as_deref(), Some("bob"));

    let before = up.count();
    for m in ["POST", "PUT", "PATCH", "DELETE"] {
        assert_eq!(
            status(&gw, m, "/notes", Some(&bob)).await,
            403,
            "{m} by a non-admin"
        );
        assert_eq!(
            status(&gw, m, "/notes", None).await,
            401,
            "{m} not logged in"
        );
    }
    assert_eq!(up.count(), before, "no refused write reached the upstream");

    let r = req(&gw, "POST", "/notes", Some(&alice))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(seen.body_len, 5);

    // A lowercase method is the same method to the rules (some apps fold it).
    let raw = |cookie: &str| {
        format!(
            "post /notes HTTP/1.1\r\nHost: gateway.test\r\nCookie: {cookie}\r\nAccept: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    let before = up.count();
    let text = raw_request(gw.addr, &raw(&bob)).await;
    assert_eq!(raw_status(&text), 403, "lowercase post by bob: {text}");
    assert_eq!(up.count(), before);
    let text = raw_request(gw.addr, &raw(&alice)).await;
    assert_eq!(raw_status(&text), 200, "lowercase post by alice: {text}");
    assert_eq!(up.count(), before + 1);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Deny rules on the socket peer's network

#[tokio::test]
async fn deny_rule_on_the_peer_network_refuses_everyone_even_after_a_matching_public_rule() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}[[routes]]\nupstream = \"{}\"\n\n\
         [[routes.rules]]\npaths = [\"/open/**\"]\naccess = \"public\"\n\n\
         [[routes.rules]]\npaths = [\"/open/secret\"]\nnetworks = [\"127.0.0.0/8\"]\naccess = \"deny\"\n\n\
         [[routes.rules]]\npaths = [\"/blocked/**\"]\nnetworks = [\"127.0.0.0/8\"]\naccess = \"deny\"\n\n\
         [[routes.rules]]\npaths = [\"/elsewhere/**\"]\nnetworks = [\"192.0.2.0/24\"]\naccess = \"deny\"\n",
        users(),
        up.url()
    ))
    .await;
    let alice = login_json(&gw, "alice", PASSWORD).await;

    for (m, path) in [
        ("GET", "/blocked"),
        ("GET", "/blocked/x"),
        ("POST", "/blocked/x"),
        ("GET", "/open/secret"),
    ] {
        assert_eq!(
            status(&gw, m, path, None).await,
            403,
            "{m} {path} anonymous"
        );
        assert_eq!(
            status(&gw, m, path, Some(&alice)).await,
            403,
            "{m} {path} as admin"
        );
    }
    // A browser is not sent to log in where a login would not help.
    let r = client()
        .get(gw.url("/blocked/x"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(up.count(), 0, "no denied request reached the upstream");

    // The earlier public rule still decides where the deny rule does not match.
    assert_eq!(status(&gw, "GET", "/open/page", None).await, 200);
    assert_no_identity(&up.last(), "/open/page");
    // A deny rule for another network does not match 127.0.0.1: the route's login applies.
    assert_eq!(status(&gw, "GET", "/elsewhere/x", None).await, 401);
    assert_eq!(status(&gw, "GET", "/elsewhere/x", Some(&alice)).await, 200);
    assert_eq!(up.last().one("x-forwarded-user").as_deref(), Some("alice"));
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Networks through trusted proxies

fn network_rules(up: &Upstream, server_extra: &str) -> String {
    format!(
        "{}{}[[routes]]\nupstream = \"{}\"\n\n\
         [[routes.rules]]\npaths = [\"/lan/**\"]\nnetworks = [\"10.0.0.0/8\"]\naccess = \"deny\"\n\n\
         [[routes.rules]]\npaths = [\"/admin/**\"]\nnot_networks = [\"10.0.0.0/8\"]\naccess = \"deny\"\n",
        server(server_extra),
        users(),
        up.url()
    )
}

#[tokio::test]
async fn networks_deny_reads_the_last_forwarded_for_hop_from_a_trusted_proxy() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&network_rules(&up, "trusted_proxies = [\"127.0.0.1/32\"]")).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    let a = Some(alice.as_str());

    assert_eq!(status_from(&gw, "/lan/x", a, "10.1.2.3").await, 403);
    assert_eq!(status_from(&gw, "/lan/x", None, "10.1.2.3").await, 403);
    assert_eq!(
        status_from(&gw, "/lan/x", a, "192.0.2.7, 10.1.2.3").await,
        403,
        "the last hop is the client the proxy saw"
    );
    let before = up.count();
    assert_eq!(status_from(&gw, "/lan/x", a, "192.0.2.7").await, 200);
    assert_eq!(up.count(), before + 1);
    assert_eq!(up.last().one("x-forwarded-user").as_deref(), Some("alice"));
    // A spoofed first hop does not matter: the last one (added by the proxy) decides.
    assert_eq!(
        status_from(&gw, "/lan/x", a, "10.1.2.3, 192.0.2.7").await,
        200
    );
    // Without X-Forwarded-For, the peer (127.0.0.1) is the client.
    assert_eq!(status(&gw, "GET", "/lan/x", a).await, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored_by_network_rules() {
    let up = Upstream::start().await;
    // No trusted proxies at all, then trusted proxies that do not include the peer.
    for extra in ["", "trusted_proxies = [\"192.0.2.0/24\"]"] {
        let gw = TestGateway::start(&network_rules(&up, extra)).await;
        let alice = login_json(&gw, "alice", PASSWORD).await;
        let a = Some(alice.as_str());
        let before = up.count();
        assert_eq!(
            status_from(&gw, "/lan/x", a, "10.1.2.3").await,
            200,
            "[{extra}]: the client's own X-Forwarded-For is not believed"
        );
        assert_eq!(up.count(), before + 1);
        let xff = up.last().all("x-forwarded-for").join(",");
        assert!(
            !xff.contains("10.1.2.3"),
            "[{extra}]: the client's X-Forwarded-For reached the upstream: {xff}"
        );
        // The not_networks rule sees 127.0.0.1 too, whatever the client claims.
        assert_eq!(
            status_from(&gw, "/admin/x", a, "10.9.9.9").await,
            403,
            "[{extra}]"
        );
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn not_networks_deny_admits_only_clients_inside_the_listed_network() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&network_rules(&up, "trusted_proxies = [\"127.0.0.1/32\"]")).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    let a = Some(alice.as_str());

    let before = up.count();
    assert_eq!(status_from(&gw, "/admin/x", a, "192.0.2.7").await, 403);
    assert_eq!(status_from(&gw, "/admin", a, "192.0.2.7").await, 403);
    assert_eq!(status_from(&gw, "/admin/x", None, "192.0.2.7").await, 403);
    // The peer itself (127.0.0.1) is outside 10.0.0.0/8 as well.
    assert_eq!(status(&gw, "GET", "/admin/x", a).await, 403);
    assert_eq!(up.count(), before, "no denied request reached the upstream");

    assert_eq!(status_from(&gw, "/admin/x", a, "10.9.9.9").await, 200);
    assert_eq!(up.last().one("x-forwarded-user").as_deref(), Some("alice"));
    // Admitted by the network, still not public: the route's login applies.
    assert_eq!(status_from(&gw, "/admin/x", None, "10.9.9.9").await, 401);
    // Other paths are not restricted by network.
    assert_eq!(status_from(&gw, "/other", a, "192.0.2.7").await, 200);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 5. CORS preflights

async fn options(
    gw: &TestGateway,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut r = req(gw, "OPTIONS", path, None).header("host", host);
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    r.send().await.unwrap()
}

const PREFLIGHT: [(&str, &str); 2] = [
    ("origin", "https://spa.example.com"),
    ("access-control-request-method", "POST"),
];

#[tokio::test]
async fn cors_preflight_bypass_forwards_preflights_without_login_but_never_past_a_deny_rule() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}[[routes]]\nhost = \"bypass.test\"\nupstream = \"{u}\"\ncors_preflight = \"bypass\"\n\n\
         [[routes.rules]]\npaths = [\"/blocked/**\"]\naccess = \"deny\"\n\n\
         [[routes]]\nhost = \"strict.test\"\nupstream = \"{u}\"\n",
        users(),
        u = up.url()
    ))
    .await;

    let r = options(&gw, "bypass.test", "/api/x", &PREFLIGHT).await;
    assert_eq!(r.status(), 200, "a preflight passes without login");
    assert_eq!(up.count(), 1);
    let seen = up.last();
    assert_eq!(seen.method, "OPTIONS");
    assert_eq!(seen.uri, "/api/x");
    assert_eq!(
        seen.one("origin").as_deref(),
        Some("https://spa.example.com")
    );
    assert_no_identity(&seen, "preflight");

    // Not a preflight: a plain OPTIONS, or one header missing, needs a login.
    assert_eq!(
        options(&gw, "bypass.test", "/api/x", &[]).await.status(),
        401
    );
    assert_eq!(
        options(&gw, "bypass.test", "/api/x", &PREFLIGHT[..1])
            .await
            .status(),
        401
    );
    assert_eq!(
        options(&gw, "bypass.test", "/api/x", &PREFLIGHT[1..])
            .await
            .status(),
        401
    );
    // Other methods with the same headers are not preflights either.
    let r = req(&gw, "POST", "/api/x", None)
        .header("host", "bypass.test")
        .header(PREFLIGHT[0].0, PREFLIGHT[0].1)
        .header(PREFLIGHT[1].0, PREFLIGHT[1].1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A deny rule still denies a preflight.
    assert_eq!(
        options(&gw, "bypass.test", "/blocked/x", &PREFLIGHT)
            .await
            .status(),
        403
    );
    // The default (authenticate): a preflight needs a login like anything else.
    assert_eq!(
        options(&gw, "strict.test", "/api/x", &PREFLIGHT)
            .await
            .status(),
        401
    );
    assert_eq!(
        up.count(),
        1,
        "only the bypassed preflight reached the upstream"
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 6. unauthenticated = "401"

#[tokio::test]
async fn unauthenticated_401_route_answers_browsers_401_instead_of_redirecting() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}[[routes]]\nhost = \"api.test\"\nupstream = \"{u}\"\nunauthenticated = \"401\"\n\n\
         [[routes]]\nhost = \"web.test\"\nupstream = \"{u}\"\n",
        users(),
        u = up.url()
    ))
    .await;
    let browse = |host: &'static str, method: reqwest::Method| {
        client()
            .request(method, gw.url("/page"))
            .header("host", host)
            .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
            .send()
    };
    for m in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let r = browse("api.test", m.clone()).await.unwrap();
        assert_eq!(r.status(), 401, "{m} on the 401 route");
        assert!(r.headers().get("location").is_none());
        let r = browse("web.test", m.clone()).await.unwrap();
        assert_eq!(r.status(), 302, "{m} on the redirect route");
        let loc = r.headers()["location"].to_str().unwrap();
        assert!(loc.contains("/.auth/login?rd="), "{loc}");
    }
    // A login still works on the 401 route.
    let bob = login_json(&gw, "bob", PASSWORD).await;
    let r = client()
        .get(gw.url("/page"))
        .header("host", "api.test")
        .header("accept", "text/html")
        .header("cookie", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 7. /.auth/verify for the request a trusted proxy describes

fn verify_config(server_extra: &str, up: &Upstream) -> String {
    format!(
        "{}{}[[routes]]\nname = \"a\"\nhost = \"a.test\"\nupstream = \"{u}\"\n\n\
         [[routes.rules]]\npaths = [\"/health\"]\naccess = \"public\"\n\n\
         [[routes.rules]]\npaths = [\"/admin/**\"]\naccess = \"deny\"\n\n\
         [[routes.rules]]\nmethods = [\"POST\", \"PUT\", \"PATCH\", \"DELETE\"]\nallow_groups = [\"admins\"]\n\n\
         [[routes]]\nname = \"b\"\nhost = \"b.test\"\nupstream = \"{u}\"\n\n\
         [[routes.rules]]\npaths = [\"/health\"]\naccess = \"deny\"\n",
        server(server_extra),
        users(),
        u = up.url()
    )
}

/// `GET /.auth/verify` describing `method host uri`; returns the status and the
/// `X-Forwarded-User` answered.
async fn verify(
    gw: &TestGateway,
    cookie: Option<&str>,
    method: &str,
    host: &str,
    uri: &str,
) -> (u16, Option<String>) {
    let mut r = client()
        .get(gw.url("/.auth/verify"))
        .header("x-forwarded-method", method)
        .header("x-forwarded-host", host)
        .header("x-forwarded-uri", uri);
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    let r = r.send().await.unwrap();
    let user = r
        .headers()
        .get("x-forwarded-user")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), user)
}

#[tokio::test]
async fn verify_from_a_trusted_proxy_applies_the_policy_of_the_described_host_and_path() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&verify_config(
        "trusted_proxies = [\"127.0.0.1/32\"]\nforward_auth_policy = true",
        &up,
    ))
    .await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    let bob = login_json(&gw, "bob", PASSWORD).await;
    let (a, b) = (Some(alice.as_str()), Some(bob.as_str()));

    // Public rule of a.test: no cookie needed, no identity answered (even with a cookie).
    assert_eq!(
        verify(&gw, None, "GET", "a.test", "/health").await,
        (200, None)
    );
    assert_eq!(
        verify(&gw, None, "GET", "a.test", "/health?probe=1").await,
        (200, None)
    );
    assert_eq!(
        verify(&gw, b, "GET", "a.test", "/health").await,
        (200, None)
    );
    // The same path on b.test is that route's: denied, logged in or not.
    assert_eq!(verify(&gw, None, "GET", "b.test", "/health").await.0, 403);
    assert_eq!(verify(&gw, a, "GET", "b.test", "/health").await.0, 403);
    assert_eq!(verify(&gw, a, "GET", "b.test:8443", "/health").await.0, 403);
    // Deny rule of a.test.
    assert_eq!(verify(&gw, a, "GET", "a.test", "/admin/x").await.0, 403);
    assert_eq!(verify(&gw, None, "GET", "a.test", "/admin/x").await.0, 403);
    // Methods rule: writes for admins only; reads for anyone logged in.
    assert_eq!(verify(&gw, b, "POST", "a.test", "/notes").await.0, 403);
    assert_eq!(verify(&gw, b, "post", "a.test", "/notes").await.0, 403);
    assert_eq!(verify(&gw, b, "DELETE", "a.test", "/notes/1").await.0, 403);
    assert_eq!(
        verify(&gw, a, "POST", "a.test", "/notes").await,
        (200, Some("alice".to_string()))
    );
    assert_eq!(
        verify(&gw, b, "GET", "a.test", "/notes").await,
        (200, Some("bob".to_string()))
    );
    assert_eq!(
        verify(&gw, None, "GET", "a.test", "/notes").await,
        (401, None)
    );
    assert_eq!(
        verify(&gw, None, "POST", "a.test", "/notes").await,
        (401, None)
    );
    // Malformed descriptions are refused, never guessed at.
    for bad in ["/a/%2e%2e%2fx", "/x/%2F", "/x/%zz"] {
        assert_eq!(
            verify(&gw, a, "GET", "a.test", bad).await.0,
            400,
            "X-Forwarded-Uri {bad}"
        );
    }
    assert_eq!(up.count(), 0, "verify never proxies");
    gw.shutdown().await;
}

#[tokio::test]
async fn verify_from_an_untrusted_peer_ignores_the_described_request() {
    let up = Upstream::start().await;
    // No trusted proxies at all; then the policy on, but the peer (127.0.0.1) not trusted.
    for extra in [
        "",
        "trusted_proxies = [\"192.0.2.0/24\"]\nforward_auth_policy = true",
    ] {
        let gw = TestGateway::start(&verify_config(extra, &up)).await;
        let bob = login_json(&gw, "bob", PASSWORD).await;
        let b = Some(bob.as_str());
        // The public rule cannot be claimed by a client: no cookie, 401.
        assert_eq!(
            verify(&gw, None, "GET", "a.test", "/health").await,
            (401, None),
            "[{extra}]"
        );
        // Nor can a deny rule or the methods rule apply: the credential alone decides.
        let ok = (200, Some("bob".to_string()));
        assert_eq!(
            verify(&gw, b, "GET", "a.test", "/admin/x").await,
            ok,
            "[{extra}]"
        );
        assert_eq!(
            verify(&gw, b, "GET", "b.test", "/health").await,
            ok,
            "[{extra}]"
        );
        assert_eq!(
            verify(&gw, b, "POST", "a.test", "/notes").await,
            ok,
            "[{extra}]"
        );
        // A malformed description is stripped with the rest, not a 400.
        assert_eq!(
            verify(&gw, b, "GET", "a.test", "/x/%2F").await,
            ok,
            "[{extra}]"
        );
        gw.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Configuration errors

/// Loads `routes` (TOML text after a minimal `[server]`) through `Config::load` from a file.
fn load(
    routes: &str,
) -> (
    Result<authgate::Config, authgate::config::ConfigErrors>,
    String,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n\n{}{routes}", users());
    std::fs::write(&path, &text).unwrap();
    (authgate::Config::load(&path), text)
}

/// The error `Config::load` gives for `key`; checks that its Display names file and key.
fn load_error(routes: &str, key: &str) -> (ConfigError, String) {
    let (r, text) = load(routes);
    let errs = match r {
        Ok(_) => panic!("configuration accepted:\n{text}"),
        Err(e) => e,
    };
    let all = errs.to_string();
    let e = errs
        .0
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no error for key {key}; got:\n{all}"))
        .clone();
    let shown = e.to_string();
    assert!(
        shown.contains("gateway.toml") && shown.contains(&format!(": {key}")),
        "{shown}"
    );
    assert!(all.contains(&shown), "{all}");
    (e, text)
}

/// The 1-based line of the `n`th (0-based) occurrence of `needle` in `text`.
fn line_of_nth(text: &str, needle: &str, n: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(n)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("{needle} #{n} not in the text"))
}

const ROUTE: &str = "[[routes]]\nupstream = \"builtin:whoami\"\n\n";

#[test]
fn config_rule_shadowed_by_an_earlier_broader_rule_is_refused_with_key_and_line() {
    let (e, text) = load_error(
        &format!(
            "{ROUTE}[[routes.rules]]\npaths = [\"/api/**\"]\n\n\
             [[routes.rules]]\npaths = [\"/api/admin/**\"]\nallow_groups = [\"admins\"]\n"
        ),
        "routes[0].rules[1]",
    );
    assert!(e.message.contains("can never decide"), "{e}");
    assert!(
        e.message.contains("routes[0].rules[0]"),
        "names the rule that shadows it: {e}"
    );
    let shown = e.to_string();
    assert!(shown.contains("can never decide"), "{shown}");
    let rules1 = line_of_nth(&text, "[[routes.rules]]", 1);
    assert_eq!(
        e.line,
        Some(rules1),
        "the line of routes[0].rules[1]: {shown}"
    );
    assert!(
        shown.contains(&format!("gateway.toml:{rules1}: routes[0].rules[1]: ")),
        "{shown}"
    );

    // The narrower rule first is what was meant, and it loads.
    let (ok, text) = load(&format!(
        "{ROUTE}[[routes.rules]]\npaths = [\"/api/admin/**\"]\nallow_groups = [\"admins\"]\n\n\
         [[routes.rules]]\npaths = [\"/api/**\"]\n"
    ));
    if let Err(e) = ok {
        panic!("narrower rule first must load: {e}\n{text}");
    }
}

#[test]
fn config_rule_covered_by_a_later_deny_rule_is_refused() {
    let (e, _) = load_error(
        &format!(
            "{ROUTE}[[routes.rules]]\npaths = [\"/x/y\"]\nallow_groups = [\"admins\"]\n\n\
             [[routes.rules]]\npaths = [\"/x/**\"]\naccess = \"deny\"\n"
        ),
        "routes[0].rules[0]",
    );
    assert!(e.message.contains("can never decide"), "{e}");
    assert!(e.message.contains("routes[0].rules[1]"), "{e}");
}

#[test]
fn config_invalid_glob_is_refused_naming_the_path_entry() {
    for bad in ["/a**", "api/x", "/a/?"] {
        let (e, _) = load_error(
            &format!(
                "{ROUTE}[[routes.rules]]\npaths = [\"/ok/**\", {bad:?}]\naccess = \"public\"\n"
            ),
            "routes[0].rules[0].paths[1]",
        );
        assert!(e.message.contains(bad), "{bad}: {e}");
    }
    let (e, text) = load_error(
        &format!("{ROUTE}[[routes.rules]]\npaths = [\"/a**\"]\naccess = \"public\"\n"),
        "routes[0].rules[0].paths[0]",
    );
    assert!(e.message.contains("/a**"), "{e}");
    assert_eq!(e.line, Some(line_of_nth(&text, "paths = ", 0)), "{e}");
}

#[test]
fn config_bad_network_is_refused_naming_the_entry() {
    let (e, _) = load_error(
        &format!("{ROUTE}[[routes.rules]]\nnetworks = [\"10.0.0.0/33\"]\naccess = \"deny\"\n"),
        "routes[0].rules[0].networks[0]",
    );
    assert!(e.message.contains("10.0.0.0/33"), "{e}");
    let (e, _) = load_error(
        &format!(
            "{ROUTE}[[routes.rules]]\npaths = [\"/a\"]\nnot_networks = [\"192.0.2.0/24\", \"nope\"]\naccess = \"deny\"\n"
        ),
        "routes[0].rules[0].not_networks[1]",
    );
    assert!(e.message.contains("nope"), "{e}");
}

#[test]
fn config_public_or_deny_rule_with_allow_lists_is_refused() {
    for access in ["public", "deny"] {
        let (e, _) = load_error(
            &format!(
                "{ROUTE}[[routes.rules]]\npaths = [\"/a\"]\naccess = \"{access}\"\nallow_groups = [\"admins\"]\n"
            ),
            "routes[0].rules[0].access",
        );
        assert!(e.message.contains("allow_groups"), "{access}: {e}");
    }
}

#[test]
fn config_other_rule_mistakes_are_refused_with_their_keys() {
    for (routes, key) in [
        (
            format!("{ROUTE}[[routes.rules]]\nmethods = [\"PO ST\"]\n"),
            "routes[0].rules[0].methods[0]",
        ),
        (
            format!("{ROUTE}[[routes.rules]]\npaths = []\n"),
            "routes[0].rules[0].paths",
        ),
        (
            format!("{ROUTE}[[routes.rules]]\npaths = [\"/a\"]\naccess = \"open\"\n"),
            "routes[0].rules[0].access",
        ),
        (
            "[[routes]]\nupstream = \"builtin:whoami\"\ncors_preflight = \"skip\"\n".to_string(),
            "routes[0].cors_preflight",
        ),
        (
            "[[routes]]\nupstream = \"builtin:whoami\"\nunauthenticated = \"403\"\n".to_string(),
            "routes[0].unauthenticated",
        ),
    ] {
        load_error(&routes, key);
    }
    // And what those keys accept, loads.
    let (ok, text) = load(
        "[[routes]]\nupstream = \"builtin:whoami\"\ncors_preflight = \"bypass\"\nunauthenticated = \"401\"\n\n\
         [[routes.rules]]\npaths = [\"/a\"]\nmethods = [\"post\", \"PROPFIND\"]\nnetworks = [\"10.0.0.0/8\", \"192.0.2.1\"]\naccess = \"deny\"\n",
    );
    if let Err(e) = ok {
        panic!("valid rules refused: {e}\n{text}");
    }
}

#[test]
fn check_config_exits_1_and_prints_the_shadowed_rule_with_file_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n{ROUTE}[[routes.rules]]\npaths = [\"/api/**\"]\n\n\
         [[routes.rules]]\npaths = [\"/api/admin/**\"]\nallow_groups = [\"admins\"]\n"
    );
    std::fs::write(&path, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{printed}");
    let line = line_of_nth(&text, "[[routes.rules]]", 1);
    assert!(
        printed.lines().any(
            |l| l.contains(&format!("gateway.toml:{line}: routes[0].rules[1]: "))
                && l.contains("can never decide")
        ),
        "{printed}"
    );
}

// ---------------------------------------------------------------------------------------------
// Rules on the full path under a path_prefix; rule allow lists replace the route's

#[tokio::test]
async fn rules_match_the_full_path_and_their_allow_lists_replace_the_routes() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}[[routes]]\npath_prefix = \"/app\"\nupstream = \"{u}\"\naccess = \"public\"\n\n\
         [[routes.rules]]\npaths = [\"/app/private/**\"]\n\n\
         [[routes.rules]]\npaths = [\"/private/**\"]\naccess = \"deny\"\n\n\
         [[routes.rules]]\npaths = [\"/app/bob/**\"]\nallow_users = [\"bob\"]\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"{u}\"\nallow_groups = [\"admins\"]\n\n\
         [[routes.rules]]\npaths = [\"/staff/**\"]\nallow_groups = [\"staff\"]\n",
        users(),
        u = up.url()
    ))
    .await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    let bob = login_json(&gw, "bob", PASSWORD).await;
    let (a, b) = (Some(alice.as_str()), Some(bob.as_str()));
    // (path, cookie, status, the X-Forwarded-User the upstream sees when it is reached)
    let cases: [(&str, Option<&str>, u16, Option<&str>); 10] = [
        // The public route: an authenticated rule (glob on the full path, prefix included).
        ("/app/x", None, 200, None),
        ("/app/private/x", None, 401, None),
        ("/app/private/x", a, 200, Some("alice")),
        // A rule's allow_users replace the route's (absent) lists.
        ("/app/bob/x", a, 403, None),
        ("/app/bob/x", b, 200, Some("bob")),
        // The other route: its own allow list, replaced for /staff/** by the rule's.
        ("/x", b, 403, None),
        ("/x", a, 200, Some("alice")),
        ("/staff/x", a, 403, None),
        ("/staff/x", b, 200, Some("bob")),
        // A deny rule of the /app route on "/private/**" is never seen by the / route.
        ("/private/x", a, 200, Some("alice")),
    ];
    for (path, cookie, want, user) in cases {
        let before = up.count();
        assert_eq!(
            status(&gw, "GET", path, cookie).await,
            want,
            "{path} as {user:?}"
        );
        if want == 200 {
            assert_eq!(up.count(), before + 1, "{path}");
            assert_eq!(up.last().one("x-forwarded-user").as_deref(), user, "{path}");
        } else {
            assert_eq!(up.count(), before, "{path} reached the upstream");
        }
    }
    gw.shutdown().await;
}
