//! Session store: opaque 256-bit ids → (user, login time), idle and absolute expiry, bounded size.
//!
//! The store is live state: it outlives configuration reloads. The trait is what a shared store
//! (Redis) will implement. The in-memory store is a sharded hash map (dashmap) of 64-byte slots
//! rather than a moka cache: moka's per-entry bookkeeping (access-order deques, frequency sketch,
//! entry metadata) cost ~400 bytes a session here, 1M sessions ≈ 380 MiB, and its lookup was about
//! three times slower (see `cargo bench --bench verify_path -- session_lookup`, which keeps the
//! moka store as a baseline). Expiry is exact on every read; a periodic sweep frees the memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use dashmap::DashMap;

use crate::store::{BoxFuture, StoreError, StoreUnavailable};

/// Raw session id bytes (256 bits from the OS CSPRNG).
pub type SessionKey = [u8; 32];

/// Length of the cookie value: base64url of 32 bytes without padding.
pub const SESSION_COOKIE_LEN: usize = 43;

/// How often expired sessions are swept out of memory (reads already ignore them).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Entries examined to pick a victim when the store is full.
const EVICTION_SAMPLE: usize = 32;

/// What a lookup returns. The identity itself comes from the current user table, so that a
/// removed user or a changed group takes effect at once.
#[derive(Debug, Clone)]
pub struct SessionData {
    /// Who logged in.
    pub username: Arc<str>,
    /// When (Unix seconds).
    pub created_unix: u64,
    /// The user's password version at login ([`crate::auth::users::password_version`]).
    pub password_version: u64,
    /// How they proved it ([`crate::auth::factors`]).
    pub amr: crate::auth::factors::Amr,
    /// The external provider the login was made through, if any (with the identity it
    /// vouched for under `users = "trust"`).
    pub via: Option<Arc<crate::auth::external::ExternalLogin>>,
}

/// A session store. Lookups are synchronous on purpose: the in-memory lookup is sub-microsecond
/// and a future per request would cost more than the lookup; a networked store answers them from
/// its in-process cache, filled beforehand by [`SessionStore::fetch`] where needed.
pub trait SessionStore: Send + Sync + 'static {
    /// Creates a session and returns its cookie value.
    fn create(
        &self,
        username: Arc<str>,
        password_version: u64,
        amr: crate::auth::factors::Amr,
        via: Option<Arc<crate::auth::external::ExternalLogin>>,
    ) -> BoxFuture<'_, Result<String, StoreError>>;
    /// Looks a cookie value up, refreshing the idle timer.
    fn get(&self, cookie_value: &str) -> Result<Option<SessionData>, StoreUnavailable>;
    /// Looks a cookie value up without refreshing the idle timer (an open tunnel's periodic
    /// re-check: being open is not use).
    fn peek(&self, cookie_value: &str) -> Result<Option<SessionData>, StoreUnavailable>;
    /// Whether [`SessionStore::get`] for this cookie value needs [`SessionStore::fetch`] first
    /// (a remote store whose cache does not hold it). Cheap; never blocks.
    fn needs_fetch(&self, _cookie_value: &str) -> bool {
        false
    }
    /// Loads what `get` needs for this cookie value into the cache (one round trip; concurrent
    /// fetches of one value share it). A failure shows as `get` answering unavailable.
    fn fetch<'a>(&'a self, _cookie_value: &'a str) -> BoxFuture<'a, ()> {
        crate::store::ready(())
    }
    /// Deletes one session.
    fn remove(&self, cookie_value: &str) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Deletes every session of a user ('sign out everywhere').
    fn remove_user(&self, username: &str) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Whether the store can vouch for its answers now (`/.auth/ready`).
    fn is_available(&self) -> bool {
        true
    }
    /// Drops expired sessions from memory; returns how many.
    fn sweep(&self) -> usize;
    /// Applies new limits (config reload); existing sessions are judged by them from now on.
    fn set_limits(&self, idle: Duration, max_lifetime: Duration, max_sessions: u64);
    /// Number of stored sessions (expired ones count until swept).
    fn len(&self) -> u64;
    /// Like [`SessionStore::get`], telling an expired session from an unknown one where the
    /// store still holds it (for metrics and the audit stream; the answer is the same).
    fn lookup_detailed(&self, cookie_value: &str) -> Result<Lookup, StoreUnavailable> {
        Ok(match self.get(cookie_value)? {
            Some(s) => Lookup::Found(s),
            None => Lookup::Missing,
        })
    }
    /// Background writes dropped because their queue was full (remote stores).
    fn writes_dropped(&self) -> u64 {
        0
    }
    /// Whether none are stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One session: 48 bytes of value beside the 32-byte key.
