//! Failed-login limits per client address and per username: fixed one-minute windows that start at
//! the first failure. A window ends on its own, so an attacker can hold a username locked for at
//! most a minute per burst, and a real user's own address is never counted for the attacker's.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

/// The window length.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Bound on tracked keys so that a spray of addresses or names cannot grow memory without limit.
const MAX_KEYS: u64 = 100_000;

#[derive(Debug)]
struct Counter {
    started: Instant,
    failures: AtomicU32,
}

/// Failed-login counters.
pub struct LoginLimiter {
    limit: AtomicU32,
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
    /// `limit` failures per window, per address and per username.
    pub fn new(limit: u32) -> Self {
        LoginLimiter {
            limit: AtomicU32::new(limit),
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

    /// `Some(seconds to wait)` when either the address or the username is over the limit.
    pub fn check(&self, ip: IpAddr, username: &str) -> Option<u64> {
        let over = |c: Option<Arc<Counter>>| {
            c.filter(|c| c.failures.load(Ordering::Relaxed) >= self.limit.load(Ordering::Relaxed))
                .map(|c| WINDOW.saturating_sub(c.started.elapsed()).as_secs().max(1))
        };
        let a = over(self.by_addr.get(&client_key(ip)));
        let u = over(self.by_user.get(&username.to_ascii_lowercase()));
        a.max(u)
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
    /// `Some(seconds to wait)` when the address or the username is over the limit.
    fn check(&self, ip: IpAddr, username: &str) -> Option<u64>;
    /// Counts one failure.
    fn record_failure(&self, ip: IpAddr, username: &str);
    /// Applies a new limit (config reload).
    fn set_limit(&self, limit: u32);
}

impl LoginLimitStore for LoginLimiter {
    fn check(&self, ip: IpAddr, username: &str) -> Option<u64> {
        LoginLimiter::check(self, ip, username)
    }
    fn record_failure(&self, ip: IpAddr, username: &str) {
        LoginLimiter::record_failure(self, ip, username)
    }
    fn set_limit(&self, limit: u32) {
        self.limit.store(limit.max(1), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_blocks_after_limit_per_user_and_per_address() {
        let l = LoginLimiter::new(2);
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
    fn client_key_groups_ipv6_by_64() {
        let x: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(client_key(x), client_key(y));
    }
}
