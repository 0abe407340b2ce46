//! The login and logout pages: self-contained HTML (no external assets), escaped values,
//! accessible (labels, autofocus, an error area announced to screen readers), no JavaScript.

use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};

/// What the login page offers besides (or instead of) the password form.
#[derive(Debug, Clone, Copy)]
pub struct Methods<'a> {
    /// The password form is shown.
    pub password: bool,
    /// One button per external provider: (id, label).
    pub providers: &'a [(String, String)],
}

/// The login page: one link per external provider (plain links: no JavaScript), then the
/// password form unless it is switched off.
pub fn login_page(
    csrf: &str,
    rd: &str,
    error: Option<&str>,
    username: &str,
    demo_hint: bool,
    methods: Methods<'_>,
) -> String {
    let rd_q = percent_encoding::utf8_percent_encode(rd, super::QUERY_VALUE).to_string();
    let mut sso = String::new();
    for (id, label) in methods.providers {
        sso.push_str(&format!(
            "<a class=\"sso\" href=\"/.auth/oidc/{id}/start?rd={rd}\">Sign in with {label}</a>",
            id = attr(id),
            rd = attr(&rd_q),
            label = text(label),
        ));
    }
    if !methods.password {
        let err = match error {
            Some(e) => format!("<p class=\"error\" role=\"alert\">{}</p>", text(e)),
            None => String::new(),
        };
        return format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><meta name=\"referrer\" content=\"same-origin\"><title>Sign in</title><style>{css}</style></head><body><main class=\"card\"><h1>Sign in</h1>{err}{sso}</main></body></html>",
            css = crate::PAGE_CSS,
        );
    }
    if !sso.is_empty() {
        sso.push_str("<p class=\"or\">or with your password</p>");
    }
    let err = match error {
        Some(e) => format!(
            "<p class=\"error\" role=\"alert\" id=\"login-error\">{}</p>",
            text(e)
        ),
        None => String::new(),
    };
    let hint = if demo_hint {
        "<p class=\"hint\">Demo mode: sign in as <code>demo</code> / <code>authgate-demo</code>. Remove the demo user before exposing this gateway.</p>"
    } else {
        ""
    };
    let described = if error.is_some() {
        " aria-describedby=\"login-error\""
    } else {
        ""
    };
    let (uf, pf) = if username.is_empty() {
        (" autofocus", "")
    } else {
        ("", " autofocus")
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><meta name=\"referrer\" content=\"same-origin\"><title>Sign in</title><style>{css}</style></head><body><main class=\"card\"><h1>Sign in</h1>{hint}{err}{sso}<form method=\"post\" action=\"/.auth/login\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"rd\" value=\"{rd}\"><label for=\"username\">Username</label><input id=\"username\" name=\"username\" type=\"text\" autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\" required value=\"{user}\"{uf}{described}><label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required{pf}{described}><button type=\"submit\">Sign in</button></form></main></body></html>",
        css = crate::PAGE_CSS,
        csrf = attr(csrf),
        rd = attr(rd),
        user = attr(username),
    )
}

/// The logout confirmation form (logout itself is a CSRF-protected POST).
pub fn logout_page(csrf: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>Sign out</title><style>{css}</style></head><body><main class=\"card\"><h1>Sign out</h1><form method=\"post\" action=\"/.auth/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Sign out</button></form><form method=\"post\" action=\"/.auth/logout?all=1\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\" class=\"secondary\">Sign out everywhere</button></form></main></body></html>",
        css = crate::PAGE_CSS,
        csrf = attr(csrf),
    )
}

