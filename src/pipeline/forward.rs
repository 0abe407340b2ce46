//! Forwarding: one exchange with the upstream, streaming both ways, upgrades, and timeouts →
//! 502/504.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::body::Body;
use crate::error::GatewayError;
use crate::pipeline::headers::remove_hop_by_hop;
use crate::pipeline::tunnel::TunnelScope;
use crate::pipeline::upstream::{SendError, UpstreamPool};
use crate::state::Shared;

/// Sends the prepared request upstream and streams the answer back.
///
/// Contract: `req` already has its upstream (origin-form) URI, `Host`, headers stripped and
/// injected. The upstream gets HTTP/1.1 whatever the client spoke; an HTTP/1 client connection
/// keeps its upstream connection for its next request. `upgrade` is the client's `Upgrade` value when it asked for
/// one: then a 101 answer turns into a byte tunnel tracked for graceful shutdown.
///
/// The preparation runs before the returned future is first polled, so the future does not carry
/// the request beside the upstream exchange that owns it (each copy of a request's future costs
/// a memcpy of its whole size).
pub fn forward<'a>(
    shared: &'a Arc<Shared>,
    conn: &'a crate::pipeline::ConnInfo,
    pool: &'a Arc<UpstreamPool>,
    mut req: Request<Incoming>,
    upgrade: Option<(HeaderValue, Box<TunnelScope>)>,
    timeout: Duration,
) -> impl Future<Output = Result<Response<Body>, GatewayError>> + Send + 'a {
    let sticky = (req.version() <= Version::HTTP_11).then_some(&conn.upstream);
    *req.version_mut() = Version::HTTP_11;
    let client_upgrade = match upgrade {
        Some((proto, scope)) => {
            let on = hyper::upgrade::on(&mut req);
            req.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            req.headers_mut().insert(header::UPGRADE, proto.clone());
            Some(Box::new(ClientUpgrade { on, proto, scope }))
        }
        None => None,
    };
    let timer_home = sticky.is_some().then_some(&conn.timer);
    Forward {
        exchange: with_deadline(pool.send(req, sticky), timeout, timer_home),
        rest: Some((shared, conn, client_upgrade)),
    }
}

/// The client's side of an upgrade: its connection once upgraded, the protocol it asked for, and
/// what the tunnel is re-checked on.
struct ClientUpgrade {
    on: hyper::upgrade::OnUpgrade,
    proto: HeaderValue,
    scope: Box<TunnelScope>,
}

type ForwardRest<'a> = (
    &'a Arc<Shared>,
    &'a crate::pipeline::ConnInfo,
    Option<Box<ClientUpgrade>>,
);

pin_project_lite::pin_project! {
    /// The future of [`forward`]: a plain struct, since an `async` block would hold the exchange
    /// twice (as captured value and as awaited future).
    struct Forward<'a, F> {
        #[pin]
        exchange: F,
        rest: Option<ForwardRest<'a>>,
    }
}

impl<F> Future for Forward<'_, F>
where
    F: Future<Output = Option<Result<Response<Incoming>, SendError>>>,
{
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.exchange.poll(cx));
        let (shared, conn, client_upgrade) = this.rest.take().expect("polled after completion");
        Poll::Ready(finish_exchange(shared, conn, answer, client_upgrade))
    }
}

