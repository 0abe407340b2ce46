//! Configuration: `gateway.toml` → raw serde structs → validated domain types.
//!
//! Every problem is collected (not just the first) and names the file, the key path
//! (`routes[2].upstream`) and, where toml reports one, the line.

pub mod lines;
pub mod oidc;
mod raw;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::HeaderName;
use ipnet::IpNet;

pub use raw::{RawConfig, RawJwt, RawUser, RawVerifyKey};

/// Plain HTTP listener when none is configured: loopback only, so a first run exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Enough for a small team's gateway; beyond it new connections wait in the kernel backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Slowloris bound: a client has this long to send its complete request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake that takes longer than this is an attack or a broken client.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight requests get this long to finish after SIGTERM (below Kubernetes' 30 s default).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
/// Upstream must send response headers within this time (nginx's proxy_read_timeout is 60 s).
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `server.tunnel_idle_timeout`: WebSocket apps send pings every 20–60 s (browsers and
/// most libraries keep a connection alive well inside that), so five silent minutes mean a tunnel
/// nobody uses; it still holds a connection slot and an upstream socket.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Protocols a route tunnels by default: the one whose traffic the gateway knows how to police
/// (a WebSocket is a message stream to one endpoint; `h2c` would be a new HTTP connection that
/// bypasses routing and authentication).
pub const DEFAULT_UPGRADES: &[&str] = &["websocket"];
/// Request head cap; larger heads get 431. 64 KiB fits any sane cookie jar.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Session inactivity limit (Authelia's default inactivity is 5m, oauth2-proxy has none; 30m is a middle).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Absolute session/token lifetime since login (a working day).
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Bound on live sessions so that a login flood cannot exhaust memory.
pub const DEFAULT_MAX_SESSIONS: u64 = 1_000_000;
/// Failed logins per minute for one username before 429: protects one account against guessing
/// (five honest typos a minute is plenty; a guesser gets 7,200 tries a day per account at most).
pub const DEFAULT_LOGIN_FAILURES_PER_MINUTE: u32 = 5;
/// Failed logins per minute from one client address, across all usernames, before 429: bounds
/// one source's total guessing rate when it sprays many usernames. Much higher than the
/// per-username limit because an office, university or carrier-grade NAT puts many people behind
/// one address (at 5, five colleagues who each mistyped once locked the whole office out); 50 is
/// ten people making five mistakes each in the same minute.
pub const DEFAULT_LOGIN_FAILURES_PER_MINUTE_PER_ADDRESS: u32 = 50;
/// Upper bound of the default number of concurrent password verifications: each hashing thread
/// keeps its argon2 working memory (~19 MiB at the recommended cost); more logins queue.
pub const DEFAULT_LOGIN_CONCURRENCY_MAX: usize = 4;

/// Default hashing threads: one per core, at most [`DEFAULT_LOGIN_CONCURRENCY_MAX`].
pub fn default_login_concurrency() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(DEFAULT_LOGIN_CONCURRENCY_MAX)
}
/// JWT lifetime before a sliding re-issue is needed.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(15 * 60);
/// Clock skew tolerated on exp/nbf/iat (jsonwebtoken's 60 s default is too generous).
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(5);
/// Verified-token cache entries.
pub const DEFAULT_JWT_CACHE_SIZE: u64 = 100_000;

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file in which the problem is.
    pub file: PathBuf,
    /// Key path such as `routes[2].upstream`; empty when the whole file is at fault.
    pub key: String,
    /// 1-based line, where toml reports one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (relative paths inside it are resolved against its directory).
    pub source: PathBuf,
    /// `[server]`
    pub server: ServerConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[auth]`
    pub auth: AuthConfig,
    /// `[headers]`
    pub headers: HeaderNames,
    /// `[[users]]` and `users_file`, in order.
    pub users: Vec<UserConfig>,
    /// `[[routes]]`, in file order.
    pub routes: Vec<RouteConfig>,
    /// `[store]`: where live state lives.
    pub store: StoreConfig,
    /// `[metrics]`: the Prometheus listener, if any.
    pub metrics: MetricsConfig,
    /// `[audit]`: the audit event stream.
    pub audit: AuditConfig,
    /// `auth.users_file`, resolved (watched for changes beside the config file).
    pub users_file: Option<PathBuf>,
}

/// Default path of the metrics endpoint (the Prometheus convention).
pub const DEFAULT_METRICS_PATH: &str = "/metrics";

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where the Prometheus endpoint listens; `None` (the default): no metrics listener at all.
    pub listen: Option<SocketAddr>,
    /// Path of the endpoint.
    pub path: String,
}

/// `[audit]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Audit events are written (default on: they are rare and a reviewer asks for them).
    pub enabled: bool,
    /// JSON lines appended to this file; `None`: the log stream (stderr), target `audit`.
    pub file: Option<PathBuf>,
    /// Key for hashing unknown usernames (32+ bytes in a file); `None`: a random per-process key.
    pub username_hash_key: Option<Secret>,
}

/// A secret read from a file or the environment at load: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret read from somewhere safe.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself (hand it to the library that needs it; never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// `[store]`: the live-state backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// In this process's memory (the default): lost on restart, not shared.
    Memory,
    /// A Redis server shared by every instance.
    Redis(Box<RedisConfig>),
}

/// `[store] backend = "redis"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://…` (TLS), without credentials.
    pub url: url::Url,
    /// ACL user, if any.
    pub username: Option<String>,
    /// Password (from `password_file` or `password_env`).
    pub password: Option<Secret>,
    /// Prefix of every key the gateway writes.
    pub key_prefix: String,
    /// With `rediss://`: what the TLS connection trusts and presents.
    pub tls: Option<RedisTls>,
}

/// TLS to Redis (`rediss://`), read and checked at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTls {
    /// PEM certificates to trust instead of the system's roots (`store.ca_file`).
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain and key (PEM) for servers that ask for one
    /// (`tls-auth-clients yes`, Redis's default).
    pub client: Option<(Vec<u8>, Secret)>,
}

/// Default `store.key_prefix`.
pub const DEFAULT_KEY_PREFIX: &str = "authgate:";

/// `[server]`
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Plain HTTP listener, if any.
    pub listen: Option<SocketAddr>,
    /// External origin, e.g. `https://auth.example.com`.
    pub public_url: url::Url,
    /// `scheme://host[:port]` of `public_url`, for Origin checks and redirects.
    pub public_origin: String,
    /// Whether `public_url` is https (Secure cookies, `__Host-` prefix).
    pub https: bool,
    /// Optional HTTPS listener.
    pub tls: Option<TlsConfig>,
    /// Peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Concurrent connection cap.
    pub max_connections: usize,
    /// Time allowed to send a request head.
    pub header_read_timeout: Duration,
    /// Time in-flight requests get after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Request head size cap.
    pub max_header_bytes: usize,
    /// Runtime worker threads (0 = one per available core).
    pub workers: usize,
    /// How the workers share the connections.
    pub runtime: RuntimeFlavor,
    /// An upgraded tunnel (WebSocket) that carries no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Edits of this file and of `auth.users_file` are applied without SIGHUP (default on).
    pub watch_config: bool,
    /// `/.auth/verify` applies the route policy to the request a trusted proxy describes in
    /// `X-Forwarded-Method`/`-Host`/`-Uri` (off by default: the proxy must set all three itself,
    /// or a client's own values would pass through it).
    pub forward_auth_policy: bool,
}

/// `server.runtime`: how worker threads share the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeFlavor {
    /// One single-threaded runtime per worker; accepted connections are dealt out round robin
    /// and stay on their worker (no cross-thread wake-ups on the request path).
    ThreadPerCore,
    /// One work-stealing runtime with `workers` threads (evens out uneven connections).
    WorkStealing,
}

