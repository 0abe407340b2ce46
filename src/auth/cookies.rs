//! Set-Cookie values: HttpOnly, SameSite=Lax, Path=/, no Domain; Secure and `__Host-` under https.

use cookie::{Cookie, SameSite};
use http::HeaderValue;

use crate::config::Config;

/// Browsers drop cookies above 4096 bytes (name + value + attributes) without a word.
pub const MAX_COOKIE_BYTES: usize = 4096;

/// The credential cookie.
pub fn session_cookie(cfg: &Config, value: &str, max_age_secs: u64) -> Result<HeaderValue, String> {
    let c = Cookie::build((cfg.auth.cookie_name.as_str(), value))
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .secure(cfg.server.https)
        .max_age(cookie::time::Duration::seconds(
            max_age_secs.min(i64::MAX as u64) as i64,
        ))
        .build()
        .to_string();
    if c.len() > MAX_COOKIE_BYTES {
        return Err(format!(
            "cookie would be {} bytes, over the {MAX_COOKIE_BYTES}-byte browser limit",
            c.len()
        ));
    }
    HeaderValue::from_str(&c).map_err(|e| e.to_string())
}

/// Clears the credential cookie.
pub fn clear_session_cookie(cfg: &Config) -> HeaderValue {
    clear(cfg, &cfg.auth.cookie_name)
}

/// The CSRF double-submit cookie: Strict, since only our own forms need it.
pub fn csrf_cookie(cfg: &Config, token: &str) -> HeaderValue {
    let c = Cookie::build((cfg.auth.csrf_cookie_name.as_str(), token))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .secure(cfg.server.https)
        .build()
        .to_string();
    HeaderValue::from_str(&c).expect("cookie of base64url token is a valid header")
}

fn clear(cfg: &Config, name: &str) -> HeaderValue {
    let c = Cookie::build((name, ""))
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .secure(cfg.server.https)
        .max_age(cookie::time::Duration::ZERO)
        .build()
        .to_string();
    HeaderValue::from_str(&c).expect("cookie name validated at load")
}
