//! The Redis backend: live state shared by every gateway instance and kept across restarts,
//! answered on the request path from an in-process L1 cache without a Redis round trip.
//!
//! ```text
//!  request ──▶ L1 (sessions, revocation replica) ──hit──▶ answer
//!                 │ miss / locally idle: one MGET (concurrent misses share it)
//!                 ▼
//!  command connection (ConnectionManager, reconnects itself) ──▶ Redis
//!  tracking connection (RESP3, CLIENT TRACKING ON BCAST PREFIX <p>s: <p>r:)
//!        ◀── invalidation pushes: drop that session from L1, re-read that revocation
//!        ◀── PING every 30 ms: L1 is trusted only while the last answer is < 100 ms old
//! ```
//!
//! Keys (everything under `key_prefix`, `<p>` below):
//! - `<p>s:<sha256(session id) hex>` — `username \n password version \n login ms`, expiring at
//!   the session's absolute end. The id itself is never stored: a dump yields no cookie.
//! - `<p>t:<same hash>` — last use (ms), written at most every `idle_timeout / 10`; untracked, so
//!   these writes invalidate nobody's L1.
//! - `<p>u:<username>` — the set of a user's session hashes (sign-out-everywhere); each login
//!   drops a few members whose session expired ([`PRUNE_INDEX`]).
//! - `<p>r:j:<jti>` — a revoked token or login session id, expiring when it would anyway.
//! - `<p>r:u:<username>` — sign-out-everywhere time (ms), expiring after `max_lifetime`.
//! - `<p>l:a:<address>`, `<p>l:u:<username>` — failed-login counters, one-minute windows.
//! - `<p>o:…` — the second factor's state ([`RedisOtp`]).
//! - `<p>x:<sha256(state) hex>` — a login at an external provider in progress (PKCE verifier,
//!   nonce, return path), 10 minutes, taken with `GETDEL` (single use across instances).
//!
//! When L1 cannot be trusted (heartbeat silent for 100 ms, tracking connection down) a session
//! is read from Redis for that request (and trusted for 100 ms), or, if Redis does not answer
//! within [`FETCH_TIMEOUT`], the request gets 503: never a logout. Revocation checks fail closed
//! (503) while the replica cannot be vouched for.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use dashmap::DashMap;
use futures_util::future::{FutureExt, Shared};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};

use crate::config::RedisConfig;
use crate::store::limit::{client_key, LoginLimitStore, LoginLimiter, LoginLimits, WINDOW};
use crate::store::revocation::{RevocationStore, Revocations};
use crate::store::session::{
    decode_key, random_key, unix_now, unix_now_ms, Lookup, SessionData, SessionKey, SessionStore,
};
use crate::store::{BoxFuture, StoreError, StoreUnavailable};

/// L1 is trusted while the invalidation connection answered its heartbeat this recently.
pub const TRUST_BOUND: Duration = Duration::from_millis(100);
/// Heartbeat period on the invalidation connection.
const HEARTBEAT: Duration = Duration::from_millis(30);
/// The longest a request waits for Redis before it gets 503.
pub const FETCH_TIMEOUT: Duration = Duration::from_millis(250);
/// The longest a write (login, logout, revocation) waits for Redis before it gets 503.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// A session read from Redis while L1 is not trusted is believed this long.
const FRESH: Duration = Duration::from_millis(100);
/// "No such session" is remembered this long (an invalidation of that key removes it sooner).
const ABSENT_TTL: Duration = Duration::from_secs(5);
/// Commands timing out in a row before both connections are replaced.
const COMMAND_TIMEOUTS_BEFORE_RESET: u64 = 5;
/// A tracking connection whose heartbeat stays unanswered this long is replaced (a stopped
/// server, or a connection the network silently dropped).
const SILENCE_BEFORE_RESET: Duration = Duration::from_secs(1);
/// Revocation keys read per pipeline when reloading.
const RELOAD_BATCH: usize = 500;
/// Background writes (last-use touches, failure counts) waiting for Redis; more are dropped.
const WRITE_QUEUE: usize = 4096;

/// The connections and the trust state shared by the three stores.
pub struct Link {
    prefix: String,
    cmd: ArcSwapOption<ConnectionManager>,
    started: Instant,
    /// Milliseconds since `started` of the last answered heartbeat.
    last_beat: AtomicU64,
    /// The tracking connection is up with tracking on, and L1 was flushed after it came up.
    tracking: AtomicBool,
    /// Asks the connection task to start over (new connections, L1 flushed, revocations
    /// reloaded): a command connection that keeps timing out, a revocation that could not be
    /// read after its invalidation.
    resync: tokio::sync::Notify,
    /// Consecutive command timeouts (a half-open connection never errors, it only times out).
    timeouts: AtomicU64,
    /// Whether the store was last reported up (for one log line per change).
    reported_up: AtomicBool,
    writes: tokio::sync::mpsc::Sender<redis::Pipeline>,
    /// Background writes dropped because their queue was full (a metric).
    writes_dropped: AtomicU64,
}

impl Link {
    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether L1's answers can be vouched for right now.
    #[inline]
    pub fn trusted(&self) -> bool {
        self.tracking.load(Ordering::Acquire)
            && self
                .elapsed_ms()
                .saturating_sub(self.last_beat.load(Ordering::Acquire))
                <= TRUST_BOUND.as_millis() as u64
    }

    /// Takes a pending resync request, if any (true once per request).
    fn resync_pending(&self) -> bool {
        self.resync.notified().now_or_never().is_some()
    }

    fn beat(&self) {
        self.last_beat.store(self.elapsed_ms(), Ordering::Release);
    }

