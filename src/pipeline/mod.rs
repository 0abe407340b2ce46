//! The request pipeline: named phases over one request, each returning "continue" or "respond now".
//!
//! ```text
//! normalise path → strip client headers → gateway endpoints → route → authenticate → authorise
//!   → build upstream request → forward (or builtin) → access log (in server)
//! ```

pub mod forward;
pub mod headers;
pub mod path;
pub mod route;
pub mod tunnel;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::auth::Authenticated;
use crate::body::Body;
use crate::config::UpstreamTarget;
use crate::error::{wants_html, GatewayError};
use crate::state::{Live, Runtime, Shared};
use headers::{remove_cookies, remove_hop_by_hop, set_forwarded, strip_normalized};
use route::Route;

/// What the gateway knows about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The socket peer.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The peer's IP in canonical form (IPv4-mapped IPv6 addresses of a dual-stack listener read
    /// as IPv4), used for every trust and rate-limit decision.
    pub ip: std::net::IpAddr,
    /// The peer address as an `X-Forwarded-For` value, built once per connection.
    pub peer_value: HeaderValue,
    /// The upstream connection this (HTTP/1) client connection last used, reused for its next
    /// request; returned to the pool when the client connection ends.
    pub upstream: std::sync::Mutex<Option<upstream::Sticky>>,
    /// The timer this (HTTP/1) client connection's upstream deadlines reuse.
    pub timer: forward::ConnTimer,
    /// The connection's slot under `max_connections`; an upgraded tunnel takes it over, since
    /// the tunnel outlives the HTTP connection.
    permit: std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

impl ConnInfo {
    /// Describes a new connection.
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        let ip = match peer.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        let peer_value =
            HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value");
        ConnInfo {
            peer,
            tls,
            ip,
            peer_value,
            upstream: std::sync::Mutex::new(None),
            timer: std::sync::Mutex::new(None),
            permit: std::sync::Mutex::new(None),
        }
    }

    /// Attaches the connection's slot under `max_connections`.
    pub fn with_permit(self, permit: tokio::sync::OwnedSemaphorePermit) -> ConnInfo {
        if let Ok(mut p) = self.permit.lock() {
            *p = Some(permit);
        }
        self
    }

    /// Takes the connection's slot (for a tunnel that replaces the connection).
    pub fn take_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.permit.lock().ok().and_then(|mut p| p.take())
    }
}

/// A normalised request path: the request's own path when it was normal already (the common case:
/// a reference count on the received bytes, no copy), else the rewritten one.
#[derive(Debug, Clone)]
pub enum NormPath {
    /// The request's path and query as received; the path part is the normalised path.
    Received(http::uri::PathAndQuery),
    /// A path that normalisation changed.
    Rewritten(String),
}

impl NormPath {
    /// The path.
    pub fn as_str(&self) -> &str {
        match self {
            NormPath::Received(pq) => pq.path(),
            NormPath::Rewritten(s) => s,
        }
    }
}

impl std::ops::Deref for NormPath {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for NormPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for NormPath {
    fn from(s: String) -> NormPath {
        NormPath::Rewritten(s)
    }
}

/// The per-request context the phases share.
#[derive(Debug)]
pub struct RequestCtx<'a> {
    /// The connection.
    pub conn: &'a ConnInfo,
    /// This request's id (sent upstream and in the response).
    pub request_id: &'a HeaderValue,
    /// Normalised path: what routing and rules decide on, and what is forwarded.
    pub path: NormPath,
    /// Whether the peer is a trusted proxy.
    pub trusted: bool,
    /// The client's Upgrade value, if it asked for one.
    pub upgrade: Option<HeaderValue>,
}

/// Why the auth phase refused a request.
#[derive(Debug)]
pub enum Deny {
    /// No valid credential.
    Unauthenticated,
    /// Valid credential, not allowed on this route.
    Forbidden(Box<Authenticated>),
    /// The live-state store cannot vouch for the credential right now (503 + Retry-After).
    Unavailable,
    /// A `deny` rule matched (403 whoever asks).
    Rule,
    /// Logged in and allowed, but below the level the route needs.
    StepUp(crate::policy::StepUp, Box<Authenticated>),
    /// A rule reads the client address and the trusted proxy's `X-Forwarded-For` does not say
    /// one (400: failing open would let a deny rule by network pass).
    BadForwardedFor,
}

