//! Gateway endpoints under `/.auth/`: login, logout, me, verify, jwks, health. One login flow for
//! both authentication modes; only the credential minted at the end differs.

mod enrol;
pub mod hashing;
pub mod oidc;
pub mod page;
mod second;

/// Login-failure counters are live state: they live in [`crate::store`].
pub use crate::store::limit;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::auth::session::unix_now;
use crate::auth::{authenticate_from, cookies, Authenticated, Credential};
use crate::body::Body;
use crate::error::{wants_html, GatewayError};
use crate::pipeline::headers::{find_cookie, CookieLookup, X_FORWARDED_FOR};
use crate::pipeline::ConnInfo;
use crate::state::{Runtime, Shared};
use crate::telemetry::audit::{AuditEvent, AuditKind, AuditUser, Origin};
use crate::telemetry::metrics::{LoginMethod, LoginResult};
use crate::telemetry::trace::TraceId;

/// Characters escaped in a query value (everything but unreserved and '/').
pub const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');
/// Login and logout bodies above this are refused before any parsing or hashing.
pub const MAX_LOGIN_BODY: usize = 16 * 1024;
/// How long a login waits for a hashing slot before being told to retry.
const HASH_QUEUE_WAIT: Duration = Duration::from_secs(10);
/// Same message whether the user exists or not.
const BAD_CREDENTIALS: &str = "Invalid username or password.";
/// Longest `rd` kept.
const MAX_RD: usize = 2048;

/// Handles `/.auth/*`.
pub async fn endpoint(
    shared: &Arc<Shared>,
    rt: &Runtime,
    req: Request<Incoming>,
    conn: &ConnInfo,
    path: &str,
    request_id: &HeaderValue,
) -> Result<Response<Body>, GatewayError> {
    let m = req.method().clone();
    let origin = || Origin {
        client: client_ip(rt, req.headers(), conn),
        request_id: request_id.to_str().ok().map(Box::from),
        trace_id: TraceId::of(req.headers()),
    };
    match path {
        "/.auth/health" => get_only(&m).map(|_| text(StatusCode::OK, "ok")),
        "/.auth/ready" => get_only(&m).map(|_| {
            if shared.ready.load(Ordering::Acquire)
                && shared.live.sessions.is_available()
                && shared.live.revocations.vouched()
            {
                text(StatusCode::OK, "ready")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready")
            }
        }),
        "/.auth/login" => match m {
            Method::GET | Method::HEAD => Ok(login_get(shared, rt, &req)),
            // SSO only: no password is checked at all, whoever asks.
            Method::POST if !rt.config.auth.password_login => Err(GatewayError::NotFound),
            Method::POST => {
                let o = origin();
                let start = std::time::Instant::now();
                let r = login_post(shared, rt, req, &o).await;
                rt.telemetry.metrics.login(
                    LoginMethod::Password,
                    login_result(&r),
                    start.elapsed(),
                );
                if let Err(GatewayError::CrossSite | GatewayError::CsrfToken) = &r {
                    let mut e = AuditEvent::from(AuditKind::Login, "failure", &o);
                    e.reason = Some("csrf");
                    rt.telemetry.audit.emit(e);
                }
                r
            }
            _ => Err(GatewayError::MethodNotAllowed),
        },
        "/.auth/login/otp" => match m {
            Method::POST => {
                let o = origin();
                let start = std::time::Instant::now();
                let r = second::code_post(shared, rt, req, &o).await;
                rt.telemetry
                    .metrics
                    .login(LoginMethod::Otp, login_result(&r), start.elapsed());
                r
            }
            _ => Err(GatewayError::MethodNotAllowed),
        },
        "/.auth/totp/enroll" => match m {
            Method::GET | Method::HEAD => Ok(enrol::enrol_get(rt, &req)),
            Method::POST => {
                let o = origin();
                enrol::enrol_post(shared, rt, req, &o).await
            }
            _ => Err(GatewayError::MethodNotAllowed),
        },
        "/.auth/logout" => match m {
            Method::GET | Method::HEAD => Ok(logout_get(rt, &req)),
            Method::POST => {
                let o = origin();
                logout_post(shared, rt, req, &o).await
            }
            _ => Err(GatewayError::MethodNotAllowed),
        },
        "/.auth/me" => {
            get_only(&m)?;
            match authenticate_from(rt, &shared.live, req.headers(), Some(&origin)) {
                Ok(Some(a)) => Ok(me(rt, &a)),
                Ok(None) => Err(GatewayError::Unauthenticated),
                Err(_) => Err(GatewayError::StoreUnavailable),
            }
        }
        "/.auth/verify" => verify(shared, rt, &req, conn, &origin()),
        p if p.starts_with("/.auth/oidc/") => {
            let rest = &p["/.auth/oidc/".len()..];
            let Some((id, action)) = rest.split_once('/') else {
                return Err(GatewayError::NotFound);
            };
            match (action, &m) {
                // GET only: a HEAD (a link checker, a prefetch) must not store a pending login.
                ("start", &Method::GET) => {
                    oidc::start(shared, rt, &req, id, client_ip(rt, req.headers(), conn)).await
                }
                ("callback", &Method::GET) => {
                    let o = origin();
                    let start = std::time::Instant::now();
                    let r = oidc::callback(shared, rt, &req, id, &o).await;
                    let result = match &r {
                        Ok(resp) if resp.status().is_redirection() => LoginResult::Ok,
                        Ok(resp) if resp.status().is_server_error() => {
                            LoginResult::ProviderUnavailable
                        }
                        Ok(_) => LoginResult::ProviderRefused,
                        Err(_) => login_result(&r),
                    };
                    rt.telemetry
                        .metrics
                        .login(LoginMethod::Oidc, result, start.elapsed());
                    r
                }
                ("start" | "callback", _) => Err(GatewayError::MethodNotAllowed),
                _ => Err(GatewayError::NotFound),
            }
        }
        "/.auth/jwks.json" => {
            get_only(&m)?;
            match rt.jwt.as_ref().and_then(|k| k.jwks_json()) {
                Some(j) => Ok(bytes_response(
                    StatusCode::OK,
                    "application/json",
                    j.clone(),
                )),
                None => Err(GatewayError::NotFound),
            }
        }
        _ => Err(GatewayError::NotFound),
    }
}

