//! Property tests of the parsers that face attackers: path normalisation, Host validation, cookie
//! lookup and removal, the login body, `rd` validation and the TOML config. Inputs are drawn from
//! the alphabet attacks are spelled in (`/ . % 2 5 e \ ;`, escapes, overlong UTF-8), not from
//! uniform unicode, so the interesting corners come up in a few thousand cases. The cargo-fuzz
//! targets in fuzz/ check the same invariants for longer.

use std::borrow::Cow;

use authgate::pipeline::headers::{find_cookie, remove_cookies, CookieLookup};
use authgate::pipeline::path::{normalize, plain};
use authgate::pipeline::route::{host_without_port, prefix_matches};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// A reference lenient decoder: what a careless app behind the gateway might make of a path. One
// copy, shared with the fuzz targets.

#[path = "../fuzz/fuzz_targets/common.rs"]
mod common;
use common::lenient_readings;

/// What the gateway would see of `s` as a request target's path (an `http::Uri` refuses much).
fn as_request_path(s: &str) -> Option<String> {
    http::uri::PathAndQuery::try_from(s)
        .ok()
        .map(|pq| pq.path().to_string())
}

// ---------------------------------------------------------------------------------------------
// Strategies: strings glued from the pieces attacks are made of.

fn glued(pieces: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(pieces).prop_map(str::to_string),
            1 => "[0-9a-fA-F]{1,2}",
            1 => "[ -~]{1,3}",
        ],
        0..max,
    )
    .prop_map(|v| v.concat())
}

const PATH_PIECES: &[&str] = &[
    "/", "/", "/", ".", "..", "%", "%2e", "%2E", "%25", "%252e", "%2525", "%32", "%65", "2", "5",
    "e", "E", "u", "%u002e", "%c0", "%ae", "%af", "%c1", "%c3", "%a9", "%e0", "%80", "%ed", "%a0",
    "%f0", "%f4", "%90", "%bf", "%ff", "%2f", "%5c", "\\", ";", "%3b", "%3f", "%23", "?", "#",
    "%00", "%41", "%7e", "%20", "a", "public", "admin", "//", "/..", "/.", "..;", "~",
];

fn path_strategy() -> impl Strategy<Value = String> {
    glued(PATH_PIECES, 14).prop_map(|s| {
        if s.starts_with('/') {
            s
        } else {
            format!("/{s}")
        }
    })
}

/// Route prefixes a config may hold: whole segments of unreserved characters.
fn routable(pre: &str) -> bool {
    pre.bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'-' | b'.' | b'_' | b'~'))
}