/// What to do with a request once the synchronous phases have run (borrowing route labels from
/// the snapshot).
#[derive(Debug)]
pub enum Decision<'a> {
    /// Send it upstream (the request has been rewritten in place).
    Forward {
        /// Index of the upstream pool in the snapshot.
        pool: usize,
        /// The client's Upgrade value, if it asked for one this route tunnels, and what the
        /// tunnel will be re-checked on while it is open.
        upgrade: Option<(HeaderValue, Box<tunnel::TunnelScope>)>,
        /// Upstream response-header deadline.
        timeout: Duration,
        /// Set-Cookie to add (sliding renewal).
        renew: Option<HeaderValue>,
        /// The route (logs, metrics).
        route: &'a Route,
    },
    /// Answer with `builtin:whoami` (the request has been rewritten as for an upstream).
    Whoami {
        /// Set-Cookie to add.
        renew: Option<HeaderValue>,
        /// The route (logs, metrics).
        route: &'a Route,
    },
    /// A gateway endpoint under `/.auth/`.
    Endpoint(NormPath),
    /// Answer now.
    Respond(Response<Body>),
}

/// Phase 1: the normalised path, or 400.
pub fn normalize_phase<B>(req: &Request<B>) -> Result<NormPath, GatewayError> {
    path::normalize(req.uri().path())
        .map(|p| match (p, req.uri().path_and_query()) {
            (std::borrow::Cow::Borrowed(p), Some(pq)) if pq.path() == p => {
                NormPath::Received(pq.clone())
            }
            (p, _) => NormPath::Rewritten(p.into_owned()),
        })
        .map_err(|e| {
            GatewayError::BadRequest(match e {
                path::PathError::NotAbsolute => "request path must start with '/'",
                path::PathError::BadEncoding => "malformed percent-encoding in path",
                path::PathError::Forbidden => "encoded slash, backslash or NUL in path",
                path::PathError::EncodedDelimiter => "encoded ';', '?' or '#' in path",
                path::PathError::DoubleEncoding => {
                    "double percent-encoding in path ('%25' followed by an escape)"
                }
                path::PathError::InvalidUtf8 => "percent-encoded bytes in path are not valid UTF-8",
                path::PathError::DotParam => "dot segment with parameters in path",
                path::PathError::ParamSegment => {
                    "path parameters (';') are only allowed in the last segment"
                }
            })
        })
}

/// Phase 2: removes what a client must never choose: hop-by-hop headers and those named in
/// `Connection` first (so `Connection:` cannot delete what we add later), then every identity
/// header name in every spelling, then forwarding headers from untrusted peers.
/// Returns the client's Upgrade value and whether the peer is a trusted proxy.
pub fn strip_phase(
    rt: &Runtime,
    headers: &mut HeaderMap,
    conn: &ConnInfo,
) -> (Option<HeaderValue>, bool) {
    let upgrade = remove_hop_by_hop(headers);
    strip_normalized(headers, &rt.strip_names);
    let ip = conn.ip;
    let trusted = rt
        .config
        .server
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&ip));
    if !trusted {
        strip_normalized(headers, &rt.forwarding_names);
    }
    (upgrade, trusted)
}

/// Whether the Host header (if any) is a single host name or IP literal with an optional port.
/// Anything else would be routed on one reading and forwarded (as `X-Forwarded-Host`, or `Host`
/// with `preserve_host`) for an app to read another way.
pub fn host_header_ok(headers: &HeaderMap) -> bool {
    let mut all = headers.get_all(header::HOST).iter();
    let Some(h) = all.next() else { return true };
    if all.next().is_some() {
        return false;
    }
    host_value_ok(h.as_bytes())
}

/// Phase 1b: the one rule for which host a request is for. Host (or, for HTTP/2 and absolute-form
/// targets, the target's authority) must be a plain `host[:port]`; HTTP/1.1 requires a Host
/// (RFC 9112 §3.2); and when the request target carries an authority (absolute form, RFC 9112
/// §3.2.2, or HTTP/2's `:authority`) beside a Host header, the two must name the same host — so
/// routing, rules, `X-Forwarded-Host`, the upstream and the logs all read one host.
pub fn host_phase<B>(req: &Request<B>) -> Result<(), GatewayError> {
    let headers = req.headers();
    let mut all = headers.get_all(header::HOST).iter();
    let host = all.next();
    if all.next().is_some() {
        return Err(GatewayError::BadRequest("repeated Host header"));
    }
    if let Some(h) = host {
        if !host_value_ok(h.as_bytes()) {
            return Err(GatewayError::BadRequest("malformed Host header"));
        }
    }
    match (req.uri().authority(), host) {
        (Some(a), h) => {
            if !host_value_ok(a.as_str().as_bytes()) {
                return Err(GatewayError::BadRequest(
                    "malformed host in the request target",
                ));
            }
            let default_port = if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
                443
            } else {
                80
            };
            if h.is_some_and(|h| !same_host(h.as_bytes(), a.as_str().as_bytes(), default_port)) {
                return Err(GatewayError::BadRequest(
                    "the request target and the Host header name different hosts",
                ));
            }
            if h.is_none() && req.version() == http::Version::HTTP_11 {
                return Err(GatewayError::BadRequest(
                    "HTTP/1.1 request without Host header",
                ));
            }
        }
        (None, None) if req.version() == http::Version::HTTP_11 => {
            return Err(GatewayError::BadRequest(
                "HTTP/1.1 request without Host header",
            ));
        }
        (None, _) => {}
    }
    Ok(())
}

