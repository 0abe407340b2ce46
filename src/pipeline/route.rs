//! Routing: host (exact, `*.suffix`, any) and the longest path prefix on whole segments.

use std::sync::Arc;

use http::uri::PathAndQuery;

use crate::config::{HostMatch, RouteConfig, UpstreamTarget};

/// A route of the runtime snapshot.
#[derive(Debug)]
pub struct Route {
    /// As configured.
    pub config: RouteConfig,
    /// `routes[i] → upstream` label for logs, prepared once.
    pub label: Arc<str>,
    /// Index of the route's upstream pool in the snapshot (unused for builtins).
    pub pool: usize,
    /// The upstream's `Host` value (`None` for builtins), built once.
    pub host_header: Option<http::HeaderValue>,
    /// The route's metric series (its name labels them).
    pub metrics: Arc<crate::telemetry::metrics::RouteMetrics>,
}

impl Route {
    /// Whether the client's `Upgrade` value (a comma-separated list of `protocol[/version]`)
    /// names only protocols this route tunnels. Anything else is forwarded as a plain request
    /// without its upgrade headers (the upgrade headers are hop-by-hop and already removed).
    pub fn allows_upgrade(&self, upgrade: &http::HeaderValue) -> bool {
        let mut any = false;
        for p in upgrade.as_bytes().split(|&b| b == b',') {
            let name = p
                .split(|&b| b == b'/')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            let ok = !never_tunnelled(name)
                && self
                    .config
                    .upgrades
                    .iter()
                    .any(|u| name.eq_ignore_ascii_case(u.as_bytes()));
            if !ok {
                return false;
            }
            any = true;
        }
        any
    }

    /// The upstream request target (origin form: the upstream's base path, the normalised path
    /// and the query); the connection is chosen by the route's pool, the `Host` header set apart.
    /// `original` is the client's request target: reused as is (no copy, no re-parse) when there
    /// is no base path and normalisation changed nothing.
    pub fn upstream_uri(
        &self,
        path: &str,
        query: Option<&str>,
        original: &http::Uri,
    ) -> Option<http::Uri> {
        let UpstreamTarget::Http { base_path, .. } = &self.config.upstream else {
            return None;
        };
        if base_path.is_empty() && original.path() == path {
            if let Some(pq) = original.path_and_query() {
                return Some(http::Uri::from(pq.clone()));
            }
        }
        let mut pq =
            String::with_capacity(base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        pq.push_str(base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        PathAndQuery::try_from(pq).ok().map(http::Uri::from)
    }
}

/// Protocols never tunnelled whatever a route lists: after switching to them the upstream would
/// speak HTTP (or TLS carrying HTTP) with the client directly, past routing, authentication and
/// the route rules — `h2c` and the other HTTP/2 names, `HTTP/x`, and RFC 2817's `TLS/x`. `name`
/// is the protocol name without its `/version`.
pub fn never_tunnelled(name: &[u8]) -> bool {
    let lower = |n: usize| name.get(..n).map(<[u8]>::to_ascii_lowercase);
    lower(2).as_deref() == Some(b"h2")
        || name.eq_ignore_ascii_case(b"http")
        || name.eq_ignore_ascii_case(b"tls")
}

/// All routes, ordered for matching.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}

fn host_rank(h: &HostMatch) -> u8 {
    match h {
        HostMatch::Exact(_) => 2,
        HostMatch::Suffix(_) => 1,
        HostMatch::Any => 0,
    }
}

/// Whether `path` is `prefix` or continues it at a segment boundary (`/`, or a `;` parameter,
/// which some servers strip: `/admin;x` must count as `/admin`).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with(';'),
        None => false,
    }
}

impl Router {
    /// Orders routes: longer prefixes first, then more specific hosts.
    pub fn new(mut routes: Vec<Route>) -> Router {
        routes.sort_by(|a, b| {
            b.config
                .path_prefix
                .len()
                .cmp(&a.config.path_prefix.len())
                .then(host_rank(&b.config.host).cmp(&host_rank(&a.config.host)))
        });
        Router { routes }
    }

    /// Finds the route for a host (lowercase, no port) and normalised path.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| {
            let host_ok = match (&r.config.host, host) {
                (HostMatch::Any, _) => true,
                (HostMatch::Exact(h), Some(x)) => h.eq_ignore_ascii_case(x),
                (HostMatch::Suffix(s), Some(x)) => {
                    x.len() > s.len()
                        && x.get(x.len() - s.len()..)
                            .is_some_and(|t| t.eq_ignore_ascii_case(s))
                }
                (_, None) => false,
            };
            host_ok && prefix_matches(&r.config.path_prefix, path)
        })
    }

    /// Routes in matching order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// Extracts the host name (no port, lowercase not guaranteed) from a Host header or authority.
