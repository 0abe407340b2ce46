//! Signed JWT cookies/bearer tokens: keys parsed once at load, issuing, strict verification,
//! JWKS publication, key generation for `gen-jwt-key`, and a verified-token cache.
//!
//! Verification runs the cheap, allocation-light checks (size, shape, header, `alg`, `kid`)
//! before any cryptography, so garbage costs microseconds and never reaches a key.
//! The algorithm is pinned by configuration; the token's header can only pick among the
//! configured keys by `kid`, never choose an algorithm or supply a key.
//!
//! Nothing here formats token contents or key material into errors or `Debug` output.

use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, KeyPair as _};
use aws_lc_rs::{digest, hmac, rand as lc_rand, rsa};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use jsonwebtoken::{DecodingKey, Validation};
use rustls_pki_types::pem::{PemObject, SectionKind};
use serde::{Deserialize, Serialize};

use crate::config::{JwtAlgorithm, JwtConfig, KeySource};

/// Longest token accepted; anything longer is rejected before hashing or parsing.
/// Our own tokens are a few hundred bytes; 4 KiB is also the practical cookie limit.
pub const MAX_TOKEN_LEN: usize = 4096;

/// HS256 secrets shorter than the HMAC-SHA256 output make brute force cheaper than the hash.
const MIN_HMAC_SECRET_LEN: usize = 32;
/// NIST SP 800-131A floor for RSA signatures.
const MIN_RSA_BITS: usize = 2048;
/// Key files are tiny; refusing large files avoids reading a wrong path (a log, a disk image).
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;
/// Size of generated RSA keys: the interoperable RS256 size, and verification stays ~20 µs.
const GENERATED_RSA_SIZE: rsa::KeySize = rsa::KeySize::Rsa2048;
/// Length of the default key id (96 bits of SHA-256: unique enough among a handful of keys).
const DEFAULT_KID_LEN: usize = 16;

/// Well-known sample secrets from tutorials and jwt.io; compared case-insensitively.
const WEAK_SECRETS: &[&str] = &[
    "secret",
    "your-256-bit-secret",
    "your-384-bit-secret",
    "your-512-bit-secret",
    "a-string-secret-at-least-256-bits-long",
    "your-secret-key",
    "your_secret_key",
    "your-secret",
    "mysecret",
    "my-secret",
    "supersecret",
    "super-secret",
    "secretkey",
    "secret-key",
    "jwt-secret",
    "jwt_secret",
    "jwtsecret",
    "changeme",
    "change-me",
    "change_me",
    "changeit",
    "password",
    "default",
    "shhhhh",
    "shhhhhhared-secret",
];

/// DER body of the AlgorithmIdentifier for Ed25519 (OID 1.3.101.112, no parameters).
const ED25519_ALG_ID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER body of the AlgorithmIdentifier for id-ecPublicKey with named curve prime256v1.
const EC_P256_ALG_ID: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
    0x03, 0x01, 0x07,
];

/// Distinguishes `JwtKeys` instances so a cache entry verified under one key set is never
/// served under another (e.g. after a reload that removed a key).
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Why a token was rejected or could not be issued. Display never includes the token.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token too large")]
    TooLarge,
    /// Not three non-empty base64url segments, or an unreadable header.
    #[error("malformed token")]
    Malformed,
    /// Header `alg` differs from the configured algorithm (includes `none`).
    #[error("token algorithm not allowed")]
    AlgorithmNotAllowed,
    /// Header `kid` names no configured key.
    #[error("unknown key id")]
    UnknownKid,
    /// The signature does not verify under the selected key.
    #[error("invalid signature")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` or `auth_time` is in the future (beyond the leeway).
    #[error("token issued in the future")]
    IssuedInFuture,
    /// The login (`auth_time`) is older than the maximum session lifetime.
    #[error("login too old; sign in again")]
    TooOld,
    /// Missing, mistyped or mismatching claims (the message names the claim, never its value).
    #[error("invalid claims: {0}")]
    Claims(String),
    /// Signing failed while issuing.
    #[error("cannot sign token: {0}")]
    Sign(String),
}

impl JwtError {
    /// Whether the token was genuine but past its time (`exp` or the session lifetime).
    pub fn is_expiry(&self) -> bool {
        matches!(self, JwtError::Expired | JwtError::TooOld)
    }
}

/// The claims the gateway relies on, from a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    /// Username.
    pub sub: String,
    /// Unique token id (revocation handle).
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// The login time in Unix milliseconds (the `auth_time_ms` claim, carried over renewals like
    /// `auth_time`; without one, the last millisecond of `auth_time`, so that a
    /// sign-out-everywhere in the same second still covers it). Sign-out-everywhere compares it:
    /// a renewal of an older login carries the older login's time.
    pub auth_time_ms: u64,
    /// The user's password version at login (the `pwv` claim): a token whose version differs
    /// from the user's current one was issued before a password change.
    pub password_version: Option<u64>,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Original login time (Unix seconds), carried over sliding renewals.
    pub auth_time: u64,
    /// Login session id, carried over sliding renewals: logout revokes it, so tokens renewed
    /// from (or into) the one presented at logout die with it.
    pub sid: String,
    /// How the login was proved (the `amr` claim; a token without one: a password).
    pub amr: crate::auth::factors::Amr,
    /// A login through an external provider (the `idp` claim), with the identity the token
    /// describes (`sub`, `email`, `name`, `groups`) for a provider with `users = "trust"`.
    pub external: Option<Arc<crate::auth::external::ExternalLogin>>,
    /// The revocation generation at which this (cached) token was last found not revoked.
    pub revocations_checked: RevocationMark,
}

/// Remembers the revocation generation ([`crate::auth::revocation::RevocationStore::generation`])
/// at which a cached token was last found not revoked, so that repeats skip the deny-list
/// lookups until a revocation happens. Starts (and clones) as "never checked"; not part of the
/// token's identity.
#[derive(Debug)]
pub struct RevocationMark(std::sync::atomic::AtomicU64);

impl RevocationMark {
    /// Whether the token was found not revoked at `generation`.
    pub fn is_checked_at(&self, generation: u64) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire) == generation
    }

    /// Records that the token was found not revoked at `generation` (read before the lookups).
    pub fn set_checked_at(&self, generation: u64) {
        self.0
            .store(generation, std::sync::atomic::Ordering::Release);
    }
}

impl Default for RevocationMark {
    fn default() -> Self {
        RevocationMark(std::sync::atomic::AtomicU64::new(u64::MAX))
    }
}

impl Clone for RevocationMark {
    fn clone(&self) -> Self {
        RevocationMark::default()
    }
}

impl PartialEq for RevocationMark {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for RevocationMark {}

/// What a new token carries beside its subject: the time in milliseconds (a new login's
/// `auth_time_ms`, so that a sign-out-everywhere and a login in the same second are told apart)
/// and the user's password version (so that a password change ends the tokens issued before it).
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// Now, in Unix milliseconds.
    pub now_ms: u64,
    /// The user's [`crate::auth::users::User::password_version`].
    pub password_version: Option<u64>,
    /// How a new login was proved (a renewal keeps its login's).
    pub amr: crate::auth::factors::Amr,
}

impl Stamp {
    /// A stamp without a password version, at the start of second `now` (tests, tools).
    pub fn unversioned(now: u64) -> Stamp {
        Stamp {
            now_ms: now.saturating_mul(1000),
            password_version: None,
            amr: crate::auth::factors::PWD,
        }
    }
}

/// What a token says about its user besides the subject.
struct Profile<'a> {
    email: Option<&'a str>,
    groups: &'a [String],
    /// Only for a trusted external identity.
    name: Option<&'a str>,
    /// The external provider of the login.
    idp: Option<&'a str>,
}

/// The external login a token describes; its identity is built (once per verified token, which
/// the token cache keeps) when the claims make a valid one.
fn external_login(
    provider: &str,
    sub: &str,
    email: Option<&str>,
    name: Option<&str>,
    groups: Vec<String>,
    version: Option<u64>,
) -> Arc<crate::auth::external::ExternalLogin> {
    let identity = version
        .and_then(|v| crate::auth::users::User::external(sub, email, name, groups, v).ok())
        .map(Arc::new);
    Arc::new(crate::auth::external::ExternalLogin {
        provider: Arc::from(provider),
        identity,
        access_token: None,
    })
}

/// The `pwv` claim of a password version: base64url of its 8 bytes.
pub fn pwv_claim(password_version: u64) -> String {
    URL_SAFE_NO_PAD.encode(password_version.to_be_bytes())
}

/// A freshly issued token and its claims.
pub struct IssuedToken {
    /// The compact JWS; a bearer credential, never log it.
    pub token: String,
    /// What the token says.
    pub claims: VerifiedToken,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"[redacted]")
            .field("claims", &self.claims)
            .finish()
    }
}

/// The private half used for issuing, kept parsed so that signing does not re-parse keys.
enum Signer {
    Ed(signature::Ed25519KeyPair),
    Ec(signature::EcdsaKeyPair),
    Rsa(rsa::KeyPair),
    Hmac(Box<hmac::Key>),
}

impl Signer {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, JwtError> {
        let rng = lc_rand::SystemRandom::new();
        match self {
            Signer::Ed(k) => Ok(k.sign(msg).as_ref().to_vec()),
            Signer::Ec(k) => k
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| JwtError::Sign("ECDSA signing failed".into())),
            Signer::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                    .map_err(|_| JwtError::Sign("RSA signing failed".into()))?;
                Ok(sig)
            }
            Signer::Hmac(k) => Ok(hmac::sign(k, msg).as_ref().to_vec()),
        }
    }
}

/// Public (or, for HS256, shared) key material in the raw forms JWS/JWK use.
enum PublicMaterial {
    /// 32-byte Ed25519 public key.
    Ed(Vec<u8>),
    /// Uncompressed P-256 point `04 || x || y`.
    Ec(Vec<u8>),
    /// Big-endian modulus and exponent without leading zeros, plus the PKCS#1 DER (for the kid).
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
        pkcs1: Vec<u8>,
    },
    /// The HMAC secret itself.
    Hmac(Vec<u8>),
}

impl PublicMaterial {
    fn decoding_key(&self) -> DecodingKey {
        match self {
            PublicMaterial::Ed(raw) => DecodingKey::from_ed_der(raw),
            PublicMaterial::Ec(point) => DecodingKey::from_ec_der(point),
            PublicMaterial::Rsa { n, e, .. } => DecodingKey::from_rsa_raw_components(n, e),
            PublicMaterial::Hmac(secret) => DecodingKey::from_secret(secret),
        }
    }

    /// Stable id derived from the key, so rotation works without configuring kids by hand.
    fn default_kid(&self) -> String {
        let bytes: &[u8] = match self {
            PublicMaterial::Ed(raw) => raw,
            PublicMaterial::Ec(point) => point,
            PublicMaterial::Rsa { pkcs1, .. } => pkcs1,
            PublicMaterial::Hmac(secret) => secret,
        };
        let d = digest::digest(&digest::SHA256, bytes);
        let mut kid = URL_SAFE_NO_PAD.encode(d.as_ref());
        kid.truncate(DEFAULT_KID_LEN);
        kid
    }

    fn jwk(&self, kid: &str, alg: &str) -> Option<serde_json::Value> {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        Some(match self {
            PublicMaterial::Ed(raw) => serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "x": b64(raw), "kid": kid, "alg": alg, "use": "sig",
            }),
            PublicMaterial::Ec(point) => serde_json::json!({
                "kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65]),
                "kid": kid, "alg": alg, "use": "sig",
            }),
            PublicMaterial::Rsa { n, e, .. } => serde_json::json!({
                "kty": "RSA", "n": b64(n), "e": b64(e), "kid": kid, "alg": alg, "use": "sig",
            }),
            PublicMaterial::Hmac(_) => return None,
        })
    }
}

struct VerifyKey {
    kid: String,
    key: DecodingKey,
}

/// Everything needed to issue and verify tokens, parsed once from `[auth.jwt]`.
pub struct JwtKeys {
    alg: JwtAlgorithm,
    alg_name: &'static str,
    signer: Signer,
    /// Index 0 is the signing key; the rest are rotation (verify-only) keys.
    verify_keys: Vec<VerifyKey>,
    /// base64url of the constant header `{"alg":..,"typ":"JWT","kid":..}`.
    header_b64: String,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl: Duration,
    leeway: u64,
    jwks: Option<Bytes>,
    generation: u64,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self.verify_keys.iter().map(|k| k.kid.as_str()).collect();
        f.debug_struct("JwtKeys")
            .field("algorithm", &self.alg_name)
            .field("kids", &kids)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

fn alg_name(alg: JwtAlgorithm) -> &'static str {
    match alg {
        JwtAlgorithm::EdDSA => "EdDSA",
        JwtAlgorithm::ES256 => "ES256",
        JwtAlgorithm::RS256 => "RS256",
        JwtAlgorithm::HS256 => "HS256",
    }
}

