//! Login through an external OpenID Connect provider: the authorization code flow with PKCE
//! (S256, always), `state` and `nonce` kept server-side in the live store (single use, 10
//! minutes, shared by every instance), bound to the browser by one long-lived cookie — not a
//! cookie per attempt, so parallel tabs each finish their own login. It ends, like the password
//! login, in [`super::second::mint`]: the same session or JWT cookie, identity headers and rules.
//!
//! `GET /.auth/oidc/<id>/start?rd=/path` → 302 to the provider; the provider sends the browser to
//! `GET /.auth/oidc/<id>/callback?code&state[&iss]`, where the code is exchanged, the ID token
//! verified ([`provider::Provider::verify_id_token`]), missing email and groups read from
//! userinfo, the provider's admission rules applied, and the credential minted. The provider's
//! tokens never reach the browser or an upstream.

pub mod fetch;
pub mod provider;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{html, page, query_param, safe_rd, store_error, Kind};
use crate::auth::external::ExternalLogin;
use crate::auth::users::User;
use crate::body::Body;
use crate::config::oidc::{OidcConfig, OidcUsers};
use crate::error::GatewayError;
use crate::pipeline::headers::{find_cookie, CookieLookup};
use crate::state::{Runtime, Shared};
use crate::telemetry::audit::{AuditEvent, AuditKind, Origin};
use provider::{IdTokenError, Provider, ProviderError};

/// How long a started login waits for the provider to send the browser back.
pub const FLOW_TTL: Duration = Duration::from_secs(600);
/// Lifetime of the browser-binding cookie (renewed by every start).
const BINDING_MAX_AGE: i64 = 24 * 3600;
/// Longest query a callback may carry.
const MAX_CALLBACK_QUERY: usize = 8 * 1024;

/// Sign-ins one client address may start per minute (each keeps a pending login in the live
/// store for [`FLOW_TTL`]); a person needs a handful, a flood would fill the store.
pub const STARTS_PER_MINUTE: u32 = 60;

/// Counts sign-in starts per client address over one-minute windows (this instance; bounded
/// in memory).
pub struct StartLimiter {
    counts: moka::sync::Cache<std::net::IpAddr, Arc<std::sync::atomic::AtomicU32>>,
}

impl Default for StartLimiter {
    fn default() -> Self {
        StartLimiter {
            counts: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }
}

impl StartLimiter {
    /// Counts one start from `ip`; false when over [`STARTS_PER_MINUTE`] in its window.
    pub fn allow(&self, ip: std::net::IpAddr) -> bool {
        let n = self.counts.get_with(ip, Default::default);
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < STARTS_PER_MINUTE
    }
}

/// The configured providers of a snapshot, in file order.
#[derive(Default)]
pub struct Providers {
    list: Vec<Arc<Provider>>,
    /// (id, label) per provider, for the login page.
    buttons: Vec<(String, String)>,
}

impl Providers {
    /// Prepares every provider (TLS client, version stamp); fetches nothing.
    pub fn build(cfgs: &[OidcConfig]) -> Result<Providers, (String, String)> {
        let mut list = Vec::with_capacity(cfgs.len());
        for (i, c) in cfgs.iter().enumerate() {
            let p = Provider::new(c.clone()).map_err(|m| (format!("auth.oidc[{i}].ca_file"), m))?;
            list.push(Arc::new(p));
        }
        let buttons = cfgs
            .iter()
            .map(|c| (c.id.clone(), c.display_name.clone()))
            .collect();
        Ok(Providers { list, buttons })
    }

    /// The provider with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Provider>> {
        self.list.iter().find(|p| p.cfg.id == id)
    }

    /// (id, reachable) of every provider, for the metrics.
    pub fn states(&self) -> Vec<(String, bool)> {
        self.list
            .iter()
            .map(|p| (p.cfg.id.clone(), p.is_reachable()))
            .collect()
    }

    /// (id, label) of every provider.
    pub fn buttons(&self) -> &[(String, String)] {
        &self.buttons
    }

