//! Upstream connections: HTTP/1.1 over TCP or TLS, pooled per upstream.
//!
//! Built on `hyper::client::conn::http1` rather than hyper-util's legacy client: that pool costs a
//! mutex, a key clone and a spawned readiness task per request. Here an HTTP/1 client connection
//! keeps the upstream connection it last used (its "sticky" connection, no lock, no search), and
//! hands it to the shared idle pool when it closes; other requests (HTTP/2 streams, a client's
//! first request) check one out of the pool or open a new one.
//!
//! Safety of reuse: only a connection whose previous exchange is complete (`is_ready`) is reused;
//! a pooled connection the upstream has closed meanwhile makes the request come back unsent
//! (`try_send_request`), which is then retried once on a fresh connection. A request that was
//! written into a connection that then turned out closed or reset (the upstream's keep-alive
//! timeout racing with it) is sent once more only if it has no body and is a GET, HEAD or
//! OPTIONS; anything else gets the error (502).
//!
//! Bounds: at most [`POOL_MAX_IDLE`] pooled idle connections and [`POOL_MAX_STICKY`] sticky ones
//! per upstream (past that, a client connection's upstream connection goes back to the pool after
//! each response); an idle client connection is closed by the server after
//! `server.header_read_timeout`, and with it goes its sticky connection.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::Scheme;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// Idle pooled connections close after this: below the 60–75 s keep-alive of common servers
/// (nginx 75 s; Node's 5 s is the exception: it closes first and the request is retried).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connect attempts (TCP and TLS handshake) give up after this (→ 502).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per upstream.
pub const POOL_MAX_IDLE: usize = 512;
/// Client connections per upstream that may each keep an upstream connection between requests.
pub const POOL_MAX_STICKY: usize = 1024;

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// Why forwarding failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (→ 502).
    Connect(String),
    /// The TLS handshake with the upstream failed (→ 502).
    Tls(String),
    /// The exchange failed after connecting (→ 502).
    Exchange(String),
    /// The upstream reset or closed the connection mid-exchange (→ 502).
    Reset(String),
}

impl SendError {
    /// An exchange failure, sorted by what hyper and the kernel said (never by message text).
    fn exchange(e: &hyper::Error) -> SendError {
        let reset = e.is_incomplete_message() || e.is_closed() || {
            let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
            let mut found = false;
            while let Some(c) = cur {
                if let Some(io) = c.downcast_ref::<std::io::Error>() {
                    use std::io::ErrorKind as K;
                    found |= matches!(
                        io.kind(),
                        K::ConnectionReset
                            | K::BrokenPipe
                            | K::ConnectionAborted
                            | K::UnexpectedEof
                    );
                }
                cur = c.source();
            }
            found
        };
        let m = error_chain(e);
        if reset {
            SendError::Reset(m)
        } else {
            SendError::Exchange(m)
        }
    }
}

/// Where an upstream lives and how to reach it, with its idle connections.
pub struct UpstreamPool {
    id: u64,
    /// `host:port` for the TCP connect.
    addr: String,
    /// TLS connector and server name for `https` upstreams.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    idle: Mutex<Vec<Idle>>,
    /// Live [`Sticky`] holders of this pool, and their cap.
    sticky: std::sync::atomic::AtomicUsize,
    max_sticky: usize,
    /// Set when a reload replaced the snapshot owning this pool: nothing is pooled any more.
    retired: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

struct Idle {
    sender: SendRequest<UpBody>,
    since: Instant,
    /// The thread that pooled it (its I/O task runs there): checkouts prefer their own thread's.
    thread: std::thread::ThreadId,
}

/// The upstream connection an HTTP/1 client connection last used (kept in its `ConnInfo`).
/// Dropping it returns the connection to its pool.
pub struct Sticky {
    pool: Arc<UpstreamPool>,
    sender: Option<SendRequest<UpBody>>,
    since: Instant,
}

impl std::fmt::Debug for Sticky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sticky")
            .field("pool", &self.pool.addr)
            .finish()
    }
}

impl Drop for Sticky {
    fn drop(&mut self) {
        self.pool.sticky.fetch_sub(1, Ordering::Relaxed);
        if let Some(s) = self.sender.take() {
            self.pool.put_when_ready(s, Some(self.since));
        }
    }
}