/// Whether two `host[:port]` values name the same host: case-insensitively, one trailing dot
/// ignored, a missing port read as the scheme's default (RFC 9112 §3.2.2 lets the target's
/// authority win; it must not win by naming another host).
fn same_host(a: &[u8], b: &[u8], default_port: u16) -> bool {
    fn split(v: &[u8], default_port: u16) -> Option<(&str, u16)> {
        let s = std::str::from_utf8(v).ok()?;
        let (name, port) = match s.strip_prefix('[') {
            Some(rest) => {
                let end = rest.find(']')?;
                (&rest[..end], &rest[end + 1..])
            }
            None => match s.rfind(':') {
                Some(i) => (&s[..i], &s[i..]),
                None => (s, ""),
            },
        };
        let port = match port.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if port.is_empty() => default_port,
            None => return None,
        };
        Some((canonical_host(name), port))
    }
    match (split(a, default_port), split(b, default_port)) {
        (Some((ha, pa)), Some((hb, pb))) => pa == pb && ha.eq_ignore_ascii_case(hb),
        _ => false,
    }
}

/// A host name as routing compares it: one trailing dot (an absolute DNS name) removed, since
/// `admin.example.` is `admin.example` to every resolver and most virtual-host servers.
pub fn canonical_host(h: &str) -> &str {
    h.strip_suffix('.').unwrap_or(h)
}

/// Transfer codings a request may name before `chunked` that this gateway does not decode
/// (answered 501 rather than 400: the framing is valid HTTP, the coding unimplemented).
const KNOWN_TRANSFER_CODINGS: [&[u8]; 5] =
    [b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"];

/// Phase 1a: request framing a strict HTTP/1.1 peer accepts, on every route and endpoint, before
/// anything reaches an upstream. `Transfer-Encoding` must be exactly one `chunked` (one header
/// line, one coding), and only in HTTP/1.1: anything else is framing two
/// parsers can read differently (request smuggling) — 400, or 501 for a well-formed list ending
/// in `chunked` whose other codings the gateway does not implement.
pub fn framing_phase<B>(req: &Request<B>) -> Result<(), GatewayError> {
    let mut te = req.headers().get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = te.next() else {
        return Ok(());
    };
    if te.next().is_some() {
        return Err(GatewayError::BadRequest(
            "repeated Transfer-Encoding header",
        ));
    }
    if req.version() != http::Version::HTTP_11 {
        return Err(GatewayError::BadRequest(
            "Transfer-Encoding is only allowed in HTTP/1.1 requests",
        ));
    }
    // With `Content-Length` beside it, hyper has already dropped `Content-Length` and reads the
    // chunked body alone (RFC 9112 §6.1); the upstream gets that body only.
    let v = first.as_bytes().trim_ascii();
    if v.eq_ignore_ascii_case(b"chunked") {
        return Ok(());
    }
    let codings: Vec<&[u8]> = v.split(|&b| b == b',').map(<[u8]>::trim_ascii).collect();
    let Some((last, rest)) = codings.split_last() else {
        return Err(GatewayError::BadRequest("empty Transfer-Encoding"));
    };
    let chunked_last = last.eq_ignore_ascii_case(b"chunked");
    let rest_known = rest.iter().all(|c| {
        KNOWN_TRANSFER_CODINGS
            .iter()
            .any(|k| c.eq_ignore_ascii_case(k))
    });
    if chunked_last && !rest.is_empty() && rest_known {
        return Err(GatewayError::NotImplemented(
            "transfer codings other than chunked are not implemented",
        ));
    }
    Err(GatewayError::BadRequest(
        "Transfer-Encoding must be exactly \"chunked\"",
    ))
}

/// Whether `b` is a single host name or IP literal with an optional port (no userinfo, path or
/// anything else).
pub fn host_value_ok(b: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = b.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&c| c == b']') else {
            return false;
        };
        let (inside, after) = (&rest[..end], &rest[end + 1..]);
        if inside.is_empty()
            || !inside
                .iter()
                .all(|c| c.is_ascii_hexdigit() || *c == b':' || *c == b'.')
        {
            return false;
        }
        (None, after)
    } else {
        match b.iter().position(|&c| c == b':') {
            Some(i) => (Some(&b[..i]), &b[i..]),
            None => (Some(b), &b[b.len()..]),
        }
    };
    if let Some(host) = host {
        if host.is_empty()
            || host.len() > 253
            || !host
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
        {
            return false;
        }
    }
    match port.strip_prefix(b":") {
        None => port.is_empty(),
        Some(p) => {
            !p.is_empty()
                && p.len() <= 5
                && p.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(p).is_ok_and(|p| p.parse::<u16>().is_ok())
        }
    }
}

