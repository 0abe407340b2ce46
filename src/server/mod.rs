//! Listeners, the accept loop, TLS handshakes, connection limits, graceful shutdown and reload.

mod driver;
pub mod tls;
pub mod watcher;

pub use driver::ServedBody;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::pipeline::{handle, ConnInfo, Served};
use crate::state::{Runtime, Shared};
use crate::telemetry::access::{AccessRecord, LoggedPath};
use crate::telemetry::sink::Entry;
use driver::{Activity, Busy, Drain, Driver, Ended, Member};

/// A running gateway.
pub struct Gateway {
    http_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Gateway {
    /// Builds the snapshot, binds the listeners and starts serving on the current runtime.
    pub async fn start(config: Config) -> anyhow::Result<Gateway> {
        Gateway::start_with_workers(config, Vec::new()).await
    }

    /// Like [`Gateway::start`], and deals accepted connections out round robin between the
    /// current runtime and `workers` (single-threaded runtimes, see [`WorkerRuntimes`]); a
    /// connection then stays on one thread, and so does the upstream connection it opens and
    /// keeps (pooled connections are preferably handed out on the thread that pooled them).
    pub async fn start_with_workers(
        config: Config,
        workers: Vec<tokio::runtime::Handle>,
    ) -> anyhow::Result<Gateway> {
        tls::install_crypto_provider();
        let telemetry = crate::telemetry::Telemetry::new(&config).map_err(anyhow::Error::msg)?;
        let runtime = Runtime::build_with(config, telemetry).map_err(|e| anyhow::anyhow!("{e}"))?;
        runtime.oidc.warm_up();
        let cfg = runtime.config.clone();
        let tls_cfg = runtime.tls.clone();
        let live = crate::state::Live::open(&runtime.config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let shared = Shared::with_live(runtime, live);

        let mut listeners = Vec::new();
        let mut http_addr = None;
        let mut https_addr = None;
        if let Some(a) = cfg.server.listen {
            let l = TcpListener::bind(a)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {a} (server.listen): {e}"))?;
            http_addr = Some(l.local_addr()?);
            listeners.push((l, None));
        }
        if let (Some(t), Some(tc)) = (&cfg.server.tls, tls_cfg) {
            let l = TcpListener::bind(t.listen).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on {} (server.tls.listen): {e}", t.listen)
            })?;
            https_addr = Some(l.local_addr()?);
            listeners.push((
                l,
                Some((tokio_rustls::TlsAcceptor::from(tc), t.handshake_timeout)),
            ));
        }

        let mut metrics_addr = None;
        let mut metrics_listener = None;
        if let Some(a) = cfg.metrics.listen {
            let l = TcpListener::bind(a)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {a} (metrics.listen): {e}"))?;
            metrics_addr = Some(l.local_addr()?);
            metrics_listener = Some(l);
        }

        let (stop, stop_rx) = watch::channel(false);
        if let Some(l) = metrics_listener {
            tokio::spawn(crate::telemetry::server::serve(
                l,
                shared.clone(),
                cfg.metrics.path.clone(),
                stop_rx.clone(),
            ));
        }
        let limit = shared.conn_limit.clone();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // No hyper header-read timer: `server.header_read_timeout` is enforced per connection by
        // `driver::Driver` (one timer per connection, HTTP/1 and HTTP/2 alike).
        builder
            .http1()
            .max_buf_size(cfg.server.max_header_bytes.max(8192))
            // One flattened write per response head+chunk: cheaper than writev here (measured
            // with benches/load: ~0.4 µs of user and kernel time per request).
            .writev(false)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(cfg.server.max_header_bytes as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let builder = Arc::new(builder);

        let workers: Arc<[tokio::runtime::Handle]> = workers.into();
        let drain = Drain::new();
        let mut loops = Vec::new();
        for (l, tls) in listeners {
            loops.push(tokio::spawn(accept_loop(
                l,
                tls,
                shared.clone(),
                builder.clone(),
                limit.clone(),
                stop_rx.clone(),
                cfg.server.header_read_timeout,
                workers.clone(),
                drain.clone(),
            )));
        }
        shared.ready.store(true, Ordering::Release);
        let grace = cfg.server.shutdown_grace;
        let sh = shared.clone();
        let mut stop_wait = stop_rx.clone();
        let sweeper = tokio::spawn(sweep_live_state(shared.clone()));
        let tunnel_watch = tokio::spawn(crate::pipeline::tunnel::watch(shared.clone()));
        let task = tokio::spawn(async move {
            stopped(&mut stop_wait).await;
            sweeper.abort();
            sh.ready.store(false, Ordering::Release);
            let deadline = Instant::now() + grace;
            for l in loops {
                let _ = l.await;
            }
            drain.begin();
            sh.tunnels.close();
            if tokio::time::timeout(grace, drain.wait()).await.is_err() {
                tracing::warn!("grace period over: closing remaining connections");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, sh.tunnels.wait()).await.is_err() {
                tracing::warn!(
                    open = sh.tunnels.len(),
                    "grace period over: closing remaining tunnels"
                );
                sh.tunnels.close_all();
            }
            tunnel_watch.abort();
            // Lines queued so far reach their destination before the process ends.
            let telemetry = sh.runtime.load().telemetry.clone();
            let _ =
                tokio::task::spawn_blocking(move || telemetry.flush(Duration::from_secs(2))).await;
        });
        if let Some(a) = http_addr {
            tracing::info!(addr = %a, "listening (http)");
        }
        if let Some(a) = https_addr {
            tracing::info!(addr = %a, "listening (https)");
        }
        if let Some(a) = metrics_addr {
            tracing::info!(addr = %a, path = %cfg.metrics.path, "listening (metrics)");
            if !a.ip().is_loopback() {
                tracing::warn!(addr = %a, "the metrics listener is not on loopback: anyone who reaches it reads route names and login counts; restrict it with a firewall");
            }
        }
        Ok(Gateway {
            http_addr,
            https_addr,
            metrics_addr,
            shared,
            stop,
            task,
        })
    }

    /// Bound address of the plain HTTP listener.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Bound address of the HTTPS listener.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// Bound address of the metrics listener (`[metrics] listen`), if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Waits (at most `timeout`) until the access-log lines and audit events queued so far are
    /// written (tests read the streams after it).
    pub async fn flush_telemetry(&self, timeout: Duration) -> bool {
        let telemetry = self.shared.runtime.load().telemetry.clone();
        tokio::task::spawn_blocking(move || telemetry.flush(timeout))
            .await
            .unwrap_or(false)
    }

    /// Shared state (tests and benches peek at live state).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Applies edits of the config file and the users file without SIGHUP, until shutdown
    /// (see [`watcher`]). Fails when the watch cannot be set up (e.g. the inotify limit).
    pub async fn watch_config(&self) -> std::io::Result<watcher::Watcher> {
        watcher::Watcher::start(self.shared.clone(), self.stop.subscribe()).await
    }

    /// Swaps in a new snapshot built from `config`; on error the old one stays. Sessions and
    /// revocations are kept and follow the new timeouts and limits. Listener addresses, TLS
    /// listeners and the number of hashing threads need a restart.
    pub fn reload(&self, config: Config) -> Result<(), crate::config::ConfigErrors> {
        reload(&self.shared, config)
    }

    /// Starts a graceful shutdown without waiting.
    pub fn begin_shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops accepting, lets in-flight requests and tunnels finish within the grace period.
    pub async fn shutdown(self) {
        self.begin_shutdown();
        let _ = self.task.await;
    }

    /// Waits until a shutdown begun elsewhere has finished.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Swaps in a new snapshot built from `config` (see [`Gateway::reload`]); callable from any
/// thread. The old snapshot's upstream pools are retired: their idle connections close.
pub fn reload(shared: &Shared, config: Config) -> Result<(), crate::config::ConfigErrors> {
    let _one_at_a_time = shared.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
    reload_locked(shared, config)
}

/// [`reload`] with the reload lock held.
fn reload_locked(shared: &Shared, config: Config) -> Result<(), crate::config::ConfigErrors> {
    let telemetry = shared.runtime.load().telemetry.clone();
    let mut rt = match Runtime::build_with(config, telemetry.clone()) {
        Ok(rt) => rt,
        Err(e) => {
            reload_failed(&telemetry, &e);
            return Err(e);
        }
    };
    telemetry.metrics.reload(true);
    // The HTTPS listener keeps the certificate it started with (a restart loads a new one).
    rt.tls_not_after = shared.runtime.load().tls_not_after;
    audit_reload(&telemetry, &shared.runtime.load(), &rt);
    // Live state keeps its contents but follows the new limits.
    let a = &rt.config.auth;
    let live = &shared.live;
    live.sessions
        .set_limits(a.idle_timeout, a.max_lifetime, a.max_sessions);
    live.limiter.set_limits(a.into());
    live.otp.set_limit(a.otp_failures_per_minute);
    let old = shared.runtime.swap(Arc::new(rt));
    for pool in &old.upstreams {
        pool.retire();
    }
    shared.live.token_cache.invalidate_all();
    tracing::info!("configuration reloaded");
    Ok(())
}

/// Counts and audits a reload that did not apply.
fn reload_failed(telemetry: &crate::telemetry::Telemetry, e: &crate::config::ConfigErrors) {
    use crate::telemetry::audit::{AuditEvent, AuditKind};
    telemetry.metrics.reload(false);
    let mut ev = AuditEvent::new(AuditKind::ConfigReload, "failure");
    ev.reason = Some("invalid_configuration");
    ev.detail = Some(format!("{} problem(s)", e.0.len()));
    telemetry.audit.emit(ev);
}

/// Audits an applied reload, and the change of users it brings, if any.
fn audit_reload(telemetry: &crate::telemetry::Telemetry, old: &Runtime, new: &Runtime) {
    use crate::telemetry::audit::{AuditEvent, AuditKind};
    let mut ev = AuditEvent::new(AuditKind::ConfigReload, "success");
    ev.detail = Some(format!(
        "{} routes, {} users",
        new.router.routes().len(),
        new.users.len()
    ));
    telemetry.audit.emit(ev);
    type Fingerprint = (u64, Vec<String>);
    let names = |rt: &Runtime| -> std::collections::BTreeMap<Arc<str>, Fingerprint> {
        rt.users
            .iter()
            .map(|u| (u.username.clone(), (u.password_version, u.groups.clone())))
            .collect()
    };
    let (before, after) = (names(old), names(new));
    if before != after {
        let added = after.keys().filter(|k| !before.contains_key(*k)).count();
        let removed = before.keys().filter(|k| !after.contains_key(*k)).count();
        let changed = after
            .iter()
            .filter(|(k, v)| before.get(*k).is_some_and(|b| b != *v))
            .count();
        let mut ev = AuditEvent::new(AuditKind::UsersReload, "success");
        ev.detail = Some(format!(
            "{added} added, {removed} removed, {changed} with a new password or groups"
        ));
        telemetry.audit.emit(ev);
    }
}

/// Reads `path` again and swaps in the snapshot it describes; the one reload path behind
/// SIGHUP and the file watcher. Blocking (file reads, key parsing): call it off the async
/// workers. Every problem is logged on its own line (file, line, key); the old snapshot stays.
pub fn reload_from_file(
    shared: &Shared,
    path: &std::path::Path,
) -> Result<(), crate::config::ConfigErrors> {
    // One reload at a time, file read included: a slow SIGHUP reload finishing after a later
    // watched one would otherwise put the older file back.
    let _one_at_a_time = shared.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
    let outcome = match Config::load(path) {
        Ok(config) => reload_locked(shared, config),
        Err(e) => {
            reload_failed(&shared.runtime.load().telemetry, &e);
            Err(e)
        }
    };
    if let Err(errs) = &outcome {
        for e in &errs.0 {
            tracing::error!(file = %e.file.display(), line = e.line, key = %e.key, problem = %e.message, "configuration error");
        }
        tracing::error!(
            problems = errs.0.len(),
            "reload failed; keeping the old configuration"
        );
    }
    outcome
}

type Tls = Option<(tokio_rustls::TlsAcceptor, Duration)>;

/// Frees expired live state and idle upstream connections past their timeout periodically, off
/// the async workers (a sweep of 1M sessions takes tens of milliseconds). Reads never depend on
/// it: expiry is checked on every lookup.
async fn sweep_live_state(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(crate::auth::session::SWEEP_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let sh = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let swept = sh.live.sessions.sweep();
            let rt = sh.runtime.load();
            for pool in &rt.upstreams {
                pool.sweep();
            }
            let lifetime = rt.config.auth.max_lifetime.as_millis() as u64;
            sh.live
                .revocations
                .prune_users(crate::auth::session::unix_now_ms().saturating_sub(lifetime));
            if swept > 0 {
                tracing::debug!(swept, "expired sessions freed");
            }
        })
        .await;
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Single-threaded tokio runtimes on their own threads, one per extra worker
/// (`server.runtime = "thread-per-core"`): each serves the connections dealt to it from start to
/// end, with its own I/O driver and timers, so a request never wakes another thread.
pub struct WorkerRuntimes {
    handles: Vec<tokio::runtime::Handle>,
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl WorkerRuntimes {
    /// Starts `n` worker threads, each running a current-thread runtime until [`Self::stop`].
    pub fn spawn(n: usize) -> std::io::Result<WorkerRuntimes> {
        let (stop, stop_rx) = watch::channel(false);
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let mut stop_rx = stop_rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ag-worker-{}", i + 1)) // 15-byte comm limit
                    .spawn(move || {
                        rt.block_on(stopped(&mut stop_rx));
                    })?,
            );
        }
        Ok(WorkerRuntimes {
            handles,
            stop,
            threads,
        })
    }

    /// Handles to spawn onto (for [`Gateway::start_with_workers`]).
    pub fn handles(&self) -> Vec<tokio::runtime::Handle> {
        self.handles.clone()
    }

    /// Stops the runtimes (call after the gateway's shutdown: what is still running is dropped)
    /// and joins their threads.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Accepts until told to stop; the connections it started are drained through `drain`.
#[allow(clippy::too_many_arguments)] // one call site: Gateway::start hands over what it built
async fn accept_loop(
    l: TcpListener,
    tls: Tls,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    idle: Duration,
    workers: Arc<[tokio::runtime::Handle]>,
    drain: Arc<Drain>,
) {
    // Round robin over this runtime (0) and the workers (1..).
    let mut turn = 0usize;
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stopped(&mut stop) => return,
        };
        let (stream, peer) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let _ = stream.set_nodelay(true);
        let conn = Accepted {
            peer,
            permit,
            tls: tls.clone(),
            shared: shared.clone(),
            builder: builder.clone(),
            member: drain.member(),
            idle,
        };
        let worker = turn % (workers.len() + 1);
        turn = turn.wrapping_add(1);
        if worker == 0 {
            tokio::spawn(serve(stream, conn));
            continue;
        }
        // The socket moves to the worker's I/O driver, so its events wake that thread only.
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "cannot hand the connection to a worker");
                continue;
            }
        };
        workers[worker - 1].spawn(async move {
            match TcpStream::from_std(std_stream) {
                Ok(stream) => serve(stream, conn).await,
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "worker cannot take the connection")
                }
            }
        });
    }
}