#[derive(Debug)]
struct Slot {
    username: Arc<str>,
    password_version: u64,
    amr: crate::auth::factors::Amr,
    via: Option<Arc<crate::auth::external::ExternalLogin>>,
    /// Milliseconds since the store's epoch.
    created_ms: u64,
    /// Milliseconds since the store's epoch; updated on every authenticated request.
    last_ms: AtomicU64,
}

/// The in-memory session store.
pub struct MemorySessionStore {
    /// Keys are server-generated random bytes; the hasher is seeded per process (foldhash:
    /// SipHash cost ~60 ns per lookup here for no gain).
    map: DashMap<SessionKey, Slot, foldhash::fast::RandomState>,
    epoch: Instant,
    epoch_unix: u64,
    idle_ms: AtomicU64,
    lifetime_ms: AtomicU64,
    max_sessions: AtomicU64,
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl MemorySessionStore {
    /// A store with the given limits.
    pub fn new(idle: Duration, max_lifetime: Duration, max_sessions: u64) -> Self {
        MemorySessionStore {
            map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            epoch: Instant::now(),
            epoch_unix: unix_now(),
            idle_ms: AtomicU64::new(millis(idle)),
            lifetime_ms: AtomicU64::new(millis(max_lifetime)),
            max_sessions: AtomicU64::new(max_sessions.max(1)),
        }
    }

    #[inline]
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    #[inline]
    fn expired(&self, s: &Slot, now: u64) -> bool {
        now.saturating_sub(s.created_ms) >= self.lifetime_ms.load(Ordering::Relaxed)
            || now.saturating_sub(s.last_ms.load(Ordering::Relaxed))
                >= self.idle_ms.load(Ordering::Relaxed)
    }

    /// Makes room for one more session: sweep, then evict the least recently used of a sample.
    fn make_room(&self) {
        let max = usize::try_from(self.max_sessions.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
        if self.map.len() < max {
            return;
        }
        self.sweep();
        while self.map.len() >= max {
            let victim = self
                .map
                .iter()
                .take(EVICTION_SAMPLE)
                .min_by_key(|e| e.value().last_ms.load(Ordering::Relaxed))
                .map(|e| *e.key());
            match victim {
                Some(k) => {
                    self.map.remove(&k);
                }
                None => return,
            }
        }
    }
}

/// What a session lookup found.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A live session.
    Found(SessionData),
    /// None by that id (or not one the store can tell expired).
    Missing,
    /// One that had expired (idle timeout or lifetime), whose user this was; it is gone now.
    Expired(Arc<str>),
}

impl MemorySessionStore {
    #[inline]
    fn lookup(&self, cookie_value: &str, refresh: bool) -> Option<SessionData> {
        match self.lookup_inner(cookie_value, refresh) {
            Lookup::Found(s) => Some(s),
            Lookup::Missing | Lookup::Expired(_) => None,
        }
    }

