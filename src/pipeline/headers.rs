//! Header rules: hop-by-hop removal, identity-header stripping (normalised names), X-Forwarded-*.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy ones proxies still see).
/// `HTTP2-Settings` belongs to the `h2c` upgrade, which is never tunnelled (RFC 9113 §3.1 removed
/// it; a pre-9113 upstream could still switch a forwarded connection to HTTP/2 with it).
const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("http2-settings"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The provider's access token on `pass_access_token` routes.
pub static X_FORWARDED_ACCESS_TOKEN: HeaderName =
    HeaderName::from_static("x-forwarded-access-token");

/// Forwarding headers replaced unless the peer is a trusted proxy (normalised names).
pub const FORWARDING_HEADERS: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
    // What a forward-auth proxy says the request was (`/.auth/verify` reads them from trusted
    // peers only, with `server.forward_auth_policy`).
    "x-forwarded-method",
    "x-forwarded-uri",
];

/// Headers no upstream ever gets from a client, trusted proxy or not: apps and frameworks that
/// honour them route or dispatch on a path or method other than the one the rules decided on
/// (IIS/Symfony `X-Original-URL` and `X-Rewrite-URL`, method overrides turning a POST into a
/// DELETE past a `methods` rule).
pub const ALWAYS_STRIPPED: &[&str] = &[
    "x-original-url",
    "x-original-uri",
    "x-original-method",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    // The provider's access token (`pass_access_token`): only ever set by the gateway.
    "x-forwarded-access-token",
];

/// Whether a configured identity header name would collide with a header the gateway manages.
pub fn is_reserved_header(n: &HeaderName) -> bool {
    HOP_BY_HOP.contains(n)
        || [
            header::HOST,
            header::COOKIE,
            header::SET_COOKIE,
            header::CONTENT_LENGTH,
            header::AUTHORIZATION,
        ]
        .contains(n)
        || FORWARDING_HEADERS
            .iter()
            .any(|f| eq_normalized(n.as_str().as_bytes(), f.as_bytes()))
}

/// Compares a (lowercase) header name with a lowercase target, reading `_` and `.` as `-`, the way
/// CGI-style servers fold them; so `x_forwarded_user` equals `x-forwarded-user`.
#[inline]
pub fn eq_normalized(name: &[u8], target: &[u8]) -> bool {
    name.len() == target.len()
        && name.iter().zip(target).all(|(&a, &b)| {
            let a = match a {
                b'_' | b'.' => b'-',
                c => c.to_ascii_lowercase(),
            };
            a == b
        })
}

/// Removes hop-by-hop headers and every header named in `Connection`. Returns whether the request
/// asked for a protocol upgrade (and the `Upgrade` value to pass on), because upgrades need the
/// `Upgrade` header re-added on the upstream side. Allocates nothing: it runs on every request and
/// every response (`Connection: keep-alive` is in most of both).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let mut upgrade = None;
    // Most `Connection` values only say `keep-alive`, which names no header beyond the fixed list
    // below: then the values need neither copying nor a removal pass of their own.
    let names_more = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| !is_fixed_connection_token(t.trim_ascii()))
    });
    if names_more {
        // The values are reference-counted slices of the received head: holding them while the
        // named headers are removed costs no copy. More than four `Connection` lines is rare.
        let mut first: [Option<HeaderValue>; 4] = Default::default();
        let mut more = Vec::new();
        for (i, v) in headers.get_all(header::CONNECTION).iter().enumerate() {
            match first.get_mut(i) {
                Some(slot) => *slot = Some(v.clone()),
                None => more.push(v.clone()),
            }
        }
        for v in first.iter().flatten().chain(&more) {
            for token in v.as_bytes().split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"upgrade") {
                    upgrade = headers.get(header::UPGRADE).cloned();
                } else if let Ok(name) = std::str::from_utf8(t) {
                    // A lookup by `&str` parses the name on the stack; an invalid one matches
                    // nothing.
                    headers.remove(name);
                }
            }
        }
    }
    // One pass over the (few) names present instead of a hash lookup per hop-by-hop name.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    upgrade
}

/// A `Connection` token that needs no work of its own: empty, or a name in [`HOP_BY_HOP`] other
/// than `upgrade` (removed anyway; an upgrade must be reported).
fn is_fixed_connection_token(t: &[u8]) -> bool {
    t.is_empty()
        || HOP_BY_HOP
            .iter()
            .any(|h| h != header::UPGRADE && t.eq_ignore_ascii_case(h.as_str().as_bytes()))
}

/// A set of normalised header names (lowercase, `-` for `_` and `.`), bucketed by length so a
/// request header is only compared with the names of its own length.
#[derive(Debug, Clone, Default)]
pub struct NameSet {
    names: Vec<String>,
    by_len: Vec<Vec<Box<[u8]>>>,
}