/// The upstream's answer (or failure) as the client's response; a 101 starts the tunnel.
fn finish_exchange(
    shared: &Arc<Shared>,
    conn: &crate::pipeline::ConnInfo,
    answer: Option<Result<Response<Incoming>, SendError>>,
    client_upgrade: Option<Box<ClientUpgrade>>,
) -> Result<Response<Body>, GatewayError> {
    let mut resp = match answer {
        None => return Err(GatewayError::UpstreamTimeout),
        Some(Err(SendError::Connect(m))) => return Err(GatewayError::UpstreamConnect(m)),
        Some(Err(SendError::Tls(m))) => return Err(GatewayError::UpstreamTls(m)),
        Some(Err(SendError::Exchange(m))) => return Err(GatewayError::Upstream(m)),
        Some(Err(SendError::Reset(m))) => return Err(GatewayError::UpstreamReset(m)),
        Some(Ok(r)) => r,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(GatewayError::Upstream(
                "upstream switched protocols unasked".into(),
            ));
        };
        // The upstream may only switch to a protocol the client asked for (and the route allows):
        // anything else, `h2c` above all, would be a protocol the gateway never vetted.
        let switched_to = resp.headers().get(header::UPGRADE).map(|p| p.as_bytes());
        let asked = |p: &[u8]| {
            client_upgrade
                .proto
                .as_bytes()
                .split(|&b| b == b',')
                .any(|a| a.trim_ascii().eq_ignore_ascii_case(p.trim_ascii()))
        };
        if !switched_to.is_some_and(asked) {
            return Err(GatewayError::Upstream(
                "upstream switched to a protocol the client did not ask for".into(),
            ));
        }
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
        let ClientUpgrade { on, scope, .. } = *client_upgrade;
        shared
            .tunnels
            .open(*scope, on, upstream_upgrade, Some(tunnel_permit));
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

/// A timer kept by an HTTP/1 client connection for its requests' upstream deadlines.
pub type ConnTimer = Mutex<Option<Pin<Box<Sleep>>>>;

/// Polls `sleep` outside tokio's cooperative budget. A `Sleep` polled when the task's budget is
/// spent returns `Pending` without registering with the timer driver; the timers here are polled
/// once and from then on only read (`is_elapsed`), so such a refused poll would leave them never
/// firing — a deadline silently gone.
pub(crate) fn poll_sleep(sleep: Pin<&mut Sleep>, cx: &mut std::task::Context<'_>) -> Poll<()> {
    let mut sleep = sleep;
    let once = tokio::task::unconstrained(std::future::poll_fn(|cx| sleep.as_mut().poll(cx)));
    std::pin::pin!(once).poll(cx)
}

/// Runs `fut` until it completes (`Some`) or `timeout` has passed (`None`).
///
/// Same result as `tokio::time::timeout`, cheaper per request on keep-alive connections: with
/// `home` (the client connection's [`ConnTimer`], HTTP/1 only, one request at a time) the timer
/// is borrowed instead of created, and it is not re-registered for every request. A timer armed
/// for an earlier request's deadline fires early and is then moved to this request's deadline,
/// so a busy connection re-arms about once per `timeout` instead of twice per request. One armed
/// later than this request's deadline (a route with a longer timeout went before) is moved in.
pub fn with_deadline<F: Future>(
    fut: F,
    timeout: Duration,
    home: Option<&ConnTimer>,
) -> WithDeadline<'_, F> {
    WithDeadline {
        fut,
        timer: Deadline {
            sleep: None,
            polled: false,
            at: Instant::now() + timeout,
            home,
        },
    }
}

pin_project_lite::pin_project! {
    /// The future of [`with_deadline`] (a plain struct: an `async fn` would hold `fut` twice).
    pub struct WithDeadline<'a, F> {
        #[pin]
        fut: F,
        timer: Deadline<'a>,
    }
}

impl<F: Future> Future for WithDeadline<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Some(v));
        }
        this.timer.poll_elapsed(cx).map(|()| None)
    }
}

struct Deadline<'a> {
    sleep: Option<Pin<Box<Sleep>>>,
    polled: bool,
    at: Instant,
    home: Option<&'a ConnTimer>,
}

