//! `[[auth.oidc]]`: external OpenID Connect providers, validated without contacting them.

use std::path::{Path, PathBuf};

use super::raw::RawOidc;
use super::{resolve_path, Collector, Secret};

/// Scopes asked for when `scopes` is not set.
pub const DEFAULT_SCOPES: [&str; 4] = ["openid", "profile", "email", "groups"];
/// ID token algorithms accepted when `id_token_algorithms` is not set: every asymmetric one
/// jsonwebtoken verifies. HS256 is never a default (it would make the client secret a signing
/// key anyone holding it could forge with).
pub const DEFAULT_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Whose identity an external login becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OidcUsers {
    /// The provider's user is the user (name, email and groups from its claims).
    Trust,
    /// The provider's user must be a `[[users]]` entry of the same name, whose identity it takes.
    Link,
}

/// One `[[auth.oidc]]` entry.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Path segment of its endpoints (`/.auth/oidc/<id>/…`).
    pub id: String,
    /// Button label.
    pub display_name: String,
    /// The issuer, exactly as configured (compared byte for byte).
    pub issuer: String,
    /// Where discovery is fetched: `{issuer}/.well-known/openid-configuration`.
    pub discovery_url: url::Url,
    /// OAuth client id.
    pub client_id: String,
    /// Confidential client's secret; `None`: a public client (PKCE only).
    pub client_secret: Option<Secret>,
    /// Scopes asked for.
    pub scopes: Vec<String>,
    /// The claim that names the user (falls back to `sub`).
    pub user_claim: String,
    /// The email claim.
    pub email_claim: String,
    /// The groups claim.
    pub groups_claim: String,
    /// Prepended to every group from this provider.
    pub groups_prefix: String,
    /// Who may sign in: email domains (lowercase), empty = any.
    pub allowed_email_domains: Vec<String>,
    /// Who may sign in: groups as the provider names them, empty = any.
    pub allowed_groups: Vec<String>,
    /// Trust or link.
    pub users: OidcUsers,
    /// Accept an email the provider has not verified.
    pub allow_unverified_email: bool,
    /// ID token `alg` values accepted.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Logout continues to the provider's `end_session_endpoint`.
    pub logout_at_provider: bool,
    /// Extra CA certificates (PEM) trusted for this provider's TLS, beside the public roots.
    pub ca_file: Option<PathBuf>,
    /// `{public_url}/.auth/oidc/<id>/callback`.
    pub redirect_uri: String,
}

fn parse_alg(s: &str) -> Option<jsonwebtoken::Algorithm> {
    use jsonwebtoken::Algorithm as A;
    Some(match s {
        "RS256" => A::RS256,
        "RS384" => A::RS384,
        "RS512" => A::RS512,
        "PS256" => A::PS256,
        "PS384" => A::PS384,
        "PS512" => A::PS512,
        "ES256" => A::ES256,
        "ES384" => A::ES384,
        "EdDSA" => A::EdDSA,
        "HS256" => A::HS256,
        "HS384" => A::HS384,
        "HS512" => A::HS512,
        _ => return None,
    })
}

/// Whether `host` is a loopback name or address (plain-http issuers are allowed only there).
fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(a) => a.is_loopback(),
        url::Host::Ipv6(a) => a.is_loopback(),
    }
}

fn read_secret(
    c: &mut Collector<'_>,
    key: &str,
    file: Option<&str>,
    env: Option<&str>,
    config_file: &Path,
) -> Option<Secret> {
    let key_env = format!("{key}_env");
    let key_file = format!("{key}_file");
    match (file, env) {
        (Some(_), Some(_)) => {
            c.err(key_file, "set either the _file or the _env key, not both");
            None
        }
        (Some(f), None) => {
            let p = resolve_path(config_file, f);
            match std::fs::read_to_string(&p) {
                Ok(s) if !s.trim().is_empty() => Some(Secret::new(s.trim())),
                Ok(_) => {
                    c.err(key_file, format!("{} is empty", p.display()));
                    None
                }
                Err(e) => {
                    c.err(key_file, format!("cannot read {}: {e}", p.display()));
                    None
                }
            }
        }
        (None, Some(v)) => match std::env::var(v) {
            Ok(s) if !s.trim().is_empty() => Some(Secret::new(s.trim())),
            _ => {
                c.err(
                    key_env,
                    format!("environment variable {v} is not set or empty"),
                );
                None
            }
        },
        (None, None) => None,
    }
}

