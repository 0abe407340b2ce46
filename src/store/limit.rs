//! Failed-login limits per username and per client address, each with its own limit: fixed
//! one-minute windows that start at the first failure. A window ends on its own, so an attacker can
//! hold a username locked for at most a minute per burst, and a real user's own address is never
//! counted for the attacker's.
//!
//! The two counters guard against different things. The username counter protects one account
//! against guessing, from however many addresses. The address counter bounds one source's total
//! guessing rate across many usernames (password spraying); it is set much higher because many
//! honest people can share one address (an office NAT).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::store::{BoxFuture, StoreError};

/// The window length.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Bound on tracked keys so that a spray of addresses or names cannot grow memory without limit.
const MAX_KEYS: u64 = 100_000;

#[derive(Debug)]
struct Counter {
    started: Instant,
    failures: AtomicU32,
}

/// Failures per window allowed before 429, one limit per counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Per username, from any address (`auth.login_failures_per_minute`).
    pub per_username: u32,
    /// Per client address, across all usernames (`auth.login_failures_per_minute_per_address`).
    pub per_address: u32,
}

impl From<&crate::config::AuthConfig> for LoginLimits {
    fn from(a: &crate::config::AuthConfig) -> Self {
        LoginLimits {
            per_username: a.login_failures_per_minute,
            per_address: a.login_failures_per_minute_per_address,
        }
    }
}

/// Failed-login counters.
pub struct LoginLimiter {
    per_username: AtomicU32,
    per_address: AtomicU32,
    by_addr: Cache<IpAddr, Arc<Counter>>,
    by_user: Cache<String, Arc<Counter>>,
}