fn get_only(m: &Method) -> Result<(), GatewayError> {
    if m == Method::GET || m == Method::HEAD {
        Ok(())
    } else {
        Err(GatewayError::MethodNotAllowed)
    }
}

fn bytes_response(status: StatusCode, ctype: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(status: StatusCode, s: &'static str) -> Response<Body> {
    bytes_response(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(s.as_bytes()),
    )
}

fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut r = bytes_response(status, "text/html; charset=utf-8", Bytes::from(page));
    let h = r.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    bytes_response(status, "application/json", Bytes::from(v.to_string()))
}

/// Returns `rd` if it is a same-origin relative path, else `/`. Checks the raw value and its
/// percent-decoded forms, since browsers and apps decode at different layers.
pub fn safe_rd(rd: &str, public_origin: &str) -> String {
    fn bad(s: &str) -> bool {
        !s.starts_with('/')
            || s.starts_with("//")
            || s.starts_with("/\\")
            || s.contains('\\')
            || s.chars().any(|c| c.is_control())
            || s.starts_with("/.auth")
    }
    if rd.len() > MAX_RD || bad(rd) {
        return "/".into();
    }
    let mut cur = rd.to_string();
    for _ in 0..3 {
        // Escapes that are not UTF-8 (overlong `%c0%af` for `/`) are refused, not replaced.
        let Ok(dec) = percent_encoding::percent_decode_str(&cur).decode_utf8() else {
            return "/".into();
        };
        let dec = dec.into_owned();
        if bad(&dec) {
            return "/".into();
        }
        if dec == cur {
            break;
        }
        cur = dec;
    }
    let Ok(base) = url::Url::parse(public_origin) else {
        return "/".into();
    };
    match base.join(rd) {
        Ok(u) if u.origin() == base.origin() => rd.to_string(),
        _ => "/".into(),
    }
}

fn query_param(req_query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req_query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The CSRF token from the double-submit cookie, if well formed.
fn csrf_cookie_value<'a>(rt: &Runtime, h: &'a HeaderMap) -> Option<&'a str> {
    match find_cookie(h, &rt.config.auth.csrf_cookie_name) {
        CookieLookup::One(v) if v.len() == crate::auth::session::SESSION_COOKIE_LEN => Some(v),
        _ => None,
    }
}

/// The CSRF token to embed, and a Set-Cookie if a new one was minted.
fn csrf_token(rt: &Runtime, h: &HeaderMap) -> (String, Option<HeaderValue>) {
    match csrf_cookie_value(rt, h) {
        Some(v) => (v.to_string(), None),
        None => {
            use base64::Engine;
            let t = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(crate::auth::session::random_key().unwrap_or_default());
            let c = cookies::csrf_cookie(&rt.config, &t);
            (t, Some(c))
        }
    }
}