/// The request's host name (Host header, or the authority for HTTP/2), port removed.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let h = match req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
    {
        Some(h) => h,
        None => req.uri().authority()?.as_str(),
    };
    Some(canonical_host(route::host_without_port(h)))
}

/// `TRACE`, or IIS's `TRACK`, in any case (methods are case-sensitive, but an upstream may fold
/// them).
fn is_trace(m: &Method) -> bool {
    let m = m.as_str();
    m.len() == 5 && (m.eq_ignore_ascii_case("TRACE") || m.eq_ignore_ascii_case("TRACK"))
}

/// The policy verdict of `route` for a request (see [`crate::policy`]): the client address is
/// resolved through `trusted_proxies` only when a rule reads it, a preflight recognised only
/// when the route bypasses them.
pub fn route_verdict<'r>(
    rt: &Runtime,
    route: &'r Route,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    conn: &ConnInfo,
) -> (crate::policy::DecidedBy, crate::policy::Verdict<'r>) {
    let policy = &route.config.policy;
    if policy.is_simple() {
        return (crate::policy::DecidedBy::Route, policy.route_verdict());
    }
    let client = if policy.uses_network {
        match crate::login::client_ip_strict(rt, headers, conn) {
            Ok(ip) => ip,
            Err(()) => {
                return (
                    crate::policy::DecidedBy::Route,
                    crate::policy::Verdict::Malformed,
                )
            }
        }
    } else {
        conn.ip
    };
    let facts = crate::policy::Facts {
        method,
        path,
        client,
        preflight: policy.preflight_bypass && crate::policy::is_preflight(method, headers),
    };
    policy.decide(&facts)
}

/// Phase 4: authenticate and authorise for `route`. `Ok(None)` when the request passes without
/// a login (a public route or rule, a bypassed preflight).
pub fn auth_phase<B>(
    rt: &Runtime,
    live: &Live,
    req: &Request<B>,
    route: &Route,
    conn: &ConnInfo,
    path: &str,
    request_id: &HeaderValue,
) -> Result<Option<Authenticated>, Deny> {
    use crate::policy::Verdict;
    let (allow_groups, allow_users, level) =
        match route_verdict(rt, route, req.method(), path, req.headers(), conn).1 {
            Verdict::Public => return Ok(None),
            Verdict::Deny => return Err(Deny::Rule),
            Verdict::Malformed => return Err(Deny::BadForwardedFor),
            Verdict::Authenticate {
                allow_groups,
                allow_users,
                level,
            } => (allow_groups, allow_users, level),
        };
    let origin = || crate::telemetry::audit::Origin {
        client: crate::login::client_ip(rt, req.headers(), conn),
        request_id: request_id.to_str().ok().map(Box::from),
        trace_id: crate::telemetry::trace::TraceId::of(req.headers()),
    };
    let a = crate::auth::authenticate_from(rt, live, req.headers(), Some(&origin))
        .map_err(|_| Deny::Unavailable)?
        .ok_or(Deny::Unauthenticated)?;
    if !crate::policy::admits(allow_users, allow_groups, &a.user.username, &a.user.groups) {
        return Err(Deny::Forbidden(Box::new(a)));
    }
    if level != crate::policy::Level::default() {
        let now = crate::auth::session::unix_now();
        if let Some(step) = level.lacks(a.amr(), a.auth_time(), now) {
            return Err(Deny::StepUp(step, Box::new(a)));
        }
    }
    Ok(Some(a))
}