    /// Fetches every provider's documents in the background, so that the first login does not
    /// wait; one that is unreachable is a warning, never a start-up failure.
    pub fn warm_up(&self) {
        for p in &self.list {
            let p = Arc::clone(p);
            tokio::spawn(async move {
                if let Err(e) = p.documents().await {
                    tracing::warn!(provider = %p.cfg.id, error = %e, "identity provider not reachable at start-up; its sign-in button answers with an error page until it is");
                }
            });
        }
    }
}

/// What the live store keeps of a started login (JSON).
#[derive(Serialize, Deserialize)]
struct Flow {
    /// Provider id.
    p: String,
    /// PKCE code verifier.
    v: String,
    /// Nonce.
    n: String,
    /// Where to go afterwards (already validated).
    rd: String,
    /// SHA-256 (hex) of the browser-binding cookie.
    b: String,
}

fn sha256_hex(s: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn random_token() -> Result<String, GatewayError> {
    let k = crate::auth::session::random_key().map_err(GatewayError::Internal)?;
    Ok(URL_SAFE_NO_PAD.encode(k))
}

/// Equal strings, compared in constant time.
fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn binding_cookie_value<'a>(rt: &Runtime, h: &'a HeaderMap) -> Option<&'a str> {
    match find_cookie(h, &rt.config.auth.oidc_cookie_name) {
        CookieLookup::One(v) if v.len() == crate::auth::session::SESSION_COOKIE_LEN => Some(v),
        _ => None,
    }
}

/// The browser-binding cookie: Lax (it must come back with the provider's top-level redirect),
/// HttpOnly, one per browser, reused by every login started there.
fn binding_cookie(rt: &Runtime, value: &str) -> HeaderValue {
    let c = cookie::Cookie::build((rt.config.auth.oidc_cookie_name.as_str(), value))
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .path("/")
        .secure(rt.config.server.https)
        .max_age(cookie::time::Duration::seconds(BINDING_MAX_AGE))
        .build()
        .to_string();
    HeaderValue::from_str(&c).expect("cookie of a base64url value is a valid header")
}

/// The binding cookie's value for a login page: the existing one, or a new one to set (so that
/// logins started from that page in several tabs share it).
pub(super) fn binding_for_page(rt: &Runtime, h: &HeaderMap) -> Option<HeaderValue> {
    if rt.oidc.list.is_empty() || binding_cookie_value(rt, h).is_some() {
        return None;
    }
    random_token().ok().map(|t| binding_cookie(rt, &t))
}

/// An error page for a browser, with a link back to the login page.
fn failure_page(status: StatusCode, message: &str) -> Response<Body> {
    let mut r = html(status, page::message_page("Sign-in failed", message));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn unavailable_page() -> Response<Body> {
    let mut r = failure_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "The identity provider cannot be reached right now. Please try again in a moment.",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

/// `GET /.auth/oidc/<id>/start?rd=…`: remembers the attempt and sends the browser to the
/// provider.
pub(super) async fn start<B>(
    shared: &Arc<Shared>,
    rt: &Runtime,
    req: &Request<B>,
    id: &str,
    client: std::net::IpAddr,
) -> Result<Response<Body>, GatewayError> {
    let Some(p) = rt.oidc.get(id) else {
        return Err(GatewayError::NotFound);
    };
    if !shared.oidc_starts.allow(client) {
        tracing::debug!(provider = %id, %client, "sign-in start refused: too many from this address");
        return Err(GatewayError::TooManyRequests { retry_after: 60 });
    }
    let rd = safe_rd(
        &query_param(req.uri().query(), "rd").unwrap_or_else(|| "/".into()),
        &rt.config.server.public_origin,
    );
    let (discovery, _) = match p.documents().await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(provider = %id, error = %e, "sign-in not started");
            return Ok(unavailable_page());
        }
    };
    // Renewed by every start, so a sign-in started just before the cookie would have expired
    // still finishes in this browser.
    let binding = match binding_cookie_value(rt, req.headers()) {
        Some(b) => b.to_string(),
        None => random_token()?,
    };
    let set_binding = Some(binding_cookie(rt, &binding));
    let state = random_token()?;
    let nonce = random_token()?;
    let verifier = random_token()?;
    let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    let flow = Flow {
        p: p.cfg.id.clone(),
        v: verifier,
        n: nonce.clone(),
        rd,
        b: sha256_hex(&binding),
    };
    let value = serde_json::to_string(&flow).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let expires = crate::auth::session::unix_now_ms() + FLOW_TTL.as_millis() as u64;
    shared
        .live
        .otp
        .put_flow(&sha256_hex(&state), value, expires)
        .await
        .map_err(store_error)?;
    let mut url = discovery.authorization_endpoint.clone();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &p.cfg.client_id)
        .append_pair("redirect_uri", &p.cfg.redirect_uri)
        .append_pair("scope", &p.cfg.scopes.join(" "))
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::FOUND;
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(url.as_str()).map_err(|e| GatewayError::Internal(e.to_string()))?,
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(c) = set_binding {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(r)
}

