//! Signing in through an external OpenID provider, end to end: a real gateway, a real upstream,
//! and a real certified OpenID Provider (panva's `oidc-provider`, tests/oidc) signing users in
//! through its login and consent pages; the browser is a cookie-keeping HTTP client.
//!
//! The gateway's public URL is `http://gateway.test`: the provider redirects the browser there,
//! and the test sends those requests to the gateway's real address instead (what DNS would do).
mod support;
use support::oidc::*;
use support::*;

use std::sync::Arc;

const PUBLIC: &str = "http://gateway.test";
const SECRET: &str = "corp-client-secret-0123456789";

/// A browser at the gateway: its own cookie jar, no automatic redirects.
struct Browser {
    http: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
    base: String,
}

impl Browser {
    fn new(gw: &TestGateway) -> Browser {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let http = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap();
        Browser {
            http,
            jar,
            base: gw.url(""),
        }
    }

    /// The same browser (same cookies) talking to another gateway behind the same public URL.
    fn at(&self, gw: &TestGateway) -> Browser {
        Browser {
            http: self.http.clone(),
            jar: self.jar.clone(),
            base: gw.url(""),
        }
    }

    /// A URL of the public origin (or a path) as the gateway's real address.
    fn local(&self, url: &str) -> String {
        match url.strip_prefix(PUBLIC) {
            Some(rest) => format!("{}{rest}", self.base),
            None if url.starts_with('/') => format!("{}{url}", self.base),
            None => url.to_string(),
        }
    }

    async fn get(&self, url: &str) -> reqwest::Response {
        self.http
            .get(self.local(url))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap()
    }