pub fn host_without_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    h.rsplit_once(':').map_or(h, |(name, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            name
        } else {
            h
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn route(host: HostMatch, prefix: &str, idx: usize) -> Route {
        Route {
            config: RouteConfig {
                index: idx,
                name: format!("r{idx}"),
                host,
                path_prefix: prefix.trim_end_matches('/').into(),
                upstream: UpstreamTarget::Whoami,
                upstream_label: "builtin:whoami".into(),
                preserve_host: false,
                timeout: Duration::from_secs(1),
                tls_ca: None,
                upgrades: vec!["websocket".into()],
                allow_trace: false,
                pass_access_token: false,
                policy: crate::policy::Policy {
                    public: true,
                    ..Default::default()
                },
            },
            label: Arc::from("x"),
            metrics: Arc::new(crate::telemetry::metrics::Metrics::new("memory", false).route("x")),
            pool: 0,
            host_header: None,
        }
    }

    #[test]
    fn upstream_uri_is_origin_form_of_the_normalised_path_with_base_and_query() {
        let mut r = route(HostMatch::Any, "/", 0);
        let http = |base: &str| UpstreamTarget::Http {
            scheme: http::uri::Scheme::HTTP,
            authority: "app:3000".parse().unwrap(),
            base_path: base.into(),
        };
        r.config.upstream = http("");
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        // Unchanged path: the client's target, query and all.
        let got = r
            .upstream_uri("/a/b", Some("x=1"), &uri("/a/b?x=1"))
            .unwrap();
        assert_eq!(got, "/a/b?x=1");
        // Absolute-form request targets become origin form.
        let got = r
            .upstream_uri("/a/b", Some("x=1"), &uri("http://gw.test/a/b?x=1"))
            .unwrap();
        assert_eq!(got.to_string(), "/a/b?x=1");
        // Normalisation changed the path: the normalised one is sent.
        let got = r.upstream_uri("/a/b", None, &uri("/a/./c/../b")).unwrap();
        assert_eq!(got, "/a/b");
        // A base path is prepended.
        r.config.upstream = http("/base");
        let got = r
            .upstream_uri("/a/b", Some("x=1"), &uri("/a/b?x=1"))
            .unwrap();
        assert_eq!(got, "/base/a/b?x=1");
        // Builtins have none.
        r.config.upstream = UpstreamTarget::Whoami;
        assert!(r.upstream_uri("/a", None, &uri("/a")).is_none());
    }

    #[test]
    fn find_prefers_longest_prefix_on_segment_boundaries() {
        let r = Router::new(vec![
            route(HostMatch::Any, "/", 0),
            route(HostMatch::Any, "/app", 1),
            route(HostMatch::Any, "/app/admin", 2),
        ]);
        assert_eq!(r.find(None, "/app").unwrap().config.index, 1);
        assert_eq!(r.find(None, "/app/x").unwrap().config.index, 1);
        assert_eq!(r.find(None, "/apple").unwrap().config.index, 0);
        assert_eq!(r.find(None, "/app/admin/x").unwrap().config.index, 2);
        assert_eq!(
            r.find(None, "/app/admin;jsessionid=1")
                .unwrap()
                .config
                .index,
            2
        );
    }

    #[test]
    fn find_matches_exact_and_wildcard_hosts() {
        let r = Router::new(vec![
            route(HostMatch::Exact("a.example.com".into()), "/", 0),
            route(HostMatch::Suffix(".example.com".into()), "/", 1),
        ]);
        assert_eq!(r.find(Some("a.example.com"), "/").unwrap().config.index, 0);
        assert_eq!(r.find(Some("b.example.com"), "/").unwrap().config.index, 1);
        assert!(r.find(Some("example.com"), "/").is_none());
        assert!(r.find(Some("evil.com"), "/").is_none());
    }

    #[test]
    fn host_without_port_strips_port_and_brackets() {
        assert_eq!(host_without_port("a.com:8080"), "a.com");
        assert_eq!(host_without_port("[::1]:80"), "::1");
        assert_eq!(host_without_port("a.com"), "a.com");
    }
}
