mod support;
use support::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authgate::auth::jwt::generate_key;
use authgate::config::JwtAlgorithm;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// Cookie name under `public_url = "http://gateway.test"` (no `__Host-` prefix).
const COOKIE: &str = "authgate";

/// Wall-clock Unix seconds (the gateway and jsonwebtoken use the same clock).
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Sleeps until the wall clock has passed Unix second `t` (plus a small margin).
async fn sleep_until_unix(t: u64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let target = Duration::from_secs(t) + Duration::from_millis(100);
    if target > now {
        tokio::time::sleep(target - now).await;
    }
}

/// A key of `alg` written by the library's generator as `<dir>/<name>.*`:
/// (private key or secret, public key or secret).
fn gen_key(dir: &Path, alg: JwtAlgorithm, name: &str) -> (PathBuf, PathBuf) {
    let files = generate_key(alg, &dir.join(name)).unwrap();
    let public = files.get(1).unwrap_or(&files[0]).clone();
    (files[0].clone(), public)
}

/// A path as a TOML string literal.
fn lit(p: &Path) -> String {
    format!("{:?}", p.to_str().unwrap())
}

/// JWT-mode config: `[auth]` with `auth_extra`, `[auth.jwt]` with `jwt` (which may end in
/// `[[auth.jwt.verify_keys]]` tables), users alice (admins, staff) and bob (staff), and two routes
/// to `up`: `/` public and `/app` authenticated.
fn jwt_config(up: &Upstream, auth_extra: &str, jwt: &str) -> String {
    format!(
        "[auth]\nmode = \"jwt\"\n{auth_extra}\n\n[auth.jwt]\n{jwt}\n\n{}{}\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"{u}\"\naccess = \"public\"\n\n\
         [[routes]]\npath_prefix = \"/app\"\nupstream = \"{u}\"\naccess = \"authenticated\"\n\n",
        user_toml("alice", &["admins", "staff"]),
        user_toml("bob", &["staff"]),
        u = up.url()
    )
}

/// The token of a `authgate=<token>` cookie pair.
fn token_of(pair: &str) -> String {
    let (name, value) = pair.split_once('=').unwrap();
    assert_eq!(name, COOKIE);
    value.to_string()
}

/// Segment `i` (0 header, 1 claims) of a compact JWS, decoded as JSON.
fn part(token: &str, i: usize) -> Value {
    let seg = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&B64.decode(seg).unwrap()).unwrap()
}

fn b64_json(v: &Value) -> String {
    B64.encode(serde_json::to_vec(v).unwrap())
}

/// Numeric claim `name` of a token.
fn claim_u64(token: &str, name: &str) -> u64 {
    part(token, 1)[name].as_u64().unwrap()
}

/// GET `path` with the token as the gateway cookie, as an API client.
async fn get_with_token(gw: &TestGateway, path: &str, token: &str) -> reqwest::Response {
    client()
        .get(gw.url(path))
        .header("cookie", format!("{COOKIE}={token}"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
}

async fn status_with_token(gw: &TestGateway, token: &str) -> u16 {
    get_with_token(gw, "/app/x", token).await.status().as_u16()
}

/// Logs in and returns the bare token.
async fn login_token(gw: &TestGateway, user: &str) -> String {
    token_of(&login_json(gw, user, PASSWORD).await)
}

/// Claims the gateway itself would issue for `sub`, valid now for ten minutes.
fn good_claims(sub: &str) -> Value {
    let t = now();
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).unwrap();
    json!({
        "iss": "authgate", "aud": "authgate", "sub": sub, "email": format!("{sub}@example.com"),
        "groups": ["admins", "staff"], "iat": t, "nbf": t, "exp": t + 600,
        "jti": B64.encode(id), "auth_time": t,
        "pwv": authgate::auth::jwt::pwv_claim(
            authgate::auth::users::password_version(support::password_hash())),
    })
}

fn with(mut c: Value, k: &str, v: Value) -> Value {
    c[k] = v;
    c
}

fn without(mut c: Value, k: &str) -> Value {
    c.as_object_mut().unwrap().remove(k);
    c
}

/// Signs `claims` with an Ed25519 private key file, through jsonwebtoken (not the gateway).
fn sign_ed(private: &Path, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = kid.map(String::from);
    let key = EncodingKey::from_ed_pem(&std::fs::read(private).unwrap()).unwrap();
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

/// The DER inside a one-section PEM file.
fn pem_der(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(b64).unwrap()
}

/// The (HTML-unescaped) value of hidden input `name` in a page.
fn hidden(page: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker)? + marker.len();
    let end = page[start..].find('"')? + start;
    Some(html_escape::decode_html_entities(&page[start..end]).into_owned())
}

/// Asserts that the last upstream request carried alice's identity and no gateway credential.
fn assert_upstream_saw_alice(up: &Upstream) {
    let s = up.last();
    assert_eq!(s.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(
        s.one("x-forwarded-email").as_deref(),
        Some("alice@example.com")
    );
    let groups = s.one("x-forwarded-groups").unwrap_or_default();
    assert!(
        groups.contains("admins") && groups.contains("staff"),
        "{groups}"
    );
    assert!(
        !s.all("cookie").iter().any(|c| c.contains(COOKIE)),
        "gateway cookie forwarded upstream"
    );
}

// 1 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn login_jwt_eddsa_cookie_authenticates_alone_and_after_gateway_restart() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let (private, _) = gen_key(keys.path(), JwtAlgorithm::EdDSA, "jwt");
    let up = Upstream::start().await;
    let cfg = jwt_config(&up, "", &format!("signing_key = {}", lit(&private)));
    let gw = TestGateway::start(&cfg).await;

    let token = login_token(&gw, "alice").await;
    assert_eq!(token.split('.').count(), 3, "not a compact JWS");
    let h = part(&token, 0);
    assert_eq!(h["alg"], "EdDSA");
    assert_eq!(h["typ"], "JWT");
    assert!(
        h["kid"].as_str().is_some_and(|k| !k.is_empty()),
        "no kid: {h}"
    );
    let c = part(&token, 1);
    assert_eq!(
        (c["sub"].as_str(), c["iss"].as_str(), c["aud"].as_str()),
        (Some("alice"), Some("authgate"), Some("authgate"))
    );
    assert_eq!(claim_u64(&token, "exp") - claim_u64(&token, "iat"), 900);

    let r = get_with_token(&gw, "/app/one", &token).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
    assert_upstream_saw_alice(&up);
    gw.shutdown().await;

    // A new gateway process-state, same keys: the token alone still proves who this is.
    let gw2 = TestGateway::start(&cfg).await;
    let r = get_with_token(&gw2, "/app/two", &token).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 2);
    assert_eq!(up.last().uri, "/app/two");
    assert_upstream_saw_alice(&up);
    gw2.shutdown().await;
}

