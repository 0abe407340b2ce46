//! Authentication: who is making this request. One `Identity` (a user of the current snapshot)
//! behind two kinds of credential: a session cookie or a signed JWT.

pub mod cookies;
pub mod credentials;
pub mod external;
pub mod factors;
pub mod jwt;
pub mod password;
pub mod users;

/// Sessions and revocations are live state: they live in [`crate::store`].
pub use crate::store::{revocation, session};

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};

use crate::config::AuthMode;
use crate::pipeline::headers::{find_cookie, CookieLookup};
use crate::state::{Live, Runtime};
use crate::store::StoreUnavailable;
use session::unix_now;
use users::User;

/// The credential that authenticated a request.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A session-store entry.
    Session(session::SessionData),
    /// A verified JWT.
    Jwt(Arc<jwt::VerifiedToken>),
}

/// A successfully authenticated request.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The user, from the current snapshot.
    pub user: Arc<User>,
    /// How they proved it.
    pub credential: Credential,
    /// A re-issued cookie (JWT sliding renewal) to send with the response.
    pub renew: Option<HeaderValue>,
}

impl Authenticated {
    /// How the user proved it ([`factors`]).
    pub fn amr(&self) -> factors::Amr {
        match &self.credential {
            Credential::Session(s) => s.amr,
            Credential::Jwt(t) => t.amr,
        }
    }

    /// The external provider the login was made through, if any.
    pub fn provider(&self) -> Option<&str> {
        match &self.credential {
            Credential::Session(s) => s.via.as_ref().map(|v| &*v.provider),
            Credential::Jwt(t) => t.external.as_ref().map(|v| &*v.provider),
        }
    }

    /// When they logged in (Unix seconds).
    pub fn auth_time(&self) -> u64 {
        match &self.credential {
            Credential::Session(s) => s.created_unix,
            Credential::Jwt(t) => t.auth_time,
        }
    }
}

/// Where the raw credential was found.
enum Source<'a> {
    Cookie(&'a str),
    Bearer(&'a str),
}

fn credential_source<'a>(rt: &Runtime, headers: &'a HeaderMap) -> Option<Source<'a>> {
    match find_cookie(headers, &rt.config.auth.cookie_name) {
        CookieLookup::One(v) => return Some(Source::Cookie(v)),
        CookieLookup::Ambiguous => return None,
        CookieLookup::Absent => {}
    }
    if rt.bearer_enabled() {
        let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(Source::Bearer(token.trim()));
        }
    }
    None
}

/// Authenticates a request from its headers. `Ok(None)` means anonymous; every failure is
/// anonymous (fail closed), and the reason is logged at debug level without the credential.
/// `Err` means the live-state store cannot vouch for the credential right now (503, not
/// anonymous: an outage must not look like a logout).
pub fn authenticate(
    rt: &Runtime,
    live: &Live,
    headers: &HeaderMap,
) -> Result<Option<Authenticated>, StoreUnavailable> {
    authenticate_from(rt, live, headers, None)
}

