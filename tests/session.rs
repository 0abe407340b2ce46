mod support;
use support::*;

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Identity header names of both presets, normalised (`_` and `.` read as `-`).
const IDENTITY_NAMES: [&str; 7] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "remote-user",
    "remote-email",
    "remote-groups",
    "remote-name",
];

/// Spoofed identity headers in every spelling; every value contains `spoofed`.
const SPOOFED: &str = "X-Forwarded-User: spoofed\r\n\
x-forwarded-user: spoofed\r\n\
X_Forwarded_User: spoofed\r\n\
X.Forwarded.User: spoofed\r\n\
Remote-User: spoofed\r\n\
Remote_User: spoofed\r\n\
X-Forwarded-Email: spoofed@evil.com\r\n\
X-Forwarded-Groups: spoofed-admins\r\n";

/// `extra` (sections such as `[auth]`), users alice (admins, staff) and bob (staff), and two
/// routes to `up`: `/` public and `/app` authenticated.
fn config(up: &Upstream, extra: &str) -> String {
    format!(
        "{extra}\n{}{}[[routes]]\npath_prefix = \"/\"\nupstream = \"{u}\"\naccess = \"public\"\n\n\
         [[routes]]\npath_prefix = \"/app\"\nupstream = \"{u}\"\naccess = \"authenticated\"\n\n",
        user_toml("alice", &["admins", "staff"]),
        user_toml("bob", &["staff"]),
        u = up.url()
    )
}

/// Every Set-Cookie value of a response.
fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// A Set-Cookie split into name, value and attributes.
#[derive(Debug)]
struct SetCookie {
    name: String,
    value: String,
    attrs: Vec<String>,
}

impl SetCookie {
    fn parse(s: &str) -> SetCookie {
        let mut parts = s.split(';').map(str::trim);
        let (name, value) = parts.next().unwrap().split_once('=').unwrap();
        SetCookie {
            name: name.to_string(),
            value: value.to_string(),
            attrs: parts.map(String::from).collect(),
        }
    }

    /// Whether a flag or `key=...` attribute is present (case-insensitive key).
    fn has(&self, key: &str) -> bool {
        self.attrs.iter().any(|a| {
            let k = a.split_once('=').map_or(a.as_str(), |(k, _)| k);
            k.eq_ignore_ascii_case(key)
        })
    }

    /// The value of a `key=value` attribute.
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.iter().find_map(|a| {
            a.split_once('=')
                .filter(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        })
    }

    fn pair(&self) -> String {
        format!("{}={}", self.name, self.value)
    }
}

/// The Set-Cookie for cookie `name`, if the response has one.
fn find_set_cookie(r: &reqwest::Response, name: &str) -> Option<SetCookie> {
    set_cookies(r)
        .iter()
        .map(|s| SetCookie::parse(s))
        .find(|c| c.name == name)
}

/// The (HTML-unescaped) value of hidden input `name` in a page.
fn hidden(page: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker)? + marker.len();
    let end = page[start..].find('"')? + start;
    Some(html_escape::decode_html_entities(&page[start..end]).into_owned())
}

/// A fetched login page: its CSRF token, the matching `name=value` cookie pair, and the HTML.
struct LoginPage {
    csrf: String,
    cookie: String,
    body: String,
}

/// GETs the login page (`path_and_query` under `/.auth/login`) without cookies; checks that the
/// hidden CSRF field equals the CSRF cookie it sets.
async fn login_page(gw: &TestGateway, path_and_query: &str) -> LoginPage {
    let r = client()
        .get(gw.url(path_and_query))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "login page");
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let c = set_cookies(&r)
        .iter()
        .map(|s| SetCookie::parse(s))
        .find(|c| c.name.ends_with("authgate_csrf"))
        .expect("login page set no CSRF cookie");
    let body = r.text().await.unwrap();
    let csrf = hidden(&body, "csrf").expect("login page has no csrf field");
    assert_eq!(
        csrf, c.value,
        "hidden CSRF field differs from the CSRF cookie"
    );
    LoginPage {
        csrf,
        cookie: c.pair(),
        body,
    }
}

/// POSTs the login form with `cookie` as the Cookie header.
async fn post_form(gw: &TestGateway, cookie: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    client()
        .post(gw.url("/.auth/login"))
        .header("cookie", cookie)
        .header("accept", "text/html")
        .form(fields)
        .send()
        .await
        .unwrap()
}

