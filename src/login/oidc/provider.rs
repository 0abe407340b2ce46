//! One external OpenID Connect provider: its discovery document and keys (fetched lazily,
//! cached, refetched with a bound), and the checks an ID token must pass.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::fetch::{origin, FetchError, IdpClient};
use crate::config::oidc::OidcConfig;

/// A discovery document is reused this long before it is fetched again.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// Documents older than this are not used even while the provider cannot be reached: its keys
/// may have been rotated out because they leaked.
pub const STALE_LIMIT: Duration = Duration::from_secs(2 * 3600);
/// After a failed fetch, the provider is not asked again for this long (its button answers with
/// the error page meanwhile; a login a few seconds later tries again).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// A token signed by a key the cached set lacks makes the keys be fetched again, at most this
/// often (key rotation works; a stream of forged `kid`s cannot make us hammer the provider).
pub const JWKS_REFETCH_MIN: Duration = Duration::from_secs(30);
/// Clock skew tolerated on `exp`, `iat` and `nbf`.
pub const LEEWAY_SECS: u64 = 60;

/// The endpoints a provider announces.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The authorization endpoint.
    pub authorization_endpoint: url::Url,
    /// The token endpoint.
    pub token_endpoint: url::Url,
    /// The key set.
    pub jwks_uri: url::Url,
    /// The userinfo endpoint, if any.
    pub userinfo_endpoint: Option<url::Url>,
    /// RP-initiated logout, if offered.
    pub end_session_endpoint: Option<url::Url>,
    /// The provider always sends `iss` with the authorization response (RFC 9207).
    pub iss_parameter: bool,
    /// Only `client_secret_post` is offered (else `client_secret_basic` is used).
    pub secret_post_only: bool,
}

#[derive(Deserialize)]
struct RawDiscovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    userinfo_endpoint: Option<String>,
    end_session_endpoint: Option<String>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

/// Why a provider cannot be used right now, or why its answer was refused. The text is for the
/// log; the browser gets a generic page.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Unreachable, or answering garbage.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// It answered, but something it said is refused.
    #[error("{0}")]
    Refused(String),
}

impl From<FetchError> for ProviderError {
    fn from(e: FetchError) -> Self {
        ProviderError::Unavailable(e.to_string())
    }
}

struct Cached {
    discovery: Arc<Discovery>,
    keys: Arc<JwkSet>,
    fetched: Instant,
    keys_fetched: Instant,
}

/// One configured provider with its cached documents.
pub struct Provider {
    /// Its configuration.
    pub cfg: OidcConfig,
    /// Stamped into every credential it vouches for, in place of a password version: a change
    /// of issuer, client, user mapping or group prefix ends the logins made under the old one.
    pub version: u64,
    client: IdpClient,
    cached: tokio::sync::Mutex<Option<Cached>>,
    failed_at: Mutex<Option<Instant>>,
    /// Last known state, so that a change is logged once, not every attempt.
    reachable: AtomicBool,
}

/// Whether `u` may be used to talk to a provider: https, or http on a loopback address.
fn acceptable_endpoint(u: &url::Url) -> bool {
    match u.scheme() {
        "https" => true,
        "http" => match u.host() {
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        },
        _ => false,
    }
}

/// An endpoint named by the discovery of the issuer `issuer`: https, or plain http on loopback
/// only when the issuer itself is (a test provider); an https issuer cannot send the client
/// secret or a token to a plain-http service.
fn endpoint(issuer: &str, name: &str, s: &str) -> Result<url::Url, ProviderError> {
    let u = url::Url::parse(s)
        .map_err(|_| ProviderError::Refused(format!("discovery: {name} is not a URL")))?;
    let https_issuer = issuer.starts_with("https://");
    if !acceptable_endpoint(&u) || (https_issuer && u.scheme() != "https") {
        return Err(ProviderError::Refused(format!(
            "discovery: {name} must be https (plain http only on loopback, for a plain-http issuer)"
        )));
    }
    Ok(u)
}