/// [`authenticate`] for a request whose origin (client address, request id, trace id) the
/// events it causes should carry; `origin` is called only when an event is written (a session
/// seen expired), never on the way of an ordinary request.
pub fn authenticate_from(
    rt: &Runtime,
    live: &Live,
    headers: &HeaderMap,
    origin: Option<&dyn Fn() -> crate::telemetry::audit::Origin>,
) -> Result<Option<Authenticated>, StoreUnavailable> {
    use crate::telemetry::metrics::{AuthResult as R, Mechanism as M};
    let m = &rt.telemetry.metrics;
    let cookie_mech = match rt.config.auth.mode {
        AuthMode::Session => M::Session,
        AuthMode::Jwt => M::Jwt,
    };
    let Some(src) = credential_source(rt, headers) else {
        m.auth(cookie_mech, R::Missing);
        return Ok(None);
    };
    let mech = match src {
        Source::Cookie(_) => cookie_mech,
        Source::Bearer(_) => M::Bearer,
    };
    let outcome = |r: R| m.auth(mech, r);
    Ok(match rt.config.auth.mode {
        AuthMode::Session => {
            let Source::Cookie(v) = src else {
                outcome(R::Missing);
                return Ok(None);
            };
            let s = match live.sessions.lookup_detailed(v) {
                Ok(session::Lookup::Found(s)) => s,
                Ok(session::Lookup::Missing) => {
                    outcome(R::Invalid);
                    return Ok(None);
                }
                Ok(session::Lookup::Expired(username)) => {
                    outcome(R::Expired);
                    use crate::telemetry::audit::{AuditEvent, AuditKind};
                    let mut e = match origin {
                        Some(o) => AuditEvent::from(AuditKind::SessionExpired, "info", &o()),
                        None => AuditEvent::new(AuditKind::SessionExpired, "info"),
                    };
                    let known = rt.users.get(&username).is_some();
                    e.user = Some(rt.telemetry.audit.user(&username, known));
                    e.credential = Some(crate::telemetry::audit::credential_hash("s", v));
                    rt.telemetry.audit.emit(e);
                    return Ok(None);
                }
                Err(e) => {
                    outcome(R::StoreUnavailable);
                    return Err(e);
                }
            };
            let Some(user) = session_user(rt, &s) else {
                outcome(R::Revoked);
                return Ok(None);
            };
            outcome(R::Ok);
            Some(Authenticated {
                user,
                credential: Credential::Session(s),
                renew: None,
            })
        }
        AuthMode::Jwt => {
            let Some(keys) = rt.jwt.as_ref() else {
                return Ok(None);
            };
            let token = match src {
                Source::Cookie(v) | Source::Bearer(v) => v,
            };
            let now = unix_now();
            let max_lifetime = rt.config.auth.max_lifetime;
            let vt = match live.token_cache.verify(keys, token, now, max_lifetime) {
                Ok(vt) => vt,
                Err(e) => {
                    tracing::debug!(reason = %e, "jwt rejected");
                    outcome(if e.is_expiry() {
                        R::Expired
                    } else {
                        R::Invalid
                    });
                    return Ok(None);
                }
            };
            let user = match jwt_user(rt, live, &vt) {
                Ok(Some(u)) => u,
                Ok(None) => {
                    outcome(R::Revoked);
                    return Ok(None);
                }
                Err(e) => {
                    outcome(R::StoreUnavailable);
                    return Err(e);
                }
            };
            outcome(R::Ok);
            let renew = if matches!(src, Source::Cookie(_)) {
                renew_if_due(rt, &user, &vt, now)
            } else {
                None
            };
            Some(Authenticated {
                user,
                credential: Credential::Jwt(vt),
                renew,
            })
        }
    })
}

/// The short hash of a credential the audit stream shows: the session id's (`s:…`, from the
/// request's cookie) or the token's `jti` (`t:…`).
pub fn credential_hash(rt: &Runtime, headers: &HeaderMap, c: &Credential) -> Option<String> {
    use crate::telemetry::audit::credential_hash as h;
    match c {
        Credential::Jwt(vt) => Some(h("t", &vt.jti)),
        Credential::Session(_) => match credential_source(rt, headers)? {
            Source::Cookie(v) => Some(h("s", v)),
            Source::Bearer(_) => None,
        },
    }
}

/// The user a (live) session belongs to, if it still may act for them: the user exists in the
/// current snapshot and their password has not changed since the login — or, for a login
/// through an external provider, what [`crate::login::oidc::identity_of`] says.
pub fn session_user(rt: &Runtime, s: &session::SessionData) -> Option<Arc<User>> {
    if let Some(via) = &s.via {
        let u = crate::login::oidc::identity_of(rt, &s.username, s.password_version, via);
        if u.is_none() {
            tracing::debug!(user = %s.username, provider = %via.provider, "external login no longer stands");
        }
        return u;
    }
    let user = rt.users.get(&s.username)?;
    if user.password_version != s.password_version {
        tracing::debug!(user = %user.username, "session from before a password change");
        return None;
    }
    Some(Arc::clone(user))
}