    fn report(&self, up: bool, why: &str) {
        if self.reported_up.swap(up, Ordering::AcqRel) != up {
            if up {
                tracing::info!("redis store available");
            } else {
                tracing::error!(reason = why, "redis store unavailable");
            }
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
        timeout: Duration,
    ) -> Result<T, StoreError> {
        let Some(conn) = self.cmd.load_full() else {
            return Err(StoreError::Unavailable);
        };
        let mut conn = (*conn).clone();
        let r = tokio::time::timeout(timeout, pipe.query_async::<T>(&mut conn)).await;
        let timed_out = match &r {
            Err(_) => true,
            Ok(Err(e)) => e.is_timeout(),
            Ok(Ok(_)) => false,
        };
        if timed_out {
            if self.timeouts.fetch_add(1, Ordering::AcqRel) + 1 >= COMMAND_TIMEOUTS_BEFORE_RESET {
                // Half open, or the server is stopped: start over on fresh connections.
                self.timeouts.store(0, Ordering::Release);
                self.cmd.store(None);
                self.resync.notify_one();
            }
        } else {
            self.timeouts.store(0, Ordering::Release);
        }
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis command failed");
                Err(StoreError::Unavailable)
            }
            Err(_) => Err(StoreError::Unavailable),
        }
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + kind.len() + rest.len());
        k.push_str(&self.prefix);
        k.push_str(kind);
        k.push_str(rest);
        k
    }

    /// Queues a write nobody waits for; dropped (and logged at debug) when the queue is full.
    fn later(&self, pipe: redis::Pipeline) {
        if self.writes.try_send(pipe).is_err() {
            self.writes_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("redis write queue full: write dropped");
        }
    }
}

/// SHA-256 of a session id: the only form in which a session id reaches Redis (as hex), and the
/// L1 key (so that an invalidation, which names the hash, finds its entry directly).
type Digest = [u8; 32];