/// Every prefix of `s` that ends at a segment boundary, without its last segment (which may
/// carry `;` parameters an app drops).
fn dir_prefixes(s: &str) -> Vec<&str> {
    let dir = s.rfind('/').map_or("", |i| &s[..i]);
    dir.match_indices('/')
        .map(|(i, _)| i)
        .chain(std::iter::once(dir.len()))
        .filter(|&i| i > 0)
        .map(|i| &dir[..i])
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn normalize_result_is_normal_and_normalising_again_changes_nothing(s in path_strategy()) {
        let Some(raw) = as_request_path(&s) else { return Ok(()) };
        let Ok(n) = normalize(&raw) else { return Ok(()) };
        let p: &str = &n;
        if matches!(n, Cow::Borrowed(_)) {
            prop_assert_eq!(p, raw.as_str());
        }
        prop_assert!(p.starts_with('/'));
        prop_assert!(!p.contains("//"), "{:?} -> {:?}", raw, p);
        prop_assert!(!p.split('/').any(|s| s == "." || s == ".."), "{:?} -> {:?}", raw, p);
        let lower = p.to_ascii_lowercase();
        for bad in ["%2e", "%2f", "%5c", "%00", "%3b", "%3f", "%23", "\\"] {
            prop_assert!(!lower.contains(bad), "{:?} -> {:?} contains {}", raw, p, bad);
        }
        let again = normalize(p);
        prop_assert_eq!(again.as_deref(), Ok(p), "from {:?}", raw);
        if p.bytes().all(|c| plain(c) || c == b'.') {
            prop_assert!(matches!(again, Ok(Cow::Borrowed(_))), "{:?} not borrowed", p);
        }
    }

    #[test]
    fn path_routed_under_public_never_decodes_to_outside_it(tail in glued(PATH_PIECES, 12)) {
        let Some(raw) = as_request_path(&format!("/public/{tail}")) else { return Ok(()) };
        let Ok(p) = normalize(&raw) else { return Ok(()) };
        if !prefix_matches("/public", &p) {
            return Ok(());
        }
        for r in lenient_readings(&p) {
            prop_assert!(
                prefix_matches("/public", &r),
                "{:?} is forwarded as {:?} under /public; a lenient app reads {:?}", raw, p, r
            );
        }
    }

    #[test]
    fn no_lenient_reading_of_a_normalised_path_crosses_a_route_boundary(s in path_strategy()) {
        let Some(raw) = as_request_path(&s) else { return Ok(()) };
        let Ok(p) = normalize(&raw) else { return Ok(()) };
        let readings = lenient_readings(&p);
        // Under every prefix the router saw, the app sees the same; and the other way round.
        for pre in dir_prefixes(&p).into_iter().filter(|x| routable(x)) {
            for r in &readings {
                prop_assert!(prefix_matches(pre, r), "{:?} -> {:?} under {}, app reads {:?}", raw, p, pre, r);
            }
        }
        for r in &readings {
            for pre in dir_prefixes(r).into_iter().filter(|x| routable(x)) {
                prop_assert!(prefix_matches(pre, &p), "{:?} -> {:?} not under {}, app reads {:?}", raw, p, pre, r);
            }
        }
    }
}

#[test]
fn lenient_reference_decoder_reads_the_attacks_it_models() {
    // The reference must be lenient enough to see the attacks, or the properties prove nothing.
    assert_eq!(lenient_readings("/public/%252e%252e/admin/")[2], "/admin/");
    assert_eq!(lenient_readings("/public/%c0%ae%c0%ae/admin")[1], "/admin");
    assert_eq!(lenient_readings("/public/%e0%80%ae%e0%80%ae/x")[1], "/x");
    assert_eq!(lenient_readings("/public/..%5cadmin")[1], "/admin");
    assert_eq!(lenient_readings("/public/%25u002e%25u002e/a")[2], "/a");
    assert_eq!(lenient_readings("/public/..%3f/admin")[1], "/");
    assert_eq!(lenient_readings("/caf%C3%A9/x")[1], "/café/x");
}

// ---------------------------------------------------------------------------------------------
// rd

const RD_PIECES: &[&str] = &[
    "/",
    "/",
    "//",
    "\\",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "%252f",
    "%25",
    "evil.com",
    "http:",
    "https://",
    "javascript:",
    ":",
    "@",
    "%0a",
    "%0d",
    "%09",
    "%00",
    "\t",
    "\n",
    " ",
    "?",
    "#",
    ".",
    "..",
    "/.auth",
    "%c0%af",
    "%e2%80%ae",
    "a",
    "%",
    "%2",
    "\u{7f}",
    "\u{2028}",
    "é",
];

