//! Forwarding: the pooled upstream client, streaming both ways, upgrades, and timeouts → 502/504.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::body::Body;
use crate::error::GatewayError;
use crate::pipeline::headers::remove_hop_by_hop;
use crate::state::Shared;

/// The pooled upstream client.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Incoming>;

/// Idle pooled connections close after this: below the 60–75 s keep-alive of common servers
/// (nginx 75 s, Node 5 s is the exception: it closes first and the pool retries).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connect attempts give up after this (→ 502).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per upstream.
const POOL_MAX_IDLE_PER_HOST: usize = 512;

/// Builds a client trusting the public web roots, plus `extra_ca` if given.
pub fn build_client(extra_ca: Option<&Path>) -> Result<UpstreamClient, String> {
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
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .build(https))
}

/// Sends the prepared request upstream and streams the answer back.
///
/// Contract: `req` already has its upstream URI, headers stripped and injected. The upstream gets
/// HTTP/1.1 whatever the client spoke. `upgrade` is the client's `Upgrade` value when it asked for
/// one: then a 101 answer turns into a byte tunnel tracked for graceful shutdown.
pub async fn forward(
    shared: &Arc<Shared>,
    conn: &crate::pipeline::ConnInfo,
    client: &UpstreamClient,
    mut req: Request<Incoming>,
    upgrade: Option<HeaderValue>,
    timeout: Duration,
) -> Result<Response<Body>, GatewayError> {
    *req.version_mut() = Version::HTTP_11;
    let client_upgrade = match &upgrade {
        Some(proto) => {
            let on = hyper::upgrade::on(&mut req);
            req.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            req.headers_mut().insert(header::UPGRADE, proto.clone());
            Some(on)
        }
        None => None,
    };
    let mut resp = match tokio::time::timeout(timeout, client.request(req)).await {
        Err(_) => return Err(GatewayError::UpstreamTimeout),
        Ok(Err(e)) if e.is_connect() => return Err(GatewayError::UpstreamConnect(error_chain(&e))),
        Ok(Err(e)) => return Err(GatewayError::Upstream(error_chain(&e))),
        Ok(Ok(r)) => r,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(GatewayError::Upstream(
                "upstream switched protocols unasked".into(),
            ));
        };
        // The tunnel outlives its HTTP connection, so it takes over the connection's slot under
        // `max_connections` (where the connection has none to give, it needs a free one).
        let tunnel_permit = match conn.take_permit() {
            Some(p) => p,
            None => shared
                .conn_limit
                .clone()
                .try_acquire_owned()
                .map_err(|_| GatewayError::Overloaded)?,
        };
        let proto = resp.headers().get(header::UPGRADE).cloned();
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        shared.tunnels.spawn(async move {
            let _permit = tunnel_permit;
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((c, u)) => {
                    let mut c = TokioIo::new(c);
                    let mut u = TokioIo::new(u);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                        tracing::debug!(error = %e, "tunnel closed with error");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        let (mut parts, _) = resp.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(p) = proto {
            parts.headers.insert(header::UPGRADE, p);
        }
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = resp.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::Stream(body)))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