fn jwt_algorithm(alg: JwtAlgorithm) -> jsonwebtoken::Algorithm {
    match alg {
        JwtAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        JwtAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
        JwtAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
        JwtAlgorithm::HS256 => jsonwebtoken::Algorithm::HS256,
    }
}

#[derive(Serialize)]
struct OutHeader<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

#[derive(Serialize)]
struct OutClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    groups: &'a [String],
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: &'a str,
    auth_time: u64,
    sid: &'a str,
    auth_time_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pwv: Option<&'a str>,
    amr: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

/// Only the members we act on; borrowed so the common (escape-free) header costs no allocation.
#[derive(Deserialize)]
struct InHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    typ: Option<Cow<'a, str>>,
    /// RFC 7515 §4.1.11: we implement no extensions, so any `crit` must be rejected.
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// All optional so that a missing claim yields a precise message instead of a serde error
/// (whose text could quote token contents).
#[derive(Deserialize)]
struct InClaims {
    sub: Option<String>,
    jti: Option<String>,
    iat: Option<u64>,
    nbf: Option<u64>,
    exp: Option<u64>,
    auth_time: Option<u64>,
    sid: Option<String>,
    auth_time_ms: Option<u64>,
    pwv: Option<String>,
    amr: Option<Vec<String>>,
    idp: Option<String>,
    // Read for an external identity; type-checked always, so a token with odd shapes is
    // rejected early.
    email: Option<String>,
    name: Option<String>,
    groups: Option<Vec<String>>,
}

impl JwtKeys {
    /// Loads the signing key and verify keys. Errors: Vec of (config key path like "auth.jwt.signing_key" / "auth.jwt.verify_keys[1]", message).
    pub fn load(cfg: &JwtConfig) -> Result<JwtKeys, Vec<(String, String)>> {
        let mut errors: Vec<(String, String)> = Vec::new();
        let alg = cfg.algorithm;
        let alg_name = alg_name(alg);

        let signing_path = match &cfg.signing_key {
            KeySource::File(_) => "auth.jwt.signing_key",
            KeySource::Env(_) => "auth.jwt.signing_key_env",
        };
        let signing = read_source(&cfg.signing_key)
            .and_then(|bytes| parse_signing_key(alg, &bytes))
            .map_err(|m| errors.push((signing_path.to_string(), m)))
            .ok();

        let mut rotation: Vec<(String, PublicMaterial)> = Vec::new();
        for (i, vk) in cfg.verify_keys.iter().enumerate() {
            let path = format!("auth.jwt.verify_keys[{i}]");
            if let Err(m) = check_kid(&vk.kid) {
                errors.push((format!("{path}.kid"), m));
                continue;
            }
            match read_source(&vk.source).and_then(|bytes| parse_verify_key(alg, &bytes)) {
                Ok(material) => rotation.push((vk.kid.clone(), material)),
                Err(m) => errors.push((path, m)),
            }
        }

        let Some((signer, signing_public)) = signing else {
            return Err(errors);
        };
        let signing_kid = match &cfg.kid {
            Some(k) => match check_kid(k) {
                Ok(()) => k.clone(),
                Err(m) => {
                    errors.push(("auth.jwt.kid".into(), m));
                    String::new()
                }
            },
            None => signing_public.default_kid(),
        };
        for (i, vk) in cfg.verify_keys.iter().enumerate() {
            if vk.kid == signing_kid {
                errors.push((
                    format!("auth.jwt.verify_keys[{i}].kid"),
                    format!("kid {:?} is already the signing key's kid", vk.kid),
                ));
            } else if cfg.verify_keys[..i].iter().any(|o| o.kid == vk.kid) {
                errors.push((
                    format!("auth.jwt.verify_keys[{i}].kid"),
                    format!("duplicate kid {:?}", vk.kid),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let mut keys_json = Vec::new();
        let mut verify_keys = Vec::with_capacity(1 + rotation.len());
        for (kid, material) in
            std::iter::once((signing_kid.clone(), signing_public)).chain(rotation)
        {
            if let Some(jwk) = material.jwk(&kid, alg_name) {
                keys_json.push(jwk);
            }
            verify_keys.push(VerifyKey {
                key: material.decoding_key(),
                kid,
            });
        }
        let jwks = (alg != JwtAlgorithm::HS256).then(|| {
            let doc = serde_json::json!({ "keys": keys_json });
            Bytes::from(serde_json::to_vec(&doc).expect("JSON values serialize"))
        });

        let header = OutHeader {
            alg: alg_name,
            typ: "JWT",
            kid: &signing_kid,
        };
        let header_b64 =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header serializes"));

        let mut validation = Validation::new(jwt_algorithm(alg));
        validation.leeway = cfg.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[cfg.issuer.as_str()]);
        validation.set_audience(&[cfg.audience.as_str()]);

        Ok(JwtKeys {
            alg,
            alg_name,
            signer,
            verify_keys,
            header_b64,
            validation,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            ttl: cfg.ttl,
            leeway: cfg.leeway.as_secs(),
            jwks,
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The `kid` put in the header of newly issued tokens.
    pub fn signing_kid(&self) -> &str {
        &self.verify_keys[0].kid
    }

    /// The pinned algorithm.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.alg
    }

    /// Lifetime of newly issued tokens (before the `max_lifetime` cap).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Clock skew tolerated on `exp`/`nbf`/`iat`.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.leeway)
    }

    /// Issue a token for a new login, stamped with the user's password version and the issue
    /// time in milliseconds (see [`Stamp`]).
    pub fn issue_stamped(
        &self,
        sub: &str,
        email: Option<&str>,
        groups: &[String],
        auth_time: u64,
        stamp: Stamp,
        max_lifetime: Duration,
    ) -> Result<IssuedToken, JwtError> {
        self.issue_in_session(
            sub,
            Profile {
                email,
                groups,
                name: None,
                idp: None,
            },
            auth_time,
            None,
            stamp,
            max_lifetime,
        )
    }

    /// Issue a token for a new login through external provider `idp`; `name` is carried for a
    /// trusted provider's identity (which has no `[[users]]` entry to read it from).
    #[allow(clippy::too_many_arguments)]
    pub fn issue_external(
        &self,
        sub: &str,
        email: Option<&str>,
        name: Option<&str>,
        groups: &[String],
        idp: &str,
        stamp: Stamp,
        max_lifetime: Duration,
    ) -> Result<IssuedToken, JwtError> {
        let profile = Profile {
            email,
            groups,
            name,
            idp: Some(idp),
        };
        let auth_time = stamp.now_ms / 1000;
        self.issue_in_session(sub, profile, auth_time, None, stamp, max_lifetime)
    }

    /// Sliding renewal of `prev` (as [`JwtKeys::renew`]), stamped (see [`Stamp`]).
    pub fn renew_stamped(
        &self,
        prev: &VerifiedToken,
        email: Option<&str>,
        groups: &[String],
        stamp: Stamp,
        max_lifetime: Duration,
    ) -> Result<IssuedToken, JwtError> {
        let ext = prev.external.as_deref();
        let trusted = ext.and_then(|e| e.identity.as_deref());
        let profile = Profile {
            email,
            groups,
            name: trusted.and_then(|u| u.name.as_deref()),
            idp: ext.map(|e| &*e.provider),
        };
        self.issue_in_session(
            &prev.sub,
            profile,
            prev.auth_time,
            Some((&prev.sid, prev.auth_time_ms, prev.amr)),
            stamp,
            max_lifetime,
        )
    }

    /// Issue a token for a new login. iat = now, nbf = now, exp = min(now + ttl, auth_time + max_lifetime); jti and sid = 128-bit random base64url; header alg pinned + kid.
    pub fn issue(
        &self,
        sub: &str,
        email: Option<&str>,
        groups: &[String],
        auth_time: u64,
        now: u64,
        max_lifetime: Duration,
    ) -> Result<IssuedToken, JwtError> {
        self.issue_stamped(
            sub,
            email,
            groups,
            auth_time,
            Stamp::unversioned(now),
            max_lifetime,
        )
    }

    /// Sliding renewal of `prev`: same subject, login time and session id, new jti and times.
    pub fn renew(
        &self,
        prev: &VerifiedToken,
        email: Option<&str>,
        groups: &[String],
        now: u64,
        max_lifetime: Duration,
    ) -> Result<IssuedToken, JwtError> {
        self.renew_stamped(prev, email, groups, Stamp::unversioned(now), max_lifetime)
    }

    #[allow(clippy::too_many_arguments)] // private; the two public entry points above fix the shape
    fn issue_in_session(
        &self,
        sub: &str,
        profile: Profile<'_>,
        auth_time: u64,
        session: Option<(&str, u64, crate::auth::factors::Amr)>,
        stamp: Stamp,
        max_lifetime: Duration,
    ) -> Result<IssuedToken, JwtError> {
        // A renewal keeps its login session's id, login time and factors; a new login starts
        // them.
        let (sid, auth_time_ms, amr) = match session {
            Some((sid, ms, amr)) => (Some(sid), ms, amr),
            None if auth_time == stamp.now_ms / 1000 => (None, stamp.now_ms, stamp.amr),
            None => (None, auth_time.saturating_mul(1000), stamp.amr),
        };
        let now = stamp.now_ms / 1000;
        let pwv = stamp.password_version.map(pwv_claim);
        if sub.is_empty() {
            return Err(JwtError::Claims("empty subject".into()));
        }
        if auth_time > now.saturating_add(self.leeway) {
            return Err(JwtError::IssuedInFuture);
        }
        let exp = now
            .saturating_add(self.ttl.as_secs())
            .min(auth_time.saturating_add(max_lifetime.as_secs()));
        if exp <= now {
            return Err(JwtError::TooOld);
        }
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|_| JwtError::Sign("no randomness for jti".into()))?;
        let jti = URL_SAFE_NO_PAD.encode(id);
        let sid = match sid {
            Some(s) => s.to_string(),
            None => {
                getrandom::fill(&mut id)
                    .map_err(|_| JwtError::Sign("no randomness for sid".into()))?;
                URL_SAFE_NO_PAD.encode(id)
            }
        };
        let Profile {
            email,
            groups,
            name,
            idp,
        } = profile;
        let claims = OutClaims {
            iss: &self.issuer,
            aud: &self.audience,
            sub,
            email,
            groups,
            iat: now,
            nbf: now,
            exp,
            jti: &jti,
            auth_time,
            sid: &sid,
            auth_time_ms,
            pwv: pwv.as_deref(),
            amr: crate::auth::factors::names(amr),
            idp,
            name,
        };
        let payload = serde_json::to_vec(&claims)
            .map_err(|_| JwtError::Sign("cannot encode claims".into()))?;
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 400);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let sig = self.signer.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&sig, &mut token);
        if token.len() > MAX_TOKEN_LEN {
            // Verification would refuse it, so fail where the cause (too many groups) is visible.
            return Err(JwtError::TooLarge);
        }
        Ok(IssuedToken {
            token,
            claims: VerifiedToken {
                sub: sub.to_string(),
                jti,
                iat: now,
                auth_time_ms,
                password_version: stamp.password_version,
                exp,
                auth_time,
                sid,
                amr,
                external: idp.map(|p| {
                    external_login(p, sub, email, name, groups.to_vec(), stamp.password_version)
                }),
                revocations_checked: RevocationMark::default(),
            },
        })
    }

    /// Full verification, no cache.
    ///
    /// `now` should be the wall clock: jsonwebtoken also checks `exp`/`nbf` against the
    /// system clock, and the stricter of the two wins.
    pub fn verify(
        &self,
        token: &str,
        now: u64,
        max_lifetime: Duration,
    ) -> Result<VerifiedToken, JwtError> {
        let header_b64 = check_shape(token.as_bytes())?;
        let header_json = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| JwtError::Malformed)?;
        let header: InHeader<'_> =
            serde_json::from_slice(&header_json).map_err(|_| JwtError::Malformed)?;
        // Exact, case-sensitive match: rejects `none`/`NONE`/`nOnE` and HS256-with-public-key.
        if header.alg != self.alg_name {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        if header.crit.is_some() {
            return Err(JwtError::Malformed);
        }
        if let Some(typ) = &header.typ {
            if !typ.eq_ignore_ascii_case("JWT") {
                return Err(JwtError::Malformed);
            }
        }
        let key = match header.kid.as_deref() {
            // Without a kid only the current signing key is tried: no trial-and-error over keys.
            None => &self.verify_keys[0].key,
            Some(kid) => {
                &self
                    .verify_keys
                    .iter()
                    .find(|k| k.kid == kid)
                    .ok_or(JwtError::UnknownKid)?
                    .key
            }
        };
        let data = jsonwebtoken::decode::<InClaims>(token, key, &self.validation)
            .map_err(map_jwt_error)?;
        self.check_claims(data.claims, now, max_lifetime)
    }

    fn check_claims(
        &self,
        c: InClaims,
        now: u64,
        max_lifetime: Duration,
    ) -> Result<VerifiedToken, JwtError> {
        let missing = |name: &str| JwtError::Claims(format!("missing claim `{name}`"));
        let sub = c.sub.ok_or_else(|| missing("sub"))?;
        let jti = c.jti.ok_or_else(|| missing("jti"))?;
        let exp = c.exp.ok_or_else(|| missing("exp"))?;
        let nbf = c.nbf.ok_or_else(|| missing("nbf"))?;
        let iat = c.iat.ok_or_else(|| missing("iat"))?;
        let auth_time = c.auth_time.ok_or_else(|| missing("auth_time"))?;
        if sub.is_empty() {
            return Err(JwtError::Claims("empty `sub`".into()));
        }
        if jti.is_empty() {
            return Err(JwtError::Claims("empty `jti`".into()));
        }
        // A token without `sid` is its own session (it can only be revoked by its jti).
        let sid = c.sid.unwrap_or_else(|| jti.clone());
        if sid.is_empty() {
            return Err(JwtError::Claims("empty `sid`".into()));
        }
        // jsonwebtoken checked exp/nbf against the system clock; these use the caller's `now`.
        if exp.saturating_add(self.leeway) < now {
            return Err(JwtError::Expired);
        }
        let horizon = now.saturating_add(self.leeway);
        if nbf > horizon {
            return Err(JwtError::NotYetValid);
        }
        if iat > horizon || auth_time > horizon {
            return Err(JwtError::IssuedInFuture);
        }
        if now.saturating_sub(auth_time) > max_lifetime.as_secs() {
            return Err(JwtError::TooOld);
        }
        // Only an `auth_time_ms` within `auth_time`'s second is believed; otherwise the login
        // counts as made at the end of that second (covered by a sign-out-everywhere in it).
        let auth_time_ms = c
            .auth_time_ms
            .filter(|ms| ms / 1000 == auth_time)
            .unwrap_or_else(|| auth_time.saturating_mul(1000).saturating_add(999));
        let password_version = match c.pwv {
            None => None,
            Some(p) => {
                let mut b = [0u8; 8];
                match URL_SAFE_NO_PAD.decode_slice(p.as_bytes(), &mut b) {
                    Ok(8) => Some(u64::from_be_bytes(b)),
                    _ => return Err(JwtError::Claims("malformed `pwv`".into())),
                }
            }
        };
        let amr = crate::auth::factors::parse(c.amr.iter().flatten().map(String::as_str));
        let external = c.idp.as_deref().map(|p| {
            external_login(
                p,
                &sub,
                c.email.as_deref(),
                c.name.as_deref(),
                c.groups.unwrap_or_default(),
                password_version,
            )
        });
        Ok(VerifiedToken {
            sub,
            jti,
            iat,
            auth_time_ms,
            password_version,
            exp,
            auth_time,
            sid,
            amr,
            external,
            revocations_checked: RevocationMark::default(),
        })
    }

    /// Re-checks the time-dependent conditions of an already verified token.
    fn check_times(
        &self,
        t: &VerifiedToken,
        now: u64,
        max_lifetime: Duration,
    ) -> Result<(), JwtError> {
        if t.exp.saturating_add(self.leeway) < now {
            return Err(JwtError::Expired);
        }
        if now.saturating_sub(t.auth_time) > max_lifetime.as_secs() {
            return Err(JwtError::TooOld);
        }
        Ok(())
    }

    /// JWK set JSON bytes of the public keys (signing + verify keys) for asymmetric algs; None for HS256. Computed once at load.
    pub fn jwks_json(&self) -> Option<&Bytes> {
        self.jwks.as_ref()
    }
}

/// Size and `b64url.b64url.b64url` shape, returning the header segment.
fn check_shape(token: &[u8]) -> Result<&[u8], JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split(|b| *b == b'.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let b64url = |seg: &[u8]| {
        !seg.is_empty()
            && seg
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    };
    if !(b64url(h) && b64url(p) && b64url(s)) {
        return Err(JwtError::Malformed);
    }
    Ok(h)
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => JwtError::BadSignature,
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::InvalidIssuer => JwtError::Claims("issuer does not match".into()),
        K::InvalidAudience => JwtError::Claims("audience does not match".into()),
        K::InvalidSubject => JwtError::Claims("subject does not match".into()),
        // The claim names come from our fixed required set, never from the token.
        K::MissingRequiredClaim(c) => JwtError::Claims(format!("missing claim `{c}`")),
        K::InvalidClaimFormat(c) => JwtError::Claims(format!("claim `{c}` has the wrong type")),
        K::InvalidAlgorithm
        | K::InvalidAlgorithmName
        | K::MissingAlgorithm
        | K::UnsupportedAlgorithm => JwtError::AlgorithmNotAllowed,
        K::Json(_) => JwtError::Claims("claims have the wrong shape or types".into()),
        _ => JwtError::Malformed,
    }
}

