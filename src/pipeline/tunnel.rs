//! Open tunnels (upgraded connections: WebSocket) and the one watcher that ends them.
//!
//! A tunnel outlives the request that opened it, so the request's authentication decision alone
//! would let it run forever: past a logout, a sign-out-everywhere, the session's expiry, the
//! token's revocation, a password change or the user's removal. Every open tunnel is therefore
//! registered here with what opened it (credential, host, path), and one task per gateway
//! re-decides all of them every [`TUNNEL_CHECK_INTERVAL`] against the current snapshot and live
//! state — the same checks a new request gets — closing those that would no longer be let in,
//! and those that carried no byte either way for `server.tunnel_idle_timeout`. Nothing runs per
//! frame: the copy loop only bumps a counter.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::jwt::VerifiedToken;
use crate::auth::session::unix_now;
use crate::auth::{jwt_user, session_user};
use crate::config::AuthMode;
use crate::state::{Live, Runtime};

/// How often every open tunnel is re-checked: the longest a tunnel outlives its credential.
pub const TUNNEL_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The credential a tunnel was opened with.
pub enum TunnelCredential {
    /// A public route: nobody logged in.
    Anonymous,
    /// A session cookie's value (a bearer secret: never printed, see the `Debug` impl).
    Session(String),
    /// A verified JWT from the cookie (renewed by the browser's requests, so the tunnel is
    /// bound to its login session rather than to this token's `exp`).
    Jwt(Arc<VerifiedToken>),
    /// A verified JWT from `Authorization: Bearer` (never renewed: the tunnel ends with its
    /// `exp`).
    Bearer(Arc<VerifiedToken>),
}

impl std::fmt::Debug for TunnelCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TunnelCredential::Anonymous => "Anonymous",
            TunnelCredential::Session(_) => "Session([redacted])",
            TunnelCredential::Jwt(_) => "Jwt([redacted])",
            TunnelCredential::Bearer(_) => "Bearer([redacted])",
        })
    }
}

/// What a tunnel is re-decided on: who opened it, and where (the request's host and normalised
/// path, as routing saw them).
#[derive(Debug)]
pub struct TunnelScope {
    /// The credential.
    pub credential: TunnelCredential,
    /// The request's host (no port), if it had one.
    pub host: Option<String>,
    /// The normalised request path.
    pub path: String,
    /// The request method (the rules may look at it).
    pub method: http::Method,
    /// The client address as resolved through `trusted_proxies` (the rules may look at it).
    pub client: std::net::IpAddr,
}

/// One open tunnel.
struct Entry {
    scope: TunnelScope,
    /// Bytes read from the client so far.
    from_client: Arc<AtomicU64>,
    /// Bytes read from the upstream so far.
    from_upstream: Arc<AtomicU64>,
    close: CancellationToken,
    /// The watcher's own: both counters at the last check, and when either last changed.
    seen: Mutex<Seen>,
}

/// What the watcher saw of a tunnel at its last check.
struct Seen {
    from_client: u64,
    from_upstream: u64,
    changed: Instant,
}

/// Every open tunnel, and the tasks copying their bytes (waited for on shutdown).
#[derive(Default)]
pub struct Tunnels {
    tracker: TaskTracker,
    open: Mutex<HashMap<u64, Arc<Entry>>>,
    next: AtomicU64,
}

impl Tunnels {
    /// No tunnels yet.
    pub fn new() -> Tunnels {
        Tunnels::default()
    }

    /// Starts the tunnel between the client's and the upstream's upgraded connections once both
    /// are ready, registered under `scope` until it ends; `permit` is its connection slot.
    pub fn open(
        self: &Arc<Self>,
        scope: TunnelScope,
        client: OnUpgrade,
        upstream: OnUpgrade,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            scope,
            from_client: Arc::new(AtomicU64::new(0)),
            from_upstream: Arc::new(AtomicU64::new(0)),
            close: CancellationToken::new(),
            seen: Mutex::new(Seen {
                from_client: 0,
                from_upstream: 0,
                changed: Instant::now(),
            }),
        });
        if let Ok(mut open) = self.open.lock() {
            open.insert(id, entry.clone());
        }
        let registry = Arc::clone(self);
        self.tracker.spawn(async move {
            let _permit = permit;
            let _registered = Registered { registry, id };
            let run = async {
                match tokio::try_join!(client, upstream) {
                    Ok((c, u)) => {
                        let mut c = Counted::new(TokioIo::new(c), entry.from_client.clone());
                        let mut u = Counted::new(TokioIo::new(u), entry.from_upstream.clone());
                        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                            tracing::debug!(error = %e, "tunnel closed with error");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            };
            tokio::select! {
                () = run => {}
                // Dropping both connections closes them (TCP FIN to client and upstream).
                () = entry.close.cancelled() => {}
            }
        });
    }

    /// Number of open tunnels.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Marks the set closed (shutdown): [`Tunnels::wait`] then ends when the last one does.
    pub fn close(&self) {
        self.tracker.close();
    }

    /// Closes every open tunnel now (the shutdown grace period is over).
    pub fn close_all(&self) {
        if let Ok(open) = self.open.lock() {
            for e in open.values() {
                e.close.cancel();
            }
        }
    }

    /// Waits until every tunnel has ended (after [`Tunnels::close`]).
    pub async fn wait(&self) {
        self.tracker.wait().await
    }

    /// Loads the sessions of open tunnels that a remote store's cache does not hold (after a
    /// logout elsewhere, a reconnect), so that [`Tunnels::check`] judges them on what the store
    /// says rather than keeping them open as "unavailable". Bounded by the store's fetch timeout.
    pub async fn prefetch(&self, live: &Live) {
        if !live.remote {
            return;
        }
        let cookies: Vec<String> = match self.open.lock() {
            Ok(open) => open
                .values()
                .filter_map(|e| match &e.scope.credential {
                    TunnelCredential::Session(c) if live.sessions.needs_fetch(c) => Some(c.clone()),
                    _ => None,
                })
                .collect(),
            Err(_) => return,
        };
        let fetches = cookies.iter().map(|c| live.sessions.fetch(c));
        futures_util::future::join_all(fetches).await;
    }

    /// One pass of the watcher: closes every tunnel whose opener would be refused now, or that
    /// has been silent for `server.tunnel_idle_timeout`. Returns how many it closed.
    pub fn check(&self, rt: &Runtime, live: &Live) -> usize {
        let entries: Vec<Arc<Entry>> = match self.open.lock() {
            Ok(open) => open.values().cloned().collect(),
            Err(_) => return 0,
        };
        let idle_limit = rt.config.server.tunnel_idle_timeout;
        let now = Instant::now();
        let mut closed = 0;
        for e in entries {
            if e.close.is_cancelled() {
                continue;
            }
            let from_client = e.from_client.load(Ordering::Relaxed);
            let from_upstream = e.from_upstream.load(Ordering::Relaxed);
            let (client_active, idle_for) = match e.seen.lock() {
                Ok(mut seen) => {
                    let client_active = seen.from_client != from_client;
                    if client_active || seen.from_upstream != from_upstream {
                        *seen = Seen {
                            from_client,
                            from_upstream,
                            changed: now,
                        };
                    }
                    (client_active, now.saturating_duration_since(seen.changed))
                }
                Err(_) => (false, Duration::MAX),
            };
            let verdict = if idle_for >= idle_limit {
                Some("idle")
            } else if !still_allowed(rt, live, &e.scope, client_active) {
                Some("credential no longer valid")
            } else {
                None
            };
            if let Some(why) = verdict {
                tracing::info!(reason = why, path = %e.scope.path, "closing tunnel");
                e.close.cancel();
                closed += 1;
            }
        }
        closed
    }
}