/// The second step of a login (or a step-up): a one-time code from the authenticator app, or a
/// recovery code. Works without JavaScript; `one-time-code` lets phones offer the code, the
/// numeric keyboard comes from `inputmode`.
pub fn otp_page(csrf: &str, rd: &str, error: Option<&str>, step_up: bool) -> String {
    let err = match error {
        Some(e) => format!(
            "<p class=\"error\" role=\"alert\" id=\"otp-error\">{}</p>",
            text(e)
        ),
        None => String::new(),
    };
    let described = if error.is_some() {
        " aria-describedby=\"otp-error\""
    } else {
        ""
    };
    let lead = if step_up {
        "This page needs your second factor."
    } else {
        "Enter the code from your authenticator app."
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><meta name=\"referrer\" content=\"same-origin\"><title>Verification code</title><style>{css}</style></head><body><main class=\"card\"><h1>Verification code</h1><p>{lead}</p>{err}<form method=\"post\" action=\"/.auth/login/otp\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"rd\" value=\"{rd}\"><label for=\"code\">6-digit code</label><input id=\"code\" name=\"code\" type=\"text\" inputmode=\"numeric\" pattern=\"[0-9 ]*\" maxlength=\"8\" autocomplete=\"one-time-code\" autofocus{described}><details><summary>Use a recovery code</summary><label for=\"recovery_code\">Recovery code</label><input id=\"recovery_code\" name=\"recovery_code\" type=\"text\" autocomplete=\"off\" autocapitalize=\"none\" spellcheck=\"false\" maxlength=\"32\"></details><button type=\"submit\">Verify</button></form></main></body></html>",
        css = crate::PAGE_CSS,
        csrf = attr(csrf),
        rd = attr(rd),
    )
}

fn shell(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><meta name=\"referrer\" content=\"no-referrer\"><title>{t}</title><style>{css}</style></head><body><main class=\"card\"><h1>{t}</h1>{body}</main></body></html>",
        t = text(title),
        css = crate::PAGE_CSS,
    )
}

fn error_para(error: Option<&str>) -> String {
    error.map_or(String::new(), |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", text(e))
    })
}

/// Enrolment, step 1: the invited user proves their password.
pub fn enrol_password_page(csrf: &str, token: &str, username: &str, error: Option<&str>) -> String {
    shell(
        "Set up your authenticator",
        &format!(
            "<p>Signing in as <strong>{user}</strong>.</p>{err}<form method=\"post\" action=\"/.auth/totp/enroll\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"t\" value=\"{token}\"><label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required autofocus><button type=\"submit\">Continue</button></form>",
            user = text(username),
            err = error_para(error),
            csrf = attr(csrf),
            token = attr(token),
        ),
    )
}

/// Enrolment, step 2: scan the QR code (inline SVG) or type the key, then confirm with a code.
pub fn enrol_scan_page(
    csrf: &str,
    token: &str,
    sealed: &str,
    svg: &str,
    key_base32: &str,
    error: Option<&str>,
) -> String {
    shell(
        "Scan with your authenticator app",
        &format!(
            "<div class=\"qr\" role=\"img\" aria-label=\"QR code of your authenticator key\">{svg}</div><p>Or enter this key by hand: <code>{key}</code></p>{err}<form method=\"post\" action=\"/.auth/totp/enroll\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"t\" value=\"{token}\"><input type=\"hidden\" name=\"sealed\" value=\"{sealed}\"><label for=\"code\">Code shown by the app</label><input id=\"code\" name=\"code\" type=\"text\" inputmode=\"numeric\" pattern=\"[0-9 ]*\" maxlength=\"8\" autocomplete=\"one-time-code\" required autofocus><button type=\"submit\">Confirm</button></form>",
            key = text(key_base32),
            err = error_para(error),
            csrf = attr(csrf),
            token = attr(token),
            sealed = attr(sealed),
        ),
    )
}

/// Enrolment done: the recovery codes, shown this once.
pub fn enrol_done_page(codes: &[String]) -> String {
    let items: String = codes
        .iter()
        .map(|c| format!("<li><code>{}</code></li>", text(c)))
        .collect();
    shell(
        "Your second factor is set up",
        &format!(
            "<p>Keep these recovery codes somewhere safe. Each works once, in place of a code, if you lose your device. They are shown only now.</p><ol class=\"codes\">{items}</ol><p><a href=\"/.auth/login\">Sign in</a></p>"
        ),
    )
}

/// A page with one message (an invalid link).
pub fn message_page(title: &str, message: &str) -> String {
    shell(title, &error_para(Some(message)))
}