fn check_kid(kid: &str) -> Result<(), String> {
    if kid.is_empty() {
        return Err("must not be empty".into());
    }
    if kid.len() > 128 || kid.chars().any(|c| c.is_control()) {
        return Err("must be at most 128 characters without control characters".into());
    }
    Ok(())
}

fn read_source(src: &KeySource) -> Result<Vec<u8>, String> {
    match src {
        KeySource::File(p) => {
            let meta =
                std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            if meta.len() > MAX_KEY_FILE_LEN {
                return Err(format!(
                    "{} is larger than {MAX_KEY_FILE_LEN} bytes; not a key file",
                    p.display()
                ));
            }
            std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        }
        KeySource::Env(name) => match std::env::var_os(name) {
            Some(v) if !v.is_empty() => Ok(v.into_encoded_bytes()),
            _ => Err(format!("environment variable {name} is not set or empty")),
        },
    }
}

/// A PEM section with a key in it.
enum PemKey {
    Pkcs8(Vec<u8>),
    Sec1(Vec<u8>),
    Pkcs1(Vec<u8>),
    Spki(Vec<u8>),
}

/// Finds the first private key section (else the first public key) in PEM text.
fn pem_key(data: &[u8]) -> Result<PemKey, String> {
    // PKCS#8 encrypted keys, and the legacy OpenSSL `Proc-Type: 4,ENCRYPTED` header.
    if contains(data, b"-----BEGIN ENCRYPTED") || contains(data, b"4,ENCRYPTED") {
        return Err(
            "encrypted private keys are not supported; store the key unencrypted with mode 0600"
                .into(),
        );
    }
    let mut public = None;
    for section in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(data) {
        // The PEM error's Display can quote file lines, which might be key material.
        let (kind, der) = section.map_err(|_| "not a valid PEM file".to_string())?;
        match kind {
            SectionKind::PrivateKey => return Ok(PemKey::Pkcs8(der)),
            SectionKind::EcPrivateKey => return Ok(PemKey::Sec1(der)),
            SectionKind::RsaPrivateKey => return Ok(PemKey::Pkcs1(der)),
            SectionKind::PublicKey if public.is_none() => public = Some(PemKey::Spki(der)),
            _ => {}
        }
    }
    public.ok_or_else(|| "no PEM private or public key found (expected -----BEGIN PRIVATE KEY----- or -----BEGIN PUBLIC KEY-----)".to_string())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn expected_private(alg: JwtAlgorithm) -> &'static str {
    match alg {
        JwtAlgorithm::EdDSA => "an Ed25519 PKCS#8 private key (-----BEGIN PRIVATE KEY-----)",
        JwtAlgorithm::ES256 => "a P-256 private key (PKCS#8 -----BEGIN PRIVATE KEY----- or SEC1 -----BEGIN EC PRIVATE KEY-----)",
        JwtAlgorithm::RS256 => "an RSA private key of at least 2048 bits (PKCS#8 -----BEGIN PRIVATE KEY----- or PKCS#1 -----BEGIN RSA PRIVATE KEY-----)",
        JwtAlgorithm::HS256 => "a random secret",
    }
}

fn parse_signing_key(alg: JwtAlgorithm, data: &[u8]) -> Result<(Signer, PublicMaterial), String> {
    if alg == JwtAlgorithm::HS256 {
        let secret = hmac_secret(data)?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        return Ok((Signer::Hmac(Box::new(key)), PublicMaterial::Hmac(secret)));
    }
    match pem_key(data)? {
        PemKey::Spki(_) => Err(format!(
            "this is a public key; the signing key must be {}",
            expected_private(alg)
        )),
        k => private_key(alg, k),
    }
}

fn private_key(alg: JwtAlgorithm, key: PemKey) -> Result<(Signer, PublicMaterial), String> {
    let wrong = || format!("expected {}", expected_private(alg));
    match (alg, key) {
        (JwtAlgorithm::EdDSA, PemKey::Pkcs8(der)) => {
            let kp = signature::Ed25519KeyPair::from_pkcs8(&der).map_err(|_| wrong())?;
            let public = PublicMaterial::Ed(kp.public_key().as_ref().to_vec());
            Ok((Signer::Ed(kp), public))
        }
        (JwtAlgorithm::ES256, PemKey::Pkcs8(der) | PemKey::Sec1(der)) => {
            let kp = signature::EcdsaKeyPair::from_private_key_der(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &der,
            )
            .map_err(|_| wrong())?;
            let point = kp.public_key().as_ref().to_vec();
            if point.len() != 65 || point[0] != 0x04 {
                return Err(wrong());
            }
            Ok((Signer::Ec(kp), PublicMaterial::Ec(point)))
        }
        (JwtAlgorithm::RS256, PemKey::Pkcs8(der)) => {
            rsa_signer(rsa::KeyPair::from_pkcs8(&der).map_err(|_| wrong())?)
        }
        (JwtAlgorithm::RS256, PemKey::Pkcs1(der)) => {
            rsa_signer(rsa::KeyPair::from_der(&der).map_err(|_| wrong())?)
        }
        _ => Err(wrong()),
    }
}

fn rsa_signer(kp: rsa::KeyPair) -> Result<(Signer, PublicMaterial), String> {
    let public = rsa_public(kp.public_key())?;
    Ok((Signer::Rsa(kp), public))
}

fn rsa_public(pk: &rsa::PublicKey) -> Result<PublicMaterial, String> {
    let n = pk.modulus().big_endian_without_leading_zero().to_vec();
    let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    let e = pk.exponent().big_endian_without_leading_zero().to_vec();
    Ok(PublicMaterial::Rsa {
        n,
        e,
        pkcs1: pk.as_ref().to_vec(),
    })
}

fn parse_verify_key(alg: JwtAlgorithm, data: &[u8]) -> Result<PublicMaterial, String> {
    if alg == JwtAlgorithm::HS256 {
        return hmac_secret(data).map(PublicMaterial::Hmac);
    }
    let expected_public = match alg {
        JwtAlgorithm::EdDSA => "an Ed25519 public key (-----BEGIN PUBLIC KEY-----)",
        JwtAlgorithm::ES256 => "a P-256 public key (-----BEGIN PUBLIC KEY-----)",
        _ => "an RSA public key of at least 2048 bits (-----BEGIN PUBLIC KEY-----)",
    };
    let wrong = || format!("expected {expected_public} or the matching private key");
    match pem_key(data)? {
        PemKey::Spki(der) => match alg {
            JwtAlgorithm::EdDSA => {
                let raw = spki_key(&der, ED25519_ALG_ID)
                    .filter(|k| k.len() == 32)
                    .ok_or_else(wrong)?;
                signature::ParsedPublicKey::new(&signature::ED25519, raw).map_err(|_| wrong())?;
                Ok(PublicMaterial::Ed(raw.to_vec()))
            }
            JwtAlgorithm::ES256 => {
                let point = spki_key(&der, EC_P256_ALG_ID)
                    .filter(|k| k.len() == 65 && k[0] == 0x04)
                    .ok_or_else(wrong)?;
                // Rejects points not on the curve.
                signature::ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .map_err(|_| wrong())?;
                Ok(PublicMaterial::Ec(point.to_vec()))
            }
            _ => {
                let pk = rsa::PublicKey::from_der(&der).map_err(|_| wrong())?;
                rsa_public(&pk)
            }
        },
        private => private_key(alg, private)
            .map(|(_, public)| public)
            .map_err(|m| {
                if m.starts_with("RSA key has") {
                    m
                } else {
                    wrong()
                }
            }),
    }
}

