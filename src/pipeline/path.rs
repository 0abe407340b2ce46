//! Request path normalisation: the path routing and access rules decide on is the path forwarded.
//!
//! Percent-encoded unreserved characters are decoded (RFC 3986 §6.2.2.2), other escapes written
//! with upper-case hex (§6.2.2.1), dot segments resolved, repeated slashes merged. Refused, because
//! an upstream might decode them into a path the rules never saw: encoded slashes, backslashes and
//! NUL; encoded `;`, `?` and `#` (an app that decodes and then splits reads `/admin%3F/x` as
//! `/admin`); double encoding (`%252e`: an app that decodes twice reads `.`); and escapes whose
//! bytes are not valid UTF-8 (overlong `%c0%ae`: a lenient decoder reads `.`). Valid multibyte
//! escapes (`%C3%A9`) pass, still encoded. The same set as Traefik v3's `encodedCharacters`
//! defaults, except that a `%25` which cannot decode into an escape (`100%25`) is kept.

use std::borrow::Cow;

/// Why a path was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an absolute path.
    #[error("request path must start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in path")]
    BadEncoding,
    /// `%2f`, `%5c`, `\\` or `%00`.
    #[error("encoded slash, backslash or NUL in path")]
    Forbidden,
    /// A dot segment hidden behind a `;` parameter (`/..;/`).
    #[error("dot segment with parameters in path")]
    DotParam,
    /// `%3B`, `%3F` or `%23`: decoded, they end the segment or the path for some apps.
    #[error("encoded ';', '?' or '#' in path")]
    EncodedDelimiter,
    /// `%25` followed by two hex digits (or IIS-style `u` and four): decoded twice it is an escape.
    #[error("double percent-encoding in path")]
    DoubleEncoding,
    /// Percent-encoded bytes that are not UTF-8 (overlong, surrogate, truncated, stray
    /// continuation, beyond U+10FFFF): lenient decoders turn some of them into `/` or `.`.
    #[error("percent-encoded bytes in path are not valid UTF-8")]
    InvalidUtf8,
    /// A `;` parameter before the last segment (`/;/admin`, `/app;x/admin`): servers that strip
    /// parameters from every segment would see a path the routing rules never saw.
    #[error("path parameters are only allowed in the last segment")]
    ParamSegment,
}

/// Bytes a normalised path keeps as they are (besides `.`, `;` and `%XX` escapes).
pub fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'/' | b'-'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

/// Normalises a raw request path. The common case (already normal) borrows.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let b = raw.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if b.iter().all(|&c| plain(c) || c == b'.') && !raw.contains("//") && !has_dot_segment(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    // Decode unreserved escapes, refuse dangerous ones.
    let mut decoded = String::with_capacity(raw.len());
    let mut utf8 = Utf8Run::default();
    let mut percent = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let v = match b.get(i + 1..i + 3) {
                    Some(&[h, l]) => match (hex_val(h), hex_val(l)) {
                        (Some(h), Some(l)) => (h << 4) | l,
                        _ => return Err(PathError::BadEncoding),
                    },
                    _ => return Err(PathError::BadEncoding),
                };
                if v >= 0x80 {
                    utf8.push(v)?;
                    push_escape(&mut decoded, v);
                    i += 3;
                    continue;
                }
                utf8.end()?;
                if v == b'/' || v == b'\\' || v == 0 {
                    return Err(PathError::Forbidden);
                }
                if matches!(v, b';' | b'?' | b'#') {
                    return Err(PathError::EncodedDelimiter);
                }
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(v as char);
                } else {
                    percent |= v == b'%';
                    push_escape(&mut decoded, v);
                }
                i += 3;
            }
            b'\\' | 0 => return Err(PathError::Forbidden),
            c if c.is_ascii_control() => return Err(PathError::Forbidden),
            c => {
                utf8.end()?;
                // Non-ASCII bytes cannot appear in a parsed http::Uri, but stay safe.
                if c.is_ascii() {
                    decoded.push(c as char);
                } else {
                    return Err(PathError::Forbidden);
                }
                i += 1;
            }
        }
    }
    utf8.end()?;
    // Checked on the decoded form, so `%25%32%65` (`%25` then encoded `2e`) is caught too.
    if percent && double_encoded(decoded.as_bytes()) {
        return Err(PathError::DoubleEncoding);
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        let name = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ if name == "." || name == ".." => return Err(PathError::DotParam),
            s => out.push(s),
        }
    }
    if out.len() > 1 && out[..out.len() - 1].iter().any(|s| s.contains(';')) {
        return Err(PathError::ParamSegment);
    }
    let mut path = String::with_capacity(decoded.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || trailing {
        path.push('/');
    }
    Ok(Cow::Owned(path))
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Appends `%XX` with upper-case hex, without formatting machinery.
fn push_escape(out: &mut String, v: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(v >> 4)] as char);
    out.push(HEX[usize::from(v & 0xf)] as char);
}

