//! The two lifetimes of state: the runtime snapshot (derived from config, swapped whole on reload)
//! and live state (sessions, revocations, rate limits), which a reload never touches.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::auth::jwt::{JwtKeys, TokenCache};
use crate::auth::revocation::{RevocationStore, Revocations};
use crate::auth::session::{MemorySessionStore, SessionStore};
use crate::auth::users::Users;
use crate::config::{
    AuthMode, Config, ConfigError, ConfigErrors, UpstreamTarget, ALL_PRESET_HEADERS,
};
use crate::login::limit::{LoginLimitStore, LoginLimiter};
use crate::pipeline::headers::{NameSet, FORWARDING_HEADERS};
use crate::pipeline::route::{Route, Router};
use crate::pipeline::upstream::{tls_config, UpstreamPool};

/// Everything derived from one configuration, built and validated before it is used.
pub struct Runtime {
    /// The configuration it came from.
    pub config: Config,
    /// Routes.
    pub router: Router,
    /// Users by name, with prepared identity header values.
    pub users: Users,
    /// Second factors (`[auth] credentials_file`), opened.
    pub credentials: Option<Arc<crate::auth::credentials::Credentials>>,
    /// External OpenID Connect providers (`[[auth.oidc]]`), prepared; nothing fetched yet.
    pub oidc: crate::login::oidc::Providers,
    /// Normalised identity header names stripped from every client request.
    pub strip_names: NameSet,
    /// Normalised forwarding header names stripped unless the peer is trusted.
    pub forwarding_names: NameSet,
    /// Upstream connection pools, one per distinct (scheme, authority, CA); routes index them.
    pub upstreams: Vec<Arc<UpstreamPool>>,
    /// JWT keys (jwt mode).
    pub jwt: Option<Arc<JwtKeys>>,
    /// TLS server configuration (when an HTTPS listener is configured).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Password hash verified for unknown users (equal timing).
    pub dummy_hash: crate::auth::password::PasswordHashKind,
    /// Metrics, audit and access log: shared by every snapshot of one gateway.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// The log format in force (`AUTHGATE_LOG_FORMAT` overrides `[log] format`).
    pub log_format: crate::config::LogFormat,
    /// When the HTTPS listener's certificate expires (unix seconds), if there is one.
    pub tls_not_after: Option<i64>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("routes", &self.router.routes().len())
            .field("users", &self.users.len())
            .finish()
    }
}

impl Runtime {
    /// Builds the snapshot: parses keys, certificates and hashes once. Its telemetry is its
    /// own and opens no file (a gateway passes its telemetry to [`Runtime::build_with`]).
    pub fn build(config: Config) -> Result<Runtime, ConfigErrors> {
        let telemetry = crate::telemetry::Telemetry::detached(&config);
        Runtime::build_with(config, telemetry)
    }