/// The answer to a refused request: 302 to the login page for browser navigation, 401 JSON for
/// everything else; 403 (page or JSON) when logged in but not allowed.
/// A route with `unauthenticated = "401"` never redirects.
pub fn deny_response<B>(
    rt: &Runtime,
    req: &Request<B>,
    path: &str,
    deny: Deny,
    unauthenticated: crate::policy::Unauthenticated,
) -> Response<Body> {
    let html = wants_html(req.headers());
    let nav = (req.method() == Method::GET || req.method() == Method::HEAD)
        && html
        && unauthenticated == crate::policy::Unauthenticated::Redirect;
    let step_up = match deny {
        Deny::Forbidden(_) | Deny::Rule => return GatewayError::Forbidden.into_response(html),
        Deny::Unavailable => return GatewayError::StoreUnavailable.into_response(html),
        Deny::BadForwardedFor => {
            return GatewayError::BadRequest(
                "X-Forwarded-For from the trusted proxy is not an address",
            )
            .into_response(html)
        }
        Deny::StepUp(step, a) => {
            let enrolled = rt
                .credentials
                .as_ref()
                .is_some_and(|c| c.get(&a.user.username).is_some());
            if step == crate::policy::StepUp::Mfa && !enrolled {
                return GatewayError::NoSecondFactor.into_response(html);
            }
            if !nav {
                // Never a redirect that would drop a request's body: the client steps up itself.
                return step_up_json(step);
            }
            Some(step)
        }
        Deny::Unauthenticated => None,
    };
    if !nav {
        return GatewayError::Unauthenticated.into_response(false);
    }
    let mut rd = String::with_capacity(path.len() + 32);
    rd.push_str(path);
    if let Some(q) = req.uri().query() {
        rd.push('?');
        rd.push_str(q);
    }
    let location = format!(
        "{}/.auth/login?rd={}{}",
        rt.config.server.public_origin,
        percent_encoding::utf8_percent_encode(&rd, crate::login::QUERY_VALUE),
        step_up.map_or(String::new(), |s| format!("&step_up={}", s.as_str()))
    );
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `401` telling an API client what to prove: `{"error": "step_up_required", "require": "mfa"}`
/// (the second factor, `POST /.auth/login/otp`) or `"fresh"` (log in again).
pub fn step_up_json(step: crate::policy::StepUp) -> Response<Body> {
    let body = serde_json::json!({
        "error": "step_up_required",
        "require": step.as_str(),
        "message": match step {
            crate::policy::StepUp::Mfa => "this resource needs a second factor: POST the code to /.auth/login/otp",
            crate::policy::StepUp::Fresh => "this resource needs a recent login: sign in again",
        },
    });
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Sets the identity headers (names from the snapshot, values prepared once per user).
/// Callers strip every identity header name first.
pub fn inject_identity(rt: &Runtime, h: &mut HeaderMap, a: &Authenticated) {
    let names = &rt.config.headers;
    let v = &a.user.header_values;
    h.insert(names.user.clone(), v.user.clone());
    if let Some(e) = &v.email {
        h.insert(names.email.clone(), e.clone());
    }
    if let Some(g) = &v.groups {
        h.insert(names.groups.clone(), g.clone());
    }
    if let (Some(n), Some(val)) = (&names.name, &v.name) {
        h.insert(n.clone(), val.clone());
    }
}

/// The provider's access token of an OIDC session (`pass_access_token` routes): opened with the
/// key of the session cookie the request came with; `None` for any other credential, or when
/// the token has expired (the session lives on; the app sees no token).
fn access_token_of(rt: &Runtime, h: &HeaderMap, a: &Authenticated) -> Option<HeaderValue> {
    let crate::auth::Credential::Session(s) = &a.credential else {
        return None;
    };
    let via = s.via.as_ref()?;
    via.access_token.as_ref()?;
    let headers::CookieLookup::One(v) = headers::find_cookie(h, &rt.config.auth.cookie_name) else {
        return None;
    };
    let key = crate::store::session::decode_key(v)?;
    let token = via.access_token_for(&key, crate::auth::session::unix_now())?;
    let mut value = HeaderValue::from_str(&token).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Phase 5: turns the client request into the upstream request: gateway cookies out, forwarding
/// headers set from the connection, identity headers injected (after all stripping), URI and Host.
pub fn build_upstream_phase<B>(
    rt: &Runtime,
    req: &mut Request<B>,
    route: &Route,
    ctx: &RequestCtx<'_>,
    auth: Option<&Authenticated>,
) {
    // Room for what is added below (forwarding, request id, identity): one grow at most.
    req.headers_mut().reserve(8);
    // Read before the session cookie is removed: the token is sealed with its key.
    let access_token = if route.config.pass_access_token {
        auth.and_then(|a| access_token_of(rt, req.headers(), a))
    } else {
        None
    };
    remove_cookies(
        req.headers_mut(),
        &[
            &rt.config.auth.cookie_name,
            &rt.config.auth.csrf_cookie_name,
            &rt.config.auth.step_cookie_name,
            &rt.config.auth.oidc_cookie_name,
        ],
    );
    if rt.bearer_enabled() {
        // The gateway consumed it (or rejected it); upstreams never see gateway tokens.
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    let host_value = req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let proto = if ctx.conn.tls { "https" } else { "http" };
    set_forwarded(
        req.headers_mut(),
        &ctx.conn.peer_value,
        ctx.trusted,
        proto,
        host_value.as_ref(),
    );
    if !ctx.trusted || !req.headers().contains_key(&headers::X_REQUEST_ID) {
        req.headers_mut()
            .insert(headers::X_REQUEST_ID.clone(), ctx.request_id.clone());
    }
    if let Some(a) = auth {
        inject_identity(rt, req.headers_mut(), a);
    }
    if let Some(t) = access_token {
        req.headers_mut()
            .insert(headers::X_FORWARDED_ACCESS_TOKEN.clone(), t);
    }
    match &route.host_header {
        Some(upstream_host) => {
            if route.config.preserve_host {
                // An HTTP/1.0 client may send no Host: the upstream still gets one.
                let h = host_value.unwrap_or_else(|| upstream_host.clone());
                req.headers_mut().insert(header::HOST, h);
            } else {
                req.headers_mut()
                    .insert(header::HOST, upstream_host.clone());
            }
            if let Some(uri) = route.upstream_uri(&ctx.path, req.uri().query(), req.uri()) {
                *req.uri_mut() = uri;
            }
        }
        None => {
            // builtin: keep an origin-form URI with the normalised path.
            let pq = match req.uri().query() {
                Some(q) => format!("{}?{q}", ctx.path),
                None => ctx.path.to_string(),
            };
            if let Ok(u) = http::Uri::try_from(pq) {
                *req.uri_mut() = u;
            }
        }
    }
}

/// What an upgraded tunnel is re-decided on while it is open (see [`tunnel`]).
fn tunnel_scope<B>(
    rt: &Runtime,
    req: &Request<B>,
    conn: &ConnInfo,
    path: &NormPath,
    auth: Option<&Authenticated>,
) -> Box<tunnel::TunnelScope> {
    use crate::auth::Credential;
    use tunnel::TunnelCredential;
    let credential = match auth.map(|a| &a.credential) {
        None => TunnelCredential::Anonymous,
        Some(Credential::Jwt(vt)) => {
            let cookie = matches!(
                headers::find_cookie(req.headers(), &rt.config.auth.cookie_name),
                headers::CookieLookup::One(_)
            );
            // The same precedence as authentication: the cookie, else the bearer token.
            if cookie {
                TunnelCredential::Jwt(vt.clone())
            } else {
                TunnelCredential::Bearer(vt.clone())
            }
        }
        Some(Credential::Session(_)) => {
            match headers::find_cookie(req.headers(), &rt.config.auth.cookie_name) {
                headers::CookieLookup::One(v) => TunnelCredential::Session(v.to_owned()),
                // Authenticated by exactly one cookie a moment ago; fail closed regardless.
                _ => TunnelCredential::Anonymous,
            }
        }
    };
    Box::new(tunnel::TunnelScope {
        credential,
        host: request_host(req).map(str::to_owned),
        path: path.to_string(),
        method: req.method().clone(),
        client: crate::login::client_ip(rt, req.headers(), conn),
    })
}

/// Runs every synchronous phase. Generic over the body so benches can drive it without sockets.
pub fn decide<'a, B>(
    rt: &'a Runtime,
    live: &Live,
    req: &mut Request<B>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
) -> Decision<'a> {
    decide_noting(rt, live, req, conn, request_id, &mut None)
}

/// [`decide`], noting in `matched` the route the request matched (for metrics and logs).
pub fn decide_noting<'a, B>(
    rt: &'a Runtime,
    live: &Live,
    req: &mut Request<B>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    matched: &mut Option<&'a Route>,
) -> Decision<'a> {
    let path = match framing_phase(req)
        .and_then(|()| host_phase(req))
        .and_then(|()| normalize_phase(req))
    {
        Ok(p) => p,
        Err(e) => return Decision::Respond(e.into_response(wants_html(req.headers()))),
    };
    let (upgrade, trusted) = strip_phase(rt, req.headers_mut(), conn);
    if path.as_str() == "/.auth" || path.starts_with("/.auth/") {
        return Decision::Endpoint(path);
    }
    let ctx = RequestCtx {
        conn,
        request_id,
        path,
        trusted,
        upgrade,
    };
    let Some(route) = rt.router.find(request_host(req), &ctx.path) else {
        return Decision::Respond(GatewayError::NoRoute.into_response(wants_html(req.headers())));
    };
    *matched = Some(route);
    // TRACE echoes the request, cookies and identity headers included, into a response a page
    // script may read (cross-site tracing); CONNECT asks an origin server to be a forward proxy.
    if (!route.config.allow_trace && is_trace(req.method())) || req.method() == Method::CONNECT {
        return Decision::Respond(
            GatewayError::MethodNotAllowed.into_response(wants_html(req.headers())),
        );
    }
    let mut ctx = ctx;
    // Upgrade means nothing in HTTP/1.0 (RFC 9110 §7.8), and only listed protocols are tunnelled.
    let http11 = req.version() == http::Version::HTTP_11;
    ctx.upgrade = ctx.upgrade.filter(|u| http11 && route.allows_upgrade(u));
    let auth = match auth_phase(rt, live, req, route, conn, &ctx.path, request_id) {
        Ok(a) => a,
        Err(deny) => {
            if !matches!(deny, Deny::Unavailable) {
                route.metrics.denied();
            }
            match &deny {
                Deny::Forbidden(a) => audit_denied(rt, req, conn, request_id, route, Some(a)),
                Deny::Rule => audit_denied(rt, req, conn, request_id, route, None),
                _ => {}
            }
            let unauth = route.config.policy.unauthenticated;
            return Decision::Respond(deny_response(rt, req, &ctx.path, deny, unauth));
        }
    };
    // Before the gateway's cookie is removed: a tunnel keeps what it was opened with.
    let tunnel = ctx
        .upgrade
        .is_some()
        .then(|| tunnel_scope(rt, req, conn, &ctx.path, auth.as_ref()));
    build_upstream_phase(rt, req, route, &ctx, auth.as_ref());
    let renew = auth.and_then(|a| a.renew);
    match route.config.upstream {
        UpstreamTarget::Whoami => Decision::Whoami { renew, route },
        UpstreamTarget::Http { .. } => Decision::Forward {
            pool: route.pool,
            upgrade: ctx.upgrade.zip(tunnel),
            timeout: route.config.timeout,
            renew,
            route,
        },
    }
}