impl NameSet {
    /// The set of `names` (already normalised).
    pub fn new<I: IntoIterator<Item = String>>(names: I) -> NameSet {
        let mut set = NameSet::default();
        for n in names {
            if set.names.contains(&n) {
                continue;
            }
            if set.by_len.len() <= n.len() {
                set.by_len.resize_with(n.len() + 1, Vec::new);
            }
            set.by_len[n.len()].push(n.as_bytes().into());
            set.names.push(n);
        }
        set
    }

    /// The names, in insertion order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether the (lowercase) header name `name` normalises to a member.
    #[inline]
    pub fn matches(&self, name: &[u8]) -> bool {
        self.by_len
            .get(name.len())
            .is_some_and(|bucket| bucket.iter().any(|n| eq_normalized(name, n)))
    }
}

/// Removes from `headers` every header whose normalised name is in `names`.
/// The common case (nothing to strip) allocates nothing.
pub fn strip_normalized(headers: &mut HeaderMap, names: &NameSet) {
    let mut doomed: Option<Vec<HeaderName>> = None;
    for name in headers.keys() {
        if names.matches(name.as_str().as_bytes()) {
            doomed.get_or_insert_with(Vec::new).push(name.clone());
        }
    }
    if let Some(d) = doomed {
        for n in d {
            headers.remove(n);
        }
    }
}