    /// Builds the snapshot with the gateway's `telemetry` (routes get their metric series).
    pub fn build_with(
        config: Config,
        telemetry: Arc<crate::telemetry::Telemetry>,
    ) -> Result<Runtime, ConfigErrors> {
        let file = config.source.clone();
        let err = |key: &str, message: String| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                key: key.into(),
                line: None,
                message,
            }])
        };
        let users = Users::build(&config.users).map_err(|m| err("users", m))?;

        // TLS client configurations: the public roots, plus one per distinct route CA, built
        // only when an https upstream needs them.
        let mut tls_configs: Vec<(Option<std::path::PathBuf>, Arc<rustls::ClientConfig>)> =
            Vec::new();
        let mut upstreams: Vec<(String, Option<std::path::PathBuf>, Arc<UpstreamPool>)> =
            Vec::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let key = |k: &str| format!("routes[{}].{k}", r.index);
            let pool = match &r.upstream {
                UpstreamTarget::Whoami => usize::MAX,
                UpstreamTarget::Http {
                    scheme, authority, ..
                } => {
                    let id = format!("{scheme}://{authority}");
                    match upstreams
                        .iter()
                        .position(|(i, ca, _)| *i == id && *ca == r.tls_ca)
                    {
                        Some(i) => i,
                        None => {
                            // A CA is loaded (and so checked) even where an http upstream
                            // cannot use it.
                            let tls = if *scheme == http::uri::Scheme::HTTPS || r.tls_ca.is_some() {
                                let cfg = match tls_configs.iter().find(|(ca, _)| *ca == r.tls_ca) {
                                    Some((_, c)) => c.clone(),
                                    None => {
                                        let c = tls_config(r.tls_ca.as_deref())
                                            .map_err(|m| err(&key("tls_ca"), m))?;
                                        tls_configs.push((r.tls_ca.clone(), c.clone()));
                                        c
                                    }
                                };
                                Some(cfg)
                            } else {
                                None
                            };
                            let pool = UpstreamPool::new(scheme, authority, tls)
                                .map_err(|m| err(&key("upstream"), m))?;
                            upstreams.push((id, r.tls_ca.clone(), Arc::new(pool)));
                            upstreams.len() - 1
                        }
                    }
                }
            };
            let target = match &r.upstream {
                UpstreamTarget::Whoami => "builtin:whoami".to_string(),
                UpstreamTarget::Http { .. } => r.upstream_label.clone(),
            };
            routes.push(Route {
                metrics: Arc::new(telemetry.metrics.route(&r.name)),
                config: r.clone(),
                label: Arc::from(format!("routes[{}]→{target}", r.index)),
                pool,
                host_header: match &r.upstream {
                    UpstreamTarget::Http { authority, .. } => Some(
                        http::HeaderValue::from_str(authority.as_str()).map_err(|_| {
                            err(
                                &format!("routes[{}].upstream", r.index),
                                "host is not a valid Host header".into(),
                            )
                        })?,
                    ),
                    UpstreamTarget::Whoami => None,
                },
            });
        }

        // `(key, message)` pairs of a loader as errors of this file.
        let in_file = |errs: Vec<(String, String)>| {
            ConfigErrors(
                errs.into_iter()
                    .map(|(key, message)| ConfigError {
                        file: file.clone(),
                        key,
                        line: None,
                        message,
                    })
                    .collect(),
            )
        };
        let jwt = match (&config.auth.jwt, config.auth.mode) {
            (Some(j), AuthMode::Jwt) => Some(Arc::new(JwtKeys::load(j).map_err(in_file)?)),
            _ => None,
        };
        let credentials = match &config.auth.credentials {
            Some(cc) => Some(Arc::new(
                crate::auth::credentials::Credentials::load(cc).map_err(in_file)?,
            )),
            None => None,
        };
        let tls = match &config.server.tls {
            Some(t) => {
                Some(crate::server::tls::server_config(t).map_err(|m| err("server.tls", m))?)
            }
            None => None,
        };

        let h = &config.headers;
        let mut strip_names: Vec<String> = ALL_PRESET_HEADERS
            .iter()
            .chain(crate::pipeline::headers::ALWAYS_STRIPPED)
            .map(|s| s.to_string())
            .collect();
        for n in [
            Some(&h.user),
            Some(&h.email),
            Some(&h.groups),
            h.name.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            let norm = n.as_str().replace(['_', '.'], "-");
            if !strip_names.contains(&norm) {
                strip_names.push(norm);
            }
        }
        let dummy_hash = crate::auth::password::dummy_hash_like(users.iter().map(|u| &u.hash));
        let tls_not_after = match &config.server.tls {
            Some(t) => crate::server::tls::certificate_not_after(&t.cert),
            None => None,
        };
        let oidc =
            crate::login::oidc::Providers::build(&config.auth.oidc).map_err(|(k, m)| err(&k, m))?;
        Ok(Runtime {
            oidc,
            log_format: telemetry.format(&config),
            telemetry,
            tls_not_after,
            router: Router::new(routes),
            users,
            credentials,
            strip_names: NameSet::new(strip_names),
            forwarding_names: NameSet::new(FORWARDING_HEADERS.iter().map(|s| s.to_string())),
            upstreams: upstreams.into_iter().map(|(_, _, p)| p).collect(),
            jwt,
            tls,
            dummy_hash,
            config,
        })
    }

    /// The JWT verifier's clock leeway in seconds (0 outside JWT mode).
    pub fn jwt_leeway_secs(&self) -> u64 {
        self.config
            .auth
            .jwt
            .as_ref()
            .map_or(0, |j| j.leeway.as_secs())
    }

    /// Whether `Authorization: Bearer` tokens are accepted.
    pub fn bearer_enabled(&self) -> bool {
        self.config.auth.mode == AuthMode::Jwt
            && self
                .config
                .auth
                .jwt
                .as_ref()
                .is_some_and(|j| j.accept_bearer)
    }
}

