//! Revoked JWTs: a `jti` deny-list and per-user "not before" times ("sign out everywhere").
//!
//! This is live state, not configuration: it is created once and survives config reloads.
//! Entries only need to live as long as the tokens they deny, which are short-lived.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::store::{BoxFuture, StoreError};

/// Longest clock skew the configuration allows (`auth.jwt.leeway` is capped at 5m). A revoked
/// `jti` is kept until `exp` plus this, so it outlives every leeway a verifier may apply.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// Our jtis are 22 characters; anything far longer is not ours and not worth memory.
const MAX_JTI_LEN: usize = 128;

/// Per-entry lifetime carried in the value, so moka drops it when the token would expire anyway.
struct UntilTokenExpiry;

impl moka::Expiry<String, Duration> for UntilTokenExpiry {
    fn expire_after_create(&self, _: &String, ttl: &Duration, _: Instant) -> Option<Duration> {
        Some(*ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        ttl: &Duration,
        _: Instant,
        current: Option<Duration>,
    ) -> Option<Duration> {
        // Revoking the same jti twice must never shorten the first revocation.
        Some(current.map_or(*ttl, |c| c.max(*ttl)))
    }
}

/// Token revocations: `jti` deny-list with per-entry expiry, plus per-user not-before times.
pub struct Revocations {
    /// jti → remaining lifetime at insertion (the value only feeds the expiry policy).
    jtis: moka::sync::Cache<String, Duration>,
    /// username → tokens issued (Unix milliseconds) at or before this are revoked.
    users: DashMap<String, u64>,
    /// Bumped after every added revocation.
    generation: AtomicU64,
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocations")
            .field("jtis", &self.jtis.entry_count())
            .field("users", &self.users.len())
            .finish()
    }
}

impl Revocations {
    /// An empty set holding at most `max_entries` revoked jtis.
    ///
    /// LRU rather than moka's default TinyLFU: TinyLFU may refuse to admit a brand-new key
    /// when full, which here would silently un-revoke a token. Under LRU a new revocation is
    /// always stored, and only when more than `max_entries` tokens are revoked within one token
    /// lifetime are the least recently checked ones dropped.
    pub fn new(max_entries: u64) -> Self {
        let jtis = moka::sync::Cache::builder()
            .max_capacity(max_entries)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .expire_after(UntilTokenExpiry)
            .build();
        Revocations {
            jtis,
            users: DashMap::new(),
            generation: AtomicU64::new(0),
        }
    }