/// Appends the client address to `X-Forwarded-For` (trusted peer) or replaces it (anyone else).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    trusted: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    if trusted {
        // Several header lines form one list (RFC 9110 §5.3): keep every hop, in order.
        let prev: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        let value = if prev.is_empty() {
            peer.clone()
        } else {
            let joined = format!("{}, {}", prev.join(", "), peer.to_str().unwrap_or_default());
            HeaderValue::from_str(&joined).unwrap_or_else(|_| peer.clone())
        };
        headers.insert(X_FORWARDED_FOR.clone(), value);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            if let Some(h) = host {
                headers.insert(X_FORWARDED_HOST.clone(), h.clone());
            }
        }
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), peer.clone());
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        match host {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST.clone(), h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// Removes the cookies named in `names` from the `Cookie` header(s), keeping the others byte for
/// byte (several `Cookie` lines are merged into one, as RFC 6265 §5.4 requires of clients anyway).
/// The common case — none of them present — allocates nothing.
pub fn remove_cookies(headers: &mut HeaderMap, names: &[&str]) {
    // Prefilter: a name that occurs nowhere in the bytes cannot be a cookie name (occurring is
    // not enough: it may be part of another cookie's name or value, so the pairs decide).
    let mentioned = headers.get_all(header::COOKIE).iter().any(|v| {
        names
            .iter()
            .any(|n| memchr::memmem::find(v.as_bytes(), n.as_bytes()).is_some())
    });
    if !mentioned {
        return;
    }
    let mut removed = false;
    let mut out: Vec<u8> = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        for (n, pair) in cookie_pairs(v.as_bytes()) {
            if names.iter().any(|x| x.as_bytes() == n) {
                removed = true;
                continue;
            }
            if out.is_empty() {
                out.reserve(v.len());
            } else {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(pair);
        }
    }
    if !removed {
        return;
    }
    headers.remove(header::COOKIE);
    if !out.is_empty() {
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(out)) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// Iterates `(name, whole pair)` over a Cookie header value, skipping empty pieces.
fn cookie_pairs(v: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    // memchr finds the separators a word at a time: a JWT cookie is ~600 bytes.
    let mut rest = Some(v);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(b';', r) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
    .filter_map(|p| {
        let p = p.trim_ascii();
        if p.is_empty() {
            return None;
        }
        let name = match p.iter().position(|&b| b == b'=') {
            Some(i) => p[..i].trim_ascii(),
            None => p,
        };
        Some((name, p))
    })
}

/// Outcome of reading one cookie.
#[derive(Debug, PartialEq, Eq)]
pub enum CookieLookup<'a> {
    /// Not present.
    Absent,
    /// Present exactly once.
    One(&'a str),
    /// Present more than once: refused, since a client (or a sibling subdomain) may have planted one.
    Ambiguous,
}

/// Finds cookie `name` across all `Cookie` headers with a cheap scan (no allocation).
pub fn find_cookie<'a>(headers: &'a HeaderMap, name: &str) -> CookieLookup<'a> {
    let mut found = None;
    for v in headers.get_all(header::COOKIE) {
        let Ok(s) = std::str::from_utf8(v.as_bytes()) else {
            continue;
        };
        for part in s.split(';') {
            let p = part.trim_start_matches(' ');
            if let Some(rest) = p.strip_prefix(name) {
                if let Some(val) = rest.strip_prefix('=') {
                    if found.is_some() {
                        return CookieLookup::Ambiguous;
                    }
                    found = Some(val.trim_end_matches(' '));
                }
            }
        }
    }
    match found {
        Some(v) => CookieLookup::One(v),
        None => CookieLookup::Absent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq_normalized_folds_underscore_dot_and_case() {
        assert!(eq_normalized(b"x_forwarded_user", b"x-forwarded-user"));
        assert!(eq_normalized(b"x.forwarded.user", b"x-forwarded-user"));
        assert!(!eq_normalized(b"x-forwarded-users", b"x-forwarded-user"));
    }

    #[test]
    fn strip_normalized_removes_every_spelling_of_member_names_only() {
        let set = NameSet::new(
            ["x-forwarded-user", "remote-user", "x-forwarded-user", "x"]
                .iter()
                .map(|s| s.to_string()),
        );
        assert_eq!(set.names(), ["x-forwarded-user", "remote-user", "x"]);
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("x-forwarded-user", "a"),
            ("x_forwarded_user", "b"),
            ("x.forwarded.user", "c"),
            ("remote_user", "d"),
            ("x", "e"),
            ("x-forwarded-users", "keep"),
            ("y", "keep"),
            ("a-very-long-header-name-longer-than-every-member", "keep"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        strip_normalized(&mut h, &set);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "a-very-long-header-name-longer-than-every-member",
                "x-forwarded-users",
                "y"
            ]
        );
    }

    #[test]
    fn remove_hop_by_hop_removes_connection_named_headers_and_reports_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret, Upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        let up = remove_hop_by_hop(&mut h);
        assert_eq!(up.unwrap(), "websocket");
        assert!(h.get("x-secret").is_none() && h.get("te").is_none() && h.get("upgrade").is_none());
        assert_eq!(h.get("x-keep").unwrap(), "1");
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn remove_hop_by_hop_without_named_headers_still_removes_the_fixed_list() {
        // Only tokens from the fixed list: the short path.
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("Keep-Alive, te,"));
        h.append("connection", HeaderValue::from_static("keep-alive"));
        for (n, v) in [
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-keep", "1"),
        ] {
            h.insert(n, HeaderValue::from_static(v));
        }
        assert!(remove_hop_by_hop(&mut h).is_none(), "upgrade not asked for");
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-keep"]);
        // `close` is a connection option that may also name a header: that header goes too.
        let mut h = HeaderMap::new();
        for (n, v) in [("connection", "close"), ("close", "1"), ("x-keep", "1")] {
            h.insert(n, HeaderValue::from_static(v));
        }
        assert!(remove_hop_by_hop(&mut h).is_none());
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-keep"]);
    }

    #[test]
    fn remove_hop_by_hop_reads_every_connection_line_in_any_case() {
        let mut h = HeaderMap::new();
        // Six `Connection` lines (more than the four held on the stack), odd spacing and case,
        // an empty token, and a token that is no header name at all.
        for v in [
            "X-A",
            " x-b ,",
            "X-C,,",
            "bad name",
            "x-d",
            "KEEP-ALIVE , x-e",
        ] {
            h.append("connection", HeaderValue::from_static(v));
        }
        for n in ["x-a", "x-b", "x-c", "x-d", "x-e", "keep-alive", "x-f"] {
            h.insert(n, HeaderValue::from_static("1"));
        }
        assert!(remove_hop_by_hop(&mut h).is_none(), "no upgrade asked");
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-f"]);
    }

    #[test]
    fn find_cookie_rejects_duplicates_and_ignores_prefix_names() {
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            HeaderValue::from_static("authgate_csrf=x; authgatex=1; authgate=abc"),
        );
        assert_eq!(find_cookie(&h, "authgate"), CookieLookup::One("abc"));
        h.append("cookie", HeaderValue::from_static("authgate=evil"));
        assert_eq!(find_cookie(&h, "authgate"), CookieLookup::Ambiguous);
        assert_eq!(find_cookie(&h, "nope"), CookieLookup::Absent);
    }

    #[test]
    fn remove_cookies_keeps_other_cookies_and_drops_empty_header() {
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            HeaderValue::from_static("a=1; authgate=secret;b=2"),
        );
        h.append("cookie", HeaderValue::from_static("authgate_csrf=t; c=3"));
        remove_cookies(&mut h, &["authgate", "authgate_csrf"]);
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=2; c=3");
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("authgate=x"));
        remove_cookies(&mut h, &["authgate"]);
        assert!(h.get("cookie").is_none());
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            HeaderValue::from_static("xauthgate=1; authgatex=2"),
        );
        remove_cookies(&mut h, &["authgate"]);
        assert_eq!(h.get("cookie").unwrap(), "xauthgate=1; authgatex=2");
        // The name inside another cookie's value passes the prefilter but is not removed; two
        // lines without a gateway cookie stay two lines, untouched.
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            HeaderValue::from_static("x=authgate;y=authgate=1"),
        );
        h.append("cookie", HeaderValue::from_static("z=3"));
        remove_cookies(&mut h, &["authgate"]);
        let lines: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(lines, ["x=authgate;y=authgate=1", "z=3"]);
        // ...and removed where it is also a real cookie.
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            HeaderValue::from_static("x=authgate; authgate=s; y=1"),
        );
        remove_cookies(&mut h, &["authgate"]);
        assert_eq!(h.get("cookie").unwrap(), "x=authgate; y=1");
    }
}
