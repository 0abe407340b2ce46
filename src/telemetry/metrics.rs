//! Prometheus metrics. Every series a request touches is created when the snapshot is built
//! (per route) or when the registry is (fixed label sets), and the request path only does
//! atomic adds: no lock, no label lookup, no allocation. Values owned elsewhere (sessions,
//! tunnels, queue drops) are read when a scrape builds its answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use super::sink::Stream;

/// Label pairs (only route names, fixed words and status classes: never a user, address, path
/// or query).
type Labels = Vec<(&'static str, String)>;

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// The route label of requests answered by the gateway's own endpoints (`/.auth/…`).
pub const GATEWAY_ROUTE: &str = "(gateway)";
/// The route label of requests refused before a route matched (malformed, no route).
pub const NO_ROUTE: &str = "(none)";

/// Request-duration buckets in seconds: from a fast proxied hop to a slow upstream.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Login-duration buckets: a login hashes a password (tens of milliseconds by design).
const LOGIN_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations updated with atomic adds only (`prometheus-client`'s own takes a
/// lock per observation). Clones share their counts.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    bounds_us: Box<[u64]>,
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram(Arc::new(HistogramInner {
            bounds,
            bounds_us: bounds.iter().map(|b| (b * 1e6) as u64).collect(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }))
    }

    /// Counts one observation.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let h = &self.0;
        let i = h
            .bounds_us
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(h.bounds_us.len());
        h.buckets[i].fetch_add(1, Ordering::Relaxed);
        h.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        let mut buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .zip(h.buckets.iter())
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        buckets.push((
            f64::INFINITY,
            h.buckets[h.bounds.len()].load(Ordering::Relaxed),
        ));
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// A counter whose value is owned elsewhere and copied in when a scrape is answered.
#[derive(Debug, Clone, Default)]
pub struct Mirror(Arc<AtomicU64>);

impl Mirror {
    /// Sets the value to show.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
}

impl TypedMetric for Mirror {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Mirror {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, u64, u64>(&self.0.load(Ordering::Relaxed), None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Status classes, in label order.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// How an upstream exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// No TCP connection could be made.
    Connect,
    /// No response head within the route's timeout.
    Timeout,
    /// The connection was reset or closed mid-exchange.
    Reset,
    /// The TLS handshake failed.
    Tls,
    /// Anything else (a malformed response, a protocol error).
    Other,
}

const UPSTREAM_KINDS: [&str; 5] = ["connect", "timeout", "reset", "tls", "other"];

/// Every series of one route.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    /// The route's name (the label value, and the access log's `route`).
    pub name: Arc<str>,
    /// Whether anything can read the series (`[metrics] listen`); else nothing is counted.
    enabled: bool,
    requests: [Counter; 5],
    duration: Histogram,
    upstream_duration: Histogram,
    upstream_errors: [Counter; 5],
    denials: Counter,
}

impl RouteMetrics {
    /// Counts a finished request (response head sent) and its duration.
    pub fn request(&self, status: u16, took: Duration) {
        if !self.enabled {
            return;
        }
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].inc();
        self.duration.observe(took);
    }

    /// Counts an upstream exchange that produced a response head, and its time.
    pub fn upstream_ok(&self, took: Duration) {
        if !self.enabled {
            return;
        }
        self.upstream_duration.observe(took);
    }

    /// Counts an upstream failure.
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        if !self.enabled {
            return;
        }
        self.upstream_errors[kind as usize].inc();
    }

    /// Counts an authorization denial (401 on a protected route, or 403).
    pub fn denied(&self) {
        if !self.enabled {
            return;
        }
        self.denials.inc();
    }
}

/// Credential kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// Session cookie.
    Session = 0,
    /// JWT cookie.
    Jwt = 1,
    /// `Authorization: Bearer` JWT.
    Bearer = 2,
}

const MECHANISMS: [&str; 3] = ["session", "jwt", "bearer"];

/// How authenticating a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// A valid credential.
    Ok = 0,
    /// No credential at all.
    Missing = 1,
    /// A credential that is malformed, forged, unknown or ambiguous.
    Invalid = 2,
    /// A credential past its lifetime (or idle timeout).
    Expired = 3,
    /// A credential ended by logout, sign-out-everywhere, a password change or user removal.
    Revoked = 4,
    /// The store could not vouch for it (503).
    StoreUnavailable = 5,
}

const AUTH_RESULTS: [&str; 6] = [
    "ok",
    "missing",
    "invalid",
    "expired",
    "revoked",
    "store_unavailable",
];

