//! The gateway's error kinds and their single mapping to HTTP responses.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::Body;

/// Everything that ends a request early with an error status.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Malformed request (bad path, bad form, bad JSON, ...).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// No route for this host and path.
    #[error("no route")]
    NoRoute,
    /// Unknown gateway endpoint.
    #[error("not found")]
    NotFound,
    /// Wrong method for an endpoint.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Not logged in (API clients; browsers are redirected before this).
    #[error("authentication required")]
    Unauthenticated,
    /// Logged in but not allowed.
    #[error("forbidden")]
    Forbidden,
    /// The route needs a second factor and the user has none enrolled.
    #[error("no second factor enrolled")]
    NoSecondFactor,
    /// The request came from another site (Origin, Referer or Sec-Fetch-Site says so).
    #[error("cross-site request refused")]
    CrossSite,
    /// A form post without the CSRF token, or with one that does not match its cookie.
    #[error("missing or mismatched CSRF token")]
    CsrfToken,
    /// A request framing or feature the gateway does not implement (a transfer coding).
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// Body over the endpoint's cap.
    #[error("request body too large")]
    PayloadTooLarge,
    /// Content type the endpoint does not take.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// Rate limit hit.
    #[error("too many requests")]
    TooManyRequests {
        /// Seconds until the client may retry.
        retry_after: u64,
    },
    /// Every password-hashing slot stayed busy for the whole wait: the gateway is overloaded
    /// with logins (429 like a limit, but counted apart: nobody's attempts were limited).
    #[error("login hashing queue full")]
    LoginsBusy,
    /// Upstream refused or unreachable.
    #[error("upstream unreachable: {0}")]
    UpstreamConnect(String),
    /// Upstream failed mid-request.
    #[error("upstream failed: {0}")]
    Upstream(String),
    /// The TLS handshake with the upstream failed.
    #[error("upstream TLS failed: {0}")]
    UpstreamTls(String),
    /// The upstream reset or closed the connection mid-request.
    #[error("upstream reset: {0}")]
    UpstreamReset(String),
    /// Upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The live-state store cannot vouch for the credential (or take a write) right now: the
    /// client keeps its cookie and may retry.
    #[error("live-state store unavailable")]
    StoreUnavailable,
    /// The gateway is at its connection limit (a new tunnel would exceed it).
    #[error("connection limit reached")]
    Overloaded,
    /// Something that should not happen.
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// The one status mapping. Exhaustive on purpose: a new kind must choose its status.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::NoRoute | GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Unauthenticated => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden
            | GatewayError::NoSecondFactor
            | GatewayError::CrossSite
            | GatewayError::CsrfToken => StatusCode::FORBIDDEN,
            GatewayError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::TooManyRequests { .. } | GatewayError::LoginsBusy => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::UpstreamConnect(_)
            | GatewayError::Upstream(_)
            | GatewayError::UpstreamTls(_)
            | GatewayError::UpstreamReset(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Overloaded | GatewayError::StoreUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Short public message: never internal details.
    fn public_message(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(m) => m,
            GatewayError::NoRoute => "no route for this host and path",
            GatewayError::NotFound => "not found",
            GatewayError::MethodNotAllowed => "method not allowed",
            GatewayError::Unauthenticated => "authentication required",
            GatewayError::Forbidden => {
                "you are signed in, but your account is not allowed to access this resource"
            }
            GatewayError::NoSecondFactor => {
                "this page needs a second factor (an authenticator app), and your account has none; ask your administrator for an enrolment link"
            }
            GatewayError::CrossSite => {
                "refused: this request was sent from another site (its Origin, Referer or Sec-Fetch-Site header does not match this gateway)"
            }
            GatewayError::CsrfToken => {
                "the form's security token is missing or has expired; reload the page and submit it again"
            }
            GatewayError::NotImplemented(m) => m,
            GatewayError::PayloadTooLarge => "request body too large",
            GatewayError::UnsupportedMediaType => "unsupported content type",
            GatewayError::TooManyRequests { .. } => "too many attempts; try again later",
            GatewayError::LoginsBusy => "too many sign-ins at once; try again in a moment",
            GatewayError::UpstreamConnect(_)
            | GatewayError::Upstream(_)
            | GatewayError::UpstreamTls(_)
            | GatewayError::UpstreamReset(_) => "the upstream service is unavailable",
            GatewayError::UpstreamTimeout => "the upstream service did not answer in time",
            GatewayError::Overloaded => "the gateway is at its connection limit; try again later",
            GatewayError::StoreUnavailable => {
                "the gateway cannot check sign-ins right now; try again in a moment"
            }
            GatewayError::Internal(_) => "internal error",
        }
    }

    /// Whether the detail deserves a warning in the log (server-side faults).
    pub fn is_server_fault(&self) -> bool {
        self.status().is_server_error()
    }

    /// Builds the response: a small HTML page for browsers, JSON otherwise.
    pub fn into_response(self, wants_html: bool) -> Response<Body> {
        let status = self.status();
        let msg = self.public_message();
        let (body, ctype) = if wants_html {
            (
                Bytes::from(error_page(status, msg)),
                "text/html; charset=utf-8",
            )
        } else {
            (Bytes::from(serde_json::json!({"error": status.canonical_reason().unwrap_or("error"), "status": status.as_u16(), "message": msg}).to_string()), "application/json")
        };
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            GatewayError::TooManyRequests { retry_after } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
            }
            GatewayError::StoreUnavailable | GatewayError::LoginsBusy => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Cookie realm=\"authgate\""),
            );
        }
        resp
    }
}

/// A self-contained error page (no external assets).
pub fn error_page(status: StatusCode, msg: &str) -> String {
    let reason = status.canonical_reason().unwrap_or("Error");
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{code} {reason}</title><style>{css}</style></head><body><main class=\"card\"><h1>{code} {reason}</h1><p>{msg}</p><p><a href=\"/\">Home</a></p></main></body></html>",
        code = status.as_u16(),
        reason = html_escape::encode_text(reason),
        msg = html_escape::encode_text(msg),
        css = crate::PAGE_CSS,
    )
}

/// Whether the client prefers HTML (browser navigation).
pub fn wants_html(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}