fn digest(key: &SessionKey) -> Digest {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hex(d: &Digest) -> String {
    let mut s = String::with_capacity(64);
    for b in d {
        s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    s
}

fn unhex(s: &str) -> Option<Digest> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The L1 key of a cookie value, if it can be a session id at all.
fn l1_key(cookie_value: &str) -> Option<Digest> {
    decode_key(cookie_value).map(|k| digest(&k))
}

/// One cached session (or the knowledge that there is none).
enum Cached {
    Present {
        username: Arc<str>,
        password_version: u64,
        amr: crate::auth::factors::Amr,
        via: Option<Arc<crate::auth::external::ExternalLogin>>,
        created_ms: u64,
        /// Latest use known here (Unix ms): our own requests, or another instance's touch.
        last_ms: AtomicU64,
        /// When we last wrote the touch key (Unix ms).
        written_ms: AtomicU64,
        /// When this was read from Redis (Unix ms, and as an instant).
        fetched_ms: u64,
        fetched: Instant,
    },
    Absent {
        fetched: Instant,
    },
}

/// A read of one session in progress: later requests for it wait for the same read.
type Inflight = Shared<BoxFuture<'static, ()>>;

/// Sessions on Redis with an L1 in front.
pub struct RedisSessions {
    link: Arc<Link>,
    l1: DashMap<Digest, Cached, foldhash::fast::RandomState>,
    /// Reads in progress, and whether an invalidation for that key arrived during one.
    inflight: Mutex<HashMap<Digest, Inflight>>,
    dirty: DashMap<Digest, bool, foldhash::fast::RandomState>,
    /// Bumped by every L1 flush (reconnect): a read that spans one does not fill L1.
    flushes: AtomicU64,
    idle_ms: AtomicU64,
    lifetime_ms: AtomicU64,
    /// Bench-only (`AUTHGATE_BENCH_REDIS_NO_L1=1`): read every session from Redis on every
    /// request, the way oauth2-proxy does — the baseline the L1 is measured against.
    no_l1: bool,
}

impl RedisSessions {
    fn flush(&self) {
        self.flushes.fetch_add(1, Ordering::AcqRel);
        self.l1.clear();
    }

    /// An invalidation (or our own delete) of one session key.
    fn forget(&self, d: &Digest) {
        if let Some(mut flag) = self.dirty.get_mut(d) {
            *flag = true;
        }
        self.l1.remove(d);
    }

    fn idle_expired(&self, last_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(last_ms) >= self.idle_ms.load(Ordering::Relaxed)
    }

    fn lookup(
        &self,
        cookie_value: &str,
        refresh: bool,
    ) -> Result<Option<SessionData>, StoreUnavailable> {
        Ok(match self.lookup_inner(cookie_value, refresh)? {
            Lookup::Found(s) => Some(s),
            Lookup::Missing | Lookup::Expired(_) => None,
        })
    }

    fn lookup_inner(&self, cookie_value: &str, refresh: bool) -> Result<Lookup, StoreUnavailable> {
        let Some(d) = l1_key(cookie_value) else {
            return Ok(Lookup::Missing);
        };
        let trusted = self.link.trusted();
        let Some(c) = self.l1.get(&d) else {
            return Err(StoreUnavailable);
        };
        let now_ms = unix_now_ms();
        match &*c {
            Cached::Absent { fetched } => {
                if trusted || fetched.elapsed() < FRESH {
                    Ok(Lookup::Missing)
                } else {
                    Err(StoreUnavailable)
                }
            }
            Cached::Present {
                username,
                password_version,
                amr,
                via,
                created_ms,
                last_ms,
                written_ms,
                fetched_ms,
                fetched,
            } => {
                if !trusted && fetched.elapsed() >= FRESH {
                    return Err(StoreUnavailable);
                }
                let lifetime = self.lifetime_ms.load(Ordering::Relaxed);
                if now_ms.saturating_sub(*created_ms) >= lifetime {
                    return Ok(Lookup::Expired(username.clone()));
                }
                let last = last_ms.load(Ordering::Relaxed);
                if self.idle_expired(last, now_ms) {
                    // Idle only as far as this instance knows: the verdict needs a read of the
                    // last use made after the session went idle here (another instance may have
                    // used it). Without one, nobody can tell: unavailable, not logged out.
                    let idle = self.idle_ms.load(Ordering::Relaxed);
                    return if *fetched_ms >= last.saturating_add(idle) {
                        Ok(Lookup::Expired(username.clone()))
                    } else {
                        Err(StoreUnavailable)
                    };
                }
                if refresh {
                    if last < now_ms {
                        last_ms.fetch_max(now_ms, Ordering::Relaxed);
                    }
                    let every = (self.idle_ms.load(Ordering::Relaxed) / 10).max(1000);
                    let written = written_ms.load(Ordering::Relaxed);
                    if now_ms.saturating_sub(written) >= every
                        && written_ms
                            .compare_exchange(written, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                    {
                        let end = created_ms.saturating_add(lifetime);
                        let mut p = redis::pipe();
                        p.cmd("SET")
                            .arg(self.link.key("t:", &hex(&d)))
                            .arg(now_ms)
                            .arg("PXAT")
                            .arg(end)
                            .ignore();
                        self.link.later(p);
                    }
                }
                Ok(Lookup::Found(SessionData {
                    username: username.clone(),
                    created_unix: created_ms / 1000,
                    password_version: *password_version,
                    amr: *amr,
                    via: via.clone(),
                }))
            }
        }
    }

    /// Reads one session (and its last use) from Redis into L1, within [`FETCH_TIMEOUT`] in all.
    /// Runs as its own task, so a request that gives up waiting does not leave it half done.
    async fn load(self: Arc<Self>, d: Digest) {
        let key = hex(&d);
        let _ = tokio::time::timeout(FETCH_TIMEOUT, async {
            for _ in 0..3 {
                let flushes = self.flushes.load(Ordering::Acquire);
                self.dirty.insert(d, false);
                let mut p = redis::pipe();
                p.cmd("MGET")
                    .arg(self.link.key("s:", &key))
                    .arg(self.link.key("t:", &key));
                let Ok((vals,)): Result<(Vec<Option<String>>,), StoreError> =
                    self.link.run(&p, FETCH_TIMEOUT).await
                else {
                    return;
                };
                let record = vals.first().cloned().flatten();
                let touch = vals
                    .get(1)
                    .cloned()
                    .flatten()
                    .and_then(|t| t.parse::<u64>().ok());
                let now_ms = unix_now_ms();
                let cached = match record.as_deref().and_then(parse_record) {
                    None => Cached::Absent {
                        fetched: Instant::now(),
                    },
                    Some((username, password_version, created_ms, amr, via)) => {
                        let local = match self.l1.get(&d).as_deref() {
                            Some(Cached::Present { last_ms, .. }) => {
                                last_ms.load(Ordering::Relaxed)
                            }
                            _ => 0,
                        };
                        let last = touch.unwrap_or(created_ms).max(local).max(created_ms);
                        Cached::Present {
                            username: Arc::from(username),
                            password_version,
                            amr,
                            via,
                            created_ms,
                            last_ms: AtomicU64::new(last),
                            written_ms: AtomicU64::new(touch.unwrap_or(created_ms)),
                            fetched_ms: now_ms,
                            fetched: Instant::now(),
                        }
                    }
                };
                // The dirty flag is checked and the entry stored under the same map shard lock
                // order as `forget` uses: an invalidation of this key during the read makes it
                // read again; one after the insert removes what we stored.
                let raced = self.dirty.get(&d).is_some_and(|f| *f)
                    || self.flushes.load(Ordering::Acquire) != flushes;
                if raced {
                    continue;
                }
                self.l1.insert(d, cached);
                if self.dirty.get(&d).is_some_and(|f| *f) {
                    // Invalidated between the check and the insert: what we stored may be old.
                    self.l1.remove(&d);
                    continue;
                }
                return;
            }
        })
        .await;
        self.dirty.remove(&d);
        if let Ok(mut inflight) = self.inflight.lock() {
            inflight.remove(&d);
        }
    }
}

/// What a session record holds.
type Record<'a> = (
    &'a str,
    u64,
    u64,
    crate::auth::factors::Amr,
    Option<Arc<crate::auth::external::ExternalLogin>>,
);

/// `username \n password version \n login ms [\n amr [\n external login]]` (records written
/// before `amr` existed have three lines: a password login; the fifth line, JSON, is there for a
/// login through an external provider, [`crate::auth::external::ExternalLogin::encode`]). An
/// undecodable record reads as absent.
fn parse_record(v: &str) -> Option<Record<'_>> {
    let mut it = v.split('\n');
    let username = it.next().filter(|u| !u.is_empty())?;
    let pwv = it.next()?.parse().ok()?;
    let created = it.next()?.parse().ok()?;
    let amr = match it.next() {
        None => crate::auth::factors::PWD,
        Some(a) => crate::auth::factors::parse(a.split(',')),
    };
    let via = match it.next() {
        None => None,
        Some(line) => Some(Arc::new(crate::auth::external::ExternalLogin::decode(
            line, username, pwv,
        )?)),
    };
    it.next()
        .is_none()
        .then_some((username, pwv, created, amr, via))
}

impl SessionStore for Arc<RedisSessions> {
    fn create(
        &self,
        username: Arc<str>,
        password_version: u64,
        amr: crate::auth::factors::Amr,
        via: Option<Arc<crate::auth::external::ExternalLogin>>,
    ) -> BoxFuture<'_, Result<String, StoreError>> {
        Box::pin(async move {
            let key = random_key().map_err(StoreError::Internal)?;
            let via = via.map(|v| v.sealed_for(&key));
            let d = digest(&key);
            let hash = hex(&d);
            let now_ms = unix_now_ms();
            let lifetime = self.lifetime_ms.load(Ordering::Relaxed);
            let end = now_ms.saturating_add(lifetime);
            let mut record = format!(
                "{username}\n{password_version}\n{now_ms}\n{}",
                crate::auth::factors::names(amr).join(",")
            );
            if let Some(v) = &via {
                record.push('\n');
                record.push_str(&v.encode());
            }
            let index = self.link.key("u:", &username);
            let mut p = redis::pipe();
            p.atomic()
                .cmd("SET")
                .arg(self.link.key("s:", &hash))
                .arg(record)
                .arg("PXAT")
                .arg(end)
                .ignore()
                .cmd("SET")
                .arg(self.link.key("t:", &hash))
                .arg(now_ms)
                .arg("PXAT")
                .arg(end)
                .ignore()
                .cmd("SADD")
                .arg(&index)
                .arg(&hash)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&index)
                .arg(lifetime)
                .ignore()
                .cmd("EVAL")
                .arg(PRUNE_INDEX)
                .arg(1)
                .arg(&index)
                .arg(self.link.key("s:", ""))
                .arg(PRUNE_SAMPLE)
                .ignore();
            self.link.run::<()>(&p, WRITE_TIMEOUT).await?;
            // Our own write's invalidation may arrive after this and evict it again: the first
            // request then reads it back once.
            self.l1.insert(
                d,
                Cached::Present {
                    username,
                    password_version,
                    amr,
                    via,
                    created_ms: now_ms,
                    last_ms: AtomicU64::new(now_ms),
                    written_ms: AtomicU64::new(now_ms),
                    fetched_ms: now_ms,
                    fetched: Instant::now(),
                },
            );
            Ok(URL_SAFE_NO_PAD.encode(key))
        })
    }

    fn get(&self, cookie_value: &str) -> Result<Option<SessionData>, StoreUnavailable> {
        self.lookup(cookie_value, true)
    }

    fn peek(&self, cookie_value: &str) -> Result<Option<SessionData>, StoreUnavailable> {
        self.lookup(cookie_value, false)
    }

    fn needs_fetch(&self, cookie_value: &str) -> bool {
        let Some(d) = l1_key(cookie_value) else {
            return false;
        };
        if self.no_l1 {
            return true;
        }
        let trusted = self.link.trusted();
        match self.l1.get(&d).as_deref() {
            None => true,
            Some(Cached::Absent { fetched }) => {
                (!trusted && fetched.elapsed() >= FRESH) || fetched.elapsed() >= ABSENT_TTL
            }
            Some(Cached::Present {
                last_ms, fetched, ..
            }) => {
                (!trusted && fetched.elapsed() >= FRESH)
                    // Idle here, but maybe used on another instance: read its touch.
                    || self.idle_expired(last_ms.load(Ordering::Relaxed), unix_now_ms())
            }
        }
    }

    fn fetch<'a>(&'a self, cookie_value: &'a str) -> BoxFuture<'a, ()> {
        let Some(d) = l1_key(cookie_value) else {
            return crate::store::ready(());
        };
        if self.no_l1 {
            // The baseline reads once per request, concurrent requests for one session included.
            let me = Arc::clone(self);
            return Box::pin(async move {
                let _ = tokio::spawn(me.load(d)).await;
            });
        }
        let shared = {
            let Ok(mut inflight) = self.inflight.lock() else {
                return crate::store::ready(());
            };
            inflight
                .entry(d)
                .or_insert_with(|| {
                    // Its own task: it finishes (and leaves the map) even if every waiter goes.
                    let task = tokio::spawn(Arc::clone(self).load(d));
                    let fut: BoxFuture<'static, ()> = Box::pin(async move {
                        let _ = task.await;
                    });
                    fut.shared()
                })
                .clone()
        };
        Box::pin(shared)
    }

    fn remove(&self, cookie_value: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = decode_key(cookie_value);
        Box::pin(async move {
            let Some(key) = key else { return Ok(()) };
            let d = digest(&key);
            let hash = hex(&d);
            let username = match self.l1.get(&d).as_deref() {
                Some(Cached::Present { username, .. }) => Some(username.clone()),
                _ => None,
            };
            let mut p = redis::pipe();
            p.cmd("DEL")
                .arg(self.link.key("s:", &hash))
                .arg(self.link.key("t:", &hash))
                .ignore();
            if let Some(u) = &username {
                p.cmd("SREM")
                    .arg(self.link.key("u:", u))
                    .arg(&hash)
                    .ignore();
            }
            self.link.run::<()>(&p, WRITE_TIMEOUT).await?;
            self.forget(&d);
            Ok(())
        })
    }

    fn remove_user(&self, username: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let username = username.to_owned();
        Box::pin(async move {
            let index = self.link.key("u:", &username);
            let mut p = redis::pipe();
            p.cmd("SMEMBERS").arg(&index);
            let (hashes,): (Vec<String>,) = self.link.run(&p, WRITE_TIMEOUT).await?;
            if hashes.is_empty() {
                return Ok(());
            }
            let mut p = redis::pipe();
            p.atomic();
            for h in &hashes {
                p.cmd("DEL")
                    .arg(self.link.key("s:", h))
                    .arg(self.link.key("t:", h))
                    .ignore();
            }
            // Only the members read: a login made meanwhile keeps its place in the index.
            p.cmd("SREM").arg(&index).arg(&hashes).ignore();
            self.link.run::<()>(&p, WRITE_TIMEOUT).await?;
            for h in &hashes {
                if let Some(d) = unhex(h) {
                    self.forget(&d);
                }
            }
            Ok(())
        })
    }

    fn is_available(&self) -> bool {
        self.link.trusted()
    }

    fn sweep(&self) -> usize {
        let before = self.l1.len();
        let now_ms = unix_now_ms();
        let lifetime = self.lifetime_ms.load(Ordering::Relaxed);
        let idle = self.idle_ms.load(Ordering::Relaxed);
        self.l1.retain(|_, c| match c {
            Cached::Absent { fetched } => fetched.elapsed() < ABSENT_TTL,
            // Idle here for twice the limit: another instance may still use it, but then our
            // next request reads it again.
            Cached::Present {
                created_ms,
                last_ms,
                ..
            } => {
                now_ms.saturating_sub(*created_ms) < lifetime
                    && now_ms.saturating_sub(last_ms.load(Ordering::Relaxed)) < idle * 2
            }
        });
        before.saturating_sub(self.l1.len())
    }

    fn set_limits(&self, idle: Duration, max_lifetime: Duration, _max_sessions: u64) {
        // The number of sessions is bounded by Redis's memory, not here; L1 holds what this
        // instance has seen recently (swept every 30 s).
        self.idle_ms
            .store(idle.as_millis() as u64, Ordering::Relaxed);
        self.lifetime_ms
            .store(max_lifetime.as_millis() as u64, Ordering::Relaxed);
    }

    fn len(&self) -> u64 {
        self.l1.len() as u64
    }

    fn lookup_detailed(&self, cookie_value: &str) -> Result<Lookup, StoreUnavailable> {
        self.lookup_inner(cookie_value, true)
    }

    fn writes_dropped(&self) -> u64 {
        self.link.writes_dropped.load(Ordering::Relaxed)
    }
}