/// `[server.tls]`
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// HTTPS listener address.
    pub listen: SocketAddr,
    /// Certificate chain PEM.
    pub cert: PathBuf,
    /// Private key PEM.
    pub key: PathBuf,
    /// Handshake time limit.
    pub handshake_timeout: Duration,
}

/// Access-log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Output format (overridden by `AUTHGATE_LOG_FORMAT`).
    pub format: LogFormat,
    /// One line per request.
    pub access_log: bool,
}

/// How requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Opaque session id cookie, looked up in the session store.
    Session,
    /// Signed JWT cookie, verified on every request.
    Jwt,
}

/// `[auth]`
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Session or JWT.
    pub mode: AuthMode,
    /// Effective cookie name (`__Host-` prepended under https).
    pub cookie_name: String,
    /// Name of the CSRF cookie.
    pub csrf_cookie_name: String,
    /// The cookie of a pending second step (`<name>_2fa`).
    pub step_cookie_name: String,
    /// The cookie binding logins at external providers to the browser (`<name>_oidc`).
    pub oidc_cookie_name: String,
    /// Inactivity limit (session mode).
    pub idle_timeout: Duration,
    /// Absolute limit since login.
    pub max_lifetime: Duration,
    /// Live-session bound.
    pub max_sessions: u64,
    /// Failed logins per minute for one username (any address).
    pub login_failures_per_minute: u32,
    /// Failed logins per minute from one client address (any username).
    pub login_failures_per_minute_per_address: u32,
    /// Concurrent password verifications.
    pub login_concurrency: usize,
    /// Wrong second-factor codes per minute and user before `429` (its own bucket).
    pub otp_failures_per_minute: u32,
    /// `credentials_file` and its key: TOTP secrets and recovery codes.
    pub credentials: Option<crate::auth::credentials::CredentialsConfig>,
    /// `[auth.jwt]`, validated but with keys not yet loaded.
    pub jwt: Option<JwtConfig>,
    /// The password form is offered (`password_login`, default true).
    pub password_login: bool,
    /// `[[auth.oidc]]`: external OpenID Connect providers, in file order.
    pub oidc: Vec<oidc::OidcConfig>,
}

/// JWT signing/verification algorithm, pinned by configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// Ed25519.
    EdDSA,
    /// ECDSA P-256 SHA-256.
    ES256,
    /// RSA PKCS#1 v1.5 SHA-256.
    RS256,
    /// HMAC SHA-256.
    HS256,
}

impl JwtAlgorithm {
    /// Parses the configuration spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "EdDSA" => Some(Self::EdDSA),
            "ES256" => Some(Self::ES256),
            "RS256" => Some(Self::RS256),
            "HS256" => Some(Self::HS256),
            _ => None,
        }
    }
}

/// Where a key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A file (PEM, or raw secret bytes for HS256).
    File(PathBuf),
    /// An environment variable (HS256 secrets).
    Env(String),
}

/// A verification-only key (rotation).
#[derive(Debug, Clone)]
pub struct VerifyKeyConfig {
    /// Key id tokens carry in their header.
    pub kid: String,
    /// Where the key lives.
    pub source: KeySource,
}

/// `[auth.jwt]`
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Pinned algorithm.
    pub algorithm: JwtAlgorithm,
    /// Current signing key.
    pub signing_key: KeySource,
    /// Kid of the signing key (default: derived from the key).
    pub kid: Option<String>,
    /// `iss` claim.
    pub issuer: String,
    /// `aud` claim.
    pub audience: String,
    /// Token lifetime.
    pub ttl: Duration,
    /// Clock skew tolerance.
    pub leeway: Duration,
    /// Accept `Authorization: Bearer`.
    pub accept_bearer: bool,
    /// Verified-token cache size.
    pub cache_size: u64,
    /// Older keys still accepted.
    pub verify_keys: Vec<VerifyKeyConfig>,
}

/// Identity header names sent to upstreams.
#[derive(Debug, Clone)]
pub struct HeaderNames {
    /// Username header.
    pub user: HeaderName,
    /// Email header.
    pub email: HeaderName,
    /// Comma-separated groups header.
    pub groups: HeaderName,
    /// Display name header, if the preset has one.
    pub name: Option<HeaderName>,
}

/// Every identity header name any preset uses: stripped from client requests whatever is configured.
pub const ALL_PRESET_HEADERS: &[&str] = &[
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-auth-request-access-token",
    "x-forwarded-access-token",
    "remote-user",
    "remote-email",
    "remote-groups",
    "remote-name",
];

/// A user as configured (hash not yet parsed).
#[derive(Debug, Clone)]
pub struct UserConfig {
    /// Login name.
    pub username: String,
    /// argon2id PHC string or bcrypt hash.
    pub password_hash: String,
    /// Email address.
    pub email: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Group names.
    pub groups: Vec<String>,
    /// Marked as the shipped demo user (start-up warning).
    pub demo: bool,
    /// Key path for error messages.
    pub key: String,
}

/// Route host matcher.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Any host.
    Any,
    /// Exactly this (lowercase, no port).
    Exact(String),
    /// `*.suffix`: stored as `.suffix`.
    Suffix(String),
}

/// Where a route's requests go.
#[derive(Debug, Clone)]
pub enum UpstreamTarget {
    /// An HTTP(S) server.
    Http {
        /// http or https.
        scheme: Scheme,
        /// host:port.
        authority: Authority,
        /// Path prefix prepended to forwarded paths, without trailing slash ("" for none).
        base_path: String,
    },
    /// `builtin:whoami`.
    Whoami,
}

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// Logged-in users (optionally restricted by groups/users).
    Authenticated,
}

/// `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Position in the file (for logs).
    pub index: usize,
    /// `name`, or `host` + `path_prefix` when absent: the route's label in metrics and logs.
    pub name: String,
    /// Host matcher.
    pub host: HostMatch,
    /// Path prefix without trailing slash ("" for "/").
    pub path_prefix: String,
    /// The upstream.
    pub upstream: UpstreamTarget,
    /// The original upstream string, for logs.
    pub upstream_label: String,
    /// Forward the client's Host instead of the upstream's.
    pub preserve_host: bool,
    /// Time to response headers.
    pub timeout: Duration,
    /// Extra CA for an https upstream.
    pub tls_ca: Option<PathBuf>,
    /// Protocols a client may upgrade to on this route (lowercase; `h2c` never).
    pub upgrades: Vec<String>,
    /// Whether TRACE/TRACK requests are forwarded (else 405).
    pub allow_trace: bool,
    /// Send the provider's access token of an OIDC session as `X-Forwarded-Access-Token`.
    pub pass_access_token: bool,
    /// Who may pass, compiled: the route's access and allow lists, its rules, preflight and
    /// unauthenticated handling.
    pub policy: crate::policy::Policy,
}

/// A route name usable as a metrics label value and a log field as is.
fn route_name_ok(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:*".contains(&b))
}

/// The name of a route without `name`: its host (if any) and path prefix, e.g.
/// `app.example.com/api` or `/`.
fn default_route_name(host: &HostMatch, prefix: &str) -> String {
    let prefix = if prefix.is_empty() { "/" } else { prefix };
    match host {
        HostMatch::Any => prefix.to_string(),
        HostMatch::Exact(h) => format!("{h}{prefix}"),
        HostMatch::Suffix(s) => format!("*{s}{prefix}"),
    }
}

/// Parses a duration such as `30s`, `15m`, `12h`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. \"30s\", \"15m\", \"12h\""))?;
    Ok(d)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Deserialises toml text into `T`, turning errors into a [`ConfigError`] with path and line.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &Path,
) -> Result<T, ConfigError> {
    let de = match toml::de::Deserializer::parse(text) {
        Ok(de) => de,
        Err(e) => {
            return Err(ConfigError {
                file: file.to_path_buf(),
                key: String::new(),
                line: e.span().map(|s| line_of(text, s.start)),
                message: e.message().to_string(),
            })
        }
    };
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ConfigError {
            file: file.to_path_buf(),
            key: if key == "." { String::new() } else { key },
            line: inner.span().map(|s| line_of(text, s.start)),
            message: inner.message().to_string(),
        }
    })
}

