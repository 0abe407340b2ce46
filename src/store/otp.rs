//! Live state of the second factor: accepted TOTP steps (a code is never accepted twice),
//! used recovery codes, failed-code counters (their own bucket: a code spray cannot lock the
//! password login, nor a password spray the code step), and pending second steps (a password
//! proved, a code still to come). Memory backend here; the Redis one is in [`super::redis`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::limit::{LoginLimiter, LoginLimits};
use super::{BoxFuture, StoreError};

/// How long a pending second step waits for its code.
pub const PENDING_TTL: Duration = Duration::from_secs(300);
/// How long a used recovery code is remembered in the live store (the credentials file marks it
/// used for good; this covers the moments before that write, and other instances).
pub const USED_CODE_TTL: Duration = Duration::from_secs(400 * 24 * 3600);

/// A password proved, waiting for the second factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Who.
    pub username: String,
    /// Their password version when they proved it.
    pub password_version: u64,
    /// Wrong codes tried on this step so far.
    pub tries: u8,
}

impl Pending {
    /// `username \n password version \n tries`.
    pub fn encode(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.username, self.password_version, self.tries
        )
    }

    /// The inverse of [`Pending::encode`].
    pub fn decode(s: &str) -> Option<Pending> {
        let mut it = s.split('\n');
        let p = Pending {
            username: it.next()?.to_string(),
            password_version: it.next()?.parse().ok()?,
            tries: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(p)
    }
}

/// The second factor's live state.
pub trait OtpStore: Send + Sync + 'static {
    /// Records that `username` used TOTP step `step`; `false` when that step or a later one was
    /// accepted before (a replay, or an older code after a newer one: RFC 6238 §5.2).
    fn accept_step(&self, username: &str, step: u64) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Records that the one-time value `id` (a recovery code's keyed hash) was used; `false`
    /// when it already was.
    fn use_once(&self, id: &str) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Seconds to wait before `username` may try another code (`None`: go ahead).
    fn check(&self, username: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;
    /// Counts a wrong code for `username`.
    fn record_failure(&self, username: &str);
    /// Wrong codes allowed per minute and user.
    fn set_limit(&self, per_minute: u32);
    /// Stores a pending second step under `ticket` (a hash of the cookie value) for
    /// [`PENDING_TTL`].
    fn put_pending(&self, ticket: &str, p: &Pending) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Takes a pending second step (single use: a second take finds nothing).
    fn take_pending(&self, ticket: &str) -> BoxFuture<'_, Result<Option<Pending>, StoreError>>;
}

/// The in-memory backend.
pub struct MemoryOtp {
    steps: DashMap<String, u64>,
    used: DashMap<String, Instant>,
    pending: DashMap<String, (Pending, Instant)>,
    failures: LoginLimiter,
    sweep_at: Mutex<Instant>,
}

impl MemoryOtp {
    /// A store allowing `per_minute` wrong codes per user and minute.
    pub fn new(per_minute: u32) -> MemoryOtp {
        MemoryOtp {
            steps: DashMap::new(),
            used: DashMap::new(),
            pending: DashMap::new(),
            failures: LoginLimiter::new(limits(per_minute)),
            sweep_at: Mutex::new(Instant::now()),
        }
    }

    /// Drops expired pending steps now and then (they are checked on every take anyway).
    fn sweep(&self) {
        let now = Instant::now();
        let due = self.sweep_at.lock().map(|mut t| {
            let due = now >= *t;
            if due {
                *t = now + Duration::from_secs(30);
            }
            due
        });
        if due.unwrap_or(false) {
            self.pending.retain(|_, (_, exp)| *exp > now);
            self.used.retain(|_, exp| *exp > now);
        }
    }
}

/// Per-user limit only: the per-address bucket is the password login's.
fn limits(per_minute: u32) -> LoginLimits {
    LoginLimits {
        per_username: per_minute,
        per_address: u32::MAX,
    }
}

/// The address the code limiter keys on: none (codes are counted per user).
const NO_ADDRESS: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

impl OtpStore for MemoryOtp {
    fn accept_step(&self, username: &str, step: u64) -> BoxFuture<'_, Result<bool, StoreError>> {
        let mut accepted = false;
        self.steps
            .entry(username.to_string())
            .and_modify(|last| {
                if step > *last {
                    *last = step;
                    accepted = true;
                }
            })
            .or_insert_with(|| {
                accepted = true;
                step
            });
        super::ready(Ok(accepted))
    }

    fn use_once(&self, id: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let now = Instant::now();
        let mut fresh = false;
        self.used
            .entry(id.to_string())
            .and_modify(|exp| {
                if *exp <= now {
                    *exp = now + USED_CODE_TTL;
                    fresh = true;
                }
            })
            .or_insert_with(|| {
                fresh = true;
                now + USED_CODE_TTL
            });
        super::ready(Ok(fresh))
    }

    fn check(&self, username: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        super::ready(Ok(self.failures.check(NO_ADDRESS, username)))
    }

    fn record_failure(&self, username: &str) {
        self.failures.record_failure(NO_ADDRESS, username);
    }

    fn set_limit(&self, per_minute: u32) {
        self.failures.set_limits(limits(per_minute));
    }

    fn put_pending(&self, ticket: &str, p: &Pending) -> BoxFuture<'_, Result<(), StoreError>> {
        self.sweep();
        self.pending.insert(
            ticket.to_string(),
            (p.clone(), Instant::now() + PENDING_TTL),
        );
        super::ready(Ok(()))
    }

    fn take_pending(&self, ticket: &str) -> BoxFuture<'_, Result<Option<Pending>, StoreError>> {
        let now = Instant::now();
        let p = self
            .pending
            .remove(ticket)
            .and_then(|(_, (p, exp))| (exp > now).then_some(p));
        super::ready(Ok(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(f: BoxFuture<'_, T>) -> T {
        futures_util::FutureExt::now_or_never(f).expect("memory backend is ready at once")
    }

    #[test]
    fn a_step_is_accepted_once_and_never_an_older_one_after_it() {
        let s = MemoryOtp::new(5);
        assert!(run(s.accept_step("alice", 100)).unwrap());
        assert!(!run(s.accept_step("alice", 100)).unwrap());
        assert!(!run(s.accept_step("alice", 99)).unwrap());
        assert!(run(s.accept_step("alice", 101)).unwrap());
        assert!(run(s.accept_step("bob", 100)).unwrap());
    }

    #[test]
    fn one_time_values_and_pending_steps_are_single_use() {
        let s = MemoryOtp::new(5);
        assert!(run(s.use_once("h1")).unwrap());
        assert!(!run(s.use_once("h1")).unwrap());
        let p = Pending {
            username: "alice".into(),
            password_version: 7,
            tries: 2,
        };
        run(s.put_pending("t", &p)).unwrap();
        assert_eq!(run(s.take_pending("t")).unwrap(), Some(p.clone()));
        assert_eq!(run(s.take_pending("t")).unwrap(), None);
        assert_eq!(Pending::decode(&p.encode()), Some(p));
    }

    #[test]
    fn wrong_codes_lock_the_user_after_the_limit() {
        let s = MemoryOtp::new(3);
        for _ in 0..3 {
            assert_eq!(run(s.check("alice")).unwrap(), None);
            s.record_failure("alice");
        }
        assert!(run(s.check("alice")).unwrap().is_some());
        assert_eq!(run(s.check("bob")).unwrap(), None);
    }
}
