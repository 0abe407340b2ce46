//! Forwarding: one exchange with the upstream, streaming both ways, upgrades, and timeouts →
//! 502/504.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::Body;
use crate::error::GatewayError;
use crate::pipeline::headers::remove_hop_by_hop;
use crate::pipeline::upstream::{SendError, UpstreamPool};
use crate::state::Shared;

/// Sends the prepared request upstream and streams the answer back.
///
/// Contract: `req` already has its upstream (origin-form) URI, `Host`, headers stripped and
/// injected. The upstream gets HTTP/1.1 whatever the client spoke; an HTTP/1 client connection
/// keeps its upstream connection for its next request. `upgrade` is the client's `Upgrade` value when it asked for
/// one: then a 101 answer turns into a byte tunnel tracked for graceful shutdown.
pub async fn forward(
    shared: &Arc<Shared>,
    conn: &crate::pipeline::ConnInfo,
    pool: &Arc<UpstreamPool>,
    mut req: Request<Incoming>,
    upgrade: Option<HeaderValue>,
    timeout: Duration,
) -> Result<Response<Body>, GatewayError> {
    let sticky = (req.version() <= Version::HTTP_11).then_some(&conn.upstream);
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
    let mut resp = match tokio::time::timeout(timeout, pool.send(req, sticky)).await {
        Err(_) => return Err(GatewayError::UpstreamTimeout),
        Ok(Err(SendError::Connect(m))) => return Err(GatewayError::UpstreamConnect(m)),
        Ok(Err(SendError::Exchange(m))) => return Err(GatewayError::Upstream(m)),
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