/// Why a callback was refused: the audit reason, and what the browser is told.
struct Refusal {
    reason: &'static str,
    status: StatusCode,
    message: &'static str,
}

const TRY_AGAIN: &str =
    "The sign-in could not be completed. Please start again from the sign-in page.";

fn refuse(reason: &'static str) -> Refusal {
    Refusal {
        reason,
        status: StatusCode::BAD_REQUEST,
        message: TRY_AGAIN,
    }
}

fn not_allowed(reason: &'static str) -> Refusal {
    Refusal {
        reason,
        status: StatusCode::FORBIDDEN,
        message: "Your account at the identity provider is not allowed to sign in here.",
    }
}

fn provider_down(reason: &'static str) -> Refusal {
    Refusal {
        reason,
        status: StatusCode::BAD_GATEWAY,
        message: "The identity provider did not complete the sign-in. Please try again.",
    }
}

/// `GET /.auth/oidc/<id>/callback`: the provider sends the browser back here.
pub(super) async fn callback<B>(
    shared: &Arc<Shared>,
    rt: &Runtime,
    req: &Request<B>,
    id: &str,
    o: &Origin,
) -> Result<Response<Body>, GatewayError> {
    let Some(p) = rt.oidc.get(id) else {
        return Err(GatewayError::NotFound);
    };
    match finish(shared, rt, req, p, o).await {
        Ok(r) => Ok(r),
        Err(Outcome::Store(e)) => Err(e),
        Err(Outcome::Unavailable(why)) => {
            tracing::warn!(provider = %id, client = %o.client, reason = %why, "external sign-in failed: provider unavailable");
            audit_failure(rt, o, id, "provider_unavailable", None);
            Ok(unavailable_page())
        }
        Err(Outcome::Refused(r, detail, user)) => {
            tracing::warn!(provider = %id, client = %o.client, reason = r.reason, detail = %detail, "external sign-in refused");
            audit_failure(rt, o, id, r.reason, user.as_deref());
            Ok(failure_page(r.status, r.message))
        }
    }
}

fn audit_failure(
    rt: &Runtime,
    o: &Origin,
    provider: &str,
    reason: &'static str,
    user: Option<&str>,
) {
    let audit = &rt.telemetry.audit;
    if audit.enabled() {
        let mut e = AuditEvent::from(AuditKind::Login, "failure", o);
        e.reason = Some(reason);
        e.detail = Some(format!("provider={provider}"));
        if let Some(u) = user {
            e.user = Some(audit.user(u, rt.users.get(u).is_some()));
        }
        audit.emit(e);
    }
}

enum Outcome {
    /// The live store failed (503 through the usual mapping).
    Store(GatewayError),
    /// The provider could not be reached or answered garbage.
    Unavailable(String),
    /// Refused: why (audit), a detail for the log, and the user if known.
    Refused(Refusal, String, Option<String>),
}

impl From<ProviderError> for Outcome {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::Unavailable(m) => Outcome::Unavailable(m),
            ProviderError::Refused(m) => {
                Outcome::Refused(provider_down("provider_refused"), m, None)
            }
        }
    }
}

