//! `authgate explain` and `check-config` on the README's access-policy example: the worked
//! example is loaded from README.md itself and every command shown there is run against it with
//! the real binary, its output compared line for line (the README cannot drift from the code).

use std::path::{Path, PathBuf};
use std::process::Command;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The fenced block right after the line containing `marker`.
fn block_after(text: &str, marker: &str) -> String {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("README.md has no {marker:?} marker"));
    let rest = &text[start..];
    let open = rest.find("```").expect("no fenced block after the marker");
    let body_start = open + rest[open..].find('\n').unwrap() + 1;
    let close = rest[body_start..]
        .find("\n```")
        .expect("unclosed fenced block");
    rest[body_start..body_start + close + 1].to_string()
}

fn authgate(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_authgate"))
        // The README example takes its credentials key from the environment.
        .env(
            "AUTHGATE_CREDENTIALS_KEY",
            "readme-example-key-0123456789abcdef",
        )
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("gateway.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_explain_example_in_the_readme_prints_what_the_readme_shows() {
    let text = readme();
    let config = block_after(&text, "<!-- policy-example");
    let console = block_after(&text, "<!-- policy-explain");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config);
    let (code, out, err) = authgate(&path, &["check-config"]);
    assert_eq!(code, 0, "the README example must be valid: {out}{err}");

    // `$ authgate explain ARGS` followed by the expected lines, up to the next `$`.
    let mut examples: Vec<(Vec<String>, String)> = Vec::new();
    for line in console.lines() {
        if let Some(cmd) = line.strip_prefix("$ authgate ") {
            examples.push((
                cmd.split_whitespace().map(str::to_string).collect(),
                String::new(),
            ));
        } else if let Some((_, expected)) = examples.last_mut() {
            expected.push_str(line);
            expected.push('\n');
        }
    }
    assert!(examples.len() >= 6, "too few examples found: {examples:?}");
    let mut outcomes = std::collections::BTreeSet::new();
    for (args, expected) in &examples {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = authgate(&path, &a);
        assert_eq!(code, 0, "authgate {args:?}: {err}");
        assert_eq!(&out, expected, "authgate {args:?} printed something else");
        let outcome = out.lines().last().unwrap_or_default();
        outcomes.insert(outcome.split_whitespace().nth(1).unwrap_or("").to_string());
    }
    // The examples show every kind of outcome.
    for kind in ["allow", "deny", "login"] {
        assert!(
            outcomes.contains(kind),
            "no example ends in {kind}: {outcomes:?}"
        );
    }
}

#[test]
fn explain_refuses_an_unknown_user_and_says_which() {
    let config = block_after(&readme(), "<!-- policy-example");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config);
    let (code, _, err) = authgate(
        &path,
        &["explain", "--user", "mallory", "https://app.example.com/"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("no user \"mallory\""), "{err}");
}

#[test]
fn explain_of_a_path_the_gateway_refuses_says_400() {
    let config = block_after(&readme(), "<!-- policy-example");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config);
    let (code, _, err) = authgate(&path, &["explain", "https://app.example.com/a%2fb"]);
    assert_ne!(code, 0);
    assert!(err.contains("400"), "{err}");
}

#[test]
fn check_config_reports_shadowed_rules_and_invalid_globs_with_file_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let shadowed = "[[routes]]\nupstream = \"http://127.0.0.1:3000\"\n\n[[routes.rules]]\npaths = [\"/api/**\"]\n\n[[routes.rules]]\npaths = [\"/api/admin/**\"]\nallow_groups = [\"admins\"]\n\n[[routes.rules]]\npaths = [\"/api/admin/keys\"]\naccess = \"deny\"\n";
    let path = write_config(dir.path(), shadowed);
    let (code, _, err) = authgate(&path, &["check-config"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("gateway.toml:7: routes[0].rules[1]: this rule can never decide"),
        "{err}"
    );
    // A deny rule is never shadowed (it wins wherever it stands).
    assert!(!err.contains("routes[0].rules[2]"), "{err}");
    assert!(err.contains("1 problem(s) found"), "{err}");

    let globs = "[[routes]]\nupstream = \"http://127.0.0.1:3000\"\n\n[[routes.rules]]\npaths = [\"/ok/**\", \"/a**\"]\nmethods = [\"GET\", \"BAD METHOD\"]\nnetworks = [\"10.0.0.0/33\"]\n";
    let path = write_config(dir.path(), globs);
    let (code, _, err) = authgate(&path, &["check-config"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("gateway.toml:5: routes[0].rules[0].paths[1]: \"/a**\""),
        "{err}"
    );
    assert!(
        err.contains("gateway.toml:6: routes[0].rules[0].methods[1]"),
        "{err}"
    );
    assert!(
        err.contains("gateway.toml:7: routes[0].rules[0].networks[0]"),
        "{err}"
    );
}