struct Collector<'a> {
    file: &'a Path,
    errors: Vec<ConfigError>,
}

impl Collector<'_> {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            line: None,
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, v: Option<&str>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s) {
                Ok(d) if d.is_zero() => {
                    self.err(key, "must be greater than zero");
                    default
                }
                Ok(d) => d,
                Err(m) => {
                    self.err(key, m);
                    default
                }
            },
        }
    }
}

/// Resolves `p` against the directory of the config file.
pub fn resolve_path(config_file: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                key: String::new(),
                line: None,
                message: format!("cannot read: {e}"),
            }])
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Validates configuration text; `path` names it in errors and anchors relative paths.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = parse_toml(text, path).map_err(|e| ConfigErrors(vec![e]))?;
        validate(raw, path).map_err(|errs| lines::with_lines(errs, text, path))
    }
}

fn validate(raw: RawConfig, file: &Path) -> Result<Config, ConfigErrors> {
    let mut c = Collector {
        file,
        errors: Vec::new(),
    };

    // [server]
    let listen = match raw.server.listen.as_deref() {
        None if raw.server.tls.is_some() => None,
        None => Some(DEFAULT_LISTEN.parse().expect("constant address")),
        Some(s) => match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                c.err(
                    "server.listen",
                    format!("invalid socket address {s:?} (expected e.g. \"127.0.0.1:8080\")"),
                );
                None
            }
        },
    };
    let default_public = format!(
        "http://{}",
        listen
            .map(|a| a.to_string())
            .unwrap_or_else(|| DEFAULT_LISTEN.into())
    );
    let public_raw = raw.server.public_url.clone().unwrap_or(default_public);
    let public_url = match url::Url::parse(&public_raw) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => {
            if u.path() != "/"
                || u.query().is_some()
                || u.fragment().is_some()
                || !u.username().is_empty()
            {
                c.err("server.public_url", "must be an origin only (scheme://host[:port]), without path, query or credentials");
            }
            u
        }
        Ok(_) => {
            c.err(
                "server.public_url",
                format!("{public_raw:?} must be an http:// or https:// URL"),
            );
            url::Url::parse("http://127.0.0.1:8080").expect("constant url")
        }
        Err(e) => {
            c.err(
                "server.public_url",
                format!("invalid URL {public_raw:?}: {e}"),
            );
            url::Url::parse("http://127.0.0.1:8080").expect("constant url")
        }
    };
    let https = public_url.scheme() == "https";
    let public_origin = public_url.origin().ascii_serialization();

    let tls = raw.server.tls.as_ref().and_then(|t| {
        let listen = match t.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                c.err(
                    "server.tls.listen",
                    format!("invalid socket address {:?}", t.listen),
                );
                None
            }
        };
        let cert = resolve_path(file, &t.cert);
        if !cert.is_file() {
            c.err(
                "server.tls.cert",
                format!("file not found: {}", cert.display()),
            );
        }
        let key = resolve_path(file, &t.key);
        if !key.is_file() {
            c.err(
                "server.tls.key",
                format!("file not found: {}", key.display()),
            );
        }
        let handshake_timeout = c.duration(
            "server.tls.handshake_timeout",
            t.handshake_timeout.as_deref(),
            DEFAULT_HANDSHAKE_TIMEOUT,
        );
        listen.map(|listen| TlsConfig {
            listen,
            cert,
            key,
            handshake_timeout,
        })
    });

    let forward_auth_policy = raw.server.forward_auth_policy.unwrap_or(false);
    if forward_auth_policy && raw.server.trusted_proxies.is_empty() {
        c.err(
            "server.forward_auth_policy",
            "needs server.trusted_proxies: only a trusted proxy may describe the request",
        );
    }
    let mut trusted_proxies = Vec::new();
    for (i, p) in raw.server.trusted_proxies.iter().enumerate() {
        let parsed = p
            .parse::<IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => trusted_proxies.push(n),
            Err(_) => c.err(
                format!("server.trusted_proxies[{i}]"),
                format!("{p:?} is not an IP address or CIDR"),
            ),
        }
    }
    let max_connections = raw
        .server
        .max_connections
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        c.err("server.max_connections", "must be at least 1");
    }
    let max_header_bytes = raw
        .server
        .max_header_bytes
        .unwrap_or(DEFAULT_MAX_HEADER_BYTES);
    if !(8192..=1024 * 1024).contains(&max_header_bytes) {
        c.err(
            "server.max_header_bytes",
            "must be between 8192 and 1048576",
        );
    }
    let server = ServerConfig {
        listen,
        public_url,
        public_origin,
        https,
        tls,
        trusted_proxies,
        max_connections: max_connections.max(1),
        header_read_timeout: c.duration(
            "server.header_read_timeout",
            raw.server.header_read_timeout.as_deref(),
            DEFAULT_HEADER_READ_TIMEOUT,
        ),
        shutdown_grace: c.duration(
            "server.shutdown_grace",
            raw.server.shutdown_grace.as_deref(),
            DEFAULT_SHUTDOWN_GRACE,
        ),
        max_header_bytes,
        tunnel_idle_timeout: c.duration(
            "server.tunnel_idle_timeout",
            raw.server.tunnel_idle_timeout.as_deref(),
            DEFAULT_TUNNEL_IDLE_TIMEOUT,
        ),
        workers: raw.server.workers.unwrap_or(0),
        watch_config: raw.server.watch_config.unwrap_or(true),
        forward_auth_policy,
        runtime: match raw.server.runtime.as_deref() {
            None | Some("thread-per-core") => RuntimeFlavor::ThreadPerCore,
            Some("work-stealing") => RuntimeFlavor::WorkStealing,
            Some(o) => {
                c.err(
                    "server.runtime",
                    format!(
                        "unknown runtime {o:?} (expected \"thread-per-core\" or \"work-stealing\")"
                    ),
                );
                RuntimeFlavor::ThreadPerCore
            }
        },
    };
    if server.workers > 1024 {
        c.err("server.workers", "must be at most 1024 (0 = one per core)");
    }
    if server.listen.is_none() && server.tls.is_none() && c.errors.is_empty() {
        c.err("server.listen", "no listener configured");
    }

    // [log]
    let format = match raw.log.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(o) => {
            c.err(
                "log.format",
                format!("unknown format {o:?} (expected \"text\" or \"json\")"),
            );
            LogFormat::Text
        }
    };
    let log = LogConfig {
        format,
        access_log: raw.log.access_log.unwrap_or(true),
    };

    // [auth]
    let mode = match raw.auth.mode.as_deref() {
        None | Some("session") => AuthMode::Session,
        Some("jwt") => AuthMode::Jwt,
        Some(o) => {
            c.err(
                "auth.mode",
                format!("unknown mode {o:?} (expected \"session\" or \"jwt\")"),
            );
            AuthMode::Session
        }
    };
    let base_cookie = raw
        .auth
        .cookie_name
        .clone()
        .unwrap_or_else(|| "authgate".into());
    if base_cookie.is_empty()
        || !base_cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        c.err(
            "auth.cookie_name",
            "must be non-empty and use only letters, digits, '_' and '-'",
        );
    }
    let prefix = if https { "__Host-" } else { "" };
    let cookie_name = format!("{prefix}{base_cookie}");
    let csrf_cookie_name = format!("{prefix}{base_cookie}_csrf");
    let step_cookie_name = format!("{prefix}{base_cookie}_2fa");
    let oidc_cookie_name = format!("{prefix}{base_cookie}_oidc");
    let idle_timeout = c.duration(
        "auth.idle_timeout",
        raw.auth.idle_timeout.as_deref(),
        DEFAULT_IDLE_TIMEOUT,
    );
    let max_lifetime = c.duration(
        "auth.max_lifetime",
        raw.auth.max_lifetime.as_deref(),
        DEFAULT_MAX_LIFETIME,
    );
    let max_sessions = raw.auth.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS);
    if max_sessions == 0 {
        c.err("auth.max_sessions", "must be at least 1");
    }
    let login_failures_per_minute = raw
        .auth
        .login_failures_per_minute
        .unwrap_or(DEFAULT_LOGIN_FAILURES_PER_MINUTE);
    if login_failures_per_minute == 0 {
        c.err("auth.login_failures_per_minute", "must be at least 1");
    }
    let login_failures_per_minute_per_address = raw
        .auth
        .login_failures_per_minute_per_address
        .unwrap_or(DEFAULT_LOGIN_FAILURES_PER_MINUTE_PER_ADDRESS);
    if login_failures_per_minute_per_address == 0 {
        c.err(
            "auth.login_failures_per_minute_per_address",
            "must be at least 1",
        );
    }
    let login_concurrency = raw
        .auth
        .login_concurrency
        .unwrap_or_else(default_login_concurrency);
    if login_concurrency == 0 {
        c.err("auth.login_concurrency", "must be at least 1");
    }

    let otp_failures_per_minute = raw
        .auth
        .otp_failures_per_minute
        .unwrap_or(DEFAULT_LOGIN_FAILURES_PER_MINUTE);
    if otp_failures_per_minute == 0 {
        c.err("auth.otp_failures_per_minute", "must be at least 1");
    }
    let credentials = validate_credentials(&raw.auth, file, &mut c);
    let oidc = oidc::validate(&raw.auth.oidc, &server.public_url, file, &mut c);
    let password_login = raw.auth.password_login.unwrap_or(true);
    if !password_login && oidc.is_empty() {
        c.err(
            "auth.password_login",
            "false leaves no way to sign in: configure an [[auth.oidc]] provider",
        );
    }
    let jwt = match (&raw.auth.jwt, mode) {
        (Some(j), _) => validate_jwt(j, file, &mut c),
        (None, AuthMode::Jwt) => {
            c.err(
                "auth.jwt",
                "mode = \"jwt\" needs an [auth.jwt] section with signing_key",
            );
            None
        }
        (None, AuthMode::Session) => None,
    };
    let auth = AuthConfig {
        mode,
        cookie_name,
        csrf_cookie_name,
        step_cookie_name,
        oidc_cookie_name,
        idle_timeout,
        max_lifetime,
        max_sessions: max_sessions.max(1),
        login_failures_per_minute: login_failures_per_minute.max(1),
        login_failures_per_minute_per_address: login_failures_per_minute_per_address.max(1),
        login_concurrency: login_concurrency.max(1),
        otp_failures_per_minute: otp_failures_per_minute.max(1),
        credentials,
        jwt,
        password_login,
        oidc,
    };

    // [headers]
    let headers = validate_headers(&raw.headers, &mut c);

    // users
    let mut raw_users: Vec<(String, RawUser)> = raw
        .users
        .iter()
        .enumerate()
        .map(|(i, u)| (format!("users[{i}]"), u.clone()))
        .collect();
    if let Some(uf) = &raw.auth.users_file {
        let path = resolve_path(file, uf);
        match std::fs::read_to_string(&path) {
            Ok(text) => match parse_toml::<raw::RawUsersFile>(&text, &path) {
                Ok(f) => raw_users.extend(
                    f.users
                        .into_iter()
                        .enumerate()
                        .map(|(i, u)| (format!("{}: users[{i}]", path.display()), u)),
                ),
                Err(e) => c.errors.push(e),
            },
            Err(e) => c.err(
                "auth.users_file",
                format!("cannot read {}: {e}", path.display()),
            ),
        }
    }
    let mut seen = HashSet::new();
    let mut users = Vec::new();
    for (key, u) in raw_users {
        if let Err(m) = crate::auth::users::validate_username(&u.username) {
            c.err(format!("{key}.username"), m);
        }
        if !seen.insert(u.username.clone()) {
            c.err(
                format!("{key}.username"),
                format!("duplicate username {:?}", u.username),
            );
        }
        if let Err(m) = crate::auth::password::check_hash(&u.password_hash) {
            c.err(format!("{key}.password_hash"), m);
        }
        if let Some(e) = &u.email {
            if let Err(m) = crate::auth::users::validate_header_text(e, false) {
                c.err(format!("{key}.email"), m);
            }
        }
        if let Some(n) = &u.name {
            if let Err(m) = crate::auth::users::validate_header_text(n, true) {
                c.err(format!("{key}.name"), m);
            }
        }
        for (gi, g) in u.groups.iter().enumerate() {
            if let Err(m) = crate::auth::users::validate_header_text(g, false) {
                c.err(format!("{key}.groups[{gi}]"), m);
            }
        }
        users.push(UserConfig {
            username: u.username,
            password_hash: u.password_hash,
            email: u.email,
            name: u.name,
            groups: u.groups,
            demo: u.demo,
            key,
        });
    }

    // routes
    let mut routes = Vec::new();
    let mut seen_routes = HashSet::new();
    let mut seen_names = HashSet::new();
    if raw.routes.is_empty() {
        c.err("routes", "at least one [[routes]] entry is needed");
    }
    for (i, r) in raw.routes.iter().enumerate() {
        if let Some(route) = validate_route(i, r, file, &mut c) {
            if route.pass_access_token {
                let why = if auth.mode != AuthMode::Session {
                    Some("needs auth.mode = \"session\": a JWT cookie cannot carry the provider's token without handing it to the browser")
                } else if auth.oidc.is_empty() {
                    Some("needs an [[auth.oidc]] provider (only its logins have an access token)")
                } else if matches!(route.upstream, UpstreamTarget::Whoami) {
                    Some("a built-in upstream would show the token to the browser")
                } else {
                    None
                };
                if let Some(why) = why {
                    c.err(format!("routes[{i}].pass_access_token"), why);
                }
            }
            if !seen_routes.insert((route.host.clone(), route.path_prefix.clone())) {
                c.err(
                    format!("routes[{i}]"),
                    "duplicate route: another route has the same host and path_prefix",
                );
            }
            if !seen_names.insert(route.name.clone()) {
                c.err(
                    format!("routes[{i}].name"),
                    format!(
                        "duplicate route name {:?}: names label metrics, so each must be unique",
                        route.name
                    ),
                );
            }
            routes.push(route);
        }
    }

    let store = validate_store(raw.store.as_ref(), file, &mut c);
    let metrics = validate_metrics(raw.metrics.as_ref(), &server, &mut c);
    let audit = validate_audit(raw.audit.as_ref(), file, &mut c);
    let users_file = raw
        .auth
        .users_file
        .as_ref()
        .map(|uf| resolve_path(file, uf));
    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    Ok(Config {
        source: file.to_path_buf(),
        server,
        log,
        auth,
        headers,
        users,
        routes,
        store,
        metrics,
        audit,
        users_file,
    })
}