fn refused(reason: &'static str, detail: impl Into<String>) -> Outcome {
    Outcome::Refused(refuse(reason), detail.into(), None)
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
    access_token: Option<String>,
    /// Seconds; some providers send it as a string.
    #[serde(default)]
    expires_in: Option<Value>,
}

async fn finish<B>(
    shared: &Arc<Shared>,
    rt: &Runtime,
    req: &Request<B>,
    p: &Provider,
    o: &Origin,
) -> Result<Response<Body>, Outcome> {
    let query = req.uri().query().unwrap_or("");
    if query.len() > MAX_CALLBACK_QUERY {
        return Err(refused("bad_callback", "query too long"));
    }
    let param = |name: &str| {
        let mut found = url::form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == name);
        let first = found.next().map(|(_, v)| v.into_owned());
        // A parameter given twice is ambiguous: refuse rather than pick one.
        match found.next() {
            Some(_) => Err(()),
            None => Ok(first),
        }
    };
    let (Ok(state), Ok(code), Ok(error), Ok(iss)) =
        (param("state"), param("code"), param("error"), param("iss"))
    else {
        return Err(refused("bad_callback", "a parameter is repeated"));
    };
    let Some(state) = state else {
        return Err(refused("bad_callback", "no state"));
    };
    // Single use: taken (deleted) before anything else is checked, so a replay of this
    // callback, here or on another instance, finds nothing.
    let flow = shared
        .live
        .otp
        .take_flow(&sha256_hex(&state))
        .await
        .map_err(|e| Outcome::Store(store_error(e)))?;
    let Some(flow) = flow.and_then(|v| serde_json::from_str::<Flow>(&v).ok()) else {
        return Err(refused(
            "unknown_state",
            "state unknown, expired or already used",
        ));
    };
    if flow.p != p.cfg.id {
        // Started with another provider: a mix-up.
        return Err(refused(
            "provider_mismatch",
            format!("state belongs to provider {:?}", flow.p),
        ));
    }
    match binding_cookie_value(rt, req.headers()) {
        Some(b) if same(&sha256_hex(b), &flow.b) => {}
        _ => {
            return Err(refused(
                "browser_mismatch",
                "the sign-in was started in another browser",
            ));
        }
    }
    let (discovery, keys) = p.documents().await?;
    // RFC 9207: the issuer the provider names must be this provider's.
    match &iss {
        Some(i) if *i != p.cfg.issuer => {
            return Err(refused(
                "issuer_mismatch",
                "iss parameter is not the configured issuer",
            ));
        }
        None if discovery.iss_parameter => {
            return Err(refused("issuer_mismatch", "iss parameter missing"));
        }
        _ => {}
    }
    if let Some(e) = error {
        let code: String = e
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        return Err(Outcome::Refused(
            Refusal {
                reason: "provider_error",
                status: StatusCode::FORBIDDEN,
                message: "The identity provider did not sign you in.",
            },
            format!("error={code}"),
            None,
        ));
    }
    let Some(code) = code.filter(|c| !c.is_empty()) else {
        return Err(refused("bad_callback", "no code"));
    };

    // The code exchange.
    let (authorization, form) = {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "authorization_code")
            .append_pair("code", &code)
            .append_pair("redirect_uri", &p.cfg.redirect_uri)
            .append_pair("code_verifier", &flow.v);
        let authorization = match &p.cfg.client_secret {
            Some(secret) if !discovery.secret_post_only => {
                // RFC 6749 §2.3.1: both form-encoded before the Basic encoding.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let pair = format!("{}:{}", enc(&p.cfg.client_id), enc(secret.expose()));
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            Some(secret) => {
                form.append_pair("client_id", &p.cfg.client_id)
                    .append_pair("client_secret", secret.expose());
                None
            }
            None => {
                form.append_pair("client_id", &p.cfg.client_id);
                None
            }
        };
        (authorization, form.finish())
    };
    let (status, body) = p
        .client()
        .post_form(&discovery.token_endpoint, authorization, form)
        .await
        .map_err(|e| Outcome::Unavailable(e.to_string()))?;
    if !status.is_success() {
        let why = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default();
        let why: String = why
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        return Err(Outcome::Refused(
            provider_down("code_exchange_refused"),
            format!("token endpoint answered {status} {why}"),
            None,
        ));
    }
    let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
        Outcome::Refused(
            provider_down("bad_token_answer"),
            "token answer is not JSON".into(),
            None,
        )
    })?;
    let Some(id_token) = answer.id_token.as_deref() else {
        return Err(Outcome::Refused(
            provider_down("bad_token_answer"),
            "no id_token".into(),
            None,
        ));
    };
    let now = crate::auth::session::unix_now();
    let claims = match p.verify_id_token(&keys, id_token, &flow.n, now) {
        Err(IdTokenError::UnknownKey) => match p.refetch_keys().await {
            Some(k) => p.verify_id_token(&k, id_token, &flow.n, now),
            None => Err(IdTokenError::UnknownKey),
        },
        r => r,
    }
    .map_err(|e| Outcome::Refused(refuse("bad_id_token"), e.to_string(), None))?;

    // Email, groups (and the user claim) from userinfo when the ID token lacks them.
    let mut claims = claims;
    let lacks = |c: &Map<String, Value>| {
        claim(c, &p.cfg.email_claim).is_none() || claim(c, &p.cfg.groups_claim).is_none()
    };
    if lacks(&claims) {
        if let (Some(ui), Some(at)) = (&discovery.userinfo_endpoint, &answer.access_token) {
            let (status, body) = p
                .client()
                .get(ui, Some(at))
                .await
                .map_err(|e| Outcome::Unavailable(e.to_string()))?;
            if !status.is_success() {
                return Err(Outcome::Refused(
                    provider_down("userinfo_refused"),
                    format!("userinfo answered {status}"),
                    None,
                ));
            }
            let info: Map<String, Value> = serde_json::from_slice(&body).map_err(|_| {
                Outcome::Refused(
                    provider_down("userinfo_refused"),
                    "userinfo is not a JSON object".into(),
                    None,
                )
            })?;
            // OpenID Connect Core §5.3.2: a userinfo answer for another subject is not used.
            if info.get("sub") != claims.get("sub") {
                return Err(refused(
                    "userinfo_subject",
                    "userinfo sub differs from the ID token's",
                ));
            }
            // Only what identifies the user; never `amr`, `nonce` or anything the ID token
            // alone may say.
            let wanted = [
                p.cfg.email_claim.as_str(),
                p.cfg.groups_claim.as_str(),
                p.cfg.user_claim.as_str(),
                "email_verified",
                "name",
            ];
            // `email_verified` speaks of userinfo's email: it is taken only with that email, or
            // when userinfo names the same one the ID token does.
            let same_email = match (
                claim(&claims, &p.cfg.email_claim),
                claim(&info, &p.cfg.email_claim),
            ) {
                (None, _) => true,
                (Some(a), Some(b)) => a == b,
                (Some(_), None) => false,
            };
            for (k, v) in info {
                let top = |w: &&str| *w == k || w.split('.').next() == Some(k.as_str());
                if k == "email_verified" && !same_email {
                    continue;
                }
                if wanted.iter().any(top) {
                    claims.entry(k).or_insert(v);
                }
            }
        }
    }

    let (user, via) = identity(rt, p, &claims)?;
    let via = keep_access_token(rt, p, via, &answer, now);
    let amr = amr_of(&claims);
    super::second::mint(shared, rt, &user, amr, Some(via), &Kind::Form, &flow.rd, o)
        .await
        .map_err(Outcome::Store)
}

