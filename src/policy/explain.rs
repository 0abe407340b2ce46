//! `authgate explain`: which route and which rule decide a request, and what happens to it — the
//! same decision the proxy and `/.auth/verify` make, read out.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::Method;

use super::{DecidedBy, Facts, Rule, Unauthenticated, Verdict};
use crate::state::Runtime;

/// The request to explain.
#[derive(Debug, Clone)]
pub struct Question {
    /// The method.
    pub method: Method,
    /// The full URL (`https://host/path?query`).
    pub url: String,
    /// A configured user, or `None` for a request without a login.
    pub user: Option<String>,
    /// The client address (as the gateway would resolve it through `trusted_proxies`).
    pub from: IpAddr,
    /// Whether the request is a CORS preflight.
    pub preflight: bool,
    /// How the user proved it (`pwd`, `pwd,otp`).
    pub factors: crate::auth::factors::Amr,
}

fn list(v: &[impl std::fmt::Display]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("\"{x}\"")).collect();
    format!("[{}]", items.join(", "))
}

impl Rule {
    /// The rule as it would be written in `gateway.toml`, on one line.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.paths {
            parts.push(format!("paths = {}", list(p)));
        }
        if let Some(m) = &self.methods {
            parts.push(format!("methods = {}", list(m)));
        }
        if let Some(n) = &self.networks {
            parts.push(format!("networks = {}", list(n)));
        }
        if let Some(n) = &self.not_networks {
            parts.push(format!("not_networks = {}", list(n)));
        }
        if let Some(a) = self.access {
            parts.push(format!("access = \"{}\"", a.as_str()));
        }
        if let Some(g) = &self.allow_groups {
            parts.push(format!("allow_groups = {}", list(g)));
        }
        if let Some(u) = &self.allow_users {
            parts.push(format!("allow_users = {}", list(u)));
        }
        if let Some(m) = self.require_mfa {
            parts.push(format!(
                "require = \"{}\"",
                if m { "mfa" } else { "password" }
            ));
        }
        if let Some(a) = self.max_auth_age {
            parts.push(format!(
                "max_auth_age = \"{}\"",
                humantime::format_duration(a)
            ));
        }
        if parts.is_empty() {
            "(no conditions: matches every request)".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Explains `q` against `rt`. The text is for people; the first word of its last line
/// (`outcome: allow|deny|login`) is stable for scripts.
pub fn explain(rt: &Runtime, q: &Question) -> Result<String, String> {
    if q.url.contains('\\') {
        // The URL parser would read `\` as `/`; the gateway refuses it.
        return Err("the gateway refuses a backslash in a path with 400".into());
    }
    let url = url::Url::parse(&q.url).map_err(|e| format!("{:?} is not a URL: {e}", q.url))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("{:?}: expected an http:// or https:// URL", q.url));
    }
    let host = url.host_str().map(|h| {
        crate::pipeline::canonical_host(h.trim_start_matches('[').trim_end_matches(']'))
            .to_ascii_lowercase()
    });
    let path = crate::pipeline::path::normalize(url.path())
        .map_err(|e| format!("the gateway refuses this path with 400: {e}"))?
        .into_owned();
    let user = match &q.user {
        Some(name) => Some(
            rt.users
                .get(name.as_str())
                .ok_or_else(|| format!("no user {name:?} in the configuration"))?,
        ),
        None => None,
    };
    let mut out = String::new();
    let who = q.user.as_deref().unwrap_or("(not logged in)");
    let _ = writeln!(
        out,
        "request: {} {}{} from {} as {who}",
        q.method,
        host.as_deref().unwrap_or(""),
        path,
        q.from
    );
    if path == "/.auth" || path.starts_with("/.auth/") {
        let _ = writeln!(out, "route: none (a gateway endpoint)");
        let _ = writeln!(out, "outcome: gateway endpoint {path}");
        return Ok(out);
    }
    let Some(route) = rt.router.find(host.as_deref(), &path) else {
        let _ = writeln!(out, "route: none");
        let _ = writeln!(out, "outcome: deny (404, no route)");
        return Ok(out);
    };
    let c = &route.config;
    let _ = writeln!(
        out,
        "route: routes[{}] \"{}\" -> {}",
        c.index, c.name, c.upstream_label
    );
    let facts = Facts {
        method: &q.method,
        path: &path,
        client: q.from,
        preflight: q.preflight,
    };
    let (by, verdict) = c.policy.decide(&facts);
    match by {
        DecidedBy::Rule(i) => {
            let _ = writeln!(
                out,
                "decided by: routes[{}].rules[{i}]: {}",
                c.index,
                c.policy.rules[i].describe()
            );
        }
        DecidedBy::Preflight => {
            let _ = writeln!(
                out,
                "decided by: routes[{}].cors_preflight = \"bypass\"",
                c.index
            );
        }
        DecidedBy::Route => {
            let access = if c.policy.public {
                "public"
            } else {
                "authenticated"
            };
            let mut d = format!("access = \"{access}\"");
            if let Some(g) = &c.policy.allow_groups {
                let _ = write!(d, ", allow_groups = {}", list(g));
            }
            if let Some(u) = &c.policy.allow_users {
                let _ = write!(d, ", allow_users = {}", list(u));
            }
            if c.policy.level.mfa {
                d.push_str(", require = \"mfa\"");
            }
            if let Some(a) = c.policy.level.max_auth_age {
                let _ = write!(d, ", max_auth_age = \"{}\"", humantime::format_duration(a));
            }
            let rules = if c.policy.rules.is_empty() {
                "no rules"
            } else {
                "no rule matched"
            };
            let _ = writeln!(out, "decided by: routes[{}] ({rules}): {d}", c.index);
        }
    }
    let outcome = match verdict {
        Verdict::Public => "allow (public: no login needed, no identity headers)".to_string(),
        Verdict::Deny => "deny (403, deny rule)".to_string(),
        Verdict::Malformed => "deny (400, the client address cannot be read)".to_string(),
        Verdict::Authenticate {
            allow_groups,
            allow_users,
            level,
        } => match user {
            None => match c.policy.unauthenticated {
                Unauthenticated::Redirect => {
                    "login required (302 to the login page for a browser, 401 otherwise)".into()
                }
                Unauthenticated::Status401 => "login required (401)".into(),
            },
            Some(u) => {
                let factors = crate::auth::factors::names(q.factors).join(",");
                if !super::admits(allow_users, allow_groups, &u.username, &u.groups) {
                    format!(
                        "deny (403, {} with groups {} is not in the allow lists)",
                        u.username,
                        list(&u.groups)
                    )
                } else if level.lacks(q.factors, 0, 0) == Some(super::StepUp::Mfa) {
                    let enrolled = rt
                        .credentials
                        .as_ref()
                        .is_some_and(|c| c.get(&u.username).is_some());
                    if enrolled {
                        format!("step up (a second factor is needed; {} logged in with {factors}: asked for the code, then sent back)", u.username)
                    } else {
                        format!(
                            "deny (403, a second factor is needed and {} has none enrolled)",
                            u.username
                        )
                    }
                } else if super::admits(allow_users, allow_groups, &u.username, &u.groups) {
                    let age = level
                        .max_auth_age
                        .map(|a| format!(", login at most {} old", humantime::format_duration(a)))
                        .unwrap_or_default();
                    format!(
                        "allow (as {}, groups {}, factors {factors}{age})",
                        u.username,
                        list(&u.groups)
                    )
                } else {
                    format!(
                        "deny (403, {} with groups {} is not in the allow lists)",
                        u.username,
                        list(&u.groups)
                    )
                }
            }
        },
    };
    let _ = writeln!(out, "outcome: {outcome}");
    Ok(out)
}