/// Keys IPv6 clients by their /64: one host usually owns a whole /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl LoginLimiter {
    /// Counters that allow `limits` failures per window (a limit of 0 is read as 1).
    pub fn new(limits: LoginLimits) -> Self {
        LoginLimiter {
            per_username: AtomicU32::new(limits.per_username.max(1)),
            per_address: AtomicU32::new(limits.per_address.max(1)),
            by_addr: Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_live(WINDOW)
                .build(),
            by_user: Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_live(WINDOW)
                .build(),
        }
    }

    /// `Some(seconds to wait)` when either the address or the username is over its limit.
    pub fn check(&self, ip: IpAddr, username: &str) -> Option<u64> {
        let over = |c: Option<Arc<Counter>>, limit: &AtomicU32| {
            c.filter(|c| c.failures.load(Ordering::Relaxed) >= limit.load(Ordering::Relaxed))
                .map(|c| WINDOW.saturating_sub(c.started.elapsed()).as_secs().max(1))
        };
        let a = over(self.by_addr.get(&client_key(ip)), &self.per_address);
        let u = over(
            self.by_user.get(&username.to_ascii_lowercase()),
            &self.per_username,
        );
        a.max(u)
    }

    /// Applies new limits to the existing counters (a limit of 0 is read as 1).
    pub fn set_limits(&self, limits: LoginLimits) {
        self.per_username
            .store(limits.per_username.max(1), Ordering::Relaxed);
        self.per_address
            .store(limits.per_address.max(1), Ordering::Relaxed);
    }

    /// Counts one failure.
    pub fn record_failure(&self, ip: IpAddr, username: &str) {
        let new = || {
            Arc::new(Counter {
                started: Instant::now(),
                failures: AtomicU32::new(0),
            })
        };
        self.by_addr
            .get_with(client_key(ip), new)
            .failures
            .fetch_add(1, Ordering::Relaxed);
        self.by_user
            .get_with(username.to_ascii_lowercase(), new)
            .failures
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Failed-login counters behind the live-state abstraction, so a shared store can carry them
/// across gateway instances.
pub trait LoginLimitStore: Send + Sync + 'static {
    /// `Some(seconds to wait)` when the address or the username is over its limit (a shared
    /// store asks every instance's counts).
    fn check(&self, ip: IpAddr, username: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;
    /// Counts one failure. Synchronous (it runs on a hashing thread, and must count even when the
    /// client has gone): a shared store counts locally at once and sends the count on.
    fn record_failure(&self, ip: IpAddr, username: &str);
    /// Applies new limits (config reload); counts so far are kept.
    fn set_limits(&self, limits: LoginLimits);
}

impl LoginLimitStore for LoginLimiter {
    fn check(&self, ip: IpAddr, username: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        crate::store::ready(Ok(LoginLimiter::check(self, ip, username)))
    }
    fn record_failure(&self, ip: IpAddr, username: &str) {
        LoginLimiter::record_failure(self, ip, username)
    }
    fn set_limits(&self, limits: LoginLimits) {
        LoginLimiter::set_limits(self, limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_username: u32, per_address: u32) -> LoginLimits {
        LoginLimits {
            per_username,
            per_address,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limiter_blocks_after_limit_per_user_and_per_address() {
        let l = LoginLimiter::new(limits(2, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.check(a, "bob").is_none());
        l.record_failure(a, "bob");
        l.record_failure(a, "bob");
        assert!(l.check(a, "bob").is_some());
        assert!(l.check(a, "carol").is_some(), "address over the limit");
        assert!(
            l.check(b, "BOB").is_some(),
            "username over the limit, whatever the case"
        );
        assert!(l.check(b, "carol").is_none());
    }

    #[test]
    fn limiter_address_under_its_own_higher_limit_lets_other_usernames_through() {
        // Five people behind one NAT, each mistyping once: the address is far from its limit.
        let l = LoginLimiter::new(limits(5, 50));
        let nat = ip("203.0.113.7");
        for u in ["ann", "ben", "cat", "dan", "eve"] {
            assert!(l.check(nat, u).is_none(), "{u}");
            l.record_failure(nat, u);
        }
        assert!(
            l.check(nat, "fay").is_none(),
            "a sixth colleague was locked out"
        );
        assert!(l.check(nat, "ann").is_none(), "one typo must not lock ann");
    }

    #[test]
    fn limiter_username_limit_applies_from_any_address() {
        let l = LoginLimiter::new(limits(3, 50));
        for i in 1..=3 {
            l.record_failure(ip(&format!("198.51.100.{i}")), "alice");
        }
        assert!(l.check(ip("192.0.2.1"), "Alice").is_some());
        assert!(
            l.check(ip("198.51.100.1"), "bob").is_none(),
            "the addresses failed once each, far below their limit"
        );
    }

    #[test]
    fn limiter_address_limit_counts_across_usernames() {
        let l = LoginLimiter::new(limits(5, 3));
        let a = ip("10.0.0.1");
        for u in ["u1", "u2", "u3"] {
            assert!(l.check(a, u).is_none(), "{u}");
            l.record_failure(a, u);
        }
        let wait = l.check(a, "u4").expect("spraying address not limited");
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(l.check(ip("10.0.0.2"), "u4").is_none(), "another address");
    }

    #[test]
    fn limiter_set_limits_applies_each_limit_to_existing_counts() {
        let l = LoginLimiter::new(limits(5, 50));
        let a = ip("10.0.0.1");
        l.record_failure(a, "u1");
        l.record_failure(a, "u2");
        assert!(l.check(a, "u3").is_none());
        l.set_limits(limits(5, 2));
        assert!(l.check(a, "u3").is_some(), "address limit lowered");
        assert!(
            l.check(ip("10.0.0.2"), "u1").is_none(),
            "username limit kept"
        );
        l.set_limits(limits(1, 50));
        assert!(
            l.check(ip("10.0.0.2"), "u1").is_some(),
            "username limit lowered"
        );
        assert!(l.check(a, "u3").is_none(), "address limit raised");
        l.set_limits(limits(0, 0));
        assert!(
            l.check(ip("10.0.0.3"), "fresh").is_none(),
            "a zero limit is read as 1, not as locked"
        );
    }

    #[test]
    fn client_key_groups_ipv6_by_64() {
        let x: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(client_key(x), client_key(y));
    }
}
