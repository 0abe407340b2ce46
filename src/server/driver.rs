//! One client connection's driver: the idle bound (no request head, a slow head, or an idle
//! keep-alive connection, over HTTP/1 and HTTP/2 alike) and graceful shutdown, with one timer per
//! connection.
//!
//! hyper's own `header_read_timeout` starts, registers and drops a fresh timer for every request
//! (and only covers HTTP/1), and hyper-util's graceful-shutdown wrapper re-registers its waker on
//! every poll of the connection. Here the connection's timer is armed once and re-armed only when
//! it fires: a request marks the connection busy until its response body has been sent
//! ([`Busy`], carried by [`ServedBody`]), and the timer, on firing, reads when the connection
//! last went idle. The shutdown signal is registered once and then read as a flag.
//!
//! The bound: a connection with no request in flight for `idle` is closed — dropped outright if it
//! never completed a request head (a silent client, a slow first head, half an HTTP/2 preface),
//! shut down gracefully otherwise (HTTP/1: closed at once, since hyper is between requests, even
//! with part of the next head read; HTTP/2: GOAWAY); and dropped if it is still open and idle
//! `idle` after that. A request in flight (a slow upstream, a long download, a slow upload) is
//! never cut by it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use crate::body::Body;

/// The gateway's connections, for graceful shutdown: tells them to finish and waits until they
/// have.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    stopping: AtomicBool,
    notify: Arc<Notify>,
    live: TaskTracker,
}

impl Drain {
    /// A new drain with no connections.
    pub(crate) fn new() -> Arc<Drain> {
        Arc::new(Drain::default())
    }

    /// Tells every connection, present and future, to finish its in-flight requests and close.
    pub(crate) fn begin(&self) {
        self.stopping.store(true, Ordering::Release);
        self.notify.notify_waiters();
        self.live.close();
    }

    /// Waits until every connection has ended (call after [`Drain::begin`]).
    pub(crate) async fn wait(&self) {
        self.live.wait().await;
    }

    /// A connection's place in the drain, taken when it is accepted (so one still in its TLS
    /// handshake is waited for too) and given up when it closes.
    pub(crate) fn member(self: &Arc<Self>) -> Member {
        Member {
            drain: self.clone(),
            _live: self.live.token(),
        }
    }

    /// Connections still open.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }
}

/// One connection counted by a [`Drain`].
#[derive(Debug)]
pub(crate) struct Member {
    drain: Arc<Drain>,
    _live: TaskTrackerToken,
}

/// What one connection has in flight, shared between its driver and its requests.
#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    /// Requests whose response body has not been sent (or dropped) yet.
    busy: AtomicU32,
    /// Whether a request head has ever been completed on the connection.
    seen: AtomicBool,
    /// When the connection last went idle, in milliseconds since `epoch`.
    idle_since_ms: AtomicU64,
}

impl Activity {
    /// A connection accepted now: idle, nothing seen.
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            busy: AtomicU32::new(0),
            seen: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    /// A request head has arrived: the connection is busy until the returned guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.seen.store(true, Ordering::Relaxed);
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// When the connection has been idle since, or `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::Acquire);
        Some(self.epoch + Duration::from_millis(ms))
    }
}

/// A request in flight on its connection; dropped when its response has been sent or abandoned.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = a.epoch.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        a.idle_since_ms.fetch_max(ms, Ordering::AcqRel);
        a.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection marked busy until hyper has sent it (or given up).
#[derive(Debug)]
pub struct ServedBody {
    body: Body,
    _busy: Busy,
}

impl ServedBody {
    pub(crate) fn new(body: Body, busy: Busy) -> ServedBody {
        ServedBody { body, _busy: busy }
    }
}

