//! Raw configuration as written in `gateway.toml`: serde structs that reject unknown keys.
//! Nothing here is trusted; `super::validate` turns it into domain types.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub headers: RawHeaders,
    #[serde(default)]
    pub users: Vec<RawUser>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    pub store: Option<RawStore>,
    pub metrics: Option<RawMetrics>,
    pub audit: Option<RawAudit>,
}

/// `[metrics]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<String>,
    pub path: Option<String>,
}

/// `[audit]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub enabled: Option<bool>,
    pub file: Option<String>,
    pub username_hash_key_file: Option<String>,
}

/// `[store]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub backend: Option<String>,
    pub url: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
    pub key_prefix: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
}

/// `[server]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub max_connections: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
    pub max_header_bytes: Option<usize>,
    pub workers: Option<usize>,
    pub runtime: Option<String>,
    pub tunnel_idle_timeout: Option<String>,
    pub watch_config: Option<bool>,
    pub forward_auth_policy: Option<bool>,
}

/// `[server.tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub listen: String,
    pub cert: String,
    pub key: String,
    pub handshake_timeout: Option<String>,
}

/// `[log]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub access_log: Option<bool>,
}

/// `[auth]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub mode: Option<String>,
    pub cookie_name: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_lifetime: Option<String>,
    pub users_file: Option<String>,
    pub max_sessions: Option<u64>,
    pub login_failures_per_minute: Option<u32>,
    pub login_failures_per_minute_per_address: Option<u32>,
    pub login_concurrency: Option<usize>,
    pub otp_failures_per_minute: Option<u32>,
    pub credentials_file: Option<String>,
    pub credentials_key_file: Option<String>,
    pub credentials_key_env: Option<String>,
    pub password_login: Option<bool>,
    pub jwt: Option<RawJwt>,
    #[serde(default)]
    pub oidc: Vec<RawOidc>,
}

/// `[[auth.oidc]]`
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    pub id: String,
    pub display_name: Option<String>,
    pub issuer: String,
    pub client_id: String,
    pub client_secret_file: Option<String>,
    pub client_secret_env: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub user_claim: Option<String>,
    pub email_claim: Option<String>,
    pub groups_claim: Option<String>,
    pub groups_prefix: Option<String>,
    pub allowed_email_domains: Option<Vec<String>>,
    pub allowed_groups: Option<Vec<String>>,
    pub users: Option<String>,
    pub allow_unverified_email: Option<bool>,
    pub id_token_algorithms: Option<Vec<String>>,
    pub logout_at_provider: Option<bool>,
    pub ca_file: Option<String>,
}

/// `[auth.jwt]`
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub algorithm: Option<String>,
    pub signing_key: Option<String>,
    pub signing_key_env: Option<String>,
    pub kid: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub ttl: Option<String>,
    pub leeway: Option<String>,
    pub accept_bearer: Option<bool>,
    pub cache_size: Option<u64>,
    #[serde(default)]
    pub verify_keys: Vec<RawVerifyKey>,
}

/// One entry of `[[auth.jwt.verify_keys]]`: an older key kept for verification only.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawVerifyKey {
    pub kid: String,
    pub file: Option<String>,
    pub env: Option<String>,
}

/// `[headers]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    pub preset: Option<String>,
    pub user: Option<String>,
    pub email: Option<String>,
    pub groups: Option<String>,
    pub name: Option<String>,
}

/// `[[users]]`, inline or in `users_file`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub username: String,
    pub password_hash: String,
    pub email: Option<String>,
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub demo: bool,
}

/// The schema of `users_file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsersFile {
    #[serde(default)]
    pub users: Vec<RawUser>,
}

/// `[[routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub upstream: String,
    pub access: Option<String>,
    pub allow_groups: Option<Vec<String>>,
    pub allow_users: Option<Vec<String>>,
    pub preserve_host: Option<bool>,
    pub timeout: Option<String>,
    pub tls_ca: Option<String>,
    pub upgrades: Option<Vec<String>>,
    pub allow_trace: Option<bool>,
    pub cors_preflight: Option<String>,
    pub unauthenticated: Option<String>,
    pub require: Option<String>,
    pub max_auth_age: Option<String>,
    pub pass_access_token: Option<bool>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

/// `[[routes.rules]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub paths: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    pub networks: Option<Vec<String>>,
    pub not_networks: Option<Vec<String>>,
    pub access: Option<String>,
    pub allow_groups: Option<Vec<String>>,
    pub allow_users: Option<Vec<String>>,
    pub require: Option<String>,
    pub max_auth_age: Option<String>,
}
