//! Audit events: who signed in or out, who was refused, what configuration was applied.
//!
//! A separate stream (target `audit`): JSON lines in `[audit] file`, or the log stream. Fields
//! are chosen so that nothing secret can appear: usernames only when they name a configured
//! user (people type passwords into the username field: an unknown name is a keyed hash),
//! credentials only as a short hash of their id, never a cookie, token, password, header or
//! query string.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use aws_lc_rs::{digest, hmac};

use super::access::{json_str, text_value};
use super::sink::{Entry, Sink};
use super::trace::TraceId;
use crate::config::LogFormat;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// A login attempt (`outcome` says how it ended, `reason` why it failed).
    Login,
    /// Too many failed logins: the attempt was refused without checking the password.
    LoginRateLimited,
    /// A session ended or a token was revoked by its holder.
    Logout,
    /// Every session and token of a user ended.
    SignOutEverywhere,
    /// A request came with a session that had expired.
    SessionExpired,
    /// A JWT was put on the deny-list.
    TokenRevoked,
    /// An authenticated user was refused a protected route (403).
    AccessDenied,
    /// The configuration was reloaded (or a reload failed).
    ConfigReload,
    /// The set of users changed with a reload.
    UsersReload,
    /// A user enrolled a second factor (through an invite link).
    SecondFactorEnrolled,
}

impl AuditKind {
    /// The `event` field.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Login => "login",
            AuditKind::SecondFactorEnrolled => "second_factor_enrolled",
            AuditKind::LoginRateLimited => "login_rate_limited",
            AuditKind::Logout => "logout",
            AuditKind::SignOutEverywhere => "sign_out_everywhere",
            AuditKind::SessionExpired => "session_expired",
            AuditKind::TokenRevoked => "token_revoked",
            AuditKind::AccessDenied => "access_denied",
            AuditKind::ConfigReload => "config_reload",
            AuditKind::UsersReload => "users_reload",
        }
    }
}

/// Who an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditUser {
    /// A configured user, by name.
    Known(String),
    /// A name no user has, as a keyed hash (`user_hash`): attempts with one mistyped name can
    /// be correlated, a password typed into the field cannot be read back.
    Unknown(String),
}

/// One audit event.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// When.
    pub time: SystemTime,
    /// What.
    pub kind: AuditKind,
    /// `success`, `failure` or `info`.
    pub outcome: &'static str,
    /// Why it failed (a fixed word such as `bad_password`).
    pub reason: Option<&'static str>,
    /// Who.
    pub user: Option<AuditUser>,
    /// The client's address (after trusted-proxy processing).
    pub client: Option<IpAddr>,
    /// The route's name.
    pub route: Option<Arc<str>>,
    /// The request id (`X-Request-Id`).
    pub request_id: Option<Box<str>>,
    /// The W3C trace id, when the request carried one.
    pub trace_id: Option<TraceId>,
    /// `s:` + 12 hex digits of SHA-256 of the session id, or `t:` + … of the token id.
    pub credential: Option<String>,
    /// A free-form, non-secret detail (a count, a file name).
    pub detail: Option<String>,
    /// How a login was proved (RFC 8176 names, comma-separated: `pwd,otp`).
    pub amr: Option<Box<str>>,
}

/// Where a request came from, for the events it causes.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The client's address.
    pub client: IpAddr,
    /// The request id.
    pub request_id: Option<Box<str>>,
    /// The W3C trace id.
    pub trace_id: Option<TraceId>,
}

impl AuditEvent {
    /// An event of `kind` with `outcome` caused by a request from `o`.
    pub fn from(kind: AuditKind, outcome: &'static str, o: &Origin) -> AuditEvent {
        let mut e = AuditEvent::new(kind, outcome);
        e.client = Some(o.client);
        e.request_id = o.request_id.clone();
        e.trace_id = o.trace_id;
        e
    }

    /// An event of `kind` with `outcome`, everything else empty.
    pub fn new(kind: AuditKind, outcome: &'static str) -> AuditEvent {
        AuditEvent {
            time: SystemTime::now(),
            kind,
            outcome,
            reason: None,
            user: None,
            client: None,
            route: None,
            request_id: None,
            trace_id: None,
            credential: None,
            detail: None,
            amr: None,
        }
    }