/// Revocations on Redis with a full replica in memory (revocations are few and short-lived).
pub struct RedisRevocations {
    link: Arc<Link>,
    replica: Revocations,
    loaded: AtomicBool,
    max_lifetime_ms: AtomicU64,
}

impl RedisRevocations {
    /// Reads every revocation under the prefix into the replica.
    async fn reload(&self) -> Result<(), StoreError> {
        let Some(conn) = self.link.cmd.load_full() else {
            return Err(StoreError::Unavailable);
        };
        let mut conn = (*conn).clone();
        let pattern = self.link.key("r:", "*");
        let mut keys = Vec::new();
        let scan = async {
            let mut it = redis::AsyncCommands::scan_match::<_, String>(&mut conn, pattern).await?;
            while let Some(k) = it.next_item().await {
                keys.push(k?);
            }
            Ok::<_, redis::RedisError>(())
        };
        match tokio::time::timeout(Duration::from_secs(10), scan).await {
            Ok(Ok(())) => {}
            _ => return Err(StoreError::Unavailable),
        }
        for batch in keys.chunks(RELOAD_BATCH) {
            let mut p = redis::pipe();
            for k in batch {
                p.cmd("GET").arg(k).cmd("PTTL").arg(k);
            }
            let vals: Vec<Value> = self.link.run(&p, Duration::from_secs(5)).await?;
            for (k, pair) in batch.iter().zip(vals.chunks(2)) {
                let v: Option<String> = redis::from_redis_value_ref(&pair[0]).unwrap_or(None);
                let ttl: i64 = pair
                    .get(1)
                    .and_then(|t| redis::from_redis_value_ref(t).ok())
                    .unwrap_or(0);
                self.record(k, v, ttl);
            }
        }
        Ok(())
    }

