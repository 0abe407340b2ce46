//! Access policy: one decision for the built-in proxy, `/.auth/verify` and `authgate explain` —
//! may this request pass, and if not, what must the user do?
//!
//! A route's `[[routes.rules]]` are tried in order; the first rule whose conditions all hold
//! decides, except that a matching `access = "deny"` rule wins wherever it stands. A request no
//! rule matches gets the route's own `access` and allow lists. CORS preflights can bypass
//! authentication per route (`cors_preflight = "bypass"`), never a deny rule.

pub mod explain;
pub mod glob;

use std::net::IpAddr;

use http::Method;
use ipnet::IpNet;

pub use glob::Glob;

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAccess {
    /// No login needed (identity headers are still stripped, never injected).
    Public,
    /// 403, logged in or not.
    Deny,
    /// A logged-in user, restricted by the rule's (else the route's) allow lists.
    Authenticated,
}

impl RuleAccess {
    /// As written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAccess::Public => "public",
            RuleAccess::Deny => "deny",
            RuleAccess::Authenticated => "authenticated",
        }
    }
}

/// One `[[routes.rules]]` entry, compiled. An absent condition always holds.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// Any of these globs matches the normalised path.
    pub paths: Option<Vec<Glob>>,
    /// The method is one of these (upper case; compared ignoring case, since some apps fold it).
    pub methods: Option<Vec<String>>,
    /// The client address is in one of these.
    pub networks: Option<Vec<IpNet>>,
    /// The client address is in none of these.
    pub not_networks: Option<Vec<IpNet>>,
    /// What the rule does.
    pub access: Option<RuleAccess>,
    /// Groups allowed (any of); `None`: the route's.
    pub allow_groups: Option<Vec<String>>,
    /// Users allowed; `None`: the route's.
    pub allow_users: Option<Vec<String>>,
    /// `require = "mfa"`; `None`: the route's.
    pub require_mfa: Option<bool>,
    /// `max_auth_age`; `None`: the route's.
    pub max_auth_age: Option<std::time::Duration>,
}

impl Rule {
    /// What it does (`authenticated` unless it says otherwise).
    pub fn access(&self) -> RuleAccess {
        self.access.unwrap_or(RuleAccess::Authenticated)
    }

    /// Whether every condition holds for `f`.
    pub fn matches(&self, f: &Facts<'_>) -> bool {
        self.paths
            .as_ref()
            .is_none_or(|p| p.iter().any(|g| g.matches(f.path)))
            && self
                .methods
                .as_ref()
                .is_none_or(|m| m.iter().any(|x| x.eq_ignore_ascii_case(f.method.as_str())))
            && self
                .networks
                .as_ref()
                .is_none_or(|n| n.iter().any(|net| net.contains(&f.client)))
            && self
                .not_networks
                .as_ref()
                .is_none_or(|n| !n.iter().any(|net| net.contains(&f.client)))
    }

    /// Whether this rule matches every request `later` matches (so that `later`, after it, can
    /// never decide). Sufficient, not exact: it compares condition by condition.
    pub fn covers(&self, later: &Rule) -> bool {
        let paths = match (&self.paths, &later.paths) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|g| a.iter().any(|h| g.covered_by(h))),
        };
        let methods = match (&self.methods, &later.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
        };
        let networks = match (&self.networks, &later.networks) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|n| a.iter().any(|m| m.contains(n))),
        };
        // `later` holds only outside its not_networks; ours must lie inside them.
        let not_networks = match (&self.not_networks, &later.not_networks) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a.iter().all(|n| b.iter().any(|m| m.contains(n))),
        };
        paths && methods && networks && not_networks
    }

    /// Whether the rule looks at the client address.
    pub fn uses_network(&self) -> bool {
        self.networks.is_some() || self.not_networks.is_some()
    }
}

/// What happens to an unauthenticated request that needs a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unauthenticated {
    /// Browser navigation (GET/HEAD asking for HTML) is sent to the login page, the rest 401.
    #[default]
    Redirect,
    /// Always 401 JSON (API routes).
    Status401,
}

