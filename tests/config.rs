mod support;
use support::*;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use authgate::config::ConfigError;

const FILE: &str = "x/gateway.toml";

/// A minimal valid configuration: one public route, no users.
const VALID: &str = "[server]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"builtin:whoami\"\naccess = \"public\"\n";

/// Every problem `text` has (panics if it is valid).
fn errors(text: &str) -> Vec<ConfigError> {
    match authgate::Config::from_toml_str(text, Path::new(FILE)) {
        Ok(_) => panic!("configuration accepted:\n{text}"),
        Err(e) => e.0,
    }
}

/// The error for `key`, checking that it names the file and key in its message.
fn error_for(text: &str, key: &str) -> ConfigError {
    let all = errors(text);
    let e = all
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no error for key {key}; got: {all:#?}"))
        .clone();
    assert_eq!(e.file, Path::new(FILE));
    let shown = e.to_string();
    assert!(
        shown.starts_with(FILE),
        "message does not start with the file: {shown}"
    );
    assert!(shown.contains(key), "message does not name {key}: {shown}");
    e
}

/// A `[[users]]` block with a given hash and groups.
fn user_with(name: &str, hash: &str, groups: &str) -> String {
    format!("[[users]]\nusername = \"{name}\"\npassword_hash = \"{hash}\"\ngroups = {groups}\n\n")
}

/// Runs the real binary with a 20 s bound (a wrongly valid run-mode config would serve forever).
fn run_bin(args: &[&str], dir: &Path) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(args)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // Only the child we started, by its id.
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!(
                "authgate {args:?} still running after {:?}",
                start.elapsed()
            );
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Config::from_toml_str: one class of error each

#[test]
fn config_valid_minimal_file_is_accepted() {
    let c = authgate::Config::from_toml_str(VALID, Path::new(FILE)).unwrap();
    assert_eq!(c.routes.len(), 1);
}

#[test]
fn config_unknown_key_names_file_key_and_line() {
    let all = errors("[server]\nlisten = \"127.0.0.1:0\"\nlisen = \"127.0.0.1:1\"\n\n[[routes]]\nupstream = \"builtin:whoami\"\n");
    assert_eq!(all.len(), 1, "{all:#?}");
    let e = &all[0];
    assert_eq!(e.file, Path::new(FILE));
    assert!(
        e.key == "server.lisen" || (e.key.starts_with("server") && e.message.contains("lisen")),
        "{e:?}"
    );
    assert_eq!(e.line, Some(3), "{e:?}");
    let shown = e.to_string();
    assert!(shown.starts_with("x/gateway.toml:3"), "{shown}");
    assert!(shown.contains("lisen"), "{shown}");
}

#[test]
fn config_unknown_key_in_a_route_names_the_route() {
    let all = errors("[[routes]]\nupstream = \"builtin:whoami\"\n\n[[routes]]\npath_prefix = \"/a\"\nupstream = \"builtin:whoami\"\nacess = \"public\"\n");
    let e = &all[0];
    assert!(
        e.key.starts_with("routes[1]") && e.to_string().contains("acess"),
        "{e:?}"
    );
    assert_eq!(e.line, Some(7), "{e:?}");
}

#[test]
fn config_wrong_type_names_key_and_line() {
    let all = errors("[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = \"x\"\n\n[[routes]]\nupstream = \"builtin:whoami\"\n");
    assert_eq!(all.len(), 1, "{all:#?}");
    let e = &all[0];
    assert_eq!(e.key, "server.max_connections", "{e:?}");
    assert_eq!(e.line, Some(3), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("x/gateway.toml:3: server.max_connections"),
        "{e}"
    );
}

#[test]
fn config_toml_syntax_error_names_the_line() {
    let all =
        errors("[server]\nlisten = \"127.0.0.1:0\"\n\n[[routes]\nupstream = \"builtin:whoami\"\n");
    let e = &all[0];
    assert_eq!(e.line, Some(4), "{e:?}");
    assert!(e.to_string().starts_with("x/gateway.toml:4"), "{e}");
}

#[test]
fn config_bad_duration_names_auth_idle_timeout() {
    let e = error_for(
        &format!("{VALID}\n[auth]\nidle_timeout = \"5 parsecs\"\n"),
        "auth.idle_timeout",
    );
    assert!(e.message.contains("5 parsecs"), "{e}");
}

#[test]
fn config_zero_or_bad_server_durations_are_refused() {
    let text = VALID.replace(
        "[server]\n",
        "[server]\nheader_read_timeout = \"0s\"\nshutdown_grace = \"soon\"\n",
    );
    error_for(&text, "server.header_read_timeout");
    error_for(&text, "server.shutdown_grace");
}

#[test]
fn config_bad_upstream_url_names_the_route_index() {
    for bad in [
        "http//no-colon",
        "ftp://files.example.com",
        "http://",
        "http://u:p@h:1",
        "builtin:nope",
        "http://h:1/?q=1",
    ] {
        let text = format!("{VALID}\n[[routes]]\npath_prefix = \"/b\"\nupstream = \"{bad}\"\n");
        let e = error_for(&text, "routes[1].upstream");
        assert!(!e.message.is_empty(), "{bad}");
    }
}

#[test]
fn config_duplicate_routes_are_refused() {
    for (a, b) in [("/app", "/app"), ("/app", "/app/"), ("/", "/")] {
        let text = format!("{VALID}\n[[routes]]\npath_prefix = \"{a}\"\nupstream = \"builtin:whoami\"\n\n[[routes]]\npath_prefix = \"{b}\"\nupstream = \"builtin:whoami\"\n");
        let all = errors(&text);
        assert!(
            all.iter()
                .any(|e| e.key.starts_with("routes[") && e.message.contains("duplicate")),
            "{a} / {b}: {all:#?}"
        );
    }
    // Same host in another case is the same route; a different host is not a duplicate.
    let same_host = "[[routes]]\nhost = \"a.example.com\"\nupstream = \"builtin:whoami\"\n\n[[routes]]\nhost = \"A.Example.com\"\nupstream = \"builtin:whoami\"\n";
    assert!(errors(same_host)
        .iter()
        .any(|e| e.key == "routes[1]" && e.message.contains("duplicate")));
    let other_host = "[[routes]]\nhost = \"a.example.com\"\nupstream = \"builtin:whoami\"\n\n[[routes]]\nhost = \"b.example.com\"\nupstream = \"builtin:whoami\"\n";
    authgate::Config::from_toml_str(other_host, Path::new(FILE)).unwrap();
}

#[test]
fn config_missing_tls_cert_names_server_tls_cert_and_path() {
    let text = VALID.replace("[server]\nlisten = \"127.0.0.1:0\"\n", "[server]\nlisten = \"127.0.0.1:0\"\n\n[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"no-such-cert.pem\"\nkey = \"no-such-key.pem\"\n");
    let e = error_for(&text, "server.tls.cert");
    assert!(
        e.message.contains("no-such-cert.pem") && e.message.contains("not found"),
        "{e}"
    );
    error_for(&text, "server.tls.key");
}

#[test]
fn config_unknown_access_value_is_refused() {
    let e = error_for(
        &VALID.replace("\"public\"", "\"everyone\""),
        "routes[0].access",
    );
    assert!(e.message.contains("everyone"), "{e}");
}

#[test]
fn config_auth_prefix_routes_are_refused() {
    for p in ["/.auth", "/.auth/", "/.auth/login"] {
        let text =
            format!("{VALID}\n[[routes]]\npath_prefix = \"{p}\"\nupstream = \"builtin:whoami\"\n");
        let e = error_for(&text, "routes[1].path_prefix");
        assert!(e.message.contains("/.auth"), "{p}: {e}");
    }
    // A sibling that merely starts with the same letters is fine.
    authgate::Config::from_toml_str(
        &format!("{VALID}\n[[routes]]\npath_prefix = \"/.authx\"\nupstream = \"builtin:whoami\"\n"),
        Path::new(FILE),
    )
    .unwrap();
}

#[test]
fn config_unknown_header_preset_is_refused() {
    let e = error_for(
        &format!("{VALID}\n[headers]\npreset = \"traefik\"\n"),
        "headers.preset",
    );
    assert!(e.message.contains("traefik"), "{e}");
}

#[test]
fn config_duplicate_usernames_are_refused() {
    let h = password_hash();
    let text = format!(
        "{VALID}\n{}{}",
        user_with("alice", h, "[]"),
        user_with("alice", h, "[]")
    );
    let e = error_for(&text, "users[1].username");
    assert!(
        e.message.contains("duplicate") && e.message.contains("alice"),
        "{e}"
    );
}

#[test]
fn config_malformed_password_hash_is_refused() {
    for bad in [
        "hunter2",
        "$argon2id$v=19$m=19456,t=2,p=1$",
        "$argon2id$v=19$m=16,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
        "$2b$04$tooshort",
    ] {
        let text = format!("{VALID}\n{}", user_with("bob", bad, "[]"));
        let e = error_for(&text, "users[0].password_hash");
        assert!(
            !e.message.contains(bad) || bad.len() < 10,
            "error echoes the hash: {e}"
        );
    }
}

#[test]
fn config_user_group_with_comma_is_refused() {
    let text = format!(
        "{VALID}\n{}",
        user_with("carol", password_hash(), "[\"ok\", \"admins,staff\"]")
    );
    let e = error_for(&text, "users[0].groups[1]");
    assert!(e.message.contains(','), "{e}");
}

#[test]
fn config_every_validation_problem_is_reported_at_once() {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[auth]\nidle_timeout = \"5 parsecs\"\n\n[headers]\npreset = \"traefik\"\n\n[[routes]]\nupstream = \"builtin:whoami\"\naccess = \"everyone\"\n\n{}",
        user_with("dave", "plaintext", "[]")
    );
    let keys: Vec<String> = errors(&text).into_iter().map(|e| e.key).collect();
    for k in [
        "auth.idle_timeout",
        "headers.preset",
        "routes[0].access",
        "users[0].password_hash",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The binary

#[test]
fn check_config_lists_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "[server]\nlisten = \"127.0.0.1:0\"\n\n[auth]\nidle_timeout = \"5 parsecs\"\n\n[[routes]]\nupstream = \"builtin:whoami\"\naccess = \"everyone\"\n\n[[routes]]\npath_prefix = \"/x\"\nupstream = \"ftp://nope\"\n").unwrap();
    let out = run_bin(
        &["check-config", "--config", f.to_str().unwrap()],
        dir.path(),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    for k in [
        "auth.idle_timeout",
        "routes[0].access",
        "routes[1].upstream",
    ] {
        assert!(err.contains(k), "{k} missing from stderr:\n{err}");
    }
    assert!(err.contains("bad.toml"), "file not named:\n{err}");
    assert!(err.contains("3 problem"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn check_config_valid_file_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("good.toml");
    std::fs::write(&f, format!("{VALID}\n{}", user_toml("erin", &["staff"]))).unwrap();
    let out = run_bin(
        &["check-config", "--config", f.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok"), "{}", text(&out.stdout));
}

#[test]
fn check_config_shipped_gateway_toml_exits_0() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run_bin(&["check-config", "--config", "gateway.toml"], root);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
}

#[test]
fn check_config_missing_file_exits_1_with_message_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    let out = run_bin(
        &["check-config", "--config", missing.to_str().unwrap()],
        dir.path(),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("absent.toml") && err.contains("cannot read"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn run_with_invalid_config_exits_1_with_message_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "[server]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\nupstream = \"builtin:whoami\"\naccess = \"everyone\"\n").unwrap();
    let out = run_bin(&["--config", f.to_str().unwrap()], dir.path());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("bad.toml") && err.contains("routes[0].access"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A missing file in run mode: same contract.
    let out = run_bin(
        &["--config", dir.path().join("absent.toml").to_str().unwrap()],
        dir.path(),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains("absent.toml"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn run_with_unusable_tls_files_exits_1_with_message_and_no_panic() {
    // Files exist (so validation passes) but hold no certificate: the snapshot build must fail cleanly.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let f = dir.path().join("gw.toml");
    std::fs::write(&f, VALID.replace("[server]\nlisten = \"127.0.0.1:0\"\n", "[server]\nlisten = \"127.0.0.1:0\"\n\n[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n")).unwrap();
    for args in [
        vec!["check-config", "--config", f.to_str().unwrap()],
        vec!["--config", f.to_str().unwrap()],
    ] {
        let out = run_bin(&args, dir.path());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} stderr: {err}");
        assert!(
            err.contains("server.tls") || err.contains("cert"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn config_server_runtime_accepts_both_flavours_and_names_a_bad_one() {
    use authgate::config::RuntimeFlavor;
    for (text, want) in [
        ("", RuntimeFlavor::ThreadPerCore),
        (
            "runtime = \"thread-per-core\"\n",
            RuntimeFlavor::ThreadPerCore,
        ),
        ("runtime = \"work-stealing\"\n", RuntimeFlavor::WorkStealing),
    ] {
        let toml = VALID.replace("[server]\n", &format!("[server]\n{text}"));
        let c = authgate::Config::from_toml_str(&toml, Path::new(FILE)).unwrap();
        assert_eq!(c.server.runtime, want, "{text}");
    }
    let e = error_for(
        &VALID.replace("[server]\n", "[server]\nruntime = \"green-threads\"\n"),
        "server.runtime",
    );
    assert!(e.message.contains("green-threads"), "{e}");
}

/// `[[auth.oidc]]` entries: every mistake is named by its key, nothing is fetched.
#[test]
fn oidc_provider_config_errors_name_the_key() {
    let p = |body: &str| format!("{VALID}\n[[auth.oidc]]\n{body}\n");
    let base = "id = \"corp\"\nissuer = \"https://sso.example.com/realms/main\"\nclient_id = \"authgate\"\n";
    // A valid one (public client, defaults) loads without contacting anybody.
    let cfg = authgate::Config::from_toml_str(&p(base), Path::new(FILE)).unwrap();
    let o = &cfg.auth.oidc[0];
    assert_eq!(o.scopes, ["openid", "profile", "email", "groups"]);
    assert_eq!(o.user_claim, "preferred_username");
    assert!(o.client_secret.is_none());
    assert!(
        o.redirect_uri.ends_with("/.auth/oidc/corp/callback"),
        "{}",
        o.redirect_uri
    );
    assert!(cfg.auth.password_login);

    let e = error_for(
        &p("id = \"Corp/x\"\nissuer = \"https://a.example\"\nclient_id = \"c\""),
        "auth.oidc[0].id",
    );
    assert!(e.message.contains("path segment"), "{}", e.message);
    let e = error_for(
        &p("id = \"c\"\nissuer = \"http://sso.example.com\"\nclient_id = \"c\""),
        "auth.oidc[0].issuer",
    );
    assert!(e.message.contains("https"), "{}", e.message);
    // Plain http is fine on loopback (a provider beside the gateway, and the tests).
    authgate::Config::from_toml_str(
        &p("id = \"c\"\nissuer = \"http://127.0.0.1:9000\"\nclient_id = \"c\""),
        Path::new(FILE),
    )
    .unwrap();
    error_for(
        &p(&format!("{base}scopes = [\"profile\"]")),
        "auth.oidc[0].scopes",
    );
    error_for(
        &p(&format!("{base}users = \"maybe\"")),
        "auth.oidc[0].users",
    );
    let e = error_for(
        &p(&format!("{base}id_token_algorithms = [\"none\"]")),
        "auth.oidc[0].id_token_algorithms[0]",
    );
    assert!(e.message.contains("none"), "{}", e.message);
    // HS256 verifies with the client secret: refused for a public client.
    error_for(
        &p(&format!("{base}id_token_algorithms = [\"HS256\"]")),
        "auth.oidc[0].id_token_algorithms[0]",
    );
    error_for(
        &p(&format!(
            "{base}client_secret_file = \"/nonexistent/secret\""
        )),
        "auth.oidc[0].client_secret_file",
    );
    error_for(
        &p(&format!(
            "{base}client_secret_env = \"AUTHGATE_TEST_NO_SUCH_VAR\""
        )),
        "auth.oidc[0].client_secret_env",
    );
    error_for(
        &p(&format!("{base}allowed_groups = []")),
        "auth.oidc[0].allowed_groups",
    );
    error_for(
        &p(&format!("{base}unknown_key = 1")),
        "auth.oidc[0].unknown_key",
    );
    // Two providers with one id.
    let two = format!("{}\n[[auth.oidc]]\n{base}", p(base));
    error_for(&two, "auth.oidc[1].id");
    // Two trusted providers must keep their groups apart.
    let other =
        "id = \"partner\"\nissuer = \"https://idp.partner.example\"\nclient_id = \"authgate\"\n";
    let both =
        |a: &str, b: &str| format!("{}\n[[auth.oidc]]\n{other}{b}\n", p(&format!("{base}{a}")));
    error_for(
        &both("", "groups_prefix = \"p:\""),
        "auth.oidc[0].groups_prefix",
    );
    error_for(
        &both("groups_prefix = \"corp:\"", "groups_prefix = \"corp:x\""),
        "auth.oidc[1].groups_prefix",
    );
    let fine = both("groups_prefix = \"corp:\"", "groups_prefix = \"partner:\"");
    authgate::Config::from_toml_str(&fine, Path::new(FILE)).unwrap();
    // A linked provider takes the local entry's groups: no prefix needed.
    let linked = both("", "users = \"link\"");
    authgate::Config::from_toml_str(&linked, Path::new(FILE)).unwrap();
    // No password form and no provider: nobody could sign in.
    let text = VALID.replace("[server]", "[auth]\npassword_login = false\n\n[server]");
    error_for(&text, "auth.password_login");
}

#[test]
fn pass_access_token_needs_a_session_a_provider_and_a_real_upstream() {
    let provider =
        "[[auth.oidc]]\nid = \"corp\"\nissuer = \"https://sso.example.com\"\nclient_id = \"c\"\n";
    let route = |upstream: &str| {
        format!("[[routes]]\npath_prefix = \"/api\"\nupstream = \"{upstream}\"\npass_access_token = true\n")
    };
    let ok = format!("{VALID}\n{provider}\n{}", route("http://127.0.0.1:3000"));
    let cfg = authgate::Config::from_toml_str(&ok, Path::new(FILE)).unwrap();
    assert!(cfg.routes.iter().any(|r| r.pass_access_token));
    assert!(!cfg.routes.iter().all(|r| r.pass_access_token));

    // No provider: no token to pass.
    let e = error_for(
        &format!("{VALID}\n{}", route("http://127.0.0.1:3000")),
        "routes[1].pass_access_token",
    );
    assert!(e.message.contains("[[auth.oidc]]"), "{}", e.message);
    // The whoami page would show the token to the browser.
    let e = error_for(
        &format!("{VALID}\n{provider}\n{}", route("builtin:whoami")),
        "routes[1].pass_access_token",
    );
    assert!(e.message.contains("browser"), "{}", e.message);
    // JWT mode: the cookie would have to carry it.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hs");
    std::fs::write(
        &secret,
        [0x5au8; 48]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ i as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let jwt = format!(
        "[auth]\nmode = \"jwt\"\n[auth.jwt]\nalgorithm = \"HS256\"\nsigning_key = {:?}\n",
        secret.to_str().unwrap()
    );
    let e = error_for(
        &format!(
            "{VALID}\n{jwt}\n{provider}\n{}",
            route("http://127.0.0.1:3000")
        ),
        "routes[1].pass_access_token",
    );
    assert!(e.message.contains("session"), "{}", e.message);
}
