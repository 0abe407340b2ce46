//! The floor under authgate's proxying cost: the smallest hyper 1.x reverse proxy built the way
//! authgate forwards (HTTP/1.1 server, `hyper::client::conn::http1` upstream connection kept per
//! client connection, flattened writes, one current-thread runtime, mimalloc) — and nothing else:
//! no authentication, no header rules, no routing, no timeouts, no limits. Not for production.
//!
//! `benches/load/run.sh` runs it as the `hyper-floor` target, so the table shows how much of
//! authgate's cost per request is the HTTP stack itself.
//!
//! ```sh
//! cargo run --release --example hyper_floor -- 127.0.0.1:8081 127.0.0.1:8080
//! ```

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Sticky = Arc<Mutex<Option<SendRequest<Incoming>>>>;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: hyper_floor LISTEN_ADDR UPSTREAM_ADDR (host:port each)");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let l = match TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {listen}: {e}");
                std::process::exit(1);
            }
        };
        eprintln!("listening on {listen}, forwarding to {upstream}");
        let upstream: Arc<str> = upstream.into();
        loop {
            let Ok((stream, _)) = l.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let sticky: Sticky = Arc::new(Mutex::new(None));
                let svc = service_fn(move |req| forward(req, upstream.clone(), sticky.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .writev(false)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

async fn forward(
    req: Request<Incoming>,
    upstream: Arc<str>,
    sticky: Sticky,
) -> Result<Response<http_body_util::Either<Incoming, String>>, Infallible> {
    let kept = sticky
        .lock()
        .ok()
        .and_then(|mut s| s.take())
        .filter(|s| s.is_ready());
    let mut sender = match kept {
        Some(s) => s,
        None => match connect(&upstream).await {
            Some(s) => s,
            None => return Ok(bad_gateway()),
        },
    };
    match sender.send_request(req).await {
        Ok(resp) => {
            if let Ok(mut s) = sticky.lock() {
                *s = Some(sender);
            }
            Ok(resp.map(http_body_util::Either::Left))
        }
        Err(_) => Ok(bad_gateway()),
    }
}

async fn connect(upstream: &str) -> Option<SendRequest<Incoming>> {
    let tcp = TcpStream::connect(upstream).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

fn bad_gateway() -> Response<http_body_util::Either<Incoming, String>> {
    let mut r = Response::new(http_body_util::Either::Right("bad gateway\n".to_string()));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}