/// Handles one request end to end.
pub async fn handle<'r>(
    shared: Arc<Shared>,
    rt: &'r Runtime,
    mut req: Request<Incoming>,
    conn: &ConnInfo,
    request_id: HeaderValue,
    served: &mut Served<'r>,
) -> Response<Body> {
    let html = wants_html(req.headers());
    if shared.live.remote && rt.config.auth.mode == crate::config::AuthMode::Session {
        // A session the remote store's cache does not hold (or cannot vouch for) is read now,
        // so that the phases below stay synchronous.
        if let headers::CookieLookup::One(v) =
            headers::find_cookie(req.headers(), &rt.config.auth.cookie_name)
        {
            if shared.live.sessions.needs_fetch(v) {
                shared.live.sessions.fetch(v).await;
            }
        }
    }
    match decide_noting(
        rt,
        &shared.live,
        &mut req,
        conn,
        &request_id,
        &mut served.route,
    ) {
        Decision::Respond(r) => r,
        Decision::Endpoint(path) => {
            served.endpoint = true;
            // Boxed: the login endpoints' future is large and would otherwise be part of (and
            // copied with) every proxied request's future.
            match Box::pin(crate::login::endpoint(
                &shared,
                rt,
                req,
                conn,
                &path,
                &request_id,
            ))
            .await
            {
                Ok(r) => r,
                Err(e) => error_response(e, html),
            }
        }
        Decision::Whoami { renew, .. } => {
            let mut r = crate::builtin::whoami::respond(&req, conn.peer);
            finish(&mut r, renew);
            r
        }
        Decision::Forward {
            pool,
            upgrade,
            timeout,
            renew,
            route,
        } => {
            let sent = std::time::Instant::now();
            let mut r =
                match forward::forward(&shared, conn, &rt.upstreams[pool], req, upgrade, timeout)
                    .await
                {
                    Ok(r) => {
                        route.metrics.upstream_ok(sent.elapsed());
                        r
                    }
                    Err(e) => {
                        route.metrics.upstream_error(upstream_error_kind(&e));
                        tracing::warn!(route = %route.label, error = %e, "upstream failure");
                        error_response(e, html)
                    }
                };
            finish(&mut r, renew);
            r
        }
    }
}