/// POSTs a JSON login.
async fn post_json(gw: &TestGateway, body: serde_json::Value) -> reqwest::Response {
    client()
        .post(gw.url("/.auth/login"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// GET with a Cookie header (and an API client's Accept), returning the status.
async fn get_status(gw: &TestGateway, path: &str, cookie: &str) -> u16 {
    client()
        .get(gw.url(path))
        .header("cookie", cookie)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A raw GET over a fresh connection; `headers` are complete `Name: value\r\n` lines.
async fn raw_get(gw: &TestGateway, path: &str, headers: &str) -> String {
    raw_request(
        gw.addr,
        &format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\n{headers}Connection: close\r\n\r\n"),
    )
    .await
}

/// Asserts that no request header seen upstream carries a spoofed value.
fn assert_nothing_spoofed(s: &Seen) {
    for (k, v) in &s.headers {
        assert!(
            !String::from_utf8_lossy(v.as_bytes()).contains("spoofed"),
            "spoofed header reached the upstream: {k}: {v:?}"
        );
    }
}

/// Identity headers (any spelling) seen upstream.
fn identity_headers(s: &Seen) -> Vec<String> {
    s.headers
        .keys()
        .map(|k| k.as_str().replace(['_', '.'], "-"))
        .filter(|k| IDENTITY_NAMES.contains(&k.as_str()))
        .collect()
}

#[tokio::test]
async fn browser_flow_redirects_to_login_then_back_and_upstream_sees_identity_once_without_gateway_cookie(
) {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up, "")).await;

    // Unauthenticated navigation: 302 to the login page, rd carrying path and query.
    let r = client()
        .get(gw.url("/app?x=1&y=2"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let q = loc
        .strip_prefix("http://gateway.test/.auth/login?")
        .unwrap_or_else(|| panic!("unexpected Location {loc}"));
    let params: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(
        params,
        [("rd".to_string(), "/app?x=1&y=2".to_string())],
        "rd must encode the whole path and query: {loc}"
    );
    assert_eq!(up.count(), 0);

    // The login page: accessible, self-contained, with the CSRF pair.
    let page = login_page(&gw, &loc["http://gateway.test".len()..]).await;
    let b = &page.body;
    assert!(b.contains("<label for=\"username\">") && b.contains("<label for=\"password\">"));
    assert!(b.contains("autofocus"));
    assert!(b.contains("type=\"password\""));
    assert!(!b.contains("src="), "external asset in login page");
    assert!(!b.contains("href=\"http") && !b.contains("href=http") && !b.contains("<script"));
    assert!(page.cookie.starts_with("authgate_csrf="));
    assert_eq!(page.csrf.len(), 43);
    let rd = hidden(b, "rd").unwrap();
    assert_eq!(rd, "/app?x=1&y=2");

    // The form POST: 303 back to the original URL with a hardened session cookie.
    let r = post_form(
        &gw,
        &page.cookie,
        &[
            ("csrf", &page.csrf),
            ("rd", &rd),
            ("username", "alice"),
            ("password", PASSWORD),
        ],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "http://gateway.test/app?x=1&y=2");
    let c = find_set_cookie(&r, "authgate").expect("no session cookie set");
    assert_eq!(c.value.len(), 43, "{c:?}");
    assert!(c.has("HttpOnly"), "{c:?}");
    assert_eq!(c.attr("SameSite"), Some("Lax"), "{c:?}");
    assert_eq!(c.attr("Path"), Some("/"), "{c:?}");
    assert_eq!(c.attr("Max-Age"), Some("43200"), "{c:?}");
    assert!(!c.has("Domain"), "{c:?}");
    assert!(
        !c.has("Secure"),
        "http public_url must not set Secure: {c:?}"
    );

    // The protected request reaches the upstream with the identity and without gateway cookies.
    let cookie = format!("theme=dark; {}; {}; lang=en", c.pair(), page.cookie);
    let r = client()
        .get(gw.url("/app?x=1&y=2"))
        .header("cookie", cookie)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
    let s = up.last();
    assert_eq!(s.uri, "/app?x=1&y=2");
    assert_eq!(s.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(
        s.one("x-forwarded-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(s.one("x-forwarded-groups").as_deref(), Some("admins,staff"));
    assert_eq!(s.all("cookie"), ["theme=dark; lang=en"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn https_public_url_cookies_are_host_prefixed_and_secure() {
    init();
    let up = Upstream::start().await;
    let server = "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://gateway.test\"\n";
    let gw = TestGateway::start(&config(&up, server)).await;

    let r = post_json(
        &gw,
        serde_json::json!({"username": "alice", "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(
        find_set_cookie(&r, "authgate").is_none(),
        "unprefixed cookie under https"
    );
    let c = find_set_cookie(&r, "__Host-authgate").expect("no __Host-authgate cookie");
    assert!(c.has("Secure") && c.has("HttpOnly"), "{c:?}");
    assert_eq!(c.attr("Path"), Some("/"));
    assert!(
        !c.has("Domain"),
        "__Host- cookies must not have Domain: {c:?}"
    );

    let page = login_page(&gw, "/.auth/login").await;
    assert!(
        page.cookie.starts_with("__Host-authgate_csrf="),
        "{}",
        page.cookie
    );

    let r = client()
        .get(gw.url("/app/x"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("https://gateway.test/.auth/login?rd="));

    assert_eq!(get_status(&gw, "/app/x", &c.pair()).await, 200);
    let s = up.last();
    assert_eq!(s.one("x-forwarded-user").as_deref(), Some("alice"));
    assert!(
        s.all("cookie").is_empty(),
        "gateway cookie reached the upstream"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn json_login_returns_user_and_rejects_malformed_json_and_other_content_types() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up, "")).await;

    let r = post_json(
        &gw,
        serde_json::json!({"username": "alice", "password": PASSWORD, "rd": "/app/x"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let cookie = find_set_cookie(&r, "authgate")
        .expect("no session cookie")
        .pair();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["user"], "alice");
    assert_eq!(v["redirect"], "/app/x");
    assert_eq!(get_status(&gw, "/.auth/me", &cookie).await, 200);

    for bad in [
        "{\"username\": \"alice\", \"password\": ",
        "{\"username\": 5, \"password\": \"x\"}",
        "[1, 2]",
    ] {
        let r = client()
            .post(gw.url("/.auth/login"))
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert!(find_set_cookie(&r, "authgate").is_none());
    }

    let good = serde_json::json!({"username": "alice", "password": PASSWORD}).to_string();
    for ctype in [
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut req = client().post(gw.url("/.auth/login")).body(good.clone());
        if let Some(t) = ctype {
            req = req.header("content-type", t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 415, "{ctype:?}");
        assert!(find_set_cookie(&r, "authgate").is_none());
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn login_wrong_password_returns_same_response_as_unknown_user() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up, "[auth]\nlogin_failures_per_minute = 50\n")).await;

    // JSON: byte-identical.
    let wrong = post_json(
        &gw,
        serde_json::json!({"username": "alice", "password": "nope-123"}),
    )
    .await;
    let unknown = post_json(
        &gw,
        serde_json::json!({"username": "alice2", "password": "nope-123"}),
    )
    .await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.status(), unknown.status());
    assert_eq!(set_cookies(&wrong), set_cookies(&unknown));
    assert!(set_cookies(&wrong).is_empty());
    assert_eq!(
        wrong.headers()["content-type"],
        unknown.headers()["content-type"]
    );
    let (a, b) = (wrong.bytes().await.unwrap(), unknown.bytes().await.unwrap());
    assert_eq!(a, b, "JSON bodies differ");

    // Form: identical once the echoed username is masked.
    let page = login_page(&gw, "/.auth/login").await;
    let wrong = post_form(
        &gw,
        &page.cookie,
        &[
            ("csrf", &page.csrf),
            ("rd", "/"),
            ("username", "alice"),
            ("password", "nope-123"),
        ],
    )
    .await;
    let unknown = post_form(
        &gw,
        &page.cookie,
        &[
            ("csrf", &page.csrf),
            ("rd", "/"),
            ("username", "alice2"),
            ("password", "nope-123"),
        ],
    )
    .await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.status(), unknown.status());
    assert_eq!(set_cookies(&wrong), set_cookies(&unknown));
    let a = wrong
        .text()
        .await
        .unwrap()
        .replace("value=\"alice\"", "value=\"USER\"");
    let b = unknown
        .text()
        .await
        .unwrap()
        .replace("value=\"alice2\"", "value=\"USER\"");
    assert!(a.contains("Invalid username or password."));
    assert!(!a.contains("nope-123"), "password echoed back");
    assert_eq!(a, b, "form bodies differ beyond the echoed username");
    gw.shutdown().await;
}

/// A successful form login of alice with `rd`.
async fn login_with_rd(gw: &TestGateway, page: &LoginPage, rd: &str) -> reqwest::Response {
    post_form(
        gw,
        &page.cookie,
        &[
            ("csrf", &page.csrf),
            ("rd", rd),
            ("username", "alice"),
            ("password", PASSWORD),
        ],
    )
    .await
}

#[tokio::test]
async fn login_rd_open_redirect_attempts_fall_back_to_root() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let page = login_page(&gw, "/.auth/login").await;

    // Control: a local path is kept.
    let r = login_with_rd(&gw, &page, "/app?x=1").await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "http://gateway.test/app?x=1");

    for bad in [
        "//evil.com",
        "/\\evil.com",
        "https://evil.com",
        "/%2F%2Fevil.com",
        "%2F%2Fevil.com",
        "/%5Cevil.com",
        "/a%0d%0aSet-Cookie:x",
        "/a\r\nSet-Cookie:x",
        "javascript:alert(1)",
        "http://gateway.test.evil.com/",
    ] {
        // The login page query: the hidden field already holds the safe value.
        let q: String = url::form_urlencoded::byte_serialize(bad.as_bytes()).collect();
        let r = client()
            .get(gw.url(&format!("/.auth/login?rd={q}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap();
        assert_eq!(
            hidden(&body, "rd").as_deref(),
            Some("/"),
            "page rd for {bad:?}"
        );
        assert!(!body.contains("evil.com"), "{bad:?} echoed into the page");

        // The form field.
        let r = login_with_rd(&gw, &page, bad).await;
        assert_eq!(r.status(), 303, "{bad:?}");
        assert_eq!(r.headers().get_all("location").iter().count(), 1);
        assert_eq!(r.headers()["location"], "http://gateway.test/", "{bad:?}");
        assert!(
            set_cookies(&r).iter().all(|c| !c.starts_with("x")),
            "{bad:?}"
        );

        // The JSON field.
        let r = post_json(
            &gw,
            serde_json::json!({"username": "alice", "password": PASSWORD, "rd": bad}),
        )
        .await;
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["redirect"], "/", "{bad:?}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn login_ignores_planted_session_id_and_issues_fresh_ids() {
    use base64::Engine;
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let planted = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0x5au8; 32]);
    assert_eq!(planted.len(), 43);
    let planted_cookie = format!("authgate={planted}");

    assert_eq!(get_status(&gw, "/.auth/me", &planted_cookie).await, 401);
    assert_eq!(get_status(&gw, "/app/x", &planted_cookie).await, 401);

    let page = login_page(&gw, "/.auth/login").await;
    let r = post_form(
        &gw,
        &format!("{planted_cookie}; {}", page.cookie),
        &[
            ("csrf", &page.csrf),
            ("rd", "/"),
            ("username", "alice"),
            ("password", PASSWORD),
        ],
    )
    .await;
    assert_eq!(r.status(), 303);
    let form_id = find_set_cookie(&r, "authgate")
        .expect("no session cookie")
        .value;
    assert_ne!(form_id, planted, "login adopted the client's session id");

    let r = client()
        .post(gw.url("/.auth/login"))
        .header("cookie", &planted_cookie)
        .json(&serde_json::json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let json_id = find_set_cookie(&r, "authgate")
        .expect("no session cookie")
        .value;
    assert_ne!(json_id, planted, "login adopted the client's session id");
    assert_ne!(json_id, form_id, "two logins share a session id");
    assert_eq!(json_id.len(), 43);

    assert_eq!(get_status(&gw, "/.auth/me", &planted_cookie).await, 401);
    assert_eq!(get_status(&gw, "/app/x", &planted_cookie).await, 401);
    assert_eq!(up.count(), 0, "planted id reached the upstream");
    assert_eq!(
        get_status(&gw, "/.auth/me", &format!("authgate={form_id}")).await,
        200
    );
    assert_eq!(
        get_status(&gw, "/.auth/me", &format!("authgate={json_id}")).await,
        200
    );
    gw.shutdown().await;
}

/// GETs the logout page with `session` and returns (csrf token, CSRF cookie pair, page).
async fn logout_page(gw: &TestGateway, session: &str) -> (String, String, String) {
    let r = client()
        .get(gw.url("/.auth/logout"))
        .header("cookie", session)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let c = find_set_cookie(&r, "authgate_csrf").expect("logout page set no CSRF cookie");
    let body = r.text().await.unwrap();
    let csrf = hidden(&body, "csrf").expect("no csrf field on logout page");
    assert_eq!(csrf, c.value);
    (csrf, c.pair(), body)
}

async fn post_logout(gw: &TestGateway, path: &str, cookie: &str, body: &str) -> reqwest::Response {
    client()
        .post(gw.url(path))
        .header("cookie", cookie)
        .header("accept", "text/html")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn logout_needs_csrf_clears_cookie_kills_session_and_all_kills_every_session() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let s = login_json(&gw, "alice", PASSWORD).await;

    let (csrf, csrf_cookie, page) = logout_page(&gw, &s).await;
    assert!(
        page.contains("method=\"post\" action=\"/.auth/logout\""),
        "{page}"
    );
    assert!(page.contains("action=\"/.auth/logout?all=1\""));
    let both = format!("{s}; {csrf_cookie}");

    // Without the token: refused, session intact.
    let r = post_logout(&gw, "/.auth/logout", &both, "").await;
    assert_eq!(r.status(), 403);
    assert!(find_set_cookie(&r, "authgate").is_none());
    let r = client()
        .post(gw.url("/.auth/logout"))
        .header("cookie", &both)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "logout without content type");
    assert_eq!(get_status(&gw, "/.auth/me", &s).await, 200);

    // With the token: 303, cookie cleared.
    let r = post_logout(&gw, "/.auth/logout", &both, &format!("csrf={csrf}")).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "http://gateway.test/.auth/login");
    let cleared = find_set_cookie(&r, "authgate").expect("cookie not cleared");
    assert_eq!(cleared.value, "");
    assert_eq!(cleared.attr("Max-Age"), Some("0"));
    assert_eq!(cleared.attr("Path"), Some("/"));

    // Replaying the old cookie.
    assert_eq!(get_status(&gw, "/app/x", &s).await, 401);
    let r = client()
        .get(gw.url("/app/x"))
        .header("cookie", &s)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("http://gateway.test/.auth/login?rd="));
    assert_eq!(get_status(&gw, "/.auth/me", &s).await, 401);
    assert_eq!(up.count(), 0);

    // Sign out everywhere.
    let a1 = login_json(&gw, "alice", PASSWORD).await;
    let a2 = login_json(&gw, "alice", PASSWORD).await;
    let b1 = login_json(&gw, "bob", PASSWORD).await;
    assert_ne!(a1, a2);
    for c in [&a1, &a2, &b1] {
        assert_eq!(get_status(&gw, "/.auth/me", c).await, 200);
    }
    let r = post_logout(
        &gw,
        "/.auth/logout?all=1",
        &format!("{a1}; {csrf_cookie}"),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(get_status(&gw, "/.auth/me", &a1).await, 401);
    assert_eq!(
        get_status(&gw, "/.auth/me", &a2).await,
        401,
        "other session of the user survived"
    );
    assert_eq!(get_status(&gw, "/app/x", &a2).await, 401);
    assert_eq!(
        get_status(&gw, "/.auth/me", &b1).await,
        200,
        "another user's session was killed"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn session_idle_timeout_expires_unused_session_and_use_keeps_it_alive() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up, "[auth]\nidle_timeout = \"1s\"\n")).await;
    let s = login_json(&gw, "alice", PASSWORD).await;
    let start = Instant::now();
    // Three uses 0.5 s apart: alive at 1.5 s, past the idle limit counted from login.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            get_status(&gw, "/app/x", &s).await,
            200,
            "at {:?}",
            start.elapsed()
        );
    }
    assert!(start.elapsed() >= Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(get_status(&gw, "/app/x", &s).await, 401);
    assert_eq!(get_status(&gw, "/.auth/me", &s).await, 401);
    gw.shutdown().await;
}

#[tokio::test]
async fn session_max_lifetime_expires_session_even_while_in_use() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(
        &up,
        "[auth]\nidle_timeout = \"1h\"\nmax_lifetime = \"2s\"\n",
    ))
    .await;
    let r = post_json(
        &gw,
        serde_json::json!({"username": "alice", "password": PASSWORD}),
    )
    .await;
    let start = Instant::now();
    assert_eq!(r.status(), 200);
    let c = find_set_cookie(&r, "authgate").unwrap();
    assert_eq!(c.attr("Max-Age"), Some("2"));
    let s = c.pair();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            get_status(&gw, "/app/x", &s).await,
            200,
            "at {:?}",
            start.elapsed()
        );
    }
    tokio::time::sleep(Duration::from_millis(2200).saturating_sub(start.elapsed())).await;
    assert_eq!(get_status(&gw, "/app/x", &s).await, 401);
    assert_eq!(get_status(&gw, "/.auth/me", &s).await, 401);
    gw.shutdown().await;
}

#[tokio::test]
async fn spoofed_identity_headers_in_every_spelling_never_reach_upstream() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let s = login_json(&gw, "alice", PASSWORD).await;

    // Public route: no identity at all.
    let r = raw_get(&gw, "/public", SPOOFED).await;
    assert_eq!(raw_status(&r), 200, "{r}");
    let seen = up.last();
    assert_eq!(seen.uri, "/public");
    assert_nothing_spoofed(&seen);
    assert!(identity_headers(&seen).is_empty(), "{:?}", seen.headers);

    // Protected route: exactly the gateway's values, once each.
    let r = raw_get(&gw, "/app/x", &format!("{SPOOFED}Cookie: {s}\r\n")).await;
    assert_eq!(raw_status(&r), 200, "{r}");
    let seen = up.last();
    assert_eq!(seen.uri, "/app/x");
    assert_nothing_spoofed(&seen);
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(
        seen.one("x-forwarded-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        seen.one("x-forwarded-groups").as_deref(),
        Some("admins,staff")
    );
    let mut names = identity_headers(&seen);
    names.sort();
    assert_eq!(
        names,
        [
            "x-forwarded-email",
            "x-forwarded-groups",
            "x-forwarded-user"
        ]
    );

    // Unauthenticated request with spoofed headers to the protected route: refused.
    let r = raw_get(&gw, "/app/x", SPOOFED).await;
    assert_eq!(raw_status(&r), 401, "{r}");
    assert_eq!(up.count(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn spoofed_headers_are_stripped_and_authelia_names_injected_under_authelia_preset() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up, "[headers]\npreset = \"authelia\"\n")).await;
    let s = login_json(&gw, "alice", PASSWORD).await;

    let r = raw_get(&gw, "/public", SPOOFED).await;
    assert_eq!(raw_status(&r), 200, "{r}");
    let seen = up.last();
    assert_nothing_spoofed(&seen);
    assert!(identity_headers(&seen).is_empty(), "{:?}", seen.headers);

    let r = raw_get(&gw, "/app/x", &format!("{SPOOFED}Cookie: {s}\r\n")).await;
    assert_eq!(raw_status(&r), 200, "{r}");
    let seen = up.last();
    assert_nothing_spoofed(&seen);
    assert_eq!(seen.one("remote-user").as_deref(), Some("alice"));
    assert_eq!(
        seen.one("remote-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(seen.one("remote-groups").as_deref(), Some("admins,staff"));
    assert_eq!(seen.one("remote-name").as_deref(), Some("alice Example"));
    assert!(
        seen.all("x-forwarded-user").is_empty(),
        "spoofed X-Forwarded-User passed"
    );
    let mut names = identity_headers(&seen);
    names.sort();
    assert_eq!(
        names,
        [
            "remote-email",
            "remote-groups",
            "remote-name",
            "remote-user"
        ]
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn connection_header_naming_identity_headers_cannot_remove_injected_ones() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let s = login_json(&gw, "alice", PASSWORD).await;
    let headers = format!(
        "Cookie: {s}\r\nConnection: X-Forwarded-User, X-Forwarded-Email\r\nConnection: x-forwarded-groups\r\n"
    );
    let r = raw_get(&gw, "/app/x", &headers).await;
    assert_eq!(raw_status(&r), 200, "{r}");
    let seen = up.last();
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(
        seen.one("x-forwarded-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        seen.one("x-forwarded-groups").as_deref(),
        Some("admins,staff")
    );
    // Nor may the client's Connection header travel on for a proxy behind us to act upon.
    for v in seen.all("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("forwarded"),
            "Connection: {v}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn path_tricks_never_reach_protected_route_unauthenticated() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}[[routes]]\npath_prefix = \"/\"\nupstream = \"{u}\"\naccess = \"public\"\n\n\
         [[routes]]\npath_prefix = \"/admin\"\nupstream = \"{u}\"\naccess = \"authenticated\"\n",
        user_toml("alice", &["admins"]),
        u = up.url()
    ))
    .await;

    let tricks: [(&str, Option<u16>); 11] = [
        ("/public/../admin", None),
        ("/%2e%2e/admin", None),
        ("/x/%2E%2E/admin", None),
        ("/./admin", None),
        ("/admin;foo", None),
        ("//admin", None),
        ("/adm%69n", None),
        ("/%61dmin/x", None),
        ("/admin%2fx", Some(400)),
        ("/admin%5cx", Some(400)),
        ("/x/..;/admin", Some(400)),
    ];
    for (path, exact) in tricks {
        for accept in ["", "Accept: text/html\r\n"] {
            let r = raw_get(&gw, path, accept).await;
            let status = raw_status(&r);
            match exact {
                Some(code) => assert_eq!(status, code, "{path} {accept:?}: {r}"),
                None => assert!([401, 302, 400].contains(&status), "{path} {accept:?}: {r}"),
            }
            if status == 302 {
                assert!(
                    r.contains("Location: http://gateway.test/.auth/login?rd=")
                        || r.contains("location: http://gateway.test/.auth/login?rd="),
                    "{r}"
                );
            }
        }
    }
    assert_eq!(
        up.count(),
        0,
        "a path trick reached the upstream: {:?}",
        up.seen().iter().map(|s| &s.uri).collect::<Vec<_>>()
    );

    // Controls: the public route works, and authenticated requests see the normalised path.
    let r = raw_get(&gw, "/public/x", "").await;
    assert_eq!(raw_status(&r), 200, "{r}");
    assert_eq!(up.last().uri, "/public/x");
    let s = login_json(&gw, "alice", PASSWORD).await;
    let r = raw_get(&gw, "/public/../admin", &format!("Cookie: {s}\r\n")).await;
    assert_eq!(raw_status(&r), 200, "{r}");
    assert_eq!(up.last().uri, "/admin");
    assert_eq!(up.last().one("x-forwarded-user").as_deref(), Some("alice"));
    gw.shutdown().await;
}

#[tokio::test]
async fn group_and_user_rules_allow_members_forbid_others_and_me_verify_report_identity() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}[[routes]]\npath_prefix = \"/admin\"\nupstream = \"{u}\"\naccess = \"authenticated\"\nallow_groups = [\"admins\"]\n\n\
         [[routes]]\npath_prefix = \"/bob\"\nupstream = \"{u}\"\naccess = \"authenticated\"\nallow_users = [\"bob\"]\n",
        config(&up, ""),
        u = up.url()
    ))
    .await;
    let alice = login_json(&gw, "alice", PASSWORD).await;
    let bob = login_json(&gw, "bob", PASSWORD).await;

    assert_eq!(get_status(&gw, "/admin/x", &alice).await, 200);
    assert_eq!(up.last().one("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(get_status(&gw, "/bob/x", &bob).await, 200);
    assert_eq!(up.last().one("x-forwarded-user").as_deref(), Some("bob"));
    let before = up.count();

    for (path, cookie) in [("/admin/x", &bob), ("/bob/x", &alice)] {
        let r = client()
            .get(gw.url(path))
            .header("cookie", cookie)
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["status"], 403);

        let r = client()
            .get(gw.url(path))
            .header("cookie", cookie)
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(r.text().await.unwrap().contains("403"));
    }
    assert_eq!(
        up.count(),
        before,
        "a forbidden request reached the upstream"
    );

    // /.auth/me
    let r = client()
        .get(gw.url("/.auth/me"))
        .header("cookie", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["user"], "alice");
    assert_eq!(v["email"], "alice@example.com");
    assert_eq!(v["name"], "alice Example");
    assert_eq!(v["groups"], serde_json::json!(["admins", "staff"]));
    assert_eq!(v["mode"], "session");
    let r = client().get(gw.url("/.auth/me")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // /.auth/verify
    let verify = |q: &'static str, cookie: Option<String>| {
        let mut req = client().get(gw.url(&format!("/.auth/verify{q}")));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send()
    };
    let r = verify("", Some(alice.clone())).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-forwarded-user"], "alice");
    assert_eq!(r.headers()["x-forwarded-email"], "alice@example.com");
    assert_eq!(r.headers()["x-forwarded-groups"], "admins,staff");
    assert_eq!(verify("", None).await.unwrap().status(), 401);
    let r = verify("?allow_groups=nope", Some(alice.clone()))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("x-forwarded-user").is_none());
    assert_eq!(
        verify("?allow_groups=nope,admins", Some(alice.clone()))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        verify("?allow_users=bob", Some(alice.clone()))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        verify("?allow_users=bob", Some(bob.clone()))
            .await
            .unwrap()
            .status(),
        200
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn login_rate_limit_blocks_address_after_failures_even_with_right_password_or_forged_xff() {
    init();
    let up = Upstream::start().await;
    let cfg = config(
        &up,
        "[auth]\nlogin_failures_per_minute = 3\nlogin_failures_per_minute_per_address = 3\n",
    );
    let gw = TestGateway::start(&cfg).await;

    for i in 0..3 {
        let r = post_json(
            &gw,
            serde_json::json!({"username": "alice", "password": "wrong"}),
        )
        .await;
        assert_eq!(r.status(), 401, "failure {i}");
    }
    let r = post_json(
        &gw,
        serde_json::json!({"username": "alice", "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 429, "right password after the limit");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(find_set_cookie(&r, "authgate").is_none());

    // Per address: another user from the same peer is limited too, forged forwarding or not.
    let r = post_json(
        &gw,
        serde_json::json!({"username": "bob", "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 429, "other username from the same address");
    let r = client()
        .post(gw.url("/.auth/login"))
        .header("x-forwarded-for", "9.9.9.9")
        .header("x-real-ip", "9.9.9.9")
        .header("forwarded", "for=9.9.9.9")
        .json(&serde_json::json!({"username": "bob", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        429,
        "X-Forwarded-For from an untrusted peer escaped the limit"
    );

    // The form path is limited as well.
    let page = login_page(&gw, "/.auth/login").await;
    let r = post_form(
        &gw,
        &page.cookie,
        &[
            ("csrf", &page.csrf),
            ("rd", "/"),
            ("username", "bob"),
            ("password", PASSWORD),
        ],
    )
    .await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));

    // Another gateway instance keeps its own counters.
    let other = TestGateway::start(&cfg).await;
    login_json(&other, "alice", PASSWORD).await;
    login_json(&other, "bob", PASSWORD).await;
    other.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_rate_limit_holds_against_concurrent_wrong_guesses() {
    init();
    let up = Upstream::start().await;
    let gw = std::sync::Arc::new(
        TestGateway::start(&config(
            &up,
            "[auth]\nlogin_failures_per_minute = 3\nlogin_concurrency = 1\n",
        ))
        .await,
    );
    // Twelve guesses at once: only as many as the limit may be checked against the password.
    let guesses: Vec<_> = (0..12)
        .map(|i| {
            let gw = gw.clone();
            tokio::spawn(async move {
                post_json(
                    &gw,
                    serde_json::json!({"username": "alice", "password": format!("guess-{i}")}),
                )
                .await
                .status()
                .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for g in guesses {
        statuses.push(g.await.unwrap());
    }
    let checked = statuses.iter().filter(|&&s| s == 401).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(checked + limited, 12, "{statuses:?}");
    assert!(
        checked <= 3,
        "{checked} concurrent guesses were checked: {statuses:?}"
    );
    let r = post_json(
        &gw,
        serde_json::json!({"username": "alice", "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 429);
}

#[tokio::test]
async fn login_body_over_cap_returns_413_before_parsing_with_length_or_chunked() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let page = login_page(&gw, "/.auth/login").await;
    let fields = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf", &page.csrf)
        .append_pair("rd", "/")
        .append_pair("username", "alice")
        .append_pair("password", PASSWORD)
        .finish();
    // The credentials are right, so anything but 413 means the body was processed.
    let big = format!("{fields}&pad={}", "a".repeat(20 * 1024));
    let form_req = || {
        client()
            .post(gw.url("/.auth/login"))
            .header("cookie", &page.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
    };

    let t = Instant::now();
    let r = form_req().body(big.clone()).send().await.unwrap();
    assert_eq!(r.status(), 413, "with Content-Length");
    assert!(find_set_cookie(&r, "authgate").is_none());

    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = big
        .as_bytes()
        .chunks(4096)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let r = form_req()
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "chunked");
    assert!(find_set_cookie(&r, "authgate").is_none());

    let big_json = serde_json::json!({"username": "alice", "password": PASSWORD, "pad": "a".repeat(20 * 1024)});
    let r = post_json(&gw, big_json).await;
    assert_eq!(r.status(), 413, "JSON");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "413s took {:?}",
        t.elapsed()
    );

    // Control: the same credentials under the cap log in.
    let r = form_req().body(fields).send().await.unwrap();
    assert_eq!(r.status(), 303);
    gw.shutdown().await;
}

#[tokio::test]
async fn login_csrf_mismatch_or_cross_site_origin_is_refused() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let page = login_page(&gw, "/.auth/login").await;
    let other = login_page(&gw, "/.auth/login").await;
    assert_ne!(page.csrf, other.csrf);
    let creds = |csrf: &str| {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("csrf", csrf)
            .append_pair("rd", "/")
            .append_pair("username", "alice")
            .append_pair("password", PASSWORD)
            .finish()
    };
    let send = |cookie: Option<&str>, body: String, extra: &[(&'static str, &'static str)]| {
        let mut req = client()
            .post(gw.url("/.auth/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(c) = cookie {
            req = req.header("cookie", c.to_string());
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        req.send()
    };

    type Extra = &'static [(&'static str, &'static str)];
    let cases: [(&str, Option<&str>, String, Extra); 6] = [
        (
            "mismatched token",
            Some(&page.cookie),
            creds(&other.csrf),
            &[],
        ),
        ("no CSRF cookie", None, creds(&page.csrf), &[]),
        (
            "no token field",
            Some(&page.cookie),
            creds("").replace("csrf=&", ""),
            &[],
        ),
        (
            "cross-site Origin",
            Some(&page.cookie),
            creds(&page.csrf),
            &[("origin", "http://evil.com")],
        ),
        (
            "cross-site fetch",
            Some(&page.cookie),
            creds(&page.csrf),
            &[("sec-fetch-site", "cross-site")],
        ),
        (
            "cross-site Referer",
            Some(&page.cookie),
            creds(&page.csrf),
            &[("referer", "http://evil.com/login")],
        ),
    ];
    for (what, cookie, body, extra) in cases {
        let r = send(cookie, body, extra).await.unwrap();
        assert_eq!(r.status(), 403, "{what}");
        assert!(find_set_cookie(&r, "authgate").is_none(), "{what}");
    }

    let r = client()
        .post(gw.url("/.auth/login"))
        .header("origin", "http://evil.com")
        .json(&serde_json::json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "JSON with a foreign Origin");

    // Control: the same request from our own origin succeeds.
    let r = send(
        Some(&page.cookie),
        creds(&page.csrf),
        &[
            ("origin", "http://gateway.test"),
            ("sec-fetch-site", "same-origin"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 303);
    assert!(find_set_cookie(&r, "authgate").is_some());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_all_succeed_while_authenticated_requests_proceed() {
    init();
    let up = Upstream::start().await;
    let gw = std::sync::Arc::new(TestGateway::start(&config(&up, "")).await);
    let existing = login_json(&gw, "bob", PASSWORD).await;

    let logins: Vec<_> = (0..20)
        .map(|i| {
            let gw = gw.clone();
            tokio::spawn(async move {
                let user = if i % 2 == 0 { "alice" } else { "bob" };
                (user, login_json(&gw, user, PASSWORD).await)
            })
        })
        .collect();
    assert_eq!(get_status(&gw, "/app/during", &existing).await, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/app/during");
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("bob"));

    let mut ids = HashSet::new();
    for l in logins {
        let (user, cookie) = l.await.unwrap();
        assert!(ids.insert(cookie.clone()), "duplicate session id");
        let r = client()
            .get(gw.url("/.auth/me"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["user"], user);
    }
    assert_eq!(ids.len(), 20);
}

#[tokio::test]
async fn login_rate_limit_behind_trusted_proxy_keys_on_last_forwarded_hop_across_lines() {
    init();
    let up = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gateway.test\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n\n\
         [auth]\nlogin_failures_per_minute_per_address = 2\n\n{}[[routes]]\npath_prefix = \"/\"\nupstream = \"{}\"\n",
        user_toml("alice", &[]),
        up.url()
    ))
    .await;
    let attempt = |user: &'static str, lines: Vec<&'static str>| {
        let url = gw.url("/.auth/login");
        async move {
            let mut rb = client()
                .post(url)
                .json(&serde_json::json!({"username": user, "password": "wrong"}));
            for l in lines {
                rb = rb.header("x-forwarded-for", l);
            }
            rb.send().await.unwrap().status().as_u16()
        }
    };
    // The proxy added its own line after the client's: the client is the last hop, 10.9.9.9.
    assert_eq!(attempt("u1", vec!["198.51.100.1", "10.9.9.9"]).await, 401);
    assert_eq!(attempt("u2", vec!["198.51.100.2", "10.9.9.9"]).await, 401);
    // A third failure from 10.9.9.9 with yet another spoofed first line is still limited.
    assert_eq!(attempt("u3", vec!["198.51.100.3", "10.9.9.9"]).await, 429);
    assert_eq!(attempt("u4", vec!["198.51.100.4, 10.9.9.9"]).await, 429);
    // Another client address behind the same proxy is not.
    assert_eq!(attempt("u5", vec!["10.8.8.8"]).await, 401);
    gw.shutdown().await;
}