    /// Reads one revocation key and applies it to the replica (an absent key revokes nothing).
    async fn apply(&self, key: &str) -> Result<(), StoreError> {
        let mut p = redis::pipe();
        p.cmd("GET").arg(key).cmd("PTTL").arg(key);
        let (v, ttl): (Option<String>, i64) = self.link.run(&p, WRITE_TIMEOUT).await?;
        self.record(key, v, ttl);
        Ok(())
    }

    /// Applies one revocation key's value to the replica.
    fn record(&self, key: &str, v: Option<String>, ttl: i64) {
        let Some(v) = v else { return };
        let Some(rest) = key.get(self.link.prefix.len()..) else {
            return;
        };
        let now = unix_now();
        if let Some(jti) = rest.strip_prefix("r:j:") {
            let left = u64::try_from(ttl).unwrap_or(0) / 1000;
            // The replica keeps it for exp + its leeway allowance; the key's TTL already has it.
            self.replica.revoke_jti(
                jti,
                (now + left).saturating_sub(crate::store::revocation::MAX_LEEWAY_SECS),
                now,
            );
        } else if let Some(user) = rest.strip_prefix("r:u:") {
            if let Ok(at) = v.parse::<u64>() {
                self.replica.revoke_user_before(user, at);
            }
        }
    }
}

impl RevocationStore for Arc<RedisRevocations> {
    fn revoke_jti(&self, jti: &str, exp: u64, now: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        let jti = jti.to_owned();
        Box::pin(async move {
            let until = exp.saturating_add(crate::store::revocation::MAX_LEEWAY_SECS);
            if jti.is_empty() || until <= now {
                return Ok(());
            }
            let mut p = redis::pipe();
            p.cmd("SET")
                .arg(self.link.key("r:j:", &jti))
                .arg("1")
                .arg("EX")
                .arg(until - now)
                .ignore();
            self.link.run::<()>(&p, WRITE_TIMEOUT).await?;
            self.replica.revoke_jti(&jti, exp, now);
            Ok(())
        })
    }

    fn is_jti_revoked(&self, jti: &str) -> bool {
        self.replica.is_jti_revoked(jti)
    }

    fn revoke_user_before(
        &self,
        username: &str,
        at_ms: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let username = username.to_owned();
        Box::pin(async move {
            let key = self.link.key("r:u:", &username);
            let ttl = self.max_lifetime_ms.load(Ordering::Relaxed).max(1000);
            // Never move a not-before back (another instance may have written a later one).
            let mut p = redis::pipe();
            p.cmd("EVAL")
                .arg(RAISE_NOT_BEFORE)
                .arg(1)
                .arg(&key)
                .arg(at_ms)
                .arg(ttl)
                .ignore();
            self.link.run::<()>(&p, WRITE_TIMEOUT).await?;
            self.replica.revoke_user_before(&username, at_ms);
            Ok(())
        })
    }

    fn is_user_revoked(&self, username: &str, login_ms: u64) -> bool {
        self.replica.is_user_revoked(username, login_ms)
    }

    fn prune_users(&self, older_than: u64) {
        self.replica.prune_users(older_than)
    }

    fn generation(&self) -> u64 {
        self.replica.generation()
    }

    fn vouched(&self) -> bool {
        self.loaded.load(Ordering::Acquire) && self.link.trusted()
    }
}

/// Drops from the user index KEYS[1] up to ARGV[2] sampled members whose session key (ARGV[1]
/// followed by the member) is gone: sessions end by expiry without anyone removing them from
/// the index, so each login clears a few, and an active user's index stays about the size of
/// their live sessions at a bounded cost per login.
const PRUNE_INDEX: &str = "local n = 0 \
     for _, h in ipairs(redis.call('SRANDMEMBER', KEYS[1], tonumber(ARGV[2]))) do \
       if redis.call('EXISTS', ARGV[1] .. h) == 0 then redis.call('SREM', KEYS[1], h) n = n + 1 end \
     end \
     return n";

/// Members of a user's session index checked per login ([`PRUNE_INDEX`]).
const PRUNE_SAMPLE: usize = 16;

/// Sets KEYS[1] to ARGV[1] (expiring in ARGV[2] ms) unless it already holds a later time.
const RAISE_NOT_BEFORE: &str = "local c = tonumber(redis.call('GET', KEYS[1]) or '0') \
     if tonumber(ARGV[1]) > c then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end \
     return 1";

/// Counts one failure in KEYS[1]; the first one of a window sets its expiry (ARGV[1] ms).
const COUNT_FAILURE: &str = "local n = redis.call('INCR', KEYS[1]) \
     if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
     return n";