// 2 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn jwt_forged_expired_or_foreign_tokens_rejected_401_before_upstream() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = gen_key(keys.path(), JwtAlgorithm::EdDSA, "jwt");
    let (other, _) = gen_key(keys.path(), JwtAlgorithm::EdDSA, "other");
    let up = Upstream::start().await;
    let gw = TestGateway::start(&jwt_config(
        &up,
        "max_lifetime = \"1h\"",
        &format!("signing_key = {}", lit(&private)),
    ))
    .await;

    let real = login_token(&gw, "alice").await;
    let kid = part(&real, 0)["kid"].as_str().unwrap().to_string();
    let kid = Some(kid.as_str());
    let [h, p, sig]: [&str; 3] = real.split('.').collect::<Vec<_>>().try_into().unwrap();

    // Controls: the real token and one crafted with the real key are accepted, so every
    // rejection below is down to the one thing each token changes.
    assert_eq!(status_with_token(&gw, &real).await, 200);
    assert_eq!(
        status_with_token(&gw, &sign_ed(&private, kid, &good_claims("alice"))).await,
        200
    );
    assert_eq!(up.count(), 2);

    let t = now();
    let mut bad: Vec<(String, String)> = Vec::new();
    let mut add = |label: &str, token: String| bad.push((label.to_string(), token));

    for alg in ["none", "None", "NONE", "nOnE"] {
        for header in [
            json!({"alg": alg, "typ": "JWT", "kid": kid}),
            json!({"alg": alg}),
        ] {
            let hb = b64_json(&header);
            add(&format!("alg {alg} trailing dot"), format!("{hb}.{p}."));
            add(&format!("alg {alg} two parts"), format!("{hb}.{p}"));
            add(
                &format!("alg {alg} real signature"),
                format!("{hb}.{p}.{sig}"),
            );
        }
    }

    // HS256 keyed with the public key, the classic algorithm-confusion attack.
    let pub_pem = std::fs::read(&public).unwrap();
    let pub_der = pem_der(&public);
    let raw_pub = &pub_der[pub_der.len() - 32..];
    for (label, secret) in [("public PEM", &pub_pem[..]), ("raw public key", raw_pub)] {
        for k in [kid, None] {
            let mut hh = Header::new(Algorithm::HS256);
            hh.kid = k.map(String::from);
            let tok = jsonwebtoken::encode(
                &hh,
                &good_claims("alice"),
                &EncodingKey::from_secret(secret),
            )
            .unwrap();
            add(&format!("HS256 with {label}, kid {k:?}"), tok);
        }
    }

    let mut tampered = part(&real, 1);
    tampered["sub"] = json!("bob");
    add("tampered sub", format!("{h}.{}.{sig}", b64_json(&tampered)));
    let mut tampered = part(&real, 1);
    tampered["exp"] = json!(t + 86_400);
    add("tampered exp", format!("{h}.{}.{sig}", b64_json(&tampered)));
    add("stripped signature", format!("{h}.{p}"));
    add("empty signature", format!("{h}.{p}."));
    add(
        "garbage signature",
        format!("{h}.{p}.{}", B64.encode([7u8; 64])),
    );

    let signed = |c: Value| sign_ed(&private, kid, &c);
    let g = || good_claims("alice");
    let old = t - 1000;
    add(
        "expired",
        signed(
            json!({"iss": "authgate", "aud": "authgate", "sub": "alice", "iat": old,
            "nbf": old, "exp": t - 100, "jti": "expired-jti", "auth_time": old}),
        ),
    );
    add(
        "nbf in the future",
        signed(with(g(), "nbf", json!(t + 600))),
    );
    add(
        "iat in the future",
        signed(with(g(), "iat", json!(t + 600))),
    );
    add(
        "auth_time in the future",
        signed(with(g(), "auth_time", json!(t + 600))),
    );
    add("wrong iss", signed(with(g(), "iss", json!("evil"))));
    add("wrong aud", signed(with(g(), "aud", json!("other-app"))));
    add(
        "aud list without ours",
        signed(with(g(), "aud", json!(["x", "y"]))),
    );
    add("missing exp", signed(without(g(), "exp")));
    add("missing sub", signed(without(g(), "sub")));
    add("missing jti", signed(without(g(), "jti")));
    add("missing auth_time", signed(without(g(), "auth_time")));
    add(
        "exp as a string",
        signed(with(g(), "exp", json!("9999999999"))),
    );
    add(
        "unknown kid",
        sign_ed(&private, Some("no-such-kid"), &good_claims("alice")),
    );
    add(
        "unconfigured key, same kid",
        sign_ed(&other, kid, &good_claims("alice")),
    );
    add(
        "unconfigured key, no kid",
        sign_ed(&other, None, &good_claims("alice")),
    );
    let big = signed(with(g(), "pad", json!("x".repeat(4200))));
    assert!(big.len() > 4096);
    add("oversized (>4 KiB)", big);
    // Valid exp, but the login is older than max_lifetime (1h).
    let stale = t - 3600 - 60;
    add(
        "auth_time older than max_lifetime",
        signed(with(g(), "auth_time", json!(stale))),
    );
    add(
        "auth_time and iat older than max_lifetime",
        signed(with(
            with(with(g(), "auth_time", json!(stale)), "iat", json!(stale)),
            "nbf",
            json!(stale),
        )),
    );
    add("user not in the users list", signed(good_claims("mallory")));

    let mut accepted = Vec::new();
    for (label, token) in &bad {
        // Twice: a first rejection must not leave anything in the cache that a second accepts.
        for _ in 0..2 {
            let s = status_with_token(&gw, token).await;
            if s != 401 {
                accepted.push(format!("{label}: {s}"));
            }
        }
        // The same token as a Bearer credential (not enabled here) must not help either.
        let r = client()
            .get(gw.url("/app/x"))
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        if r.status() != 401 {
            accepted.push(format!("{label} as bearer: {}", r.status()));
        }
    }
    assert!(accepted.is_empty(), "not rejected with 401: {accepted:#?}");
    assert_eq!(up.count(), 2, "a rejected request reached the upstream");
    // Still working afterwards: no rejection poisoned anything.
    assert_eq!(status_with_token(&gw, &real).await, 200);
}