/// Builds the TLS client configuration trusting the public web roots, plus `extra_ca` if given.
pub fn tls_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(p) = extra_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(p)
            .map_err(|e| format!("cannot read {}: {e}", p.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad PEM in {}: {e}", p.display()))?;
        if certs.is_empty() {
            return Err(format!("no certificate in {}", p.display()));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("bad certificate in {}: {e}", p.display()))?;
        }
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

impl UpstreamPool {
    /// A pool for `scheme://authority`; `tls` is required for `https`.
    pub fn new(
        scheme: &Scheme,
        authority: &http::uri::Authority,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<UpstreamPool, String> {
        let https = *scheme == Scheme::HTTPS;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = authority.host();
        let addr = format!("{host}:{port}");
        let tls = if https {
            let cfg = tls.ok_or("https upstream without a TLS configuration")?;
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(bare.to_string())
                .map_err(|e| format!("{host} is not a valid TLS server name: {e}"))?;
            Some((tokio_rustls::TlsConnector::from(cfg), name))
        } else {
            None
        };
        Ok(UpstreamPool {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            addr,
            tls,
            idle: Mutex::new(Vec::new()),
            sticky: std::sync::atomic::AtomicUsize::new(0),
            max_sticky: POOL_MAX_STICKY,
            retired: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Stops pooling and closes the idle connections (the snapshot owning this pool was
    /// replaced by a reload; client connections still holding one of its connections finish
    /// their exchange on it and then let it close).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    /// Number of idle pooled connections (tests and benches).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Sends `req` (origin-form URI, headers final) and returns the response head; the body streams
    /// from the upstream connection. `sticky` is the HTTP/1 client connection's slot (None for
    /// HTTP/2 streams); an upgrade consumes the connection.
    ///
    /// Not itself an `async fn`: every layer of nested futures is one more copy of the state
    /// below it per request (see `send_body`).
    pub fn send<'a>(
        self: &'a Arc<Self>,
        req: Request<Incoming>,
        sticky: Option<&'a Mutex<Option<Sticky>>>,
    ) -> impl std::future::Future<Output = Result<Response<Incoming>, SendError>> + Send + 'a {
        self.send_body(req.map(UpBody::Client), sticky)
    }

    /// [`Self::send`] for any [`UpBody`].
    pub async fn send_body(
        self: &Arc<Self>,
        mut req: Request<UpBody>,
        sticky: Option<&Mutex<Option<Sticky>>>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut reused = sticky
            .and_then(|s| self.take_sticky(s))
            .or_else(|| self.checkout());
        loop {
            let was_reused = reused.is_some();
            let mut sender = match reused.take() {
                Some(s) => s,
                // Boxed: connecting (TCP, TLS handshake) is a large future, and an inline one
                // would be copied with every request's future although it is rarely needed.
                None => Box::pin(self.connect()).await?,
            };
            // A reused connection may have been closed by the upstream just now (its keep-alive
            // timeout, a request limit), before this side saw it: the request is then written
            // into a dead socket. Like nginx and Go, a request without a body and with a method
            // that is safe to repeat is sent once more on a fresh connection; keep its head.
            let replay = (was_reused && replayable(&req)).then(|| head_copy(&req));
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                        self.release(sender, sticky);
                    }
                    return Ok(resp);
                }
                Err(mut e) => match (e.take_message(), replay) {
                    // Never written: once more on a fresh connection.
                    (Some(r), _) if was_reused => req = r,
                    (None, Some(copy)) if worth_replaying(e.error()) => {
                        tracing::debug!(error = %error_chain(e.error()), "reused upstream connection failed: retrying on a new one");
                        req = copy.into_request();
                    }
                    _ => return Err(SendError::exchange(e.error())),
                },
            }
        }
    }

    /// The client connection's sticky upstream connection, if it belongs here and is usable.
    fn take_sticky(self: &Arc<Self>, slot: &Mutex<Option<Sticky>>) -> Option<SendRequest<UpBody>> {
        let mut slot = slot.lock().ok()?;
        let st = slot.as_mut()?;
        if st.pool.id != self.id {
            // Another upstream: give it back to its own pool (which closes it if a reload retired
            // that pool).
            *slot = None;
            return None;
        }
        let usable = st.sender.as_ref().is_some_and(|s| s.is_ready())
            && st.since.elapsed() < POOL_IDLE_TIMEOUT;
        if usable {
            return st.sender.take();
        }
        if st.since.elapsed() >= POOL_IDLE_TIMEOUT {
            // Expired: closed here rather than pooled afresh.
            st.sender = None;
        }
        *slot = None;
        None
    }

    /// Puts the connection back after a response head: into the HTTP/1 client connection's slot,
    /// or into the pool once its response has been read.
    fn release(
        self: &Arc<Self>,
        sender: SendRequest<UpBody>,
        sticky: Option<&Mutex<Option<Sticky>>>,
    ) {
        if let Some(Ok(mut slot)) = sticky.map(|s| s.lock()) {
            match slot.as_mut() {
                Some(st) if st.pool.id == self.id && st.sender.is_none() => {
                    st.sender = Some(sender);
                    st.since = Instant::now();
                    return;
                }
                _ => {
                    if self.sticky.fetch_add(1, Ordering::Relaxed) < self.max_sticky {
                        *slot = Some(Sticky {
                            pool: self.clone(),
                            sender: Some(sender),
                            since: Instant::now(),
                        });
                        return;
                    }
                    self.sticky.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        self.put_when_ready(sender, None);
    }

    /// Pools `sender` now if it is ready (idle since `since`, default now), else once its
    /// current exchange ends.
    fn put_when_ready(self: &Arc<Self>, mut sender: SendRequest<UpBody>, since: Option<Instant>) {
        if sender.is_closed() || self.retired.load(Ordering::Acquire) {
            return;
        }
        if sender.is_ready() {
            self.put(sender, since.unwrap_or_else(Instant::now));
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self.clone();
        handle.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(POOL_IDLE_TIMEOUT, sender.ready()).await {
                pool.put(sender, Instant::now());
            }
        });
    }

    /// Pools a ready connection idle since `since` (closed instead when it already idled too
    /// long, the pool is full, or retired).
    fn put(&self, sender: SendRequest<UpBody>, since: Instant) {
        if since.elapsed() >= POOL_IDLE_TIMEOUT || self.retired.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < POOL_MAX_IDLE {
                idle.push(Idle {
                    sender,
                    since,
                    thread: std::thread::current().id(),
                });
            }
        }
    }

    /// The most recently pooled live connection, preferably one whose I/O runs on this thread
    /// (thread-per-core workers: no cross-thread wake-ups).
    fn checkout(&self) -> Option<SendRequest<UpBody>> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        let usable = |c: &Idle| {
            c.sender.is_ready() && now.saturating_duration_since(c.since) < POOL_IDLE_TIMEOUT
        };
        let me = std::thread::current().id();
        let recent = idle.len().saturating_sub(8)..idle.len();
        if let Some(i) = recent
            .rev()
            .find(|&i| idle[i].thread == me && usable(&idle[i]))
        {
            return Some(idle.remove(i).sender);
        }
        while let Some(c) = idle.pop() {
            if usable(&c) {
                return Some(c.sender);
            }
        }
        None
    }

    /// Drops idle connections that expired or were closed by the upstream.
    pub fn sweep(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|c| !c.sender.is_closed() && c.since.elapsed() < POOL_IDLE_TIMEOUT);
        }
    }

    /// Opens a new connection (TCP, then TLS for https) within CONNECT_TIMEOUT.
    async fn connect(&self) -> Result<SendRequest<UpBody>, SendError> {
        let connect = async {
            let tcp = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| SendError::Connect(format!("connect {}: {e}", self.addr)))?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => handshake(TokioIo::new(tcp))
                    .await
                    .map_err(SendError::Connect),
                Some((connector, name)) => {
                    let tls = connector.connect(name.clone(), tcp).await.map_err(|e| {
                        SendError::Tls(format!("TLS handshake with {}: {e}", self.addr))
                    })?;
                    handshake(TokioIo::new(tls))
                        .await
                        .map_err(SendError::Connect)
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SendError::Connect(format!(
                "connect {}: timed out after {CONNECT_TIMEOUT:?}",
                self.addr
            ))),
        }
    }
}

