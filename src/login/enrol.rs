//! Self-service enrolment of a second factor through a single-use link (`authgate totp invite
//! --user alice`): no SMTP, and no hole for a stolen password — the link comes from the
//! operator, and it works only after the invited user's own password.
//!
//! `GET /.auth/totp/enroll?t=TOKEN` asks for the password; `POST` with the password shows a new
//! secret as an inline-SVG QR code and in base32, with the secret sealed (AES-GCM, bound to the
//! user, the invite and the time) in a hidden field; `POST` with the sealed secret and a code
//! from the app writes the enrolment, marks the invite used and shows the recovery codes once.
//! The confirming code's step is recorded as used, so it cannot be replayed as a login.

use std::sync::Arc;

use http::header;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::{
    check_csrf_token, check_origin, check_password, csrf_cookie_value, csrf_token, html, page,
    query_param, read_body, store_error,
};
use crate::body::Body;
use crate::error::GatewayError;
use crate::state::{Runtime, Shared};
use crate::telemetry::audit::{AuditEvent, AuditKind, Origin};

/// How long the confirmation step may take after the password (seconds).
const CONFIRM_WITHIN: u64 = 15 * 60;

const INVALID_LINK: &str =
    "This enrolment link is invalid, used, or expired. Ask your administrator for a new one.";

fn invalid_link() -> Response<Body> {
    html(
        StatusCode::NOT_FOUND,
        page::message_page("Enrolment link", INVALID_LINK),
    )
}

/// `GET /.auth/totp/enroll?t=TOKEN`.
pub(super) fn enrol_get<B>(rt: &Runtime, req: &Request<B>) -> Response<Body> {
    let token = query_param(req.uri().query(), "t").unwrap_or_default();
    let now = crate::store::session::unix_now();
    let Some((user, _, _)) = rt.credentials.as_ref().and_then(|c| c.invite(&token, now)) else {
        return invalid_link();
    };
    let (csrf, set) = csrf_token(rt, req.headers());
    let mut r = html(
        StatusCode::OK,
        page::enrol_password_page(&csrf, &token, user, None),
    );
    if let Some(c) = set {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

#[derive(Deserialize, Default)]
struct EnrolForm {
    #[serde(default)]
    t: String,
    csrf: Option<String>,
    password: Option<String>,
    sealed: Option<String>,
    code: Option<String>,
}

/// `POST /.auth/totp/enroll`.
pub(super) async fn enrol_post(
    shared: &Arc<Shared>,
    rt: &Runtime,
    req: Request<Incoming>,
    o: &Origin,
) -> Result<Response<Body>, GatewayError> {
    check_origin(rt, req.headers())?;
    let (parts, body) = read_body(req).await?;
    let form: EnrolForm = serde_urlencoded::from_bytes(&body)
        .map_err(|_| GatewayError::BadRequest("malformed form"))?;
    check_csrf_token(rt, &parts.headers, form.csrf.as_deref())?;
    let now = crate::store::session::unix_now();
    let Some(creds) = rt.credentials.as_ref() else {
        return Ok(invalid_link());
    };
    let Some((username, invite, replace)) = creds.invite(&form.t, now) else {
        return Ok(invalid_link());
    };
    let username = username.to_string();
    let csrf = csrf_cookie_value(rt, &parts.headers).unwrap_or_default();
    match (form.password, form.sealed, form.code) {
        (Some(password), None, None) => {
            // Step 1: the invited user's own password, under the login limits.
            let Some(_user) = check_password(shared, rt, &username, password, o).await? else {
                return Ok(html(
                    StatusCode::UNAUTHORIZED,
                    page::enrol_password_page(
                        csrf,
                        &form.t,
                        &username,
                        Some("That password is not right."),
                    ),
                ));
            };
            let secret = crate::auth::credentials::new_secret().map_err(GatewayError::Internal)?;
            scan_page(creds, csrf, &form.t, &username, &invite, &secret, now, None)
        }
        (None, Some(sealed), Some(code)) => {
            // Step 2: the code from the app proves it holds the secret.
            // The window counts from the password step; re-sealing after a wrong code keeps it.
            let Some((secret, made)) =
                creds.open_enrolment(&username, &invite, &sealed, now, CONFIRM_WITHIN)
            else {
                return Ok(invalid_link());
            };
            let live = &shared.live;
            if let Some(wait) = live.otp.attempt(&username).await.map_err(store_error)? {
                return Err(GatewayError::TooManyRequests { retry_after: wait });
            }
            let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
            let step = crate::auth::credentials::check_code(&secret, &username, &code, now);
            let accepted = match step {
                // The confirming code is spent: it cannot be replayed as a login.
                Some(step) => live
                    .otp
                    .accept_step(&username, step)
                    .await
                    .map_err(store_error)?,
                None => false,
            };
            if !accepted {
                return scan_page(
                    creds,
                    csrf,
                    &form.t,
                    &username,
                    &invite,
                    &secret,
                    made,
                    Some("That code is not right; check the app's clock and try the next one."),
                )
                .map(|mut r| {
                    *r.status_mut() = StatusCode::UNAUTHORIZED;
                    r
                });
            }
            live.otp.forgive(&username);
            // Single use across instances too, before the file says so.
            if !live
                .otp
                .use_once(&format!("invite:{invite}"))
                .await
                .map_err(store_error)?
            {
                return Ok(invalid_link());
            }
            let cfg = rt
                .config
                .auth
                .credentials
                .clone()
                .ok_or_else(|| GatewayError::Internal("no credentials file".into()))?;
            let (user, inv) = (username.clone(), invite.clone());
            let written = tokio::task::spawn_blocking(move || {
                crate::auth::credentials::enroll_secret(&cfg, &user, secret, replace, Some(&inv))
            })
            .await
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
            let enrolment = match written {
                Ok(e) => e,
                Err(m) => {
                    tracing::error!(user = %username, error = %m, "cannot write the enrolment");
                    return Err(GatewayError::Internal("cannot write the enrolment".into()));
                }
            };
            tracing::info!(user = %username, "second factor enrolled through an invite");
            let audit = &rt.telemetry.audit;
            if audit.enabled() {
                let mut e = AuditEvent::from(AuditKind::SecondFactorEnrolled, "success", o);
                e.user = Some(audit.user(&username, true));
                audit.emit(e);
            }
            // The running snapshot learns it at the next reload (the file watch does it by
            // itself; SIGHUP otherwise).
            Ok(html(
                StatusCode::OK,
                page::enrol_done_page(&enrolment.recovery_codes),
            ))
        }
        _ => Err(GatewayError::BadRequest("incomplete enrolment form")),
    }
}

#[allow(clippy::too_many_arguments)]
fn scan_page(
    creds: &crate::auth::credentials::Credentials,
    csrf: &str,
    token: &str,
    username: &str,
    invite: &str,
    secret: &[u8],
    now: u64,
    error: Option<&str>,
) -> Result<Response<Body>, GatewayError> {
    let sealed = creds
        .seal_enrolment(username, invite, secret, now)
        .map_err(GatewayError::Internal)?;
    let uri =
        crate::auth::credentials::otpauth_uri(secret, username).map_err(GatewayError::Internal)?;
    let svg = crate::auth::credentials::qr_svg(&uri).map_err(GatewayError::Internal)?;
    let svg = svg.split_once("?>").map_or(svg.as_str(), |(_, s)| s);
    let key = totp_rs::Secret::from(secret.to_vec()).to_base32();
    Ok(html(
        StatusCode::OK,
        page::enrol_scan_page(csrf, token, &sealed, svg, &key, error),
    ))
}