// 3 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn jwt_rotation_verify_key_accepts_old_kid_and_new_key_alone_rejects_it() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let (k1, k1_pub) = gen_key(keys.path(), JwtAlgorithm::EdDSA, "key1");
    let (k2, _) = gen_key(keys.path(), JwtAlgorithm::EdDSA, "key2");
    let up = Upstream::start().await;
    let a = TestGateway::start(&jwt_config(
        &up,
        "",
        &format!("signing_key = {}\nkid = \"k1\"", lit(&k1)),
    ))
    .await;
    let b = TestGateway::start(&jwt_config(
        &up,
        "",
        &format!(
            "signing_key = {}\nkid = \"k2\"\n\n[[auth.jwt.verify_keys]]\nkid = \"k1\"\nfile = {}",
            lit(&k2),
            lit(&k1_pub)
        ),
    ))
    .await;
    let c = TestGateway::start(&jwt_config(
        &up,
        "",
        &format!("signing_key = {}\nkid = \"k2\"", lit(&k2)),
    ))
    .await;

    let from_a = login_token(&a, "alice").await;
    assert_eq!(part(&from_a, 0)["kid"], "k1");
    assert_eq!(status_with_token(&a, &from_a).await, 200);
    assert_eq!(status_with_token(&b, &from_a).await, 200);
    assert_upstream_saw_alice(&up);

    let from_b = login_token(&b, "alice").await;
    assert_eq!(part(&from_b, 0)["kid"], "k2");
    assert_eq!(status_with_token(&b, &from_b).await, 200);
    assert_eq!(status_with_token(&c, &from_b).await, 200);

    let before = up.count();
    assert_eq!(
        status_with_token(&c, &from_a).await,
        401,
        "k1 token accepted without k1"
    );
    assert_eq!(
        status_with_token(&a, &from_b).await,
        401,
        "k2 token accepted without k2"
    );
    assert_eq!(up.count(), before);
}