/// The body sent upstream: the client's, or none (a replayed request).
#[derive(Debug)]
pub enum UpBody {
    /// The client's request body, streamed.
    Client(Incoming),
    /// No body.
    Empty,
}

impl http_body::Body for UpBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Client(b) => std::pin::Pin::new(b).poll_frame(cx),
            UpBody::Empty => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Client(b) => b.is_end_stream(),
            UpBody::Empty => true,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpBody::Client(b) => b.size_hint(),
            UpBody::Empty => http_body::SizeHint::with_exact(0),
        }
    }
}

/// Whether a failure on a reused connection looks like the upstream had closed it (reset,
/// broken pipe, closed before any answer), as opposed to an answer it gave (unparsable, too large).
fn worth_replaying(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return true;
    }
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        if c.is::<std::io::Error>() {
            return true;
        }
        cur = c.source();
    }
    false
}

/// Whether a failed request may be sent again: no body, and a method that is safe to repeat.
fn replayable(req: &Request<UpBody>) -> bool {
    use http::Method;
    matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && http_body::Body::is_end_stream(req.body())
}

/// A copy of a bodiless request head, kept in case it must be replayed. Taken for every GET on
/// a reused connection and almost never used, so it is cheap to take: the headers are copied as
/// bytes into one buffer (`name:value\n`; names never contain ':', values never contain a line
/// break) instead of cloning the header map, which costs a reference count per header.
struct HeadCopy {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: Vec<u8>,
}

