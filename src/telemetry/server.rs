//! The metrics listener: its own socket (never a public listener), `GET <path>` only.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::state::Shared;

/// Scrapes served at once; more wait for a slot (a scraper needs one or two).
const MAX_SCRAPE_CONNECTIONS: usize = 16;
/// A scraper sends its request head within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The content type of the OpenMetrics text format (Prometheus reads it).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape reads besides the registry, from the live state.
pub fn scrape_values(shared: &Shared) -> super::metrics::ScrapeValues {
    let live = &shared.live;
    let sink = super::sink::stderr().stats();
    let rt = shared.runtime.load();
    let audit = rt.telemetry.audit.sink().stats();
    super::metrics::ScrapeValues {
        sessions: live.sessions.len(),
        tunnels: shared.tunnels.len() as u64,
        store_up: live.sessions.is_available(),
        oidc_up: rt.oidc.states(),
        store_writes_dropped: live.sessions.writes_dropped(),
        token_cache: live.token_cache.lookups(),
        log_dropped: [
            sink.dropped(super::sink::Stream::Log),
            sink.dropped(super::sink::Stream::Access),
            audit.dropped(super::sink::Stream::Audit),
        ],
        tls_not_after: rt.tls_not_after,
    }
}

/// Serves scrapes on `listener` until `stop` is set.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    path: String,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    let path: Arc<str> = Arc::from(path);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors, most likely: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // At the cap, the newcomer is closed at once: idle connections cannot starve the
        // accept loop.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (shared, path) = (shared.clone(), path.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let r = answer(&shared, &path, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
            drop(permit);
        });
    }
}

fn answer(shared: &Shared, path: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, msg: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(msg.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.uri().path() != path {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let rt = shared.runtime.load();
    let text = rt.telemetry.metrics.render(&scrape_values(shared));
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