fn nonempty_list(c: &mut Collector<'_>, key: &str, v: &Option<Vec<String>>) -> Vec<String> {
    match v {
        None => Vec::new(),
        Some(l) if l.is_empty() => {
            c.err(
                key,
                "an empty list admits nobody; remove the key to admit everyone",
            );
            Vec::new()
        }
        Some(l) => {
            for (i, s) in l.iter().enumerate() {
                if s.trim().is_empty() || s.trim() != s {
                    c.err(
                        format!("{key}[{i}]"),
                        "must be non-empty without surrounding spaces",
                    );
                }
            }
            l.clone()
        }
    }
}

/// Validates every `[[auth.oidc]]` entry; `public_url` is the gateway's (for the callback).
pub(super) fn validate(
    raw: &[RawOidc],
    public_url: &url::Url,
    file: &Path,
    c: &mut Collector<'_>,
) -> Vec<OidcConfig> {
    let mut out: Vec<OidcConfig> = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let k = |name: &str| format!("auth.oidc[{i}].{name}");
        if r.id.is_empty()
            || r.id.len() > 32
            || !r
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            c.err(
                k("id"),
                "must be 1 to 32 characters of a-z, 0-9, '-' and '_' (it is a path segment)",
            );
        }
        if out.iter().any(|o| o.id == r.id) {
            c.err(
                k("id"),
                format!("{:?} is used by an earlier provider", r.id),
            );
        }
        let discovery_url = match url::Url::parse(&r.issuer) {
            Ok(u) => {
                let plain_ok = u.host().as_ref().is_some_and(is_loopback);
                if u.scheme() != "https" && !(u.scheme() == "http" && plain_ok) {
                    c.err(
                        k("issuer"),
                        "must be an https URL (plain http only on a loopback address)",
                    );
                }
                if u.query().is_some() || u.fragment().is_some() {
                    c.err(
                        k("issuer"),
                        "must not have a query or fragment (OpenID Connect Discovery §2)",
                    );
                }
                let base = r.issuer.trim_end_matches('/');
                url::Url::parse(&format!("{base}/.well-known/openid-configuration")).ok()
            }
            Err(e) => {
                c.err(k("issuer"), format!("invalid URL {:?}: {e}", r.issuer));
                None
            }
        };
        if r.client_id.is_empty() {
            c.err(k("client_id"), "must not be empty");
        }
        let client_secret = read_secret(
            c,
            &k("client_secret"),
            r.client_secret_file.as_deref(),
            r.client_secret_env.as_deref(),
            file,
        );
        let scopes: Vec<String> = match &r.scopes {
            None => DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect(),
            Some(s) => s.clone(),
        };
        if !scopes.iter().any(|s| s == "openid") {
            c.err(k("scopes"), "must include \"openid\"");
        }
        if scopes
            .iter()
            .any(|s| s.is_empty() || s.bytes().any(|b| b <= b' ' || b == b'"' || b == b'\\'))
        {
            c.err(
                k("scopes"),
                "a scope must be non-empty, without spaces or quotes",
            );
        }
        let claim = |c: &mut Collector<'_>, name: &str, v: &Option<String>, default: &str| {
            let v = v.clone().unwrap_or_else(|| default.to_string());
            if v.is_empty() {
                c.err(k(name), "must not be empty");
            }
            v
        };
        let user_claim = claim(c, "user_claim", &r.user_claim, "preferred_username");
        let email_claim = claim(c, "email_claim", &r.email_claim, "email");
        let groups_claim = claim(c, "groups_claim", &r.groups_claim, "groups");
        let groups_prefix = r.groups_prefix.clone().unwrap_or_default();
        if groups_prefix.contains(',') || groups_prefix.chars().any(char::is_control) {
            c.err(
                k("groups_prefix"),
                "must not contain ',' or control characters",
            );
        }
        let allowed_email_domains: Vec<String> =
            nonempty_list(c, &k("allowed_email_domains"), &r.allowed_email_domains)
                .into_iter()
                .map(|d| d.trim_start_matches('@').to_ascii_lowercase())
                .collect();
        let allowed_groups = nonempty_list(c, &k("allowed_groups"), &r.allowed_groups);
        let users = match r.users.as_deref() {
            None | Some("trust") => OidcUsers::Trust,
            Some("link") => OidcUsers::Link,
            Some(o) => {
                c.err(
                    k("users"),
                    format!("unknown value {o:?} (expected \"trust\" or \"link\")"),
                );
                OidcUsers::Trust
            }
        };
        let mut algorithms = Vec::new();
        match &r.id_token_algorithms {
            None => algorithms.extend(DEFAULT_ALGORITHMS.iter().filter_map(|a| parse_alg(a))),
            Some(l) if l.is_empty() => c.err(k("id_token_algorithms"), "must not be empty"),
            Some(l) => {
                for (j, a) in l.iter().enumerate() {
                    match parse_alg(a) {
                        Some(alg) => {
                            let hmac = matches!(
                                alg,
                                jsonwebtoken::Algorithm::HS256
                                    | jsonwebtoken::Algorithm::HS384
                                    | jsonwebtoken::Algorithm::HS512
                            );
                            if hmac && client_secret.is_none() {
                                c.err(
                                    format!("auth.oidc[{i}].id_token_algorithms[{j}]"),
                                    format!("{a} verifies with the client secret: it needs client_secret_file or client_secret_env"),
                                );
                            }
                            algorithms.push(alg);
                        }
                        None => c.err(
                            format!("auth.oidc[{i}].id_token_algorithms[{j}]"),
                            format!(
                                "unknown or refused algorithm {a:?} (\"none\" is never accepted)"
                            ),
                        ),
                    }
                }
            }
        }
        let ca_file = r.ca_file.as_deref().map(|p| {
            let p = resolve_path(file, p);
            if let Err(e) = std::fs::metadata(&p) {
                c.err(k("ca_file"), format!("cannot read {}: {e}", p.display()));
            }
            p
        });
        let base = public_url.as_str().trim_end_matches('/');
        let redirect_uri = format!("{base}/.auth/oidc/{}/callback", r.id);
        let Some(discovery_url) = discovery_url else {
            continue;
        };
        out.push(OidcConfig {
            id: r.id.clone(),
            display_name: r.display_name.clone().unwrap_or_else(|| r.id.clone()),
            issuer: r.issuer.clone(),
            discovery_url,
            client_id: r.client_id.clone(),
            client_secret,
            scopes,
            user_claim,
            email_claim,
            groups_claim,
            groups_prefix,
            allowed_email_domains,
            allowed_groups,
            users,
            allow_unverified_email: r.allow_unverified_email.unwrap_or(false),
            algorithms,
            logout_at_provider: r.logout_at_provider.unwrap_or(false),
            ca_file,
            redirect_uri,
        });
    }
    // Several trusted providers: each one's groups must be told apart, or one provider's
    // `admins` (or a group it names `corp:admins`) would pass rules written for another's.
    let trusted: Vec<(usize, &OidcConfig)> = out
        .iter()
        .enumerate()
        .filter(|(_, o)| o.users == OidcUsers::Trust)
        .collect();
    if trusted.len() > 1 {
        for &(i, a) in &trusted {
            let key = format!("auth.oidc[{i}].groups_prefix");
            if a.groups_prefix.is_empty() {
                c.err(
                    key,
                    "required when several providers use users = \"trust\": e.g. groups_prefix = \"<id>:\"",
                );
            } else if let Some((_, b)) = trusted.iter().find(|&&(j, b)| {
                j != i
                    && !b.groups_prefix.is_empty()
                    && a.groups_prefix.starts_with(&b.groups_prefix)
            }) {
                c.err(
                    key,
                    format!(
                        "{:?} starts with provider {:?}'s prefix {:?}: that provider could name these groups",
                        a.groups_prefix, b.id, b.groups_prefix
                    ),
                );
            }
        }
    }
    out
}