/// How a login attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginResult {
    /// Signed in.
    Ok = 0,
    /// Unknown user or wrong password (one answer for both).
    BadCredentials = 1,
    /// Refused by the failure limiter.
    RateLimited = 2,
    /// Cross-site, or a missing or wrong CSRF token.
    Csrf = 3,
    /// A malformed request (bad form, bad JSON, too large).
    Invalid = 4,
    /// The live-state store could not take the session.
    StoreUnavailable = 5,
    /// An external provider's answer was refused (bad token, unknown state, user not allowed).
    ProviderRefused = 6,
    /// An external provider could not be reached.
    ProviderUnavailable = 7,
    /// Every password-hashing slot stayed busy for the whole wait (429, not a limit).
    Busy = 8,
    /// The password was right; the user's second factor is asked for next.
    SecondFactorRequired = 9,
    /// A one-time code came for a code step that had expired, was used up or never existed.
    StepExpired = 10,
}

/// What a login attempt checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginMethod {
    /// `POST /.auth/login`: a user name and password.
    Password = 0,
    /// `POST /.auth/login/otp`: the second factor's one-time code.
    Otp = 1,
    /// `/.auth/oidc/<id>/callback`: an external provider's answer.
    Oidc = 2,
}

const LOGIN_METHODS: [&str; 3] = ["password", "otp", "oidc"];

const LOGIN_RESULTS: [&str; 11] = [
    "ok",
    "bad_credentials",
    "rate_limited",
    "csrf",
    "invalid_request",
    "store_unavailable",
    "provider_refused",
    "provider_unavailable",
    "busy",
    "second_factor_required",
    "step_expired",
];

/// Values read when a scrape is answered.
#[derive(Debug, Clone, Default)]
pub struct ScrapeValues {
    /// Live sessions in this instance's store (its L1 cache with Redis).
    pub sessions: u64,
    /// Open tunnels (WebSocket).
    pub tunnels: u64,
    /// Whether the live-state store is usable.
    pub store_up: bool,
    /// Per external provider: whether its last fetch succeeded.
    pub oidc_up: Vec<(String, bool)>,
    /// Background store writes dropped because their queue was full.
    pub store_writes_dropped: u64,
    /// Verified-token cache hits and misses.
    pub token_cache: (u64, u64),
    /// Log lines dropped per stream (log, access, audit).
    pub log_dropped: [u64; 3],
    /// TLS certificate expiry (unix seconds), when an HTTPS listener is configured.
    pub tls_not_after: Option<i64>,
}