    #[inline]
    fn lookup_inner(&self, cookie_value: &str, refresh: bool) -> Lookup {
        let Some(key) = decode_key(cookie_value) else {
            return Lookup::Missing;
        };
        let now = self.now_ms();
        let found = {
            let Some(s) = self.map.get(&key) else {
                return Lookup::Missing;
            };
            if self.expired(&s, now) {
                Err(s.username.clone())
            } else {
                // A plain read first: under load most requests of a session fall in the same
                // millisecond, and a read-modify-write is a locked instruction on every one.
                if refresh && s.last_ms.load(Ordering::Relaxed) < now {
                    s.last_ms.fetch_max(now, Ordering::Relaxed);
                }
                Ok(SessionData {
                    username: s.username.clone(),
                    created_unix: self.epoch_unix + s.created_ms / 1000,
                    password_version: s.password_version,
                    amr: s.amr,
                    via: s.via.clone(),
                })
            }
        };
        match found {
            Ok(s) => Lookup::Found(s),
            Err(username) => {
                // Expired: forget it now rather than at the next sweep (the read guard is
                // dropped).
                self.map.remove_if(&key, |_, s| self.expired(s, now));
                Lookup::Expired(username)
            }
        }
    }
}

/// Decodes a cookie value into a session key; anything malformed is simply not a session.
#[inline]
pub fn decode_key(v: &str) -> Option<SessionKey> {
    if v.len() != SESSION_COOKIE_LEN {
        return None;
    }
    let mut key = [0u8; 32];
    match URL_SAFE_NO_PAD.decode_slice(v.as_bytes(), &mut key) {
        Ok(32) => Some(key),
        _ => None,
    }
}

/// 256 random bits from the OS.
pub fn random_key() -> Result<SessionKey, String> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| format!("OS random generator failed: {e}"))?;
    Ok(key)
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SessionStore for MemorySessionStore {
    fn create(
        &self,
        username: Arc<str>,
        password_version: u64,
        amr: crate::auth::factors::Amr,
        via: Option<Arc<crate::auth::external::ExternalLogin>>,
    ) -> BoxFuture<'_, Result<String, StoreError>> {
        crate::store::ready(self.insert_via(username, password_version, amr, via))
    }

    #[inline]
    fn get(&self, cookie_value: &str) -> Result<Option<SessionData>, StoreUnavailable> {
        Ok(self.lookup(cookie_value, true))
    }

    fn lookup_detailed(&self, cookie_value: &str) -> Result<Lookup, StoreUnavailable> {
        Ok(self.lookup_inner(cookie_value, true))
    }

    fn peek(&self, cookie_value: &str) -> Result<Option<SessionData>, StoreUnavailable> {
        Ok(self.lookup(cookie_value, false))
    }

    fn remove(&self, cookie_value: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        MemorySessionStore::remove(self, cookie_value);
        crate::store::ready(Ok(()))
    }

    fn remove_user(&self, username: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        MemorySessionStore::remove_user(self, username);
        crate::store::ready(Ok(()))
    }

    fn sweep(&self) -> usize {
        MemorySessionStore::sweep(self)
    }

    fn set_limits(&self, idle: Duration, max_lifetime: Duration, max_sessions: u64) {
        MemorySessionStore::set_limits(self, idle, max_lifetime, max_sessions)
    }

    fn len(&self) -> u64 {
        self.map.len() as u64
    }
}

impl MemorySessionStore {
    /// Creates a session and returns its cookie value.
    pub fn insert(&self, username: Arc<str>, password_version: u64) -> Result<String, StoreError> {
        self.insert_with(username, password_version, crate::auth::factors::PWD)
    }

    /// Creates a session proved by `amr` and returns its cookie value.
    pub fn insert_with(
        &self,
        username: Arc<str>,
        password_version: u64,
        amr: crate::auth::factors::Amr,
    ) -> Result<String, StoreError> {
        self.insert_via(username, password_version, amr, None)
    }

    /// Creates a session proved by `amr`, made through `via` if any, and returns its cookie
    /// value.
    pub fn insert_via(
        &self,
        username: Arc<str>,
        password_version: u64,
        amr: crate::auth::factors::Amr,
        via: Option<Arc<crate::auth::external::ExternalLogin>>,
    ) -> Result<String, StoreError> {
        self.make_room();
        let key = random_key().map_err(StoreError::Internal)?;
        let via = via.map(|v| v.sealed_for(&key));
        let now = self.now_ms();
        self.map.insert(
            key,
            Slot {
                username,
                password_version,
                amr,
                via,
                created_ms: now,
                last_ms: AtomicU64::new(now),
            },
        );
        Ok(URL_SAFE_NO_PAD.encode(key))
    }

    /// Deletes one session.
    pub fn remove(&self, cookie_value: &str) {
        if let Some(key) = decode_key(cookie_value) {
            self.map.remove(&key);
        }
    }

    /// Deletes every session of a user. O(sessions): rare.
    pub fn remove_user(&self, username: &str) {
        self.map.retain(|_, s| &*s.username != username);
    }