/// What [`handle`] found out about a request besides its response (for metrics and logs).
#[derive(Debug, Default)]
pub struct Served<'r> {
    /// The route it matched, if any.
    pub route: Option<&'r Route>,
    /// Whether a gateway endpoint (`/.auth/…`) answered it.
    pub endpoint: bool,
}

impl Served<'_> {
    /// The metric series the request counts in.
    pub fn metrics<'m>(
        &'m self,
        m: &'m crate::telemetry::metrics::Metrics,
    ) -> &'m crate::telemetry::metrics::RouteMetrics {
        match self.route {
            _ if self.endpoint => m.gateway_route(),
            Some(r) => &r.metrics,
            None => m.no_route(),
        }
    }
}

/// Sorts an upstream failure for the metrics, by the error's variant (`upstream.rs` sorts them
/// when they happen).
fn upstream_error_kind(e: &GatewayError) -> crate::telemetry::metrics::UpstreamErrorKind {
    use crate::telemetry::metrics::UpstreamErrorKind as K;
    match e {
        GatewayError::UpstreamTimeout => K::Timeout,
        GatewayError::UpstreamTls(_) => K::Tls,
        GatewayError::UpstreamConnect(_) => K::Connect,
        GatewayError::UpstreamReset(_) => K::Reset,
        _ => K::Other,
    }
}

