//! Users of the runtime snapshot: identity data validated at load, header values built once.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;

use super::password::PasswordHashKind;
use crate::config::UserConfig;

/// Checks a username: it becomes a header value and a log field, so keep it plain.
pub fn validate_username(u: &str) -> Result<(), String> {
    if u.is_empty() || u.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !u
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'+'))
    {
        return Err(format!("{u:?}: use only letters, digits and . _ - @ +"));
    }
    Ok(())
}

/// Checks text that becomes (part of) a header value. Commas separate groups, so they are refused
/// in list items; control characters could split or smuggle headers.
pub fn validate_header_text(s: &str, allow_comma: bool) -> Result<(), String> {
    if s.is_empty() || s.len() > 256 {
        return Err("must be 1 to 256 characters".into());
    }
    if s.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters".into());
    }
    if !allow_comma && s.contains(',') {
        return Err("must not contain ','".into());
    }
    if s.trim() != s {
        return Err("must not start or end with whitespace".into());
    }
    HeaderValue::from_bytes(s.as_bytes())
        .map_err(|_| "not usable as a header value".to_string())?;
    Ok(())
}

/// The first 64 bits of SHA-256 over a domain tag and the configured hash string. The hash string
/// holds a random salt, so the fingerprint (readable in a JWT) tells nothing about the password:
/// testing a guess against it needs the salt, which never leaves the users file.
pub fn password_version(password_hash: &str) -> u64 {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"authgate password version\0");
    ctx.update(password_hash.as_bytes());
    let d = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// A user with everything the hot path needs prepared.
#[derive(Debug)]
pub struct User {
    /// Login name.
    pub username: Arc<str>,
    /// Email, if any.
    pub email: Option<String>,
    /// Display name, if any.
    pub name: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Password hash.
    pub hash: PasswordHashKind,
    /// A fingerprint of the configured password hash, stamped into every session and token at
    /// login: when the hash changes (a password change, on reload or restart), credentials
    /// issued before no longer match and are refused. See [`password_version`].
    pub password_version: u64,
    /// Shipped demo account.
    pub demo: bool,
    /// Identity header values, built once.
    pub header_values: IdentityValues,
}

/// Identity header values of one user (cloning a `HeaderValue` is a reference-count bump).
#[derive(Debug, Clone)]
pub struct IdentityValues {
    /// Username.
    pub user: HeaderValue,
    /// Email (empty string if none, as oauth2-proxy does).
    pub email: Option<HeaderValue>,
    /// Comma-separated groups.
    pub groups: Option<HeaderValue>,
    /// Display name.
    pub name: Option<HeaderValue>,
}

impl User {
    /// An identity an external provider vouched for (`users = "trust"`): no password, the
    /// provider's version (see [`crate::login::oidc`]) in place of a password version. Checks
    /// every value the way the users table does; the error names the offending claim.
    pub fn external(
        username: &str,
        email: Option<&str>,
        name: Option<&str>,
        groups: Vec<String>,
        version: u64,
    ) -> Result<User, String> {
        validate_username(username).map_err(|e| format!("user name: {e}"))?;
        if let Some(e) = email {
            validate_header_text(e, false).map_err(|m| format!("email: {m}"))?;
        }
        if let Some(n) = name {
            validate_header_text(n, true).map_err(|m| format!("name: {m}"))?;
        }
        for g in &groups {
            validate_header_text(g, false).map_err(|m| format!("group {g:?}: {m}"))?;
        }
        let hv = |s: &str| {
            HeaderValue::from_bytes(s.as_bytes()).map_err(|_| "not a header value".to_string())
        };
        let header_values = IdentityValues {
            user: hv(username)?,
            email: email.map(hv).transpose()?,
            groups: if groups.is_empty() {
                None
            } else {
                Some(hv(&groups.join(","))?)
            },
            name: name.map(hv).transpose()?,
        };
        Ok(User {
            username: Arc::from(username),
            email: email.map(str::to_string),
            name: name.map(str::to_string),
            groups,
            hash: PasswordHashKind::None,
            password_version: version,
            demo: false,
            header_values,
        })
    }
}

/// All users by name.
#[derive(Debug, Default)]
pub struct Users {
    by_name: HashMap<Arc<str>, Arc<User>>,
}

impl Users {
    /// Builds the user table from validated configuration.
    pub fn build(users: &[UserConfig]) -> Result<Users, String> {
        let mut by_name = HashMap::with_capacity(users.len());
        for u in users {
            let hash = super::password::check_hash(&u.password_hash)
                .map_err(|e| format!("{}.password_hash: {e}", u.key))?;
            let hv = |s: &str| {
                HeaderValue::from_bytes(s.as_bytes())
                    .map_err(|_| format!("{}: not a header value", u.key))
            };
            let header_values = IdentityValues {
                user: hv(&u.username)?,
                email: u.email.as_deref().map(hv).transpose()?,
                groups: if u.groups.is_empty() {
                    None
                } else {
                    Some(hv(&u.groups.join(","))?)
                },
                name: u.name.as_deref().map(hv).transpose()?,
            };
            let username: Arc<str> = Arc::from(u.username.as_str());
            by_name.insert(
                username.clone(),
                Arc::new(User {
                    username,
                    email: u.email.clone(),
                    name: u.name.clone(),
                    groups: u.groups.clone(),
                    hash,
                    password_version: password_version(&u.password_hash),
                    demo: u.demo,
                    header_values,
                }),
            );
        }
        Ok(Users { by_name })
    }

    /// Looks a user up.
    pub fn get(&self, name: &str) -> Option<&Arc<User>> {
        self.by_name.get(name)
    }

    /// Every user.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<User>> {
        self.by_name.values()
    }

    /// Whether any demo user is enabled.
    pub fn has_demo(&self) -> bool {
        self.by_name.values().any(|u| u.demo)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}