    /// Appends the event as one line.
    pub fn format(&self, format: LogFormat, buf: &mut Vec<u8>) {
        let time = humantime::format_rfc3339_micros(self.time.max(std::time::UNIX_EPOCH));
        let (user_key, user) = match &self.user {
            Some(AuditUser::Known(u)) => ("user", Some(u.as_str())),
            Some(AuditUser::Unknown(h)) => ("user_hash", Some(h.as_str())),
            None => ("user", None),
        };
        let client = self.client.map(|c| c.to_string());
        let fields: [(&str, Option<&str>); 10] = [
            ("reason", self.reason),
            ("amr", self.amr.as_deref()),
            (user_key, user),
            ("client", client.as_deref()),
            ("route", self.route.as_deref()),
            ("request_id", self.request_id.as_deref()),
            ("trace_id", self.trace_id.as_ref().map(|t| t.as_str())),
            ("credential", self.credential.as_deref()),
            ("detail", self.detail.as_deref()),
            ("", None),
        ];
        match format {
            LogFormat::Json => {
                let _ = write!(
                    buf,
                    "{{\"timestamp\":\"{time}\",\"level\":\"INFO\",\"target\":\"audit\",\"event\":\"{}\",\"outcome\":\"{}\"",
                    self.kind.as_str(),
                    self.outcome
                );
                for (k, v) in fields {
                    if let Some(v) = v {
                        let _ = write!(buf, ",\"{k}\":");
                        json_str(buf, v);
                    }
                }
                buf.extend_from_slice(b"}\n");
            }
            LogFormat::Text => {
                let _ = write!(
                    buf,
                    "{time}  INFO audit: event={} outcome={}",
                    self.kind.as_str(),
                    self.outcome
                );
                for (k, v) in fields {
                    if let Some(v) = v {
                        let _ = write!(buf, " {k}=");
                        text_value(buf, v);
                    }
                }
                buf.push(b'\n');
            }
        }
    }
}

/// The audit stream of one gateway.
pub struct Audit {
    enabled: bool,
    sink: Sink,
    format: LogFormat,
    key: hmac::Key,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("enabled", &self.enabled)
            .field("format", &self.format)
            .finish()
    }
}

impl Audit {
    /// An audit stream writing to `sink` in `format`, hashing unknown usernames with `key`.
    pub fn new(enabled: bool, sink: Sink, format: LogFormat, key: &[u8]) -> Audit {
        Audit {
            enabled,
            sink,
            format,
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// Whether events are written at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Queues `e` (never blocks; dropped and counted when the queue is full).
    pub fn emit(&self, e: AuditEvent) {
        if self.enabled {
            self.sink.push(Entry::Audit(Box::new(e), self.format));
        }
    }

    /// Waits until queued events are written (shutdown, tests).
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        self.sink.flush(timeout)
    }

    /// The sink events go to.
    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// `name` as an event may show it: itself when `known`, else a keyed hash.
    pub fn user(&self, name: &str, known: bool) -> AuditUser {
        if known {
            AuditUser::Known(name.to_string())
        } else {
            let tag = hmac::sign(&self.key, name.as_bytes());
            AuditUser::Unknown(hex(&tag.as_ref()[..8]))
        }
    }
}

/// `prefix` + the first 6 bytes of SHA-256 of `id`, in hex: enough to tell credentials apart in
/// an investigation, useless to present as one.
pub fn credential_hash(prefix: &str, id: &str) -> String {
    let d = digest::digest(&digest::SHA256, id.as_bytes());
    format!("{prefix}:{}", hex(&d.as_ref()[..6]))
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_unknown_username_is_a_stable_keyed_hash_never_the_name() {
        let sink = Sink::spawn("t", Box::new(std::io::sink())).unwrap();
        let a = Audit::new(
            true,
            sink.clone(),
            LogFormat::Json,
            b"k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1",
        );
        let b = Audit::new(
            true,
            sink,
            LogFormat::Json,
            b"k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2",
        );
        let h1 = a.user("hunter2-password", false);
        assert_eq!(h1, a.user("hunter2-password", false));
        assert_ne!(h1, b.user("hunter2-password", false), "keyed");
        let AuditUser::Unknown(h) = h1 else { panic!() };
        assert_eq!(h.len(), 16);
        assert!(!h.contains("hunter2"));
        assert_eq!(a.user("alice", true), AuditUser::Known("alice".into()));
    }

    #[test]
    fn audit_event_json_has_schema_fields_and_omits_empty_ones() {
        let mut e = AuditEvent::new(AuditKind::Login, "failure");
        e.reason = Some("bad_password");
        e.user = Some(AuditUser::Unknown("00aa".into()));
        e.client = Some("10.0.0.1".parse().unwrap());
        e.credential = Some(credential_hash("s", "secret-session-id"));
        let mut buf = Vec::new();
        e.format(LogFormat::Json, &mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["target"], "audit");
        assert_eq!(v["event"], "login");
        assert_eq!(v["outcome"], "failure");
        assert_eq!(v["reason"], "bad_password");
        assert_eq!(v["user_hash"], "00aa");
        assert!(v.get("user").is_none());
        assert!(v.get("route").is_none());
        assert_eq!(v["client"], "10.0.0.1");
        assert!(v["credential"].as_str().unwrap().starts_with("s:"));
        assert!(!String::from_utf8(buf)
            .unwrap()
            .contains("secret-session-id"));
    }
}