impl Deadline<'_> {
    fn poll_elapsed(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let at = self.at;
        if self.polled {
            // Registered with this task's waker on the first poll: until it fires there is
            // nothing to look at (an atomic load instead of a waker registration per poll).
            if self.sleep.as_ref().is_some_and(|s| !s.is_elapsed()) {
                return Poll::Pending;
            }
        } else {
            self.polled = true;
            if let Some(home) = self.home {
                self.sleep = home.lock().ok().and_then(|mut h| h.take());
            }
        }
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.deadline() > at {
            sleep.as_mut().reset(at);
        }
        loop {
            match poll_sleep(sleep.as_mut(), cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= at => return Poll::Ready(()),
                // Armed for an earlier request: on to this one's deadline.
                Poll::Ready(()) => sleep.as_mut().reset(at),
            }
        }
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        if let (Some(home), Some(sleep)) = (self.home, self.sleep.take()) {
            if let Ok(mut slot) = home.lock() {
                *slot = Some(sleep);
            }
        }
    }
}

/// Test helper: spends the task's whole cooperative budget on its first poll, then polls `F` — as
/// a future polled late in a busy task poll is.
#[cfg(test)]
pub(crate) struct BudgetSpentFirst<F> {
    inner: Pin<Box<F>>,
    spent: bool,
}

#[cfg(test)]
impl<F: Future> BudgetSpentFirst<F> {
    pub(crate) fn new(inner: F) -> Self {
        BudgetSpentFirst {
            inner: Box::pin(inner),
            spent: false,
        }
    }
}

#[cfg(test)]
impl<F: Future> Future for BudgetSpentFirst<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        if !self.spent {
            self.spent = true;
            // Each call takes one unit; the first refused one means none is left.
            while std::pin::pin!(tokio::task::consume_budget())
                .poll(cx)
                .is_ready()
            {}
        }
        self.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadline_fires_even_when_first_polled_with_the_budget_spent() {
        let stuck = BudgetSpentFirst::new(with_deadline(
            std::future::pending::<()>(),
            Duration::from_millis(50),
            None,
        ));
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), stuck).await,
            Ok(None),
            "the deadline never fired"
        );
    }

    #[tokio::test]
    async fn deadline_ends_a_stuck_future_and_not_a_finished_one() {
        let stuck = with_deadline(
            std::future::pending::<()>(),
            Duration::from_millis(50),
            None,
        );
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), stuck).await,
            Ok(None)
        );
        let done = with_deadline(async { 7 }, Duration::from_millis(50), None).await;
        assert_eq!(done, Some(7));
    }

    #[tokio::test]
    async fn a_connection_timer_is_reused_and_follows_each_requests_deadline() {
        kept_timer_follows_each_deadline().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_timer_follows_each_deadline_on_a_work_stealing_runtime() {
        // The request's task may move between threads here; the timer must still wake it.
        tokio::spawn(kept_timer_follows_each_deadline())
            .await
            .unwrap();
    }

    async fn kept_timer_follows_each_deadline() {
        let home: ConnTimer = Mutex::new(None);
        // A long deadline first: the kept timer is armed an hour ahead...
        let once = |v| async move {
            tokio::task::yield_now().await; // pending once: the timer is armed
            v
        };
        let r = with_deadline(once(1), Duration::from_secs(3600), Some(&home)).await;
        assert_eq!(r, Some(1));
        assert!(
            home.lock().unwrap().is_some(),
            "timer kept by the connection"
        );
        // ...and a short one after it on the same connection still ends on time.
        let stuck = with_deadline(
            std::future::pending::<()>(),
            Duration::from_millis(50),
            Some(&home),
        );
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), stuck).await,
            Ok(None),
            "the kept timer was not moved to the shorter deadline"
        );
        // A timer armed for an earlier request fires during a later one: not a timeout.
        let r = with_deadline(once(2), Duration::from_millis(20), Some(&home)).await;
        assert_eq!(r, Some(2));
        let slow_but_in_time = with_deadline(
            tokio::time::sleep(Duration::from_millis(80)),
            Duration::from_secs(10),
            Some(&home),
        )
        .await;
        assert_eq!(slow_but_in_time, Some(()), "fired for an earlier deadline");
        assert!(home.lock().unwrap().is_some());
    }
}