/// The login with the provider's access token, when a route forwards it (`pass_access_token`);
/// the session store seals it with the new session's key.
fn keep_access_token(
    rt: &Runtime,
    p: &Provider,
    via: Arc<ExternalLogin>,
    answer: &TokenAnswer,
    now: u64,
) -> Arc<ExternalLogin> {
    use crate::auth::external::{AccessToken, MAX_ACCESS_TOKEN};
    let Some(token) = answer.access_token.as_deref().filter(|t| !t.is_empty()) else {
        return via;
    };
    if !rt.config.routes.iter().any(|r| r.pass_access_token) {
        return via;
    }
    // A value that cannot be a header value, or an oversized one, is not kept.
    if token.len() > MAX_ACCESS_TOKEN || HeaderValue::from_str(token).is_err() {
        tracing::warn!(provider = %p.cfg.id, len = token.len(), "the provider's access token is not forwardable (too long or not a header value); not kept");
        return via;
    }
    let lifetime = match &answer.expires_in {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    let mut v = (*via).clone();
    v.access_token = Some(AccessToken::Clear {
        token: Arc::from(token),
        expires: lifetime.map_or(0, |l| now.saturating_add(l)),
    });
    Arc::new(v)
}

/// A claim by name; a name with dots that no claim has is read as a path into nested objects
/// (`realm_access.roles`).
fn claim<'a>(c: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = c.get(name) {
        return (!v.is_null()).then_some(v);
    }
    let mut parts = name.split('.');
    let mut v = c.get(parts.next()?)?;
    for part in parts {
        v = v.as_object()?.get(part)?;
    }
    (!v.is_null()).then_some(v)
}