/// What the browser's own headers prove about where a POST came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provenance {
    /// `Sec-Fetch-Site: same-origin`, or an `Origin` equal to this gateway's origin (or to the
    /// origin of the host the request was sent to): a page of ours sent it.
    SameOrigin,
    /// No `Origin` and no `Sec-Fetch-Site` (old browsers, scripts): nothing proven either way.
    Unknown,
}

/// Refuses cross-site posts: `Sec-Fetch-Site` other than `same-origin`/`none`, or an `Origin` (or,
/// without one, a `Referer`) that is neither the public origin nor the origin of the requested
/// host. Returns what was proven.
fn check_origin(rt: &Runtime, h: &HeaderMap) -> Result<Provenance, GatewayError> {
    let public = rt.config.server.public_origin.as_str();
    // The origin a page served through the gateway on the requested host has: a route may serve
    // an app on another host name than `public_url`, and its logout button posts there.
    let scheme = rt.config.server.public_url.scheme();
    let host_origin = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|host| (scheme, host));
    let ours = |o: &str| {
        o == public
            || host_origin.is_some_and(|(s, host)| {
                o.strip_prefix(s)
                    .and_then(|r| r.strip_prefix("://"))
                    .is_some_and(|r| r.eq_ignore_ascii_case(host))
            })
    };
    let mut proven = false;
    if let Some(site) = h.get("sec-fetch-site") {
        match site.as_bytes() {
            b"same-origin" => proven = true,
            // `none`: typed or bookmarked by the user, not sent by a page.
            b"none" => {}
            // `same-site` is a sibling subdomain: another origin, possibly someone else's.
            _ => return Err(GatewayError::CrossSite),
        }
    }
    if let Some(o) = h.get(header::ORIGIN) {
        return match o.to_str() {
            Ok(o) if ours(o) => Ok(Provenance::SameOrigin),
            _ => Err(GatewayError::CrossSite),
        };
    }
    if let Some(r) = h.get(header::REFERER).and_then(|v| v.to_str().ok()) {
        let origin_end = r
            .find("://")
            .map(|i| i + 3 + r[i + 3..].find('/').unwrap_or(r.len() - i - 3));
        let same = origin_end.is_some_and(|end| ours(&r[..end]));
        if !same {
            return Err(GatewayError::CrossSite);
        }
    }
    Ok(if proven {
        Provenance::SameOrigin
    } else {
        Provenance::Unknown
    })
}

fn check_csrf_token(
    rt: &Runtime,
    h: &HeaderMap,
    submitted: Option<&str>,
) -> Result<(), GatewayError> {
    let cookie = csrf_cookie_value(rt, h).ok_or(GatewayError::CsrfToken)?;
    let submitted = submitted.ok_or(GatewayError::CsrfToken)?;
    if bool::from(cookie.as_bytes().ct_eq(submitted.as_bytes())) {
        Ok(())
    } else {
        Err(GatewayError::CsrfToken)
    }
}

fn login_get<B>(shared: &Arc<Shared>, rt: &Runtime, req: &Request<B>) -> Response<Body> {
    let rd = safe_rd(
        &query_param(req.uri().query(), "rd").unwrap_or_else(|| "/".into()),
        &rt.config.server.public_origin,
    );
    // A route asked for a second factor this session does not have: the code alone.
    if query_param(req.uri().query(), "step_up").as_deref() == Some("mfa") {
        if let Some(r) = second::step_up_page(shared, rt, req, &rd) {
            return r;
        }
    }
    let (csrf, set) = csrf_token(rt, req.headers());
    let mut r = html(
        StatusCode::OK,
        page::login_page(&csrf, &rd, None, "", rt.users.has_demo(), login_methods(rt)),
    );
    if let Some(c) = set {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    if let Some(c) = oidc::binding_for_page(rt, req.headers()) {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

/// What the login page offers.
fn login_methods(rt: &Runtime) -> page::Methods<'_> {
    page::Methods {
        password: rt.config.auth.password_login,
        providers: rt.oidc.buttons(),
    }
}

#[derive(Deserialize, Default)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    csrf: Option<String>,
    rd: Option<String>,
}

enum Kind {
    Form,
    Json,
}

fn body_kind(h: &HeaderMap) -> Result<Kind, GatewayError> {
    let ct = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Ok(Kind::Form)
    } else if mime.eq_ignore_ascii_case("application/json") {
        Ok(Kind::Json)
    } else {
        Err(GatewayError::UnsupportedMediaType)
    }
}

async fn read_body(req: Request<Incoming>) -> Result<(http::request::Parts, Bytes), GatewayError> {
    let (parts, body) = req.into_parts();
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > MAX_LOGIN_BODY as u64 {
            return Err(GatewayError::PayloadTooLarge);
        }
    }
    match Limited::new(body, MAX_LOGIN_BODY).collect().await {
        Ok(c) => Ok((parts, c.to_bytes())),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(GatewayError::PayloadTooLarge)
        }
        Err(_) => Err(GatewayError::BadRequest("could not read request body")),
    }
}