fn head_copy(req: &Request<UpBody>) -> HeadCopy {
    let len: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 2)
        .sum();
    let mut headers = Vec::with_capacity(len);
    for (n, v) in req.headers() {
        headers.extend_from_slice(n.as_str().as_bytes());
        headers.push(b':');
        headers.extend_from_slice(v.as_bytes());
        headers.push(b'\n');
    }
    HeadCopy {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers,
    }
}

impl HeadCopy {
    /// The request again, headers in their original order per name.
    fn into_request(self) -> Request<UpBody> {
        let mut req = Request::new(UpBody::Empty);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        let h = req.headers_mut();
        for line in self.headers.split(|&b| b == b'\n') {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue; // the empty piece after the last line break
            };
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(&line[..colon]),
                http::HeaderValue::from_bytes(&line[colon + 1..]),
            ) {
                h.append(n, v);
            }
        }
        req
    }
}

/// HTTP/1.1 handshake on a connected stream; its connection task is spawned (able to hand the
/// stream over to a tunnel after a 101).
async fn handshake<T>(io: TokioIo<T>) -> Result<SendRequest<UpBody>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // One flattened write per message: cheaper than writev for small heads (measured).
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(io)
        .await
        .map_err(|e| error_chain(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection error");
        }
    });
    Ok(sender)
}

/// An error and its sources, one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_copy_gives_back_the_same_head() {
        let mut req = Request::builder()
            .method(http::Method::HEAD)
            .uri("/a/b?c=d%20e")
            .header("host", "app.internal:8080")
            .header("x-forwarded-for", "10.0.0.1")
            .header("accept", "text/html")
            .header("accept", "*/*;q=0.1")
            .header("x-empty", "")
            .header(
                "x-odd",
                http::HeaderValue::from_bytes(b"caf\xc3\xa9: a:b \t x").unwrap(),
            )
            .body(UpBody::Empty)
            .unwrap();
        *req.version_mut() = http::Version::HTTP_11;
        let back = head_copy(&req).into_request();
        assert_eq!(back.method(), req.method());
        assert_eq!(back.uri(), req.uri());
        assert_eq!(back.version(), req.version());
        assert_eq!(back.headers(), req.headers());
        let accept: Vec<_> = back.headers().get_all("accept").iter().collect();
        assert_eq!(accept, ["text/html", "*/*;q=0.1"], "order per name kept");
    }
    use std::sync::atomic::AtomicUsize;

    /// A keep-alive HTTP/1.1 upstream on 127.0.0.1:0 counting accepted connections.
    async fn upstream() -> (String, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let acc = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (addr.to_string(), accepted)
    }

    /// A bodiless GET (an `Incoming` cannot be built by hand: take one from a real exchange).
    async fn get(pool: &Arc<UpstreamPool>, slot: Option<&Mutex<Option<Sticky>>>) -> u16 {
        let resp = pool
            .send_body(Request::get("/").body(UpBody::Empty).unwrap(), slot)
            .await
            .unwrap();
        let status = resp.status().as_u16();
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
        status
    }

    #[tokio::test]
    async fn sticky_connections_are_capped_per_upstream_and_the_rest_is_pooled() {
        let (addr, accepted) = upstream().await;
        let authority: http::uri::Authority = addr.parse().unwrap();
        let mut pool = UpstreamPool::new(&Scheme::HTTP, &authority, None).unwrap();
        pool.max_sticky = 1;
        let pool = Arc::new(pool);
        let (a, b) = (Mutex::new(None), Mutex::new(None));
        assert_eq!(get(&pool, Some(&a)).await, 200);
        assert!(
            a.lock().unwrap().is_some(),
            "the first client keeps its connection"
        );
        assert_eq!(get(&pool, Some(&b)).await, 200);
        assert!(
            b.lock().unwrap().is_none(),
            "over the cap: the second client's connection went back to the pool"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // The pooled one serves the next request of the second client; the first keeps its own.
        let start = Instant::now();
        while pool.idle_count() == 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "never pooled");
            tokio::task::yield_now().await;
        }
        assert_eq!(get(&pool, Some(&b)).await, 200);
        assert_eq!(get(&pool, Some(&a)).await, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "no third connection");
        // Dropping the first client's holder frees its place under the cap.
        *a.lock().unwrap() = None;
        assert_eq!(get(&pool, Some(&b)).await, 200);
        assert!(b.lock().unwrap().is_some(), "room again under the cap");
    }
}