/// An accepted connection and everything serving it needs.
struct Accepted {
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    tls: Tls,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    member: Member,
    idle: Duration,
}

/// TLS handshake (on an HTTPS listener), then HTTP on the connection.
async fn serve(stream: TcpStream, a: Accepted) {
    let Accepted {
        peer,
        permit,
        tls,
        shared,
        builder,
        member,
        idle,
    } = a;
    match tls {
        None => {
            let conn = ConnInfo::new(peer, false).with_permit(permit);
            serve_io(TokioIo::new(stream), conn, shared, builder, member, idle).await
        }
        Some((acceptor, timeout)) => {
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => {
                    let conn = ConnInfo::new(peer, true).with_permit(permit);
                    serve_io(TokioIo::new(s), conn, shared, builder, member, idle).await
                }
                Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "tls handshake failed"),
                Err(_) => tracing::debug!(peer = %peer, "tls handshake timed out"),
            }
        }
    }
}

/// Serves one connection under the idle bound (`server.header_read_timeout`, see
/// [`driver`]): a connection without a request in flight for that long is closed — also one that
/// never completes a first request head, before protocol detection, so a client sending nothing or
/// half an HTTP/2 preface cannot hold a connection slot.
async fn serve_io<I>(
    io: I,
    conn: ConnInfo,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    member: Member,
    idle: Duration,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let per_req = activity.clone();
    let conn = Arc::new(conn);
    let per_conn = conn.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        logged(shared.clone(), req, per_conn.clone(), per_req.begin())
    });
    let c = builder.serve_connection_with_upgrades(io, svc).into_owned();
    match Driver::new(c, activity, idle, member).await {
        Ended::Done(Ok(())) => {}
        Ended::Done(Err(e)) => tracing::debug!(peer = %conn.peer, error = %e, "connection error"),
        Ended::Idle {
            before_first_request: true,
        } => tracing::debug!(peer = %conn.peer, "no request within header_read_timeout: closing"),
        Ended::Idle {
            before_first_request: false,
        } => tracing::debug!(peer = %conn.peer, "idle past header_read_timeout: closed"),
    }
}