fn parse_login(kind: &Kind, body: &[u8]) -> Result<LoginForm, GatewayError> {
    match kind {
        Kind::Form => serde_urlencoded::from_bytes(body)
            .map_err(|_| GatewayError::BadRequest("malformed form")),
        Kind::Json => {
            serde_json::from_slice(body).map_err(|_| GatewayError::BadRequest("malformed JSON"))
        }
    }
}

/// The login body parser for property tests and fuzzing: `(username, password, csrf, rd)`.
#[doc(hidden)]
pub fn parse_login_body(
    json: bool,
    body: &[u8],
) -> Result<(String, String, Option<String>, Option<String>), GatewayError> {
    let kind = if json { Kind::Json } else { Kind::Form };
    parse_login(&kind, body).map(|f| (f.username, f.password, f.csrf, f.rd))
}

/// The client address for rate limiting: the socket peer, or — when the peer is a trusted proxy —
/// the last hop of `X-Forwarded-For` read across every header line (a proxy may add its own line
/// after the client's; untrusted peers' `X-Forwarded-For` was stripped already). A last hop that
/// cannot be read counts as the peer here; the access rules use [`client_ip_strict`].
pub(crate) fn client_ip(rt: &Runtime, h: &HeaderMap, conn: &ConnInfo) -> IpAddr {
    client_ip_strict(rt, h, conn).unwrap_or(conn.ip)
}

/// [`client_ip`] for decisions that must fail closed: `Err` when a trusted proxy's last
/// `X-Forwarded-For` hop is not an address (`unknown`, garbage). `1.2.3.4:5555`, `[::1]:80` and
/// `[::1]` are read as their address (some proxies add the port).
pub(crate) fn client_ip_strict(rt: &Runtime, h: &HeaderMap, conn: &ConnInfo) -> Result<IpAddr, ()> {
    let peer = conn.ip;
    if !rt
        .config
        .server
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&peer))
    {
        return Ok(peer);
    }
    let mut last = None;
    for v in h.get_all(&X_FORWARDED_FOR) {
        let s = v.to_str().map_err(|_| ())?;
        if let Some(hop) = s.split(',').map(str::trim).rfind(|s| !s.is_empty()) {
            last = Some(hop);
        }
    }
    let Some(hop) = last else {
        return Ok(peer);
    };
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse::<IpAddr>().ok())
        })
        .ok_or(())?;
    Ok(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    })
}

/// How a login attempt ended, said by the code that answered where its status alone would not
/// (a response extension): a right password whose second factor comes next, a code step that
/// expired, a last wrong code answered by a redirect.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoginOutcome(pub LoginResult);

/// `r` with its outcome for the metrics.
pub(crate) fn with_outcome(mut r: Response<Body>, outcome: LoginResult) -> Response<Body> {
    r.extensions_mut().insert(LoginOutcome(outcome));
    r
}

/// How a login attempt ended, for the metrics.
fn login_result(r: &Result<Response<Body>, GatewayError>) -> LoginResult {
    match r {
        Ok(resp) => match resp.extensions().get::<LoginOutcome>() {
            Some(o) => o.0,
            None if resp.status() == StatusCode::UNAUTHORIZED => LoginResult::BadCredentials,
            None => LoginResult::Ok,
        },
        Err(GatewayError::TooManyRequests { .. }) => LoginResult::RateLimited,
        Err(GatewayError::LoginsBusy) => LoginResult::Busy,
        Err(GatewayError::CrossSite | GatewayError::CsrfToken) => LoginResult::Csrf,
        Err(GatewayError::StoreUnavailable) => LoginResult::StoreUnavailable,
        Err(_) => LoginResult::Invalid,
    }
}

/// Emits a login event about `username` (shown only if `known`).
fn audit_login(
    rt: &Runtime,
    o: &Origin,
    kind: AuditKind,
    outcome: &'static str,
    reason: Option<&'static str>,
    username: &str,
    known: bool,
) {
    let audit = &rt.telemetry.audit;
    if audit.enabled() {
        let mut e = AuditEvent::from(kind, outcome, o);
        e.reason = reason;
        e.user = Some(audit.user(username, known));
        audit.emit(e);
    }
}