/// `safe_rd`'s promise: a same-origin relative path, also after one percent-decoding.
fn check_rd(rd: &str, out: &str) -> Result<(), TestCaseError> {
    let once = percent_encoding::percent_decode_str(out).decode_utf8_lossy();
    for s in [out, &once] {
        prop_assert!(s.starts_with('/'), "{:?} -> {:?}", rd, out);
        prop_assert!(!s.starts_with("//"), "{:?} -> {:?}", rd, out);
        prop_assert!(!s.starts_with("/\\"), "{:?} -> {:?}", rd, out);
        prop_assert!(!s.chars().any(char::is_control), "{:?} -> {:?}", rd, out);
    }
    prop_assert!(out == "/" || out == rd, "{:?} -> {:?}", rd, out);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn safe_rd_always_yields_a_same_origin_relative_path(rd in glued(RD_PIECES, 10)) {
        for origin in ["https://gateway.test", "http://127.0.0.1:8080"] {
            let out = authgate::login::safe_rd(&rd, origin);
            check_rd(&rd, &out)?;
            let base = url::Url::parse(origin).unwrap();
            let joined = base.join(&out).unwrap();
            prop_assert_eq!(joined.origin(), base.origin(), "{:?} -> {:?}", rd, out);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Host

const HOST_PIECES: &[&str] = &[
    "a",
    "example",
    ".",
    "-",
    "_",
    ":",
    ":",
    "80",
    "8080",
    "65536",
    "[",
    "]",
    "::1",
    "@",
    "/",
    "?",
    "#",
    " ",
    "\\",
    "%",
    "1",
    "0",
    "127.0.0.1",
    "\t",
    "é",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn host_header_ok_accepts_only_host_and_optional_digit_port(s in glued(HOST_PIECES, 6)) {
        let Ok(v) = http::HeaderValue::from_str(&s) else { return Ok(()) };
        let mut h = http::HeaderMap::new();
        h.insert(http::header::HOST, v.clone());
        if !authgate::pipeline::host_header_ok(&h) {
            return Ok(());
        }
        let host = host_without_port(&s);
        prop_assert!(!host.is_empty(), "{:?}", s);
        prop_assert!(
            !host.bytes().any(|c| matches!(c, b'/' | b'?' | b'#' | b'@' | b'\\' | b' ' | b'%')),
            "{:?} -> host {:?}", s, host
        );
        let rest = if s.starts_with('[') {
            let end = s.find(']').unwrap();
            prop_assert_eq!(&s[1..end], host);
            &s[end + 1..]
        } else {
            prop_assert!(s.starts_with(host));
            &s[host.len()..]
        };
        match rest.strip_prefix(':') {
            Some(port) => prop_assert!(
                !port.is_empty() && port.bytes().all(|c| c.is_ascii_digit()),
                "{:?}: port {:?}", s, port
            ),
            None => prop_assert!(rest.is_empty(), "{:?}: {:?} after the host", s, rest),
        }
        h.append(http::header::HOST, v);
        prop_assert!(!authgate::pipeline::host_header_ok(&h), "two Host lines accepted");
    }
}

// ---------------------------------------------------------------------------------------------
// Cookies

const COOKIE_PIECES: &[&str] = &[
    "authgate",
    "authgate",
    "authgate_csrf",
    "xauthgate",
    "authgate2",
    "a",
    "=",
    "=",
    ";",
    "; ",
    " ",
    "\t",
    "v",
    "\"q\"",
    "==",
    ",",
];

/// `(name, pair)` of every cookie pair, trimmed as RFC 6265 reads them.
fn pairs(h: &http::HeaderMap) -> Vec<(Vec<u8>, Vec<u8>)> {
    h.get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let name = match p.iter().position(|&b| b == b'=') {
                Some(i) => p[..i].trim_ascii(),
                None => p,
            };
            (name.to_vec(), p.to_vec())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn cookie_removal_drops_only_the_named_cookie_and_agrees_with_lookup(
        lines in prop::collection::vec(glued(COOKIE_PIECES, 10), 0..3),
        which in 0usize..2,
    ) {
        let name = ["authgate", "authgate_csrf"][which];
        let mut h = http::HeaderMap::new();
        for l in &lines {
            if let Ok(v) = http::HeaderValue::from_str(l) {
                h.append(http::header::COOKIE, v);
            }
        }
        let before = pairs(&h);
        let found = find_cookie(&h, name);
        if let CookieLookup::One(v) = found {
            let v = v.trim_ascii_end().as_bytes();
            prop_assert!(
                before.iter().any(|(n, p)| n == name.as_bytes() && p.ends_with(v)),
                "lookup found {:?} in {:?}", v, lines
            );
        }
        let mut after_h = h.clone();
        remove_cookies(&mut after_h, &[name]);
        let after = pairs(&after_h);
        prop_assert_eq!(find_cookie(&after_h, name), CookieLookup::Absent);
        prop_assert!(after.iter().all(|(n, _)| n != name.as_bytes()), "{:?} left in {:?}", name, after);
        let kept: Vec<_> = before.into_iter().filter(|(n, _)| n != name.as_bytes()).collect();
        prop_assert_eq!(after, kept, "other cookies changed: {:?}", lines);
    }
}

// ---------------------------------------------------------------------------------------------
// Login body

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn login_body_parser_reads_back_what_it_accepted(
        json in any::<bool>(),
        body in glued(&["username", "password", "csrf", "rd", "=", "&", "%", "%2", "%41", "+",
                         "{", "}", "\"", ":", ",", "null", "[", "]", "\\u0000", "é"], 16),
    ) {
        let Ok((user, pass, csrf, rd)) = authgate::login::parse_login_body(json, body.as_bytes())
        else { return Ok(()) };
        let again = if json {
            serde_json::json!({ "username": user, "password": pass, "csrf": csrf, "rd": rd })
                .to_string()
        } else {
            let mut f = vec![("username", user.as_str()), ("password", pass.as_str())];
            f.extend(csrf.as_deref().map(|c| ("csrf", c)));
            f.extend(rd.as_deref().map(|r| ("rd", r)));
            serde_urlencoded::to_string(f).unwrap()
        };
        let back = authgate::login::parse_login_body(json, again.as_bytes());
        prop_assert!(back.is_ok(), "{:?} re-encoded as {:?} refused", body, again);
        prop_assert_eq!(back.unwrap(), (user, pass, csrf, rd));
    }
}

// ---------------------------------------------------------------------------------------------
// Config

const TOML_PIECES: &[&str] = &[
    "[server]\n",
    "[auth]\n",
    "[auth.jwt]\n",
    "[[routes]]\n",
    "[[users]]\n",
    "[[routes.rules]]\n",
    "[store]\n",
    "[headers]\n",
    "listen = ",
    "public_url = ",
    "mode = ",
    "path_prefix = ",
    "upstream = ",
    "access = ",
    "host = ",
    "idle_timeout = ",
    "max_lifetime = ",
    "timeout = ",
    "username = ",
    "password_hash = ",
    "groups = ",
    "allow_groups = ",
    "paths = ",
    "methods = ",
    "algorithm = ",
    "signing_key = ",
    "preset = ",
    "trusted_proxies = ",
    "\"127.0.0.1:0\"",
    "\"http://gateway.test\"",
    "\"https://x\"",
    "\"/\"",
    "\"/a\"",
    "\"builtin:whoami\"",
    "\"http://127.0.0.1:1/b\"",
    "\"public\"",
    "\"authenticated\"",
    "\"jwt\"",
    "\"session\"",
    "\"HS256\"",
    "\"30s\"",
    "\"0s\"",
    "\"99999999999999999h\"",
    "\"*.example.com\"",
    "[\"x\"]",
    "[]",
    "\"10.0.0.0/8\"",
    "1",
    "-1",
    "1e999",
    "true",
    "{}",
    "\n",
    "\n",
    "=",
    "\"",
    "[",
    "]",
    ",",
    " ",
    "#",
    "'",
    "é",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn config_parser_never_panics(
        text in prop_oneof![3 => glued(TOML_PIECES, 24), 1 => any::<String>()],
    ) {
        // A directory that does not exist: key and users files named relatively fail to read.
        let path = std::path::Path::new("/nonexistent-authgate-props/gateway.toml");
        if let Err(e) = authgate::Config::from_toml_str(&text, path) {
            prop_assert!(!e.0.is_empty());
        }
    }
}