impl http_body::Body for ServedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection that can be told to finish its in-flight requests and close (hyper's, through
/// hyper-util's sealed `GracefulConnection`; a stand-in in the tests).
pub(crate) trait Connection: Future<Output = Result<(), Self::Error>> {
    /// The connection's error.
    type Error;
    /// Starts a graceful shutdown.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<C: hyper_util::server::graceful::GracefulConnection> Connection for C {
    type Error = C::Error;
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper_util::server::graceful::GracefulConnection::graceful_shutdown(self)
    }
}

/// How a connection ended.
#[derive(Debug)]
pub(crate) enum Ended<E> {
    /// hyper finished it (the client closed, an error, an upgrade, a graceful shutdown).
    Done(Result<(), E>),
    /// Dropped by the idle bound; `before_first_request`: no request head was ever completed.
    Idle { before_first_request: bool },
}

pin_project! {
    /// Drives one connection under the idle bound and the gateway's [`Drain`].
    pub(crate) struct Driver<C> {
        #[pin]
        conn: C,
        #[pin]
        stop_signal: OwnedNotified,
        member: Member,
        #[pin]
        timer: Sleep,
        activity: Arc<Activity>,
        idle: Duration,
        // The timer and the stop signal are polled (their waker registered) once each, then read
        // as flags: the waker of the task that owns the connection does not change.
        timer_registered: bool,
        signal_registered: bool,
        stopping: bool,
        idle_shutdown: bool,
    }
}

impl<C: Connection> Driver<C> {
    /// Drives `conn`, closing it after `idle` without a request in flight.
    pub(crate) fn new(conn: C, activity: Arc<Activity>, idle: Duration, member: Member) -> Self {
        Driver {
            conn,
            stop_signal: member.drain.notify.clone().notified_owned(),
            member,
            timer: tokio::time::sleep_until(activity.epoch + idle),
            activity,
            idle,
            timer_registered: false,
            signal_registered: false,
            stopping: false,
            idle_shutdown: false,
        }
    }
}

