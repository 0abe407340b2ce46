//! The second factor, and the one step every login method ends in.
//!
//! [`mint`] establishes an identity and issues its credential (a session or a JWT cookie) with
//! the factors it was proved by: the password login calls it, the code step below calls it, a
//! later method (an external provider, passkeys) calls it too — nothing in the pipeline changes.
//!
//! A user with a second factor enrolled gets, after the right password, a *pending* step instead
//! of a credential: a random ticket in a short-lived cookie (its hash keys the pending step in
//! the live store, 5 minutes, a few tries) and the code page. `POST /.auth/login/otp` takes the
//! code (or a recovery code), from that ticket or — for a step-up — from an existing password
//! session, and mints a new credential with `amr = ["pwd", "otp"]` (a new session id: the
//! privilege changed).

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::{
    audit_login, body_kind, check_csrf_token, check_origin, csrf_cookie_value, csrf_token, html,
    json, page, read_body, redirect, safe_rd, store_error, with_outcome, Kind,
};
use crate::auth::external::ExternalLogin;
use crate::auth::factors::{self, Amr};
use crate::auth::users::User;
use crate::auth::{authenticate, cookies, issue_jwt_cookie, Credential};
use crate::body::Body;
use crate::config::AuthMode;
use crate::error::GatewayError;
use crate::pipeline::headers::{find_cookie, CookieLookup};
use crate::state::{Runtime, Shared};
use crate::store::otp::{Pending, PENDING_TTL};
use crate::telemetry::audit::{AuditKind, Origin};
use crate::telemetry::metrics::LoginResult;

/// Wrong codes one pending step allows before the password is asked again.
const TRIES_PER_TICKET: u8 = 3;

/// Issues the credential for `user` proved by `amr` and answers the login request: a redirect
/// to `rd` for a form, JSON otherwise. Audits the login with its factors.
#[allow(clippy::too_many_arguments)]
pub(super) async fn mint(
    shared: &Arc<Shared>,
    rt: &Runtime,
    user: &Arc<User>,
    amr: Amr,
    via: Option<Arc<ExternalLogin>>,
    kind: &Kind,
    rd: &str,
    o: &Origin,
) -> Result<Response<Body>, GatewayError> {
    let cookie = match rt.config.auth.mode {
        AuthMode::Session => {
            let id = shared
                .live
                .sessions
                .create(
                    user.username.clone(),
                    user.password_version,
                    amr,
                    via.clone(),
                )
                .await
                .map_err(store_error)?;
            cookies::session_cookie(&rt.config, &id, rt.config.auth.max_lifetime.as_secs())
                .map_err(GatewayError::Internal)?
        }
        AuthMode::Jwt => {
            let now_ms = crate::auth::session::unix_now_ms();
            let issued = match &via {
                None => issue_jwt_cookie(rt, user, None, now_ms, amr),
                Some(v) => {
                    crate::auth::issue_external_jwt_cookie(rt, user, &v.provider, now_ms, amr)
                }
            };
            issued.map_err(|e| {
                tracing::error!(user = %user.username, error = %e, "cannot issue token");
                GatewayError::Internal("token issue failed".into())
            })?
        }
    };
    let names = factors::names(amr);
    let provider = via.as_ref().map(|v| &*v.provider).unwrap_or("");
    tracing::info!(client = %o.client, user = %user.username, amr = %names.join(","), provider, "login succeeded");
    let audit = &rt.telemetry.audit;
    if audit.enabled() {
        let mut e = crate::telemetry::audit::AuditEvent::from(AuditKind::Login, "success", o);
        e.user = Some(audit.user(&user.username, true));
        e.amr = Some(names.join(",").into());
        if !provider.is_empty() {
            e.detail = Some(format!("provider={provider}"));
        }
        audit.emit(e);
    }
    let mut r = match kind {
        Kind::Json => json(
            StatusCode::OK,
            serde_json::json!({"ok": true, "user": &*user.username, "redirect": rd, "amr": names}),
        ),
        Kind::Form => redirect(&format!("{}{}", rt.config.server.public_origin, rd)),
    };
    r.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(r)
}

