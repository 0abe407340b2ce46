//! Live state of the second factor: accepted TOTP steps (a code is never accepted twice),
//! used recovery codes, failed-code counters (their own bucket: a code spray cannot lock the
//! password login, nor a password spray the code step), and pending second steps (a password
//! proved, a code still to come). Memory backend here; the Redis one is in [`super::redis`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;

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
    /// When the step ends, whatever happens to it (Unix ms): putting it back after a wrong code
    /// never extends it.
    pub expires_ms: u64,
}

impl Pending {
    /// `username \n password version \n tries \n expiry`.
    pub fn encode(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}",
            self.username, self.password_version, self.tries, self.expires_ms
        )
    }

    /// The inverse of [`Pending::encode`].
    pub fn decode(s: &str) -> Option<Pending> {
        let mut it = s.split('\n');
        let p = Pending {
            username: it.next()?.to_string(),
            password_version: it.next()?.parse().ok()?,
            tries: it.next()?.parse().ok()?,
            expires_ms: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(p)
    }

    /// Whether it is still running at `now_ms`.
    pub fn live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms
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
    /// Counts an attempt at a code for `username` *before* the code is checked (so parallel
    /// attempts cannot all pass a check made before any is counted), and refuses it — with the
    /// seconds to wait — when the attempts of this minute are over the limit.
    fn attempt(&self, username: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;
    /// Takes back the attempt of a right code (only wrong ones fill the bucket). Best effort: a
    /// lost one only makes the bucket stricter.
    fn forgive(&self, username: &str);
    /// Wrong codes allowed per minute and user.
    fn set_limit(&self, per_minute: u32);
    /// Stores a pending second step under `ticket` (a hash of the cookie value) until its
    /// `expires_ms`.
    fn put_pending(&self, ticket: &str, p: &Pending) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Takes a pending second step (single use: a second take finds nothing).
    fn take_pending(&self, ticket: &str) -> BoxFuture<'_, Result<Option<Pending>, StoreError>>;
    /// Stores the one-time state of a login at an external provider (`state`, `nonce`, PKCE
    /// verifier) under `id` (a hash of the `state` value) until `expires_ms` (Unix ms).
    fn put_flow(
        &self,
        id: &str,
        value: String,
        expires_ms: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Takes it (single use: a second take, on any instance, finds nothing).
    fn take_flow(&self, id: &str) -> BoxFuture<'_, Result<Option<String>, StoreError>>;
}

/// The in-memory backend.
pub struct MemoryOtp {
    steps: DashMap<String, u64>,
    used: DashMap<String, Instant>,
    pending: DashMap<String, Pending>,
    /// External-provider login states: value and expiry (Unix ms).
    flows: DashMap<String, (String, u64)>,
    /// Attempts per user in the current minute: (count, window start).
    attempts: DashMap<String, (u32, Instant)>,
    per_minute: std::sync::atomic::AtomicU32,
    sweep_at: Mutex<Instant>,
}

impl MemoryOtp {
    /// A store allowing `per_minute` wrong codes per user and minute.
    pub fn new(per_minute: u32) -> MemoryOtp {
        MemoryOtp {
            steps: DashMap::new(),
            used: DashMap::new(),
            pending: DashMap::new(),
            flows: DashMap::new(),
            attempts: DashMap::new(),
            per_minute: std::sync::atomic::AtomicU32::new(per_minute),
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
            let now_ms = super::session::unix_now_ms();
            self.pending.retain(|_, p| p.live(now_ms));
            self.flows.retain(|_, (_, exp)| now_ms < *exp);
            self.used.retain(|_, exp| *exp > now);
            self.attempts
                .retain(|_, (_, start)| now.duration_since(*start) < WINDOW);
        }
    }
}

/// External-provider logins in progress one process keeps at most (each ~300 bytes; a flood of
/// `/start` requests meets this bound, then `503`, instead of exhausting memory).
pub const MAX_FLOWS: usize = 100_000;

/// The window of the code limiter.
pub const WINDOW: Duration = Duration::from_secs(60);

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

    fn attempt(&self, username: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        self.sweep();
        let now = Instant::now();
        let limit = self
            .per_minute
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1);
        let mut e = self
            .attempts
            .entry(username.to_ascii_lowercase())
            .or_insert((0, now));
        if now.duration_since(e.1) >= WINDOW {
            *e = (0, now);
        }
        e.0 = e.0.saturating_add(1);
        let wait = (e.0 > limit).then(|| {
            WINDOW
                .saturating_sub(now.duration_since(e.1))
                .as_secs()
                .max(1)
        });
        super::ready(Ok(wait))
    }

    fn forgive(&self, username: &str) {
        if let Some(mut e) = self.attempts.get_mut(&username.to_ascii_lowercase()) {
            e.0 = e.0.saturating_sub(1);
        }
    }

    fn set_limit(&self, per_minute: u32) {
        self.per_minute
            .store(per_minute, std::sync::atomic::Ordering::Relaxed);
    }

    fn put_pending(&self, ticket: &str, p: &Pending) -> BoxFuture<'_, Result<(), StoreError>> {
        self.sweep();
        self.pending.insert(ticket.to_string(), p.clone());
        super::ready(Ok(()))
    }

    fn take_pending(&self, ticket: &str) -> BoxFuture<'_, Result<Option<Pending>, StoreError>> {
        let now_ms = super::session::unix_now_ms();
        let p = self
            .pending
            .remove(ticket)
            .and_then(|(_, p)| p.live(now_ms).then_some(p));
        super::ready(Ok(p))
    }

    fn put_flow(
        &self,
        id: &str,
        value: String,
        expires_ms: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.sweep();
        if self.flows.len() >= MAX_FLOWS {
            let now_ms = super::session::unix_now_ms();
            self.flows.retain(|_, (_, exp)| now_ms < *exp);
            if self.flows.len() >= MAX_FLOWS {
                tracing::warn!(
                    limit = MAX_FLOWS,
                    "too many external sign-ins in progress; refusing new ones"
                );
                return super::ready(Err(StoreError::Unavailable));
            }
        }
        self.flows.insert(id.to_string(), (value, expires_ms));
        super::ready(Ok(()))
    }

    fn take_flow(&self, id: &str) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let now_ms = super::session::unix_now_ms();
        let v = self
            .flows
            .remove(id)
            .and_then(|(_, (v, exp))| (now_ms < exp).then_some(v));
        super::ready(Ok(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(f: BoxFuture<'_, T>) -> T {
        futures_util::FutureExt::now_or_never(f).expect("memory backend is ready at once")
    }

    #[test]
    fn a_login_flow_is_taken_once_and_not_after_it_expired() {
        let s = MemoryOtp::new(5);
        let later = super::super::session::unix_now_ms() + 60_000;
        run(s.put_flow("a", "one".into(), later)).unwrap();
        assert_eq!(run(s.take_flow("a")).unwrap().as_deref(), Some("one"));
        assert_eq!(run(s.take_flow("a")).unwrap(), None);
        run(s.put_flow("b", "two".into(), 1)).unwrap();
        assert_eq!(run(s.take_flow("b")).unwrap(), None);
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
            expires_ms: super::super::session::unix_now_ms() + 60_000,
        };
        run(s.put_pending("t", &p)).unwrap();
        assert_eq!(run(s.take_pending("t")).unwrap(), Some(p.clone()));
        assert_eq!(run(s.take_pending("t")).unwrap(), None);
        assert_eq!(Pending::decode(&p.encode()), Some(p));
    }

    #[test]
    fn attempts_are_counted_before_the_check_and_right_codes_are_forgiven() {
        let s = MemoryOtp::new(3);
        // Three attempts in flight at once all count: the fourth is refused.
        for _ in 0..3 {
            assert_eq!(run(s.attempt("alice")).unwrap(), None);
        }
        assert!(
            run(s.attempt("Alice")).unwrap().is_some(),
            "usernames fold case"
        );
        assert_eq!(run(s.attempt("bob")).unwrap(), None);
        // Right codes do not fill the bucket.
        let t = MemoryOtp::new(2);
        for _ in 0..5 {
            assert_eq!(run(t.attempt("carol")).unwrap(), None);
            t.forgive("carol");
        }
    }

    #[test]
    fn an_expired_pending_step_is_gone() {
        let s = MemoryOtp::new(3);
        let p = Pending {
            username: "alice".into(),
            password_version: 1,
            tries: 0,
            expires_ms: super::super::session::unix_now_ms().saturating_sub(1),
        };
        run(s.put_pending("t", &p)).unwrap();
        assert_eq!(run(s.take_pending("t")).unwrap(), None);
    }
}