/// What the decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The normalised path.
    pub path: &'a str,
    /// The client address as resolved through `trusted_proxies` (the peer otherwise).
    pub client: IpAddr,
    /// Whether this is a CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`).
    pub preflight: bool,
}

/// What decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// `rules[i]` of the route.
    Rule(usize),
    /// The route's `cors_preflight = "bypass"`.
    Preflight,
    /// The route's own `access` and allow lists (no rule matched).
    Route,
}

/// The verdict for a request, before looking at who sent it.
#[derive(Debug, Clone, Copy)]
pub enum Verdict<'r> {
    /// Passes without a login.
    Public,
    /// 403 whoever asks.
    Deny,
    /// The request cannot be decided (a trusted proxy's `X-Forwarded-For` that is not an
    /// address, where a rule needs it): 400.
    Malformed,
    /// Needs a logged-in user; restricted to these lists when given (either one admits).
    Authenticate {
        /// Groups admitted.
        allow_groups: Option<&'r [String]>,
        /// Users admitted.
        allow_users: Option<&'r [String]>,
        /// How strongly, and how recently, they must have proved it.
        level: Level,
    },
}

/// The strength a request needs beyond "logged in".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Level {
    /// A second factor (`amr` with `otp`).
    pub mfa: bool,
    /// The login at most this long ago.
    pub max_auth_age: Option<std::time::Duration>,
}

/// What a logged-in user below the [`Level`] must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepUp {
    /// Prove the second factor.
    Mfa,
    /// Log in again (the login is older than `max_auth_age`).
    Fresh,
}

impl StepUp {
    /// The `step_up` query value and JSON `require` field.
    pub fn as_str(self) -> &'static str {
        match self {
            StepUp::Mfa => "mfa",
            StepUp::Fresh => "fresh",
        }
    }
}

impl Level {
    /// What a credential proved by `amr` at `auth_time` lacks at `now` (`None`: enough).
    pub fn lacks(
        &self,
        amr: crate::auth::factors::Amr,
        auth_time: u64,
        now: u64,
    ) -> Option<StepUp> {
        if let Some(max) = self.max_auth_age {
            if now.saturating_sub(auth_time) > max.as_secs() {
                return Some(StepUp::Fresh);
            }
        }
        (self.mfa && !crate::auth::factors::is_multi_factor(amr)).then_some(StepUp::Mfa)
    }
}

/// A route's policy, compiled with the route.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `access = "public"` on the route.
    pub public: bool,
    /// The route's allow lists.
    pub allow_groups: Option<Vec<String>>,
    /// The route's allow lists.
    pub allow_users: Option<Vec<String>>,
    /// The route's `require` and `max_auth_age`.
    pub level: Level,
    /// `[[routes.rules]]`, in order.
    pub rules: Vec<Rule>,
    /// `cors_preflight = "bypass"`.
    pub preflight_bypass: bool,
    /// `unauthenticated`.
    pub unauthenticated: Unauthenticated,
    /// Whether any rule reads the client address (else it is not resolved per request).
    pub uses_network: bool,
}

impl Policy {
    /// Whether the decision can depend on anything but the route (no rules, no preflight
    /// bypass): the request path then skips building [`Facts`].
    pub fn is_simple(&self) -> bool {
        self.rules.is_empty() && !self.preflight_bypass
    }