    /// Drops expired sessions from memory; returns how many.
    pub fn sweep(&self) -> usize {
        let before = self.map.len();
        let now = self.now_ms();
        self.map.retain(|_, s| !self.expired(s, now));
        before.saturating_sub(self.map.len())
    }

    /// Applies new limits; existing sessions are judged by them from now on.
    pub fn set_limits(&self, idle: Duration, max_lifetime: Duration, max_sessions: u64) {
        self.idle_ms.store(millis(idle), Ordering::Relaxed);
        self.lifetime_ms
            .store(millis(max_lifetime), Ordering::Relaxed);
        self.max_sessions
            .store(max_sessions.max(1), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_create_then_get_returns_user_and_remove_forgets_it() {
        let s = MemorySessionStore::new(Duration::from_secs(60), Duration::from_secs(600), 100);
        let id = s.insert(Arc::from("alice"), 0).unwrap();
        assert_eq!(id.len(), SESSION_COOKIE_LEN);
        assert_eq!(&*s.lookup(&id, true).unwrap().username, "alice");
        s.remove(&id);
        assert!(s.lookup(&id, true).is_none());
    }

    #[test]
    fn session_ids_are_unique_and_malformed_ids_miss() {
        let s = MemorySessionStore::new(Duration::from_secs(60), Duration::from_secs(600), 100);
        let a = s.insert(Arc::from("a"), 0).unwrap();
        let b = s.insert(Arc::from("a"), 0).unwrap();
        let c = s.insert(Arc::from("c"), 0).unwrap();
        assert_ne!(a, b);
        assert!(s.lookup("short", true).is_none());
        assert!(s.lookup(&"!".repeat(43), true).is_none());
        s.remove_user("a");
        assert!(s.lookup(&a, true).is_none() && s.lookup(&b, true).is_none());
        assert!(
            s.lookup(&c, true).is_some(),
            "other users keep their sessions"
        );
    }

    #[test]
    fn session_peek_does_not_refresh_the_idle_timer() {
        let s = MemorySessionStore::new(Duration::from_millis(200), Duration::from_secs(600), 10);
        let id = s.insert(Arc::from("u"), 7).unwrap();
        let start = Instant::now();
        // Peeking for longer than the idle timeout must not keep the session alive.
        while start.elapsed() < Duration::from_millis(400) {
            if s.lookup(&id, false).is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            s.lookup(&id, false).is_none(),
            "peek kept an idle session alive"
        );
        let id = s.insert(Arc::from("u"), 7).unwrap();
        assert_eq!(s.lookup(&id, false).unwrap().password_version, 7);
    }

    #[test]
    fn session_store_at_capacity_evicts_instead_of_growing() {
        let s = MemorySessionStore::new(Duration::from_secs(60), Duration::from_secs(600), 3);
        let ids: Vec<String> = (0..10)
            .map(|_| s.insert(Arc::from("u"), 0).unwrap())
            .collect();
        assert!(s.len() <= 3, "store grew to {}", s.len());
        assert!(
            s.lookup(ids.last().unwrap(), true).is_some(),
            "the newest session survives"
        );
    }

    #[test]
    fn session_set_limits_applies_to_existing_sessions() {
        let s = MemorySessionStore::new(Duration::from_secs(600), Duration::from_secs(600), 10);
        let id = s.insert(Arc::from("u"), 0).unwrap();
        assert!(s.lookup(&id, true).is_some());
        s.set_limits(Duration::from_secs(600), Duration::ZERO, 10);
        assert!(
            s.lookup(&id, true).is_none(),
            "a shorter max_lifetime applies on reload"
        );
    }

    #[test]
    fn session_expired_by_idle_or_lifetime_is_gone_and_swept() {
        let s = MemorySessionStore::new(Duration::ZERO, Duration::from_secs(600), 10);
        let id = s.insert(Arc::from("u"), 0).unwrap();
        assert!(
            s.lookup(&id, true).is_none(),
            "zero idle timeout expires at once"
        );
        let s = MemorySessionStore::new(Duration::from_secs(600), Duration::ZERO, 10);
        s.insert(Arc::from("u"), 0).unwrap();
        assert_eq!(s.sweep(), 1);
        assert!(s.is_empty());
    }
}
