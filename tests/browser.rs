//! The project's own real-browser test: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven by Selenium from `python3-selenium`; installed by `.ci/deps`,
//! nothing downloaded) walks password login, the TOTP step, a step-up and logout, with and
//! without JavaScript, against a real gateway on an ephemeral port. Screenshots are saved under
//! `target/browser/`. The walk itself is `tests/browser/walk.py`.

mod support;
use support::*;

use std::path::Path;

const KEY: &str = "browser-test-credentials-key-0123456789";

fn need(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install it with `apt-get install {package}` (bash .ci/deps does)"
    );
}

#[tokio::test]
async fn headless_chromium_walks_login_code_step_up_and_logout_with_and_without_javascript() {
    need("/usr/bin/chromium", "chromium");
    need("/usr/bin/chromedriver", "chromium-driver");
    let probe = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import selenium"])
        .status()
        .expect("python3 runs");
    assert!(
        probe.success(),
        "python3-selenium is missing: install it with `apt-get install python3-selenium` (bash .ci/deps does)"
    );

    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("key"), KEY).unwrap();
    let body = |public: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"{public}\"\n\n\
             [auth]\ncredentials_file = \"{{dir}}/credentials.toml\"\ncredentials_key_file = {key:?}\n\n{user}\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"builtin:whoami\"\n\n\
             [[routes]]\npath_prefix = \"/fresh\"\nupstream = \"builtin:whoami\"\nmax_auth_age = \"3s\"\n",
            key = keys.path().join("key").to_str().unwrap(),
            user = user_toml("alice", &["staff"]),
        )
    };
    let gw = TestGateway::start(&body("http://127.0.0.1")).await;
    // The port is known now: the redirects and the Origin check need the real origin.
    let base = format!("http://127.0.0.1:{}", gw.addr.port());
    let text = body(&base).replace("{dir}", gw.dir.path().to_str().unwrap());
    std::fs::write(
        &gw.config_path,
        format!("{text}\n[log]\naccess_log = false\n"),
    )
    .unwrap();
    let cfg = authgate::Config::load(&gw.config_path).unwrap();
    let cc = cfg.auth.credentials.clone().unwrap();
    let e = authgate::auth::credentials::enroll(&cc, "alice", false).unwrap();
    let cfg = authgate::Config::load(&gw.config_path).unwrap();
    gw.gateway().reload(cfg).unwrap();

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/walk.py");
    let (base2, secret, codes) = (
        base.clone(),
        e.secret_base32.clone(),
        e.recovery_codes.clone(),
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("/usr/bin/python3")
            .arg(script)
            .args([
                &base2,
                &secret,
                PASSWORD,
                shots.to_str().unwrap(),
                &codes[0],
                &codes[1],
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("browser walk ok"),
        "the browser walk failed:\n{stdout}\n{stderr}"
    );
    for name in ["js-2-code", "nojs-4-stepped-up", "nojs-6-logged-out"] {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/browser")
            .join(format!("{name}.png"));
        assert!(
            p.metadata().map(|m| m.len() > 1000).unwrap_or(false),
            "no screenshot {}",
            p.display()
        );
    }
    gw.shutdown().await;
}
