//! Client connections: the accept loop, a cap on open connections, idle and handshake timeouts
//! for HTTP/1 and HTTP/2, HTTP/2 keep-alive pings, and a shutdown that first drains connections
//! gracefully and then cuts the ones left.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::{Builder as ConnBuilder, UpgradeableConnection};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::Config;

/// How long a connection asked to close (idle, or shutting down) may take to say goodbye
/// (HTTP/2 GOAWAY and its ping) once no request is in progress; then it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// At most one "connection refused" warning per this interval (a flood must not flood the log).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The open client connections of one server.
pub struct Connections {
    builder: ConnBuilder<TokioExecutor>,
    idle_timeout: Duration,
    max: usize,
    tracker: TaskTracker,
    /// Cancelled at shutdown: every connection finishes its requests and closes.
    drain: CancellationToken,
    /// Cancelled when the grace period has run out: every connection is dropped where it is.
    cut: CancellationToken,
    cut_count: Arc<AtomicUsize>,
}

impl Connections {
    pub fn new(config: &Config) -> Self {
        let mut builder = ConnBuilder::new(TokioExecutor::new());
        // hyper starts this timer as soon as it reads a head (also between keep-alive
        // requests); the time before the protocol is known is bounded by the idle timeout.
        builder.http1().timer(TokioTimer::new()).header_read_timeout(config.header_read_timeout);
        // Pings find peers that vanished without closing; the idle timer, peers that stay
        // but do nothing.
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(config.http2_keepalive)
            .keep_alive_timeout(config.http2_keepalive);
        Self {
            builder,
            idle_timeout: config.idle_connection_timeout,
            max: config.max_connections,
            tracker: TaskTracker::new(),
            drain: CancellationToken::new(),
            cut: CancellationToken::new(),
            cut_count: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.tracker.len()
    }

    /// Accepts and serves connections until `stop` is cancelled. Over the cap, a new connection
    /// is closed at once: accepting goes on, so the backlog never fills and the process keeps
    /// descriptors for the connections it serves.
    pub async fn accept_until(&self, listener: &TcpListener, router: &Router, stop: &CancellationToken) {
        let mut last_refusal_log: Option<Instant> = None;
        loop {
            let (stream, peer) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            if self.tracker.len() >= self.max {
                drop(stream);
                if last_refusal_log.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL) {
                    last_refusal_log = Some(Instant::now());
                    tracing::warn!(max_connections = self.max, "MAX_CONNECTIONS reached: closing new connections");
                }
                continue;
            }
            self.serve(stream, peer, router.clone());
        }
    }

    fn serve(&self, stream: TcpStream, peer: SocketAddr, router: Router) {
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let service = Tracked { router, peer, activity: activity.clone() };
        let conn = self.builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let watch = Watch {
            activity,
            idle_timeout: self.idle_timeout,
            drain: self.drain.clone(),
            cut: self.cut.clone(),
            cut_count: self.cut_count.clone(),
        };
        self.tracker.spawn(watch.run(conn));
    }

    /// Asks every connection to finish its requests and close; waits until they have, or until
    /// `deadline`. True when none is left.
    pub async fn drain(&self, deadline: Instant) -> bool {
        self.tracker.close();
        self.drain.cancel();
        self.wait_until(deadline).await
    }

    /// Waits until every connection has closed, or until `deadline`. True when none is left.
    pub async fn wait_until(&self, deadline: Instant) -> bool {
        tokio::time::timeout_at(deadline, self.tracker.wait()).await.is_ok()
    }

    /// Drops every connection still open, with whatever it was doing; returns how many.
    pub async fn cut(&self) -> usize {
        self.tracker.close();
        self.cut.cancel();
        self.tracker.wait().await;
        self.cut_count.load(Ordering::SeqCst)
    }
}

/// What one connection is doing: requests in progress, and since when it has had none.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` when the last request in progress ended.
    idle_since_ms: AtomicU64,
    /// Woken when a request ends, so the idle timer restarts from then.
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    /// When the connection has been idle for `timeout`; None while a request is in progress.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        (self.in_flight.load(Ordering::SeqCst) == 0)
            .then(|| self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst)) + timeout)
    }
}

/// One request in progress, from its head until its response body is done or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        // Noted before the count drops, so a timer that sees zero never sees an old time.
        let since = u64::try_from(a.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since_ms.store(since, Ordering::SeqCst);
        a.in_flight.fetch_sub(1, Ordering::SeqCst);
        a.changed.notify_one();
    }
}

/// The router for one connection: adds the peer address (for per-address limits) and counts
/// requests in progress until their response bodies end.
#[derive(Clone)]
struct Tracked {
    router: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<TrackedBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(axum::extract::ConnectInfo(self.peer));
        let guard = InFlight::begin(&self.activity);
        let response = self.router.clone().oneshot(req);
        Box::pin(async move {
            let res = response.await?;
            Ok(res.map(|inner| TrackedBody { inner, _guard: guard }))
        })
    }
}

/// A response body that keeps its request counted as in progress until it is done.
pub struct TrackedBody {
    inner: Body,
    _guard: InFlight,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type Conn = UpgradeableConnection<'static, TokioIo<TcpStream>, Tracked, TokioExecutor>;

/// Drives one connection and closes it when idle, at shutdown, or when cut.
struct Watch {
    activity: Arc<Activity>,
    idle_timeout: Duration,
    drain: CancellationToken,
    cut: CancellationToken,
    cut_count: Arc<AtomicUsize>,
}

impl Watch {
    async fn run(self, conn: Conn) {
        tokio::pin!(conn);
        // When the connection was asked to close.
        let mut closing: Option<Instant> = None;
        loop {
            // With a request in progress nothing times out here: the request has its own
            // timeouts (body read, upstream), and shutdown cuts it.
            let deadline = match closing {
                None => self.activity.idle_deadline(self.idle_timeout),
                Some(asked) => self.activity.idle_deadline(CLOSE_GRACE).map(|d| d.max(asked + CLOSE_GRACE)),
            };
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "client connection ended with an error");
                    }
                    return;
                }
                () = self.activity.changed.notified() => {}
                () = sleep_until(deadline) => {
                    if self.activity.in_flight.load(Ordering::SeqCst) > 0 {
                        continue;
                    }
                    if closing.is_some() {
                        // Idle and asked to close, but still open (a peer that never answers
                        // HTTP/2's GOAWAY ping, or a half-sent head): drop it.
                        return;
                    }
                    if self.activity.idle_deadline(self.idle_timeout).is_some_and(|d| d <= Instant::now()) {
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now());
                    }
                }
                () = self.drain.cancelled(), if closing.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                }
                () = self.cut.cancelled() => {
                    self.cut_count.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
