//! Upstream connection pooling, observed from real sockets only: keep-alive reuse within and
//! across client connections, stale pooled connections, `Connection: close` upstreams, and that
//! concurrent requests (HTTP/2 streams, or separate HTTP/1 connections) never wait on each other's
//! upstream connection.
//!
//! Every wait is bounded by [`GUARD`] as a hang guard only; nothing here sleeps or measures time.

mod support;
use support::*;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Hang guard for every network wait. Generous: it only turns a deadlock into a failure.
const GUARD: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test with `what` if it has not finished within [`GUARD`].
async fn guard<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("hung for {GUARD:?}: {what}"))
}

// ---------------------------------------------------------------------------------------------
// Upstreams that count TCP connections

type UpBody = BoxBody<Bytes, Infallible>;

fn text(body: impl Into<Bytes>) -> Response<UpBody> {
    Response::new(Full::new(body.into()).boxed())
}

/// An upstream on 127.0.0.1:0 that counts accepted TCP connections and answered requests.
struct CountingUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    /// Connections that ended ([`hyper_upstream`] only).
    closed: Arc<AtomicUsize>,
}

impl CountingUpstream {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// A hyper HTTP/1.1 server whose answers come from `handler`.
async fn hyper_upstream<F, Fut>(handler: F) -> CountingUpstream
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (acc, srv, cls) = (accepted.clone(), served.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = l.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            let (handler, served, closed) = (handler.clone(), srv.clone(), cls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (handler, served) = (handler.clone(), served.clone());
                    async move {
                        let resp = handler(req).await;
                        served.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    CountingUpstream {
        addr,
        accepted,
        served,
        closed,
    }
}

/// How [`one_shot_upstream`] ends a connection after its one response.
#[derive(Clone, Copy, PartialEq)]
enum Close {
    /// Drop the socket right after writing the response: the gateway may reuse the pooled
    /// connection before it has read the FIN (the classic keep-alive race).
    RightAway,
    /// Send FIN after the response, then wait until the gateway closes its side too, and count
    /// that: once counted, the gateway has surely noticed the connection is dead.
    WhenGatewayCloses,
}

/// A hand-written HTTP/1.1 upstream that answers exactly one request per connection — with
/// `Content-Length` and *without* `Connection: close`, so it looks reusable — and then closes the
/// connection. Every connection the gateway pools from it is stale.
///
/// The returned receiver counts connections the gateway closed after the upstream's FIN (only
/// with [`Close::WhenGatewayCloses`]).
async fn one_shot_upstream(
    close: Close,
) -> (CountingUpstream, tokio::sync::watch::Receiver<usize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let (closed_tx, closed_rx) = tokio::sync::watch::channel(0usize);
    let closed_tx = Arc::new(closed_tx);
    let (acc, srv) = (accepted.clone(), served.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = l.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            let (served, closed_tx) = (srv.clone(), closed_tx.clone());
            tokio::spawn(async move {
                // Read one request head (the tests only send GETs, so there is no body).
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("?").to_string();
                let body = format!("one-shot {path}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                // Counted before the write: once the client has read the answer, the count must
                // already include it.
                served.fetch_add(1, Ordering::SeqCst);
                if stream.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                if close == Close::RightAway {
                    return; // dropping the stream closes the connection
                }
                let _ = stream.shutdown().await;
                match stream.read(&mut tmp).await {
                    // The gateway closed its side: it has noticed.
                    Ok(0) | Err(_) => closed_tx.send_modify(|n| *n += 1),
                    // A request on a connection we already closed for writing: drop it
                    // unanswered (the gateway sees EOF; the test sees the failure).
                    Ok(_) => {}
                }
            });
        }
    });
    (
        CountingUpstream {
            addr,
            accepted,
            served,
            closed: Arc::new(AtomicUsize::new(0)),
        },
        closed_rx,
    )
}

/// Waits until the gateway has closed `n` upstream connections after the upstream's FIN.
async fn until_gateway_closed(closed: &mut tokio::sync::watch::Receiver<usize>, n: usize) {
    guard(
        "the gateway closing its side of an upstream connection the upstream closed",
        closed.wait_for(|c| *c >= n),
    )
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client connection (exactly one TCP connection, under the test's control)

#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Lowercase names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct RawConn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    async fn connect(addr: SocketAddr) -> RawConn {
        RawConn {
            s: guard("connect to the gateway", TcpStream::connect(addr))
                .await
                .unwrap(),
            buf: Vec::new(),
        }
    }

    /// Reads more bytes into the buffer; false at EOF.
    async fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 8192];
        let n = guard("read from the gateway", self.s.read(&mut tmp))
            .await
            .unwrap_or(0);
        self.buf.extend_from_slice(&tmp[..n]);
        n > 0
    }