fn ticket_id(ticket: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, ticket.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn step_cookie(rt: &Runtime, value: &str, max_age: u64) -> HeaderValue {
    let c = cookie::Cookie::build((rt.config.auth.step_cookie_name.as_str(), value))
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .path("/")
        .secure(rt.config.server.https)
        .max_age(cookie::time::Duration::seconds(max_age as i64))
        .build()
        .to_string();
    HeaderValue::from_str(&c).expect("cookie of a base64url ticket is a valid header")
}

/// The password was right and `user` has a second factor: remember that for a few minutes and
/// ask for the code.
pub(super) async fn begin(
    shared: &Arc<Shared>,
    rt: &Runtime,
    user: &User,
    kind: &Kind,
    rd: &str,
    headers: &HeaderMap,
) -> Result<Response<Body>, GatewayError> {
    use base64::Engine;
    let key = crate::auth::session::random_key().map_err(GatewayError::Internal)?;
    let ticket = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
    let pending = Pending {
        username: user.username.to_string(),
        password_version: user.password_version,
        tries: 0,
        expires_ms: crate::store::session::unix_now_ms()
            .saturating_add(PENDING_TTL.as_millis() as u64),
    };
    shared
        .live
        .otp
        .put_pending(&ticket_id(&ticket), &pending)
        .await
        .map_err(store_error)?;
    let r = match kind {
        Kind::Json => json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "second_factor_required", "factor": "totp", "next": "/.auth/login/otp"}),
        ),
        Kind::Form => {
            let csrf = csrf_cookie_value(rt, headers).unwrap_or_default();
            html(StatusCode::OK, page::otp_page(csrf, rd, None, false))
        }
    };
    let mut r = with_outcome(r, LoginResult::SecondFactorRequired);
    r.headers_mut().append(
        header::SET_COOKIE,
        step_cookie(rt, &ticket, PENDING_TTL.as_secs()),
    );
    Ok(r)
}

#[derive(Deserialize, Default)]
struct CodeForm {
    #[serde(default)]
    code: String,
    #[serde(default)]
    recovery_code: String,
    csrf: Option<String>,
    rd: Option<String>,
}

/// Who is proving the second factor.
enum Subject {
    /// A pending login (its ticket's id and state).
    Pending(String, Pending),
    /// A session or token proved by the password alone (step-up).
    StepUp(Box<crate::auth::Authenticated>),
}