/// `credentials_file` with `credentials_key_file` or `credentials_key_env` (never inline). The
/// file itself is opened when the snapshot is built (a missing one is empty).
fn validate_credentials(
    a: &raw::RawAuth,
    file: &Path,
    c: &mut Collector<'_>,
) -> Option<crate::auth::credentials::CredentialsConfig> {
    use crate::auth::credentials::{CredentialsConfig, MIN_KEY_BYTES};
    let Some(f) = &a.credentials_file else {
        if a.credentials_key_file.is_some() || a.credentials_key_env.is_some() {
            c.err(
                "auth.credentials_file",
                "a credentials key is set but no credentials_file",
            );
        }
        return None;
    };
    let key = match (&a.credentials_key_file, &a.credentials_key_env) {
        (Some(_), Some(_)) => {
            c.err(
                "auth.credentials_key_file",
                "set either credentials_key_file or credentials_key_env, not both",
            );
            None
        }
        (Some(k), None) => {
            let p = resolve_path(file, k);
            match std::fs::read_to_string(&p) {
                Ok(s) if s.trim().len() >= MIN_KEY_BYTES => Some(Secret(s.trim().to_string())),
                Ok(_) => {
                    c.err(
                        "auth.credentials_key_file",
                        format!("{}: the key must hold at least {MIN_KEY_BYTES} bytes (e.g. `head -c 32 /dev/urandom | base64`)", p.display()),
                    );
                    None
                }
                Err(e) => {
                    c.err(
                        "auth.credentials_key_file",
                        format!("cannot read {}: {e}", p.display()),
                    );
                    None
                }
            }
        }
        (None, Some(env)) => match std::env::var(env) {
            Ok(v) if v.trim().len() >= MIN_KEY_BYTES => Some(Secret(v.trim().to_string())),
            _ => {
                c.err(
                    "auth.credentials_key_env",
                    format!("environment variable {env} is not set or shorter than {MIN_KEY_BYTES} bytes"),
                );
                None
            }
        },
        (None, None) => {
            c.err(
                "auth.credentials_key_file",
                "credentials_file needs credentials_key_file or credentials_key_env (the key that encrypts the TOTP secrets; never inline)",
            );
            None
        }
    };
    key.map(|key| CredentialsConfig {
        file: resolve_path(file, f),
        key,
    })
}