/// Whether a decoded path holds `%25` that a second decoding turns into an escape: `%25` and two
/// hex digits, or `%25u` and four (the `%uXXXX` form IIS-style decoders accept).
fn double_encoded(d: &[u8]) -> bool {
    memchr::memmem::find_iter(d, b"%25").any(|i| {
        let rest = &d[i + 3..];
        let hex = |r: &[u8], n: usize| r.len() >= n && r[..n].iter().all(u8::is_ascii_hexdigit);
        hex(rest, 2) || (matches!(rest.first(), Some(b'u' | b'U')) && hex(&rest[1..], 4))
    })
}

/// The escaped bytes of the multibyte character being spelled, checked with the standard
/// library's UTF-8 rules (which refuse overlong forms, surrogates and code points above U+10FFFF).
#[derive(Default)]
struct Utf8Run {
    buf: [u8; 4],
    len: usize,
}

impl Utf8Run {
    /// Adds one escaped byte (>= 0x80).
    fn push(&mut self, v: u8) -> Result<(), PathError> {
        if self.len == 0 && !matches!(v, 0xc2..=0xf4) {
            // A stray continuation byte, or a lead byte that only starts invalid sequences.
            return Err(PathError::InvalidUtf8);
        }
        self.buf[self.len] = v;
        self.len += 1;
        let want = match self.buf[0] {
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            _ => 4,
        };
        if self.len == want {
            std::str::from_utf8(&self.buf[..want]).map_err(|_| PathError::InvalidUtf8)?;
            self.len = 0;
        }
        Ok(())
    }

    /// Something other than an escaped high byte follows: no character may be left half spelled.
    fn end(&mut self) -> Result<(), PathError> {
        if self.len == 0 {
            Ok(())
        } else {
            Err(PathError::InvalidUtf8)
        }
    }
}

