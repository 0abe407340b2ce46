//! The second factor over real sockets: TOTP codes computed here from the enrolled secret, the
//! password-then-code login (JSON and forms), replay, recovery codes, the code limiter's own
//! bucket, step-up to a `require = "mfa"` route and back, `max_auth_age`, JWT `amr`, the CLI.

mod support;
use support::*;

use std::time::Duration;

use authgate::auth::credentials::{self, CredentialsConfig};

/// The credentials key every test uses (a file in the gateway's directory).
const KEY: &str = "test-credentials-key-0123456789abcdef";

fn auth_section(extra: &str) -> String {
    format!("[auth]\ncredentials_file = \"{{dir}}/credentials.toml\"\ncredentials_key_file = \"{{dir}}/credentials.key\"\n{extra}\n")
}

/// A gateway whose key file exists before it starts (the `{dir}` is only known then).
async fn start(toml: &str) -> TestGateway {
    // Write the key where the gateway will look: TestGateway makes the directory, so start
    // once to learn it would be circular; instead the key file is given by an absolute path.
    let keydir = tempfile::tempdir().unwrap().keep();
    std::fs::write(keydir.join("credentials.key"), KEY).unwrap();
    let toml = toml.replace(
        "{dir}/credentials.key",
        keydir.join("credentials.key").to_str().unwrap(),
    );
    TestGateway::start(&toml).await
}

fn creds(gw: &TestGateway) -> CredentialsConfig {
    let cfg = authgate::Config::load(&gw.config_path).unwrap();
    cfg.auth.credentials.expect("credentials configured")
}

/// Enrols `user` and returns a code generator for their secret.
fn enroll(gw: &TestGateway, user: &str) -> (totp_rs::Totp, Vec<String>) {
    let e = credentials::enroll(&creds(gw), user, false).unwrap();
    let t = totp_rs::Totp::from_url(&e.uri).unwrap();
    (t, e.recovery_codes)
}