// 4 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn jwt_sliding_renewal_late_request_gets_later_token_capped_by_max_lifetime() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let (private, _) = gen_key(keys.path(), JwtAlgorithm::EdDSA, "jwt");
    let up = Upstream::start().await;
    let jwt = format!("signing_key = {}\nttl = \"4s\"", lit(&private));
    let roomy = TestGateway::start(&jwt_config(&up, "", &jwt)).await;
    let capped = TestGateway::start(&jwt_config(&up, "max_lifetime = \"5s\"", &jwt)).await;

    let r0 = login_token(&roomy, "alice").await;
    let m0 = login_token(&capped, "alice").await;
    let (r0_exp, m0_exp) = (claim_u64(&r0, "exp"), claim_u64(&m0, "exp"));
    let auth_time = claim_u64(&m0, "auth_time");
    assert_eq!(m0_exp, auth_time + 4);

    // Early in the lifetime: no new cookie.
    for (gw, tok) in [(&roomy, &r0), (&capped, &m0)] {
        let r = get_with_token(gw, "/app/early", tok).await;
        assert_eq!(r.status(), 200);
        assert_eq!(set_cookie_pair(&r), None, "renewed too early");
    }

    // Claims are whole seconds: at exp - 1 less than half of the 4 s ttl is left for certain.
    sleep_until_unix(r0_exp - 1).await;
    let r = get_with_token(&roomy, "/app/late", &r0).await;
    assert_eq!(r.status(), 200);
    let r1 = token_of(&set_cookie_pair(&r).expect("no renewal when less than half the ttl left"));
    assert!(claim_u64(&r1, "exp") > r0_exp, "renewed exp not later");
    assert_eq!(
        claim_u64(&r1, "auth_time"),
        claim_u64(&r0, "auth_time"),
        "renewal must keep the login time"
    );
    assert_ne!(part(&r1, 1)["jti"], part(&r0, 1)["jti"]);
    assert_eq!(status_with_token(&roomy, &r1).await, 200);

    sleep_until_unix(m0_exp - 1).await;
    let r = get_with_token(&capped, "/app/late", &m0).await;
    assert_eq!(r.status(), 200);
    let m1 = token_of(&set_cookie_pair(&r).expect("no renewal when less than half the ttl left"));
    let m1_exp = claim_u64(&m1, "exp");
    assert!(m1_exp > m0_exp, "renewed exp not later");
    assert!(
        m1_exp <= auth_time + 5,
        "renewal went past max_lifetime: exp {m1_exp}, login {auth_time}"
    );
    assert_eq!(claim_u64(&m1, "auth_time"), auth_time);

    // At the max_lifetime cap: accepted, but not renewed further even once renewal would be due.
    sleep_until_unix(auth_time + 4).await;
    let r = get_with_token(&capped, "/app/capped", &m1).await;
    assert_eq!(r.status(), 200);
    assert_eq!(set_cookie_pair(&r), None, "renewed past max_lifetime");

    // Once max_lifetime has passed the login is over, leeway or not.
    sleep_until_unix(auth_time + 6).await;
    assert_eq!(status_with_token(&capped, &m1).await, 401);
}

// 5 ------------------------------------------------------------------------------------------