/// State that lives across reloads.
pub struct Live {
    /// Sessions (session mode).
    pub sessions: Arc<dyn SessionStore>,
    /// Revoked tokens and per-user not-before times (jwt mode).
    pub revocations: Arc<dyn RevocationStore>,
    /// Verified-token cache (jwt mode).
    pub token_cache: TokenCache,
    /// Failed-login counters.
    pub limiter: Arc<dyn LoginLimitStore>,
    /// The second factor's live state.
    pub otp: Arc<dyn crate::store::otp::OtpStore>,
    /// Bounds concurrent password verifications (and the queue in front of them).
    pub hash_pool: Arc<Semaphore>,
    /// Low-priority threads that verify passwords.
    pub hasher: crate::login::hashing::HashPool,
    /// Whether the stores are remote (a session may need [`SessionStore::fetch`] first).
    pub remote: bool,
}

impl Live {
    /// Live state in memory, sized by the configuration it starts with.
    pub fn new(cfg: &Config) -> Live {
        let a = &cfg.auth;
        Live::with_stores(
            cfg,
            Arc::new(MemorySessionStore::new(
                a.idle_timeout,
                a.max_lifetime,
                a.max_sessions,
            )),
            Arc::new(Revocations::new(a.max_sessions)),
            Arc::new(LoginLimiter::new(a.into())),
            Arc::new(crate::store::otp::MemoryOtp::new(a.otp_failures_per_minute)),
            false,
        )
    }

    /// Live state on the configured backend (`[store]`). The Redis backend starts its
    /// connection tasks on the current runtime and never waits for Redis here.
    pub fn open(cfg: &Config) -> Result<Live, String> {
        match &cfg.store {
            crate::config::StoreConfig::Memory => Ok(Live::new(cfg)),
            crate::config::StoreConfig::Redis(r) => {
                let s = crate::store::redis::open(r, &cfg.auth)?;
                Ok(Live::with_stores(
                    cfg,
                    Arc::new(s.sessions),
                    Arc::new(s.revocations),
                    Arc::new(s.limits),
                    Arc::new(s.otp),
                    true,
                ))
            }
        }
    }

    fn with_stores(
        cfg: &Config,
        sessions: Arc<dyn SessionStore>,
        revocations: Arc<dyn RevocationStore>,
        limiter: Arc<dyn LoginLimitStore>,
        otp: Arc<dyn crate::store::otp::OtpStore>,
        remote: bool,
    ) -> Live {
        let a = &cfg.auth;
        Live {
            sessions,
            revocations,
            token_cache: TokenCache::new(
                a.jwt
                    .as_ref()
                    .map_or(crate::config::DEFAULT_JWT_CACHE_SIZE, |j| j.cache_size),
            ),
            limiter,
            otp,
            hash_pool: Arc::new(Semaphore::new(a.login_concurrency)),
            hasher: crate::login::hashing::HashPool::new(a.login_concurrency),
            remote,
        }
    }
}

/// Everything a connection task needs.
pub struct Shared {
    /// The current snapshot.
    pub runtime: ArcSwap<Runtime>,
    /// Live state.
    pub live: Live,
    /// Open upgraded tunnels (WebSocket): re-checked while open, waited for on shutdown.
    pub tunnels: Arc<crate::pipeline::tunnel::Tunnels>,
    /// Listeners are up.
    pub ready: AtomicBool,
    /// Request counter for request ids.
    pub request_seq: AtomicU64,
    /// Random per-process prefix for request ids.
    pub request_prefix: u32,
    /// Connection cap (`server.max_connections`): held by every connection and every tunnel.
    pub conn_limit: Arc<Semaphore>,
    /// Held while a reload reads and swaps (SIGHUP, the file watch and the API never overlap).
    pub reload_lock: std::sync::Mutex<()>,
    /// Sign-in starts per client address (external providers).
    pub oidc_starts: crate::login::oidc::StartLimiter,
}

impl Shared {
    /// Builds shared state from a first snapshot (in memory).
    pub fn new(runtime: Runtime) -> Arc<Shared> {
        let live = Live::new(&runtime.config);
        Shared::with_live(runtime, live)
    }

    /// Builds shared state from a first snapshot and its live state.
    pub fn with_live(runtime: Runtime, live: Live) -> Arc<Shared> {
        let conn_limit = Arc::new(Semaphore::new(runtime.config.server.max_connections));
        let mut p = [0u8; 4];
        let _ = getrandom::fill(&mut p);
        Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            live,
            tunnels: Arc::new(crate::pipeline::tunnel::Tunnels::new()),
            ready: AtomicBool::new(false),
            request_seq: AtomicU64::new(0),
            request_prefix: u32::from_le_bytes(p),
            conn_limit,
            reload_lock: std::sync::Mutex::new(()),
            oidc_starts: Default::default(),
        })
    }
}
