//! Request path normalisation: the path routing and access rules decide on is the path forwarded.
//!
//! Percent-encoded unreserved characters are decoded (RFC 3986 §6.2.2.2), dot segments resolved,
//! repeated slashes merged. Encoded slashes, backslashes and NUL are refused: an upstream might
//! decode them into a path the rules never saw.

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
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
                let v = u8::from_str_radix(
                    std::str::from_utf8(hex).map_err(|_| PathError::BadEncoding)?,
                    16,
                )
                .map_err(|_| PathError::BadEncoding)?;
                if v == b'/' || v == b'\\' || v == 0 {
                    return Err(PathError::Forbidden);
                }
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(v as char);
                } else {
                    decoded.push('%');
                    decoded.push_str(&format!("{v:02X}"));
                }
                i += 3;
            }
            b'\\' | 0 => return Err(PathError::Forbidden),
            c if c.is_ascii_control() => return Err(PathError::Forbidden),
            c => {
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
    fn normalize_borrows_plain_paths() {
        assert!(matches!(
            normalize("/api/v1/items").unwrap(),
            Cow::Borrowed(_)
        ));
    }
}