/// POSTs a JSON logout (`?all=1` when `all`) with `token` as the cookie.
async fn logout_json(gw: &TestGateway, token: &str, all: bool) -> reqwest::Response {
    let path = if all {
        "/.auth/logout?all=1"
    } else {
        "/.auth/logout"
    };
    client()
        .post(gw.url(path))
        .header("cookie", format!("{COOKIE}={token}"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn jwt_logout_revokes_cached_token_and_all_revokes_every_earlier_token_of_user() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let (private, _) = gen_key(keys.path(), JwtAlgorithm::EdDSA, "jwt");
    let up = Upstream::start().await;
    let gw = TestGateway::start(&jwt_config(
        &up,
        "",
        &format!("signing_key = {}", lit(&private)),
    ))
    .await;

    let t1 = login_token(&gw, "alice").await;
    let t2 = login_token(&gw, "alice").await;
    let b1 = login_token(&gw, "bob").await;
    let b2 = login_token(&gw, "bob").await;
    for tok in [&t1, &t2, &b1, &b2] {
        for _ in 0..3 {
            assert_eq!(status_with_token(&gw, tok).await, 200);
        }
    }

    // Single logout: that token only.
    let r = logout_json(&gw, &t1, false).await;
    assert_eq!(r.status(), 200);
    let cleared = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .any(|v| v.to_str().unwrap().starts_with(&format!("{COOKIE}=")));
    assert!(cleared, "logout did not clear the cookie");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["was_logged_in"], true);
    let before = up.count();
    for _ in 0..3 {
        assert_eq!(
            status_with_token(&gw, &t1).await,
            401,
            "logged-out token replayed"
        );
    }
    assert_eq!(up.count(), before);
    assert_eq!(status_with_token(&gw, &t2).await, 200);

    // Sign out everywhere: every earlier token of alice, not bob's.
    let t3 = login_token(&gw, "alice").await;
    assert_eq!(status_with_token(&gw, &t3).await, 200);
    let r = logout_json(&gw, &t3, true).await;
    assert_eq!(r.status(), 200);
    for (label, tok) in [("t1", &t1), ("t2", &t2), ("t3", &t3)] {
        assert_eq!(
            status_with_token(&gw, tok).await,
            401,
            "{label} survived ?all=1"
        );
    }
    assert_eq!(status_with_token(&gw, &b1).await, 200);
    assert_eq!(status_with_token(&gw, &b2).await, 200);

    // The browser form with its CSRF pair works the same way.
    let r = client()
        .get(gw.url("/.auth/logout"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let csrf_cookie = set_cookie_pair(&r).expect("logout page set no CSRF cookie");
    let csrf = hidden(&r.text().await.unwrap(), "csrf").expect("no csrf field");
    let form = |path: &str, csrf: &str| {
        client()
            .post(gw.url(path))
            .header("cookie", format!("{COOKIE}={b1}; {csrf_cookie}"))
            .header("accept", "text/html")
            .form(&[("csrf", csrf.to_string())])
            .send()
    };
    // A wrong CSRF token revokes nothing.
    let r = form("/.auth/logout?all=1", "forged").await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(status_with_token(&gw, &b1).await, 200);
    let r = form("/.auth/logout?all=1", &csrf).await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(status_with_token(&gw, &b1).await, 401);
    assert_eq!(status_with_token(&gw, &b2).await, 401);
}

// 6 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn jwt_reload_removing_user_or_changing_groups_applies_to_cached_tokens_at_once() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let (private, _) = gen_key(keys.path(), JwtAlgorithm::EdDSA, "jwt");
    let up = Upstream::start().await;
    let gw = TestGateway::start(&jwt_config(
        &up,
        "",
        &format!("signing_key = {}", lit(&private)),
    ))
    .await;
    let alice = login_token(&gw, "alice").await;
    let bob = login_token(&gw, "bob").await;
    for _ in 0..3 {
        assert_eq!(status_with_token(&gw, &alice).await, 200);
        assert_eq!(status_with_token(&gw, &bob).await, 200);
    }
    assert_eq!(
        up.last().one("x-forwarded-groups").as_deref(),
        Some("staff")
    );

    let reload = |from: &str, to: &str| {
        let text = std::fs::read_to_string(&gw.config_path).unwrap();
        assert!(text.contains(from));
        std::fs::write(&gw.config_path, text.replace(from, to)).unwrap();
        let cfg = authgate::Config::load(&gw.config_path).unwrap();
        gw.gateway().reload(cfg).unwrap();
    };

    reload(
        &user_toml("alice", &["admins", "staff"]),
        &user_toml("alice", &["ops"]),
    );
    assert_eq!(status_with_token(&gw, &alice).await, 200);
    assert_eq!(
        up.last().one("x-forwarded-groups").as_deref(),
        Some("ops"),
        "old groups served after reload"
    );

    reload(&user_toml("bob", &["staff"]), "");
    let before = up.count();
    assert_eq!(
        status_with_token(&gw, &bob).await,
        401,
        "removed user still accepted"
    );
    assert_eq!(up.count(), before);
    assert_eq!(status_with_token(&gw, &alice).await, 200);
}

// 7 ------------------------------------------------------------------------------------------

/// GETs the JWKS and returns its keys.
async fn jwks(gw: &TestGateway) -> Vec<Value> {
    let r = client()
        .get(gw.url("/.auth/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let doc: Value = r.json().await.unwrap();
    let keys = doc["keys"].as_array().unwrap().clone();
    for k in &keys {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(k.get(private).is_none(), "private member {private} in {k}");
        }
        assert_eq!(k["use"], "sig");
    }
    keys
}

fn jwk_bytes(jwk: &Value, member: &str) -> Vec<u8> {
    B64.decode(jwk[member].as_str().unwrap()).unwrap()
}

/// (signing input, signature bytes) of a compact JWS.
fn signed_parts(token: &str) -> (&str, Vec<u8>) {
    let cut = token.rfind('.').unwrap();
    (&token[..cut], B64.decode(&token[cut + 1..]).unwrap())
}

/// The JWK whose kid is the token's.
fn jwk_for<'a>(keys: &'a [Value], token: &str) -> &'a Value {
    let kid = part(token, 0)["kid"].clone();
    keys.iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("kid {kid} not in JWKS"))
}

