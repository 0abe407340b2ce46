//! Every rule kind over real requests: paths, methods, networks (direct peer and through trusted
//! proxies), not_networks, deny over an earlier public rule, CORS preflight bypass, and
//! `unauthenticated = "401"`. (Forward auth: tests/forward_auth.rs; explain: tests/explain.rs.)

mod support;
use support::*;

fn toml(up: &Upstream, trusted: bool, rules: &str, route_extra: &str) -> String {
    let t = if trusted {
        "trusted_proxies = [\"127.0.0.1/32\"]\n"
    } else {
        ""
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gateway.test\"\n{t}\n{}{}\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"{}\"\n{route_extra}\n{rules}",
        user_toml("alice", &["admins"]),
        user_toml("bob", &["staff"]),
        up.url()
    )
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = client().get(gw.url(path));
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn public_paths_need_no_login_and_carry_no_identity_while_the_rest_does() {
    let up = Upstream::start().await;
    let rules =
        "[[routes.rules]]\npaths = [\"/api/health\", \"/static/**\"]\naccess = \"public\"\n";
    let gw = TestGateway::start(&toml(&up, false, rules, "")).await;
    for p in ["/api/health", "/static/a/b.css", "/static"] {
        let r = get(&gw, p, &[("x-forwarded-user", "evil")]).await;
        assert_eq!(r.status(), 200, "{p}");
        assert_eq!(
            up.last().one("x-forwarded-user"),
            None,
            "{p}: spoofed identity passed"
        );
    }
    for p in ["/api/health/x", "/staticx", "/other"] {
        assert_eq!(get(&gw, p, &[]).await.status(), 401, "{p}");
    }
    let r = get(&gw, "/other", &[("accept", "text/html")]).await;
    assert_eq!(r.status(), 302, "a browser is sent to the login page");
    gw.shutdown().await;
}

#[tokio::test]
async fn methods_rule_lets_everyone_read_and_only_admins_write_in_any_letter_case() {
    let up = Upstream::start().await;
    let rules = "[[routes.rules]]\nmethods = [\"POST\", \"PUT\", \"DELETE\"]\nallow_groups = [\"admins\"]\n";
    let gw = TestGateway::start(&toml(&up, false, rules, "")).await;
    let bob = login_json(&gw, "bob", PASSWORD).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    assert_eq!(get(&gw, "/notes", &[("cookie", &bob)]).await.status(), 200);
    let post = |c: &str| {
        client()
            .post(gw.url("/notes"))
            .header("cookie", c)
            .body("x")
            .send()
    };
    assert_eq!(post(&bob).await.unwrap().status(), 403);
    assert_eq!(post(&alice).await.unwrap().status(), 200);
    assert_eq!(up.last().one("x-forwarded-user").as_deref(), Some("alice"));
    let text = raw_request(
        gw.addr,
        &format!("post /notes HTTP/1.1\r\nHost: gateway.test\r\nCookie: {bob}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(
        raw_status(&text),
        403,
        "a lower-case method is still a write: {text}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn deny_by_network_for_the_direct_peer_wins_over_an_earlier_public_rule() {
    let up = Upstream::start().await;
    let rules = "[[routes.rules]]\npaths = [\"/admin/**\"]\naccess = \"public\"\n\n\
                 [[routes.rules]]\npaths = [\"/admin/**\"]\nnetworks = [\"127.0.0.0/8\"]\naccess = \"deny\"\n";
    let gw = TestGateway::start(&toml(&up, false, rules, "")).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    let before = up.count();
    assert_eq!(get(&gw, "/admin/x", &[]).await.status(), 403);
    assert_eq!(
        get(&gw, "/admin/x", &[("cookie", &alice)]).await.status(),
        403
    );
    assert_eq!(up.count(), before, "nothing denied reached the upstream");
    gw.shutdown().await;
}

#[tokio::test]
async fn networks_through_trusted_proxies_use_the_last_forwarded_hop_and_never_a_clients_own() {
    let up = Upstream::start().await;
    let rules = "[[routes.rules]]\nnetworks = [\"10.0.0.0/8\"]\naccess = \"deny\"\n\n\
                 [[routes.rules]]\npaths = [\"/admin/**\"]\nnot_networks = [\"10.0.0.0/8\"]\naccess = \"deny\"\n";
    // Peer 127.0.0.1 is a trusted proxy: its X-Forwarded-For says who the client is.
    let gw = TestGateway::start(&toml(&up, true, rules, "access = \"public\"")).await;
    assert_eq!(
        get(&gw, "/x", &[("x-forwarded-for", "10.1.2.3")])
            .await
            .status(),
        403
    );
    assert_eq!(
        get(&gw, "/x", &[("x-forwarded-for", "192.0.2.7")])
            .await
            .status(),
        200
    );
    // The last hop decides (a client can prepend anything).
    assert_eq!(
        get(&gw, "/x", &[("x-forwarded-for", "10.9.9.9, 192.0.2.7")])
            .await
            .status(),
        200
    );
    assert_eq!(
        get(&gw, "/x", &[("x-forwarded-for", "192.0.2.7, 10.9.9.9")])
            .await
            .status(),
        403
    );
    // not_networks: /admin only from 10/8 — which the first rule denies altogether here, so
    // the admin area is closed to 192.0.2.7 by the second rule.
    assert_eq!(
        get(&gw, "/admin/x", &[("x-forwarded-for", "192.0.2.7")])
            .await
            .status(),
        403
    );
    gw.shutdown().await;
    // Not trusted: the same header is the client's own and is ignored (the peer decides).
    let gw = TestGateway::start(&toml(&up, false, rules, "access = \"public\"")).await;
    assert_eq!(
        get(&gw, "/x", &[("x-forwarded-for", "10.1.2.3")])
            .await
            .status(),
        200
    );
    assert_eq!(
        get(&gw, "/admin/x", &[]).await.status(),
        403,
        "127.0.0.1 is not in 10/8"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn not_networks_admits_the_office_network_only() {
    let up = Upstream::start().await;
    let rules = "[[routes.rules]]\npaths = [\"/admin/**\"]\nnot_networks = [\"10.0.0.0/8\"]\naccess = \"deny\"\n";
    let gw = TestGateway::start(&toml(&up, true, rules, "access = \"public\"")).await;
    assert_eq!(
        get(&gw, "/admin/x", &[("x-forwarded-for", "10.9.9.9")])
            .await
            .status(),
        200
    );
    assert_eq!(
        get(&gw, "/admin/x", &[("x-forwarded-for", "192.0.2.7")])
            .await
            .status(),
        403
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn cors_preflight_bypass_forwards_preflights_only_and_never_past_a_deny_rule() {
    let up = Upstream::start().await;
    let rules = "[[routes.rules]]\npaths = [\"/locked/**\"]\naccess = \"deny\"\n";
    let preflight = |gw: &TestGateway, path: &str, full: bool| {
        let mut r = client()
            .request(reqwest::Method::OPTIONS, gw.url(path))
            .header("origin", "https://app.example");
        if full {
            r = r.header("access-control-request-method", "POST");
        }
        r.send()
    };
    let gw = TestGateway::start(&toml(&up, false, rules, "cors_preflight = \"bypass\"")).await;
    assert_eq!(preflight(&gw, "/api", true).await.unwrap().status(), 200);
    assert_eq!(up.last().one("x-forwarded-user"), None);
    assert_eq!(
        preflight(&gw, "/api", false).await.unwrap().status(),
        401,
        "not a preflight"
    );
    assert_eq!(
        preflight(&gw, "/locked/x", true).await.unwrap().status(),
        403
    );
    gw.shutdown().await;
    let gw = TestGateway::start(&toml(&up, false, rules, "")).await;
    assert_eq!(
        preflight(&gw, "/api", true).await.unwrap().status(),
        401,
        "without the bypass a preflight needs a login like anything else"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn unauthenticated_401_never_redirects_a_browser() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&toml(&up, false, "", "unauthenticated = \"401\"")).await;
    let r = get(&gw, "/page", &[("accept", "text/html")]).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("location").is_none());
    gw.shutdown().await;
}

#[tokio::test]
async fn an_unreadable_forwarded_hop_from_a_trusted_proxy_fails_closed_where_rules_read_it() {
    let up = Upstream::start().await;
    let rules = "[[routes.rules]]\nnetworks = [\"10.0.0.0/8\"]\naccess = \"deny\"\n";
    let gw = TestGateway::start(&toml(&up, true, rules, "access = \"public\"")).await;
    // A port after the address is read as the address: still denied.
    assert_eq!(
        get(&gw, "/x", &[("x-forwarded-for", "10.1.2.3:5555")])
            .await
            .status(),
        403
    );
    assert_eq!(
        get(&gw, "/x", &[("x-forwarded-for", "[::ffff:10.1.2.3]:80")])
            .await
            .status(),
        403
    );
    // Not an address at all: neither the deny rule nor a guess (the peer) decides — 400.
    let before = up.count();
    assert_eq!(
        get(&gw, "/x", &[("x-forwarded-for", "unknown")])
            .await
            .status(),
        400
    );
    assert_eq!(up.count(), before);
    assert_eq!(
        get(&gw, "/x", &[("x-forwarded-for", "192.0.2.7:1")])
            .await
            .status(),
        200
    );
    gw.shutdown().await;
}