/// The user a verified token belongs to, if it still may act for them: not revoked (its `jti`,
/// its login session, or every token of the user up to a sign-out-everywhere), the user exists,
/// and the token carries the user's current password version. Time limits (`exp`,
/// `max_lifetime`) are the verifier's.
/// `Err` when the revocation state cannot be vouched for (fail closed, as 503).
pub fn jwt_user(
    rt: &Runtime,
    live: &Live,
    vt: &jwt::VerifiedToken,
) -> Result<Option<Arc<User>>, StoreUnavailable> {
    if !live.revocations.vouched() {
        return Err(StoreUnavailable);
    }
    // The deny-lists are only consulted again for a cached token once something has been revoked
    // since it was last found clean (read the generation first: a revocation racing with the
    // lookups bumps it afterwards, forcing a re-check).
    let generation = live.revocations.generation();
    if !vt.revocations_checked.is_checked_at(generation) {
        if live.revocations.is_jti_revoked(&vt.jti)
            || live.revocations.is_jti_revoked(&vt.sid)
            || live.revocations.is_user_revoked(&vt.sub, vt.auth_time_ms)
        {
            tracing::debug!(user = %vt.sub, "jwt revoked");
            return Ok(None);
        }
        vt.revocations_checked.set_checked_at(generation);
    }
    if let Some(ext) = &vt.external {
        let Some(version) = vt.password_version else {
            return Ok(None);
        };
        // A token names the provider's user in `sub`; under "link" the identity is the local
        // user's, under "trust" the one the token describes.
        let linked = crate::auth::external::ExternalLogin {
            provider: ext.provider.clone(),
            identity: None,
            access_token: None,
        };
        let trusted = crate::login::oidc::identity_of(rt, &vt.sub, version, ext);
        return Ok(
            trusted.or_else(|| crate::login::oidc::identity_of(rt, &vt.sub, version, &linked))
        );
    }
    let Some(user) = rt.users.get(&vt.sub) else {
        return Ok(None);
    };
    if vt.password_version != Some(user.password_version) {
        tracing::debug!(user = %vt.sub, "jwt from before a password change");
        return Ok(None);
    }
    Ok(Some(Arc::clone(user)))
}

/// Sliding renewal: a fresh cookie once less than half the ttl is left, never past max_lifetime.
fn renew_if_due(
    rt: &Runtime,
    user: &User,
    vt: &jwt::VerifiedToken,
    now: u64,
) -> Option<HeaderValue> {
    let jwt_cfg = rt.config.auth.jwt.as_ref()?;
    let ttl = jwt_cfg.ttl.as_secs();
    let deadline = vt
        .auth_time
        .saturating_add(rt.config.auth.max_lifetime.as_secs());
    if vt.exp.saturating_sub(now) >= ttl / 2 || vt.exp >= deadline {
        return None;
    }
    issue_jwt_cookie(rt, user, Some(vt), session::unix_now_ms(), vt.amr).ok()
}

/// Issues a JWT for a new login of `user` through external provider `provider` and returns its
/// Set-Cookie value.
pub fn issue_external_jwt_cookie(
    rt: &Runtime,
    user: &User,
    provider: &str,
    now_ms: u64,
    amr: factors::Amr,
) -> Result<HeaderValue, String> {
    let keys = rt.jwt.as_ref().ok_or("jwt mode without keys")?;
    let stamp = jwt::Stamp {
        now_ms,
        password_version: Some(user.password_version),
        amr,
    };
    let trusted = matches!(user.hash, password::PasswordHashKind::None);
    let issued = keys
        .issue_external(
            &user.username,
            user.email.as_deref(),
            if trusted { user.name.as_deref() } else { None },
            &user.groups,
            provider,
            stamp,
            rt.config.auth.max_lifetime,
        )
        .map_err(|e| e.to_string())?;
    let max_age = issued.claims.exp.saturating_sub(now_ms / 1000);
    cookies::session_cookie(&rt.config, &issued.token, max_age)
}

/// Issues a JWT for `user` — a new login, or the renewal of `prev` (same login session) — and
/// returns its Set-Cookie value.
pub fn issue_jwt_cookie(
    rt: &Runtime,
    user: &User,
    prev: Option<&jwt::VerifiedToken>,
    now_ms: u64,
    amr: factors::Amr,
) -> Result<HeaderValue, String> {
    let keys = rt.jwt.as_ref().ok_or("jwt mode without keys")?;
    let max_lifetime = rt.config.auth.max_lifetime;
    let (email, groups) = (user.email.as_deref(), &user.groups);
    // Seconds and milliseconds from one clock reading: a new login's `auth_time_ms` must never
    // fall before the moment it was made (a sign-out-everywhere just before would catch it).
    let now = now_ms / 1000;
    let stamp = jwt::Stamp {
        now_ms,
        password_version: Some(user.password_version),
        amr,
    };
    let issued = match prev {
        Some(p) => keys.renew_stamped(p, email, groups, stamp, max_lifetime),
        None => keys.issue_stamped(&user.username, email, groups, now, stamp, max_lifetime),
    }
    .map_err(|e| e.to_string())?;
    let max_age = issued.claims.exp.saturating_sub(now);
    cookies::session_cookie(&rt.config, &issued.token, max_age)
}