/// Failed-login counters on Redis (shared by every instance), with the local ones in front.
pub struct RedisLimits {
    link: Arc<Link>,
    local: LoginLimiter,
    limits: Mutex<LoginLimits>,
}

impl RedisLimits {
    fn keys(&self, ip: IpAddr, username: &str) -> (String, String) {
        (
            self.link.key("l:a:", &client_key(ip).to_string()),
            self.link.key("l:u:", &username.to_ascii_lowercase()),
        )
    }
}

impl LoginLimitStore for Arc<RedisLimits> {
    fn check(&self, ip: IpAddr, username: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        let (a, u) = self.keys(ip, username);
        let local = self.local.check(ip, username);
        Box::pin(async move {
            let mut p = redis::pipe();
            p.cmd("GET")
                .arg(&a)
                .cmd("PTTL")
                .arg(&a)
                .cmd("GET")
                .arg(&u)
                .cmd("PTTL")
                .arg(&u);
            let (ca, ta, cu, tu): (Option<u32>, i64, Option<u32>, i64) =
                self.link.run(&p, FETCH_TIMEOUT).await?;
            let limits = self.limits.lock().map(|l| *l).unwrap_or(LoginLimits {
                per_username: 1,
                per_address: 1,
            });
            let wait = |count: Option<u32>, ttl: i64, limit: u32| {
                (count.unwrap_or(0) >= limit.max(1))
                    .then(|| (u64::try_from(ttl).unwrap_or(1000) / 1000).max(1))
            };
            Ok([
                local,
                wait(ca, ta, limits.per_address),
                wait(cu, tu, limits.per_username),
            ]
            .into_iter()
            .flatten()
            .max())
        })
    }

    fn record_failure(&self, ip: IpAddr, username: &str) {
        self.local.record_failure(ip, username);
        let (a, u) = self.keys(ip, username);
        let window = WINDOW.as_millis() as u64;
        let mut p = redis::pipe();
        for k in [a, u] {
            // One script: a counter never exists without its window's expiry.
            p.cmd("EVAL")
                .arg(COUNT_FAILURE)
                .arg(1)
                .arg(&k)
                .arg(window)
                .ignore();
        }
        self.link.later(p);
    }

    fn set_limits(&self, limits: LoginLimits) {
        self.local.set_limits(limits);
        if let Ok(mut l) = self.limits.lock() {
            *l = limits;
        }
    }
}

/// Sets KEYS[1] to ARGV[1] (expiring in ARGV[2] ms) when it holds an earlier step or none;
/// returns whether it did (an accepted TOTP step).
const ACCEPT_STEP: &str = "local c = tonumber(redis.call('GET', KEYS[1]) or '-1') \
     if tonumber(ARGV[1]) > c then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end \
     return 0";

/// Counts one attempt in KEYS[1] (the first of a window sets its expiry, ARGV[1] ms); returns
/// the count and the window's remaining ms.
const COUNT_ATTEMPT: &str = "local n = redis.call('INCR', KEYS[1]) \
     if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
     return {n, redis.call('PTTL', KEYS[1])}";

/// Takes one attempt back, never below zero and never creating the key.
const FORGIVE_ATTEMPT: &str = "local n = tonumber(redis.call('GET', KEYS[1]) or '0') \
     if n > 0 then redis.call('DECR', KEYS[1]) end return 1";

/// How long an accepted TOTP step is remembered: well past the ±1 step window.
const STEP_TTL_MS: u64 = 3600 * 1000;

/// The second factor's live state on Redis (`<p>o:` keys, outside the tracked prefixes: nothing
/// here is cached in-process, every answer is Redis's).
pub struct RedisOtp {
    link: Arc<Link>,
    per_minute: std::sync::atomic::AtomicU32,
}

impl crate::store::otp::OtpStore for Arc<RedisOtp> {
    fn accept_step(&self, username: &str, step: u64) -> BoxFuture<'_, Result<bool, StoreError>> {
        let key = self.link.key("o:s:", username);
        Box::pin(async move {
            let mut p = redis::pipe();
            p.cmd("EVAL")
                .arg(ACCEPT_STEP)
                .arg(1)
                .arg(&key)
                .arg(step)
                .arg(STEP_TTL_MS);
            let (n,): (i64,) = self.link.run(&p, WRITE_TIMEOUT).await?;
            Ok(n == 1)
        })
    }

    fn use_once(&self, id: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let key = self.link.key("o:u:", id);
        Box::pin(async move {
            let mut p = redis::pipe();
            p.cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(crate::store::otp::USED_CODE_TTL.as_millis() as u64);
            let (set,): (Option<String>,) = self.link.run(&p, WRITE_TIMEOUT).await?;
            Ok(set.is_some())
        })
    }

    fn attempt(&self, username: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        let key = self.link.key("o:f:", &username.to_ascii_lowercase());
        Box::pin(async move {
            // Counted before the code is checked, and waited for: parallel attempts cannot all
            // pass, and none is lost in a full write queue.
            let mut p = redis::pipe();
            p.cmd("EVAL")
                .arg(COUNT_ATTEMPT)
                .arg(1)
                .arg(&key)
                .arg(crate::store::otp::WINDOW.as_millis() as u64);
            let ((n, ttl),): ((u32, i64),) = self.link.run(&p, WRITE_TIMEOUT).await?;
            let limit = self.per_minute.load(Ordering::Relaxed).max(1);
            Ok((n > limit).then(|| (u64::try_from(ttl).unwrap_or(1000) / 1000).max(1)))
        })
    }

    fn forgive(&self, username: &str) {
        let key = self.link.key("o:f:", &username.to_ascii_lowercase());
        let mut p = redis::pipe();
        p.cmd("EVAL").arg(FORGIVE_ATTEMPT).arg(1).arg(&key).ignore();
        self.link.later(p);
    }

    fn set_limit(&self, per_minute: u32) {
        self.per_minute.store(per_minute, Ordering::Relaxed);
    }

    fn put_pending(
        &self,
        ticket: &str,
        pending: &crate::store::otp::Pending,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = self.link.key("o:p:", ticket);
        let value = pending.encode();
        let pending = pending.clone();
        Box::pin(async move {
            let mut p = redis::pipe();
            p.cmd("SET")
                .arg(&key)
                .arg(value)
                .arg("PXAT")
                .arg(pending.expires_ms)
                .ignore();
            self.link.run::<()>(&p, WRITE_TIMEOUT).await
        })
    }

    fn take_pending(
        &self,
        ticket: &str,
    ) -> BoxFuture<'_, Result<Option<crate::store::otp::Pending>, StoreError>> {
        let key = self.link.key("o:p:", ticket);
        Box::pin(async move {
            let mut p = redis::pipe();
            p.cmd("GETDEL").arg(&key);
            let (v,): (Option<String>,) = self.link.run(&p, WRITE_TIMEOUT).await?;
            let now_ms = crate::store::session::unix_now_ms();
            Ok(v.as_deref()
                .and_then(crate::store::otp::Pending::decode)
                .filter(|p| p.live(now_ms)))
        })
    }

    fn put_flow(
        &self,
        id: &str,
        value: String,
        expires_ms: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = self.link.key("x:", id);
        Box::pin(async move {
            let mut p = redis::pipe();
            p.cmd("SET")
                .arg(&key)
                .arg(value)
                .arg("PXAT")
                .arg(expires_ms)
                .ignore();
            self.link.run::<()>(&p, WRITE_TIMEOUT).await
        })
    }

    fn take_flow(&self, id: &str) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let key = self.link.key("x:", id);
        Box::pin(async move {
            let mut p = redis::pipe();
            p.cmd("GETDEL").arg(&key);
            let (v,): (Option<String>,) = self.link.run(&p, WRITE_TIMEOUT).await?;
            Ok(v)
        })
    }
}