fn validate_metrics(
    raw: Option<&raw::RawMetrics>,
    server: &ServerConfig,
    c: &mut Collector<'_>,
) -> MetricsConfig {
    let Some(raw) = raw else {
        return MetricsConfig {
            listen: None,
            path: DEFAULT_METRICS_PATH.into(),
        };
    };
    let listen = match raw.listen.as_deref() {
        None => {
            c.err(
                "metrics.listen",
                "missing: the metrics listener's address, e.g. \"127.0.0.1:9464\" (remove [metrics] to turn metrics off)",
            );
            None
        }
        Some(a) => match a.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                c.err("metrics.listen", format!("{a:?}: {e} (expected ip:port)"));
                None
            }
        },
    };
    if let Some(a) = listen {
        let public = server
            .listen
            .iter()
            .chain(server.tls.iter().map(|t| &t.listen));
        for p in public {
            let same_port = a.port() != 0 && a.port() == p.port();
            let overlap = a.ip() == p.ip() || a.ip().is_unspecified() || p.ip().is_unspecified();
            if same_port && overlap {
                c.err(
                    "metrics.listen",
                    format!("{a} overlaps the public listener {p}: metrics are never served on a public listener"),
                );
            }
        }
    }
    let path = raw
        .path
        .clone()
        .unwrap_or_else(|| DEFAULT_METRICS_PATH.into());
    if !path.starts_with('/') || path.contains(['?', '#']) || path.len() > 128 {
        c.err(
            "metrics.path",
            format!("{path:?}: expected an absolute path such as \"/metrics\""),
        );
    }
    MetricsConfig { listen, path }
}

/// Bytes the audit username-hash key needs at least.
const MIN_AUDIT_KEY_BYTES: usize = 32;

