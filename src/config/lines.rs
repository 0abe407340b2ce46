//! Lines for validation errors: maps a key path such as `routes[2].upstream` back to the line of
//! the TOML text where it is written.
//!
//! Serde reports a line only for syntax and type errors; the checks in `validate` run on the
//! deserialised structs, which no longer know where they came from. The text is parsed again
//! (only when there are errors) into toml's spanned document tree and the key path walked down.

use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::{line_of, ConfigErrors};

/// One step of a key path: a table key or an array index.
#[derive(Debug, PartialEq, Eq)]
enum Step<'k> {
    Key(&'k str),
    Index(usize),
}

/// Splits `server.trusted_proxies[1]` into `server`, `trusted_proxies`, `1`; `None` when `key`
/// is not such a path (the keys of users-file entries start with that file's path).
fn steps(key: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    let mut rest = key;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let (n, r) = r.split_once(']')?;
            out.push(Step::Index(n.parse().ok()?));
            rest = r;
        } else {
            let r = if out.is_empty() {
                rest
            } else {
                rest.strip_prefix('.')?
            };
            let end = r
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(r.len());
            if end == 0 {
                return None;
            }
            out.push(Step::Key(&r[..end]));
            rest = &r[end..];
        }
    }
    Some(out)
}

/// The 1-based line where `key` (e.g. `routes[2].upstream`, `auth.jwt.ttl`) is defined in
/// `text`, or failing that the line of its nearest parent that is written out (the `[auth.jwt]`
/// header for a missing `auth.jwt.ttl`, the `[[routes]]` header of a route). `None` when the
/// text does not parse or nothing on the path is written out.
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let doc = DeTable::parse(text).ok()?;
    lookup(doc.get_ref(), text, key)
}