#[tokio::test]
async fn jwks_eddsa_lists_signing_and_verify_keys_and_token_verifies_with_ed25519_dalek() {
    use ed25519_dalek::{Signature, VerifyingKey};
    init();
    let keys = tempfile::tempdir().unwrap();
    let (_, k1_pub) = gen_key(keys.path(), JwtAlgorithm::EdDSA, "key1");
    let (k2, k2_pub) = gen_key(keys.path(), JwtAlgorithm::EdDSA, "key2");
    let up = Upstream::start().await;
    let gw = TestGateway::start(&jwt_config(
        &up,
        "",
        &format!(
            "signing_key = {}\nkid = \"k2\"\n\n[[auth.jwt.verify_keys]]\nkid = \"k1\"\nfile = {}",
            lit(&k2),
            lit(&k1_pub)
        ),
    ))
    .await;

    let set = jwks(&gw).await;
    let kids: Vec<&str> = set.iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, ["k2", "k1"]);
    for (jwk, public) in set.iter().zip([&k2_pub, &k1_pub]) {
        assert_eq!(
            (
                jwk["kty"].as_str(),
                jwk["crv"].as_str(),
                jwk["alg"].as_str()
            ),
            (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
        );
        let der = pem_der(public);
        assert_eq!(jwk_bytes(jwk, "x"), der[der.len() - 32..], "x of {jwk}");
    }

    let token = login_token(&gw, "alice").await;
    let jwk = jwk_for(&set, &token);
    assert_eq!(jwk["kid"], "k2");
    let x: [u8; 32] = jwk_bytes(jwk, "x").try_into().unwrap();
    let vk = VerifyingKey::from_bytes(&x).unwrap();
    let (msg, sig) = signed_parts(&token);
    let sig = Signature::from_slice(&sig).unwrap();
    vk.verify_strict(msg.as_bytes(), &sig)
        .expect("gateway token does not verify under its published key");
    assert!(vk
        .verify_strict(format!("{msg}x").as_bytes(), &sig)
        .is_err());
    let other: [u8; 32] = jwk_bytes(&set[1], "x").try_into().unwrap();
    assert!(VerifyingKey::from_bytes(&other)
        .unwrap()
        .verify_strict(msg.as_bytes(), &sig)
        .is_err());
}

#[tokio::test]
async fn jwks_es256_lists_key_and_token_verifies_with_p256() {
    use p256::ecdsa::signature::Verifier as _;
    use p256::ecdsa::{Signature, VerifyingKey};
    init();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = gen_key(keys.path(), JwtAlgorithm::ES256, "ec");
    let (_, old_pub) = gen_key(keys.path(), JwtAlgorithm::ES256, "ec-old");
    let up = Upstream::start().await;
    let gw = TestGateway::start(&jwt_config(
        &up,
        "",
        &format!(
            "algorithm = \"ES256\"\nsigning_key = {}\n\n[[auth.jwt.verify_keys]]\nkid = \"old\"\nfile = {}",
            lit(&private),
            lit(&old_pub)
        ),
    ))
    .await;

    let set = jwks(&gw).await;
    assert_eq!(set.len(), 2);
    assert_eq!(set[1]["kid"], "old");
    for (jwk, public) in set.iter().zip([&public, &old_pub]) {
        assert_eq!(
            (
                jwk["kty"].as_str(),
                jwk["crv"].as_str(),
                jwk["alg"].as_str()
            ),
            (Some("EC"), Some("P-256"), Some("ES256"))
        );
        let der = pem_der(public);
        let mut point = vec![4u8];
        point.extend(jwk_bytes(jwk, "x"));
        point.extend(jwk_bytes(jwk, "y"));
        assert_eq!(point, der[der.len() - 65..], "point of {jwk}");
    }

    let token = login_token(&gw, "alice").await;
    assert_eq!(part(&token, 0)["alg"], "ES256");
    let jwk = jwk_for(&set, &token);
    assert_eq!(jwk["kid"], set[0]["kid"]);
    let mut point = vec![4u8];
    point.extend(jwk_bytes(jwk, "x"));
    point.extend(jwk_bytes(jwk, "y"));
    let vk = VerifyingKey::from_sec1_bytes(&point).unwrap();
    let (msg, sig) = signed_parts(&token);
    assert_eq!(sig.len(), 64, "JWS ES256 signatures are r || s, not DER");
    let sig = Signature::from_slice(&sig).unwrap();
    vk.verify(msg.as_bytes(), &sig)
        .expect("gateway token does not verify under its published key");
    assert!(vk.verify(format!("{msg}x").as_bytes(), &sig).is_err());
}

#[tokio::test]
async fn jwks_hs256_mode_returns_404() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = gen_key(keys.path(), JwtAlgorithm::HS256, "hs");
    let up = Upstream::start().await;
    let gw = TestGateway::start(&jwt_config(
        &up,
        "",
        &format!("algorithm = \"HS256\"\nsigning_key = {}", lit(&secret)),
    ))
    .await;
    let r = client()
        .get(gw.url("/.auth/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body = r.text().await.unwrap();
    let text = std::fs::read_to_string(&secret).unwrap();
    assert!(!body.contains(text.trim()), "secret published");
}

// 8 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn jwt_hs256_secret_from_file_or_env_round_trips_and_keys_stay_apart() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let (file_secret, _) = gen_key(keys.path(), JwtAlgorithm::HS256, "file");
    let (env_secret, _) = gen_key(keys.path(), JwtAlgorithm::HS256, "env");
    let var = format!("AUTHGATE_TEST_JWT_SECRET_{}", std::process::id());
    std::env::set_var(&var, std::fs::read_to_string(&env_secret).unwrap().trim());
    let up = Upstream::start().await;
    let from_file = TestGateway::start(&jwt_config(
        &up,
        "",
        &format!("algorithm = \"HS256\"\nsigning_key = {}", lit(&file_secret)),
    ))
    .await;
    let from_env = TestGateway::start(&jwt_config(
        &up,
        "",
        &format!("algorithm = \"HS256\"\nsigning_key_env = \"{var}\""),
    ))
    .await;

    let tf = login_token(&from_file, "alice").await;
    let te = login_token(&from_env, "alice").await;
    for tok in [&tf, &te] {
        assert_eq!(part(tok, 0)["alg"], "HS256");
    }
    assert_eq!(status_with_token(&from_file, &tf).await, 200);
    assert_upstream_saw_alice(&up);
    assert_eq!(status_with_token(&from_env, &te).await, 200);
    assert_upstream_saw_alice(&up);
    let before = up.count();
    assert_eq!(status_with_token(&from_env, &tf).await, 401);
    assert_eq!(status_with_token(&from_file, &te).await, 401);
    assert_eq!(up.count(), before);
}