fn has_dot_segment(p: &str) -> bool {
    p.split('/').any(|s| s == "." || s == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_resolves_dot_segments_and_merges_slashes() {
        assert_eq!(normalize("/public/../admin").unwrap(), "/admin");
        assert_eq!(normalize("/a/./b/").unwrap(), "/a/b/");
        assert_eq!(normalize("//admin").unwrap(), "/admin");
        assert_eq!(normalize("/../../etc").unwrap(), "/etc");
        assert_eq!(normalize("/a/..").unwrap(), "/");
        assert_eq!(normalize("/").unwrap(), "/");
    }

    #[test]
    fn normalize_decodes_encoded_dots_and_unreserved() {
        assert_eq!(normalize("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(normalize("/public/%2E%2E/admin").unwrap(), "/admin");
        assert_eq!(normalize("/adm%69n").unwrap(), "/admin");
        assert_eq!(normalize("/a%20b").unwrap(), "/a%20b");
    }

    #[test]
    fn normalize_refuses_encoded_slash_backslash_nul_and_dot_params() {
        assert_eq!(normalize("/public%2f..%2fadmin"), Err(PathError::Forbidden));
        assert_eq!(normalize("/public%5C..%5Cadmin"), Err(PathError::Forbidden));
        assert_eq!(normalize("/a%00"), Err(PathError::Forbidden));
        assert_eq!(normalize("/public/..;/admin"), Err(PathError::DotParam));
        assert_eq!(normalize("/;/admin/users"), Err(PathError::ParamSegment));
        assert_eq!(normalize("/app;x/admin"), Err(PathError::ParamSegment));
        assert_eq!(
            normalize("/app/page;jsessionid=1").unwrap(),
            "/app/page;jsessionid=1"
        );
        assert_eq!(normalize("/app;x/").unwrap(), "/app;x/");
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEncoding));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn normalize_refuses_encoded_delimiters() {
        for p in [
            "/admin%3F/x",
            "/admin%3f",
            "/admin%23x",
            "/admin%3Bx/secret",
            "/p/..%3b/a",
        ] {
            assert_eq!(normalize(p), Err(PathError::EncodedDelimiter), "{p}");
        }
    }

    #[test]
    fn normalize_refuses_double_encoding_in_every_spelling() {
        for p in [
            "/public/%252e%252e/admin/",
            "/public/%252E%252e/admin",
            "/a%252fb",
            "/a%25%32%65",
            "/a%25%32e",
            "/a%25u002e",
            "/a%25U002E/x",
            "/%25%25%32%66",
        ] {
            assert_eq!(normalize(p), Err(PathError::DoubleEncoding), "{p}");
        }
    }

    #[test]
    fn normalize_keeps_a_percent_that_cannot_decode_to_an_escape() {
        assert_eq!(normalize("/100%25").unwrap(), "/100%25");
        assert_eq!(normalize("/100%25off").unwrap(), "/100%25off");
        assert_eq!(normalize("/a%25%25").unwrap(), "/a%25%25");
        assert_eq!(normalize("/a%25u12").unwrap(), "/a%25u12");
        assert_eq!(normalize("/a%25/2e").unwrap(), "/a%25/2e");
        assert_eq!(normalize("/a%252").unwrap(), "/a%252");
    }

    #[test]
    fn normalize_refuses_escapes_that_are_not_utf8() {
        for p in [
            "/public/%c0%ae%c0%ae/admin",
            "/%c0%af",
            "/%c1%bf",
            "/%e0%80%ae",
            "/%f0%80%80%ae",
            "/%80",
            "/%bf",
            "/a%c3",
            "/a%c3/b",
            "/a%c3b",
            "/a%c3%2e",
            "/%e2%82",
            "/%ed%a0%80",
            "/%ed%bf%bf",
            "/%f4%90%80%80",
            "/%f5%80%80%80",
            "/%fe",
            "/%ff",
            "/%c3%a9%a9",
        ] {
            assert_eq!(normalize(p), Err(PathError::InvalidUtf8), "{p}");
        }
    }

    #[test]
    fn normalize_keeps_valid_multibyte_escapes_encoded() {
        assert_eq!(normalize("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(normalize("/caf%C3%A9/x").unwrap(), "/caf%C3%A9/x");
        assert_eq!(
            normalize("/%e2%82%ac%f0%9f%98%80").unwrap(),
            "/%E2%82%AC%F0%9F%98%80"
        );
        assert_eq!(
            normalize("/%ed%9f%bf%f4%8f%bf%bf").unwrap(),
            "/%ED%9F%BF%F4%8F%BF%BF"
        );
        assert_eq!(normalize("/%c2%80").unwrap(), "/%C2%80");
    }

    #[test]
    fn normalize_output_is_a_fixed_point() {
        for p in ["/caf%c3%a9", "/100%25", "/a/%2e%2e/b%20c/", "/x%3aq%7e"] {
            let once = normalize(p).unwrap().into_owned();
            assert_eq!(normalize(&once).unwrap(), once, "{p}");
        }
    }

    #[test]
    fn normalize_borrows_plain_paths() {
        assert!(matches!(
            normalize("/api/v1/items").unwrap(),
            Cow::Borrowed(_)
        ));
    }
}
