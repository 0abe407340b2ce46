//! Session store: opaque 256-bit ids → (user, login time), idle and absolute expiry, bounded size.
//!
//! The store is live state: it outlives configuration reloads. The trait is what a shared store
//! (Redis) will implement; the in-memory one is a moka cache.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use moka::sync::Cache;
use moka::Expiry;

/// Raw session id bytes (256 bits from the OS CSPRNG).
pub type SessionKey = [u8; 32];

/// Length of the cookie value: base64url of 32 bytes without padding.
pub const SESSION_COOKIE_LEN: usize = 43;

/// What a session holds. The identity itself comes from the current user table, so that a removed
/// user or a changed group takes effect at once.
#[derive(Debug)]
pub struct SessionData {
    /// Who logged in.
    pub username: Arc<str>,
    /// When (monotonic, for max_lifetime).
    pub created: Instant,
    /// When (wall clock, for display and `iat`-like uses).
    pub created_unix: u64,
}

/// A session store. Synchronous on purpose: the in-memory lookup is sub-microsecond and a future
/// per request would cost more than the lookup; a networked store fronts itself with this cache.
pub trait SessionStore: Send + Sync + 'static {
    /// Creates a session and returns its cookie value.
    fn create(&self, username: Arc<str>) -> Result<String, String>;
    /// Looks a cookie value up, refreshing the idle timer.
    fn get(&self, cookie_value: &str) -> Option<Arc<SessionData>>;
    /// Deletes one session.
    fn remove(&self, cookie_value: &str);
    /// Deletes every session of a user ('sign out everywhere'). O(sessions): rare.
    fn remove_user(&self, username: &str);
    /// Approximate number of live sessions.
    fn len(&self) -> u64;
    /// Whether no sessions are live.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct SessionExpiry {
    idle: Duration,
    max_lifetime: Duration,
}

impl Expiry<SessionKey, Arc<SessionData>> for SessionExpiry {
    fn expire_after_create(
        &self,
        _k: &SessionKey,
        _v: &Arc<SessionData>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(self.idle.min(self.max_lifetime))
    }

    fn expire_after_read(
        &self,
        _k: &SessionKey,
        v: &Arc<SessionData>,
        now: Instant,
        _left: Option<Duration>,
        _m: Instant,
    ) -> Option<Duration> {
        let remaining = self
            .max_lifetime
            .saturating_sub(now.saturating_duration_since(v.created));
        Some(self.idle.min(remaining))
    }

    fn expire_after_update(
        &self,
        k: &SessionKey,
        v: &Arc<SessionData>,
        now: Instant,
        left: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_read(k, v, now, left, now)
    }
}

/// The in-memory session store.
pub struct MemorySessionStore {
    cache: Cache<SessionKey, Arc<SessionData>>,
    max_lifetime: Duration,
}

impl MemorySessionStore {
    /// A store with the given limits.
    pub fn new(idle: Duration, max_lifetime: Duration, max_sessions: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_sessions)
            .expire_after(SessionExpiry { idle, max_lifetime })
            .build();
        MemorySessionStore {
            cache,
            max_lifetime,
        }
    }

    /// Runs pending maintenance (expiry, eviction); tests and memory measurements use it.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
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

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SessionStore for MemorySessionStore {
    fn create(&self, username: Arc<str>) -> Result<String, String> {
        let key = random_key()?;
        let data = Arc::new(SessionData {
            username,
            created: Instant::now(),
            created_unix: unix_now(),
        });
        self.cache.insert(key, data);
        Ok(URL_SAFE_NO_PAD.encode(key))
    }

    #[inline]
    fn get(&self, cookie_value: &str) -> Option<Arc<SessionData>> {
        let key = decode_key(cookie_value)?;
        let s = self.cache.get(&key)?;
        // moka's timer wheel has a granularity; enforce the absolute limit exactly here.
        if s.created.elapsed() >= self.max_lifetime {
            self.cache.invalidate(&key);
            return None;
        }
        Some(s)
    }

    fn remove(&self, cookie_value: &str) {
        if let Some(key) = decode_key(cookie_value) {
            self.cache.invalidate(&key);
        }
    }

    fn remove_user(&self, username: &str) {
        let doomed: Vec<Arc<SessionKey>> = self
            .cache
            .iter()
            .filter(|(_, v)| &*v.username == username)
            .map(|(k, _)| k)
            .collect();
        for k in doomed {
            self.cache.invalidate(&*k);
        }
    }

    fn len(&self) -> u64 {
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_create_then_get_returns_user_and_remove_forgets_it() {
        let s = MemorySessionStore::new(Duration::from_secs(60), Duration::from_secs(600), 100);
        let id = s.create(Arc::from("alice")).unwrap();
        assert_eq!(id.len(), SESSION_COOKIE_LEN);
        assert_eq!(&*s.get(&id).unwrap().username, "alice");
        s.remove(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn session_ids_are_unique_and_malformed_ids_miss() {
        let s = MemorySessionStore::new(Duration::from_secs(60), Duration::from_secs(600), 100);
        let a = s.create(Arc::from("a")).unwrap();
        let b = s.create(Arc::from("a")).unwrap();
        assert_ne!(a, b);
        assert!(s.get("short").is_none());
        assert!(s.get(&"!".repeat(43)).is_none());
        s.remove_user("a");
        assert!(s.get(&a).is_none() && s.get(&b).is_none());
    }
}
