//! Invariants shared by the targets (the same ones tests/properties.rs checks).
#![allow(dead_code)]

use std::borrow::Cow;

/// Percent-decodes the way a lenient server does: `%XX` is a byte, `%uXXXX` (IIS) a code point,
/// anything malformed stays as it is; the bytes are then read as UTF-8 without refusing overlong
/// forms (`%c0%ae` reads as `.`), surrogates become U+FFFD.
pub fn lenient_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                bytes.push(h << 4 | l);
                i += 3;
                continue;
            }
            if matches!(b.get(i + 1), Some(b'u' | b'U'))
                && b.len() >= i + 6
                && b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit)
            {
                // Four hex digits exactly (`from_str_radix` alone would take a sign).
                if let Ok(cp) = u32::from_str_radix(&s[i + 2..i + 6], 16) {
                    let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
                    let mut tmp = [0u8; 4];
                    bytes.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                    i += 6;
                    continue;
                }
            }
        }
        bytes.push(b[i]);
        i += 1;
    }
    lenient_utf8(&bytes)
}

/// Reads UTF-8 without the overlong check (as old or careless decoders did).
fn lenient_utf8(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let (n, init) = match c {
            0x00..=0x7f => (0, c as u32),
            0xc0..=0xdf => (1, (c & 0x1f) as u32),
            0xe0..=0xef => (2, (c & 0x0f) as u32),
            0xf0..=0xf7 => (3, (c & 0x07) as u32),
            _ => {
                out.push('\u{fffd}');
                i += 1;
                continue;
            }
        };
        let mut cp = init;
        let mut ok = true;
        for k in 1..=n {
            match b.get(i + k) {
                Some(&cc) if cc & 0xc0 == 0x80 => cp = cp << 6 | (cc & 0x3f) as u32,
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            out.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
            i += n + 1;
        } else {
            out.push('\u{fffd}');
            i += 1;
        }
    }
    out
}

/// What a lenient app makes of a decoded path: `\` is `/`, `?`/`#` end the path, `;params`
/// are dropped from each segment, dot segments resolved (RFC 3986 §5.2.4, clamped at the root).
pub fn lenient_resolve(s: &str) -> String {
    let s = s.replace('\\', "/");
    let s = s.split(['?', '#']).next().unwrap_or("");
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = s.split('/').collect();
    let last = segs.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in segs.iter().enumerate().skip(1) {
        let name = seg.split(';').next().unwrap_or("");
        trailing = i == last && matches!(name, "" | "." | "..");
        match name {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            n => out.push(n),
        }
    }
    let mut p = String::new();
    for s in &out {
        p.push('/');
        p.push_str(s);
    }
    if p.is_empty() || trailing {
        p.push('/');
    }
    p
}

/// Every reading a lenient app might make of a forwarded path: decoded once or twice, each
/// with `\`, `?`, `#` and `;` read as a lenient app reads them.
pub fn lenient_readings(p: &str) -> [String; 3] {
    let once = lenient_decode(p);
    let twice = lenient_decode(&once);
    [
        lenient_resolve(p),
        lenient_resolve(&once),
        lenient_resolve(&twice),
    ]
}

/// The router's rule: `path` is `prefix` or continues it at `/` or `;`.
pub fn under(prefix: &str, path: &str) -> bool {
    authgate::pipeline::route::prefix_matches(prefix, path)
}

/// Checks a normalised path: its shape, that normalising again changes nothing, and that no
/// lenient reading leaves (or enters) a route prefix the router decided on.
pub fn check_normalized(raw: &str, p: &str, borrowed: bool) {
    use authgate::pipeline::path::normalize;
    if borrowed {
        assert_eq!(p, raw, "a borrowed result is the input");
    }
    assert!(p.starts_with('/'), "{raw:?} -> {p:?}: not absolute");
    assert!(!p.contains("//"), "{raw:?} -> {p:?}: has //");
    assert!(
        !p.split('/').any(|s| s == "." || s == ".."),
        "{raw:?} -> {p:?}: dot segment"
    );
    let lower = p.to_ascii_lowercase();
    for bad in ["%2e", "%2f", "%5c", "%00", "%3b", "%3f", "%23", "\\"] {
        assert!(!lower.contains(bad), "{raw:?} -> {p:?}: contains {bad}");
    }
    let again = normalize(p).unwrap_or_else(|e| panic!("{raw:?} -> {p:?} refused again: {e}"));
    assert_eq!(again, p, "{raw:?}: normalising twice changed it");
    if p.bytes()
        .all(|c| authgate::pipeline::path::plain(c) || c == b'.')
    {
        assert!(
            matches!(again, Cow::Borrowed(_)),
            "{p:?}: normal but not borrowed"
        );
    }

    // Route prefixes at every segment boundary of the forwarded path (what the router saw) and
    // of each lenient reading (what the app sees): each side must agree on each prefix.
    let readings = lenient_readings(p);
    let prefixes = |s: &str| -> Vec<String> {
        s.match_indices('/')
            .map(|(i, _)| i)
            .chain(std::iter::once(s.len()))
            .filter(|&i| i > 0)
            .map(|i| s[..i].to_string())
            .collect()
    };
    let routable = |pre: &str| {
        pre.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'-' | b'.' | b'_' | b'~'))
    };
    // A prefix must be a whole directory: the last segment may carry parameters the app drops.
    let dir = p.rfind('/').map_or("", |i| &p[..i]);
    for pre in prefixes(dir).iter().filter(|x| routable(x)) {
        for r in &readings {
            assert!(
                under(pre, r),
                "{raw:?} -> {p:?} is routed under {pre:?}, a lenient app reads {r:?}"
            );
        }
    }
    for r in &readings {
        let rdir = r.rfind('/').map_or("", |i| &r[..i]);
        for pre in prefixes(rdir).iter().filter(|x| routable(x)) {
            assert!(
                under(pre, p),
                "{raw:?} -> {p:?} is not routed under {pre:?}, a lenient app reads {r:?}"
            );
        }
    }
}

/// A same-origin relative path: `/`, not `//` or `/\`, no control characters, also after
/// percent-decoding once (strict UTF-8; invalid sequences read as U+FFFD).
pub fn check_rd(rd: &str, out: &str) {
    let once = percent_encoding::percent_decode_str(out).decode_utf8_lossy();
    for s in [out, &once] {
        assert!(s.starts_with('/'), "{rd:?} -> {out:?}: not a path");
        assert!(!s.starts_with("//"), "{rd:?} -> {out:?}: protocol-relative");
        assert!(!s.starts_with("/\\"), "{rd:?} -> {out:?}: /\\");
        assert!(!s.contains('\\'), "{rd:?} -> {out:?}: backslash");
        assert!(
            !s.chars().any(char::is_control),
            "{rd:?} -> {out:?}: control character"
        );
    }
    assert!(
        out == "/" || out == rd,
        "{rd:?} -> {out:?}: neither kept nor /"
    );
}