/// A request id: 16 hex digits, a per-process random prefix then a counter (no formatting
/// machinery on the hot path).
fn request_id(prefix: u32, seq: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let v = (u64::from(prefix) << 32) ^ seq;
    let mut buf = [0u8; 16];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    buf
}

/// The request id as a header value: its bytes live in one reference-counted allocation, so the
/// copies for the upstream request and the response are reference counts (a value built from a
/// `Vec` would allocate again when first cloned).
fn request_id_value(id: [u8; 16]) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id))
        .expect("hex digits are a valid header value")
}

/// Decrements the in-flight gauge when dropped.
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Wraps the pipeline with the request's id, its metrics and its access-log record (never a
/// secret: no query string, no header values). Returns hyper's service result itself (no
/// wrapping `async` block: each layer of futures is one more copy of the request's state).
/// `busy` keeps the connection marked busy until the response body has been sent.
async fn logged(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    busy: Busy,
) -> Result<Response<ServedBody>, Infallible> {
    let rt = shared.runtime.load_full();
    let start = Instant::now();
    let metrics = &rt.telemetry.metrics;
    // Decremented when the request ends, or when its future is dropped (a reset stream).
    let in_flight = metrics.enabled.then(|| {
        metrics.in_flight.inc();
        InFlight(&metrics.in_flight)
    });
    let seq = shared.request_seq.fetch_add(1, Ordering::Relaxed);
    let rid = request_id(shared.request_prefix, seq);
    // What the record needs from the request, taken before the pipeline consumes it.
    let access = rt.config.log.access_log.then(|| {
        (
            req.method().clone(),
            LoggedPath::new(req.uri().path()),
            crate::telemetry::trace::TraceId::of(req.headers()),
        )
    });
    let version = req.version();
    let rid_value = request_id_value(rid);
    let mut served = Served::default();
    let mut resp = handle(shared, &rt, req, &conn, rid_value.clone(), &mut served).await;
    resp.headers_mut()
        .insert(crate::pipeline::headers::X_REQUEST_ID.clone(), rid_value);
    let took = start.elapsed();
    drop(in_flight);
    let status = resp.status().as_u16();
    let route = served.metrics(metrics);
    route.request(status, took);
    if let Some((method, path, trace_id)) = access {
        rt.telemetry.access.push(Entry::Access(
            AccessRecord {
                time: std::time::SystemTime::now(),
                request_id: rid,
                client: conn.peer,
                method,
                path,
                version,
                route: Some(route.name.clone()),
                status,
                latency_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                bytes: resp.body().size_hint().exact(),
                trace_id,
            },
            rt.log_format,
        ));
    }
    Ok(resp.map(|body| ServedBody::new(body, busy)))
}