/// The registry and every series, shared by all snapshots of one gateway (a reload never
/// resets a counter).
pub struct Metrics {
    /// Whether anything can read them (`[metrics] listen` is set); else the request path
    /// counts nothing at all (the `[metrics]`-off row of the load test is a real off).
    pub enabled: bool,
    registry: Mutex<Registry>,
    requests: Family<Labels, Counter>,
    durations: Family<Labels, Histogram, fn() -> Histogram>,
    upstream_durations: Family<Labels, Histogram, fn() -> Histogram>,
    upstream_errors: Family<Labels, Counter>,
    denials: Family<Labels, Counter>,
    /// Requests waiting for their response head.
    pub in_flight: Gauge,
    auth: Vec<Counter>,
    logins: Vec<Counter>,
    /// Time a login attempt took (whatever its result).
    pub login_duration: Histogram,
    reloads_ok: Counter,
    reloads_failed: Counter,
    last_reload: Gauge,
    sessions: Gauge,
    tunnels: Gauge,
    store_up: Gauge,
    oidc_up: Family<Labels, Gauge>,
    store_writes_dropped: Mirror,
    token_cache_hits: Mirror,
    token_cache_misses: Mirror,
    log_dropped: [Mirror; 3],
    tls_not_after: Gauge,
    gateway_route: RouteMetrics,
    no_route: RouteMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with every family registered and the fixed series created; `enabled`: the
    /// request path counts (a listener will serve them).
    pub fn new(store_backend: &str, enabled: bool) -> Metrics {
        let mut r = Registry::with_prefix("authgate");
        r.register(
            "build",
            "The running build (value 1)",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let requests = Family::<Labels, Counter>::default();
        r.register(
            "http_requests",
            "Requests answered, by route and status class",
            requests.clone(),
        );
        let durations: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        r.register_with_unit(
            "http_request_duration",
            "Time from the request head to the response head, by route",
            Unit::Seconds,
            durations.clone(),
        );
        let in_flight = Gauge::default();
        r.register(
            "http_requests_in_flight",
            "Requests waiting for their response head",
            in_flight.clone(),
        );
        let upstream_durations: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        r.register_with_unit(
            "upstream_request_duration",
            "Time from sending a request upstream to its response head, by route",
            Unit::Seconds,
            upstream_durations.clone(),
        );
        let upstream_errors = Family::<Labels, Counter>::default();
        r.register(
            "upstream_errors",
            "Upstream exchanges that failed, by route and kind (connect, timeout, reset, tls, other)",
            upstream_errors.clone(),
        );
        let auth_family = Family::<Labels, Counter>::default();
        let mut auth = Vec::new();
        for m in MECHANISMS {
            for res in AUTH_RESULTS {
                auth.push(
                    auth_family
                        .get_or_create(&labels(&[("mechanism", m), ("result", res)]))
                        .clone(),
                );
            }
        }
        r.register(
            "auth_results",
            "Credentials checked, by mechanism (session, jwt, bearer) and result",
            auth_family,
        );
        let denials = Family::<Labels, Counter>::default();
        r.register(
            "authz_denials",
            "Requests refused by a route's access policy (401 or 403), by route",
            denials.clone(),
        );
        let login_family = Family::<Labels, Counter>::default();
        let mut logins = Vec::new();
        for m in LOGIN_METHODS {
            for res in LOGIN_RESULTS {
                logins.push(
                    login_family
                        .get_or_create(&labels(&[("method", m), ("result", res)]))
                        .clone(),
                );
            }
        }
        r.register(
            "login_attempts",
            "Login attempts, by method and result",
            login_family,
        );
        let login_duration = Histogram::new(LOGIN_BUCKETS);
        r.register_with_unit(
            "login_duration",
            "Time a login attempt took (password hashing included)",
            Unit::Seconds,
            login_duration.clone(),
        );
        let reload_family = Family::<Labels, Counter>::default();
        let reloads_ok = reload_family
            .get_or_create(&labels(&[("result", "ok")]))
            .clone();
        let reloads_failed = reload_family
            .get_or_create(&labels(&[("result", "error")]))
            .clone();
        r.register(
            "config_reloads",
            "Configuration reloads, by result",
            reload_family,
        );
        let last_reload = Gauge::default();
        last_reload.set(super::unix_seconds());
        r.register(
            "config_last_reload_success_timestamp_seconds",
            "When the running configuration was loaded (unix time)",
            last_reload.clone(),
        );
        let sessions = Gauge::default();
        r.register(
            "sessions_active",
            "Live sessions held by this instance (with Redis: its cache of them)",
            sessions.clone(),
        );
        let tunnels = Gauge::default();
        r.register(
            "tunnels_open",
            "Upgraded connections (WebSocket) open",
            tunnels.clone(),
        );
        let store_family = Family::<Labels, Gauge>::default();
        let store_up = store_family
            .get_or_create(&labels(&[("backend", store_backend)]))
            .clone();
        r.register(
            "store_up",
            "Whether the live-state store is usable (1) or not (0)",
            store_family,
        );
        let oidc_up = Family::<Labels, Gauge>::default();
        r.register(
            "oidc_provider_up",
            "Whether an external OpenID Connect provider answered its last fetch (1) or not (0)",
            oidc_up.clone(),
        );
        let store_writes_dropped = Mirror::default();
        r.register(
            "store_writes_dropped",
            "Background store writes (last-use touches, failure counts) dropped: queue full",
            store_writes_dropped.clone(),
        );
        let cache_family = Family::<Labels, Mirror>::default();
        let token_cache_hits = cache_family
            .get_or_create(&labels(&[("result", "hit")]))
            .clone();
        let token_cache_misses = cache_family
            .get_or_create(&labels(&[("result", "miss")]))
            .clone();
        r.register(
            "token_cache_lookups",
            "Verified-token cache lookups (JWT mode), by result",
            cache_family,
        );
        let dropped_family = Family::<Labels, Mirror>::default();
        let log_dropped = Stream::ALL.map(|s| {
            dropped_family
                .get_or_create(&labels(&[("stream", s.as_str())]))
                .clone()
        });
        r.register(
            "log_lines_dropped",
            "Log lines dropped because the writer's queue was full, by stream (log, access, audit)",
            dropped_family,
        );
        let tls_not_after = Gauge::default();
        r.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the HTTPS listener's certificate expires (unix time; 0 without one)",
            tls_not_after.clone(),
        );
        let mut m = Metrics {
            enabled,
            registry: Mutex::new(r),
            requests,
            durations,
            upstream_durations,
            upstream_errors,
            denials,
            in_flight,
            auth,
            logins,
            login_duration,
            reloads_ok,
            reloads_failed,
            last_reload,
            sessions,
            tunnels,
            store_up,
            oidc_up,
            store_writes_dropped,
            token_cache_hits,
            token_cache_misses,
            log_dropped,
            tls_not_after,
            gateway_route: placeholder(),
            no_route: placeholder(),
        };
        m.gateway_route = m.route(GATEWAY_ROUTE);
        m.no_route = m.route(NO_ROUTE);
        m
    }

