//! Watched configuration: edits of gateway.toml and of the users file apply without SIGHUP; a
//! broken edit keeps the running snapshot. Real sockets, an in-process gateway; every wait is on
//! the watcher's outcome counts, with a deadline.

mod support;
use support::*;

use std::path::Path;
use std::time::Duration;

use authgate::server::watcher::ReloadCounts;
use tokio::sync::watch;

/// Longest any outcome may take (the debounce is 200 ms; CI machines are slow).
const DEADLINE: Duration = Duration::from_secs(20);

const SERVER: &str = "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gateway.test\"\n\n";

/// A public route to the built-in whoami upstream.
fn whoami_route(prefix: &str) -> String {
    format!("[[routes]]\npath_prefix = \"{prefix}\"\nupstream = \"builtin:whoami\"\naccess = \"public\"\n\n")
}

/// The starting configuration: `/old` only.
fn old_config() -> String {
    format!("{SERVER}{}", whoami_route("/old"))
}

/// Waits until `done` holds for the counts, failing after [`DEADLINE`].
async fn wait_for(
    rx: &mut watch::Receiver<ReloadCounts>,
    what: &str,
    done: impl FnMut(&ReloadCounts) -> bool,
) -> ReloadCounts {
    let outcome = match tokio::time::timeout(DEADLINE, rx.wait_for(done)).await {
        Ok(Ok(c)) => Ok(*c),
        Ok(Err(_)) => Err("the watcher ended"),
        Err(_) => Err("deadline passed"),
    };
    outcome.unwrap_or_else(|why| panic!("no {what}: {why}; counts {:?}", *rx.borrow()))
}

