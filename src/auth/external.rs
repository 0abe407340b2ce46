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
        })
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
}