impl<C: Connection> Future for Driver<C> {
    type Output = Ended<C::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if !*this.stopping {
            if !*this.signal_registered {
                // Registers the waker; the flag below is what is read from then on.
                let _ = this.stop_signal.as_mut().poll(cx);
                *this.signal_registered = true;
            }
            if this.member.drain.stopping.load(Ordering::Acquire) {
                *this.stopping = true;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        loop {
            if *this.timer_registered && !this.timer.is_elapsed() {
                break;
            }
            if crate::pipeline::forward::poll_sleep(this.timer.as_mut(), cx).is_pending() {
                *this.timer_registered = true;
                break;
            }
            // The timer fired: is the connection idle, and since when?
            let now = Instant::now();
            let next = match this.activity.idle_since() {
                None => now + *this.idle,
                Some(since) if now < since + *this.idle => since + *this.idle,
                Some(_) => {
                    let before_first_request = !this.activity.seen.load(Ordering::Relaxed);
                    if before_first_request || *this.idle_shutdown {
                        return Poll::Ready(Ended::Idle {
                            before_first_request,
                        });
                    }
                    *this.idle_shutdown = true;
                    this.conn.as_mut().graceful_shutdown();
                    now + *this.idle
                }
            };
            this.timer.as_mut().reset(next);
            *this.timer_registered = false;
        }
        this.conn.poll(cx).map(Ended::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in connection: pending until told to finish; graceful shutdown is recorded and
    /// finishes it when `finish_on_graceful` is set (an idle HTTP/1 connection).
    struct FakeConn {
        graceful: Arc<AtomicU32>,
        finish_on_graceful: bool,
        finished: bool,
    }

    impl Future for FakeConn {
        type Output = Result<(), std::io::Error>;
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
            if self.finished {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }

    impl Connection for FakeConn {
        type Error = std::io::Error;
        fn graceful_shutdown(mut self: Pin<&mut Self>) {
            self.graceful.fetch_add(1, Ordering::Relaxed);
            if self.finish_on_graceful {
                self.finished = true;
            }
        }
    }

    fn fake(finish_on_graceful: bool) -> (FakeConn, Arc<AtomicU32>) {
        let graceful = Arc::new(AtomicU32::new(0));
        (
            FakeConn {
                graceful: graceful.clone(),
                finish_on_graceful,
                finished: false,
            },
            graceful,
        )
    }

    const IDLE: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_is_dropped_after_the_idle_time() {
        let drain = Drain::new();
        let (conn, graceful) = fake(true);
        let start = Instant::now();
        let ended = Driver::new(conn, Activity::new(), IDLE, drain.member()).await;
        assert!(matches!(
            ended,
            Ended::Idle {
                before_first_request: true
            }
        ));
        assert_eq!(start.elapsed(), IDLE);
        assert_eq!(graceful.load(Ordering::Relaxed), 0);
        assert_eq!(drain.len(), 0, "the connection's drain token is released");
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timer_fires_even_when_first_polled_with_the_budget_spent() {
        let drain = Drain::new();
        let (conn, _) = fake(true);
        let driver = Driver::new(conn, Activity::new(), IDLE, drain.member());
        let ended = tokio::time::timeout(
            IDLE * 3,
            crate::pipeline::forward::BudgetSpentFirst::new(driver),
        )
        .await;
        assert!(
            matches!(
                ended,
                Ok(Ended::Idle {
                    before_first_request: true
                })
            ),
            "the idle timer never fired"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_holds_the_connection_open_and_idleness_counts_from_its_end() {
        let drain = Drain::new();
        let (conn, graceful) = fake(true);
        let activity = Activity::new();
        let start = Instant::now();
        let busy = activity.begin();
        let task = tokio::spawn(Driver::new(conn, activity.clone(), IDLE, drain.member()));
        // Three idle periods pass with the request in flight (a long download): not idle.
        tokio::time::sleep(IDLE * 3).await;
        assert!(!task.is_finished());
        assert_eq!(graceful.load(Ordering::Relaxed), 0);
        drop(busy);
        let ended = task.await.unwrap();
        assert!(matches!(ended, Ended::Done(Ok(()))));
        assert_eq!(graceful.load(Ordering::Relaxed), 1);
        // Idle from the response's end, not from the request's start.
        assert!(
            start.elapsed() >= IDLE * 4,
            "closed {:?} after start",
            start.elapsed()
        );
        assert!(start.elapsed() < IDLE * 5);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_that_ignores_graceful_shutdown_is_dropped_one_idle_time_later() {
        let drain = Drain::new();
        let (conn, graceful) = fake(false);
        let activity = Activity::new();
        drop(activity.begin());
        let start = Instant::now();
        let ended = Driver::new(conn, activity, IDLE, drain.member()).await;
        assert!(matches!(
            ended,
            Ended::Idle {
                before_first_request: false
            }
        ));
        assert_eq!(graceful.load(Ordering::Relaxed), 1);
        assert_eq!(start.elapsed(), IDLE * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_shuts_connections_down_gracefully_and_waits_for_them() {
        let drain = Drain::new();
        let (conn, graceful) = fake(false);
        let activity = Activity::new();
        let busy = activity.begin();
        let task = tokio::spawn(Driver::new(conn, activity, IDLE, drain.member()));
        tokio::task::yield_now().await;
        drain.begin();
        tokio::task::yield_now().await;
        assert_eq!(graceful.load(Ordering::Relaxed), 1);
        assert_eq!(drain.len(), 1);
        // A connection accepted after the signal is told at once.
        let (late, late_graceful) = fake(true);
        let ended = Driver::new(late, Activity::new(), IDLE, drain.member()).await;
        assert!(matches!(ended, Ended::Done(Ok(()))));
        assert_eq!(late_graceful.load(Ordering::Relaxed), 1);
        // The first one still has its request in flight; the drain waits for it.
        let waited = tokio::time::timeout(IDLE, drain.wait()).await;
        assert!(waited.is_err(), "drain finished with a request in flight");
        drop(busy);
        task.abort();
        let _ = task.await;
        drain.wait().await;
    }
}