    /// Decides `f`. Globs see the path percent-decoded: the normalised path keeps sub-delimiters
    /// and non-ASCII escaped (`/v1/x%3Adelete`), which apps decode before they route, so a rule
    /// on `/v1/x:delete` must see that too. (Escapes that would decode into `/`, `\`, `;`, `?`,
    /// `#`, NUL or another escape were refused by normalisation.)
    pub fn decide(&self, f: &Facts<'_>) -> (DecidedBy, Verdict<'_>) {
        let decoded = if f.path.contains('%') {
            percent_encoding::percent_decode_str(f.path).decode_utf8_lossy()
        } else {
            std::borrow::Cow::Borrowed(f.path)
        };
        let f = &Facts {
            path: &decoded,
            ..*f
        };
        let mut first = None;
        for (i, r) in self.rules.iter().enumerate() {
            if !r.matches(f) {
                continue;
            }
            if r.access() == RuleAccess::Deny {
                return (DecidedBy::Rule(i), Verdict::Deny);
            }
            if first.is_none() {
                first = Some(i);
            }
        }
        if f.preflight && self.preflight_bypass {
            return (DecidedBy::Preflight, Verdict::Public);
        }
        match first {
            Some(i) => {
                let r = &self.rules[i];
                let v = match r.access() {
                    RuleAccess::Public => Verdict::Public,
                    RuleAccess::Deny => Verdict::Deny,
                    RuleAccess::Authenticated => {
                        // A rule that names who is admitted names all of them: its lists replace
                        // the route's as a pair (never one list from each: that would widen).
                        let own = r.allow_groups.is_some() || r.allow_users.is_some();
                        let (g, u) = if own {
                            (&r.allow_groups, &r.allow_users)
                        } else {
                            (&self.allow_groups, &self.allow_users)
                        };
                        Verdict::Authenticate {
                            allow_groups: g.as_deref(),
                            allow_users: u.as_deref(),
                            level: Level {
                                mfa: r.require_mfa.unwrap_or(self.level.mfa),
                                max_auth_age: r.max_auth_age.or(self.level.max_auth_age),
                            },
                        }
                    }
                };
                (DecidedBy::Rule(i), v)
            }
            None => (DecidedBy::Route, self.route_verdict()),
        }
    }

    /// The verdict of the route itself.
    pub fn route_verdict(&self) -> Verdict<'_> {
        if self.public {
            Verdict::Public
        } else {
            Verdict::Authenticate {
                allow_groups: self.allow_groups.as_deref(),
                allow_users: self.allow_users.as_deref(),
                level: self.level,
            }
        }
    }

    /// For each rule, the index of an earlier rule that makes it unreachable. A deny rule is
    /// never unreachable (it wins wherever it stands); an earlier deny rule hides everything it
    /// covers.
    pub fn shadowed(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (j, later) in self.rules.iter().enumerate() {
            if later.access() == RuleAccess::Deny {
                continue;
            }
            let by = self.rules[..j]
                .iter()
                .position(|earlier| earlier.covers(later))
                .or_else(|| {
                    self.rules[j + 1..]
                        .iter()
                        .position(|r| r.access() == RuleAccess::Deny && r.covers(later))
                        .map(|k| j + 1 + k)
                });
            if let Some(i) = by {
                out.push((j, i));
            }
        }
        out
    }
}

/// Whether `user` with `groups` is admitted by the allow lists (none: everyone logged in;
/// either list admits).
pub fn admits(
    allow_users: Option<&[String]>,
    allow_groups: Option<&[String]>,
    user: &str,
    groups: &[String],
) -> bool {
    let by_user = allow_users.map(|u| u.iter().any(|x| x == user));
    let by_group = allow_groups.map(|g| g.iter().any(|x| groups.contains(x)));
    match (by_user, by_group) {
        (None, None) => true,
        (Some(a), None) | (None, Some(a)) => a,
        (Some(a), Some(b)) => a || b,
    }
}

/// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method` (Fetch standard).
pub fn is_preflight(method: &Method, h: &http::HeaderMap) -> bool {
    method == Method::OPTIONS
        && h.contains_key(http::header::ORIGIN)
        && h.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(paths: &[&str], methods: &[&str], access: Option<RuleAccess>) -> Rule {
        Rule {
            paths: (!paths.is_empty())
                .then(|| paths.iter().map(|p| Glob::parse(p).unwrap()).collect()),
            methods: (!methods.is_empty()).then(|| methods.iter().map(|m| m.to_string()).collect()),
            access,
            ..Rule::default()
        }
    }

    fn facts<'a>(m: &'a Method, path: &'a str, ip: &str) -> Facts<'a> {
        Facts {
            method: m,
            path,
            client: ip.parse().unwrap(),
            preflight: false,
        }
    }

    #[test]
    fn first_match_decides_and_deny_wins_wherever_it_stands() {
        let mut deny_lan = Rule {
            networks: Some(vec!["10.0.0.0/8".parse().unwrap()]),
            access: Some(RuleAccess::Deny),
            ..Rule::default()
        };
        deny_lan.paths = Some(vec![Glob::parse("/admin/**").unwrap()]);
        let p = Policy {
            rules: vec![
                rule(
                    &["/api/health", "/static/**"],
                    &[],
                    Some(RuleAccess::Public),
                ),
                rule(&["/**"], &["POST"], None),
                deny_lan,
            ],
            ..Policy::default()
        };
        let get = Method::GET;
        let post = Method::POST;
        assert!(matches!(
            p.decide(&facts(&get, "/static/a.css", "1.2.3.4")),
            (DecidedBy::Rule(0), Verdict::Public)
        ));
        assert!(matches!(
            p.decide(&facts(&post, "/x", "1.2.3.4")),
            (DecidedBy::Rule(1), Verdict::Authenticate { .. })
        ));
        assert!(matches!(
            p.decide(&facts(&get, "/x", "1.2.3.4")),
            (DecidedBy::Route, Verdict::Authenticate { .. })
        ));
        assert!(matches!(
            p.decide(&facts(&post, "/admin/x", "10.1.2.3")),
            (DecidedBy::Rule(2), Verdict::Deny)
        ));
        let lower = Method::from_bytes(b"post").unwrap();
        assert!(matches!(
            p.decide(&facts(&lower, "/x", "1.2.3.4")),
            (DecidedBy::Rule(1), Verdict::Authenticate { .. })
        ));
    }

    #[test]
    fn shadowed_rules_are_found_and_deny_rules_never_are() {
        let p = Policy {
            rules: vec![
                rule(&["/api/**"], &[], None),
                rule(&["/api/admin/**"], &[], Some(RuleAccess::Public)),
                rule(&["/api/x"], &[], Some(RuleAccess::Deny)),
                rule(&["/other"], &["GET"], None),
                rule(&["/other"], &["GET", "POST"], None),
                rule(&["/other"], &["GET"], None),
            ],
            ..Policy::default()
        };
        assert_eq!(p.shadowed(), vec![(1, 0), (5, 3)]);
    }

    #[test]
    fn a_rules_allow_lists_replace_the_routes_as_a_pair() {
        let p = Policy {
            allow_groups: Some(vec!["staff".into()]),
            rules: vec![Rule {
                allow_users: Some(vec!["alice".into()]),
                ..rule(&["/admin/**"], &[], None)
            }],
            ..Policy::default()
        };
        let get = Method::GET;
        let (_, v) = p.decide(&facts(&get, "/admin/x", "1.2.3.4"));
        let Verdict::Authenticate {
            allow_groups,
            allow_users,
            ..
        } = v
        else {
            panic!("{v:?}");
        };
        let staff = vec!["staff".to_string()];
        assert!(admits(allow_users, allow_groups, "alice", &[]));
        assert!(
            !admits(allow_users, allow_groups, "bob", &staff),
            "the route's staff group does not widen the rule"
        );
    }

    #[test]
    fn allow_lists_admit_by_user_or_group() {
        let admins = vec!["admins".to_string()];
        let bob = vec!["bob".to_string()];
        assert!(admits(None, None, "x", &[]));
        assert!(admits(None, Some(&admins), "x", &admins));
        assert!(!admits(None, Some(&admins), "x", &[]));
        assert!(admits(Some(&bob), Some(&admins), "bob", &[]));
        assert!(!admits(Some(&bob), None, "alice", &admins));
    }
}