/// The three Redis-backed stores, sharing one link.
pub struct RedisStores {
    /// Sessions.
    pub sessions: Arc<RedisSessions>,
    /// Revocations.
    pub revocations: Arc<RedisRevocations>,
    /// Login-failure counters.
    pub limits: Arc<RedisLimits>,
    /// The second factor's state.
    pub otp: Arc<RedisOtp>,
}

/// The connection URL with credentials and RESP3 (the password never leaves this function but
/// inside the client).
fn client(cfg: &RedisConfig) -> Result<redis::Client, String> {
    let mut url = cfg.url.clone();
    if let Some(u) = &cfg.username {
        url.set_username(u)
            .map_err(|_| "store.username cannot be used".to_string())?;
    }
    if let Some(p) = &cfg.password {
        if cfg.username.is_none() {
            url.set_username("default")
                .map_err(|_| "store.url cannot carry a username".to_string())?;
        }
        url.set_password(Some(p.expose()))
            .map_err(|_| "store.password cannot be used".to_string())?;
    }
    url.set_query(Some("protocol=resp3"));
    match &cfg.tls {
        // rediss://: the trust anchors (ca_file, else the system's) and the client certificate
        // are given once here; every connection (commands, tracking, reconnects) uses them.
        Some(t) => redis::Client::build_with_tls(
            url.as_str(),
            redis::TlsCertificates {
                client_tls: t.client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.expose().as_bytes().to_vec(),
                }),
                root_cert: t.ca_pem.clone(),
            },
        ),
        None => redis::Client::open(url.as_str()),
    }
    .map_err(|e| format!("store.url: {e}"))
}

/// Opens the Redis stores and starts their background tasks (connection, invalidations,
/// heartbeat, queued writes) on the current runtime. Never fails because Redis is down: the
/// stores answer "unavailable" until it is reachable.
pub fn open(cfg: &RedisConfig, auth: &crate::config::AuthConfig) -> Result<RedisStores, String> {
    let client = client(cfg)?;
    let (tx, rx) = tokio::sync::mpsc::channel(WRITE_QUEUE);
    let link = Arc::new(Link {
        prefix: cfg.key_prefix.clone(),
        cmd: ArcSwapOption::empty(),
        started: Instant::now(),
        last_beat: AtomicU64::new(0),
        tracking: AtomicBool::new(false),
        resync: tokio::sync::Notify::new(),
        timeouts: AtomicU64::new(0),
        reported_up: AtomicBool::new(true),
        writes: tx,
        writes_dropped: AtomicU64::new(0),
    });
    let sessions = Arc::new(RedisSessions {
        link: link.clone(),
        l1: DashMap::with_hasher(foldhash::fast::RandomState::default()),
        inflight: Mutex::new(HashMap::new()),
        dirty: DashMap::with_hasher(foldhash::fast::RandomState::default()),
        flushes: AtomicU64::new(0),
        idle_ms: AtomicU64::new(auth.idle_timeout.as_millis() as u64),
        lifetime_ms: AtomicU64::new(auth.max_lifetime.as_millis() as u64),
        no_l1: std::env::var_os("AUTHGATE_BENCH_REDIS_NO_L1").is_some_and(|v| v == "1"),
    });
    if sessions.no_l1 {
        tracing::warn!("AUTHGATE_BENCH_REDIS_NO_L1=1: every request reads its session from Redis (a benchmark baseline, not for production)");
    }
    let revocations = Arc::new(RedisRevocations {
        link: link.clone(),
        replica: Revocations::new(auth.max_sessions),
        loaded: AtomicBool::new(false),
        max_lifetime_ms: AtomicU64::new(auth.max_lifetime.as_millis() as u64),
    });
    let limits = Arc::new(RedisLimits {
        link: link.clone(),
        local: LoginLimiter::new(auth.into()),
        limits: Mutex::new(auth.into()),
    });
    let otp = Arc::new(RedisOtp {
        link: link.clone(),
        per_minute: std::sync::atomic::AtomicU32::new(auth.otp_failures_per_minute),
    });
    tokio::spawn(writer(link.clone(), rx));
    tokio::spawn(track(client, sessions.clone(), revocations.clone()));
    Ok(RedisStores {
        sessions,
        revocations,
        limits,
        otp,
    })
}

/// Sends queued writes (touches, failure counts) in order.
async fn writer(link: Arc<Link>, mut rx: tokio::sync::mpsc::Receiver<redis::Pipeline>) {
    while let Some(p) = rx.recv().await {
        let _ = link.run::<()>(&p, WRITE_TIMEOUT).await;
    }
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(WRITE_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200))
}