/// The code page for a step-up (`/.auth/login?step_up=mfa`): a signed-in user below the level
/// a route needs. `None` when the request carries no credential (then the password comes first).
pub(super) fn step_up_page<B>(
    shared: &Arc<Shared>,
    rt: &Runtime,
    req: &Request<B>,
    rd: &str,
) -> Option<Response<Body>> {
    let a = authenticate(rt, &shared.live, req.headers()).ok()??;
    let enrolled = rt
        .credentials
        .as_ref()
        .is_some_and(|c| c.get(&a.user.username).is_some());
    if !enrolled {
        return Some(GatewayError::NoSecondFactor.into_response(true));
    }
    let (csrf, set) = csrf_token(rt, req.headers());
    let mut r = html(StatusCode::OK, page::otp_page(&csrf, rd, None, true));
    if let Some(c) = set {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    Some(r)
}

/// `POST /.auth/login/otp`.
pub(super) async fn code_post(
    shared: &Arc<Shared>,
    rt: &Runtime,
    req: Request<Incoming>,
    o: &Origin,
) -> Result<Response<Body>, GatewayError> {
    let kind = body_kind(req.headers())?;
    check_origin(rt, req.headers())?;
    let (parts, body) = read_body(req).await?;
    let form: CodeForm = match kind {
        Kind::Form => serde_urlencoded::from_bytes(&body)
            .map_err(|_| GatewayError::BadRequest("malformed form"))?,
        Kind::Json => {
            serde_json::from_slice(&body).map_err(|_| GatewayError::BadRequest("malformed JSON"))?
        }
    };
    if matches!(kind, Kind::Form) {
        check_csrf_token(rt, &parts.headers, form.csrf.as_deref())?;
    }
    let rd = safe_rd(
        form.rd.as_deref().unwrap_or("/"),
        &rt.config.server.public_origin,
    );
    let live = &shared.live;
    let subject = match find_cookie(&parts.headers, &rt.config.auth.step_cookie_name) {
        CookieLookup::One(t) if t.len() == crate::auth::session::SESSION_COOKIE_LEN => {
            let id = ticket_id(t);
            match live.otp.take_pending(&id).await.map_err(store_error)? {
                Some(p) => Subject::Pending(id, p),
                None => return Ok(restart(rt, &kind, &rd)),
            }
        }
        _ => match authenticate(rt, live, &parts.headers) {
            Ok(Some(a)) => Subject::StepUp(Box::new(a)),
            Ok(None) => return Ok(restart(rt, &kind, &rd)),
            Err(_) => return Err(GatewayError::StoreUnavailable),
        },
    };
    let (user, amr_before) = match &subject {
        Subject::Pending(_, p) => match rt.users.get(&p.username) {
            // A password change (or removal) since the password step ends the attempt.
            Some(u) if u.password_version == p.password_version => (u.clone(), factors::PWD),
            _ => return Ok(restart(rt, &kind, &rd)),
        },
        Subject::StepUp(a) => (a.user.clone(), a.amr()),
    };
    let Some(enrolment) = rt
        .credentials
        .as_ref()
        .and_then(|c| c.get(&user.username).map(|e| (c, e)))
    else {
        return Err(GatewayError::NoSecondFactor);
    };
    let (creds, enrolment) = enrolment;
    let put_back = |tries: u8| {
        let s = &subject;
        async move {
            if let Subject::Pending(id, p) = s {
                if tries < TRIES_PER_TICKET {
                    let again = Pending { tries, ..p.clone() };
                    let _ = live.otp.put_pending(id, &again).await;
                }
            }
        }
    };
    let tries = match &subject {
        Subject::Pending(_, p) => p.tries,
        Subject::StepUp(_) => 0,
    };
    if let Some(wait) = live
        .otp
        .attempt(&user.username)
        .await
        .map_err(store_error)?
    {
        put_back(tries).await;
        audit_login(
            rt,
            o,
            AuditKind::LoginRateLimited,
            "failure",
            Some("too_many_codes"),
            &user.username,
            true,
        );
        return Err(GatewayError::TooManyRequests { retry_after: wait });
    }
    let code: String = form.code.chars().filter(|c| !c.is_whitespace()).collect();
    let ok = if !code.is_empty() {
        match enrolment.check(&code, crate::store::session::unix_now()) {
            // A code is accepted once, and never one older than the last accepted.
            Some(step) => live
                .otp
                .accept_step(&user.username, step)
                .await
                .map_err(store_error)?,
            None => false,
        }
    } else if !form.recovery_code.trim().is_empty() {
        match creds.recovery_match(&user.username, &form.recovery_code) {
            Some(hash) => {
                let fresh = live.otp.use_once(&hash).await.map_err(store_error)?;
                if fresh {
                    mark_used(rt, &user.username, hash);
                }
                fresh
            }
            None => false,
        }
    } else {
        false
    };
    if !ok {
        put_back(tries.saturating_add(1)).await;
        tracing::info!(client = %o.client, "second factor refused");
        audit_login(
            rt,
            o,
            AuditKind::Login,
            "failure",
            Some("bad_code"),
            &user.username,
            true,
        );
        const BAD_CODE: &str = "That code is not valid (or was already used).";
        return Ok(match kind {
            Kind::Json => json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "invalid_code", "message": BAD_CODE}),
            ),
            Kind::Form
                if tries.saturating_add(1) < TRIES_PER_TICKET
                    || matches!(subject, Subject::StepUp(_)) =>
            {
                let csrf = csrf_cookie_value(rt, &parts.headers).unwrap_or_default();
                let step_up = matches!(subject, Subject::StepUp(_));
                html(
                    StatusCode::UNAUTHORIZED,
                    page::otp_page(csrf, &rd, Some(BAD_CODE), step_up),
                )
            }
            // The last try of the step: back to the password, but a wrong code all the same.
            Kind::Form => with_outcome(restart(rt, &kind, &rd), LoginResult::BadCredentials),
        });
    }
    live.otp.forgive(&user.username);
    let amr = amr_before | factors::PWD | factors::OTP;
    // A step-up keeps how the login was made: a provider's login stays tied to that provider
    // (removing or changing it still ends the new credential). Its access token was sealed for
    // the old session's key and is not carried over.
    let via = match &subject {
        Subject::StepUp(a) => match &a.credential {
            Credential::Session(s) => s.via.as_ref(),
            Credential::Jwt(t) => t.external.as_ref(),
        }
        .map(|v| {
            Arc::new(ExternalLogin {
                provider: v.provider.clone(),
                identity: v.identity.clone(),
                access_token: None,
            })
        }),
        _ => None,
    };
    let mut r = mint(shared, rt, &user, amr, via, &kind, &rd, o).await?;
    // A step-up replaces the password-only session: the old id stops working.
    if let Subject::StepUp(a) = &subject {
        if let (Credential::Session(_), CookieLookup::One(v)) = (
            &a.credential,
            find_cookie(&parts.headers, &rt.config.auth.cookie_name),
        ) {
            live.sessions.remove(v).await.map_err(store_error)?;
        }
    }
    r.headers_mut()
        .append(header::SET_COOKIE, step_cookie(rt, "", 0));
    Ok(r)
}

/// The pending step is gone (expired, used up, or never there): back to the password.
fn restart(rt: &Runtime, kind: &Kind, rd: &str) -> Response<Body> {
    let r = match kind {
        Kind::Json => json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "login_expired", "message": "Sign in again: the code step expired or had too many tries."}),
        ),
        Kind::Form => {
            let q = percent_encoding::utf8_percent_encode(rd, super::QUERY_VALUE);
            let mut r = redirect(&format!(
                "{}/.auth/login?rd={q}",
                rt.config.server.public_origin
            ));
            r.headers_mut()
                .append(header::SET_COOKIE, step_cookie(rt, "", 0));
            r
        }
    };
    with_outcome(r, LoginResult::StepExpired)
}

/// Marks a used recovery code in the credentials file, off the async workers. The live store
/// already refuses it again; the file keeps that across restarts.
fn mark_used(rt: &Runtime, username: &str, hash: String) {
    let Some(cfg) = rt.config.auth.credentials.clone() else {
        return;
    };
    let user = username.to_string();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = crate::auth::credentials::mark_recovery_used(&cfg, &user, &hash) {
            tracing::error!(user = %user, error = %e, "cannot mark a recovery code used in the credentials file (the live store still refuses it)");
        }
    });
}