    /// Like [`fill`](Self::fill), failing if the connection closed.
    async fn fill_or_fail(&mut self, what: &str) {
        assert!(
            self.fill().await,
            "gateway closed the client connection while {what}; got so far: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// Takes one CRLF-terminated line.
    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return line;
            }
            self.fill_or_fail("reading a line").await;
        }
    }

    /// Takes exactly `n` bytes.
    async fn exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill_or_fail("reading a body").await;
        }
        self.buf.drain(..n).collect()
    }

    async fn send(&mut self, request: &str) {
        guard("write to the gateway", self.s.write_all(request.as_bytes()))
            .await
            .unwrap();
    }

    /// Sends `GET path` (keep-alive unless `extra` says otherwise).
    async fn send_get(&mut self, path: &str, extra: &str) {
        self.send(&format!(
            "GET {path} HTTP/1.1\r\nHost: gateway.test\r\nAccept: */*\r\n{extra}\r\n"
        ))
        .await;
    }

    /// Reads a status line and headers (skipping any 1xx interim responses).
    async fn read_head(&mut self) -> RawResponse {
        loop {
            let status_line = self.line().await;
            let status: u16 = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
            let mut headers = Vec::new();
            loop {
                let l = self.line().await;
                if l.is_empty() {
                    break;
                }
                let (n, v) = l.split_once(':').expect("header line without colon");
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            if (100..200).contains(&status) {
                continue;
            }
            return RawResponse {
                status,
                headers,
                body: Vec::new(),
            };
        }
    }

    /// The data of the next chunk of a chunked body; `None` after the last chunk (and trailers).
    async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        let size_line = self.line().await;
        let size_hex = size_line.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
        if size == 0 {
            while !self.line().await.is_empty() {}
            return None;
        }
        let data = self.exact(size).await;
        assert_eq!(self.exact(2).await, b"\r\n", "chunk not followed by CRLF");
        Some(data)
    }

    fn is_chunked(head: &RawResponse) -> bool {
        head.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    /// Reads the rest of the body of `head` into it.
    async fn read_body(&mut self, head: &mut RawResponse) {
        if Self::is_chunked(head) {
            while let Some(c) = self.next_chunk().await {
                head.body.extend_from_slice(&c);
            }
        } else if let Some(len) = head.header("content-length") {
            let len: usize = len.parse().unwrap();
            let already = head.body.len();
            let rest = self.exact(len - already).await;
            head.body.extend_from_slice(&rest);
        } else {
            // Delimited by EOF.
            while self.fill().await {}
            head.body.append(&mut self.buf);
        }
    }

    /// Reads one whole response.
    async fn read_response(&mut self) -> RawResponse {
        let mut r = self.read_head().await;
        self.read_body(&mut r).await;
        r
    }

    /// `GET path` on this connection and its whole response.
    async fn get(&mut self, path: &str) -> RawResponse {
        self.send_get(path, "").await;
        self.read_response().await
    }
}

/// `GET path` on a fresh client connection with `Connection: close`.
async fn get_on_new_connection(addr: SocketAddr, path: &str) -> RawResponse {
    let mut c = RawConn::connect(addr).await;
    c.send_get(path, "Connection: close\r\n").await;
    c.read_response().await
}