/// Keeps the command connection and the tracking connection up; applies invalidations; beats.
async fn track(client: redis::Client, sessions: Arc<RedisSessions>, revs: Arc<RedisRevocations>) {
    let link = sessions.link.clone();
    let mut backoff = Duration::from_millis(50);
    let mut warned = false;
    loop {
        if link.cmd.load().is_none() {
            match ConnectionManager::new_with_config(client.clone(), manager_config()).await {
                Ok(c) => link.cmd.store(Some(Arc::new(c))),
                Err(e) => {
                    link.report(false, &e.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PushInfo>();
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(TRUST_BOUND))
            .set_push_sender(move |p: PushInfo| tx.send(p));
        let mut trk = match client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                link.report(false, &e.to_string());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let on: redis::RedisResult<()> = redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(link.key("s:", ""))
            .arg("PREFIX")
            .arg(link.key("r:", ""))
            .query_async(&mut trk)
            .await;
        if let Err(e) = on {
            link.report(false, &e.to_string());
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        }
        // What L1 holds was not vouched for by this connection: start empty, reload the
        // revocations, and only then trust it. A resync asked for meanwhile (a revocation read
        // that failed) is served by this reload.
        sessions.flush();
        while link.resync_pending() {}
        if let Err(e) = revs.reload().await {
            link.report(false, &e.to_string());
            tokio::time::sleep(backoff).await;
            continue;
        }
        revs.loaded.store(true, Ordering::Release);
        backoff = Duration::from_millis(50);
        if !warned {
            warned = true;
            warn_about_settings(&link).await;
        }
        link.beat();
        link.tracking.store(true, Ordering::Release);
        link.report(true, "");
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let why = loop {
            tokio::select! {
                _ = beat.tick() => {
                    let ping_cmd = redis::cmd("PING");
                    let ping = ping_cmd.query_async::<String>(&mut trk);
                    match tokio::time::timeout(TRUST_BOUND, ping).await {
                        Ok(Ok(_)) => {
                            link.beat();
                            link.report(true, "");
                        }
                        Ok(Err(e)) if !e.is_timeout() => break e.to_string(),
                        // Stopped or slow: L1 stops being trusted by time alone; silent for
                        // long, the connection is replaced (it may be half open).
                        _ => {
                            link.report(false, "heartbeat not answered");
                            let silent = link.elapsed_ms().saturating_sub(link.last_beat.load(Ordering::Acquire));
                            if silent >= SILENCE_BEFORE_RESET.as_millis() as u64 {
                                link.cmd.store(None);
                                break "heartbeat silent".to_string();
                            }
                        }
                    }
                }
                () = link.resync.notified() => break "resync".to_string(),
                p = rx.recv() => match p {
                    None => break "invalidation channel closed".to_string(),
                    Some(p) => match p.kind {
                        PushKind::Invalidate => invalidate(&sessions, &revs, &p.data),
                        PushKind::Disconnection => break "disconnected".to_string(),
                        _ => {}
                    },
                },
            }
        };
        link.tracking.store(false, Ordering::Release);
        link.report(false, &why);
        sessions.flush();
    }
}

/// Warns (once, at start) about server settings that lose live state: no persistence (a Redis
/// restart logs everyone out and revives revoked tokens) or an evicting `maxmemory-policy` (an
/// evicted revocation silently revives its token). `CONFIG` may be refused by an ACL: then it
/// says so and checks nothing.
async fn warn_about_settings(link: &Link) {
    let mut p = redis::pipe();
    p.cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy");
    // RESP3 answers CONFIG GET with a map (RESP2 with a flat array): read either as a map.
    type Settings = HashMap<String, String>;
    type Pairs = (Settings, Settings, Settings);
    let got: Result<Pairs, StoreError> = link.run(&p, WRITE_TIMEOUT).await;
    let mut p = redis::pipe();
    p.cmd("INFO").arg("server");
    if let Ok((info,)) = link.run::<(String,)>(&p, WRITE_TIMEOUT).await {
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("")
            .trim()
            .to_string();
        let mut parts = version.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) < (6, 2) {
            tracing::error!(redis_version = %version, "redis store: needs Redis 6.2 or newer (CLIENT TRACKING BCAST, SET PXAT)");
        }
    }
    let Ok((aof, save, policy)) = got else {
        tracing::info!("redis store: cannot read the server's settings (CONFIG GET refused?); check persistence and maxmemory-policy yourself");
        return;
    };
    let value = |v: &Settings, k: &str| v.get(k).cloned().unwrap_or_default();
    if value(&aof, "appendonly") != "yes" && value(&save, "save").trim().is_empty() {
        tracing::warn!("redis store: the server persists nothing (appendonly no, no save points): a Redis restart ends every session and forgets every revocation");
    }
    let policy = value(&policy, "maxmemory-policy");
    if policy != "noeviction" {
        tracing::warn!(maxmemory_policy = %policy, "redis store: the server may evict keys when full; an evicted revocation revives its token. Use maxmemory-policy noeviction");
    }
}

/// Applies one invalidation push: drop sessions, re-read revocations (`[Nil]`: everything).
fn invalidate(sessions: &Arc<RedisSessions>, revs: &Arc<RedisRevocations>, data: &[Value]) {
    let link = &sessions.link;
    let keys: Vec<String> = match data.first() {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| redis::from_redis_value_ref::<String>(v).ok())
            .collect(),
        _ => {
            // FLUSHALL/FLUSHDB: nothing cached is known to exist any more.
            sessions.flush();
            return;
        }
    };
    for k in keys {
        let Some(rest) = k.strip_prefix(link.prefix.as_str()) else {
            continue;
        };
        if let Some(hash) = rest.strip_prefix("s:") {
            if let Some(d) = unhex(hash) {
                sessions.forget(&d);
            }
        } else if rest.starts_with("r:") {
            let revs = revs.clone();
            tokio::spawn(async move {
                if revs.apply(&k).await.is_err() {
                    // Could not read what changed: stop vouching, and have the connection task
                    // start over (one reload, not one per failed key).
                    revs.loaded.store(false, Ordering::Release);
                    revs.link.resync.notify_one();
                }
            });
        }
    }
}