/// The version stamp of a provider configuration (see [`Provider::version`]).
pub fn version_of(cfg: &OidcConfig) -> u64 {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let users = match cfg.users {
        crate::config::oidc::OidcUsers::Trust => "trust",
        crate::config::oidc::OidcUsers::Link => "link",
    };
    for part in [
        "authgate oidc",
        &cfg.id,
        &cfg.issuer,
        &cfg.client_id,
        users,
        &cfg.groups_prefix,
    ] {
        ctx.update(part.as_bytes());
        ctx.update(b"\0");
    }
    let d = ctx.finish();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b)
}

impl Provider {
    /// A provider for `cfg`; nothing is fetched yet.
    pub fn new(cfg: OidcConfig) -> Result<Provider, String> {
        let client = IdpClient::new(cfg.ca_file.as_deref())?;
        Ok(Provider {
            version: version_of(&cfg),
            cfg,
            client,
            cached: tokio::sync::Mutex::new(None),
            failed_at: Mutex::new(None),
            reachable: AtomicBool::new(true),
        })
    }

    /// The cached discovery document, if any, without waiting (logout uses it).
    pub fn cached_discovery(&self) -> Option<Arc<Discovery>> {
        let c = self.cached.try_lock().ok()?;
        c.as_ref().map(|c| c.discovery.clone())
    }