fn validate_audit(raw: Option<&raw::RawAudit>, file: &Path, c: &mut Collector<'_>) -> AuditConfig {
    let Some(raw) = raw else {
        return AuditConfig {
            enabled: true,
            file: None,
            username_hash_key: None,
        };
    };
    let username_hash_key = raw.username_hash_key_file.as_ref().and_then(|p| {
        let path = resolve_path(file, p);
        match std::fs::read_to_string(&path) {
            Ok(k) if k.trim().len() >= MIN_AUDIT_KEY_BYTES => Some(Secret(k.trim().to_string())),
            Ok(_) => {
                c.err(
                    "audit.username_hash_key_file",
                    format!(
                        "{}: the key must hold at least {MIN_AUDIT_KEY_BYTES} bytes",
                        path.display()
                    ),
                );
                None
            }
            Err(e) => {
                c.err(
                    "audit.username_hash_key_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    });
    AuditConfig {
        enabled: raw.enabled.unwrap_or(true),
        file: raw.file.as_ref().map(|p| resolve_path(file, p)),
        username_hash_key,
    }
}

/// The `[store]` TLS keys: only with `rediss://`; every file read and parsed now, so a bad one is
/// a load error naming the key and the file, not a connection that never comes up.
fn redis_tls(
    r: &raw::RawStore,
    url: Option<&url::Url>,
    file: &Path,
    c: &mut Collector<'_>,
) -> Option<RedisTls> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let tls = url.is_some_and(|u| u.scheme() == "rediss");
    let keys = [
        ("ca_file", &r.ca_file),
        ("client_cert_file", &r.client_cert_file),
        ("client_key_file", &r.client_key_file),
    ];
    if !tls {
        for (k, v) in keys {
            if v.is_some() && url.is_some() {
                c.err(format!("store.{k}"), "only used with a rediss:// url (TLS)");
            }
        }
        return None;
    }
    let mut read = |key: &str, f: &str| -> Option<Vec<u8>> {
        let p = resolve_path(file, f);
        match std::fs::read(&p) {
            Ok(b) => Some(b),
            Err(e) => {
                c.err(
                    format!("store.{key}"),
                    format!("cannot read {}: {e}", p.display()),
                );
                None
            }
        }
    };
    let certs_ok = |pem: &[u8]| {
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .is_ok_and(|v| !v.is_empty())
    };
    let ca_pem = r.ca_file.as_deref().and_then(|f| read("ca_file", f));
    let cert = r
        .client_cert_file
        .as_deref()
        .and_then(|f| read("client_cert_file", f));
    let key = r
        .client_key_file
        .as_deref()
        .and_then(|f| read("client_key_file", f));
    for (k, f, pem) in [
        ("ca_file", &r.ca_file, &ca_pem),
        ("client_cert_file", &r.client_cert_file, &cert),
    ] {
        if let (Some(f), Some(pem)) = (f, pem) {
            if !certs_ok(pem) {
                c.err(
                    format!("store.{k}"),
                    format!(
                        "{}: no PEM certificate in it",
                        resolve_path(file, f).display()
                    ),
                );
            }
        }
    }
    if let (Some(f), Some(pem)) = (&r.client_key_file, &key) {
        if PrivateKeyDer::from_pem_slice(pem).is_err() {
            c.err(
                "store.client_key_file",
                format!(
                    "{}: no PEM private key in it",
                    resolve_path(file, f).display()
                ),
            );
        }
    }
    let client = match (r.client_cert_file.is_some(), r.client_key_file.is_some()) {
        (true, false) => {
            c.err(
                "store.client_key_file",
                "missing: client_cert_file needs its key",
            );
            None
        }
        (false, true) => {
            c.err(
                "store.client_cert_file",
                "missing: client_key_file needs its certificate",
            );
            None
        }
        _ => match (cert, key) {
            (Some(cert), Some(key)) => match String::from_utf8(key) {
                Ok(k) => Some((cert, Secret(k))),
                Err(_) => {
                    c.err("store.client_key_file", "not a PEM file");
                    None
                }
            },
            _ => None,
        },
    };
    Some(RedisTls { ca_pem, client })
}

fn validate_store(raw: Option<&raw::RawStore>, file: &Path, c: &mut Collector<'_>) -> StoreConfig {
    let Some(r) = raw else {
        return StoreConfig::Memory;
    };
    match r.backend.as_deref() {
        None | Some("memory") => {
            for (k, v) in [
                ("url", r.url.is_some()),
                ("username", r.username.is_some()),
                ("password_file", r.password_file.is_some()),
                ("password_env", r.password_env.is_some()),
                ("key_prefix", r.key_prefix.is_some()),
                ("ca_file", r.ca_file.is_some()),
                ("client_cert_file", r.client_cert_file.is_some()),
                ("client_key_file", r.client_key_file.is_some()),
            ] {
                if v {
                    c.err(format!("store.{k}"), "only used with backend = \"redis\"");
                }
            }
            return StoreConfig::Memory;
        }
        Some("redis") => {}
        Some(o) => {
            c.err(
                "store.backend",
                format!("unknown backend {o:?} (expected \"memory\" or \"redis\")"),
            );
            return StoreConfig::Memory;
        }
    }
    let url = match r.url.as_deref() {
        None => {
            c.err("store.url", "missing: e.g. \"redis://127.0.0.1:6379/0\"");
            None
        }
        Some(u) => match url::Url::parse(u) {
            Ok(parsed) if parsed.scheme() != "redis" && parsed.scheme() != "rediss" => {
                c.err(
                    "store.url",
                    format!("{u:?}: the scheme must be redis:// or rediss:// (TLS)"),
                );
                None
            }
            Ok(parsed) if parsed.host_str().is_none_or(str::is_empty) => {
                c.err("store.url", format!("{u:?}: no host"));
                None
            }
            Ok(parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
                c.err(
                    "store.url",
                    "must not contain credentials: use store.username and store.password_file or store.password_env",
                );
                None
            }
            Ok(parsed) if parsed.query().is_some() || parsed.fragment().is_some() => {
                c.err("store.url", "must not have a query or fragment");
                None
            }
            Ok(parsed) => {
                let db = parsed.path().trim_start_matches('/');
                if !db.is_empty() && db.parse::<u16>().is_err() {
                    c.err(
                        "store.url",
                        format!("{u:?}: the path must be a database number, e.g. /0"),
                    );
                    None
                } else {
                    Some(parsed)
                }
            }
            Err(e) => {
                c.err("store.url", format!("invalid URL {u:?}: {e}"));
                None
            }
        },
    };
    let password = match (&r.password_file, &r.password_env) {
        (Some(_), Some(_)) => {
            c.err(
                "store.password_file",
                "set either password_file or password_env, not both",
            );
            None
        }
        (Some(f), None) => {
            let p = resolve_path(file, f);
            match std::fs::read_to_string(&p) {
                Ok(s) if !s.trim_end_matches(['\r', '\n']).is_empty() => {
                    Some(Secret(s.trim_end_matches(['\r', '\n']).to_string()))
                }
                Ok(_) => {
                    c.err("store.password_file", format!("{} is empty", p.display()));
                    None
                }
                Err(e) => {
                    c.err(
                        "store.password_file",
                        format!("cannot read {}: {e}", p.display()),
                    );
                    None
                }
            }
        }
        (None, Some(env)) => match std::env::var(env) {
            Ok(v) if !v.is_empty() => Some(Secret(v)),
            _ => {
                c.err(
                    "store.password_env",
                    format!("environment variable {env} is not set or empty"),
                );
                None
            }
        },
        (None, None) => None,
    };
    let key_prefix = r
        .key_prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string());
    if key_prefix.is_empty()
        || key_prefix.len() > 64
        || !key_prefix.bytes().all(|b| {
            b.is_ascii_graphic() && !matches!(b, b'{' | b'}' | b'*' | b'?' | b'[' | b']' | b'\\')
        })
    {
        c.err(
            "store.key_prefix",
            format!("{key_prefix:?}: 1 to 64 printable characters without spaces, braces, '*', '?', brackets or backslashes"),
        );
    }
    if let Some(u) = &r.username {
        if u.is_empty() || u.chars().any(|ch| ch.is_control() || ch == ' ') {
            c.err("store.username", "must be a non-empty name without spaces");
        }
    }
    let tls = redis_tls(r, url.as_ref(), file, c);
    match url {
        Some(url) => StoreConfig::Redis(Box::new(RedisConfig {
            url,
            username: r.username.clone(),
            password,
            key_prefix,
            tls,
        })),
        None => StoreConfig::Memory,
    }
}

fn validate_jwt(j: &RawJwt, file: &Path, c: &mut Collector<'_>) -> Option<JwtConfig> {
    let algorithm = match j.algorithm.as_deref() {
        None => JwtAlgorithm::EdDSA,
        Some(a) => match JwtAlgorithm::parse(a) {
            Some(a) => a,
            None => {
                c.err(
                    "auth.jwt.algorithm",
                    format!("unknown algorithm {a:?} (expected EdDSA, ES256, RS256 or HS256)"),
                );
                return None;
            }
        },
    };
    let signing_key = match (&j.signing_key, &j.signing_key_env) {
        (Some(f), None) => {
            let p = resolve_path(file, f);
            if !p.is_file() {
                c.err(
                    "auth.jwt.signing_key",
                    format!("file not found: {}", p.display()),
                );
            }
            KeySource::File(p)
        }
        (None, Some(env)) if algorithm == JwtAlgorithm::HS256 => KeySource::Env(env.clone()),
        (None, Some(_)) => {
            c.err(
                "auth.jwt.signing_key_env",
                "only HS256 secrets may come from the environment; asymmetric keys are PEM files",
            );
            return None;
        }
        (Some(_), Some(_)) => {
            c.err(
                "auth.jwt.signing_key",
                "set either signing_key or signing_key_env, not both",
            );
            return None;
        }
        (None, None) => {
            c.err(
                "auth.jwt.signing_key",
                "missing: path of the signing key (or signing_key_env for HS256)",
            );
            return None;
        }
    };
    let mut verify_keys = Vec::new();
    for (i, vk) in j.verify_keys.iter().enumerate() {
        let key = format!("auth.jwt.verify_keys[{i}]");
        let source = match (&vk.file, &vk.env) {
            (Some(f), None) => {
                let p = resolve_path(file, f);
                if !p.is_file() {
                    c.err(
                        format!("{key}.file"),
                        format!("file not found: {}", p.display()),
                    );
                }
                KeySource::File(p)
            }
            (None, Some(e)) => KeySource::Env(e.clone()),
            _ => {
                c.err(key, "needs exactly one of file or env");
                continue;
            }
        };
        if vk.kid.is_empty() {
            c.err(
                format!("auth.jwt.verify_keys[{i}].kid"),
                "must not be empty",
            );
        }
        verify_keys.push(VerifyKeyConfig {
            kid: vk.kid.clone(),
            source,
        });
    }
    let ttl = c.duration("auth.jwt.ttl", j.ttl.as_deref(), DEFAULT_JWT_TTL);
    let leeway = match j.leeway.as_deref() {
        None => DEFAULT_JWT_LEEWAY,
        Some(s) => match parse_duration(s) {
            Ok(d) if d <= Duration::from_secs(300) => d,
            Ok(_) => {
                c.err("auth.jwt.leeway", "must be at most 5m");
                DEFAULT_JWT_LEEWAY
            }
            Err(m) => {
                c.err("auth.jwt.leeway", m);
                DEFAULT_JWT_LEEWAY
            }
        },
    };
    let cache_size = j.cache_size.unwrap_or(DEFAULT_JWT_CACHE_SIZE);
    Some(JwtConfig {
        algorithm,
        signing_key,
        kid: j.kid.clone(),
        issuer: j.issuer.clone().unwrap_or_else(|| "authgate".into()),
        audience: j.audience.clone().unwrap_or_else(|| "authgate".into()),
        ttl,
        leeway,
        accept_bearer: j.accept_bearer.unwrap_or(false),
        cache_size,
        verify_keys,
    })
}

fn validate_headers(h: &raw::RawHeaders, c: &mut Collector<'_>) -> HeaderNames {
    let (user, email, groups, name) = match h.preset.as_deref() {
        None | Some("oauth2-proxy") => (
            "x-forwarded-user",
            "x-forwarded-email",
            "x-forwarded-groups",
            None,
        ),
        Some("authelia") => (
            "remote-user",
            "remote-email",
            "remote-groups",
            Some("remote-name"),
        ),
        Some(o) => {
            c.err(
                "headers.preset",
                format!("unknown preset {o:?} (expected \"oauth2-proxy\" or \"authelia\")"),
            );
            (
                "x-forwarded-user",
                "x-forwarded-email",
                "x-forwarded-groups",
                None,
            )
        }
    };
    // Preset names are static (cloning one per request then costs no reference count).
    let mut pick = |key: &str, over: &Option<String>, default: &'static str| -> HeaderName {
        match over {
            None => HeaderName::from_static(default),
            Some(s) => match HeaderName::from_bytes(s.as_bytes()) {
                Ok(n) if !crate::pipeline::headers::is_reserved_header(&n) => n,
                Ok(_) => {
                    c.err(key, format!("{s:?} is a header the gateway manages itself (hop-by-hop, Host, Cookie, X-Forwarded-For/Proto/Host)"));
                    HeaderName::from_static(default)
                }
                Err(_) => {
                    c.err(key, format!("{s:?} is not a valid header name"));
                    HeaderName::from_static(default)
                }
            },
        }
    };
    let user = pick("headers.user", &h.user, user);
    let email = pick("headers.email", &h.email, email);
    let groups = pick("headers.groups", &h.groups, groups);
    let name = match (&h.name, name) {
        (Some(_), d) => Some(pick(
            "headers.name",
            &h.name,
            d.unwrap_or("x-forwarded-name"),
        )),
        (None, Some(d)) => Some(HeaderName::from_static(d)),
        (None, None) => None,
    };
    HeaderNames {
        user,
        email,
        groups,
        name,
    }
}

fn validate_route(
    i: usize,
    r: &raw::RawRoute,
    file: &Path,
    c: &mut Collector<'_>,
) -> Option<RouteConfig> {
    let before = c.errors.len();
    let key = |k: &str| format!("routes[{i}].{k}");
    let host = match r.host.as_deref() {
        None | Some("") | Some("*") => HostMatch::Any,
        Some(h) => {
            let lower = h.to_ascii_lowercase();
            let (wild, name) = match lower.strip_prefix("*.") {
                Some(rest) => (true, rest.to_string()),
                None => (false, lower.clone()),
            };
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !valid {
                c.err(key("host"), format!("{h:?} is not a host name (expected e.g. \"app.example.com\" or \"*.example.com\", no port)"));
            }
            if wild {
                HostMatch::Suffix(format!(".{name}"))
            } else {
                HostMatch::Exact(name)
            }
        }
    };
    let prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
    if !prefix.starts_with('/')
        || prefix.contains("//")
        || prefix.split('/').any(|s| s == "." || s == "..")
        || prefix.bytes().any(|b| {
            b == b'%' || b == b'\\' || b == b'?' || b == b'#' || b.is_ascii_control() || b == b' '
        })
    {
        c.err(key("path_prefix"), format!("{prefix:?} must start with '/' and be a plain path (no '//', dot segments, '%', '\\', '?', '#')"));
    }
    // Unreserved characters only: a sub-delimiter (`+`, `=`, `:`, `@`, ...) stays percent-encoded
    // in a normalised path, so `/a%2Bb` would miss a `/a+b` prefix and go to another route, while
    // an app that decodes reads `/a+b`.
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/'))
    {
        c.err(
            key("path_prefix"),
            format!("{prefix:?} may only use letters, digits and - . _ ~ / (other characters can reach an app percent-encoded, past the route)"),
        );
    }
    let path_prefix = prefix.trim_end_matches('/').to_string();
    if path_prefix == "/.auth" || path_prefix.starts_with("/.auth/") {
        c.err(
            key("path_prefix"),
            "/.auth is reserved for the gateway's own endpoints",
        );
    }
    let upstream = if r.upstream == "builtin:whoami" {
        UpstreamTarget::Whoami
    } else if let Some(other) = r.upstream.strip_prefix("builtin:") {
        c.err(
            key("upstream"),
            format!("unknown builtin {other:?} (available: builtin:whoami)"),
        );
        UpstreamTarget::Whoami
    } else {
        match url::Url::parse(&r.upstream) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => {
                if u.query().is_some()
                    || u.fragment().is_some()
                    || !u.username().is_empty()
                    || u.password().is_some()
                {
                    c.err(
                        key("upstream"),
                        "must not contain a query, fragment or credentials",
                    );
                }
                let host = u.host_str().unwrap_or_default();
                let port = u.port_or_known_default().unwrap_or(80);
                let auth_str = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                match auth_str.parse::<Authority>() {
                    Ok(authority) => UpstreamTarget::Http {
                        scheme: if u.scheme() == "https" {
                            Scheme::HTTPS
                        } else {
                            Scheme::HTTP
                        },
                        authority,
                        base_path: u.path().trim_end_matches('/').to_string(),
                    },
                    Err(_) => {
                        c.err(key("upstream"), format!("invalid host in {:?}", r.upstream));
                        UpstreamTarget::Whoami
                    }
                }
            }
            Ok(_) => {
                c.err(
                    key("upstream"),
                    format!(
                        "{:?}: expected http://host:port[/base], https://… or builtin:whoami",
                        r.upstream
                    ),
                );
                UpstreamTarget::Whoami
            }
            Err(e) => {
                c.err(
                    key("upstream"),
                    format!("invalid URL {:?}: {e}", r.upstream),
                );
                UpstreamTarget::Whoami
            }
        }
    };
    let access = match r.access.as_deref() {
        None | Some("authenticated") => Access::Authenticated,
        Some("public") => Access::Public,
        Some(o) => {
            c.err(
                key("access"),
                format!("unknown access {o:?} (expected \"public\" or \"authenticated\")"),
            );
            Access::Authenticated
        }
    };
    if access == Access::Public && (r.allow_groups.is_some() || r.allow_users.is_some()) {
        c.err(
            key("access"),
            "a public route cannot have allow_groups/allow_users; use access = \"authenticated\"",
        );
    }
    for (k, v) in [
        ("allow_groups", &r.allow_groups),
        ("allow_users", &r.allow_users),
    ] {
        if let Some(list) = v {
            if list.is_empty() {
                c.err(
                    key(k),
                    "an empty list would deny everyone; remove the key instead",
                );
            }
        }
    }
    let timeout = c.duration(&key("timeout"), r.timeout.as_deref(), DEFAULT_ROUTE_TIMEOUT);
    let upgrades: Vec<String> = match &r.upgrades {
        None => DEFAULT_UPGRADES.iter().map(|s| s.to_string()).collect(),
        Some(list) => list.iter().map(|p| p.to_ascii_lowercase()).collect(),
    };
    for (j, p) in upgrades.iter().enumerate() {
        let token = !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&'*+-.^_`|~".contains(&b));
        if !token {
            c.err(
                format!("routes[{i}].upgrades[{j}]"),
                format!("{p:?} is not a protocol name (e.g. \"websocket\")"),
            );
        } else if crate::pipeline::route::never_tunnelled(
            p.split('/').next().unwrap_or_default().as_bytes(),
        ) {
            c.err(
                format!("routes[{i}].upgrades[{j}]"),
                format!("{p:?} can never be tunnelled: the upstream would then speak HTTP with the client directly, past routing and authentication"),
            );
        }
    }
    let tls_ca = r.tls_ca.as_ref().map(|p| {
        let p = resolve_path(file, p);
        if !p.is_file() {
            c.err(key("tls_ca"), format!("file not found: {}", p.display()));
        }
        p
    });
    let policy = validate_policy(i, r, access, c);
    if c.errors.len() != before {
        return None;
    }
    let name = match &r.name {
        Some(n) => {
            if !route_name_ok(n) {
                c.err(
                    key("name"),
                    format!(
                        "{n:?}: use 1 to 64 of A-Z a-z 0-9 - _ . / : * (it is a metrics label)"
                    ),
                );
            }
            n.clone()
        }
        None => default_route_name(&host, &path_prefix),
    };
    Some(RouteConfig {
        index: i,
        name,
        host,
        path_prefix,
        upstream,
        upstream_label: r.upstream.clone(),
        preserve_host: r.preserve_host.unwrap_or(false),
        timeout,
        tls_ca,
        upgrades,
        allow_trace: r.allow_trace.unwrap_or(false),
        pass_access_token: r.pass_access_token.unwrap_or(false),
        policy,
    })
}

/// A list of names for `allow_groups`/`allow_users`: present means non-empty.
fn allow_list(c: &mut Collector<'_>, key: String, v: &Option<Vec<String>>) {
    if v.as_ref().is_some_and(Vec::is_empty) {
        c.err(
            key,
            "an empty list would deny everyone; remove the key instead",
        );
    }
}

/// A network list (`networks`, `not_networks`): CIDR blocks or single addresses.
fn networks(
    c: &mut Collector<'_>,
    key: &str,
    v: &Option<Vec<String>>,
) -> Option<Vec<ipnet::IpNet>> {
    let list = v.as_ref()?;
    if list.is_empty() {
        c.err(key, "an empty list never matches; remove the key instead");
    }
    let mut out = Vec::with_capacity(list.len());
    for (j, n) in list.iter().enumerate() {
        let parsed = n
            .parse::<ipnet::IpNet>()
            .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => out.push(net.trunc()),
            Err(_) => c.err(
                format!("{key}[{j}]"),
                format!("{n:?} is not a network (expected e.g. \"10.0.0.0/8\", \"fd00::/8\" or an address)"),
            ),
        }
    }
    Some(out)
}