async fn login_post(
    shared: &Arc<Shared>,
    rt: &Runtime,
    req: Request<Incoming>,
    o: &Origin,
) -> Result<Response<Body>, GatewayError> {
    let kind = body_kind(req.headers())?;
    check_origin(rt, req.headers())?;
    let ip = o.client;
    let (parts, body) = read_body(req).await?;
    let form = parse_login(&kind, &body)?;
    if matches!(kind, Kind::Form) {
        check_csrf_token(rt, &parts.headers, form.csrf.as_deref())?;
    }
    let rd = safe_rd(
        form.rd.as_deref().unwrap_or("/"),
        &rt.config.server.public_origin,
    );
    if form.username.len() > 64 || form.password.len() > 1024 {
        return Err(GatewayError::BadRequest("username or password too long"));
    }
    let user = check_password(shared, rt, &form.username, form.password, o).await?;
    let Some(user) = user else {
        return Ok(match kind {
            Kind::Json => json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "invalid_credentials", "message": BAD_CREDENTIALS}),
            ),
            Kind::Form => {
                let csrf = csrf_cookie_value(rt, &parts.headers).unwrap_or_default();
                html(
                    StatusCode::UNAUTHORIZED,
                    page::login_page(
                        csrf,
                        &rd,
                        Some(BAD_CREDENTIALS),
                        &form.username,
                        rt.users.has_demo(),
                        login_methods(rt),
                    ),
                )
            }
        });
    };

    // A second factor enrolled: the password alone is not a login.
    if rt
        .credentials
        .as_ref()
        .is_some_and(|c| c.get(&user.username).is_some())
    {
        tracing::info!(client = %ip, user = %user.username, "password accepted; second factor asked");
        return second::begin(shared, rt, &user, &kind, &rd, &parts.headers).await;
    }
    second::mint(
        shared,
        rt,
        &user,
        crate::auth::factors::PWD,
        None,
        &kind,
        &rd,
        o,
    )
    .await
}

/// Checks `password` for `username` under the login limits, on the bounded hashing pool:
/// `Some(user)` when right, `None` (audited, counted) when wrong or unknown — in the same time.
pub(super) async fn check_password(
    shared: &Arc<Shared>,
    rt: &Runtime,
    username: &str,
    password: String,
    o: &Origin,
) -> Result<Option<Arc<crate::auth::users::User>>, GatewayError> {
    let ip = o.client;
    if username.len() > 64 || password.len() > 1024 {
        return Err(GatewayError::BadRequest("username or password too long"));
    }
    let user = rt.users.get(username).cloned();
    let limited = |e: GatewayError| {
        if let GatewayError::TooManyRequests { .. } = e {
            audit_login(
                rt,
                o,
                AuditKind::LoginRateLimited,
                "failure",
                Some("too_many_failures"),
                username,
                user.is_some(),
            );
        }
        e
    };
    check_limit(shared, ip, username).await.map_err(limited)?;

    let hash = user
        .as_ref()
        .map_or_else(|| rt.dummy_hash.clone(), |u| u.hash.clone());
    let permit = match tokio::time::timeout(
        HASH_QUEUE_WAIT,
        shared.live.hash_pool.clone().acquire_owned(),
    )
    .await
    {
        Ok(Ok(p)) => p,
        _ => return Err(GatewayError::LoginsBusy),
    };
    // Check again with a slot in hand: failures recorded while this attempt queued must count, or
    // a burst of concurrent guesses would all pass the check above before any failure is recorded.
    check_limit(shared, ip, username).await.map_err(limited)?;
    let known = user.is_some();
    let (state, name) = (Arc::clone(shared), username.to_string());
    let ok = shared
        .live
        .hasher
        .run(move || {
            let _permit = permit;
            // Hash first, whether or not the user exists, so that both take the same time.
            let matched = crate::auth::password::verify(&hash, password.as_bytes());
            let ok = matched && known;
            // Recorded before the slot is released (and even if the client has gone), so that the
            // next queued attempt's check sees it.
            if !ok {
                state.live.limiter.record_failure(ip, &name);
            }
            ok
        })
        .await
        .map_err(GatewayError::Internal)?;
    if !ok {
        tracing::info!(client = %ip, "login failed");
        let reason = if known {
            "bad_password"
        } else {
            "unknown_user"
        };
        audit_login(
            rt,
            o,
            AuditKind::Login,
            "failure",
            Some(reason),
            username,
            known,
        );
        return Ok(None);
    }
    Ok(user)
}