/// Loads `[auth.jwt]` `jwt` from a fresh config file (must succeed) and returns
/// `Gateway::start`'s error (it must fail).
async fn start_error(up: &Upstream, jwt: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gateway.test\"\n\n{}",
        jwt_config(up, "", jwt)
    );
    std::fs::write(&path, text).unwrap();
    let cfg = authgate::Config::load(&path).expect("Config::load should accept it");
    match authgate::Gateway::start(cfg).await {
        Ok(gw) => {
            gw.shutdown().await;
            panic!("gateway started with a weak HS256 secret: {jwt}");
        }
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn jwt_hs256_short_or_sample_secret_config_loads_but_start_fails_naming_key() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    for (name, secret) in [
        ("short", "Zq3xT9vLm2Kp8RwY4nBc"),
        ("sample", "your-256-bit-secret"),
    ] {
        let file = keys.path().join(format!("{name}.secret"));
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        let e = start_error(
            &up,
            &format!("algorithm = \"HS256\"\nsigning_key = {}", lit(&file)),
        )
        .await;
        assert!(e.contains("auth.jwt.signing_key"), "{name}: {e}");
        assert!(!e.contains(secret), "{name}: error shows the secret: {e}");

        let var = format!(
            "AUTHGATE_TEST_WEAK_{}_{}",
            name.to_uppercase(),
            std::process::id()
        );
        std::env::set_var(&var, secret);
        let e = start_error(
            &up,
            &format!("algorithm = \"HS256\"\nsigning_key_env = \"{var}\""),
        )
        .await;
        assert!(e.contains("auth.jwt.signing_key_env"), "{name} env: {e}");
        assert!(
            !e.contains(secret),
            "{name} env: error shows the secret: {e}"
        );
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn jwt_es256_and_rs256_login_round_trip_upstream_sees_identity() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    for (alg, name) in [
        (JwtAlgorithm::ES256, "ES256"),
        (JwtAlgorithm::RS256, "RS256"),
    ] {
        let (private, _) = gen_key(keys.path(), alg, name);
        let gw = TestGateway::start(&jwt_config(
            &up,
            "",
            &format!("algorithm = \"{name}\"\nsigning_key = {}", lit(&private)),
        ))
        .await;
        let token = login_token(&gw, "alice").await;
        assert_eq!(part(&token, 0)["alg"], name);
        let before = up.count();
        assert_eq!(status_with_token(&gw, &token).await, 200, "{name}");
        assert_eq!(up.count(), before + 1);
        assert_upstream_saw_alice(&up);
        // A flipped signature byte fails, so the round trip really verified something.
        let (msg, mut sig) = signed_parts(&token);
        sig[10] ^= 1;
        let forged = format!("{msg}.{}", B64.encode(&sig));
        assert_eq!(status_with_token(&gw, &forged).await, 401, "{name}");
        gw.shutdown().await;
    }
}

// 9 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn jwt_bearer_authenticates_only_when_enabled_and_authorization_not_forwarded() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let (private, _) = gen_key(keys.path(), JwtAlgorithm::EdDSA, "jwt");
    let up = Upstream::start().await;
    let key = format!("signing_key = {}", lit(&private));
    let on = TestGateway::start(&jwt_config(
        &up,
        "",
        &format!("{key}\naccept_bearer = true"),
    ))
    .await;
    let off = TestGateway::start(&jwt_config(&up, "", &key)).await;
    let token = login_token(&on, "alice").await;

    let bearer = |gw: &TestGateway| {
        client()
            .get(gw.url("/app/api"))
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "application/json")
            .send()
    };
    let r = bearer(&on).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_upstream_saw_alice(&up);
    let seen = up.last();
    assert_eq!(seen.uri, "/app/api");
    assert_eq!(
        seen.one("authorization"),
        None,
        "bearer token forwarded upstream"
    );

    let before = up.count();
    let r = bearer(&off).await.unwrap();
    assert_eq!(r.status(), 401, "bearer accepted with accept_bearer off");
    assert_eq!(up.count(), before);
    // Same token as a cookie on the same gateway: fine, so only the bearer path was refused.
    assert_eq!(status_with_token(&off, &token).await, 200);
}

