//! `/.auth/verify` applying the route policy (`server.forward_auth_policy`), the headers no
//! upstream ever gets, and globs seeing the path as apps decode it — over real sockets.

mod support;
use support::*;

fn gateway_toml(up: &Upstream, policy: bool) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gateway.test\"\ntrusted_proxies = [\"127.0.0.1/32\"]\nforward_auth_policy = {policy}\n\n{}{}\
         [[routes]]\nhost = \"app.test\"\nupstream = \"{u}\"\n\n\
         [[routes.rules]]\npaths = [\"/health\"]\naccess = \"public\"\n\n\
         [[routes.rules]]\npaths = [\"/v1/x:delete\", \"/admin/**\"]\naccess = \"deny\"\n\n\
         [[routes.rules]]\nmethods = [\"POST\"]\nallow_groups = [\"admins\"]\n",
        user_toml("alice", &["admins"]),
        user_toml("bob", &["staff"]),
        u = up.url()
    )
}

async fn verify(
    gw: &TestGateway,
    cookie: Option<&str>,
    headers: &[(&str, &str)],
    query: &str,
) -> u16 {
    let mut r = client().get(gw.url(&format!("/.auth/verify{query}")));
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    r.send().await.unwrap().status().as_u16()
}

fn described<'a>(method: &'a str, uri: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("x-forwarded-method", method),
        ("x-forwarded-host", "app.test"),
        ("x-forwarded-uri", uri),
    ]
}

#[tokio::test]
async fn verify_ignores_a_described_request_unless_forward_auth_policy_is_on() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&gateway_toml(&up, false)).await;
    // A client's own X-Forwarded-Uri: /health, passed through a proxy, must not make it public.
    assert_eq!(
        verify(&gw, None, &described("GET", "/health"), "").await,
        401
    );
    let bob = login_json(&gw, "bob", PASSWORD).await;
    // Nor can it make a deny rule apply: the credential alone decides.
    assert_eq!(
        verify(&gw, Some(&bob), &described("GET", "/admin/x"), "").await,
        200
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn verify_with_forward_auth_policy_applies_the_rules_to_the_described_request() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&gateway_toml(&up, true)).await;
    let bob = login_json(&gw, "bob", PASSWORD).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    assert_eq!(
        verify(&gw, None, &described("GET", "/health"), "").await,
        200
    );
    assert_eq!(verify(&gw, None, &described("GET", "/app"), "").await, 401);
    assert_eq!(
        verify(&gw, Some(&alice), &described("GET", "/admin/x"), "").await,
        403
    );
    assert_eq!(
        verify(&gw, Some(&bob), &described("POST", "/notes"), "").await,
        403
    );
    assert_eq!(
        verify(&gw, Some(&alice), &described("POST", "/notes"), "").await,
        200
    );
    assert_eq!(
        verify(&gw, Some(&bob), &described("GET", "/notes"), "").await,
        200
    );
    // Percent-encoded as an app would decode it: still the deny rule.
    assert_eq!(
        verify(&gw, Some(&alice), &described("GET", "/v1/x%3Adelete"), "").await,
        403
    );
    // A public rule does not waive the verify URL's own lists.
    assert_eq!(
        verify(
            &gw,
            None,
            &described("GET", "/health"),
            "?allow_groups=admins"
        )
        .await,
        401
    );
    assert_eq!(
        verify(
            &gw,
            Some(&bob),
            &described("GET", "/health"),
            "?allow_groups=admins"
        )
        .await,
        403
    );
    // All three headers, exactly once each, or 400.
    let partial = [("x-forwarded-uri", "/health")];
    assert_eq!(verify(&gw, None, &partial, "").await, 400);
    let text = raw_request(
        gw.addr,
        "GET /.auth/verify HTTP/1.1\r\nHost: gateway.test\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Host: app.test\r\nX-Forwarded-Uri: /health\r\nX-Forwarded-Uri: /admin/x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&text), 400, "two X-Forwarded-Uri values: {text}");
    assert_eq!(
        verify(&gw, None, &described("GET", "/a/%2e%2e%2fx"), "").await,
        400
    );
    gw.shutdown().await;
}

#[test]
fn forward_auth_policy_without_trusted_proxies_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gateway.toml");
    std::fs::write(
        &p,
        "[server]\nforward_auth_policy = true\n\n[[routes]]\nupstream = \"builtin:whoami\"\n",
    )
    .unwrap();
    let err = authgate::Config::load(&p).unwrap_err().to_string();
    assert!(err.contains("server.forward_auth_policy"), "{err}");
}

#[tokio::test]
async fn rewrite_and_method_override_headers_never_reach_the_upstream_and_deny_sees_decoded_paths()
{
    let up = Upstream::start().await;
    let gw = TestGateway::start(&gateway_toml(&up, false)).await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    let r = client()
        .get(gw.url("/notes"))
        .header("host", "app.test")
        .header("cookie", &alice)
        .header("x-original-url", "/admin/x")
        .header("x-rewrite-url", "/admin/x")
        .header("x-http-method-override", "DELETE")
        .header("x_http_method", "DELETE")
        .header("x-method-override", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    for h in [
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x_http_method",
        "x-method-override",
    ] {
        assert_eq!(seen.one(h), None, "{h} reached the upstream");
    }
    // `%3A` is `:` to the app: the deny rule on /v1/x:delete holds.
    let before = up.count();
    let r = client()
        .delete(gw.url("/v1/x%3Adelete"))
        .header("host", "app.test")
        .header("cookie", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // And a trailing slash does not slip past /admin/**'s neighbour rules either.
    let r = client()
        .get(gw.url("/health/"))
        .header("host", "app.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "/health/ is /health to the public rule");
    assert_eq!(up.count(), before + 1);
    gw.shutdown().await;
}