async fn status(gw: &TestGateway, path: &str) -> u16 {
    client()
        .get(gw.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Writes `text` beside `path` and renames it over `path`, as editors and config tools do.
fn replace_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn config_watch_rename_over_config_applies_new_route_without_sighup() {
    let gw = TestGateway::start(&old_config()).await;
    let w = gw.gateway().watch_config().await.unwrap();
    let mut rx = w.outcomes();
    assert_eq!(status(&gw, "/old").await, 200);
    assert_eq!(status(&gw, "/new").await, 404);

    replace_by_rename(
        &gw.config_path,
        &format!("{}{}", old_config(), whoami_route("/new")),
    );

    let c = wait_for(&mut rx, "reload", |c| c.ok >= 1).await;
    assert_eq!(c.failed, 0, "{c:?}");
    assert_eq!(status(&gw, "/new").await, 200);
    assert_eq!(status(&gw, "/old").await, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn config_watch_broken_edit_keeps_old_routes_and_counts_a_failure() {
    let gw = TestGateway::start(&old_config()).await;
    let w = gw.gateway().watch_config().await.unwrap();
    let mut rx = w.outcomes();

    // In place (truncate and write), with an upstream that cannot be valid.
    let broken = format!(
        "{}[[routes]]\npath_prefix = \"/new\"\nupstream = \"ftp://nowhere\"\naccess = \"public\"\n",
        old_config()
    );
    std::fs::write(&gw.config_path, &broken).unwrap();

    let c = wait_for(&mut rx, "failed reload", |c| c.failed >= 1).await;
    assert_eq!(c.ok, 0, "{c:?}");
    assert_eq!(status(&gw, "/old").await, 200);
    assert_eq!(status(&gw, "/new").await, 404);

    // Fixing the file applies it.
    std::fs::write(
        &gw.config_path,
        format!("{}{}", old_config(), whoami_route("/new")),
    )
    .unwrap();
    let c = wait_for(&mut rx, "reload after the fix", |c| c.ok >= 1).await;
    assert_eq!(c.failed, 1, "{c:?}");
    assert_eq!(status(&gw, "/new").await, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn config_watch_users_file_edit_adds_a_user_who_can_log_in() {
    let toml = format!(
        "{SERVER}[auth]\nusers_file = \"users.toml\"\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"builtin:whoami\"\naccess = \"authenticated\"\n"
    );
    // The users file must exist before the gateway loads its config.
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(&users, user_toml("alice", &[])).unwrap();
    let gw = TestGateway::start(&toml.replace("users.toml", users.to_str().unwrap())).await;
    let w = gw.gateway().watch_config().await.unwrap();
    let mut rx = w.outcomes();

    let alice = login_json(&gw, "alice", PASSWORD).await;
    let r = client()
        .post(gw.url("/.auth/login"))
        .json(&serde_json::json!({"username": "bob", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "bob logged in before he was added");

    replace_by_rename(
        &users,
        &format!("{}{}", user_toml("alice", &[]), user_toml("bob", &[])),
    );
    let c = wait_for(&mut rx, "reload", |c| c.ok >= 1).await;
    assert_eq!(c.failed, 0, "{c:?}");

    let bob = login_json(&gw, "bob", PASSWORD).await;
    for cookie in [bob, alice] {
        let r = client()
            .get(gw.url("/"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{cookie} refused after the reload");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn config_watch_rewriting_the_same_bytes_does_not_reload() {
    let gw = TestGateway::start(&old_config()).await;
    let w = gw.gateway().watch_config().await.unwrap();
    let mut rx = w.outcomes();

    let same = std::fs::read(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, &same).unwrap();
    let c = wait_for(&mut rx, "look at the rewritten file", |c| c.skipped >= 1).await;
    assert_eq!((c.ok, c.failed), (0, 0), "{c:?}");

    // The same bytes renamed over it: still nothing to apply.
    replace_by_rename(&gw.config_path, std::str::from_utf8(&same).unwrap());
    let c = wait_for(&mut rx, "look at the renamed file", |c| c.skipped >= 2).await;
    assert_eq!((c.ok, c.failed), (0, 0), "{c:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn config_watch_deleted_config_keeps_running_and_its_return_reloads() {
    let gw = TestGateway::start(&old_config()).await;
    let w = gw.gateway().watch_config().await.unwrap();
    let mut rx = w.outcomes();

    let same = std::fs::read(&gw.config_path).unwrap();
    std::fs::remove_file(&gw.config_path).unwrap();
    let c = wait_for(&mut rx, "look at the deleted file", |c| c.skipped >= 1).await;
    assert_eq!((c.ok, c.failed), (0, 0), "{c:?}");
    assert_eq!(status(&gw, "/old").await, 200);

    // Back with the very same bytes: a change all the same.
    std::fs::write(&gw.config_path, &same).unwrap();
    let c = wait_for(&mut rx, "reload", |c| c.ok >= 1).await;
    assert_eq!(c.failed, 0, "{c:?}");
    assert_eq!(status(&gw, "/old").await, 200);
    gw.shutdown().await;
}

#[cfg(unix)]
#[tokio::test]
async fn config_watch_configmap_symlink_swap_and_edit_at_the_target_apply() {
    use std::os::unix::fs::symlink;
    // A mounted Kubernetes ConfigMap: gateway.toml -> ..data/gateway.toml, ..data -> ..v1.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..v1")).unwrap();
    std::fs::write(d.join("..v1/gateway.toml"), old_config()).unwrap();
    symlink("..v1", d.join("..data")).unwrap();
    symlink("..data/gateway.toml", d.join("gateway.toml")).unwrap();
    let cfg = authgate::Config::load(&d.join("gateway.toml")).unwrap();
    let gw = authgate::Gateway::start(cfg).await.unwrap();
    let url = |p: &str| format!("http://{}{p}", gw.http_addr().unwrap());
    let get = |u: String| async move { client().get(u).send().await.unwrap().status() };
    let w = gw.watch_config().await.unwrap();
    let mut rx = w.outcomes();

    // The update as the kubelet makes it: a new directory, a new link renamed over `..data`.
    std::fs::create_dir(d.join("..v2")).unwrap();
    let v2 = format!("{}{}", old_config(), whoami_route("/new"));
    std::fs::write(d.join("..v2/gateway.toml"), &v2).unwrap();
    symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    let c = wait_for(&mut rx, "reload after the swap", |c| c.ok >= 1).await;
    assert_eq!(c.failed, 0, "{c:?}");
    assert_eq!(get(url("/new")).await, 200);

    // An edit where the link now leads.
    std::fs::write(
        d.join("..v2/gateway.toml"),
        format!("{v2}{}", whoami_route("/newer")),
    )
    .unwrap();
    let c = wait_for(&mut rx, "reload after the edit", |c| c.ok >= 2).await;
    assert_eq!(c.failed, 0, "{c:?}");
    assert_eq!(get(url("/newer")).await, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn config_watch_ends_with_the_gateway_shutdown() {
    let gw = TestGateway::start(&old_config()).await;
    let w = gw.gateway().watch_config().await.unwrap();
    let mut rx = w.outcomes();
    gw.shutdown().await;
    let ended = tokio::time::timeout(DEADLINE, rx.changed()).await;
    assert!(
        matches!(ended, Ok(Err(_))),
        "watcher still running after shutdown"
    );
}

#[tokio::test]
async fn config_watch_ends_when_its_handle_is_dropped() {
    let gw = TestGateway::start(&old_config()).await;
    let w = gw.gateway().watch_config().await.unwrap();
    let mut rx = w.outcomes();
    drop(w);
    let ended = tokio::time::timeout(DEADLINE, rx.changed()).await;
    assert!(
        matches!(ended, Ok(Err(_))),
        "watcher still running after its handle was dropped"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn reload_from_file_validation_error_names_the_line_of_the_key() {
    let gw = TestGateway::start(&old_config()).await;
    let text = format!(
        "{}[[routes]]\npath_prefix = \"/new\"\nupstream = \"ftp://nowhere\"\n",
        old_config()
    );
    let line = 1 + text
        .lines()
        .position(|l| l == "upstream = \"ftp://nowhere\"")
        .unwrap();
    std::fs::write(&gw.config_path, &text).unwrap();
    let (shared, path) = (gw.gateway().shared().clone(), gw.config_path.clone());
    let errs = tokio::task::spawn_blocking(move || {
        authgate::server::reload_from_file(&shared, &path).unwrap_err()
    })
    .await
    .unwrap();
    let e = errs
        .0
        .iter()
        .find(|e| e.key == "routes[1].upstream")
        .unwrap_or_else(|| panic!("no error for routes[1].upstream: {errs}"));
    assert_eq!(e.line, Some(line), "{e:?}");
    assert_eq!(e.file, gw.config_path);
    assert_eq!(status(&gw, "/old").await, 200);
    gw.shutdown().await;
}

#[test]
fn config_watch_config_key_defaults_on_and_turns_off() {
    let path = Path::new("x/gateway.toml");
    let on = authgate::Config::from_toml_str(&old_config(), path).unwrap();
    assert!(on.server.watch_config);
    let text = old_config().replace("[server]\n", "[server]\nwatch_config = false\n");
    let off = authgate::Config::from_toml_str(&text, path).unwrap();
    assert!(!off.server.watch_config);
}

#[tokio::test]
async fn an_enrolment_written_to_the_credentials_file_applies_without_sighup() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("credentials.key");
    std::fs::write(&key, "watch-test-credentials-key-0123456789").unwrap();
    let toml = format!(
        "{SERVER}[auth]\ncredentials_file = \"{{dir}}/credentials.toml\"\ncredentials_key_file = {:?}\n\n{}[[routes]]\npath_prefix = \"/\"\nupstream = \"builtin:whoami\"\n",
        key.to_str().unwrap(),
        user_toml("alice", &[])
    );
    let gw = TestGateway::start(&toml).await;
    let w = gw.gateway().watch_config().await.unwrap();
    let mut rx = w.outcomes();
    let password = || {
        client()
            .post(gw.url("/.auth/login"))
            .json(&serde_json::json!({"username": "alice", "password": PASSWORD}))
            .send()
    };
    assert_eq!(
        password().await.unwrap().status(),
        200,
        "no second factor yet"
    );
    // What `authgate totp enroll` does, from another process: the file appears.
    let cfg = authgate::Config::load(&gw.config_path).unwrap();
    authgate::auth::credentials::enroll(&cfg.auth.credentials.unwrap(), "alice", false).unwrap();
    wait_for(&mut rx, "reload after the enrolment", |c| c.ok >= 1).await;
    let r = password().await.unwrap();
    assert_eq!(r.status(), 401, "the password alone is no longer a login");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "second_factor_required");
    gw.shutdown().await;
}

#[tokio::test]
async fn config_watch_a_replaced_jwt_key_file_is_applied_without_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let jwt = jwt_section(dir.path());
    let toml = format!(
        "{SERVER}{jwt}\n{}[[routes]]\npath_prefix = \"/\"\nupstream = \"builtin:whoami\"\naccess = \"authenticated\"\n",
        user_toml("alice", &[])
    );
    let gw = TestGateway::start(&toml).await;
    let w = gw.gateway().watch_config().await.unwrap();
    let mut rx = w.outcomes();
    let get = |cookie: String| {
        let url = gw.url("/");
        async move {
            client()
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let old = login_json(&gw, "alice", PASSWORD).await;
    assert_eq!(get(old.clone()).await, 200);

    // Key rotation by a tool that writes the new key beside the old one and renames it over.
    let fresh = authgate::auth::jwt::generate_key(
        authgate::config::JwtAlgorithm::HS256,
        &dir.path().join("next"),
    )
    .unwrap();
    std::fs::rename(&fresh[0], dir.path().join("hs.secret")).unwrap();
    let c = wait_for(&mut rx, "reload", |c| c.ok >= 1).await;
    assert_eq!(c.failed, 0, "{c:?}");

    // Tokens signed with the old key no longer verify; new logins use the new one.
    assert_ne!(
        get(old).await,
        200,
        "a token of the replaced key still accepted"
    );
    let new = login_json(&gw, "alice", PASSWORD).await;
    assert_eq!(get(new).await, 200);
    gw.shutdown().await;
}