/// Groups as the provider names them: an array of strings, or one string.
fn groups_of(c: &Map<String, Value>, name: &str) -> Vec<String> {
    match claim(c, name) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// `email_verified`: `Some(true)` / `Some(false)`, `None` when absent (some providers send it as
/// a string).
fn email_verified(c: &Map<String, Value>) -> Option<bool> {
    match c.get("email_verified")? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => Some(s == "true"),
        _ => Some(false),
    }
}

/// The provider's `amr`: a multi-factor login there counts as one here (`pwd` + `otp`), so a
/// route's `require = "mfa"` admits it; always with `ext` (an external provider vouched).
fn amr_of(c: &Map<String, Value>) -> crate::auth::factors::Amr {
    use crate::auth::factors::{EXT, OTP, PWD};
    let names: Vec<&str> = match c.get("amr") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let second = [
        "otp", "hwk", "swk", "sms", "fpt", "face", "iris", "pop", "sc",
    ];
    let multi =
        names.contains(&"mfa") || (names.len() > 1 && names.iter().any(|n| second.contains(n)));
    if multi {
        EXT | PWD | OTP
    } else {
        EXT
    }
}

/// Applies the provider's admission rules and makes the identity the credential carries.
fn identity(
    rt: &Runtime,
    p: &Provider,
    c: &Map<String, Value>,
) -> Result<(Arc<User>, Arc<ExternalLogin>), Outcome> {
    let cfg = &p.cfg;
    let sub = c.get("sub").and_then(Value::as_str).unwrap_or_default();
    let username = claim(c, &cfg.user_claim)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(sub)
        .to_string();
    let who = Some(username.clone());
    let deny = |reason: &'static str, detail: String| {
        Outcome::Refused(not_allowed(reason), detail, who.clone())
    };
    let email = claim(c, &cfg.email_claim)
        .and_then(Value::as_str)
        .map(str::to_string);
    let verified = email_verified(c);
    if email.is_some() && verified == Some(false) && !cfg.allow_unverified_email {
        return Err(deny(
            "email_unverified",
            "the provider says the email is not verified".into(),
        ));
    }
    // Many providers let a user type any address; only one the provider vouches for
    // (`email_verified: true`) identifies anybody. Where it names the user, an unvouched one
    // refuses the login; elsewhere it is not passed on.
    let vouched = verified == Some(true) || cfg.allow_unverified_email;
    if !vouched && cfg.user_claim == cfg.email_claim && email.is_some() {
        return Err(deny(
            "email_unverified",
            "the user claim is an email the provider does not mark verified".into(),
        ));
    }
    let email = email.filter(|_| vouched);
    if !cfg.allowed_email_domains.is_empty() {
        let domain = email
            .as_deref()
            .and_then(|e| e.rsplit_once('@'))
            .map(|(_, d)| d.to_ascii_lowercase());
        let ok = domain.is_some_and(|d| cfg.allowed_email_domains.contains(&d));
        if !ok {
            return Err(deny(
                "email_domain",
                "no verified email in an allowed domain".into(),
            ));
        }
    }
    let idp_groups = groups_of(c, &cfg.groups_claim);
    if !cfg.allowed_groups.is_empty() && !idp_groups.iter().any(|g| cfg.allowed_groups.contains(g))
    {
        return Err(deny(
            "group_not_allowed",
            "in none of allowed_groups".into(),
        ));
    }
    match cfg.users {
        OidcUsers::Link => {
            let Some(local) = rt.users.get(&username) else {
                return Err(deny("not_linked", "no [[users]] entry of that name".into()));
            };
            let via = ExternalLogin {
                provider: Arc::from(cfg.id.as_str()),
                identity: None,
                access_token: None,
            };
            Ok((Arc::clone(local), Arc::new(via)))
        }
        OidcUsers::Trust => {
            // A provider's user must not become a local user of the same name (and so pass
            // their allow_users rules): that is what `users = "link"` is for.
            if rt.users.get(&username).is_some() {
                return Err(deny(
                    "local_user_collision",
                    "a [[users]] entry has that name; use users = \"link\"".into(),
                ));
            }
            let mut groups = Vec::with_capacity(idp_groups.len());
            for g in idp_groups {
                let g = format!("{}{g}", cfg.groups_prefix);
                match crate::auth::users::validate_header_text(&g, false) {
                    Ok(()) if !groups.contains(&g) => groups.push(g),
                    Ok(()) => {}
                    Err(m) => {
                        tracing::warn!(provider = %cfg.id, reason = %m, "group from the provider dropped")
                    }
                }
            }
            let name = claim(c, "name")
                .and_then(Value::as_str)
                .filter(|n| crate::auth::users::validate_header_text(n, true).is_ok());
            let user = User::external(&username, email.as_deref(), name, groups, p.version)
                .map_err(|m| Outcome::Refused(refuse("bad_claims"), m, who.clone()))?;
            let user = Arc::new(user);
            let via = ExternalLogin {
                provider: Arc::from(cfg.id.as_str()),
                identity: Some(Arc::clone(&user)),
                access_token: None,
            };
            Ok((user, Arc::new(via)))
        }
    }
}