fn redirect(location: &str) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn logout_get<B>(rt: &Runtime, req: &Request<B>) -> Response<Body> {
    let (csrf, set) = csrf_token(rt, req.headers());
    let mut r = html(StatusCode::OK, page::logout_page(&csrf));
    if let Some(c) = set {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

#[derive(Deserialize, Default)]
struct LogoutForm {
    csrf: Option<String>,
}

async fn logout_post(
    shared: &Arc<Shared>,
    rt: &Runtime,
    req: Request<Incoming>,
    o: &Origin,
) -> Result<Response<Body>, GatewayError> {
    let provenance = check_origin(rt, req.headers())?;
    let all = query_param(req.uri().query(), "all").is_some_and(|v| v == "1" || v == "true");
    let kind = body_kind(req.headers());
    let browser = wants_html(req.headers());
    let (parts, body) = read_body(req).await?;
    match kind {
        // JSON cannot be sent cross-site without a CORS preflight, which is never granted.
        Ok(Kind::Json) => {}
        Ok(Kind::Form) => {
            let f: LogoutForm = serde_urlencoded::from_bytes(&body)
                .map_err(|_| GatewayError::BadRequest("malformed form"))?;
            // A same-origin page's own logout button (`<form method="post"
            // action="/.auth/logout">`) has no token to send; the browser proved its origin.
            if provenance != Provenance::SameOrigin {
                check_csrf_token(rt, &parts.headers, f.csrf.as_deref())?;
            }
        }
        // `fetch("/.auth/logout", {method: "POST"})` from one of our pages: no body needed.
        Err(_) if provenance == Provenance::SameOrigin => {}
        Err(_) => return Err(GatewayError::CsrfToken),
    }
    // Unavailable: the cookie is kept and nothing is claimed done (503), never a silent "logged
    // out" that another instance would not honour.
    let auth = authenticate_from(rt, &shared.live, &parts.headers, Some(&|| o.clone()))
        .map_err(|_| GatewayError::StoreUnavailable)?;
    if let Some(a) = &auth {
        let live = &shared.live;
        match &a.credential {
            Credential::Session(_) => {
                if all {
                    live.sessions.remove_user(&a.user.username).await
                } else if let CookieLookup::One(v) =
                    find_cookie(&parts.headers, &rt.config.auth.cookie_name)
                {
                    live.sessions.remove(v).await
                } else {
                    Ok(())
                }
                .map_err(store_error)?;
            }
            Credential::Jwt(t) => {
                let now = unix_now();
                let leeway = rt.jwt_leeway_secs();
                live.revocations
                    .revoke_jti(&t.jti, t.exp.saturating_add(leeway), now)
                    .await
                    .map_err(store_error)?;
                // The login session too: tokens renewed from or into this one die with it.
                let session_end = t
                    .auth_time
                    .saturating_add(rt.config.auth.max_lifetime.as_secs())
                    .saturating_add(leeway);
                live.revocations
                    .revoke_jti(&t.sid, session_end, now)
                    .await
                    .map_err(store_error)?;
                if all {
                    live.revocations
                        .revoke_user_before(&a.user.username, crate::auth::session::unix_now_ms())
                        .await
                        .map_err(store_error)?;
                }
            }
        }
        tracing::info!(user = %a.user.username, all, "logout");
        let audit = &rt.telemetry.audit;
        let user = AuditUser::Known(a.user.username.to_string());
        let credential = crate::auth::credential_hash(rt, &parts.headers, &a.credential);
        let kind = if all {
            AuditKind::SignOutEverywhere
        } else {
            AuditKind::Logout
        };
        let mut e = AuditEvent::from(kind, "success", o);
        e.user = Some(user.clone());
        e.credential = credential.clone();
        audit.emit(e);
        if matches!(a.credential, Credential::Jwt(_)) {
            let mut e = AuditEvent::from(AuditKind::TokenRevoked, "success", o);
            e.user = Some(user);
            e.credential = credential;
            e.reason = Some(if all { "sign_out_everywhere" } else { "logout" });
            audit.emit(e);
        }
    }
    // A login made at an external provider set to `logout_at_provider` continues there.
    let end_session = auth
        .as_ref()
        .and_then(|a| a.provider())
        .and_then(|p| oidc::end_session_url(rt, p));
    let mut r = if matches!(kind, Ok(Kind::Form)) || browser {
        match &end_session {
            Some(u) => redirect(u),
            None => redirect(&format!("{}/.auth/login", rt.config.server.public_origin)),
        }
    } else {
        json(
            StatusCode::OK,
            serde_json::json!({"ok": true, "was_logged_in": auth.is_some(), "end_session_url": end_session}),
        )
    };
    r.headers_mut().append(
        header::SET_COOKIE,
        cookies::clear_session_cookie(&rt.config),
    );
    Ok(r)
}

/// 429 while the address or the username is over its failed-login limit.
async fn check_limit(shared: &Shared, ip: IpAddr, username: &str) -> Result<(), GatewayError> {
    let limited = shared
        .live
        .limiter
        .check(ip, username)
        .await
        .map_err(store_error)?;
    match limited {
        Some(wait) => {
            tracing::warn!(client = %ip, "login rate limit reached");
            Err(GatewayError::TooManyRequests { retry_after: wait })
        }
        None => Ok(()),
    }
}

/// A failed store write as the client's answer.
fn store_error(e: crate::store::StoreError) -> GatewayError {
    match e {
        crate::store::StoreError::Unavailable => GatewayError::StoreUnavailable,
        crate::store::StoreError::Internal(m) => GatewayError::Internal(m),
    }
}

fn me(rt: &Runtime, a: &Authenticated) -> Response<Body> {
    let (mode, expires) = match &a.credential {
        Credential::Session(s) => (
            "session",
            s.created_unix + rt.config.auth.max_lifetime.as_secs(),
        ),
        Credential::Jwt(t) => ("jwt", t.exp),
    };
    let u = &a.user;
    let mut r = json(
        StatusCode::OK,
        serde_json::json!({"user": &*u.username, "email": u.email, "name": u.name, "groups": u.groups, "mode": mode, "expires_at": expires, "amr": crate::auth::factors::names(a.amr()), "auth_time": a.auth_time(), "method": if a.provider().is_some() { "oidc" } else { "password" }, "provider": a.provider()}),
    );
    if let Some(c) = &a.renew {
        r.headers_mut().append(header::SET_COOKIE, c.clone());
    }
    r
}

/// The request a trusted forward-auth proxy asks `/.auth/verify` about: `X-Forwarded-Method`,
/// `X-Forwarded-Host` and `X-Forwarded-Uri` (all three, once each), read only with
/// `server.forward_auth_policy` and only from a peer in `trusted_proxies` (from anyone else these
/// headers were already removed). `Ok(None)`: no such
/// description, verify answers for the credential alone.
pub struct ForwardedRequest {
    /// The method.
    pub method: Method,
    /// The host name, port removed.
    pub host: Option<String>,
    /// The normalised path.
    pub path: String,
}

/// Reads a [`ForwardedRequest`] from `h`; malformed values are a 400, never a guess.
pub fn forwarded_request(
    rt: &Runtime,
    h: &HeaderMap,
    conn: &ConnInfo,
) -> Result<Option<ForwardedRequest>, GatewayError> {
    let trusted = rt
        .config
        .server
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&conn.ip));
    if !(rt.config.server.forward_auth_policy && trusted) {
        return Ok(None);
    }
    let bad = || {
        GatewayError::BadRequest(
            "forward auth needs exactly one X-Forwarded-Method, X-Forwarded-Host and X-Forwarded-Uri, well formed",
        )
    };
    // Exactly one of each: a second value could be the client's own, passed through.
    let one = |name: &str| -> Result<&HeaderValue, GatewayError> {
        let mut all = h.get_all(name).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => Ok(v),
            _ => Err(bad()),
        }
    };
    let uri = one("x-forwarded-uri")?;
    let uri = uri.to_str().map_err(|_| bad())?;
    let raw_path = uri.split(['?', '#']).next().unwrap_or_default();
    let path = crate::pipeline::path::normalize(raw_path)
        .map_err(|_| bad())?
        .into_owned();
    let method = Method::from_bytes(one("x-forwarded-method")?.as_bytes()).map_err(|_| bad())?;
    let v = one("x-forwarded-host")?;
    if !crate::pipeline::host_value_ok(v.as_bytes()) {
        return Err(bad());
    }
    let s = v.to_str().map_err(|_| bad())?;
    let host = Some(
        crate::pipeline::canonical_host(crate::pipeline::route::host_without_port(s))
            .to_ascii_lowercase(),
    );
    Ok(Some(ForwardedRequest { method, host, path }))
}