// ---------------------------------------------------------------------------------------------
// 1. keep-alive reuse

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_client_connection_uses_one_upstream_connection() {
    init();
    let up = hyper_upstream(|req: Request<Incoming>| async move {
        text(format!("path {}", req.uri().path()))
    })
    .await;
    let gw = TestGateway::start(&public_route(&up.url())).await;

    let mut c = RawConn::connect(gw.addr).await;
    for i in 0..50 {
        let path = format!("/ka/{i}");
        let r = c.get(&path).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.body_text(), format!("path {path}"), "request {i}");
    }
    assert_eq!(up.served(), 50);
    assert_eq!(
        up.accepted(),
        1,
        "50 sequential requests on one keep-alive client connection should share one upstream connection"
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2. reuse across client connections

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_across_client_connections() {
    init();
    let up = hyper_upstream(|req: Request<Incoming>| async move {
        text(format!("path {}", req.uri().path()))
    })
    .await;
    let gw = TestGateway::start(&public_route(&up.url())).await;

    for i in 0..20 {
        let path = format!("/fresh/{i}");
        let r = get_on_new_connection(gw.addr, &path).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.body_text(), format!("path {path}"), "request {i}");
    }
    assert_eq!(up.served(), 20);
    // A connection goes back to the idle pool around the time its client sees the response, so
    // one extra connection may be opened by a request racing that return; 20 would be no pooling.
    assert!(
        up.accepted() <= 2,
        "20 sequential requests on separate client connections opened {} upstream connections",
        up.accepted()
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. stale pooled connections

// The upstream closes each connection after one response. First with the close already seen by
// the gateway (deterministic: a dead pooled connection must never be handed out), then with the
// close racing the next request (the gateway must notice it in time, or retry the request on a
// fresh connection).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_pooled_connection_is_not_reused_new_client_connection_each() {
    init();
    let (up, mut closed) = one_shot_upstream(Close::WhenGatewayCloses).await;
    let gw = TestGateway::start(&public_route(&up.url())).await;

    for i in 0..20 {
        let path = format!("/closed-new/{i}");
        let r = get_on_new_connection(gw.addr, &path).await;
        assert_eq!(
            r.status, 200,
            "request {i} after the upstream closed the pooled connection: {r:?}"
        );
        assert_eq!(r.body_text(), format!("one-shot {path}"), "request {i}");
        until_gateway_closed(&mut closed, i + 1).await;
    }
    assert_eq!(up.served(), 20, "each request reaches the upstream once");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_pooled_connection_is_not_reused_one_keep_alive_client_connection() {
    init();
    let (up, mut closed) = one_shot_upstream(Close::WhenGatewayCloses).await;
    let gw = TestGateway::start(&public_route(&up.url())).await;

    let mut c = RawConn::connect(gw.addr).await;
    for i in 0..20 {
        let path = format!("/closed-ka/{i}");
        let r = c.get(&path).await;
        assert_eq!(
            r.status, 200,
            "request {i} after the upstream closed the pooled connection: {r:?}"
        );
        assert_eq!(r.body_text(), format!("one-shot {path}"), "request {i}");
        until_gateway_closed(&mut closed, i + 1).await;
    }
    assert_eq!(up.served(), 20, "each request reaches the upstream once");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_closed_right_after_response_new_client_connection_each() {
    init();
    let (up, _) = one_shot_upstream(Close::RightAway).await;
    let gw = TestGateway::start(&public_route(&up.url())).await;

    for i in 0..20 {
        let path = format!("/stale-new/{i}");
        let r = get_on_new_connection(gw.addr, &path).await;
        assert_eq!(
            r.status, 200,
            "request {i} right after the upstream closed the pooled connection: {r:?}"
        );
        assert_eq!(r.body_text(), format!("one-shot {path}"), "request {i}");
    }
    assert_eq!(up.served(), 20, "each request is answered once");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_closed_right_after_response_one_keep_alive_client_connection() {
    init();
    let (up, _) = one_shot_upstream(Close::RightAway).await;
    let gw = TestGateway::start(&public_route(&up.url())).await;

    let mut c = RawConn::connect(gw.addr).await;
    for i in 0..20 {
        let path = format!("/stale-ka/{i}");
        let r = c.get(&path).await;
        assert_eq!(
            r.status, 200,
            "request {i} right after the upstream closed the pooled connection: {r:?}"
        );
        assert_eq!(r.body_text(), format!("one-shot {path}"), "request {i}");
    }
    assert_eq!(up.served(), 20, "each request is answered once");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. HTTP/2 downstream: concurrent streams get concurrent upstream connections

/// One HTTP/2 connection to `addr` over TLS (ALPN `h2` only), trusting `ca`.
async fn h2_connect(
    addr: SocketAddr,
    ca: &std::path::Path,
) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = guard("connect to the TLS listener", TcpStream::connect(addr))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = guard(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "gateway did not pick h2"
    );
    let (sender, conn) = guard(
        "HTTP/2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_concurrent_streams_are_forwarded_concurrently() {
    init();
    const N: usize = 4;
    // Each request is held until N are in flight at the upstream at once: a gateway that
    // serialised the streams of one client connection on one upstream connection deadlocks here.
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let up = hyper_upstream(move |req: Request<Incoming>| {
        let barrier = barrier.clone();
        async move {
            barrier.wait().await;
            text(format!("path {}", req.uri().path()))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, ca) = tls_gateway(&up.url(), dir.path()).await;
    let https = gw.https_addr.expect("https listener");

    let sender = h2_connect(https, &ca).await;
    // Two rounds on the same client connection: the second one runs on pooled connections.
    for round in 0..2 {
        let requests = (0..N).map(|i| {
            let mut sender = sender.clone();
            let path = format!("/h2/{round}/{i}");
            async move {
                let req = Request::get(format!("https://localhost:{}{path}", https.port()))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (path, status, body)
            }
        });
        let results = guard(
            "4 concurrent HTTP/2 streams that the upstream answers only together",
            futures_util::future::join_all(requests),
        )
        .await;
        for (path, status, body) in results {
            assert_eq!(status, 200, "{path}: {body:?}");
            assert_eq!(body, format!("path {path}"), "{path}");
        }
    }
    assert_eq!(up.served(), 2 * N);
    assert!(
        up.accepted() >= N,
        "{N} concurrent requests need {N} connections"
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 5. HTTP/1 downstream: an unfinished streaming response does not block another connection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_streaming_response_does_not_block_another_client_connection() {
    init();
    let release = Arc::new(tokio::sync::Notify::new());
    let rel = release.clone();
    let up = hyper_upstream(move |req: Request<Incoming>| {
        let release = rel.clone();
        async move {
            if req.uri().path() != "/slow" {
                return text(format!("path {}", req.uri().path()));
            }
            // First chunk at once; the second only once the test releases it.
            let stream = futures_util::stream::unfold(0u8, move |step| {
                let release = release.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, Infallible>(Frame::data(Bytes::from("chunk-1;"))), 1)),
                        1 => {
                            release.notified().await;
                            Some((Ok(Frame::data(Bytes::from("chunk-2."))), 2))
                        }
                        _ => None,
                    }
                }
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
    })
    .await;
    let gw = TestGateway::start(&public_route(&up.url())).await;

    // Two client connections, each with a finished request first (so each may own a pooled
    // upstream connection by now).
    let mut a = RawConn::connect(gw.addr).await;
    let mut b = RawConn::connect(gw.addr).await;
    for (name, c) in [("a", &mut a), ("b", &mut b)] {
        let r = c.get(&format!("/warm/{name}")).await;
        assert_eq!(r.status, 200, "warm-up on {name}: {r:?}");
        assert_eq!(r.body_text(), format!("path /warm/{name}"));
    }

    // A: a streaming response, first chunk received, the rest held by the upstream.
    a.send_get("/slow", "").await;
    let mut slow = a.read_head().await;
    assert_eq!(slow.status, 200, "{slow:?}");
    assert!(
        RawConn::is_chunked(&slow),
        "a streamed body of unknown length is chunked: {slow:?}"
    );
    while !slow.body.starts_with(b"chunk-1;") {
        match a.next_chunk().await {
            Some(c) => slow.body.extend_from_slice(&c),
            None => panic!("/slow ended early: {:?}", slow.body_text()),
        }
    }

    // B: a whole request while A's response is still open.
    let r = b.get("/fast").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_text(), "path /fast");
    // And on a brand-new client connection too.
    let r = get_on_new_connection(gw.addr, "/fast-new").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_text(), "path /fast-new");

    // Release /slow: A gets the whole body, and A's connection is still usable afterwards.
    release.notify_one();
    a.read_body(&mut slow).await;
    assert_eq!(slow.body_text(), "chunk-1;chunk-2.");
    let r = a.get("/after").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_text(), "path /after");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 6. an upstream that closes after every response

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connection_close_on_every_response_keeps_client_connection_working() {
    init();
    let up = hyper_upstream(|req: Request<Incoming>| async move {
        let mut r = text(format!("path {}", req.uri().path()));
        r.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        r
    })
    .await;
    let gw = TestGateway::start(&public_route(&up.url())).await;

    let mut c = RawConn::connect(gw.addr).await;
    for i in 0..10 {
        let path = format!("/close/{i}");
        let r = c.get(&path).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.body_text(), format!("path {path}"), "request {i}");
        assert!(
            !r.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close")),
            "upstream's Connection: close leaked to the client: {r:?}"
        );
    }
    assert_eq!(up.served(), 10, "each request reaches the upstream once");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 7. A reload retires the old snapshot's pool; 8. only a closed connection is worth a replay

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_retires_the_old_pool_and_kept_client_connections_move_to_the_new_one() {
    init();
    let up = hyper_upstream(|_req| async { text("ok") }).await;
    let gw = TestGateway::start(&public_route(&up.url())).await;
    // Two kept client connections, each holding its own upstream connection.
    let mut a = RawConn::connect(gw.addr).await;
    let mut b = RawConn::connect(gw.addr).await;
    assert_eq!(a.get("/a/before").await.status, 200);
    assert_eq!(b.get("/b/before").await.status, 200);
    assert_eq!(up.accepted(), 2);
    gw.gateway()
        .reload(authgate::Config::load(&gw.config_path).unwrap())
        .unwrap();
    // A's next request uses the new pool; A's old upstream connection is closed rather than
    // parked in the old pool (which B's kept connection still references).
    for i in 0..3 {
        assert_eq!(a.get(&format!("/a/after/{i}")).await.status, 200);
    }
    assert_eq!(up.accepted(), 3, "one new upstream connection for A");
    guard(
        "the old pool closing A's previous upstream connection",
        async {
            while up.closed() < 1 {
                tokio::task::yield_now().await;
            }
        },
    )
    .await;
    assert_eq!(b.get("/b/after").await.status, 200);
    assert_eq!(up.served(), 6);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_answer_on_a_reused_connection_is_not_sent_twice() {
    init();
    // Answers the first request on each connection properly, the second with garbage.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                for n in 0.. {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&tmp[..k]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    seen.fetch_add(1, Ordering::SeqCst);
                    let answer: &[u8] = if n == 0 {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    } else {
                        b"HTTP/1.1 2x0 Nonsense\r\n\r\n"
                    };
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = TestGateway::start(&public_route(&format!("http://{addr}"))).await;
    let mut c = RawConn::connect(gw.addr).await;
    assert_eq!(c.get("/first").await.status, 200);
    let r = c.get("/second").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "the GET that got an unparsable answer was replayed"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_written_into_a_dying_reused_connection_is_replayed_with_the_same_head() {
    init();
    // Answers the first request on each connection; on the second it reads the request and
    // closes without answering (the upstream's keep-alive close racing the request). Records
    // every request head it read, with its connection number.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let heads: Arc<std::sync::Mutex<Vec<(usize, String)>>> = Arc::default();
    let seen = heads.clone();
    tokio::spawn(async move {
        let mut conn_no = 0;
        while let Ok((mut stream, _)) = l.accept().await {
            conn_no += 1;
            let (seen, me) = (seen.clone(), conn_no);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                for n in 0.. {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&tmp[..k]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head: Vec<u8> = buf.drain(..end).collect();
                    seen.lock()
                        .unwrap()
                        .push((me, String::from_utf8_lossy(&head).into_owned()));
                    if n == 1 {
                        return; // closed with the request unanswered
                    }
                    let body = format!("conn {me}");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = TestGateway::start(&public_route(&format!("http://{addr}"))).await;
    let mut c = RawConn::connect(gw.addr).await;
    assert_eq!(c.get("/first").await.body_text(), "conn 1");
    let r = c.get("/second?q=1").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_text(), "conn 2", "answered on a fresh connection");
    let got = heads.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!((got[1].0, got[2].0), (1, 2));
    assert!(
        got[1].1.starts_with("GET /second?q=1 HTTP/1.1\r\n"),
        "{got:?}"
    );
    assert!(got[1].1.contains("x-forwarded-for:"), "{got:?}");
    assert_eq!(got[1].1, got[2].1, "the replay differs from the request");

    // A POST in the same situation is not replayed: 502, and the upstream saw it once.
    let mut c = RawConn::connect(gw.addr).await;
    assert_eq!(c.get("/third").await.body_text(), "conn 3");
    c.send("POST /form HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 0\r\n\r\n")
        .await;
    assert_eq!(c.read_response().await.status, 502);
    let posts = heads
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, h)| h.starts_with("POST "))
        .count();
    assert_eq!(posts, 1, "the POST was sent twice");
    gw.shutdown().await;
}