/// Whether a credential made through provider `via` still stands in snapshot `rt`, and whose
/// identity it carries: the provider must still be configured with the same version (issuer,
/// client, mapping); a trusted identity must not have become a local user's name since; a
/// linked one must still be a `[[users]]` entry.
pub fn identity_of(
    rt: &Runtime,
    username: &str,
    version: u64,
    via: &ExternalLogin,
) -> Option<Arc<User>> {
    let p = rt.oidc.get(&via.provider)?;
    match (p.cfg.users, &via.identity) {
        (OidcUsers::Trust, Some(u)) => (u.password_version == p.version
            && version == p.version
            && rt.users.get(username).is_none())
        .then(|| Arc::clone(u)),
        (OidcUsers::Link, None) => {
            let local = rt.users.get(username)?;
            (local.password_version == version).then(|| Arc::clone(local))
        }
        _ => None,
    }
}

/// Where logout continues for a login made through `provider`: its `end_session_endpoint`, if
/// the provider is set to `logout_at_provider` and announces one (from the cache: logout never
/// waits for a provider).
pub(super) fn end_session_url(rt: &Runtime, provider: &str) -> Option<String> {
    let p = rt.oidc.get(provider)?;
    if !p.cfg.logout_at_provider {
        return None;
    }
    let d = p.cached_discovery()?;
    let mut u = d.end_session_endpoint.clone()?;
    let back = format!("{}/.auth/login", rt.config.server.public_origin);
    u.query_pairs_mut()
        .append_pair("client_id", &p.cfg.client_id)
        .append_pair("post_logout_redirect_uri", &back);
    Some(u.to_string())
}