/// The audit event of a request refused a route: an authenticated user not allowed
/// (`not_allowed`), or anyone refused by a deny rule (`deny_rule`, `a` is `None`).
fn audit_denied<B>(
    rt: &Runtime,
    req: &Request<B>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    route: &Route,
    a: Option<&Authenticated>,
) {
    use crate::telemetry::audit::{AuditEvent, AuditKind, AuditUser};
    let audit = &rt.telemetry.audit;
    if !audit.enabled() {
        return;
    }
    let mut e = AuditEvent::new(AuditKind::AccessDenied, "failure");
    e.reason = Some(if a.is_some() {
        "not_allowed"
    } else {
        "deny_rule"
    });
    if let Some(a) = a {
        e.user = Some(AuditUser::Known(a.user.username.to_string()));
        e.credential = crate::auth::credential_hash(rt, req.headers(), &a.credential);
    }
    e.client = Some(crate::login::client_ip(rt, req.headers(), conn));
    e.route = Some(route.metrics.name.clone());
    e.request_id = request_id.to_str().ok().map(Box::from);
    e.trace_id = crate::telemetry::trace::TraceId::of(req.headers());
    audit.emit(e);
}

fn finish(r: &mut Response<Body>, renew: Option<HeaderValue>) {
    if let Some(c) = renew {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
}

/// The one place an error becomes a response; server faults are logged here once.
pub fn error_response(e: GatewayError, html: bool) -> Response<Body> {
    if e.is_server_fault()
        && !matches!(
            e,
            GatewayError::UpstreamConnect(_)
                | GatewayError::Upstream(_)
                | GatewayError::UpstreamTls(_)
                | GatewayError::UpstreamReset(_)
                | GatewayError::UpstreamTimeout
        )
    {
        tracing::error!(error = %e, "request failed");
    }
    e.into_response(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(v: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for x in v {
            h.append(header::HOST, HeaderValue::from_static(x));
        }
        h
    }

    #[test]
    fn host_header_ok_accepts_names_ips_ports_and_refuses_the_rest() {
        for ok in [
            "a.example.com",
            "a.example.com:8080",
            "127.0.0.1:1",
            "[::1]:443",
            "[::1]",
            "x_y.internal",
        ] {
            assert!(host_header_ok(&hosts(&[ok])), "{ok}");
        }
        for bad in [
            "evil.com?.example.com",
            "a.com:",
            "a.com:99999x",
            "a b",
            "",
            "a.com/x",
            "[::1",
            "[zz]:1",
            "a.com@b.com",
            "a.com:65536",
            "a.com:99999",
        ] {
            assert!(!host_header_ok(&hosts(&[bad])), "{bad}");
        }
        assert!(
            !host_header_ok(&hosts(&["a.com", "b.com"])),
            "two Host headers"
        );
        assert!(
            host_header_ok(&HeaderMap::new()),
            "absent (HTTP/1.0, HTTP/2)"
        );
    }
}