    /// Denies the token `jti` until its `exp` (plus the largest allowed leeway) has passed.
    pub fn revoke_jti(&self, jti: &str, exp: u64, now: u64) {
        if jti.is_empty() || jti.len() > MAX_JTI_LEN {
            return;
        }
        let until = exp.saturating_add(MAX_LEEWAY_SECS);
        if until <= now {
            // Already unusable: verification rejects it as expired.
            return;
        }
        self.jtis
            .insert(jti.to_owned(), Duration::from_secs(until - now));
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Changes after every revocation added (never on expiry or pruning, which revoke nothing).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether `jti` has been revoked (and the token could still be otherwise valid).
    pub fn is_jti_revoked(&self, jti: &str) -> bool {
        // `get` (unlike `contains_key`) counts as a use, so a revoked token that keeps being
        // presented stays at the fresh end of the LRU and is the last to be evicted.
        self.jtis.get(jti).is_some()
    }

    /// 'sign out everywhere': every token of this user from a login at or before `at_ms` (Unix
    /// milliseconds) is rejected, renewals included. Milliseconds, so that a login right after the sign-out (the
    /// same second) is not caught by it.
    pub fn revoke_user_before(&self, username: &str, at_ms: u64) {
        let at = at_ms;
        self.users
            .entry(username.to_owned())
            .and_modify(|t| *t = (*t).max(at))
            .or_insert(at);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// true if the token (user, logged in at `login_ms`, Unix milliseconds) comes from a login
    /// at or before the user's not-before.
    pub fn is_user_revoked(&self, username: &str, login_ms: u64) -> bool {
        self.users.get(username).is_some_and(|t| login_ms <= *t)
    }

    /// Forgets user not-before times at or before `older_than` (Unix milliseconds); call it
    /// periodically with `now - max_lifetime`, since tokens older than that are rejected as too
    /// old anyway.
    pub fn prune_users(&self, older_than: u64) {
        self.users.retain(|_, t| *t > older_than);
    }
}

/// Revocation state behind the live-state abstraction: what a shared store (Redis) implements so
/// that several gateway instances agree on logouts. Lookups stay synchronous: they run on every
/// JWT request, and a networked store would front itself with an in-memory copy.
pub trait RevocationStore: Send + Sync + 'static {
    /// Denies a token id until `exp`; done once every instance can see it.
    fn revoke_jti(&self, jti: &str, exp: u64, now: u64) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Whether a token id is denied.
    fn is_jti_revoked(&self, jti: &str) -> bool;
    /// Denies every token of `username` issued at or before `at_ms` (Unix milliseconds); done
    /// once every instance can see it.
    fn revoke_user_before(
        &self,
        username: &str,
        at_ms: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Whether a token of `username` from a login at `login_ms` (Unix milliseconds) is denied.
    fn is_user_revoked(&self, username: &str, login_ms: u64) -> bool;
    /// Forgets per-user times at or before `older_than` (Unix milliseconds).
    fn prune_users(&self, older_than: u64);
    /// A number that changes (after the fact) whenever a revocation is added, here or (for a
    /// shared store) anywhere: a "not revoked" answer stays true while it is unchanged.
    fn generation(&self) -> u64;
    /// Whether the answers above can be vouched for now (a shared store whose copy may be stale
    /// says no: revocation checks then fail closed).
    fn vouched(&self) -> bool {
        true
    }
}

impl RevocationStore for Revocations {
    fn revoke_jti(&self, jti: &str, exp: u64, now: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        Revocations::revoke_jti(self, jti, exp, now);
        crate::store::ready(Ok(()))
    }
    fn is_jti_revoked(&self, jti: &str) -> bool {
        Revocations::is_jti_revoked(self, jti)
    }
    fn revoke_user_before(
        &self,
        username: &str,
        at_ms: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Revocations::revoke_user_before(self, username, at_ms);
        crate::store::ready(Ok(()))
    }
    fn is_user_revoked(&self, username: &str, iat: u64) -> bool {
        Revocations::is_user_revoked(self, username, iat)
    }
    fn prune_users(&self, older_than: u64) {
        Revocations::prune_users(self, older_than)
    }
    fn generation(&self) -> u64 {
        Revocations::generation(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn unit_generation_changes_with_every_added_revocation_only() {
        let r = Revocations::new(100);
        let g0 = r.generation();
        r.revoke_jti("abc", NOW + 900, NOW);
        let g1 = r.generation();
        assert_ne!(g0, g1, "a jti revocation");
        r.revoke_user_before("alice", NOW);
        let g2 = r.generation();
        assert_ne!(g1, g2, "a sign-out-everywhere");
        r.revoke_jti("", NOW + 900, NOW);
        r.revoke_jti("old", NOW - MAX_LEEWAY_SECS - 1, NOW);
        r.prune_users(NOW + 1);
        assert_eq!(r.generation(), g2, "nothing was revoked");
    }

    #[test]
    fn unit_revoked_jti_is_revoked() {
        let r = Revocations::new(100);
        r.revoke_jti("abc", NOW + 900, NOW);
        assert!(r.is_jti_revoked("abc"));
    }

    #[test]
    fn unit_unrevoked_jti_is_not_revoked() {
        let r = Revocations::new(100);
        r.revoke_jti("abc", NOW + 900, NOW);
        assert!(!r.is_jti_revoked("abd"));
        assert!(!r.is_jti_revoked(""));
    }

    #[test]
    fn unit_long_expired_jti_not_stored() {
        let r = Revocations::new(100);
        r.revoke_jti("old", NOW - MAX_LEEWAY_SECS - 1, NOW);
        assert!(!r.is_jti_revoked("old"));
        r.jtis.run_pending_tasks();
        assert_eq!(r.jtis.entry_count(), 0);
    }

    #[test]
    fn unit_jti_within_leeway_after_exp_still_revoked() {
        // exp just passed but a verifier's leeway could still accept it.
        let r = Revocations::new(100);
        r.revoke_jti("j", NOW - 10, NOW);
        assert!(r.is_jti_revoked("j"));
    }

    #[test]
    fn unit_oversized_jti_ignored() {
        let r = Revocations::new(100);
        let long = "x".repeat(MAX_JTI_LEN + 1);
        r.revoke_jti(&long, NOW + 900, NOW);
        assert!(!r.is_jti_revoked(&long));
    }

    #[test]
    fn unit_many_revocations_newest_admitted() {
        // With TinyLFU a full cache could reject the newest key; LRU must always keep it.
        let r = Revocations::new(16);
        for i in 0..200 {
            let jti = format!("jti-{i}");
            r.revoke_jti(&jti, NOW + 900, NOW);
            r.jtis.run_pending_tasks();
            assert!(r.is_jti_revoked(&jti), "newest revocation {i} missing");
        }
        assert!(r.jtis.entry_count() <= 16);
    }

    #[test]
    fn unit_second_revocation_does_not_shorten() {
        let e = UntilTokenExpiry;
        let key = String::from("j");
        let longer = Some(Duration::from_secs(3600));
        let kept = moka::Expiry::expire_after_update(
            &e,
            &key,
            &Duration::from_secs(50),
            Instant::now(),
            longer,
        );
        assert_eq!(kept, longer);
        let extended = moka::Expiry::expire_after_update(
            &e,
            &key,
            &Duration::from_secs(7200),
            Instant::now(),
            longer,
        );
        assert_eq!(extended, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn unit_user_tokens_at_or_before_revoked() {
        let r = Revocations::new(100);
        r.revoke_user_before("alice", NOW);
        assert!(r.is_user_revoked("alice", NOW - 100));
        assert!(r.is_user_revoked("alice", NOW));
        assert!(!r.is_user_revoked("alice", NOW + 1));
    }

    #[test]
    fn unit_other_user_not_revoked() {
        let r = Revocations::new(100);
        r.revoke_user_before("alice", NOW);
        assert!(!r.is_user_revoked("bob", NOW - 100));
    }

    #[test]
    fn unit_user_not_before_never_moves_back() {
        let r = Revocations::new(100);
        r.revoke_user_before("alice", NOW);
        r.revoke_user_before("alice", NOW - 1000);
        assert!(r.is_user_revoked("alice", NOW - 1));
        r.revoke_user_before("alice", NOW + 50);
        assert!(r.is_user_revoked("alice", NOW + 50));
    }

    #[test]
    fn unit_prune_users_drops_only_old() {
        let r = Revocations::new(100);
        r.revoke_user_before("old", NOW - 100_000);
        r.revoke_user_before("new", NOW);
        r.prune_users(NOW - 50_000);
        assert!(!r.is_user_revoked("old", NOW - 200_000));
        assert!(r.is_user_revoked("new", NOW - 1));
    }
}