/// Forward-auth for nginx `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth`: 200 with the
/// identity headers, 401 when not logged in, 403 when `?allow_groups=`/`?allow_users=` exclude them.
/// When a trusted proxy describes the request (see [`forwarded_request`]) and a route matches
/// it, that route's policy decides first, exactly as for a proxied request: a public rule answers
/// 200 without identity, a deny rule 403, and the route's (or rule's) allow lists apply beside
/// the query's.
fn verify<B>(
    shared: &Arc<Shared>,
    rt: &Runtime,
    req: &Request<B>,
    conn: &ConnInfo,
    o: &Origin,
) -> Result<Response<Body>, GatewayError> {
    use crate::policy::Verdict;
    let mut denials = rt.telemetry.metrics.gateway_route();
    let mut route_lists = None;
    if let Some(f) = forwarded_request(rt, req.headers(), conn)? {
        if let Some(route) = rt.router.find(f.host.as_deref(), &f.path) {
            denials = &route.metrics;
            let query_lists = ["allow_groups", "allow_users"]
                .iter()
                .any(|n| query_param(req.uri().query(), n).is_some());
            match crate::pipeline::route_verdict(rt, route, &f.method, &f.path, req.headers(), conn)
                .1
            {
                // The verify URL's own lists still apply: they name who the proxy admits.
                Verdict::Public if query_lists => {}
                Verdict::Public => return Ok(no_store(Response::new(Body::empty()))),
                Verdict::Malformed => {
                    return Err(GatewayError::BadRequest(
                        "X-Forwarded-For from the trusted proxy is not an address",
                    ))
                }
                Verdict::Deny => {
                    denials.denied();
                    audit_verify_denied(rt, req, o, &denials.name, None, "deny_rule");
                    return Err(GatewayError::Forbidden);
                }
                Verdict::Authenticate {
                    allow_groups,
                    allow_users,
                    level,
                } => route_lists = Some((allow_users, allow_groups, level)),
            }
        }
    }
    let a = match authenticate_from(rt, &shared.live, req.headers(), Some(&|| o.clone())) {
        Ok(Some(a)) => a,
        Ok(None) => {
            denials.denied();
            return Err(GatewayError::Unauthenticated);
        }
        Err(_) => return Err(GatewayError::StoreUnavailable),
    };
    let q = req.uri().query();
    let list = |name| {
        query_param(q, name).map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
    };
    let (groups, users) = (list("allow_groups"), list("allow_users"));
    let by_query = crate::policy::admits(
        users.as_deref(),
        groups.as_deref(),
        &a.user.username,
        &a.user.groups,
    );
    let by_route = route_lists
        .is_none_or(|(u, g, _)| crate::policy::admits(u, g, &a.user.username, &a.user.groups));
    if !(by_query && by_route) {
        denials.denied();
        audit_verify_denied(rt, req, o, &denials.name, Some(&a), "not_allowed");
        return Err(GatewayError::Forbidden);
    }
    if let Some((_, _, level)) = route_lists {
        if let Some(step) = level.lacks(a.amr(), a.auth_time(), crate::auth::session::unix_now()) {
            let enrolled = rt
                .credentials
                .as_ref()
                .is_some_and(|c| c.get(&a.user.username).is_some());
            if step == crate::policy::StepUp::Mfa && !enrolled {
                return Err(GatewayError::NoSecondFactor);
            }
            return Ok(crate::pipeline::step_up_json(step));
        }
    }
    let mut r = Response::new(Body::empty());
    crate::pipeline::inject_identity(rt, r.headers_mut(), &a);
    if let Some(c) = a.renew {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(no_store(r))
}

fn no_store(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn audit_verify_denied<B>(
    rt: &Runtime,
    req: &Request<B>,
    o: &Origin,
    route: &Arc<str>,
    a: Option<&crate::auth::Authenticated>,
    reason: &'static str,
) {
    let audit = &rt.telemetry.audit;
    if !audit.enabled() {
        return;
    }
    let mut e = AuditEvent::from(AuditKind::AccessDenied, "failure", o);
    e.reason = Some(reason);
    e.route = Some(route.clone());
    if let Some(a) = a {
        e.user = Some(AuditUser::Known(a.user.username.to_string()));
        e.credential = crate::auth::credential_hash(rt, req.headers(), &a.credential);
    }
    audit.emit(e);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_hashing_queue_is_429_with_retry_after_and_counted_apart_from_limits() {
        let busy = Err(GatewayError::LoginsBusy);
        assert_eq!(login_result(&busy), LoginResult::Busy);
        let limited = Err(GatewayError::TooManyRequests { retry_after: 7 });
        assert_eq!(login_result(&limited), LoginResult::RateLimited);
        let r = GatewayError::LoginsBusy.into_response(false);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn safe_rd_keeps_local_paths_and_refuses_everything_else() {
        let o = "https://auth.example.com";
        assert_eq!(safe_rd("/app/x?y=1", o), "/app/x?y=1");
        for bad in [
            "//evil.com",
            "/\\evil.com",
            "https://evil.com",
            "/%2F%2Fevil.com",
            "%2F%2Fevil.com",
            "/%5Cevil.com",
            "/a\r\nb",
            "/%0d%0aSet-Cookie:x",
            "javascript:alert(1)",
            "/%252F%252Fevil.com",
            "",
            "/.auth/logout",
            "/%c0%af/evil.com",
            "/%c0%ae%c0%ae/x",
        ] {
            assert_eq!(safe_rd(bad, o), "/", "{bad:?}");
        }
    }
}