    /// The series of the route `name`, created now if new (at snapshot build, never per request).
    pub fn route(&self, name: &str) -> RouteMetrics {
        let route = |k: &[(&'static str, &str)]| {
            let mut l = labels(&[("route", name)]);
            l.extend(labels(k));
            l
        };
        RouteMetrics {
            name: Arc::from(name),
            enabled: self.enabled,
            requests: CLASSES.map(|c| self.requests.get_or_create(&route(&[("class", c)])).clone()),
            duration: self.durations.get_or_create(&route(&[])).clone(),
            upstream_duration: self.upstream_durations.get_or_create(&route(&[])).clone(),
            upstream_errors: UPSTREAM_KINDS.map(|k| {
                self.upstream_errors
                    .get_or_create(&route(&[("kind", k)]))
                    .clone()
            }),
            denials: self.denials.get_or_create(&route(&[])).clone(),
        }
    }

    /// Requests answered by the gateway's endpoints.
    pub fn gateway_route(&self) -> &RouteMetrics {
        &self.gateway_route
    }

    /// Requests refused before a route matched.
    pub fn no_route(&self) -> &RouteMetrics {
        &self.no_route
    }

    /// Counts an authentication result.
    pub fn auth(&self, m: Mechanism, r: AuthResult) {
        if !self.enabled {
            return;
        }
        self.auth[m as usize * AUTH_RESULTS.len() + r as usize].inc();
    }

    /// Counts a login attempt.
    pub fn login(&self, m: LoginMethod, r: LoginResult, took: Duration) {
        if !self.enabled {
            return;
        }
        self.logins[m as usize * LOGIN_RESULTS.len() + r as usize].inc();
        self.login_duration.observe(took);
    }

    /// Counts a reload.
    pub fn reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.inc();
            self.last_reload.set(super::unix_seconds());
        } else {
            self.reloads_failed.inc();
        }
    }

    /// The exposition (OpenMetrics text) with `v` filled in.
    pub fn render(&self, v: &ScrapeValues) -> String {
        self.sessions
            .set(i64::try_from(v.sessions).unwrap_or(i64::MAX));
        self.tunnels
            .set(i64::try_from(v.tunnels).unwrap_or(i64::MAX));
        self.store_up.set(i64::from(v.store_up));
        // Only the providers configured now (a removed one's series goes away).
        self.oidc_up.clear();
        for (id, up) in &v.oidc_up {
            self.oidc_up
                .get_or_create(&labels(&[("provider", id)]))
                .set(i64::from(*up));
        }
        self.store_writes_dropped.set(v.store_writes_dropped);
        self.token_cache_hits.set(v.token_cache.0);
        self.token_cache_misses.set(v.token_cache.1);
        for (m, d) in self.log_dropped.iter().zip(v.log_dropped) {
            m.set(d);
        }
        self.tls_not_after.set(v.tls_not_after.unwrap_or(0));
        let mut out = String::with_capacity(16 * 1024);
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

/// A route's series before the registry exists (replaced in [`Metrics::new`]).
fn placeholder() -> RouteMetrics {
    RouteMetrics {
        name: Arc::from(""),
        enabled: false,
        requests: Default::default(),
        duration: duration_histogram(),
        upstream_duration: duration_histogram(),
        upstream_errors: Default::default(),
        denials: Counter::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_route_series_count_requests_by_class_and_survive_a_second_lookup() {
        let m = Metrics::new("memory", true);
        let a = m.route("app");
        a.request(200, Duration::from_micros(300));
        a.request(503, Duration::from_millis(2));
        // The same route after a reload shares the series.
        m.route("app").request(204, Duration::from_micros(1));
        let text = m.render(&ScrapeValues::default());
        assert!(
            text.contains(r#"authgate_http_requests_total{route="app",class="2xx"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"authgate_http_requests_total{route="app",class="5xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"authgate_http_request_duration_seconds_count{route="app"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"authgate_http_request_duration_seconds_bucket{le="0.0005",route="app"} 2"#
            ) || text.contains(
                r#"authgate_http_request_duration_seconds_bucket{route="app",le="0.0005"} 2"#
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let c: Vec<u64> =
            h.0.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect();
        assert_eq!(c, vec![1, 1, 1]);
        assert_eq!(h.count(), 3);
    }
}