/// One DER TLV: (tag, contents, rest). Definite lengths up to 3 bytes, which covers any key.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (first as usize, rest),
        0x81..=0x83 => {
            let n = (first & 0x7f) as usize;
            if rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, &rest[n..])
        }
        _ => return None,
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The subjectPublicKey bits of a SubjectPublicKeyInfo whose AlgorithmIdentifier body is `alg_id`.
fn spki_key<'a>(der: &'a [u8], alg_id: &[u8]) -> Option<&'a [u8]> {
    let (0x30, spki, rest) = der_tlv(der)? else {
        return None;
    };
    if !rest.is_empty() {
        return None;
    }
    let (0x30, alg, rest) = der_tlv(spki)? else {
        return None;
    };
    if alg != alg_id {
        return None;
    }
    let (0x03, bits, rest) = der_tlv(rest)? else {
        return None;
    };
    if !rest.is_empty() {
        return None;
    }
    match bits.split_first()? {
        (0, key) => Some(key),
        _ => None,
    }
}

/// HS256 secret: the raw bytes with surrounding whitespace trimmed; long and not a sample.
fn hmac_secret(data: &[u8]) -> Result<Vec<u8>, String> {
    let secret = data.trim_ascii();
    if secret.starts_with(b"-----BEGIN") {
        return Err("this is a PEM key, not an HS256 secret; use a random secret (authgate gen-jwt-key --alg HS256)".into());
    }
    let lower = secret.to_ascii_lowercase();
    if WEAK_SECRETS.iter().any(|w| lower == w.as_bytes()) {
        return Err("this is a well-known sample secret; generate a random one (authgate gen-jwt-key --alg HS256)".into());
    }
    if secret.len() < MIN_HMAC_SECRET_LEN {
        return Err(format!(
            "HS256 secret is {} bytes; at least {MIN_HMAC_SECRET_LEN} random bytes are required",
            secret.len()
        ));
    }
    // A repeated unit ("aaaa…", "changemechangeme…") has far less entropy than its length says.
    let periodic =
        (1..=secret.len() / 2).any(|p| secret[p..].iter().zip(secret).all(|(a, b)| a == b));
    if periodic {
        return Err("HS256 secret is a repeated pattern; generate a random one (authgate gen-jwt-key --alg HS256)".into());
    }
    Ok(secret.to_vec())
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Generates a new key for `gen-jwt-key`: returns files written. Asymmetric: `<prefix>.pem` (PKCS#8 private, mode 0600) and `<prefix>.pub.pem` (SPKI); HS256: `<prefix>.secret` (64 base64url characters, mode 0600). Never overwrites.
pub fn generate_key(alg: JwtAlgorithm, prefix: &Path) -> Result<Vec<PathBuf>, String> {
    let gen_err = |_| "key generation failed".to_string();
    let (files, contents): (Vec<PathBuf>, Vec<(String, u32)>) = match alg {
        JwtAlgorithm::HS256 => {
            let mut raw = [0u8; 48];
            getrandom::fill(&mut raw).map_err(|_| "no randomness available".to_string())?;
            let text = format!("{}\n", URL_SAFE_NO_PAD.encode(raw));
            (vec![with_suffix(prefix, ".secret")], vec![(text, 0o600)])
        }
        _ => {
            let (pkcs8, spki) = match alg {
                JwtAlgorithm::EdDSA => {
                    let kp = signature::Ed25519KeyPair::generate().map_err(gen_err)?;
                    // v1 is what OpenSSL writes and what every JWT library reads.
                    let pkcs8 = kp.to_pkcs8v1().map_err(gen_err)?.as_ref().to_vec();
                    let spki = kp.public_key().as_der().map_err(gen_err)?.as_ref().to_vec();
                    (pkcs8, spki)
                }
                JwtAlgorithm::ES256 => {
                    let kp = signature::EcdsaKeyPair::generate(
                        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    )
                    .map_err(gen_err)?;
                    let pkcs8 = kp.to_pkcs8v1().map_err(gen_err)?.as_ref().to_vec();
                    let spki = kp.public_key().as_der().map_err(gen_err)?.as_ref().to_vec();
                    (pkcs8, spki)
                }
                JwtAlgorithm::RS256 | JwtAlgorithm::HS256 => {
                    let kp = rsa::KeyPair::generate(GENERATED_RSA_SIZE).map_err(gen_err)?;
                    let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der<'_> =
                        kp.as_der().map_err(gen_err)?;
                    let spki = kp.public_key().as_der().map_err(gen_err)?.as_ref().to_vec();
                    (pkcs8.as_ref().to_vec(), spki)
                }
            };
            (
                vec![with_suffix(prefix, ".pem"), with_suffix(prefix, ".pub.pem")],
                vec![
                    (pem_encode("PRIVATE KEY", &pkcs8), 0o600),
                    (pem_encode("PUBLIC KEY", &spki), 0o644),
                ],
            )
        }
    };
    for f in &files {
        if std::fs::symlink_metadata(f).is_ok() {
            return Err(format!(
                "{} already exists; refusing to overwrite it",
                f.display()
            ));
        }
    }
    for (i, (path, (text, mode))) in files.iter().zip(&contents).enumerate() {
        if let Err(m) = write_new(path, text.as_bytes(), *mode) {
            // Do not leave half a key pair behind.
            for written in &files[..i] {
                let _ = std::fs::remove_file(written);
            }
            return Err(m);
        }
    }
    Ok(files)
}

/// A cached verification: valid only for the key set that produced it, and only for exactly
/// the token it was made for (the key is a 64-bit hash; the token is compared on every hit).
#[derive(Clone)]
struct CacheEntry {
    generation: u64,
    raw: Arc<str>,
    ttl: Duration,
    token: Arc<VerifiedToken>,
}

struct UntilExpiry;

impl moka::Expiry<u64, CacheEntry> for UntilExpiry {
    fn expire_after_create(&self, _: &u64, v: &CacheEntry, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }

    fn expire_after_update(
        &self,
        _: &u64,
        v: &CacheEntry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// Verified-token cache: skips signature checks on repeats. Keyed by a seeded 64-bit hash of the
/// token (foldhash; not collision-resistant, and it need not be: a hit must equal the whole token
/// byte for byte, so a collision is only a miss or an eviction). A SHA-256 key cost ~0.4 µs per
/// request.
pub struct TokenCache {
    cache: moka::sync::Cache<u64, CacheEntry>,
    hasher: foldhash::quality::RandomState,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl TokenCache {
    /// A cache holding at most `max_entries` verified tokens, each no longer than its `exp`.
    pub fn new(max_entries: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_entries)
            .expire_after(UntilExpiry)
            .build();
        TokenCache {
            cache,
            hasher: foldhash::quality::RandomState::default(),
            hits: Default::default(),
            misses: Default::default(),
        }
    }

    /// Cache hit: return the cached verification, but re-check exp (and max_lifetime via auth_time) against `now`. Miss: full `keys.verify`, insert on success only.
    pub fn verify(
        &self,
        keys: &JwtKeys,
        token: &str,
        now: u64,
        max_lifetime: Duration,
    ) -> Result<Arc<VerifiedToken>, JwtError> {
        // Before hashing: an attacker must not make us digest megabytes per request.
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::TooLarge);
        }
        let key = std::hash::BuildHasher::hash_one(&self.hasher, token.as_bytes());
        if let Some(hit) = self.cache.get(&key) {
            if hit.generation == keys.generation && *hit.raw == *token {
                self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                keys.check_times(&hit.token, now, max_lifetime)?;
                return Ok(hit.token);
            }
        }
        self.misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let verified = Arc::new(keys.verify(token, now, max_lifetime)?);
        let deadline = verified
            .exp
            .saturating_add(keys.leeway)
            .min(verified.auth_time.saturating_add(max_lifetime.as_secs()));
        if deadline > now {
            let entry = CacheEntry {
                generation: keys.generation,
                raw: Arc::from(token),
                ttl: Duration::from_secs(deadline - now),
                token: verified.clone(),
            };
            self.cache.insert(key, entry);
        }
        Ok(verified)
    }

    /// Drops every entry (e.g. on key reload).
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    /// Lookups that found a verified token, and those that had to verify one (metrics).
    pub fn lookups(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// Approximate number of cached tokens (for metrics).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VerifyKeyConfig;
    use serde_json::{json, Value};
    use std::sync::OnceLock;
    use tempfile::TempDir;

    const ISS: &str = "authgate-test";
    const AUD: &str = "apps";
    const MAXL: Duration = Duration::from_secs(12 * 3600);
    const ALL: [JwtAlgorithm; 4] = [
        JwtAlgorithm::EdDSA,
        JwtAlgorithm::ES256,
        JwtAlgorithm::RS256,
        JwtAlgorithm::HS256,
    ];

    /// 1024-bit RSA key (openssl genpkey), below the accepted minimum.
    const RSA_1024_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIICdgIBADANBgkqhkiG9w0BAQEFAASCAmAwggJcAgEAAoGBALg+s4Z1xqFOYz8N
Tqz6HKrPqma02oe/oxH2wsfw6o7bdXgm+u8dkDyIjItuUPRK0qI1krE+wyP7egM3
fyT7e5f0SqUsBntNQW4VC7e2+G0TxnNI5NMMiiq8NlkUZyFE9MSqqc4+y1JKSGql
fn92EuPQhzTriSogGZX4f2ja7QtNAgMBAAECgYBUmRW9i56kumV/shCKBF3dYHUR
q8Eby7aIrRFK1SgeaE5L2TonSR/Na7V84C5zvVdx+79be0IG55VinLzYslBQ8cWj
/gFYJCRBePVZqh7otlo5Kgs36paYQTWcUQ7Mqk6hKP0sUb2J7v2DHDMCzWn5vA6g
J9w+jv/ccLKfcMw0UQJBAOOQbhWhwXxu40tWtk4Pa9Or4TebwzNVuLjpVDsATIfa
RXKy4gLdXydtD0zwxiEQZYm89ivC5/5Ri97ox3Z2ugMCQQDPRIcpIc5+IO5hYlxf
rvYcuQN73GQFUa+kGx6WIkgwiSnpRQrNJjyIO+EQs0zpgW24nSeoBNEphPkdX6Nw
aMxvAkEAuMkSKyyjcgiVNxsdhDuPgl2Cz2YDVw8XpceKZzKx8mryk9XgIxVhbCFq
GD83k6e929/+QcDOI7xSCNsbBP4ZwwJAd9wOOYgWTLQohmKGPsMECionzJnvsW/C
nakdL/8VNhQsC3zkuSwydyoBhlHZ2XMCi28+PpjCiDsggI8NCfVguwJARUSFKSAv
akfcXIdU3z73SyhYMJ0nAitT2n0LbH10E+OFSRxeOSOSl9bd7fU5DPUz534DTJDQ
q1thnVRFJiwSgg==
-----END PRIVATE KEY-----
";

    /// P-384 key (openssl), a valid EC key on the wrong curve for ES256.
    const P384_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDDhdHXkJyIljTpytCQN
cBV6gmsVWvWcBajIWUTAtp1LP/V4svLP3/BJbu8AuTn2EXKhZANiAASEPzD56Njw
Zhy3/gvHN5GVMYNDMdjm13f63rmMA9ckoffnKapT1Du5eYNpBm3VIz4eTOeZK/nO
qzcvZbJUT2ol3eekzG1MTLg+CT/uoZy1+GBEy40XvEpz2fwUMSXY0BM=
-----END PRIVATE KEY-----
";

    fn now() -> u64 {
        // jsonwebtoken checks exp/nbf against the system clock, so tests use it too.
        jsonwebtoken::get_current_timestamp()
    }

    /// (private, public) PEM text for asymmetric algorithms, or (secret, "") for HS256.
    /// `slot` gives independent keys of one algorithm; generated once per process (RSA is slow).
    fn key_text(alg: JwtAlgorithm, slot: usize) -> &'static (String, String) {
        static CELLS: [[OnceLock<(String, String)>; 3]; 4] =
            [const { [const { OnceLock::new() }; 3] }; 4];
        let idx = ALL.iter().position(|a| *a == alg).unwrap();
        CELLS[idx][slot].get_or_init(|| {
            let dir = TempDir::new().unwrap();
            let files = generate_key(alg, &dir.path().join("k")).unwrap();
            let first = std::fs::read_to_string(&files[0]).unwrap();
            let second = files
                .get(1)
                .map(|f| std::fs::read_to_string(f).unwrap())
                .unwrap_or_default();
            (first, second)
        })
    }

    fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn config(alg: JwtAlgorithm, signing: PathBuf) -> JwtConfig {
        JwtConfig {
            algorithm: alg,
            signing_key: KeySource::File(signing),
            kid: None,
            issuer: ISS.into(),
            audience: AUD.into(),
            ttl: Duration::from_secs(900),
            leeway: Duration::from_secs(5),
            accept_bearer: false,
            cache_size: 100,
            verify_keys: vec![],
        }
    }

    /// Keys for `alg` from key slot `slot`, loaded from a file in `dir`.
    fn load_slot(dir: &TempDir, alg: JwtAlgorithm, slot: usize) -> JwtKeys {
        let p = write(dir, &format!("signing-{slot}"), &key_text(alg, slot).0);
        JwtKeys::load(&config(alg, p)).unwrap()
    }

    fn keys(alg: JwtAlgorithm) -> (TempDir, JwtKeys) {
        let dir = TempDir::new().unwrap();
        let k = load_slot(&dir, alg, 0);
        (dir, k)
    }

    fn load_err(cfg: &JwtConfig) -> Vec<(String, String)> {
        match JwtKeys::load(cfg) {
            Ok(_) => panic!("load unexpectedly succeeded"),
            Err(e) => e,
        }
    }

    fn b64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    fn good_header(k: &JwtKeys) -> Value {
        json!({ "alg": k.alg_name, "typ": "JWT", "kid": k.signing_kid() })
    }

    fn good_claims(t: u64) -> Value {
        json!({ "iss": ISS, "aud": AUD, "sub": "alice", "groups": ["dev"], "iat": t, "nbf": t,
                "exp": t + 900, "jti": "jti-1", "auth_time": t })
    }

    fn unsigned(header: &Value, claims: &Value) -> String {
        format!(
            "{}.{}",
            b64(&serde_json::to_vec(header).unwrap()),
            b64(&serde_json::to_vec(claims).unwrap())
        )
    }

    /// A token with arbitrary header/claims, signed by the (real) signer of `signer`.
    fn forge(signer: &JwtKeys, header: &Value, claims: &Value) -> String {
        let msg = unsigned(header, claims);
        let sig = signer.signer.sign(msg.as_bytes()).unwrap();
        format!("{msg}.{}", b64(&sig))
    }

    fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
        let msg = unsigned(header, claims);
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        format!("{msg}.{}", b64(hmac::sign(&key, msg.as_bytes()).as_ref()))
    }

    fn with(mut v: Value, key: &str, val: Value) -> Value {
        v[key] = val;
        v
    }

    fn without(mut v: Value, key: &str) -> Value {
        v.as_object_mut().unwrap().remove(key);
        v
    }

    fn parts(token: &str) -> (Value, Value) {
        let mut it = token.split('.');
        let h =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
        let c =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
        (h, c)
    }

    fn assert_roundtrip(alg: JwtAlgorithm) {
        let (_d, k) = keys(alg);
        let t = now();
        let groups = vec!["dev".to_string(), "ops".to_string()];
        let issued = k
            .issue("alice", Some("alice@example.com"), &groups, t - 60, t, MAXL)
            .unwrap();
        let v = k.verify(&issued.token, t, MAXL).unwrap();
        assert_eq!(v, issued.claims);
        assert_eq!(
            (v.sub.as_str(), v.iat, v.exp, v.auth_time),
            ("alice", t, t + 900, t - 60)
        );
        assert_eq!(URL_SAFE_NO_PAD.decode(&v.jti).unwrap().len(), 16);
        let (h, c) = parts(&issued.token);
        assert_eq!(
            h,
            json!({ "alg": alg_name(alg), "typ": "JWT", "kid": k.signing_kid() })
        );
        assert_eq!(c["iss"], ISS);
        assert_eq!(c["aud"], AUD);
        assert_eq!(c["nbf"], t);
        assert_eq!(c["email"], "alice@example.com");
        assert_eq!(c["groups"], json!(["dev", "ops"]));
    }

    #[test]
    fn unit_eddsa_issue_then_verify_roundtrips() {
        assert_roundtrip(JwtAlgorithm::EdDSA);
    }

    #[test]
    fn unit_es256_issue_then_verify_roundtrips() {
        assert_roundtrip(JwtAlgorithm::ES256);
    }

    #[test]
    fn unit_rs256_issue_then_verify_roundtrips() {
        assert_roundtrip(JwtAlgorithm::RS256);
    }

    #[test]
    fn unit_hs256_issue_then_verify_roundtrips() {
        assert_roundtrip(JwtAlgorithm::HS256);
    }

    #[test]
    fn unit_issue_without_email_omits_claim() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        let issued = k.issue("bob", None, &[], t, t, MAXL).unwrap();
        let (_, c) = parts(&issued.token);
        assert!(c.get("email").is_none());
        assert_eq!(c["groups"], json!([]));
        k.verify(&issued.token, t, MAXL).unwrap();
    }

    #[test]
    fn unit_forged_baseline_with_real_key_verifies() {
        // Guards the rejection tests below: the forging helper itself produces valid tokens.
        for alg in ALL {
            let (_d, k) = keys(alg);
            let t = now();
            let tok = forge(&k, &good_header(&k), &good_claims(t));
            assert_eq!(k.verify(&tok, t, MAXL).unwrap().sub, "alice", "{alg:?}");
        }
    }

    #[test]
    fn unit_oversize_token_rejected_too_large() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        let big = with(good_claims(t), "pad", json!("x".repeat(4000)));
        let tok = forge(&k, &good_header(&k), &big);
        assert!(tok.len() > MAX_TOKEN_LEN);
        assert!(matches!(k.verify(&tok, t, MAXL), Err(JwtError::TooLarge)));
        assert!(matches!(
            k.verify(&"a".repeat(1 << 20), t, MAXL),
            Err(JwtError::TooLarge)
        ));
    }

    #[test]
    fn unit_bad_shape_rejected_malformed() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        let good = k.issue("alice", None, &[], t, t, MAXL).unwrap().token;
        let (h, rest) = good.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        let cases = [
            String::new(),
            "abc".into(),
            format!("{h}.{p}"),
            format!("{h}.{p}."),
            format!("{h}.{p}.{s}.{s}"),
            format!(".{p}.{s}"),
            format!("{h}..{s}"),
            format!("{h}.{p}.{s}="),
            format!("{h}=.{p}.{s}"),
            format!("{h}.{p}.{s}+"),
            format!("{h}.{p}/.{s}"),
            format!("{h} .{p}.{s}"),
            format!("{}.{p}.{s}", b64(b"not json")),
            format!("{}.{p}.{s}", b64(b"{\"kid\":\"x\"}")),
            format!("{}.{p}.{s}", b64(b"{\"alg\":\"EdDSA\",\"alg\":\"EdDSA\"}")),
        ];
        for c in &cases {
            assert!(
                matches!(k.verify(c, t, MAXL), Err(JwtError::Malformed)),
                "accepted or misclassified {c:?}"
            );
        }
    }

    #[test]
    fn unit_alg_none_any_casing_rejected() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        for alg in ["none", "None", "NONE", "nOnE"] {
            let msg = unsigned(&json!({ "alg": alg, "typ": "JWT" }), &good_claims(t));
            for tok in [
                format!("{msg}."),
                format!("{msg}.AAAA"),
                format!("{msg}.{}", b64(&[0; 64])),
            ] {
                assert!(k.verify(&tok, t, MAXL).is_err(), "{alg} accepted");
            }
            assert!(matches!(
                k.verify(&format!("{msg}.AAAA"), t, MAXL),
                Err(JwtError::AlgorithmNotAllowed)
            ));
        }
    }

    #[test]
    fn unit_hs256_signed_with_public_key_rejected() {
        for alg in [
            JwtAlgorithm::EdDSA,
            JwtAlgorithm::ES256,
            JwtAlgorithm::RS256,
        ] {
            let (_d, k) = keys(alg);
            let t = now();
            let public_pem = key_text(alg, 0).1.as_bytes();
            let raw_public = match &parse_verify_key(alg, public_pem).unwrap() {
                PublicMaterial::Ed(b) | PublicMaterial::Ec(b) => b.clone(),
                PublicMaterial::Rsa { pkcs1, .. } => pkcs1.clone(),
                PublicMaterial::Hmac(_) => unreachable!(),
            };
            for secret in [public_pem, raw_public.as_slice()] {
                for header in [
                    json!({ "alg": "HS256", "typ": "JWT", "kid": k.signing_kid() }),
                    json!({ "alg": "HS256", "typ": "JWT" }),
                ] {
                    let tok = hs256(secret, &header, &good_claims(t));
                    assert!(
                        matches!(k.verify(&tok, t, MAXL), Err(JwtError::AlgorithmNotAllowed)),
                        "{alg:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn unit_other_algorithm_header_rejected() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        for alg in ["ES256", "RS256", "eddsa", "EDDSA", "Ed25519", "EdDSA ", ""] {
            let tok = forge(
                &k,
                &with(good_header(&k), "alg", json!(alg)),
                &good_claims(t),
            );
            assert!(
                matches!(k.verify(&tok, t, MAXL), Err(JwtError::AlgorithmNotAllowed)),
                "{alg:?}"
            );
        }
        let tok = forge(
            &k,
            &with(good_header(&k), "alg", json!(null)),
            &good_claims(t),
        );
        assert!(matches!(k.verify(&tok, t, MAXL), Err(JwtError::Malformed)));
    }

    #[test]
    fn unit_tampered_payload_rejected_bad_signature() {
        for alg in ALL {
            let (_d, k) = keys(alg);
            let t = now();
            let tok = k.issue("alice", None, &[], t, t, MAXL).unwrap().token;
            let mut segs: Vec<String> = tok.split('.').map(String::from).collect();
            let evil = with(parts(&tok).1, "sub", json!("admin"));
            segs[1] = b64(&serde_json::to_vec(&evil).unwrap());
            let forged = segs.join(".");
            assert!(
                matches!(k.verify(&forged, t, MAXL), Err(JwtError::BadSignature)),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn unit_stripped_or_truncated_signature_rejected() {
        for alg in ALL {
            let (_d, k) = keys(alg);
            let t = now();
            let tok = k.issue("alice", None, &[], t, t, MAXL).unwrap().token;
            let cut = tok.rfind('.').unwrap();
            assert!(matches!(
                k.verify(&tok[..cut + 1], t, MAXL),
                Err(JwtError::Malformed)
            ));
            assert!(matches!(
                k.verify(&tok[..cut], t, MAXL),
                Err(JwtError::Malformed)
            ));
            let short = &tok[..tok.len() - 4];
            assert!(
                matches!(
                    k.verify(short, t, MAXL),
                    Err(JwtError::BadSignature | JwtError::Malformed)
                ),
                "{alg:?}"
            );
            let zeros = format!("{}.{}", &tok[..cut], b64(&[0u8; 64]));
            assert!(
                matches!(k.verify(&zeros, t, MAXL), Err(JwtError::BadSignature)),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn unit_wrong_issuer_rejected() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        for iss in [json!("someone-else"), json!(["someone-else"]), json!("")] {
            let tok = forge(&k, &good_header(&k), &with(good_claims(t), "iss", iss));
            assert!(matches!(k.verify(&tok, t, MAXL), Err(JwtError::Claims(_))));
        }
    }

    #[test]
    fn unit_wrong_audience_rejected() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        for aud in [json!("other-app"), json!(["other-app"]), json!([])] {
            let tok = forge(&k, &good_header(&k), &with(good_claims(t), "aud", aud));
            assert!(matches!(k.verify(&tok, t, MAXL), Err(JwtError::Claims(_))));
        }
    }

    #[test]
    fn unit_missing_required_claim_rejected() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        for claim in ["exp", "iss", "aud", "sub", "iat", "nbf", "jti", "auth_time"] {
            let tok = forge(&k, &good_header(&k), &without(good_claims(t), claim));
            match k.verify(&tok, t, MAXL) {
                Err(JwtError::Claims(m)) => assert!(m.contains(claim), "{claim}: {m}"),
                other => panic!("{claim}: {other:?}"),
            }
        }
    }

    #[test]
    fn unit_wrongly_typed_claims_rejected() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        let cases = [
            ("exp", json!((t + 900).to_string())),
            ("exp", json!(null)),
            ("iat", json!(t.to_string())),
            ("nbf", json!(-1)),
            ("auth_time", json!(true)),
            ("sub", json!(42)),
            ("sub", json!("")),
            ("groups", json!("dev")),
        ];
        for (claim, val) in cases {
            let tok = forge(
                &k,
                &good_header(&k),
                &with(good_claims(t), claim, val.clone()),
            );
            assert!(
                matches!(k.verify(&tok, t, MAXL), Err(JwtError::Claims(_))),
                "{claim}={val}"
            );
        }
    }

    #[test]
    fn unit_expired_token_rejected() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        let tok = forge(
            &k,
            &good_header(&k),
            &with(good_claims(t - 2000), "exp", json!(t - 100)),
        );
        assert!(matches!(k.verify(&tok, t, MAXL), Err(JwtError::Expired)));
    }

    #[test]
    fn unit_expired_by_caller_clock_rejected() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        let tok = k.issue("alice", None, &[], t, t, MAXL).unwrap().token;
        assert!(matches!(
            k.verify(&tok, t + 900 + 6, MAXL),
            Err(JwtError::Expired)
        ));
        assert!(k.verify(&tok, t + 900 + 5, MAXL).is_ok());
    }

    #[test]
    fn unit_exp_within_leeway_accepted() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        let tok = forge(
            &k,
            &good_header(&k),
            &with(good_claims(t - 900), "exp", json!(t - 2)),
        );
        assert!(k.verify(&tok, t, MAXL).is_ok());
    }

    #[test]
    fn unit_nbf_in_future_rejected() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        let tok = forge(
            &k,
            &good_header(&k),
            &with(good_claims(t), "nbf", json!(t + 100)),
        );
        assert!(matches!(
            k.verify(&tok, t, MAXL),
            Err(JwtError::NotYetValid)
        ));
    }

    #[test]
    fn unit_iat_in_future_rejected() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        let tok = forge(
            &k,
            &good_header(&k),
            &with(good_claims(t), "iat", json!(t + 100)),
        );
        assert!(matches!(
            k.verify(&tok, t, MAXL),
            Err(JwtError::IssuedInFuture)
        ));
        let tok = forge(
            &k,
            &good_header(&k),
            &with(good_claims(t), "auth_time", json!(t + 100)),
        );
        assert!(matches!(
            k.verify(&tok, t, MAXL),
            Err(JwtError::IssuedInFuture)
        ));
    }

    #[test]
    fn unit_auth_time_older_than_max_lifetime_rejected() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        let old = with(good_claims(t), "auth_time", json!(t - MAXL.as_secs() - 1));
        let tok = forge(&k, &good_header(&k), &old);
        assert!(matches!(k.verify(&tok, t, MAXL), Err(JwtError::TooOld)));
        let edge = with(good_claims(t), "auth_time", json!(t - MAXL.as_secs()));
        assert!(k
            .verify(&forge(&k, &good_header(&k), &edge), t, MAXL)
            .is_ok());
    }

    #[test]
    fn unit_unknown_kid_rejected() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        for kid in [
            json!("nope"),
            json!(""),
            json!(format!("{} ", k.signing_kid())),
        ] {
            let tok = forge(&k, &with(good_header(&k), "kid", kid), &good_claims(t));
            assert!(matches!(k.verify(&tok, t, MAXL), Err(JwtError::UnknownKid)));
        }
    }

    #[test]
    fn unit_token_from_unconfigured_key_rejected() {
        for alg in ALL {
            let dir = TempDir::new().unwrap();
            let k = load_slot(&dir, alg, 0);
            let stranger = load_slot(&dir, alg, 1);
            let t = now();
            let same_kid = forge(&stranger, &good_header(&k), &good_claims(t));
            assert!(
                matches!(k.verify(&same_kid, t, MAXL), Err(JwtError::BadSignature)),
                "{alg:?}"
            );
            let no_kid = forge(&stranger, &without(good_header(&k), "kid"), &good_claims(t));
            assert!(
                matches!(k.verify(&no_kid, t, MAXL), Err(JwtError::BadSignature)),
                "{alg:?}"
            );
            let own_kid = stranger
                .issue("alice", None, &[], t, t, MAXL)
                .unwrap()
                .token;
            assert!(
                matches!(k.verify(&own_kid, t, MAXL), Err(JwtError::UnknownKid)),
                "{alg:?}"
            );
        }
    }

    /// Current key in slot 0 signing, previous key (slot 1) configured as verify key "old".
    fn rotated(dir: &TempDir, alg: JwtAlgorithm, old_as_private: bool) -> (JwtKeys, JwtKeys) {
        let (old_priv, old_pub) = key_text(alg, 1);
        let old_file = if old_as_private || alg == JwtAlgorithm::HS256 {
            old_priv
        } else {
            old_pub
        };
        let vk = write(dir, "old-verify", old_file);
        let mut cfg = config(alg, write(dir, "current", &key_text(alg, 0).0));
        cfg.verify_keys = vec![VerifyKeyConfig {
            kid: "old".into(),
            source: KeySource::File(vk),
        }];
        let current = JwtKeys::load(&cfg).unwrap();
        let mut old_cfg = config(alg, write(dir, "old-signing", old_priv));
        old_cfg.kid = Some("old".into());
        (current, JwtKeys::load(&old_cfg).unwrap())
    }

    #[test]
    fn unit_rotation_old_key_token_verifies_new_tokens_use_signing_kid() {
        for alg in ALL {
            for old_as_private in [false, true] {
                let dir = TempDir::new().unwrap();
                let (current, old) = rotated(&dir, alg, old_as_private);
                let t = now();
                let old_tok = old.issue("alice", None, &[], t, t, MAXL).unwrap().token;
                assert_eq!(parts(&old_tok).0["kid"], "old");
                assert_eq!(
                    current.verify(&old_tok, t, MAXL).unwrap().sub,
                    "alice",
                    "{alg:?}"
                );
                let new_tok = current.issue("alice", None, &[], t, t, MAXL).unwrap().token;
                assert_eq!(parts(&new_tok).0["kid"], current.signing_kid());
                assert_ne!(current.signing_kid(), "old");
                assert!(current.verify(&new_tok, t, MAXL).is_ok());
                // The old key set does not know the new key.
                assert!(matches!(
                    old.verify(&new_tok, t, MAXL),
                    Err(JwtError::UnknownKid)
                ));
            }
        }
    }

    #[test]
    fn unit_absent_kid_tries_signing_key_only() {
        let dir = TempDir::new().unwrap();
        let (current, old) = rotated(&dir, JwtAlgorithm::EdDSA, false);
        let t = now();
        let h = json!({ "alg": "EdDSA", "typ": "JWT" });
        let by_old = forge(&old, &h, &good_claims(t));
        assert!(matches!(
            current.verify(&by_old, t, MAXL),
            Err(JwtError::BadSignature)
        ));
        let by_current = forge(&current, &h, &good_claims(t));
        assert!(current.verify(&by_current, t, MAXL).is_ok());
    }

    #[test]
    fn unit_crit_or_foreign_typ_header_rejected() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        let crit = with(good_header(&k), "crit", json!(["exp"]));
        assert!(matches!(
            k.verify(&forge(&k, &crit, &good_claims(t)), t, MAXL),
            Err(JwtError::Malformed)
        ));
        let typ = with(good_header(&k), "typ", json!("at+jwt"));
        assert!(matches!(
            k.verify(&forge(&k, &typ, &good_claims(t)), t, MAXL),
            Err(JwtError::Malformed)
        ));
        let lower = with(good_header(&k), "typ", json!("jwt"));
        assert!(k
            .verify(&forge(&k, &lower, &good_claims(t)), t, MAXL)
            .is_ok());
        let untyped = without(good_header(&k), "typ");
        assert!(k
            .verify(&forge(&k, &untyped, &good_claims(t)), t, MAXL)
            .is_ok());
    }

    fn hs_config_env(var: &str) -> JwtConfig {
        let mut cfg = config(JwtAlgorithm::HS256, PathBuf::new());
        cfg.signing_key = KeySource::Env(var.into());
        cfg
    }

    #[test]
    fn unit_hs256_short_secret_rejected() {
        let dir = TempDir::new().unwrap();
        let p = write(&dir, "s", "Zx8-q2Lr9vT4mN6bW1cY7hJ3kP5sD0f"); // 31 bytes
        let errs = load_err(&config(JwtAlgorithm::HS256, p));
        assert_eq!(errs[0].0, "auth.jwt.signing_key");
        assert!(errs[0].1.contains("31 bytes"), "{}", errs[0].1);
    }

    #[test]
    fn unit_hs256_sample_or_repeated_secret_rejected() {
        let dir = TempDir::new().unwrap();
        let samples = [
            "secret",
            "your-256-bit-secret",
            "changeme",
            "password",
            "a-string-secret-at-least-256-bits-long",
            "A-STRING-SECRET-AT-LEAST-256-BITS-LONG\n",
            &"a".repeat(64),
            &"changeme".repeat(5),
            &"0123456789".repeat(4),
        ];
        for s in samples {
            let p = write(&dir, "s", s);
            let errs = load_err(&config(JwtAlgorithm::HS256, p));
            assert_eq!(errs.len(), 1, "{s:?}");
            // Short samples are ordinary words ("secret"); long ones must never be echoed.
            if s.trim().len() >= 10 {
                assert!(!errs[0].1.contains(s.trim()), "message quotes the secret");
            }
        }
    }

    #[test]
    fn unit_hs256_pem_file_as_secret_rejected() {
        let dir = TempDir::new().unwrap();
        let p = write(&dir, "s", &key_text(JwtAlgorithm::EdDSA, 0).1);
        let errs = load_err(&config(JwtAlgorithm::HS256, p));
        assert!(errs[0].1.contains("PEM"), "{}", errs[0].1);
    }

    #[test]
    fn unit_hs256_whitespace_padded_secret_file_same_key() {
        let secret = key_text(JwtAlgorithm::HS256, 0).0.clone();
        assert!(secret.ends_with('\n'));
        let dir = TempDir::new().unwrap();
        let padded = write(&dir, "padded", &format!(" \t{}\r\n\n", secret.trim()));
        let from_padded = JwtKeys::load(&config(JwtAlgorithm::HS256, padded)).unwrap();
        let (_d, from_file) = keys(JwtAlgorithm::HS256);
        assert_eq!(from_padded.signing_kid(), from_file.signing_kid());
        let t = now();
        let tok = from_padded
            .issue("alice", None, &[], t, t, MAXL)
            .unwrap()
            .token;
        assert!(from_file.verify(&tok, t, MAXL).is_ok());
    }

    #[test]
    fn unit_env_key_source_reads_variable_bytes() {
        // An existing variable instead of set_var: mutating the environment races with other
        // test threads reading it.
        let (name, value) = std::env::vars_os()
            .find_map(|(n, v)| Some((n.into_string().ok()?, v)).filter(|(_, v)| !v.is_empty()))
            .expect("a non-empty environment variable");
        let bytes = read_source(&KeySource::Env(name)).unwrap();
        assert_eq!(bytes, value.into_encoded_bytes());
    }

    #[test]
    fn unit_hs256_missing_env_rejected() {
        let errs = load_err(&hs_config_env("AUTHGATE_JWT_TEST_UNSET_VARIABLE"));
        assert_eq!(errs[0].0, "auth.jwt.signing_key_env");
    }

    #[test]
    fn unit_rsa_1024_key_rejected() {
        let dir = TempDir::new().unwrap();
        let errs = load_err(&config(JwtAlgorithm::RS256, write(&dir, "k", RSA_1024_PEM)));
        assert_eq!(errs[0].0, "auth.jwt.signing_key");
        let mut cfg = config(
            JwtAlgorithm::RS256,
            write(&dir, "ok", &key_text(JwtAlgorithm::RS256, 0).0),
        );
        cfg.verify_keys = vec![VerifyKeyConfig {
            kid: "small".into(),
            source: KeySource::File(write(&dir, "k", RSA_1024_PEM)),
        }];
        let errs = load_err(&cfg);
        assert_eq!(errs[0].0, "auth.jwt.verify_keys[0]");
    }

    #[test]
    fn unit_wrong_key_type_for_algorithm_rejected() {
        let dir = TempDir::new().unwrap();
        let cases = [
            (JwtAlgorithm::EdDSA, key_text(JwtAlgorithm::ES256, 0).0.as_str()),
            (JwtAlgorithm::ES256, key_text(JwtAlgorithm::EdDSA, 0).0.as_str()),
            (JwtAlgorithm::ES256, P384_PEM),
            (JwtAlgorithm::RS256, key_text(JwtAlgorithm::ES256, 0).0.as_str()),
            (JwtAlgorithm::EdDSA, key_text(JwtAlgorithm::RS256, 0).0.as_str()),
            (JwtAlgorithm::EdDSA, "not a pem file at all"),
            (JwtAlgorithm::EdDSA, "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"),
        ];
        for (alg, text) in cases {
            let errs = load_err(&config(alg, write(&dir, "k", text)));
            assert_eq!(errs.len(), 1);
            assert_eq!(errs[0].0, "auth.jwt.signing_key", "{alg:?}");
        }
    }

    #[test]
    fn unit_public_key_as_signing_key_rejected() {
        let dir = TempDir::new().unwrap();
        for alg in [
            JwtAlgorithm::EdDSA,
            JwtAlgorithm::ES256,
            JwtAlgorithm::RS256,
        ] {
            let errs = load_err(&config(alg, write(&dir, "k", &key_text(alg, 0).1)));
            assert!(errs[0].1.contains("public key"), "{}", errs[0].1);
        }
    }

    #[test]
    fn unit_wrong_type_verify_key_rejected_with_index() {
        let dir = TempDir::new().unwrap();
        let mut cfg = config(
            JwtAlgorithm::EdDSA,
            write(&dir, "k", &key_text(JwtAlgorithm::EdDSA, 0).0),
        );
        cfg.verify_keys = vec![
            VerifyKeyConfig {
                kid: "a".into(),
                source: KeySource::File(write(&dir, "a", &key_text(JwtAlgorithm::EdDSA, 1).1)),
            },
            VerifyKeyConfig {
                kid: "b".into(),
                source: KeySource::File(write(&dir, "b", &key_text(JwtAlgorithm::ES256, 0).1)),
            },
            VerifyKeyConfig {
                kid: "c".into(),
                source: KeySource::File(dir.path().join("missing")),
            },
        ];
        let errs = load_err(&cfg);
        let paths: Vec<&str> = errs.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            ["auth.jwt.verify_keys[1]", "auth.jwt.verify_keys[2]"]
        );
    }

    #[test]
    fn unit_ec_point_off_curve_rejected() {
        let pem = &key_text(JwtAlgorithm::ES256, 0).1;
        let der = match pem_key(pem.as_bytes()).unwrap() {
            PemKey::Spki(d) => d,
            _ => unreachable!(),
        };
        let mut bad = der.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        assert!(parse_verify_key(
            JwtAlgorithm::ES256,
            pem_encode("PUBLIC KEY", &der).as_bytes()
        )
        .is_ok());
        assert!(parse_verify_key(
            JwtAlgorithm::ES256,
            pem_encode("PUBLIC KEY", &bad).as_bytes()
        )
        .is_err());
    }

    #[test]
    fn unit_duplicate_kid_rejected() {
        let dir = TempDir::new().unwrap();
        let mut cfg = config(
            JwtAlgorithm::EdDSA,
            write(&dir, "k", &key_text(JwtAlgorithm::EdDSA, 0).0),
        );
        let v = write(&dir, "v", &key_text(JwtAlgorithm::EdDSA, 1).1);
        cfg.kid = Some("main".into());
        cfg.verify_keys = vec![
            VerifyKeyConfig {
                kid: "old".into(),
                source: KeySource::File(v.clone()),
            },
            VerifyKeyConfig {
                kid: "old".into(),
                source: KeySource::File(v.clone()),
            },
            VerifyKeyConfig {
                kid: "main".into(),
                source: KeySource::File(v),
            },
        ];
        let errs = load_err(&cfg);
        let paths: Vec<&str> = errs.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            ["auth.jwt.verify_keys[1].kid", "auth.jwt.verify_keys[2].kid"]
        );
    }

    #[test]
    fn unit_sec1_and_pkcs1_private_keys_load() {
        let dir = TempDir::new().unwrap();
        let ec_pkcs8 = match pem_key(key_text(JwtAlgorithm::ES256, 0).0.as_bytes()).unwrap() {
            PemKey::Pkcs8(d) => d,
            _ => unreachable!(),
        };
        let ec = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &ec_pkcs8,
        )
        .unwrap();
        let sec1: aws_lc_rs::encoding::EcPrivateKeyRfc5915Der<'_> =
            ec.private_key().as_der().unwrap();
        let sec1_pem = pem_encode("EC PRIVATE KEY", sec1.as_ref());
        let a =
            JwtKeys::load(&config(JwtAlgorithm::ES256, write(&dir, "sec1", &sec1_pem))).unwrap();
        let (_d, b) = keys(JwtAlgorithm::ES256);
        assert_eq!(a.signing_kid(), b.signing_kid());

        // PKCS#1 RSAPrivateKey is the OCTET STRING inside the PKCS#8 PrivateKeyInfo.
        let rsa_pkcs8 = match pem_key(key_text(JwtAlgorithm::RS256, 0).0.as_bytes()).unwrap() {
            PemKey::Pkcs8(d) => d,
            _ => unreachable!(),
        };
        let (_, info, _) = der_tlv(&rsa_pkcs8).unwrap();
        let (_, _version, rest) = der_tlv(info).unwrap();
        let (_, _alg, rest) = der_tlv(rest).unwrap();
        let (tag, pkcs1, _) = der_tlv(rest).unwrap();
        assert_eq!(tag, 0x04);
        let pkcs1_pem = pem_encode("RSA PRIVATE KEY", pkcs1);
        let c = JwtKeys::load(&config(
            JwtAlgorithm::RS256,
            write(&dir, "pkcs1", &pkcs1_pem),
        ))
        .unwrap();
        let (_d2, d) = keys(JwtAlgorithm::RS256);
        assert_eq!(c.signing_kid(), d.signing_kid());
        let t = now();
        assert!(d
            .verify(
                &c.issue("alice", None, &[], t, t, MAXL).unwrap().token,
                t,
                MAXL
            )
            .is_ok());
    }

    #[test]
    fn unit_default_kid_derived_from_public_key() {
        for alg in ALL {
            let dir = TempDir::new().unwrap();
            let a = load_slot(&dir, alg, 0);
            let b = load_slot(&dir, alg, 0);
            let other = load_slot(&dir, alg, 1);
            assert_eq!(a.signing_kid().len(), DEFAULT_KID_LEN);
            assert_eq!(a.signing_kid(), b.signing_kid());
            assert_ne!(a.signing_kid(), other.signing_kid());
            if alg != JwtAlgorithm::HS256 {
                let from_pub = parse_verify_key(alg, key_text(alg, 0).1.as_bytes()).unwrap();
                assert_eq!(from_pub.default_kid(), a.signing_kid(), "{alg:?}");
            }
        }
    }

    #[test]
    fn unit_configured_kid_used_in_header() {
        let dir = TempDir::new().unwrap();
        let mut cfg = config(
            JwtAlgorithm::EdDSA,
            write(&dir, "k", &key_text(JwtAlgorithm::EdDSA, 0).0),
        );
        cfg.kid = Some("2026-11".into());
        let k = JwtKeys::load(&cfg).unwrap();
        let t = now();
        let tok = k.issue("alice", None, &[], t, t, MAXL).unwrap().token;
        assert_eq!(parts(&tok).0["kid"], "2026-11");
        assert_eq!(k.signing_kid(), "2026-11");
    }

    fn jwks(k: &JwtKeys) -> Vec<Value> {
        let doc: Value = serde_json::from_slice(k.jwks_json().unwrap()).unwrap();
        doc["keys"].as_array().unwrap().clone()
    }

    fn signing_input_and_sig(tok: &str) -> (&str, Vec<u8>) {
        let cut = tok.rfind('.').unwrap();
        (
            &tok[..cut],
            URL_SAFE_NO_PAD.decode(&tok[cut + 1..]).unwrap(),
        )
    }

    fn jwk_bytes(jwk: &Value, member: &str) -> Vec<u8> {
        let s = jwk[member].as_str().unwrap();
        assert!(!s.contains('='), "padding in {member}");
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    #[test]
    fn unit_jwks_eddsa_verifies_token_independently() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let keys_json = jwks(&k);
        assert_eq!(keys_json.len(), 1);
        let jwk = &keys_json[0];
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(jwk["alg"], "EdDSA");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kid"], k.signing_kid());
        let x = jwk_bytes(jwk, "x");
        assert_eq!(x.len(), 32);
        let t = now();
        let tok = k.issue("alice", None, &[], t, t, MAXL).unwrap().token;
        let (msg, sig) = signing_input_and_sig(&tok);
        let public = signature::UnparsedPublicKey::new(&signature::ED25519, &x);
        public.verify(msg.as_bytes(), &sig).unwrap();
        assert!(public.verify(format!("{msg}x").as_bytes(), &sig).is_err());
    }

    #[test]
    fn unit_jwks_es256_and_rs256_verify_token_independently() {
        let t = now();
        let (_d, k) = keys(JwtAlgorithm::ES256);
        let jwk = &jwks(&k)[0];
        assert_eq!(
            (
                jwk["kty"].as_str(),
                jwk["crv"].as_str(),
                jwk["alg"].as_str()
            ),
            (Some("EC"), Some("P-256"), Some("ES256"))
        );
        let mut point = vec![0x04];
        point.extend(jwk_bytes(jwk, "x"));
        point.extend(jwk_bytes(jwk, "y"));
        assert_eq!(point.len(), 65);
        let tok = k.issue("alice", None, &[], t, t, MAXL).unwrap().token;
        let (msg, sig) = signing_input_and_sig(&tok);
        assert_eq!(sig.len(), 64);
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
            .verify(msg.as_bytes(), &sig)
            .unwrap();

        let (_d, k) = keys(JwtAlgorithm::RS256);
        let jwk = &jwks(&k)[0];
        assert_eq!(
            (jwk["kty"].as_str(), jwk["alg"].as_str()),
            (Some("RSA"), Some("RS256"))
        );
        let n = jwk_bytes(jwk, "n");
        assert_ne!(n[0], 0, "modulus must not be zero-padded");
        assert_eq!(n.len(), 256);
        assert_eq!(jwk["e"], "AQAB");
        let tok = k.issue("alice", None, &[], t, t, MAXL).unwrap().token;
        let (msg, sig) = signing_input_and_sig(&tok);
        signature::RsaPublicKeyComponents {
            n: &n,
            e: &jwk_bytes(jwk, "e"),
        }
        .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg.as_bytes(), &sig)
        .unwrap();
    }

    #[test]
    fn unit_jwks_lists_signing_then_verify_keys() {
        let dir = TempDir::new().unwrap();
        let (current, _old) = rotated(&dir, JwtAlgorithm::EdDSA, false);
        let kids: Vec<Value> = jwks(&current).iter().map(|j| j["kid"].clone()).collect();
        assert_eq!(kids, [json!(current.signing_kid()), json!("old")]);
    }

    #[test]
    fn unit_jwks_hs256_none() {
        let (_d, k) = keys(JwtAlgorithm::HS256);
        assert!(k.jwks_json().is_none());
    }

    #[test]
    fn unit_debug_output_redacts_key_material() {
        let (_d, k) = keys(JwtAlgorithm::HS256);
        let secret = key_text(JwtAlgorithm::HS256, 0).0.trim();
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(secret));
        assert!(!dbg.contains(&b64(secret.as_bytes())));
        assert!(dbg.contains(k.signing_kid()));
        let t = now();
        let issued = k.issue("alice", None, &[], t, t, MAXL).unwrap();
        assert!(!format!("{issued:?}").contains(&issued.token));
    }

    #[test]
    fn unit_error_display_excludes_token_contents() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        let marker = "SENSITIVEMARKER";
        let claims = with(good_claims(t), "sub", json!(marker));
        let tokens = [
            forge(
                &k,
                &good_header(&k),
                &with(claims.clone(), "exp", json!(marker)),
            ),
            forge(
                &k,
                &good_header(&k),
                &with(claims.clone(), "iss", json!(marker)),
            ),
            forge(&k, &with(good_header(&k), "kid", json!(marker)), &claims),
            forge(&k, &with(good_header(&k), "alg", json!(marker)), &claims),
            forge(
                &k,
                &good_header(&k),
                &with(claims.clone(), "groups", json!(marker)),
            ),
            format!("{marker}.{marker}.{marker}"),
        ];
        for tok in &tokens {
            let e = k.verify(tok, t, MAXL).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(
                !shown.contains(marker) && !shown.contains(tok.as_str()),
                "{shown}"
            );
        }
    }

    #[test]
    fn unit_issue_exp_capped_by_max_lifetime() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        let auth = t - MAXL.as_secs() + 100;
        let issued = k.issue("alice", None, &[], auth, t, MAXL).unwrap();
        assert_eq!(issued.claims.exp, auth + MAXL.as_secs());
        assert_eq!(issued.claims.auth_time, auth);
        assert!(k.verify(&issued.token, t, MAXL).is_ok());
    }

    #[test]
    fn unit_issue_after_max_lifetime_fails_too_old() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        assert!(matches!(
            k.issue("alice", None, &[], t - MAXL.as_secs(), t, MAXL),
            Err(JwtError::TooOld)
        ));
        assert!(matches!(
            k.issue("alice", None, &[], t + 60, t, MAXL),
            Err(JwtError::IssuedInFuture)
        ));
        assert!(matches!(
            k.issue("", None, &[], t, t, MAXL),
            Err(JwtError::Claims(_))
        ));
    }

    #[test]
    fn unit_issue_too_many_groups_too_large() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        let groups: Vec<String> = (0..400).map(|i| format!("group-{i}")).collect();
        assert!(matches!(
            k.issue("alice", None, &groups, t, t, MAXL),
            Err(JwtError::TooLarge)
        ));
    }

    #[test]
    fn unit_renewal_keeps_the_login_time_in_milliseconds() {
        // Sign-out-everywhere compares the login time: a renewal made after it must still carry
        // the older login's time, or a renewal racing the sign-out would survive it.
        let (_d, k) = keys(JwtAlgorithm::HS256);
        let t = now();
        let login = k
            .issue_stamped(
                "alice",
                None,
                &[],
                t,
                Stamp {
                    now_ms: t * 1000 + 123,
                    password_version: Some(9),
                    amr: crate::auth::factors::PWD | crate::auth::factors::OTP,
                },
                MAXL,
            )
            .unwrap();
        assert_eq!(login.claims.auth_time_ms, t * 1000 + 123);
        let v = k.verify(&login.token, t, MAXL).unwrap();
        assert_eq!(
            (v.auth_time_ms, v.password_version),
            (t * 1000 + 123, Some(9))
        );
        let later = Stamp {
            now_ms: (t + 1) * 1000 + 900,
            password_version: Some(9),
            amr: crate::auth::factors::PWD,
        };
        let renewed = k.renew_stamped(&v, None, &[], later, MAXL).unwrap();
        let r = k.verify(&renewed.token, t + 1, MAXL).unwrap();
        assert_eq!(
            r.auth_time_ms,
            t * 1000 + 123,
            "renewal moved the login time"
        );
        assert_eq!(r.sid, v.sid);
        assert_ne!(r.jti, v.jti);
        let both = crate::auth::factors::PWD | crate::auth::factors::OTP;
        assert_eq!(
            (v.amr, r.amr),
            (both, both),
            "a renewal keeps the login's factors"
        );
        let revs = crate::store::revocation::Revocations::new(10);
        revs.revoke_user_before("alice", t * 1000 + 500);
        assert!(revs.is_user_revoked("alice", r.auth_time_ms));
    }

    #[test]
    fn unit_jti_unique_per_issue() {
        let (_d, k) = keys(JwtAlgorithm::HS256);
        let t = now();
        let a = k.issue("alice", None, &[], t, t, MAXL).unwrap();
        let b = k.issue("alice", None, &[], t, t, MAXL).unwrap();
        assert_ne!(a.claims.jti, b.claims.jti);
        assert_eq!(a.claims.jti.len(), 22);
    }

    #[test]
    fn unit_generate_key_refuses_overwrite() {
        for alg in [JwtAlgorithm::EdDSA, JwtAlgorithm::HS256] {
            let dir = TempDir::new().unwrap();
            let prefix = dir.path().join("jwt");
            let files = generate_key(alg, &prefix).unwrap();
            let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
            assert!(generate_key(alg, &prefix).is_err());
            let after: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
            assert_eq!(before, after);
        }
        // An existing public half blocks the pair and leaves no stray private key.
        let dir = TempDir::new().unwrap();
        let prefix = dir.path().join("jwt");
        std::fs::write(dir.path().join("jwt.pub.pem"), "keep").unwrap();
        assert!(generate_key(JwtAlgorithm::ES256, &prefix).is_err());
        assert!(!dir.path().join("jwt.pem").exists());
    }

    #[cfg(unix)]
    #[test]
    fn unit_generate_key_private_files_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        for alg in [JwtAlgorithm::ES256, JwtAlgorithm::HS256] {
            let dir = TempDir::new().unwrap();
            let files = generate_key(alg, &dir.path().join("jwt")).unwrap();
            let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{alg:?}");
        }
    }

    #[test]
    fn unit_generate_key_writes_expected_files() {
        let dir = TempDir::new().unwrap();
        let files = generate_key(JwtAlgorithm::EdDSA, &dir.path().join("jwt")).unwrap();
        assert_eq!(
            files,
            [dir.path().join("jwt.pem"), dir.path().join("jwt.pub.pem")]
        );
        let secret = generate_key(JwtAlgorithm::HS256, &dir.path().join("hs")).unwrap();
        assert_eq!(secret, [dir.path().join("hs.secret")]);
        assert_eq!(
            std::fs::read_to_string(&secret[0]).unwrap().trim().len(),
            64
        );
    }

    #[test]
    fn unit_shared_types_send_sync_compiles() {
        fn shared<T: Send + Sync>() {}
        shared::<JwtKeys>();
        shared::<TokenCache>();
        shared::<crate::auth::revocation::Revocations>();
    }

    #[test]
    fn unit_jsonwebtoken_string_exp_rejected_by_library_too() {
        // Defence in depth relies on jsonwebtoken >= 10.3 rejecting a string `exp` on its own,
        // even with a claims type that would accept anything.
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let t = now();
        let c = with(good_claims(t), "exp", json!((t + 900).to_string()));
        let tok = forge(&k, &good_header(&k), &c);
        let err =
            jsonwebtoken::decode::<Value>(&tok, &k.verify_keys[0].key, &k.validation).unwrap_err();
        // With `exp` required, an unparsable `exp` counts as missing.
        use jsonwebtoken::errors::ErrorKind as K;
        assert!(
            matches!(err.kind(), K::MissingRequiredClaim(c) | K::InvalidClaimFormat(c) if c == "exp"),
            "{:?}",
            err.kind()
        );
    }

    // ---- TokenCache ----

    #[test]
    fn unit_cache_hit_returns_same_verification() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let cache = TokenCache::new(100);
        let t = now();
        let tok = k.issue("alice", None, &[], t, t, MAXL).unwrap().token;
        let a = cache.verify(&k, &tok, t, MAXL).unwrap();
        let b = cache.verify(&k, &tok, t + 1, MAXL).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.sub, "alice");
    }

    #[test]
    fn unit_cache_expired_entry_rejected() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let cache = TokenCache::new(100);
        let t = now();
        let issued = k.issue("alice", None, &[], t, t, MAXL).unwrap();
        cache.verify(&k, &issued.token, t, MAXL).unwrap();
        let late = issued.claims.exp + 6;
        assert!(matches!(
            cache.verify(&k, &issued.token, late, MAXL),
            Err(JwtError::Expired)
        ));
    }

    #[test]
    fn unit_cache_entry_past_max_lifetime_rejected() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let cache = TokenCache::new(100);
        let t = now();
        let tok = k.issue("alice", None, &[], t, t, MAXL).unwrap().token;
        cache.verify(&k, &tok, t, MAXL).unwrap();
        let short = Duration::from_secs(10);
        assert!(matches!(
            cache.verify(&k, &tok, t + 20, short),
            Err(JwtError::TooOld)
        ));
    }

    #[test]
    fn unit_cache_oversize_rejected_without_touching_cache() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let cache = TokenCache::new(100);
        let t = now();
        let big = forge(
            &k,
            &good_header(&k),
            &with(good_claims(t), "pad", json!("x".repeat(5000))),
        );
        // Plant an entry under the oversize token's hash: only a size check that runs before
        // the lookup (and the hashing) keeps it from being served.
        let hash = std::hash::BuildHasher::hash_one(&cache.hasher, big.as_bytes());
        let planted = CacheEntry {
            generation: k.generation,
            raw: Arc::from(big.as_str()),
            ttl: Duration::from_secs(600),
            token: Arc::new(VerifiedToken {
                sub: "alice".into(),
                jti: "j".into(),
                iat: t,
                auth_time_ms: t * 1000,
                password_version: None,
                exp: t + 600,
                auth_time: t,
                sid: "s".into(),
                amr: crate::auth::factors::PWD,
                external: None,
                revocations_checked: RevocationMark::default(),
            }),
        };
        cache.cache.insert(hash, planted);
        assert!(matches!(
            cache.verify(&k, &big, t, MAXL),
            Err(JwtError::TooLarge)
        ));
        cache.cache.invalidate_all();
        cache.cache.run_pending_tasks();
        assert_eq!(cache.entry_count(), 0);
    }

    #[test]
    fn unit_cache_hash_collision_is_a_miss_not_a_hit() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let cache = TokenCache::new(100);
        let t = now();
        let alice = k.issue("alice", None, &[], t, t, MAXL).unwrap().token;
        let bob = forge(
            &k,
            &good_header(&k),
            &with(good_claims(t), "sub", json!("bob")),
        );
        let verified_alice = cache.verify(&k, &alice, t, MAXL).unwrap();
        // Pretend bob's token hashes like alice's: plant alice's verification under its key.
        let key = std::hash::BuildHasher::hash_one(&cache.hasher, bob.as_bytes());
        cache.cache.insert(
            key,
            CacheEntry {
                generation: k.generation,
                raw: Arc::from(alice.as_str()),
                ttl: Duration::from_secs(600),
                token: verified_alice,
            },
        );
        // The byte comparison turns the colliding entry into a miss: bob's own token is verified.
        assert_eq!(cache.verify(&k, &bob, t, MAXL).unwrap().sub, "bob");
    }

    #[test]
    fn unit_cache_failed_verification_not_cached() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let cache = TokenCache::new(100);
        let t = now();
        let bad = forge(
            &k,
            &good_header(&k),
            &with(good_claims(t), "iss", json!("evil")),
        );
        assert!(cache.verify(&k, &bad, t, MAXL).is_err());
        assert!(cache.verify(&k, &bad, t, MAXL).is_err());
        cache.cache.run_pending_tasks();
        assert_eq!(cache.entry_count(), 0);
    }

    #[test]
    fn unit_cache_entry_not_served_to_other_key_set() {
        let dir = TempDir::new().unwrap();
        let (current, old) = rotated(&dir, JwtAlgorithm::EdDSA, false);
        let cache = TokenCache::new(100);
        let t = now();
        let tok = old.issue("alice", None, &[], t, t, MAXL).unwrap().token;
        assert!(cache.verify(&current, &tok, t, MAXL).is_ok());
        // A reload that dropped the old key: same cache, new key set without "old".
        let without_old = load_slot(&dir, JwtAlgorithm::EdDSA, 0);
        assert!(matches!(
            cache.verify(&without_old, &tok, t, MAXL),
            Err(JwtError::UnknownKid)
        ));
    }

    #[test]
    fn unit_cache_invalidate_all_forces_reverification() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let cache = TokenCache::new(100);
        let t = now();
        let tok = k.issue("alice", None, &[], t, t, MAXL).unwrap().token;
        let a = cache.verify(&k, &tok, t, MAXL).unwrap();
        cache.invalidate_all();
        let b = cache.verify(&k, &tok, t, MAXL).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(*a, *b);
    }

    #[test]
    fn unit_cache_rejects_garbage_like_verify() {
        let (_d, k) = keys(JwtAlgorithm::EdDSA);
        let cache = TokenCache::new(100);
        let t = now();
        assert!(matches!(
            cache.verify(&k, "a.b", t, MAXL),
            Err(JwtError::Malformed)
        ));
        let none = format!("{}.", unsigned(&json!({ "alg": "none" }), &good_claims(t)));
        assert!(cache.verify(&k, &none, t, MAXL).is_err());
    }
}