    /// Whether its last fetch succeeded (true until one failed).
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }

    /// The HTTP client for this provider.
    pub fn client(&self) -> &IdpClient {
        &self.client
    }

    fn note(&self, ok: bool, why: &str) {
        if self.reachable.swap(ok, Ordering::AcqRel) != ok {
            if ok {
                tracing::info!(provider = %self.cfg.id, "identity provider reachable again");
            } else {
                tracing::warn!(provider = %self.cfg.id, reason = %why, "identity provider unavailable");
            }
        }
        if let Ok(mut f) = self.failed_at.lock() {
            *f = if ok { None } else { Some(Instant::now()) };
        }
    }

    /// The discovery document and keys, from the cache or fetched (concurrent callers share one
    /// fetch).
    pub async fn documents(&self) -> Result<(Arc<Discovery>, Arc<JwkSet>), ProviderError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if c.fetched.elapsed() < DISCOVERY_TTL {
                return Ok((c.discovery.clone(), c.keys.clone()));
            }
        }
        let recently_failed = self
            .failed_at
            .lock()
            .ok()
            .and_then(|f| *f)
            .is_some_and(|t| t.elapsed() < RETRY_AFTER_FAILURE);
        if recently_failed {
            // Stale documents beat none while the provider is away, for a bounded time.
            if let Some(c) = cached
                .as_ref()
                .filter(|c| c.fetched.elapsed() < STALE_LIMIT)
            {
                return Ok((c.discovery.clone(), c.keys.clone()));
            }
            return Err(ProviderError::Unavailable("failed moments ago".into()));
        }
        match self.fetch_documents().await {
            Ok((d, k)) => {
                self.note(true, "");
                let now = Instant::now();
                *cached = Some(Cached {
                    discovery: d.clone(),
                    keys: k.clone(),
                    fetched: now,
                    keys_fetched: now,
                });
                Ok((d, k))
            }
            Err(e) => {
                self.note(false, &e.to_string());
                match cached
                    .as_ref()
                    .filter(|c| c.fetched.elapsed() < STALE_LIMIT)
                {
                    Some(c) => Ok((c.discovery.clone(), c.keys.clone())),
                    None => Err(e),
                }
            }
        }
    }

    /// Fetches the keys again for a token whose `kid` the cached set lacks, unless that was done
    /// within [`JWKS_REFETCH_MIN`]; `None` when not refetched.
    pub async fn refetch_keys(&self) -> Option<Arc<JwkSet>> {
        let mut cached = self.cached.lock().await;
        let c = cached.as_mut()?;
        if c.keys_fetched.elapsed() < JWKS_REFETCH_MIN {
            return None;
        }
        c.keys_fetched = Instant::now();
        let uri = c.discovery.jwks_uri.clone();
        match self.fetch_keys(&uri).await {
            Ok(k) => {
                c.keys = k.clone();
                Some(k)
            }
            Err(e) => {
                tracing::warn!(provider = %self.cfg.id, error = %e, "cannot refetch the provider's keys");
                None
            }
        }
    }

    async fn fetch_documents(&self) -> Result<(Arc<Discovery>, Arc<JwkSet>), ProviderError> {
        let url = &self.cfg.discovery_url;
        let (status, body) = self.client.get(url, None).await?;
        if !status.is_success() {
            return Err(ProviderError::Unavailable(format!(
                "discovery at {} answered {status}",
                origin(url)
            )));
        }
        let raw: RawDiscovery = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Unavailable(format!("discovery document: {e}")))?;
        // OpenID Connect Discovery §4.3: exactly the configured issuer, or the document (and
        // every endpoint in it) is not this provider's.
        if raw.issuer != self.cfg.issuer {
            return Err(ProviderError::Refused(format!(
                "discovery: issuer {:?} is not the configured {:?}",
                raw.issuer, self.cfg.issuer
            )));
        }
        if let Some(m) = &raw.code_challenge_methods_supported {
            if !m.iter().any(|m| m == "S256") {
                return Err(ProviderError::Refused(
                    "discovery: the provider does not offer PKCE S256".into(),
                ));
            }
        }
        let secret_post_only = raw
            .token_endpoint_auth_methods_supported
            .as_ref()
            .is_some_and(|m| {
                m.iter().any(|m| m == "client_secret_post")
                    && !m.iter().any(|m| m == "client_secret_basic")
            });
        let d = Discovery {
            authorization_endpoint: endpoint(
                &self.cfg.issuer,
                "authorization_endpoint",
                &raw.authorization_endpoint,
            )?,
            token_endpoint: endpoint(&self.cfg.issuer, "token_endpoint", &raw.token_endpoint)?,
            jwks_uri: endpoint(&self.cfg.issuer, "jwks_uri", &raw.jwks_uri)?,
            userinfo_endpoint: raw
                .userinfo_endpoint
                .as_deref()
                .map(|u| endpoint(&self.cfg.issuer, "userinfo_endpoint", u))
                .transpose()?,
            end_session_endpoint: raw
                .end_session_endpoint
                .as_deref()
                .map(|u| endpoint(&self.cfg.issuer, "end_session_endpoint", u))
                .transpose()?,
            iss_parameter: raw.authorization_response_iss_parameter_supported,
            secret_post_only,
        };
        let keys = self.fetch_keys(&d.jwks_uri).await?;
        Ok((Arc::new(d), keys))
    }

    async fn fetch_keys(&self, uri: &url::Url) -> Result<Arc<JwkSet>, ProviderError> {
        let (status, body) = self.client.get(uri, None).await?;
        if !status.is_success() {
            return Err(ProviderError::Unavailable(format!(
                "keys at {} answered {status}",
                origin(uri)
            )));
        }
        let mut set: JwkSet = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Unavailable(format!("key set: {e}")))?;
        // Public signature keys only: a symmetric ("oct") key in a published set would let
        // anyone who read it sign tokens.
        set.keys.retain(|k| {
            !matches!(k.algorithm, AlgorithmParameters::OctetKey(_))
                && !matches!(
                    k.common.public_key_use,
                    Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
                )
        });
        Ok(Arc::new(set))
    }

    /// Verifies an ID token: signature (by a key of `keys`, or the client secret for an HS*
    /// algorithm the configuration allows), `alg` in the allow-list, `iss` exactly the issuer,
    /// `aud` containing the client id (and `azp` equal to it when present or when there are
    /// several audiences), `exp`/`nbf`/`iat` within [`LEEWAY_SECS`], `nonce` equal to the
    /// stored one. Returns the claims.
    pub fn verify_id_token(
        &self,
        keys: &JwkSet,
        token: &str,
        nonce: &str,
        now: u64,
    ) -> Result<Map<String, Value>, IdTokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| IdTokenError::Malformed)?;
        let alg = header.alg;
        if !self.cfg.algorithms.contains(&alg) {
            return Err(IdTokenError::Algorithm(format!("{alg:?}")));
        }
        let key = if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            let secret = self
                .cfg
                .client_secret
                .as_ref()
                .ok_or_else(|| IdTokenError::Algorithm(format!("{alg:?}")))?;
            DecodingKey::from_secret(secret.expose().as_bytes())
        } else {
            let jwk = match header.kid.as_deref() {
                Some(kid) => keys.find(kid).ok_or(IdTokenError::UnknownKey)?,
                // Without a kid: only a set of exactly one key is unambiguous.
                None if keys.keys.len() == 1 => &keys.keys[0],
                None => return Err(IdTokenError::UnknownKey),
            };
            if let Some(ka) = jwk.common.key_algorithm {
                if format!("{ka:?}") != format!("{alg:?}") {
                    return Err(IdTokenError::Algorithm(format!(
                        "{alg:?} with a key for {ka:?}"
                    )));
                }
            }
            DecodingKey::from_jwk(jwk).map_err(|_| IdTokenError::UnknownKey)?
        };
        let mut v = Validation::new(alg);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&[&self.cfg.client_id]);
        v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => IdTokenError::Expired,
                K::InvalidIssuer => IdTokenError::Issuer,
                K::InvalidAudience => IdTokenError::Audience,
                K::InvalidSignature => IdTokenError::Signature,
                K::ImmatureSignature => IdTokenError::NotYetValid,
                K::InvalidAlgorithm => IdTokenError::Algorithm(format!("{alg:?}")),
                _ => IdTokenError::Claims(format!("{e}")),
            }
        })?;
        let c = data.claims;
        // jsonwebtoken checked against the system clock; these against the caller's too.
        let num = |k: &str| c.get(k).and_then(Value::as_u64);
        let exp = num("exp").ok_or_else(|| IdTokenError::Claims("exp".into()))?;
        if exp.saturating_add(LEEWAY_SECS) < now {
            return Err(IdTokenError::Expired);
        }
        let iat = num("iat").ok_or_else(|| IdTokenError::Claims("iat".into()))?;
        if iat > now.saturating_add(LEEWAY_SECS) {
            return Err(IdTokenError::NotYetValid);
        }
        let several_audiences = c
            .get("aud")
            .and_then(Value::as_array)
            .is_some_and(|a| a.len() > 1);
        match c.get("azp") {
            Some(Value::String(azp)) if *azp == self.cfg.client_id => {}
            None if !several_audiences => {}
            _ => return Err(IdTokenError::Audience),
        }
        match c.get("nonce") {
            Some(Value::String(n)) if super::same(n, nonce) => {}
            _ => return Err(IdTokenError::Nonce),
        }
        match c.get("sub") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => {}
            _ => return Err(IdTokenError::Claims("sub".into())),
        }
        Ok(c)
    }
}

/// Why an ID token was refused (logged; the browser sees a generic page).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdTokenError {
    /// Not a JWS.
    #[error("malformed ID token")]
    Malformed,
    /// An algorithm outside the allow-list (`none` is never in it).
    #[error("algorithm not allowed: {0}")]
    Algorithm(String),
    /// No key of the provider's set has its `kid`.
    #[error("signed by an unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `exp` in the past.
    #[error("expired")]
    Expired,
    /// `iat`/`nbf` in the future.
    #[error("issued in the future")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    Issuer,
    /// `aud`/`azp` is not this client.
    #[error("wrong audience")]
    Audience,
    /// `nonce` is not the one this login sent.
    #[error("wrong or missing nonce")]
    Nonce,
    /// A required claim is missing or malformed.
    #[error("bad claim {0}")]
    Claims(String),
}