/// Applies the credentials file now (what the file watch or SIGHUP does).
fn reload(gw: &TestGateway) {
    let cfg = authgate::Config::load(&gw.config_path).unwrap();
    gw.gateway().reload(cfg).unwrap();
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn code_at(t: &totp_rs::Totp, time: u64) -> String {
    t.generate(time).to_string()
}

async fn password_json(gw: &TestGateway, user: &str) -> reqwest::Response {
    client()
        .post(gw.url("/.auth/login"))
        .json(&serde_json::json!({"username": user, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
}

async fn code_json(gw: &TestGateway, cookie: &str, body: serde_json::Value) -> reqwest::Response {
    client()
        .post(gw.url("/.auth/login/otp"))
        .header("cookie", cookie)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Password (JSON): the pending-step cookie of a user with a second factor.
async fn password_step(gw: &TestGateway, user: &str) -> String {
    let r = password_json(gw, user).await;
    assert_eq!(r.status(), 401, "the password alone is not a login");
    let step = cookie_named(&r, "authgate_2fa").expect("a pending-step cookie");
    assert!(cookie_named(&r, "authgate").is_none(), "no session yet");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "second_factor_required");
    step
}

/// Password, then `body` as the code step.
async fn login_with(gw: &TestGateway, user: &str, body: serde_json::Value) -> reqwest::Response {
    let step = password_step(gw, user).await;
    code_json(gw, &step, body).await
}

async fn me(gw: &TestGateway, cookie: &str) -> serde_json::Value {
    let r = client()
        .get(gw.url("/.auth/me"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn config(up: &Upstream, extra_auth: &str, routes: &str) -> String {
    format!(
        "{}{}{}[[routes]]\npath_prefix = \"/\"\nupstream = \"{}\"\n\n{routes}",
        auth_section(extra_auth),
        user_toml("alice", &["staff"]),
        user_toml("bob", &["staff"]),
        up.url()
    )
}

#[tokio::test]
async fn password_then_code_logs_in_with_both_factors_and_a_code_is_never_accepted_twice() {
    let up = Upstream::start().await;
    let gw = start(&config(&up, "", "")).await;
    let (t, _) = enroll(&gw, "alice");
    reload(&gw);
    let code = code_at(&t, now());
    let r = login_with(&gw, "alice", serde_json::json!({"code": code})).await;
    assert_eq!(r.status(), 200);
    let session = cookie_named(&r, "authgate").expect("a session after the code");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["amr"], serde_json::json!(["pwd", "otp"]));
    let m = me(&gw, &session).await;
    assert_eq!(m["amr"], serde_json::json!(["pwd", "otp"]));
    assert!(m["auth_time"].as_u64().unwrap() >= now() - 5);
    // The same code again, on a fresh password step: refused (RFC 6238 §5.2).
    let r = login_with(&gw, "alice", serde_json::json!({"code": code})).await;
    assert_eq!(r.status(), 401);
    assert!(cookie_named(&r, "authgate").is_none());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_code");
    // A user without a second factor logs in with the password alone, as before.
    let r = password_json(&gw, "bob").await;
    assert_eq!(r.status(), 200);
    let bob = cookie_named(&r, "authgate").unwrap();
    assert_eq!(me(&gw, &bob).await["amr"], serde_json::json!(["pwd"]));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_wrong_code_keeps_the_step_for_a_few_tries_and_a_used_ticket_is_gone() {
    let up = Upstream::start().await;
    let metrics = format!(
        "{}[metrics]\nlisten = \"127.0.0.1:0\"\n",
        config(&up, "", "")
    );
    let gw = start(&metrics).await;
    let (t, _) = enroll(&gw, "alice");
    reload(&gw);
    let step = password_step(&gw, "alice").await;
    let good = code_at(&t, now());
    let wrong = if good == "000000" { "111111" } else { "000000" };
    let r = code_json(&gw, &step, serde_json::json!({"code": wrong})).await;
    assert_eq!(r.status(), 401);
    // The same ticket still works with the right code...
    let r = code_json(&gw, &step, serde_json::json!({"code": good})).await;
    assert_eq!(r.status(), 200);
    // ...once: it is spent.
    let r = code_json(&gw, &step, serde_json::json!({"code": good})).await;
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "login_expired");
    // The password step and each code are login attempts of their own method.
    let text = scrape_metrics(&gw).await;
    let login = "authgate_login_attempts_total";
    let (password, otp) = (("method", "password"), ("method", "otp"));
    // A right password with a second factor to come is not a login yet.
    let sfr = ("result", "second_factor_required");
    assert_eq!(metric_sum(&text, login, &[password, sfr]), 1.0, "{text}");
    assert_eq!(metric_sum(&text, login, &[password]), 1.0);
    assert_eq!(metric_sum(&text, login, &[otp, ("result", "ok")]), 1.0);
    let bad = ("result", "bad_credentials");
    assert_eq!(metric_sum(&text, login, &[otp, bad]), 1.0, "{text}");
    let expired = ("result", "step_expired");
    assert_eq!(metric_sum(&text, login, &[otp, expired]), 1.0);
    assert_eq!(metric_sum(&text, login, &[("method", "oidc")]), 0.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_recovery_code_works_once_and_is_marked_used_in_the_file() {
    let up = Upstream::start().await;
    let gw = start(&config(&up, "", "")).await;
    let (_, codes) = enroll(&gw, "alice");
    reload(&gw);
    let r = login_with(
        &gw,
        "alice",
        serde_json::json!({"recovery_code": codes[0].to_uppercase()}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let session = cookie_named(&r, "authgate").unwrap();
    assert_eq!(
        me(&gw, &session).await["amr"],
        serde_json::json!(["pwd", "otp"])
    );
    let r = login_with(&gw, "alice", serde_json::json!({"recovery_code": codes[0]})).await;
    assert_eq!(r.status(), 401, "a recovery code works once");
    // The mark is written off the request path; wait for it (bounded).
    let file = gw.dir.path().join("credentials.toml");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&file).unwrap();
        if text.contains("used_at") {
            assert_eq!(text.matches("used_at").count(), 1);
            assert!(!text.contains(&codes[0]), "codes are stored hashed");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never marked used");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // After a reload (or restart) the file alone refuses it too.
    reload(&gw);
    let r = login_with(&gw, "alice", serde_json::json!({"recovery_code": codes[0]})).await;
    assert_eq!(r.status(), 401);
    let r = login_with(&gw, "alice", serde_json::json!({"recovery_code": codes[1]})).await;
    assert_eq!(r.status(), 200, "the other codes still work");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_code_spray_is_limited_in_its_own_bucket_and_does_not_lock_the_password_login() {
    let up = Upstream::start().await;
    let gw = start(&config(
        &up,
        "otp_failures_per_minute = 3\nlogin_failures_per_minute = 3",
        "",
    ))
    .await;
    let (t, _) = enroll(&gw, "alice");
    reload(&gw);
    let good = code_at(&t, now());
    let wrong = if good == "000000" { "111111" } else { "000000" };
    for _ in 0..3 {
        let step = password_step(&gw, "alice").await;
        let r = code_json(&gw, &step, serde_json::json!({"code": wrong})).await;
        assert_eq!(r.status(), 401);
    }
    // The code bucket is full: even the right code waits.
    let step = password_step(&gw, "alice").await;
    let r = code_json(&gw, &step, serde_json::json!({"code": good})).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // The password step itself is not locked (its bucket counts wrong passwords only).
    let _ = password_step(&gw, "alice").await;
    // And wrong passwords do not fill the code bucket of another user.
    for _ in 0..3 {
        let r = client()
            .post(gw.url("/.auth/login"))
            .json(&serde_json::json!({"username": "bob", "password": "wrong"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn form_login_asks_for_the_code_on_a_page_that_works_without_javascript() {
    let up = Upstream::start().await;
    let metrics = format!(
        "{}[metrics]\nlisten = \"127.0.0.1:0\"\n",
        config(&up, "", "")
    );
    let gw = start(&metrics).await;
    let (t, _) = enroll(&gw, "alice");
    reload(&gw);
    let r = client()
        .get(gw.url("/.auth/login?rd=/app/page"))
        .send()
        .await
        .unwrap();
    let csrf_cookie = cookie_named(&r, "authgate_csrf").unwrap();
    let page = r.text().await.unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    // The password step through the form: its answer, with the code step's cookie.
    let password_form = || {
        let (gw, csrf_cookie, csrf) = (&gw, csrf_cookie.clone(), csrf.clone());
        async move {
            let r = client()
                .post(gw.url("/.auth/login"))
                .header("cookie", &csrf_cookie)
                .form(&[
                    ("username", "alice"),
                    ("password", PASSWORD),
                    ("csrf", &csrf),
                    ("rd", "/app/page"),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let step = cookie_named(&r, "authgate_2fa").unwrap();
            (r, step)
        }
    };
    let (r, step) = password_form().await;
    let page = r.text().await.unwrap();
    assert!(page.contains("action=\"/.auth/login/otp\""), "{page}");
    assert!(page.contains("autocomplete=\"one-time-code\""));
    assert!(page.contains("inputmode=\"numeric\""));
    assert!(page.contains("value=\"/app/page\""), "rd survives the step");
    assert!(!page.contains("<script"), "no JavaScript needed");
    let r = client()
        .post(gw.url("/.auth/login/otp"))
        .header("cookie", format!("{csrf_cookie}; {step}"))
        .form(&[
            ("code", code_at(&t, now()).as_str()),
            ("csrf", &csrf),
            ("rd", "/app/page"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "http://gateway.test/app/page");
    let session = cookie_named(&r, "authgate").unwrap();
    let r = client()
        .get(gw.url("/app/page"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().one("x-forwarded-user").as_deref(), Some("alice"));
    let otp_form = |cookies: String, code: String| {
        let (gw, csrf) = (&gw, csrf.clone());
        async move {
            client()
                .post(gw.url("/.auth/login/otp"))
                .header("cookie", cookies)
                .form(&[
                    ("code", code.as_str()),
                    ("csrf", &csrf),
                    ("rd", "/app/page"),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    // The spent step again: back to the password page, counted as an expired step, not a login.
    let r = otp_form(format!("{csrf_cookie}; {step}"), code_at(&t, now())).await;
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .contains("/.auth/login?rd="));
    // A fresh step and three wrong codes: the third is answered by a redirect too, but it is a
    // wrong code all the same.
    let (_, step) = password_form().await;
    let good = code_at(&t, now());
    let wrong = if good == "000000" { "111111" } else { "000000" };
    for expect in [401, 401, 303] {
        let r = otp_form(format!("{csrf_cookie}; {step}"), wrong.to_string()).await;
        assert_eq!(r.status(), expect);
    }
    let text = scrape_metrics(&gw).await;
    let login = "authgate_login_attempts_total";
    let (password, otp) = (("method", "password"), ("method", "otp"));
    let sfr = ("result", "second_factor_required");
    assert_eq!(metric_sum(&text, login, &[password, sfr]), 2.0, "{text}");
    assert_eq!(metric_sum(&text, login, &[password]), 2.0);
    assert_eq!(metric_sum(&text, login, &[otp, ("result", "ok")]), 1.0);
    assert_eq!(
        metric_sum(&text, login, &[otp, ("result", "step_expired")]),
        1.0
    );
    let bad = ("result", "bad_credentials");
    assert_eq!(metric_sum(&text, login, &[otp, bad]), 3.0, "{text}");
    assert_eq!(metric_sum(&text, login, &[otp]), 5.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn step_up_from_a_password_session_to_an_mfa_route_and_back_with_a_new_session_id() {
    let up = Upstream::start().await;
    let routes = "[[routes]]\npath_prefix = \"/admin\"\nupstream = \"UP\"\nrequire = \"mfa\"\n"
        .replace("UP", &up.url());
    let gw = start(&config(&up, "", &routes)).await;
    // Logged in with the password before the second factor existed.
    let r = password_json(&gw, "alice").await;
    assert_eq!(r.status(), 200);
    let old = cookie_named(&r, "authgate").unwrap();
    let (t, _) = enroll(&gw, "alice");
    reload(&gw);
    // The ordinary app still works with the password session.
    let r = client()
        .get(gw.url("/app"))
        .header("cookie", &old)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A browser on the MFA route is sent to the code step, with its URL kept.
    let r = client()
        .get(gw.url("/admin/users?x=1"))
        .header("cookie", &old)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.contains("step_up=mfa"), "{loc}");
    assert!(loc.contains("rd=/admin/users%3Fx%3D1"), "{loc}");
    // An API POST is never redirected (its body would be lost): 401 JSON, upstream untouched.
    let before = up.count();
    let r = client()
        .post(gw.url("/admin/users"))
        .header("cookie", &old)
        .json(&serde_json::json!({"name": "new"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "step_up_required");
    assert_eq!(v["require"], "mfa");
    assert_eq!(up.count(), before);
    // The step-up page asks for the code only.
    let path = loc.strip_prefix("http://gateway.test").unwrap();
    let r = client()
        .get(gw.url(path))
        .header("cookie", &old)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csrf_cookie = cookie_named(&r, "authgate_csrf").unwrap();
    let page = r.text().await.unwrap();
    assert!(page.contains("action=\"/.auth/login/otp\""), "{page}");
    assert!(
        !page.contains("name=\"password\""),
        "no password asked again"
    );
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let r = client()
        .post(gw.url("/.auth/login/otp"))
        .header("cookie", format!("{old}; {csrf_cookie}"))
        .form(&[
            ("code", code_at(&t, now()).as_str()),
            ("csrf", &csrf),
            ("rd", "/admin/users?x=1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"],
        "http://gateway.test/admin/users?x=1"
    );
    let new = cookie_named(&r, "authgate").unwrap();
    assert_ne!(new, old, "a step-up mints a new session id");
    let r = client()
        .get(gw.url("/admin/users?x=1"))
        .header("cookie", &new)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().one("x-forwarded-user").as_deref(), Some("alice"));
    // The password-only session is gone.
    let r = client()
        .get(gw.url("/app"))
        .header("cookie", &old)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_mfa_route_refuses_a_user_without_a_second_factor_with_403() {
    let up = Upstream::start().await;
    let routes = "[[routes]]\npath_prefix = \"/admin\"\nupstream = \"UP\"\nrequire = \"mfa\"\n"
        .replace("UP", &up.url());
    let gw = start(&config(&up, "", &routes)).await;
    let bob = login_json(&gw, "bob", PASSWORD).await;
    let r = client()
        .get(gw.url("/admin"))
        .header("cookie", &bob)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("second factor"));
    gw.shutdown().await;
}

#[tokio::test]
async fn max_auth_age_asks_for_a_fresh_login_once_the_login_is_older() {
    let up = Upstream::start().await;
    let routes =
        "[[routes]]\npath_prefix = \"/billing\"\nupstream = \"UP\"\nmax_auth_age = \"1s\"\n"
            .replace("UP", &up.url());
    let gw = start(&config(&up, "", &routes)).await;
    let bob = login_json(&gw, "bob", PASSWORD).await;
    let get = |accept: &'static str| {
        client()
            .get(gw.url("/billing"))
            .header("cookie", &bob)
            .header("accept", accept)
            .send()
    };
    assert_eq!(get("*/*").await.unwrap().status(), 200);
    // Time must pass for the login to age: this waits for the clock, not for another task.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get("application/json").await.unwrap();
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["require"], "fresh");
    let r = get("text/html").await.unwrap();
    assert_eq!(r.status(), 302);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .contains("step_up=fresh"));
    // Other routes do not care how old the login is.
    let r = client()
        .get(gw.url("/app"))
        .header("cookie", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn jwt_mode_carries_amr_in_the_token_and_step_up_reads_it() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let jwt = jwt_section(dir.path());
    let extra = jwt
        .strip_prefix("[auth]\n")
        .expect("jwt_section starts with [auth]")
        .to_string();
    let routes = "[[routes]]\npath_prefix = \"/admin\"\nupstream = \"UP\"\nrequire = \"mfa\"\n"
        .replace("UP", &up.url());
    let gw = start(&config(&up, &extra, &routes)).await;
    let (t, _) = enroll(&gw, "alice");
    reload(&gw);
    let r = login_with(
        &gw,
        "alice",
        serde_json::json!({"code": code_at(&t, now())}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let cookie = cookie_named(&r, "authgate").unwrap();
    let token = cookie.split_once('=').unwrap().1;
    let payload = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["amr"], serde_json::json!(["pwd", "otp"]));
    let r = client()
        .get(gw.url("/admin"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // bob's token says pwd only: the MFA route wants more.
    let bob = login_json(&gw, "bob", PASSWORD).await;
    let r = client()
        .get(gw.url("/admin"))
        .header("cookie", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "bob has no second factor to step up with");
    gw.shutdown().await;
}

#[tokio::test]
async fn cli_enroll_prints_the_uri_and_recovery_codes_and_writes_a_private_sealed_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("credentials.key"), KEY).unwrap();
    let toml = format!(
        "{}{}[[routes]]\npath_prefix = \"/\"\nupstream = \"builtin:whoami\"\n",
        auth_section("").replace("{dir}", dir.path().to_str().unwrap()),
        user_toml("alice", &[])
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, toml).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["totp", "enroll", "--user", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let uri = text
        .lines()
        .find_map(|l| l.strip_prefix("otpauth URI: "))
        .expect("the URI is printed")
        .to_string();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    let t = totp_rs::Totp::from_url(&uri).unwrap();
    let codes: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Recovery codes"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(str::trim)
        .collect();
    assert_eq!(codes.len(), 10, "{text}");
    assert!(
        text.contains('\u{2580}') || text.contains('\u{2584}') || text.contains('\u{2588}'),
        "a QR code in block characters"
    );
    let file = std::fs::read_to_string(dir.path().join("credentials.toml")).unwrap();
    assert!(
        !file.contains(&t.secret().to_base32()),
        "the secret is sealed"
    );
    for c in &codes {
        assert!(!file.contains(c));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("credentials.toml"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    let again = run(&["totp", "enroll", "--user", "alice"]);
    assert!(!again.status.success(), "no silent re-enrolment");
    let unknown = run(&["totp", "enroll", "--user", "mallory"]);
    assert!(!unknown.status.success());
    let removed = run(&["totp", "remove", "--user", "alice"]);
    assert!(removed.status.success());
    let file = std::fs::read_to_string(dir.path().join("credentials.toml")).unwrap();
    assert!(!file.contains("alice"));
}

#[tokio::test]
async fn a_wrong_credentials_key_is_a_config_error_naming_the_entry() {
    let up = Upstream::start().await;
    let gw = start(&config(&up, "", "")).await;
    enroll(&gw, "alice");
    let wrong = tempfile::tempdir().unwrap();
    std::fs::write(
        wrong.path().join("k"),
        "another-key-another-key-another-key!!",
    )
    .unwrap();
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let key_line = text
        .lines()
        .find(|l| l.starts_with("credentials_key_file"))
        .unwrap()
        .to_string();
    let text = text.replace(
        &key_line,
        &format!(
            "credentials_key_file = \"{}\"",
            wrong.path().join("k").display()
        ),
    );
    std::fs::write(&gw.config_path, text).unwrap();
    let cfg = authgate::Config::load(&gw.config_path).unwrap();
    let err = gw.gateway().reload(cfg).unwrap_err().to_string();
    assert!(err.contains("totp[0].secret"), "{err}");
    assert!(err.contains("cannot decrypt"), "{err}");
    gw.shutdown().await;
}

/// The value of hidden input `name` in a page.
fn hidden(page: &str, name: &str) -> String {
    page.split(&format!("name=\"{name}\" value=\""))
        .nth(1)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn invite_link_enrols_after_the_password_once_and_its_confirming_code_is_not_a_login() {
    let up = Upstream::start().await;
    let gw = start(&config(&up, "", "")).await;
    let token =
        credentials::invite(&creds(&gw), "alice", Duration::from_secs(3600), false).unwrap();
    reload(&gw);
    let link = format!("/.auth/totp/enroll?t={token}");
    // Step 1: the page asks for alice's password (the link alone is not enough).
    let r = client().get(gw.url(&link)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csrf_cookie = cookie_named(&r, "authgate_csrf").unwrap();
    let page = r.text().await.unwrap();
    assert!(page.contains("alice"));
    let csrf = hidden(&page, "csrf");
    let post = |fields: Vec<(&'static str, String)>| {
        client()
            .post(gw.url("/.auth/totp/enroll"))
            .header("cookie", &csrf_cookie)
            .form(&fields)
            .send()
    };
    let r = post(vec![
        ("t", token.clone()),
        ("csrf", csrf.clone()),
        ("password", "wrong".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let r = post(vec![
        ("t", token.clone()),
        ("csrf", csrf.clone()),
        ("password", PASSWORD.into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    // Step 2: an inline SVG QR code (no external assets) and the key to type in.
    assert!(page.contains("<svg"), "{page}");
    assert!(!page.contains("src=\"http"), "no external assets");
    let key = page
        .split("enter this key by hand: <code>")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_string();
    let sealed = hidden(&page, "sealed");
    assert!(
        !sealed.contains(&key),
        "the hidden field holds the key sealed"
    );
    let secret = totp_rs::Secret::try_from_base32(&key).unwrap();
    let t = totp_rs::Builder::new()
        .with_secret(secret.as_ref().to_vec())
        .build()
        .unwrap();
    let code = code_at(&t, now());
    let r = post(vec![
        ("t", token.clone()),
        ("csrf", csrf.clone()),
        ("sealed", sealed.clone()),
        ("code", code.clone()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert_eq!(
        page.matches("<li><code>").count(),
        10,
        "ten recovery codes: {page}"
    );
    // The link is spent.
    let r = post(vec![
        ("t", token.clone()),
        ("csrf", csrf.clone()),
        ("sealed", sealed),
        ("code", code.clone()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), 401, "the confirming code is spent");
    let file = std::fs::read_to_string(gw.dir.path().join("credentials.toml")).unwrap();
    assert!(
        file.contains("used_at"),
        "the invite is marked used: {file}"
    );
    assert!(!file.contains(&token), "only the token's hash is stored");
    reload(&gw);
    assert_eq!(
        client().get(gw.url(&link)).send().await.unwrap().status(),
        404
    );
    // alice now needs the code to log in, and the confirming code is not one.
    let r = login_with(&gw, "alice", serde_json::json!({"code": code})).await;
    assert_eq!(
        r.status(),
        401,
        "the enrolment's confirming code cannot be replayed as a login"
    );
    // The next step's code works (step-skew: the one after the confirming code).
    let next = code_at(&t, now() + 30);
    let r = login_with(&gw, "alice", serde_json::json!({"code": next})).await;
    assert_eq!(r.status(), 200);
    gw.shutdown().await;
}