/// [`line_of_key`] over an already parsed document.
fn lookup(doc: &DeTable<'_>, text: &str, key: &str) -> Option<usize> {
    let mut table = Some(doc);
    let mut value: Option<&DeValue<'_>> = None;
    let mut found = None;
    for step in steps(key)? {
        let next = match (step, table, value) {
            (Step::Key(k), Some(t), _) => t.get_key_value(k).map(|(k, v)| (k.span().start, v)),
            (Step::Index(i), _, Some(DeValue::Array(a))) => a.get(i).map(|v| (v.span().start, v)),
            _ => None,
        };
        let Some((at, v)) = next else { break };
        found = Some(line_of(text, at));
        value = Some(v.get_ref());
        table = match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    found
}

/// Fills in the line of every error in `file` that has none, from its key path over `text`
/// (parsed once, and only when some error needs it).
pub(crate) fn with_lines(mut errors: ConfigErrors, text: &str, file: &Path) -> ConfigErrors {
    let needs = |e: &super::ConfigError| e.line.is_none() && e.file == file && !e.key.is_empty();
    if !errors.0.iter().any(needs) {
        return errors;
    }
    let Ok(doc) = DeTable::parse(text) else {
        return errors;
    };
    for e in &mut errors.0 {
        if needs(e) {
            e.line = lookup(doc.get_ref(), text, &e.key);
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# gateway
[server]
listen = "127.0.0.1:0"
trusted_proxies = [
  "10.0.0.0/8",
  "bogus",
]

[auth]
mode = "jwt"

[auth.jwt]
algorithm = "HS256"
ttl = "0s"

[[routes]]
path_prefix = "/"
upstream = "builtin:whoami"

[[routes]]
path_prefix = "/b"
upstream = "ftp://x"

[[routes]]
path_prefix = "/c"
upstream = "builtin:whoami"
allow_groups = ["a", "b"]

[headers]
preset = "oauth2-proxy"
"#;

    #[test]
    fn line_of_key_finds_a_key_in_a_table() {
        assert_eq!(line_of_key(TEXT, "server.listen"), Some(3));
        assert_eq!(line_of_key(TEXT, "auth.mode"), Some(10));
        assert_eq!(line_of_key(TEXT, "headers.preset"), Some(30));
    }

    #[test]
    fn line_of_key_finds_a_key_in_a_nested_table() {
        assert_eq!(line_of_key(TEXT, "auth.jwt.ttl"), Some(14));
        assert_eq!(line_of_key(TEXT, "auth.jwt.algorithm"), Some(13));
    }

    #[test]
    fn line_of_key_finds_a_key_in_the_nth_array_table() {
        assert_eq!(line_of_key(TEXT, "routes[0].upstream"), Some(18));
        assert_eq!(line_of_key(TEXT, "routes[1].upstream"), Some(22));
        assert_eq!(line_of_key(TEXT, "routes[2].path_prefix"), Some(25));
    }

    #[test]
    fn line_of_key_finds_an_element_of_an_inline_array() {
        assert_eq!(line_of_key(TEXT, "server.trusted_proxies[1]"), Some(6));
        assert_eq!(line_of_key(TEXT, "routes[2].allow_groups[1]"), Some(27));
    }

    #[test]
    fn line_of_key_falls_back_to_the_nearest_written_parent() {
        // Missing key in an existing table: the table's header.
        assert_eq!(line_of_key(TEXT, "auth.jwt.signing_key"), Some(12));
        assert_eq!(line_of_key(TEXT, "server.public_url"), Some(2));
        // Missing key in an array table: that element's `[[routes]]` header.
        assert_eq!(line_of_key(TEXT, "routes[1].access"), Some(20));
        assert_eq!(line_of_key(TEXT, "routes[1]"), Some(20));
        // Index past the end: the array's first header.
        assert_eq!(line_of_key(TEXT, "routes[7].upstream"), Some(16));
        // Index into something that is not an array: the key itself.
        assert_eq!(line_of_key(TEXT, "server.listen[0]"), Some(3));
    }

    #[test]
    fn line_of_key_is_none_when_nothing_on_the_path_is_written() {
        assert_eq!(line_of_key(TEXT, "store.url"), None);
        assert_eq!(line_of_key(TEXT, "users[0].username"), None);
        assert_eq!(line_of_key(TEXT, ""), None);
        // Keys of users-file entries carry that file's path first: not a key path here.
        assert_eq!(
            line_of_key(TEXT, "/etc/authgate/users.toml: users[0].username"),
            None
        );
        let inline = "[[users]]\nusername = \"a\"\n";
        assert_eq!(line_of_key(inline, "users.toml: users[0].username"), None);
        assert_eq!(line_of_key("[server\nlisten = 1\n", "server.listen"), None);
    }

    #[test]
    fn line_of_key_finds_a_table_made_by_a_dotted_header_alone() {
        let text = "[[routes]]\nupstream = \"builtin:whoami\"\n\n[auth.jwt]\nttl = \"1m\"\n";
        assert_eq!(line_of_key(text, "auth.jwt"), Some(4));
        assert_eq!(line_of_key(text, "auth.mode"), Some(4));
        assert_eq!(line_of_key(text, "auth.jwt.ttl"), Some(5));
    }

    #[test]
    fn line_of_key_finds_dotted_and_inline_keys() {
        let text = "server.listen = \"x\"\n\n[auth]\njwt = { ttl = \"0s\",\n  issuer = \"i\" }\n";
        assert_eq!(line_of_key(text, "server.listen"), Some(1));
        assert_eq!(line_of_key(text, "auth.jwt.issuer"), Some(5));
    }

    #[test]
    fn steps_split_keys_and_indices() {
        use Step::{Index as I, Key as K};
        assert_eq!(
            steps("routes[2].allow_groups[10]"),
            Some(vec![K("routes"), I(2), K("allow_groups"), I(10)])
        );
        assert_eq!(
            steps("auth.jwt.ttl"),
            Some(vec![K("auth"), K("jwt"), K("ttl")])
        );
        assert_eq!(steps("x: users[0]"), None);
        assert_eq!(steps("users.toml: users[0].username"), None);
        assert_eq!(steps("a..b"), None);
        assert_eq!(steps("a[x]"), None);
        assert_eq!(steps(".a"), None);
    }

    #[test]
    fn validation_error_carries_the_line_of_its_key() {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"builtin:whoami\"\n\n[[routes]]\npath_prefix = \"/x\"\nupstream = \"ftp://nowhere\"\n";
        let file = Path::new("dir/gateway.toml");
        let errs = crate::Config::from_toml_str(text, file).unwrap_err();
        let e = errs
            .0
            .iter()
            .find(|e| e.key == "routes[1].upstream")
            .unwrap_or_else(|| panic!("no error for routes[1].upstream: {errs}"));
        assert_eq!(e.line, Some(10), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("dir/gateway.toml:10: routes[1].upstream"),
            "{e}"
        );
    }

    #[test]
    fn with_lines_leaves_other_files_and_known_lines_alone() {
        use crate::config::ConfigError;
        let file = Path::new("g.toml");
        let err = |f: &str, key: &str, line| ConfigError {
            file: f.into(),
            key: key.into(),
            line,
            message: "m".into(),
        };
        let out = with_lines(
            ConfigErrors(vec![
                err("g.toml", "server.listen", None),
                err("g.toml", "auth.mode", Some(99)),
                err("users.toml", "server.listen", None),
                err("g.toml", "", None),
            ]),
            TEXT,
            file,
        );
        let lines: Vec<_> = out.0.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![Some(3), Some(99), None, None]);
    }
}
