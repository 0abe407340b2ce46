//! Identities vouched for by an external provider ([`crate::login::oidc`]), carried inside the
//! credential (session record or JWT) because no `[[users]]` entry holds them.

use std::sync::Arc;

use super::users::User;

/// How a credential's login was made through an external provider.
#[derive(Debug, Clone)]
pub struct ExternalLogin {
    /// The `[[auth.oidc]]` id.
    pub provider: Arc<str>,
    /// `users = "trust"`: the identity as the provider described it. `None` for `"link"`: the
    /// `[[users]]` entry of the same name is the identity.
    pub identity: Option<Arc<User>>,
    /// The provider's access token, for routes with `pass_access_token` (session mode only).
    pub access_token: Option<AccessToken>,
}

/// A provider's access token kept beside a session. It is stored only sealed: encrypted with a
/// key derived from the session's cookie value, which neither the store nor Redis holds (the
/// record is keyed by a hash of it), so a store dump or `MONITOR` yields no usable token.
#[derive(Clone)]
pub enum AccessToken {
    /// Just received, not yet stored: [`ExternalLogin::sealed_for`] turns it into `Sealed`
    /// when the session's key exists; encoding never writes it.
    Clear {
        /// The token.
        token: Arc<str>,
        /// When it expires (Unix seconds; 0: the provider did not say).
        expires: u64,
    },
    /// `base64url(nonce || AES-256-GCM(token))`.
    Sealed {
        /// The sealed bytes, base64url.
        blob: Arc<str>,
        /// When it expires (Unix seconds; 0: the provider did not say).
        expires: u64,
    },
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessToken::Clear { expires, .. } => write!(f, "AccessToken::Clear(.., {expires})"),
            AccessToken::Sealed { expires, .. } => write!(f, "AccessToken::Sealed(.., {expires})"),
        }
    }
}

/// Longest access token kept (a bigger one is not forwarded: headers have limits too).
pub const MAX_ACCESS_TOKEN: usize = 8 * 1024;

const TOKEN_INFO: &[u8] = b"authgate provider access token v1";

fn token_key(session_key: &[u8; 32]) -> aws_lc_rs::aead::LessSafeKey {
    use aws_lc_rs::{aead, hkdf};
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"authgate").extract(session_key);
    let okm = prk
        .expand(&[TOKEN_INFO], &aead::AES_256_GCM)
        .expect("an AES-256 key is a valid HKDF-SHA256 output length");
    aead::LessSafeKey::new(aead::UnboundKey::from(okm))
}

fn seal(session_key: &[u8; 32], token: &str) -> Option<String> {
    use aws_lc_rs::aead::{Aad, Nonce, NONCE_LEN};
    use base64::Engine;
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).ok()?;
    let mut buf = token.as_bytes().to_vec();
    token_key(session_key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(TOKEN_INFO),
            &mut buf,
        )
        .ok()?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
}