/// Whether the request that opened a tunnel would be let through now: its route (found again in
/// the current snapshot) is public, or its credential still authenticates a user the route
/// allows. A tunnel whose client sent something since the last check counts as use of its
/// session (the idle timer is refreshed); one that only receives (a dashboard pushing updates to
/// an unattended tab) does not, so the session's idle limit still ends it.
fn still_allowed(rt: &Runtime, live: &Live, scope: &TunnelScope, active: bool) -> bool {
    let Some(route) = rt.router.find(scope.host.as_deref(), &scope.path) else {
        return false;
    };
    let facts = crate::policy::Facts {
        method: &scope.method,
        path: &scope.path,
        client: scope.client,
        preflight: false,
    };
    let (allow_groups, allow_users) = match route.config.policy.decide(&facts).1 {
        crate::policy::Verdict::Public => return true,
        crate::policy::Verdict::Deny | crate::policy::Verdict::Malformed => return false,
        // The level (second factor, login age) was checked when the tunnel opened.
        crate::policy::Verdict::Authenticate {
            allow_groups,
            allow_users,
            ..
        } => (allow_groups, allow_users),
    };
    let user = match (&scope.credential, rt.config.auth.mode) {
        (TunnelCredential::Session(cookie), AuthMode::Session) => {
            let s = if active {
                live.sessions.get(cookie)
            } else {
                live.sessions.peek(cookie)
            };
            match s {
                Ok(s) => s.and_then(|s| session_user(rt, &s)),
                // An outage of the store is not a logout: the tunnel stays until it can tell.
                Err(_) => return true,
            }
        }
        (TunnelCredential::Jwt(vt) | TunnelCredential::Bearer(vt), AuthMode::Jwt) => {
            // A cookie token's own `exp` is not the limit: the browser's requests renew it, which
            // a tunnel does not make. Its login session is: revocations, password, user,
            // max_lifetime. A bearer token is never renewed: its `exp` (with the leeway) ends it.
            let now = unix_now();
            let max = rt.config.auth.max_lifetime.as_secs();
            if now.saturating_sub(vt.auth_time) > max {
                return false;
            }
            if let TunnelCredential::Bearer(_) = &scope.credential {
                let leeway = rt.jwt_leeway_secs();
                if now > vt.exp.saturating_add(leeway) {
                    return false;
                }
            }
            match jwt_user(rt, live, vt) {
                Ok(u) => u,
                Err(_) => return true,
            }
        }
        // Anonymous on a route that now needs a login, or a credential of the other mode.
        _ => None,
    };
    user.is_some_and(|u| crate::policy::admits(allow_users, allow_groups, &u.username, &u.groups))
}

/// Re-checks every open tunnel every [`TUNNEL_CHECK_INTERVAL`] until aborted.
pub async fn watch(shared: Arc<crate::state::Shared>) {
    let mut every = tokio::time::interval(TUNNEL_CHECK_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if shared.tunnels.is_empty() {
            continue;
        }
        let rt = shared.runtime.load();
        shared.tunnels.prefetch(&shared.live).await;
        shared.tunnels.check(&rt, &shared.live);
    }
}

/// Unregisters a tunnel when its task ends, however it ends.
struct Registered {
    registry: Arc<Tunnels>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut open) = self.registry.open.lock() {
            open.remove(&self.id);
        }
    }
}

pin_project_lite::pin_project! {
    /// An I/O object that adds the bytes read from it to a shared counter.
    struct Counted<T> {
        #[pin]
        io: T,
        traffic: Arc<AtomicU64>,
    }
}

impl<T> Counted<T> {
    fn new(io: T, traffic: Arc<AtomicU64>) -> Self {
        Counted { io, traffic }
    }
}

impl<T: AsyncRead> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.io.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.traffic.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
