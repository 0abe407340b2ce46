//! TEMPORARY STUB (replaced by the real module).
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use crate::config::{JwtAlgorithm, JwtConfig};
pub struct JwtKeys;
pub struct IssuedToken { pub token: String, pub claims: VerifiedToken }
#[derive(Clone, Debug)] pub struct VerifiedToken { pub sub: String, pub jti: String, pub iat: u64, pub exp: u64, pub auth_time: u64 }
#[derive(Debug, thiserror::Error)] pub enum JwtError { #[error("stub")] Stub }
impl JwtKeys {
    pub fn load(_c: &JwtConfig) -> Result<JwtKeys, Vec<(String, String)>> { Err(vec![("auth.jwt".into(), "stub".into())]) }
    pub fn issue(&self, _s: &str, _e: Option<&str>, _g: &[String], _a: u64, _n: u64, _m: Duration) -> Result<IssuedToken, JwtError> { Err(JwtError::Stub) }
    pub fn verify(&self, _t: &str, _n: u64, _m: Duration) -> Result<VerifiedToken, JwtError> { Err(JwtError::Stub) }
    pub fn jwks_json(&self) -> Option<&bytes::Bytes> { None }
}
pub struct TokenCache;
impl TokenCache {
    pub fn new(_m: u64) -> Self { TokenCache }
    pub fn verify(&self, _k: &JwtKeys, _t: &str, _n: u64, _m: Duration) -> Result<Arc<VerifiedToken>, JwtError> { Err(JwtError::Stub) }
    pub fn invalidate_all(&self) {}
}
pub fn generate_key(_a: JwtAlgorithm, _p: &Path) -> Result<Vec<PathBuf>, String> { Err("stub".into()) }