fn open(session_key: &[u8; 32], blob: &str) -> Option<String> {
    use aws_lc_rs::aead::{Aad, Nonce, NONCE_LEN};
    use base64::Engine;
    let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(blob)
        .ok()?;
    if raw.len() < NONCE_LEN {
        return None;
    }
    let mut body = raw.split_off(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(&raw).ok()?;
    let plain = token_key(session_key)
        .open_in_place(nonce, Aad::from(TOKEN_INFO), &mut body)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

/// Same provider and the same identity (name, email, display name, groups, version).
impl PartialEq for ExternalLogin {
    fn eq(&self, o: &Self) -> bool {
        let same_user = |a: &User, b: &User| {
            a.username == b.username
                && a.email == b.email
                && a.name == b.name
                && a.groups == b.groups
                && a.password_version == b.password_version
        };
        self.provider == o.provider
            && match (&self.identity, &o.identity) {
                (None, None) => true,
                (Some(a), Some(b)) => same_user(a, b),
                _ => false,
            }
    }
}

impl Eq for ExternalLogin {}

/// The identity of a trusted-provider login as stored beside a session: compact JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored<'a> {
    #[serde(borrow)]
    p: std::borrow::Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    g: Vec<String>,
    /// Trusted (`true`, the identity is these fields) or linked.
    t: bool,
    /// The sealed access token, and when it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    x: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ExternalLogin {
    /// One line of JSON (a session record's last line in Redis).
    pub fn encode(&self) -> String {
        let s = Stored {
            p: std::borrow::Cow::Borrowed(&self.provider),
            e: self.identity.as_ref().and_then(|u| u.email.clone()),
            n: self.identity.as_ref().and_then(|u| u.name.clone()),
            g: self
                .identity
                .as_ref()
                .map(|u| u.groups.clone())
                .unwrap_or_default(),
            t: self.identity.is_some(),
            // Only ever sealed: a clear token is not written anywhere.
            a: match &self.access_token {
                Some(AccessToken::Sealed { blob, .. }) => Some(blob.to_string()),
                _ => None,
            },
            x: match &self.access_token {
                Some(AccessToken::Sealed { expires, .. }) => *expires,
                _ => 0,
            },
        };
        serde_json::to_string(&s).unwrap_or_default()
    }

    /// The inverse of [`ExternalLogin::encode`] for the session of `username` stamped with
    /// `version`; `None` when undecodable (an undecodable record reads as absent).
    pub fn decode(line: &str, username: &str, version: u64) -> Option<ExternalLogin> {
        let s: Stored<'_> = serde_json::from_str(line).ok()?;
        let identity = if s.t {
            Some(Arc::new(
                User::external(username, s.e.as_deref(), s.n.as_deref(), s.g, version).ok()?,
            ))
        } else {
            None
        };
        Some(ExternalLogin {
            provider: Arc::from(&*s.p),
            identity,
            access_token: s.a.map(|blob| AccessToken::Sealed {
                blob: Arc::from(blob),
                expires: s.x,
            }),
        })
    }

    /// This login as stored for the session whose cookie value encodes `session_key`: a clear
    /// access token sealed with that session's key (dropped if sealing fails).
    pub fn sealed_for(self: Arc<Self>, session_key: &[u8; 32]) -> Arc<Self> {
        let Some(AccessToken::Clear { token, expires }) = &self.access_token else {
            return self;
        };
        let sealed = seal(session_key, token).map(|blob| AccessToken::Sealed {
            blob: Arc::from(blob),
            expires: *expires,
        });
        Arc::new(ExternalLogin {
            provider: Arc::clone(&self.provider),
            identity: self.identity.clone(),
            access_token: sealed,
        })
    }

    /// The access token for a request made with the session key `session_key`, unless it has
    /// expired at `now` (Unix seconds) or cannot be opened with that key.
    pub fn access_token_for(&self, session_key: &[u8; 32], now: u64) -> Option<String> {
        match &self.access_token {
            Some(AccessToken::Sealed { blob, expires }) if *expires == 0 || now < *expires => {
                open(session_key, blob)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trusted_identity_survives_encoding_and_garbage_reads_as_absent() {
        let u = User::external(
            "alice",
            Some("alice@example.com"),
            Some("Alice"),
            vec!["corp:staff".into()],
            7,
        )
        .unwrap();
        let e = ExternalLogin {
            provider: Arc::from("corp"),
            identity: Some(Arc::new(u)),
            access_token: None,
        };
        let back = ExternalLogin::decode(&e.encode(), "alice", 7).unwrap();
        assert_eq!(&*back.provider, "corp");
        let id = back.identity.unwrap();
        assert_eq!(id.email.as_deref(), Some("alice@example.com"));
        assert_eq!(id.groups, ["corp:staff"]);
        assert_eq!(id.password_version, 7);
        assert_eq!(id.header_values.groups.as_ref().unwrap(), "corp:staff");
        let linked = ExternalLogin {
            provider: Arc::from("corp"),
            identity: None,
            access_token: None,
        };
        assert!(ExternalLogin::decode(&linked.encode(), "alice", 7)
            .unwrap()
            .identity
            .is_none());
        assert!(ExternalLogin::decode("{not json", "alice", 7).is_none());
        // A stored group that could split a header is refused, not passed on.
        let bad = r#"{"p":"corp","g":["a,b"],"t":true}"#;
        assert!(ExternalLogin::decode(bad, "alice", 7).is_none());
    }

    #[test]
    fn an_access_token_is_stored_sealed_for_its_session_only() {
        let clear = Arc::new(ExternalLogin {
            provider: Arc::from("corp"),
            identity: None,
            access_token: Some(AccessToken::Clear {
                token: Arc::from("at-secret-value"),
                expires: 2_000,
            }),
        });
        // Never written in the clear.
        assert!(!clear.encode().contains("at-secret-value"));
        let key = [7u8; 32];
        let sealed = clear.sealed_for(&key);
        let line = sealed.encode();
        assert!(!line.contains("at-secret-value"), "{line}");
        let back = ExternalLogin::decode(&line, "alice", 1).unwrap();
        assert_eq!(
            back.access_token_for(&key, 1_999).as_deref(),
            Some("at-secret-value")
        );
        // Expired, another session's key, a tampered blob: nothing.
        assert_eq!(back.access_token_for(&key, 2_000), None);
        assert_eq!(back.access_token_for(&[8u8; 32], 1_000), None);
        let tampered = line.replacen("\"a\":\"", "\"a\":\"A", 1);
        let t = ExternalLogin::decode(&tampered, "alice", 1).unwrap();
        assert_eq!(t.access_token_for(&key, 1_000), None);
    }
}
