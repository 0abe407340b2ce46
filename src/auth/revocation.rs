//! TEMPORARY STUB (replaced by the real module).
pub struct Revocations;
impl Revocations {
    pub fn new(_m: u64) -> Self { Revocations }
    pub fn revoke_jti(&self, _j: &str, _e: u64, _n: u64) {}
    pub fn is_jti_revoked(&self, _j: &str) -> bool { false }
    pub fn revoke_user_before(&self, _u: &str, _a: u64) {}
    pub fn is_user_revoked(&self, _u: &str, _i: u64) -> bool { false }
}