/// The route's policy: its own access and allow lists, `[[routes.rules]]`, `cors_preflight` and
/// `unauthenticated`. Invalid globs, methods and networks are errors; so is a rule that can never
/// decide because an earlier one (or a deny rule) matches everything it matches: such a rule is
/// usually a stricter exception written after the general case, and ignoring it would admit
/// people it was written to keep out.
fn validate_policy(
    i: usize,
    r: &raw::RawRoute,
    access: Access,
    c: &mut Collector<'_>,
) -> crate::policy::Policy {
    use crate::policy::{Glob, Policy, Rule, RuleAccess, Unauthenticated};
    let before = c.errors.len();
    let key = |k: &str| format!("routes[{i}].{k}");
    let preflight_bypass = match r.cors_preflight.as_deref() {
        None | Some("authenticate") => false,
        Some("bypass") => true,
        Some(o) => {
            c.err(
                key("cors_preflight"),
                format!("unknown value {o:?} (expected \"bypass\" or \"authenticate\")"),
            );
            false
        }
    };
    let unauthenticated = match r.unauthenticated.as_deref() {
        None | Some("redirect") => Unauthenticated::Redirect,
        Some("401") => Unauthenticated::Status401,
        Some(o) => {
            c.err(
                key("unauthenticated"),
                format!("unknown value {o:?} (expected \"redirect\" or \"401\")"),
            );
            Unauthenticated::Redirect
        }
    };
    let require = |c: &mut Collector<'_>, key: String, v: &Option<String>| match v.as_deref() {
        None => None,
        Some("mfa") => Some(true),
        Some("password") => Some(false),
        Some(o) => {
            c.err(
                key,
                format!("unknown level {o:?} (expected \"mfa\" or \"password\")"),
            );
            None
        }
    };
    let max_age = |c: &mut Collector<'_>, key: String, v: &Option<String>| {
        v.as_deref()
            .map(|s| c.duration(&key, Some(s), Duration::from_secs(3600)))
    };
    let level = crate::policy::Level {
        mfa: require(c, key("require"), &r.require).unwrap_or(false),
        max_auth_age: max_age(c, key("max_auth_age"), &r.max_auth_age),
    };
    if access == Access::Public && (r.require.is_some() || r.max_auth_age.is_some()) {
        c.err(
            key("require"),
            "a public route cannot have require/max_auth_age; use access = \"authenticated\"",
        );
    }
    let mut rules = Vec::with_capacity(r.rules.len());
    for (j, raw) in r.rules.iter().enumerate() {
        let rkey = |k: &str| format!("routes[{i}].rules[{j}].{k}");
        let paths = raw.paths.as_ref().map(|list| {
            if list.is_empty() {
                c.err(
                    rkey("paths"),
                    "an empty list never matches; remove the key instead",
                );
            }
            let mut globs = Vec::with_capacity(list.len());
            for (k, p) in list.iter().enumerate() {
                match Glob::parse(p) {
                    Ok(g) => globs.push(g),
                    Err(m) => c.err(format!("routes[{i}].rules[{j}].paths[{k}]"), m),
                }
            }
            globs
        });
        let methods = raw.methods.as_ref().map(|list| {
            if list.is_empty() {
                c.err(
                    rkey("methods"),
                    "an empty list never matches; remove the key instead",
                );
            }
            let mut out = Vec::with_capacity(list.len());
            for (k, m) in list.iter().enumerate() {
                let token = !m.is_empty()
                    && m.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if token {
                    out.push(m.to_ascii_uppercase());
                } else {
                    c.err(
                        format!("routes[{i}].rules[{j}].methods[{k}]"),
                        format!("{m:?} is not a method name (e.g. \"POST\")"),
                    );
                }
            }
            out
        });
        let networks_v = networks(c, &rkey("networks"), &raw.networks);
        let not_networks = networks(c, &rkey("not_networks"), &raw.not_networks);
        let access = match raw.access.as_deref() {
            None => None,
            Some("public") => Some(RuleAccess::Public),
            Some("deny") => Some(RuleAccess::Deny),
            Some("authenticated") => Some(RuleAccess::Authenticated),
            Some(o) => {
                c.err(
                    rkey("access"),
                    format!(
                        "unknown access {o:?} (expected \"public\", \"authenticated\" or \"deny\")"
                    ),
                );
                None
            }
        };
        if matches!(access, Some(RuleAccess::Public | RuleAccess::Deny))
            && (raw.allow_groups.is_some() || raw.allow_users.is_some())
        {
            c.err(
                rkey("access"),
                "a public or deny rule cannot have allow_groups/allow_users",
            );
        }
        allow_list(c, rkey("allow_groups"), &raw.allow_groups);
        allow_list(c, rkey("allow_users"), &raw.allow_users);
        let require_mfa = require(c, rkey("require"), &raw.require);
        let max_auth_age = max_age(c, rkey("max_auth_age"), &raw.max_auth_age);
        if matches!(access, Some(RuleAccess::Public | RuleAccess::Deny))
            && (raw.require.is_some() || raw.max_auth_age.is_some())
        {
            c.err(
                rkey("require"),
                "a public or deny rule cannot have require/max_auth_age",
            );
        }
        rules.push(Rule {
            require_mfa,
            max_auth_age,
            paths,
            methods,
            networks: networks_v,
            not_networks,
            access,
            allow_groups: raw.allow_groups.clone(),
            allow_users: raw.allow_users.clone(),
        });
    }
    let policy = Policy {
        public: access == Access::Public,
        level,
        allow_groups: r.allow_groups.clone(),
        allow_users: r.allow_users.clone(),
        uses_network: rules.iter().any(Rule::uses_network),
        rules,
        preflight_bypass,
        unauthenticated,
    };
    // Only over rules that compiled whole: a rule missing an invalid glob is not the rule written.
    let shadowed = if c.errors.len() == before {
        policy.shadowed()
    } else {
        Vec::new()
    };
    for (j, by) in shadowed {
        let how = if policy.rules[by].access() == RuleAccess::Deny {
            format!("deny rule routes[{i}].rules[{by}] matches every request it matches (a deny rule wins wherever it stands)")
        } else {
            format!("routes[{i}].rules[{by}] comes first and matches every request it matches (the first matching rule decides)")
        };
        c.err(
            format!("routes[{i}].rules[{j}]"),
            format!("this rule can never decide: {how}; put the narrower rule first or remove it"),
        );
    }
    policy
}