// 10 -----------------------------------------------------------------------------------------

#[tokio::test]
async fn jwt_me_reports_jwt_mode_and_verify_accepts_jwt_cookie() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let (private, _) = gen_key(keys.path(), JwtAlgorithm::EdDSA, "jwt");
    let up = Upstream::start().await;
    let gw = TestGateway::start(&jwt_config(
        &up,
        "",
        &format!("signing_key = {}", lit(&private)),
    ))
    .await;
    let token = login_token(&gw, "alice").await;

    let r = get_with_token(&gw, "/.auth/me", &token).await;
    assert_eq!(r.status(), 200);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["mode"], "jwt");
    assert_eq!(me["user"], "alice");
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["groups"], json!(["admins", "staff"]));
    assert_eq!(me["expires_at"].as_u64(), Some(claim_u64(&token, "exp")));
    let r = client().get(gw.url("/.auth/me")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let r = get_with_token(&gw, "/.auth/verify", &token).await;
    assert!(r.status().is_success(), "{}", r.status());
    let h = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(h("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(h("x-forwarded-email").as_deref(), Some("alice@example.com"));
    let r = get_with_token(&gw, "/.auth/verify?allow_groups=nobody", &token).await;
    assert_eq!(r.status(), 403);
    let r = get_with_token(&gw, "/.auth/verify?allow_groups=staff", &token).await;
    assert!(r.status().is_success());
    let mut forged = part(&token, 1);
    forged["sub"] = json!("bob");
    let [hd, _, sig]: [&str; 3] = token.split('.').collect::<Vec<_>>().try_into().unwrap();
    let forged = format!("{hd}.{}.{sig}", b64_json(&forged));
    let r = get_with_token(&gw, "/.auth/verify", &forged).await;
    assert_eq!(r.status(), 401);
    assert_eq!(up.count(), 0, "gateway endpoints reached the upstream");
}

// 11 -----------------------------------------------------------------------------------------

#[cfg(unix)]
#[tokio::test]
async fn gen_jwt_key_cli_es256_writes_private_0600_and_refuses_overwrite() {
    use std::os::unix::fs::PermissionsExt as _;
    init();
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("k");
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
            .current_dir(dir.path())
            .args(["gen-jwt-key", "--alg", "ES256", "--out"])
            .arg(&prefix)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (private, public) = (dir.path().join("k.pem"), dir.path().join("k.pub.pem"));
    let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "private key mode {mode:o}");
    let before = (
        std::fs::read(&private).unwrap(),
        std::fs::read(&public).unwrap(),
    );
    assert!(before.0.starts_with(b"-----BEGIN PRIVATE KEY-----"));
    assert!(before.1.starts_with(b"-----BEGIN PUBLIC KEY-----"));

    let again = run();
    assert!(!again.status.success(), "overwrote an existing key");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    let after = (
        std::fs::read(&private).unwrap(),
        std::fs::read(&public).unwrap(),
    );
    assert_eq!(before, after, "existing key files changed");

    // The generated key is usable as an ES256 signing key.
    let up = Upstream::start().await;
    let gw = TestGateway::start(&jwt_config(
        &up,
        "",
        &format!("algorithm = \"ES256\"\nsigning_key = {}", lit(&private)),
    ))
    .await;
    let token = login_token(&gw, "alice").await;
    assert_eq!(status_with_token(&gw, &token).await, 200);
}

#[tokio::test]
async fn jwt_logout_with_renewed_token_also_revokes_the_token_it_was_renewed_from() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let (private, _) = gen_key(keys.path(), JwtAlgorithm::EdDSA, "jwt");
    let up = Upstream::start().await;
    let jwt = format!("signing_key = {}\nttl = \"4s\"", lit(&private));
    let gw = TestGateway::start(&jwt_config(&up, "", &jwt)).await;
    let a = login_token(&gw, "alice").await;
    let other = login_token(&gw, "alice").await;
    assert_ne!(
        part(&a, 1)["sid"],
        part(&other, 1)["sid"],
        "each login is its own session"
    );
    sleep_until_unix(claim_u64(&a, "exp") - 1).await;
    let r = get_with_token(&gw, "/app/late", &a).await;
    assert_eq!(r.status(), 200);
    let b = token_of(&set_cookie_pair(&r).expect("renewal due"));
    assert_eq!(
        part(&b, 1)["sid"],
        part(&a, 1)["sid"],
        "renewal keeps the login session id"
    );
    assert_eq!(status_with_token(&gw, &b).await, 200);
    assert_eq!(logout_json(&gw, &b, false).await.status(), 200);
    assert_eq!(
        status_with_token(&gw, &b).await,
        401,
        "the presented token is revoked"
    );
    assert_eq!(
        status_with_token(&gw, &a).await,
        401,
        "the pre-renewal token dies with its session"
    );
    assert_eq!(
        status_with_token(&gw, &other).await,
        200,
        "another login of the same user lives"
    );
}