    /// The cookies this browser sends to the gateway (`a=1; b=2`).
    fn cookies(&self) -> String {
        use reqwest::cookie::CookieStore;
        self.jar
            .cookies(&self.base.parse().unwrap())
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// `/.auth/oidc/<id>/start?rd=…`: must send the browser to the provider; returns where.
    async fn start(&self, id: &str, rd: &str) -> String {
        let r = self
            .get(&format!("/.auth/oidc/{id}/start?rd={}", urlenc(rd)))
            .await;
        assert_eq!(
            r.status(),
            302,
            "start at {id}: {}",
            r.text().await.unwrap()
        );
        location(&r)
    }

    /// The whole sign-in: start, the provider's pages as `login`, the callback; returns the
    /// callback's response.
    async fn sign_in(&self, id: &str, rd: &str, login: &str) -> reqwest::Response {
        let authorize = self.start(id, rd).await;
        let back = sign_in_at_provider(&self.http, &authorize, login).await;
        assert!(
            back.starts_with(PUBLIC),
            "provider sent the browser to {back}"
        );
        self.get(&back).await
    }

    /// `GET /.auth/me` as JSON: (status, body).
    async fn me(&self) -> (u16, serde_json::Value) {
        let r = self.http.get(self.local("/.auth/me")).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location in a {}", r.status()))
        .to_str()
        .unwrap()
        .to_string()
}

fn urlenc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn callback(id: &str) -> String {
    format!("{PUBLIC}/.auth/oidc/{id}/callback")
}

/// The provider's client for the gateway's provider entry `id`.
fn client_for(id: &str) -> TestClient {
    TestClient::confidential(id, SECRET, &callback(id))
        .with_post_logout_redirect_uri(&format!("{PUBLIC}/.auth/login"))
}

/// Secret files live outside the gateway's directory, like /run/secrets.
struct Secrets(tempfile::TempDir);

impl Secrets {
    fn new() -> Secrets {
        Secrets(tempfile::tempdir().unwrap())
    }

    fn file(&self, secret: &str) -> String {
        let p = self.0.path().join(format!("secret-{}", random_token()));
        std::fs::write(&p, format!("{secret}\n")).unwrap();
        p.to_str().unwrap().to_string()
    }
}

/// One `[[auth.oidc]]` entry with the client `id` (same as its id), `extra` lines added.
fn provider_toml(secrets: &Secrets, id: &str, issuer: &str, extra: &str) -> String {
    format!(
        "[[auth.oidc]]\nid = \"{id}\"\ndisplay_name = \"{id} SSO\"\nissuer = \"{issuer}\"\n\
         client_id = \"{id}\"\nclient_secret_file = \"{}\"\ngroups_prefix = \"{id}:\"\n{extra}\n",
        secrets.file(SECRET)
    )
}

/// A gateway: `auth` (an `[auth]` section, or ""), `providers` (entries), `users` (`[[users]]`
/// blocks), a route of everything to `upstream` with `/admin/**` for the `corp:admins` group.
async fn gateway(auth: &str, providers: &str, users: &str, upstream: &Upstream) -> TestGateway {
    TestGateway::start(&format!(
        "{auth}\n{providers}\n{users}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"{}\"\n\n\
         [[routes.rules]]\npaths = [\"/admin/**\"]\nallow_groups = [\"corp:admins\"]\n",
        upstream.url()
    ))
    .await
}

/// A gateway like [`gateway`] with its own `[[routes]]` text.
async fn gateway_routes(auth: &str, providers: &str, users: &str, routes: &str) -> TestGateway {
    TestGateway::start(&format!("{auth}\n{providers}\n{users}\n{routes}")).await
}

/// The callback's answer is the redirect to where the user was going, with the credential.
async fn assert_signed_in(b: &Browser, r: reqwest::Response, rd: &str) {
    let status = r.status();
    let loc = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        status,
        303,
        "callback: {loc:?} {}",
        r.text().await.unwrap_or_default()
    );
    assert_eq!(loc.as_deref().map(|l| b.local(l)), Some(b.local(rd)));
}

#[tokio::test]
async fn sign_in_at_a_certified_provider_in_session_mode() {
    init();
    let idp = OidcProvider::start(&[client_for("corp")], false).await;
    let up = Upstream::start().await;
    let secrets = Secrets::new();
    let gw = gateway(
        "",
        &provider_toml(&secrets, "corp", &idp.issuer, "logout_at_provider = true"),
        &user_toml("dave", &["staff"]),
        &up,
    )
    .await;
    let b = Browser::new(&gw);

    // Not signed in: the app redirects to the login page, which offers the provider and the
    // password form.
    let r = b.get("/app").await;
    assert_eq!(r.status(), 302);
    let page = b.get("/.auth/login?rd=/app%3Fa%3D1%26b%3D2").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    // The link carries the destination, encoded (its `&` cannot add a parameter).
    assert!(
        html.contains("href=\"/.auth/oidc/corp/start?rd=/app%3Fa%3D1%26b%3D2\""),
        "no provider button: {html}"
    );
    assert!(html.contains("corp SSO"), "{html}");
    assert!(html.contains("name=\"password\""), "{html}");
    assert_eq!(up.count(), 0);

    let r = b.sign_in("corp", "/app", "alice").await;
    assert_signed_in(&b, r, "/app").await;

    // The app sees the provider's user with its groups (from userinfo: the ID token of this
    // provider carries only sub), prefixed; never a token.
    let r = b.get("/app").await;
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(
        seen.one("x-forwarded-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        seen.one("x-forwarded-groups").as_deref(),
        Some("corp:staff,corp:admins")
    );
    assert!(seen.one("authorization").is_none());
    let cookie_header = seen.one("cookie").unwrap_or_default();
    assert!(
        !cookie_header.contains("authgate"),
        "gateway cookies reached the app: {cookie_header}"
    );

    // The route rule for admins admits her.
    assert_eq!(b.get("/admin/panel").await.status(), 200);

    let (status, me) = b.me().await;
    assert_eq!(status, 200);
    assert_eq!(me["user"], "alice");
    assert_eq!(me["method"], "oidc");
    assert_eq!(me["provider"], "corp");
    assert_eq!(me["amr"], serde_json::json!(["ext"]));
    assert_eq!(me["name"], "Alice Example");

    // Bob is staff but not admin.
    let b2 = Browser::new(&gw);
    let r = b2.sign_in("corp", "/", "bob").await;
    assert_signed_in(&b2, r, "/").await;
    assert_eq!(b2.get("/app").await.status(), 200);
    assert_eq!(b2.get("/admin/panel").await.status(), 403);

    // Logout continues at the provider's end_session_endpoint, then the session is gone.
    let r = b
        .http
        .post(b.local("/.auth/logout"))
        .header("accept", "text/html")
        .header("origin", PUBLIC)
        .form(&[("confirm", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    let to = location(&r);
    assert!(
        to.starts_with(&idp.issuer) && to.contains("post_logout_redirect_uri="),
        "logout went to {to}"
    );
    assert_eq!(b.me().await.0, 401);
    assert_eq!(b.get("/app").await.status(), 302);
    // Bob is still signed in.
    assert_eq!(b2.get("/app").await.status(), 200);

    // A local user still signs in with the password.
    login_json(&gw, "dave", PASSWORD).await;
}

#[tokio::test]
async fn sign_in_at_a_certified_provider_in_jwt_mode() {
    init();
    // This time the provider puts the claims into the ID token itself.
    let idp = OidcProvider::start(&[client_for("corp")], true).await;
    let up = Upstream::start().await;
    let secrets = Secrets::new();
    let keydir = tempfile::tempdir().unwrap();
    let gw = gateway(
        &jwt_section(keydir.path()),
        &provider_toml(&secrets, "corp", &idp.issuer, ""),
        &user_toml("dave", &["staff"]),
        &up,
    )
    .await;
    let b = Browser::new(&gw);
    let r = b.sign_in("corp", "/admin/x?y=1", "alice").await;
    assert_signed_in(&b, r, "/admin/x?y=1").await;
    assert!(
        b.cookies().contains("eyJ"),
        "no JWT cookie: {}",
        b.cookies()
    );
    assert_eq!(b.get("/admin/x?y=1").await.status(), 200);
    let seen = up.last();
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(
        seen.one("x-forwarded-groups").as_deref(),
        Some("corp:staff,corp:admins")
    );
    let (status, me) = b.me().await;
    assert_eq!(status, 200);
    assert_eq!(me["mode"], "jwt");
    assert_eq!(me["provider"], "corp");
    assert_eq!(me["method"], "oidc");

    // Logout revokes the token (the provider is not visited: logout_at_provider is off).
    let r = b
        .http
        .post(b.local("/.auth/logout"))
        .header("accept", "application/json")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["was_logged_in"], true);
    assert!(v["end_session_url"].is_null(), "{v}");
    assert_eq!(b.me().await.0, 401);
}

#[tokio::test]
async fn two_providers_sso_only_parallel_tabs_and_replays() {
    init();
    let corp = OidcProvider::start(&[client_for("corp")], false).await;
    let partner = OidcProvider::start(&[client_for("partner")], true).await;
    let up = Upstream::start().await;
    let secrets = Secrets::new();
    let providers = format!(
        "{}{}",
        provider_toml(&secrets, "corp", &corp.issuer, ""),
        provider_toml(&secrets, "partner", &partner.issuer, "")
    );
    let gw = gateway("[auth]\npassword_login = false\n", &providers, "", &up).await;
    let b = Browser::new(&gw);

    // SSO only: two buttons, no password form, the password endpoint is gone.
    let html = b.get("/.auth/login").await.text().await.unwrap();
    assert!(html.contains("/.auth/oidc/corp/start"), "{html}");
    assert!(html.contains("/.auth/oidc/partner/start"), "{html}");
    assert!(!html.contains("name=\"password\""), "{html}");
    let r = client()
        .post(gw.url("/.auth/login"))
        .json(&serde_json::json!({"username": "x", "password": "y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Two tabs start a sign-in each (one per provider); they finish in reverse order.
    let tab1 = b.start("corp", "/one").await;
    let tab2 = b.start("partner", "/two").await;
    let back2 = sign_in_at_provider(&b.http, &tab2, "bob").await;
    let back1 = sign_in_at_provider(&b.http, &tab1, "alice").await;
    let r2 = b.get(&back2).await;
    assert_signed_in(&b, r2, "/two").await;
    assert_eq!(b.me().await.1["provider"], "partner");
    assert_eq!(b.me().await.1["user"], "bob");
    let r1 = b.get(&back1).await;
    assert_signed_in(&b, r1, "/one").await;
    let me = b.me().await.1;
    assert_eq!(me["provider"], "corp");
    assert_eq!(me["user"], "alice");

    // A replayed callback is refused (the state was spent), and changes nothing.
    let r = b.get(&back1).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("Sign-in failed"));
    assert_eq!(b.me().await.1["user"], "alice");

    // A made-up state, or none.
    let r = b
        .get(&format!(
            "{}?code=x&state=madeup&iss={}",
            callback("corp"),
            urlenc(&corp.issuer)
        ))
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(b.get(&callback("corp")).await.status(), 400);
    // An unknown provider id.
    assert_eq!(b.get("/.auth/oidc/nobody/start").await.status(), 404);
    assert_eq!(b.get("/.auth/oidc/nobody/callback").await.status(), 404);
}

#[tokio::test]
async fn the_provider_answer_is_bound_to_the_browser_and_the_provider() {
    init();
    let corp = OidcProvider::start(&[client_for("corp")], false).await;
    let partner = OidcProvider::start(&[client_for("partner")], false).await;
    let up = Upstream::start().await;
    let secrets = Secrets::new();
    let providers = format!(
        "{}{}",
        provider_toml(&secrets, "corp", &corp.issuer, ""),
        provider_toml(&secrets, "partner", &partner.issuer, "")
    );
    let gw = gateway("", &providers, "", &up).await;

    // Login CSRF: the attacker signs in as bob and makes the victim's browser open the callback.
    let attacker = Browser::new(&gw);
    let victim = Browser::new(&gw);
    assert_eq!(victim.get("/.auth/login").await.status(), 200); // it has its own binding cookie
    let authorize = attacker.start("corp", "/").await;
    let back = sign_in_at_provider(&attacker.http, &authorize, "bob").await;
    let r = victim.get(&back).await;
    assert_eq!(r.status(), 400);
    assert_eq!(victim.me().await.0, 401);
    // The state was spent by that attempt: the attacker cannot use it afterwards either.
    assert_eq!(attacker.get(&back).await.status(), 400);
    assert_eq!(attacker.me().await.0, 401);
    // A browser with no binding cookie at all.
    let authorize = attacker.start("corp", "/").await;
    let back = sign_in_at_provider(&attacker.http, &authorize, "bob").await;
    let bare = Browser::new(&gw);
    assert_eq!(bare.get(&back).await.status(), 400);

    // Mix-up: corp's answer delivered to partner's callback.
    let authorize = attacker.start("corp", "/").await;
    let back = sign_in_at_provider(&attacker.http, &authorize, "bob").await;
    let wrong = back.replace("/.auth/oidc/corp/callback", "/.auth/oidc/partner/callback");
    let r = attacker.get(&wrong).await;
    assert_eq!(r.status(), 400);
    assert_eq!(attacker.me().await.0, 401);

    // The user cancels at the provider: a clear refusal, no credential.
    let authorize = attacker.start("corp", "/").await;
    let back = cancel_at_provider(&authorize).await;
    assert!(back.contains("error=access_denied"), "{back}");
    let r = attacker.get(&back).await;
    assert_eq!(r.status(), 403);
    assert_eq!(attacker.me().await.0, 401);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn admission_rules_and_linked_users() {
    init();
    let idp = OidcProvider::start(&[client_for("corp")], false).await;
    let up = Upstream::start().await;
    let secrets = Secrets::new();
    // Only staff with an example.com address, and only people with a local entry.
    let gw = gateway(
        "",
        &provider_toml(
            &secrets,
            "corp",
            &idp.issuer,
            "allowed_groups = [\"staff\"]\nallowed_email_domains = [\"example.com\"]\nusers = \"link\"\n",
        ),
        &format!(
            "[[users]]\nusername = \"alice\"\npassword_hash = \"{}\"\ngroups = [\"local-team\"]\n",
            password_hash()
        ),
        &up,
    )
    .await;

    // Alice is linked: she becomes the local alice, with the local groups.
    let b = Browser::new(&gw);
    let r = b.sign_in("corp", "/app", "alice").await;
    assert_signed_in(&b, r, "/app").await;
    assert_eq!(b.get("/app").await.status(), 200);
    let seen = up.last();
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(
        seen.one("x-forwarded-groups").as_deref(),
        Some("local-team")
    );
    assert_eq!(b.me().await.1["provider"], "corp");

    // Bob passes the admission rules but has no local entry.
    let b = Browser::new(&gw);
    let r = b.sign_in("corp", "/app", "bob").await;
    assert_eq!(r.status(), 403);
    assert_eq!(b.me().await.0, 401);

    // Carol: not staff, an unverified example.org address.
    let b = Browser::new(&gw);
    let r = b.sign_in("corp", "/app", "carol").await;
    assert_eq!(r.status(), 403);
    assert_eq!(b.me().await.0, 401);
}

#[tokio::test]
async fn a_trusted_provider_cannot_take_over_a_local_user_and_unverified_email_is_refused() {
    init();
    let idp = OidcProvider::start(&[client_for("corp")], false).await;
    let up = Upstream::start().await;
    let secrets = Secrets::new();
    let gw = gateway(
        "",
        &provider_toml(&secrets, "corp", &idp.issuer, ""),
        &user_toml("alice", &["local-admins"]),
        &up,
    )
    .await;
    // The provider's alice is not the local alice.
    let b = Browser::new(&gw);
    let r = b.sign_in("corp", "/", "alice").await;
    assert_eq!(r.status(), 403);
    assert_eq!(b.me().await.0, 401);
    // Carol's email is not verified at the provider.
    let r = b.sign_in("corp", "/", "carol").await;
    assert_eq!(r.status(), 403);
    assert_eq!(b.me().await.0, 401);
    // Bob is fine.
    let r = b.sign_in("corp", "/", "bob").await;
    assert_signed_in(&b, r, "/").await;
    assert_eq!(b.me().await.1["user"], "bob");
}

#[tokio::test]
async fn a_provider_down_at_start_up_does_not_stop_the_gateway() {
    init();
    // A port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let up = Upstream::start().await;
    let secrets = Secrets::new();
    let gw = gateway(
        "",
        &provider_toml(&secrets, "corp", &format!("http://{dead}"), ""),
        &user_toml("dave", &["staff"]),
        &up,
    )
    .await;
    // Password logins work; the button answers with a page saying to retry, not a redirect.
    let cookie = login_json(&gw, "dave", PASSWORD).await;
    let r = client()
        .get(gw.url("/app"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b = Browser::new(&gw);
    let r = b.get("/.auth/oidc/corp/start?rd=/").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    assert!(r.headers().get("location").is_none());
    assert_eq!(b.get("/.auth/ready").await.status(), 200);
}

#[tokio::test]
async fn on_redis_a_sign_in_started_on_one_instance_finishes_on_another() {
    init();
    let redis = support::redis::RedisServer::start();
    let idp = OidcProvider::start(&[client_for("corp")], false).await;
    let up = Upstream::start().await;
    let secrets = Secrets::new();
    let provider = provider_toml(&secrets, "corp", &idp.issuer, "");
    let store = support::redis::store_section(&redis);
    let a = gateway(&store, &provider, "", &up).await;
    let b = gateway(&store, &provider, "", &up).await;

    // The load balancer sends the start to A and the provider's redirect back to B.
    let at_a = Browser::new(&a);
    let at_b = at_a.at(&b);
    let authorize = at_a.start("corp", "/app").await;
    let back = sign_in_at_provider(&at_a.http, &authorize, "alice").await;
    let r = at_b.get(&back).await;
    assert_signed_in(&at_b, r, "/app").await;
    // The session works on both.
    assert_eq!(at_a.get("/app").await.status(), 200);
    assert_eq!(at_b.get("/app").await.status(), 200);
    assert_eq!(up.last().one("x-forwarded-user").as_deref(), Some("alice"));
    let (status, me) = at_a.me().await;
    assert_eq!(status, 200);
    assert_eq!(me["provider"], "corp");
    // The callback cannot be replayed on A: the state was taken from Redis by B.
    assert_eq!(at_a.get(&back).await.status(), 400);
    // No state, verifier or cookie value is stored in the clear.
    let keys = redis.command(&["KEYS", "*"]);
    let cookies = at_a.cookies();
    assert!(cookies.contains("authgate="), "{cookies}");
    for pair in cookies.split("; ") {
        let value = pair.split_once('=').map(|(_, v)| v).unwrap_or("");
        assert!(
            value.len() >= 20 && !keys.contains(value),
            "a cookie value is a Redis key: {keys}"
        );
    }
}

#[tokio::test]
async fn a_route_may_forward_the_providers_access_token_and_only_that_route() {
    init();
    let redis = support::redis::RedisServer::start();
    let idp = OidcProvider::start(&[client_for("corp")], false).await;
    let up = Upstream::start().await;
    let secrets = Secrets::new();
    let routes = format!(
        "[[routes]]\npath_prefix = \"/api\"\nupstream = \"{u}\"\npass_access_token = true\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"{u}\"\n",
        u = up.url()
    );
    let gw = gateway_routes(
        &support::redis::store_section(&redis),
        &provider_toml(&secrets, "corp", &idp.issuer, ""),
        &user_toml("dave", &["staff"]),
        &routes,
    )
    .await;
    let b = Browser::new(&gw);
    let r = b.sign_in("corp", "/api/x", "alice").await;
    assert_signed_in(&b, r, "/api/x").await;

    // The opted-in route gets the provider's token; a client's own value never passes.
    let r = b
        .http
        .get(b.local("/api/x"))
        .header("x-forwarded-access-token", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tokens = up.last().all("x-forwarded-access-token");
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let token = tokens[0].clone();
    assert_ne!(token, "forged");
    // It is the provider's real access token: its userinfo endpoint accepts it.
    let me = provider_browser()
        .get(idp.url("/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let me: serde_json::Value = me.json().await.unwrap();
    assert_eq!(me["sub"], "alice");

    // Another route gets none, not even the client's.
    let r = b
        .http
        .get(b.local("/other"))
        .header("x_forwarded_access_token", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(up.last().all("x-forwarded-access-token").is_empty());
    assert!(up.last().all("x_forwarded_access_token").is_empty());

    // A password login has no provider token: the header is absent, a forged one stripped.
    let cookie = login_json(&gw, "dave", PASSWORD).await;
    let r = client()
        .get(gw.url("/api/y"))
        .header("cookie", &cookie)
        .header("x-forwarded-access-token", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(up.last().all("x-forwarded-access-token").is_empty());

    // Redis holds it sealed only: no key or value contains the token.
    for k in redis.command(&["KEYS", "*"]).lines() {
        let k = k.trim();
        if k.is_empty() {
            continue;
        }
        let v = redis.command(&["GET", k]);
        assert!(
            !v.contains(&token),
            "{k} holds the access token in the clear"
        );
    }

    // After logout nothing is forwarded (and the app sees no request at all).
    let before = up.count();
    let r = b
        .http
        .post(b.local("/.auth/logout"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(b.get("/api/x").await.status(), 302);
    assert_eq!(up.count(), before);
}

/// A callback answer that refuses: the expected status, a generic page (no internal detail), no
/// credential for the browser.
async fn assert_refused(b: &Browser, r: reqwest::Response, status: u16, what: &str) {
    assert_eq!(
        r.status(),
        status,
        "{what}: {:?}",
        r.headers().get("location")
    );
    let cookies: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        cookies.iter().all(|c| c.starts_with("authgate_oidc=")),
        "{what}: a refused callback set {cookies:?}"
    );
    let page = r.text().await.unwrap().to_ascii_lowercase();
    for detail in [
        "nonce",
        "issuer",
        "audience",
        "signature",
        "kid",
        "expired",
        "alg",
        "token",
    ] {
        assert!(
            !page.contains(detail),
            "{what}: the page tells the browser {detail:?}: {page}"
        );
    }
    assert_eq!(b.me().await.0, 401, "{what}: a credential was created");
}

#[tokio::test]
async fn a_hostile_provider_is_refused_and_creates_no_credential() {
    use support::hostile_idp::{Attack, HostileIdp, USER};
    init();
    let corp = HostileIdp::start("corp", SECRET).await;
    let partner = HostileIdp::start("partner", SECRET).await;
    // A provider whose discovery document names another issuer, from the start.
    let liar = HostileIdp::start("liar", SECRET).await;
    liar.set(Attack::DiscoveryIssuer(corp.issuer.clone()));
    let up = Upstream::start().await;
    let secrets = Secrets::new();
    let providers = format!(
        "{}{}{}",
        provider_toml(&secrets, "corp", &corp.issuer, ""),
        provider_toml(&secrets, "partner", &partner.issuer, ""),
        provider_toml(&secrets, "liar", &liar.issuer, ""),
    );
    let gw = gateway("[metrics]\nlisten = \"127.0.0.1:0\"\n", &providers, "", &up).await;

    // Honest, the provider signs mallory in: the harness works, and every refusal below is the
    // attack's doing.
    let b = Browser::new(&gw);
    let back = corp.authorize(&b.start("corp", "/app").await).await;
    assert_signed_in(&b, b.get(&back).await, "/app").await;
    let (_, me) = b.me().await;
    assert_eq!(me["user"], USER);
    assert_eq!(me["groups"], serde_json::json!(["corp:staff"]));
    assert_eq!(b.get("/app").await.status(), 200);
    assert_eq!(up.last().one("x-forwarded-user").as_deref(), Some(USER));
    // The same answer again (a reused state) is refused.
    let again = Browser::new(&gw);
    assert_refused(&again, again.get(&back).await, 400, "replayed callback").await;

    let cases: Vec<(Attack, u16)> = vec![
        // Mix-ups: the other provider's issuer, in the token or in the response parameter.
        (Attack::IdTokenIss(partner.issuer.clone()), 400),
        (Attack::CallbackIss(partner.issuer.clone()), 400),
        (Attack::NoCallbackIss, 400),
        (Attack::ForeignState, 400),
        (Attack::WrongAudience, 400),
        (Attack::AzpOfAnotherClient, 400),
        (Attack::SeveralAudiencesNoAzp, 400),
        (Attack::WrongNonce, 400),
        (Attack::NoNonce, 400),
        (Attack::AlgNone, 400),
        (Attack::Hs256WithPublicKey, 400),
        // HS256 is not allowed unless configured: even keyed with the real secret.
        (Attack::Hs256WithClientSecret, 400),
        (Attack::BadSignature, 400),
        (Attack::UnknownKid, 400),
        (Attack::Expired, 400),
        (Attack::IssuedInTheFuture, 400),
        (Attack::NoSubject, 400),
        (Attack::UserinfoOtherSubject, 400),
        (Attack::UnverifiedEmail, 403),
        (Attack::ErrorParameter, 403),
        (Attack::TokenEndpointRefuses, 502),
        (Attack::TokenAnswerNotJson, 502),
        (Attack::NoIdToken, 502),
        // Over the fetch limit: treated as a provider that cannot be used right now.
        (Attack::HugeTokenAnswer, 503),
    ];
    for (attack, status) in cases {
        corp.set(attack.clone());
        let b = Browser::new(&gw);
        let back = corp.authorize(&b.start("corp", "/").await).await;
        assert_refused(&b, b.get(&back).await, status, &format!("{attack:?}")).await;
    }
    corp.set(Attack::None);

    // Partner's answer delivered to corp's callback.
    let b = Browser::new(&gw);
    let back = partner.authorize(&b.start("partner", "/").await).await;
    let wrong = back.replace("/.auth/oidc/partner/callback", "/.auth/oidc/corp/callback");
    assert_refused(&b, b.get(&wrong).await, 400, "partner's answer at corp").await;

    // The lying provider's button never sends anyone to it.
    let b = Browser::new(&gw);
    let r = b.get("/.auth/oidc/liar/start?rd=%2F").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("location").is_none());

    // The gateway spoke correctly every time (client secret, single-use code, redirect_uri,
    // PKCE): each refusal above was the gateway's, not the provider's.
    assert!(corp.refusals().is_empty(), "{:?}", corp.refusals());
    assert!(partner.refusals().is_empty(), "{:?}", partner.refusals());
    assert_eq!(
        up.count(),
        1,
        "only the honest sign-in reached the upstream"
    );
    // Every callback is one external login attempt, and only the honest one succeeded.
    let text = scrape_metrics(&gw).await;
    let login = "authgate_login_attempts_total";
    let oidc = ("method", "oidc");
    assert_eq!(metric_sum(&text, login, &[oidc, ("result", "ok")]), 1.0);
    assert_eq!(metric_sum(&text, login, &[oidc]), 27.0, "{text}");
    // The 502s and the 503 above: the provider's side failed, not the user's answer.
    let unavailable = ("result", "provider_unavailable");
    assert_eq!(metric_sum(&text, login, &[oidc, unavailable]), 4.0);
    assert_eq!(metric_sum(&text, login, &[("method", "password")]), 0.0);
    assert_eq!(metric_sum(&text, login, &[("method", "otp")]), 0.0);
}

#[tokio::test]
async fn hs256_id_tokens_verify_with_the_client_secret_only_when_configured() {
    use support::hostile_idp::{Attack, HostileIdp, USER};
    init();
    let corp = HostileIdp::start("corp", SECRET).await;
    let up = Upstream::start().await;
    let secrets = Secrets::new();
    let gw = gateway(
        "",
        &provider_toml(
            &secrets,
            "corp",
            &corp.issuer,
            "id_token_algorithms = [\"ES256\", \"HS256\"]",
        ),
        "",
        &up,
    )
    .await;
    // Keyed with the published key set (key confusion): the signature does not verify.
    corp.set(Attack::Hs256WithPublicKey);
    let b = Browser::new(&gw);
    let back = corp.authorize(&b.start("corp", "/").await).await;
    assert_refused(&b, b.get(&back).await, 400, "HS256 keyed with the JWKS").await;
    // `alg: none` stays refused whatever the list says.
    corp.set(Attack::AlgNone);
    let back = corp.authorize(&b.start("corp", "/").await).await;
    assert_refused(&b, b.get(&back).await, 400, "alg none").await;
    // Keyed with the client secret, as the configuration allows.
    corp.set(Attack::Hs256WithClientSecret);
    let back = corp.authorize(&b.start("corp", "/").await).await;
    assert_signed_in(&b, b.get(&back).await, "/").await;
    assert_eq!(b.me().await.1["user"], USER);
    assert!(corp.refusals().is_empty(), "{:?}", corp.refusals());
}

#[tokio::test]
async fn an_email_the_provider_does_not_vouch_for_is_not_passed_on_nor_used_as_the_user() {
    use support::hostile_idp::{Attack, HostileIdp, EMAIL, USER};
    init();
    let corp = HostileIdp::start("corp", SECRET).await;
    let mail = HostileIdp::start("mail", SECRET).await;
    corp.set(Attack::NoEmailVerified);
    mail.set(Attack::NoEmailVerified);
    let up = Upstream::start().await;
    let secrets = Secrets::new();
    let providers = format!(
        "{}{}",
        provider_toml(&secrets, "corp", &corp.issuer, ""),
        provider_toml(&secrets, "mail", &mail.issuer, "user_claim = \"email\""),
    );
    let gw = gateway("", &providers, "", &up).await;
    // Signed in by name; the address nobody vouched for is neither kept nor forwarded.
    let b = Browser::new(&gw);
    let back = corp.authorize(&b.start("corp", "/app").await).await;
    assert_signed_in(&b, b.get(&back).await, "/app").await;
    let (_, me) = b.me().await;
    assert_eq!(me["user"], USER);
    assert!(me.get("email").is_none_or(|e| e.is_null()), "{me}");
    assert_eq!(b.get("/app").await.status(), 200);
    assert_eq!(up.last().one("x-forwarded-email"), None);
    // Where that address would be the user's name, the login is refused.
    let b = Browser::new(&gw);
    let back = mail.authorize(&b.start("mail", "/").await).await;
    assert_refused(&b, b.get(&back).await, 403, "unvouched email as the user").await;
    // Vouched for, it is the user.
    mail.set(Attack::None);
    let back = mail.authorize(&b.start("mail", "/").await).await;
    assert_signed_in(&b, b.get(&back).await, "/").await;
    assert_eq!(b.me().await.1["user"], EMAIL);
}

#[tokio::test]
async fn sign_in_starts_are_limited_per_address_and_head_stores_nothing() {
    use support::hostile_idp::HostileIdp;
    init();
    let corp = HostileIdp::start("corp", SECRET).await;
    let up = Upstream::start().await;
    let secrets = Secrets::new();
    let gw = gateway(
        "",
        &provider_toml(&secrets, "corp", &corp.issuer, ""),
        "",
        &up,
    )
    .await;
    let b = Browser::new(&gw);
    let head = b
        .http
        .head(b.local("/.auth/oidc/corp/start?rd=%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 405);
    // A person needs a few starts a minute; an address that keeps starting is refused before
    // anything is stored, and a sign-in already under way still finishes.
    let pending = b.start("corp", "/").await;
    for _ in 1..60 {
        b.start("corp", "/").await;
    }
    let r = b.get("/.auth/oidc/corp/start?rd=%2F").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    assert!(r.headers().get("location").is_none());
    let back = corp.authorize(&pending).await;
    assert_signed_in(&b, b.get(&back).await, "/").await;
}

#[tokio::test]
async fn a_second_factor_step_up_keeps_the_provider_login() {
    use support::hostile_idp::{HostileIdp, USER};
    init();
    let corp = HostileIdp::start("corp", SECRET).await;
    let up = Upstream::start().await;
    let secrets = Secrets::new();
    let key = secrets.file("test-credentials-key-0123456789abcdef");
    let auth = format!(
        "[auth]\ncredentials_file = \"{{dir}}/credentials.toml\"\ncredentials_key_file = \"{key}\"\n"
    );
    let gw = gateway(
        &auth,
        &provider_toml(&secrets, "corp", &corp.issuer, "users = \"link\""),
        &user_toml(USER, &["staff"]),
        &up,
    )
    .await;
    // The linked local user has a second factor.
    let cfg = authgate::Config::load(&gw.config_path).unwrap();
    let creds = cfg.auth.credentials.clone().unwrap();
    let e = authgate::auth::credentials::enroll(&creds, USER, false).unwrap();
    let totp = totp_rs::Totp::from_url(&e.uri).unwrap();
    gw.gateway()
        .reload(authgate::Config::load(&gw.config_path).unwrap())
        .unwrap();

    let b = Browser::new(&gw);
    let back = corp.authorize(&b.start("corp", "/").await).await;
    assert_signed_in(&b, b.get(&back).await, "/").await;
    let before = b.cookies();
    assert_eq!(b.me().await.1["provider"], "corp");
    // The code on top of the provider's login.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let r = b
        .http
        .post(b.local("/.auth/login/otp"))
        .json(&serde_json::json!({"code": totp.generate(now).to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_ne!(b.cookies(), before, "a step-up mints a new session");
    let (status, me) = b.me().await;
    assert_eq!(status, 200);
    assert_eq!(me["user"], USER);
    assert_eq!(me["method"], "oidc", "{me}");
    assert_eq!(me["provider"], "corp", "{me}");
    let amr: Vec<String> = serde_json::from_value(me["amr"].clone()).unwrap();
    assert!(
        amr.iter().any(|a| a == "otp") && amr.iter().any(|a| a == "ext"),
        "{amr:?}"
    );
}
